"""Text tokex did not write (what a server answered, what a table holds) made safe to show
on a terminal or in a plain-text log line. One rule, shared by the CLI (cli/errors.py) and
the workload client (client/token_error.py), which must not import the CLI.

Pure: the standard library only.
"""

from __future__ import annotations

import json


def escaped(text: str, *, keep: str = "") -> str:
    """`text` with its control characters (those in `keep` aside) shown escaped (`\\x1b`,
    `\\n`): what a server answered or a table holds must neither drive the terminal nor
    forge a line of output. Its own output comes back unchanged (nothing is escaped twice)."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def printable_json(value: object, *, indent: int | None = None) -> str:
    """`value` as JSON in which every character `escaped` would escape is written as its
    `\\uXXXX` escape: JSON itself escapes only U+0000-001F, leaving raw the C1 controls
    (U+009B is a terminal's CSI), DEL and the bidi overrides a table's or a token's text may
    hold. Printable non-ASCII text stays readable, and the output reads back the same."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    # Outside its strings JSON writes only ASCII, spaces and (indent) line breaks: any other
    # character that is not printable is inside a string, where `json.dumps(c)` escapes it
    # (a surrogate pair for one beyond U+FFFF).
    return "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)
