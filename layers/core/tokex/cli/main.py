"""The `tokex` command.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code). How every command
fails (exit codes, the `--json` error object, no tracebacks) is cli/errors.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO, cast

from tokex import __version__
from tokex.cli.errors import (
    AWS_ERROR,
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    INTERNAL_ERROR,
    INTERRUPTED,
    ArgumentParser,
    CommandError,
    UsageError,
    report,
    wants_json,
)
from tokex.client.token_error import AWS_SDK, raised_in

__all__ = ["CommandError", "build_parser", "main"]

# Subcommand modules under tokex.cli, in the order `tokex --help` lists them.
COMMANDS = ("local", "token", "proxy", "iid", "policy", "kong", "clients", "revoke")
# Set to see the traceback of an internal error (a bug) instead of its one-line report.
DEBUG_VARIABLE = "TOKEX_DEBUG"
# Options whose value may start with "-". argparse takes any such word for an option and
# refuses `--jti -x...` ("expected one argument"), yet jtis and client secrets are
# base64url: one in 64 starts with "-", and operators paste them as they come.
DASH_VALUED_OPTIONS = frozenset({"--jti", "--client-secret", "--audience", "--scope"})


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="tokex", description="AWS workload identity in, short-lived JWT out."
    )
    parser.add_argument("--version", action="version", version=f"tokex {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command module imports its heavy dependencies inside its `run`, so that
    # `tokex --help` and `tokex token` stay fast.
    for name in COMMANDS:
        importlib.import_module(f"tokex.cli.{name}").register(subparsers)
    for leaf in _leaves(parser):
        leaf.set_defaults(leaf_parser=leaf)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(arguments)
    _usable_standard_streams()
    with _output_failures_told_apart():
        return _run(arguments, as_json)


def _run(arguments: list[str], as_json: bool) -> int:
    command = "tokex"
    try:
        try:
            parser = build_parser()
            args = _parse(parser, _attach_dash_values(parser, arguments))
            command = f"tokex {args.command}"
            as_json = as_json or getattr(args, "json", False) is True
            code = int(args.func(args) or 0)
        except (BrokenPipeError, OutputFailed):
            raise
        except CommandError as exc:
            report(exc, command, as_json=as_json)
            code = exc.exit_code
        except KeyboardInterrupt:
            interrupted = CommandError("interrupted", EXIT_INTERRUPTED, error=INTERRUPTED)
            report(interrupted, command, as_json=as_json)
            code = EXIT_INTERRUPTED
        except SystemExit as exc:  # --help and --version
            code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
        except Exception as exc:
            if _debugging():
                raise
            failure = _unexpected(exc)
            report(failure, command, as_json=as_json)
            code = failure.exit_code
        sys.stdout.flush()  # here, so that a closed pipe is found while we can handle it
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except OutputFailed as exc:  # a full disk, ...
        _discard_stdout()
        print(f"{command}: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


class OutputFailed(OSError):
    """Standard output could not be written (a full disk): no bug of the command that
    was writing, however far into it the write was (`_Output`)."""


class _Output:
    """Standard output, whose write failures are told apart from a command's own OSError:
    unbuffered (PYTHONUNBUFFERED), or with more than its buffer to say, stdout fails in
    the middle of a command, not at main's last flush."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with self._failing_as_output():
            return self.stream.write(text)

    def flush(self) -> None:
        with self._failing_as_output():
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...
        return getattr(self.stream, name)

    @staticmethod
    @contextlib.contextmanager
    def _failing_as_output() -> Iterator[None]:
        try:
            yield
        except BrokenPipeError:
            raise  # the reader went away: quietly, exit 141
        except OSError as exc:
            raise OutputFailed(exc.errno, exc.strerror) from exc


@contextlib.contextmanager
def _output_failures_told_apart() -> Iterator[None]:
    stream = sys.stdout
    sys.stdout = cast(TextIO, _Output(stream))
    try:
        yield
    finally:
        sys.stdout = stream


