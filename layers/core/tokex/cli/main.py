"""The `tokex` command.

Each subcommand lives in its own module exposing `register(subparsers)`, which adds its
parser and sets `func` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tokex import __version__

# Subcommand modules under tokex.cli, in the order `tokex --help` lists them.
COMMANDS = ("local", "token", "iid", "policy", "kong", "clients", "revoke")


class CommandError(Exception):
    """A failure to report on stderr with a non-zero exit (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokex", description="AWS workload identity in, short-lived JWT out."
    )
    parser.add_argument("--version", action="version", version=f"tokex {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Each command module imports its heavy dependencies inside its `run`, so that
    # `tokex --help` and `tokex token` stay fast.
    for name in COMMANDS:
        importlib.import_module(f"tokex.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"tokex {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
