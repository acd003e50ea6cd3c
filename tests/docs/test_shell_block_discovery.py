"""The discovery behind the docs test, on sample documents: an unmarked shell block is
always one to run, a marker skips only with a known reason and only the block right after
it, and every malformed marker is an error rather than a silent skip."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.shell_blocks import (
    SOURCE_COMMAND,
    MarkerError,
    ShellBlock,
    find_shell_blocks,
    for_local_port,
    repository_shell_blocks,
)

FENCE = "`" * 3


def doc(text: str) -> str:
    """Sample markdown, written with ''' for fences so it can sit in this file."""
    return text.replace("'''", FENCE)


def test_an_unmarked_shell_block_is_to_be_run() -> None:
    blocks = find_shell_blocks(doc("# T\n\n'''sh\ntokex local\n'''\n"), "docs/t.md")
    assert blocks == [ShellBlock("docs/t.md", 3, "sh", "tokex local\n", None)]


def test_a_marker_skips_only_the_block_right_after_it() -> None:
    text = doc(
        "<!-- docs-test: skip needs-aws -->\n'''bash\nnpx aws-cdk@2 deploy\n'''\n\n"
        "'''console\n$ tokex policy validate p.json\nvalid: p (allow)\n'''\n"
    )
    first, second = find_shell_blocks(text, "x.md")
    assert (first.line, first.language, first.skip) == (2, "bash", "needs-aws")
    assert (second.line, second.language, second.skip) == (6, "console", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- docs-test: skip flaky -->\n'''sh\nls\n'''\n", "unknown docs-test skip reason"),
        ("<!-- docs-test: skip needs-aws -->\n\n'''sh\nls\n'''\n", "line right before"),
        ("<!-- docs-test: skip needs-aws -->\n'''json\n{}\n'''\n", "not a shell block"),
        ("<!-- docs-test: skipp needs-aws -->\n'''sh\nls\n'''\n", "not a docs-test marker"),
        ("<!--docs-test skip needs-aws-->\n'''sh\nls\n'''\n", "not a docs-test marker"),
        ("'''sh\nls\n'''\n<!-- docs-test: skip synopsis -->\n", "at the end of the file"),
    ],
)
def test_a_malformed_or_stray_marker_is_an_error(text: str, message: str) -> None:
    with pytest.raises(MarkerError, match=message):
        find_shell_blocks(doc(text), "x.md")


def test_prose_may_name_the_marker() -> None:
    text = doc("Skip with `<!-- docs-test: skip needs-aws -->` before the fence.\n")
    assert find_shell_blocks(text, "x.md") == []


def test_fence_forms() -> None:
    four = "`" * 4
    text = f"{four}markdown\n" + doc("'''sh\nnot a block of this document\n'''\n") + four
    text += doc(
        "\n~~~Shell title=x\necho tilde\n~~~\n"  # tilde fence, language case, info words
        "- item\n\n  '''sh\n  echo indented\n    echo deeper\n  '''\n"  # in a list item
        "'''\nplain\n'''\n'''json\n{}\n'''\n"  # not shell
    )
    blocks = find_shell_blocks(text, "x.md")
    assert [(block.line, block.language, block.text) for block in blocks] == [
        (6, "shell", "echo tilde\n"),
        (11, "sh", "echo indented\n  echo deeper\n"),
    ]


def test_an_unclosed_fence_runs_to_the_end() -> None:
    (block,) = find_shell_blocks(doc("'''sh\necho a\necho b\n"), "x.md")
    assert block.text == "echo a\necho b\n"


def test_a_console_block_runs_its_prompted_commands_only() -> None:
    text = doc(
        "'''console\n$ tokex policy explain \\\n    --audience a\nprincipal  x\n"
        "$ tokex policy list\nID  EFFECT\n$\n'''\n"
    )
    (block,) = find_shell_blocks(text, "x.md")
    assert block.script() == "tokex policy explain \\\n    --audience a\ntokex policy list\n\n"


def test_blocks_are_aimed_at_the_tests_own_port() -> None:
    block = ShellBlock(
        "x.md", 1, "sh", "curl http://127.0.0.1:8787/x http://localhost:8787/y\n", None
    )
    assert for_local_port(block, 18787) == (
        "curl http://127.0.0.1:18787/x http://127.0.0.1:18787/y\n"
    )
    other = ShellBlock("x.md", 1, "sh", "tokex local --port 8787\n", None)
    with pytest.raises(MarkerError, match="port 8787"):
        for_local_port(other, 18787)


@pytest.mark.parametrize(
    ("script", "bash_only"),
    [
        ("source .tokex-local/workload.env\n", True),
        (". .venv/bin/activate && source x.env\n", True),
        ("x=$(source y)\n", True),
        (". .tokex-local/workload.env\n", False),
        ("# the source of truth\n", False),
        ("tokex kong-config --resource x\n", False),
    ],
)
def test_source_is_recognised_as_a_command(script: str, bash_only: bool) -> None:
    assert bool(SOURCE_COMMAND.search(script)) is bash_only


def test_a_block_in_a_new_document_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guides").mkdir(parents=True)
    (tmp_path / "README.md").write_text(doc("'''sh\necho readme\n'''\n"))
    (tmp_path / "docs" / "guides" / "new.md").write_text(doc("'''bash\necho new\n'''\n"))
    blocks = repository_shell_blocks(tmp_path)
    assert [(block.id, block.skip) for block in blocks] == [
        ("README.md:1", None),
        ("docs/guides/new.md:1", None),
    ]
