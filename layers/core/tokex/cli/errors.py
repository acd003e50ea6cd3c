"""How every `tokex` command fails: exit codes, the `--json` error object, no tracebacks.

The convention (docs/contract.md "Command line"):

- exit 2: the command line is wrong (an unknown or missing flag, a value of the wrong form
  or range, a named input file that does not exist), found before any file is read or any
  network call is made;
- exit 1: well-formed input that failed or was refused (an invalid policy, a bad
  signature, a refusal by a server, a network or AWS error);
- exit 130 on SIGINT, and 141 when stdout is closed early (`| head -1`), as a shell reports
  a process killed by SIGPIPE: quietly, never a traceback.

With `--json` a failure prints one JSON object on stdout, and nothing else:
`{"error": CODE, "error_description": TEXT, "input": FLAG, FILE OR URL AT FAULT}`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from tokex.printable import escaped, printable_json

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` or `grep` would report

# Error codes of the JSON object. Exit 2:
USAGE = "usage"  # argparse: unknown or missing flag, wrong type or choice, conflicting flags
INVALID_VALUE = "invalid_value"  # a value of the wrong form or range
FILE_NOT_FOUND = "file_not_found"  # a named input file does not exist
NO_REGION = "no_region"  # no AWS region from --region, the environment or the profile
# Exit 1 (`tokex token` passes the codes of client/token_client.py TokenError on: the token
# endpoint's own OAuth error code for a refusal, `not_tokex`, `unreachable`, ...):
FAILED = "failed"
INVALID_POLICY = "invalid_policy"  # with `valid: false` and every error under `errors`
INVALID_INPUT = "invalid_input"  # a file's content: not UTF-8, too large, not JSON, ...
NOT_VERIFIED = "not_verified"  # an instance identity document and its signature
NOT_FOUND = "not_found"  # a policy, client or stack that does not exist
WRITE_FAILED = "write_failed"
AWS_ERROR = "aws_error"
UNREACHABLE = "unreachable"  # a network error
INTERNAL_ERROR = "internal_error"  # a bug of tokex
INTERRUPTED = "interrupted"


class CommandError(Exception):
    """A failure reported as one line on stderr (one JSON object on stdout with --json)."""

    def __init__(
        self,
        message: str,
        exit_code: int = EXIT_FAILURE,
        *,
        error: str | None = None,
        input: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.error = error or (USAGE if exit_code == EXIT_USAGE else FAILED)
        self.input = input
        self.details = dict(details or {})

    def to_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "error_description": str(self),
            "input": self.input,
            **self.details,
        }


class UsageError(CommandError):
    """The command line is wrong (exit 2): names the flag, file or URL, and the fix."""

    def __init__(
        self,
        message: str,
        *,
        input: str | None,
        error: str = INVALID_VALUE,
        usage: str | None = None,
        prog: str | None = None,
    ) -> None:
        super().__init__(message, EXIT_USAGE, error=error, input=input)
        # argparse's own errors are shown as argparse shows them: usage line, then
        # "PROG: error: MESSAGE", PROG being the (sub)command whose parser refused.
        self.usage = usage
        self.prog = prog


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (naming the argument at fault) rather than
    print and exit, so that `main` reports them as it reports every other failure."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        # argparse swallows an OSError here, so `--help | head -1` would exit 0 having
        # printed nothing; a closed pipe is reported as for every other output (main.py).
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str) -> NoReturn:
        raise UsageError(
            f"{message} (see `{self.prog} --help`)",
            error=USAGE,
            input=_argument_at_fault(message) or self.prog,
            usage=self.format_usage(),
            prog=self.prog,
        )


# argparse's messages for errors it does not raise as an ArgumentError (Lib/argparse.py).
_UNNAMED_ERRORS = (
    re.compile(r"the following arguments are required: ([^,\s]+)"),
    re.compile(r"unrecognized arguments: (\S+)"),
    re.compile(r"one of the arguments (\S+)"),
    re.compile(r"ambiguous option: ([^=\s]+)"),
)
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


def _argument_at_fault(message: str) -> str | None:
    raised = sys.exc_info()[1]  # argparse calls error() inside `except ArgumentError`
    if isinstance(raised, argparse.ArgumentError):
        choice = _INVALID_CHOICE.search(message)
        if raised.argument_name in (None, "COMMAND") and choice:
            return choice[1]  # an unknown subcommand: the word typed
        if raised.argument_name:
            return raised.argument_name.split("/")[-1]  # -v/--verbose -> --verbose
    for pattern in _UNNAMED_ERRORS:
        if found := pattern.search(message):
            return found[1]
    return None


def wants_json(argv: Sequence[str]) -> bool:
    """Whether --json was asked for, read from the raw arguments: an argument error must
    be reported as JSON too, and then there is no parsed namespace to ask."""
    for token in argv:
        if token == "--":
            return False
        # argparse accepts unambiguous abbreviations (--js; --j also matches --jwks), and
        # refuses `--json=1` as a usage error, which is then reported as JSON too.
        name = token.split("=", 1)[0]
        if len(name) >= 4 and "--json".startswith(name):
            return True
    return False


def report(error: CommandError, command: str, *, as_json: bool) -> None:
    """Print a failure: one JSON object on stdout, or one line (after argparse's usage line
    for its own errors) on stderr."""
    if as_json:
        print(printable_json(error.to_json()))
        return
    # A message may quote what a server answered: its control characters (a terminal's
    # escape sequences among them) are shown escaped, never written to the terminal. Line
    # breaks stay: some reports list one finding per line (policy validate).
    message = escaped(str(error), keep="\n")
    if isinstance(error, UsageError) and error.usage:
        print(error.usage.rstrip("\n"), file=sys.stderr)
        print(f"{error.prog or command}: error: {message}", file=sys.stderr)
    else:
        print(f"{command}: {message}", file=sys.stderr)
