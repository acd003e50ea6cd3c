"""Text tokex did not write (what a server answered, what a table holds) made safe to show
on a terminal or in a plain-text log line. One rule, shared by the CLI (cli/errors.py) and
the workload client (client/token_error.py), which must not import the CLI.

Pure: the standard library only.
"""

from __future__ import annotations


def escaped(text: str, *, keep: str = "") -> str:
    """`text` with its control characters (those in `keep` aside) shown escaped (`\\x1b`,
    `\\n`): what a server answered or a table holds must neither drive the terminal nor
    forge a line of output. Its own output comes back unchanged (nothing is escaped twice)."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)