def _debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _usable_standard_streams() -> None:
    """Text that cannot be encoded (a lone surrogate from a server's answer or a file,
    a file name that is not UTF-8) is written escaped, `\\udcff`, which inside a JSON
    string is that same character: never a UnicodeEncodeError halfway through an answer.
    A stream the shell closed (`>&-`) reads as /dev/null."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            devnull = open(os.devnull, "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
            setattr(sys, name, devnull)
            continue
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):  # e.g. a detached stream
                reconfigure(errors="backslashreplace")


def _parse(parser: ArgumentParser, arguments: list[str]) -> argparse.Namespace:
    """parse_args, except that an unknown flag is reported by the subcommand's parser (its
    usage line and `--help`), not the top-level one; and a refusal of a value that starts
    with "-" (a policy id, say: argparse takes it for a flag) says how to pass it."""
    try:
        args, unknown = parser.parse_known_args(arguments)
        if unknown:
            leaf: ArgumentParser = getattr(args, "leaf_parser", parser)
            leaf.error(f"unrecognized arguments: {' '.join(unknown)}")
    except UsageError as err:
        # "-canary", not "--jsn" (a mistyped flag) nor "-v" (a short one: tokex has no
        # longer single-dash flag).
        dashed = [
            word
            for word in arguments
            if word.startswith("-") and not word.startswith("--") and len(word) > 2
        ]
        if not dashed or "--" in arguments:
            raise
        hint = f"; a value that starts with '-' goes after `--`: ... -- {dashed[0]}"
        raise UsageError(
            f"{err}{hint}", input=err.input, error=err.error, usage=err.usage, prog=err.prog
        ) from None
    return args


def _attach_dash_values(parser: ArgumentParser, arguments: list[str]) -> list[str]:
    """`--jti -x...` as `--jti=-x...`, which argparse reads as a value. A word that is one
    of the command line's own options stays an option (`--jti --json` is a missing value)."""
    flags = {flag for leaf in _leaves(parser) for flag in leaf._option_string_actions}
    attached: list[str] = []
    words = iter(arguments)
    for word in words:
        if word == "--":  # the rest is positional: argparse's own convention
            attached += [word, *words]
        elif word in DASH_VALUED_OPTIONS:
            value = next(words, None)
            if value is None or value in flags:
                attached += [word] if value is None else [word, value]
            else:
                attached.append(f"{word}={value}")
        else:
            attached.append(word)
    return attached


def _unexpected(exc: Exception) -> CommandError:
    """An exception no command turned into a CommandError: an AWS error a command did not
    expect is still an AWS error; anything else is a bug, reported in one line too."""
    if type(exc).__module__.split(".")[0] in AWS_SDK:
        from tokex.cli.deployment import describe_aws_error

        return CommandError(describe_aws_error(exc), error=AWS_ERROR)
    # A value the SDK refused (AWS_MAX_ATTEMPTS=abc, a credential_process answer's date).
    # Not a TypeError: a wrong type is what tokex passed, a bug of its own.
    if isinstance(exc, ValueError) and raised_in(exc, AWS_SDK):
        from tokex.client.endpoint import redacted_text

        why = redacted_text(f"{type(exc).__name__}: {exc}")
        return CommandError(f"the AWS configuration cannot be used: {why}", error=AWS_ERROR)
    return CommandError(
        f"internal error, a bug of tokex: {type(exc).__name__}: {exc} "
        f"(run with {DEBUG_VARIABLE}=1 for the traceback)",
        error=INTERNAL_ERROR,
    )


def _leaves(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parsers of the commands that run (those without subcommands of their own)."""
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield parser
    for action in subcommands:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaves(child)


def _discard_stdout() -> None:
    """The reader went away (`| head -1`): send what is left to /dev/null, so that the
    interpreter's final flush does not fail too (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (io.UnsupportedOperation is both)
        pass


if __name__ == "__main__":
    sys.exit(main())
