"""The fenced shell blocks of the documentation, and which of them the docs test runs.

A shell block is a fenced code block (``` or ~~~) whose language is one of
`SHELL_LANGUAGES`. Every shell block in README.md and docs/**/*.md is run by
`test_shell_blocks.py` (under `sh` and `bash`, with `-e`, against a `tokex local` the test
starts) unless the line right before its opening fence is a marker naming why it cannot
run here:

    <!-- docs-test: skip needs-aws -->
    ```sh
    npx aws-cdk@2 deploy Tokex
    ```

The reason is one of `SKIP_REASONS`; a marker with another reason, a marker that is not
followed by a shell fence, or a `docs-test` comment in any other form is an error, so a
typo cannot silently skip a block (prose may still mention `docs-test`: only HTML
comments are read as markers). A `console` block runs its `$ ` lines (with their
`\\` continuations); the lines without a prompt are output and are not checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console", "shell-session"})
SKIP_REASONS = {
    "needs-aws": "talks to an AWS account or a deployed stack (placeholders such as "
    "<IssuerUrl>, --stack Tokex, auth.example.com, a deployed client's secret)",
    "long-running": "runs until stopped (`tokex local`) or longer than the docs test "
    "affords (the whole suite)",
    "installs-packages": "creates a virtualenv or installs packages (pip, npm, apt)",
    "synopsis": "a usage synopsis with [optional] parts and placeholders, not a command",
    "needs-apache": "needs the Apache (mod_ssl, mod_auth_openidc) and the tokex proxy of "
    'docs/injection.md "Try it with tokex local" running; '
    "tests/interop/test_proxy_relying_party.py runs that set-up",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*)$")
MARKER = re.compile(r"^[ \t]*<!--[ \t]*docs-test:[ \t]*skip[ \t]+(?P<reason>\S+)[ \t]*-->[ \t]*$")
PROMPT = re.compile(r"^\$( |$)")
# `tokex local`'s default address, as the docs write it.
DOCUMENTED_ADDRESS = re.compile(r"(?:127\.0\.0\.1|localhost):8787\b")
# bash's `source` as a command (dash has only `.`).
SOURCE_COMMAND = re.compile(r"(?:^|[;&|(`]|\$\()[ \t]*source[ \t]", re.MULTILINE)


class MarkerError(ValueError):
    """A `docs-test` marker that does not say what it must, or says it in the wrong place."""


@dataclass(frozen=True)
class ShellBlock:
    path: str  # as given to `find_shell_blocks`, e.g. "docs/local.md"
    line: int  # 1-based line of the opening fence
    language: str
    text: str  # the block's content, the fence's indentation removed
    skip: str | None  # the marker's reason, or None: the block is run

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    def script(self) -> str:
        """What a shell runs: the text itself, or a console block's commands."""
        return console_commands(self.text) if self.language == "console" else self.text


def find_shell_blocks(markdown: str, path: str) -> list[ShellBlock]:
    """Every shell block of one document, in order, with its marker's reason (if any).

    Raises MarkerError for an unknown reason, a marker not directly before a shell fence,
    or a `docs-test` comment that is not a marker."""
    lines = markdown.splitlines()
    blocks: list[ShellBlock] = []
    pending: tuple[int, str] | None = None  # (line, reason) of a marker awaiting its fence
    index = 0
    while index < len(lines):
        line = lines[index]
        opening = FENCE.match(line)
        if opening is None:
            if pending is not None:
                raise MarkerError(
                    f"{path}:{pending[0]}: a docs-test marker must be the line right before "
                    "the opening fence of a shell block"
                )
            marker = MARKER.match(line)
            if marker is not None:
                reason = marker["reason"]
                if reason not in SKIP_REASONS:
                    raise MarkerError(
                        f"{path}:{index + 1}: unknown docs-test skip reason {reason!r}; "
                        f"use one of {', '.join(sorted(SKIP_REASONS))}"
                    )
                pending = (index + 1, reason)
            elif line.lstrip().startswith("<!--") and "docs-test" in line:
                raise MarkerError(
                    f"{path}:{index + 1}: not a docs-test marker; write "
                    "<!-- docs-test: skip REASON --> on the line before the fence"
                )
            index += 1
            continue
        language = (opening["info"].split() or [""])[0].lower()
        start = index
        body, index = _fenced_body(lines, index, opening)
        if language in SHELL_LANGUAGES:
            reason = pending[1] if pending else None
            blocks.append(ShellBlock(path, start + 1, language, body, reason))
        elif pending is not None:
            raise MarkerError(
                f"{path}:{pending[0]}: the docs-test marker is followed by a "
                f"{language or 'plain'} block, not a shell block"
            )
        pending = None
    if pending is not None:
        raise MarkerError(f"{path}:{pending[0]}: a docs-test marker at the end of the file")
    return blocks


def _fenced_body(lines: list[str], start: int, opening: re.Match[str]) -> tuple[str, int]:
    """The content of the fence opened at `start` (CommonMark: closed by a fence of the
    same character, at least as long, or by the end of the document) and the index of
    the line after it."""
    fence, indent = opening["fence"], len(opening["indent"])
    closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    body = []
    index = start + 1
    while index < len(lines) and not closing.match(lines[index]):
        line = lines[index]
        stripped = len(line) - len(line.lstrip(" "))
        body.append(line[min(indent, stripped) :])
        index += 1
    return "\n".join(body) + "\n", index + 1


def console_commands(text: str) -> str:
    """The commands of a console transcript: each `$ ` line, with the lines a trailing
    backslash continues it onto; everything else is output."""
    commands: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued:
            commands.append(line)
        elif PROMPT.match(line):
            commands.append(PROMPT.sub("", line, count=1))
        else:
            continue
        continued = line.rstrip().endswith("\\")
    return "\n".join(commands) + "\n"


def for_local_port(block: ShellBlock, port: int) -> str:
    """The block's script aimed at a `tokex local` on `port` instead of 8787; a block that
    names 8787 in another form cannot be aimed, and is refused rather than left to reach
    whatever listens on 8787."""
    script = block.script()
    if "8787" in DOCUMENTED_ADDRESS.sub("", script):
        raise MarkerError(
            f"{block.id}: names port 8787 in a form other than 127.0.0.1:8787 or "
            "localhost:8787, which the docs test cannot point at its own tokex local"
        )
    return DOCUMENTED_ADDRESS.sub(f"127.0.0.1:{port}", script)


def documents(root: Path) -> list[Path]:
    """The documents whose shell blocks are checked: README.md, then docs/**/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def repository_shell_blocks(root: Path) -> list[ShellBlock]:
    return [
        block
        for document in documents(root)
        for block in find_shell_blocks(
            document.read_text(encoding="utf-8"), document.relative_to(root).as_posix()
        )
    ]
