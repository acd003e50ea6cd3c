"""Code cites only documents that are in the repository, and only sections they have; the
documents name only code and tests that exist. Citation format: tests/docs/citations.py."""

from __future__ import annotations

from pathlib import Path

from tests.docs.citations import (
    Citation,
    citations_in_text,
    headings,
    line_comment_citations,
    problems,
    python_citations,
    reference_problems,
    repository_citations,
)

ROOT = Path(__file__).resolve().parents[2]
FENCE = "`" * 3


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_cited_document_and_section_exists() -> None:
    found = problems(repository_citations(ROOT), ROOT)
    assert not found, "\n".join(found)


def test_the_scan_reaches_the_code_and_the_tests() -> None:
    """Not vacuous: citations are found in the library, the functions and the tests."""
    found = {(c.source, c.path, c.section) for c in repository_citations(ROOT)}
    assert (
        "layers/core/tokex/evidence/sigv4_request.py",
        "docs/security.md",
        "The signed STS request",
    ) in found
    assert any(source.startswith("functions/") for source, _, _ in found)
    assert any(source.startswith("tests/system/") for source, _, _ in found)


def test_documents_name_code_and_tests_that_exist() -> None:
    found = [
        problem
        for document in documents()
        for problem in reference_problems(
            document.read_text(encoding="utf-8"), document.relative_to(ROOT).as_posix(), ROOT
        )
    ]
    assert not found, "\n".join(found)


def test_the_readme_links_every_document() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        path
        for path in (p.relative_to(ROOT).as_posix() for p in documents()[1:])
        if f"]({path})" not in readme
    ]
    assert not missing, f"README.md's Documentation list lacks {missing}"


# --- the scanner itself, on samples --------------------------------------------------


def test_comments_and_docstrings_are_read_other_strings_are_not() -> None:
    code = (
        '"""Module (docs/contract.md "Issuer")."""\n'
        "# see security.md\n"
        "class A:\n"
        '    """Class (docs/policies.md)."""\n'
        "    def f(self):\n"
        '        """Method (docs/kong.md "Rotation")."""\n'
        '        return "data.md"  # docs/local.md "Try it"\n'
    )
    assert list(python_citations(code, "x.py")) == [
        Citation("x.py", 2, "security.md", None),
        Citation("x.py", 7, "docs/local.md", "Try it"),
        Citation("x.py", 1, "docs/contract.md", "Issuer"),
        Citation("x.py", 4, "docs/policies.md", None),
        Citation("x.py", 6, "docs/kong.md", "Rotation"),
    ]


def test_the_section_is_the_quoted_text_right_after_the_path() -> None:
    text = 'a docs/x.md "One" and docs/y.md, "not a section"\nz.md\n"nor this"'
    assert [(c.path, c.section, c.line) for c in citations_in_text(text, "s", 10)] == [
        ("docs/x.md", "One", 10),
        ("docs/y.md", None, 10),
        ("z.md", None, 11),
    ]


def test_line_comments_of_scripts() -> None:
    script = 'echo docs/x.md\n# docs/deploy.md "Bootstrap and deploy"\n'
    assert list(line_comment_citations(script, ".ci/run", "#")) == [
        Citation(".ci/run", 2, "docs/deploy.md", "Bootstrap and deploy")
    ]


def test_a_missing_document_or_section_is_reported(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## `POST /x` — the call\n")
    citations = [
        Citation("c.py", 1, "docs/a.md", "POST /x — the call"),
        Citation("c.py", 2, "docs/a.md", None),
        Citation("c.py", 3, "a.md", None),  # not a path from the root
        Citation("c.py", 4, "docs/a.md", "The call"),
        Citation("c.py", 5, "docs/b.md", None),
    ]
    assert [line.split(":")[1] for line in problems(citations, tmp_path)] == ["3", "4", "5"]


def test_headings_outside_code_only() -> None:
    markdown = f"# Title\n{FENCE}sh\n# a shell comment\n{FENCE}\n### Sub `x` ###\nText # no\n"
    assert headings(markdown) == {"Title", "Sub x"}


def test_code_references_and_paths_are_checked(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(
        "class Thing:\n    def method(self): ...\n\ndef test_one(): ...\n"
    )
    markdown = (
        "`tests/test_a.py::test_one`, `tests/test_a.py::Thing.method`, `tests/`, "
        "`tests/test_a.py::test_two`, `tests/test_b.py::test_one`, `tests/missing/`, "
        "arn:aws:iam::123456789012:role/x"
    )
    assert reference_problems(markdown, "d.md", tmp_path) == [
        "d.md: tests/test_a.py::test_two: no def or class test_two in tests/test_a.py",
        "d.md: tests/test_b.py::test_one: no such file",
        "d.md: `tests/missing/`: no such file or directory",
    ]
