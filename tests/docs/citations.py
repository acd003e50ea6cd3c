"""Citations of markdown documents in code comments and docstrings.

The form a citation takes (normalised everywhere):

    docs/security.md                      the document
    docs/security.md "IMDS evidence"      a section of it: the exact text of a heading

The path is relative to the repository root, whichever file cites it; the quoted heading
follows the path after one space, on the same line, and equals the heading's text with
its inline-code backticks removed (`## \\`POST {iss}/token\\` — ...` is cited as
"POST {iss}/token — ..."). Anything else after a path (prose, a group number) is free text.

Scanned: comments and docstrings of every Python file, and the comments of the CI
scripts, shell scripts, TOML and JavaScript files, outside the virtualenv, node_modules
and build output. RFC sections (`RFC 7662 §2.2`) are not markdown citations and are not
checked here.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CITATION = re.compile(
    r"(?<![\w/.-])(?P<path>(?:[\w.-]+/)*[\w-][\w.-]*\.md)\b"
    r"(?:[ ]\"(?P<section>[^\"\n]+)\")?"
)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(?P<text>.*?)(?:[ \t]+#+)?[ \t]*$")
FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})")
SKIPPED_DIRECTORIES = frozenset(
    {".git", ".venv", "node_modules", "cdk.out", ".tokex-local", "build", "dist"}
)
# Line comments of files other than Python: file name pattern -> comment marker.
LINE_COMMENTS = (("*.sh", "#"), ("*.toml", "#"), ("*.mjs", "//"), ("*.js", "//"))


@dataclass(frozen=True)
class Citation:
    source: str  # repository path of the citing file
    line: int
    path: str  # the cited document, as written
    section: str | None

    def __str__(self) -> str:
        section = f' "{self.section}"' if self.section else ""
        return f"{self.source}:{self.line}: {self.path}{section}"


def citations_in_text(text: str, source: str, first_line: int) -> Iterator[Citation]:
    for match in CITATION.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        yield Citation(source, line, match["path"], match["section"])


def python_citations(code: str, source: str) -> Iterator[Citation]:
    """Citations in the comments and the docstrings (module, class, function) of a
    Python file; other string literals are program data and are not read."""
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.COMMENT:
            yield from citations_in_text(token.string, source, token.start[0])
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                yield from citations_in_text(body[0].value.value, source, body[0].lineno)


def line_comment_citations(text: str, source: str, marker: str) -> Iterator[Citation]:
    for number, line in enumerate(text.splitlines(), start=1):
        _, found, comment = line.partition(marker)
        if found:
            yield from citations_in_text(comment, source, number)


def repository_citations(root: Path) -> list[Citation]:
    found: list[Citation] = []
    for path in sorted(_files(root)):
        source = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            found += python_citations(text, source)
        elif source.startswith(".ci/"):
            found += line_comment_citations(text, source, "#")
        else:
            marker = next(m for pattern, m in LINE_COMMENTS if path.match(pattern))
            found += line_comment_citations(text, source, marker)
    return found


def _files(root: Path) -> Iterator[Path]:
    for path in root.iterdir():
        if path.is_dir():
            if path.name not in SKIPPED_DIRECTORIES and not path.name.endswith("_cache"):
                yield from _files_below(path, root)
        elif _is_scanned(path, root):
            yield path


def _files_below(directory: Path, root: Path) -> Iterator[Path]:
    for path in directory.iterdir():
        if path.is_dir():
            if path.name not in SKIPPED_DIRECTORIES and not path.name.endswith("_cache"):
                yield from _files_below(path, root)
        elif _is_scanned(path, root):
            yield path


def _is_scanned(path: Path, root: Path) -> bool:
    if path.suffix == ".py" or path.parent == root / ".ci":
        return True
    return any(path.match(pattern) for pattern, _ in LINE_COMMENTS)


def headings(markdown: str) -> set[str]:
    """The text of every ATX heading outside fenced code, inline-code backticks removed."""
    found: set[str] = set()
    fence: str | None = None
    for line in markdown.splitlines():
        opening = FENCE.match(line)
        if opening:
            mark = opening["fence"]
            if fence is None:
                fence = mark
            elif (
                mark[0] == fence[0] and len(mark) >= len(fence) and not line.strip(mark[0] + " \t")
            ):
                fence = None
            continue
        heading = HEADING.match(line)
        if fence is None and heading:
            found.add(heading["text"].replace("`", ""))
    return found


def problems(citations: list[Citation], root: Path) -> list[str]:
    """What is wrong with each citation: a document missing from the repository, or a
    section it does not have."""
    found = []
    for citation in citations:
        document = root / citation.path
        if not document.is_file():
            found.append(f"{citation}: no such file in the repository (paths are from its root)")
        elif citation.section and citation.section not in headings(document.read_text()):
            found.append(f"{citation}: {citation.path} has no heading {citation.section!r}")
    return found


# In the documents: `path::name` names a function, class or method (`Class.method`) in a
# repository file, and a path in backticks that starts with one of the repository's own
# top-level directories names a file or directory that exists.
CODE_REFERENCE = re.compile(r"(?P<path>[\w./-]+\.py)::(?P<name>[A-Za-z_][\w.]*)")
REPOSITORY_PATH = re.compile(
    r"`(?P<path>(?:\.ci|benchmarks|cdk|docs|examples|functions|layers|tests)/[\w./-]*)`"
)


def reference_problems(markdown: str, document: str, root: Path) -> list[str]:
    """What is wrong with the code references and repository paths of one document."""
    found = []
    for match in CODE_REFERENCE.finditer(markdown):
        path, name = match["path"], match["name"]
        source = root / path
        if not source.is_file():
            found.append(f"{document}: {path}::{name}: no such file")
            continue
        code = source.read_text(encoding="utf-8")
        for part in name.split("."):
            if not re.search(rf"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t]+{part}\b", code, re.M):
                found.append(f"{document}: {path}::{name}: no def or class {part} in {path}")
    for match in REPOSITORY_PATH.finditer(markdown):
        if not (root / match["path"]).exists():
            found.append(f"{document}: `{match['path']}`: no such file or directory")
    return found
