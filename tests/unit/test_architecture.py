"""Guards of the layering (issue 10, "Adapters" and "Guards that keep it so").

An `ast` walk over the core library, the functions, the CDK app and app.py:
- boto3 and botocore are imported only by the adapters (tokex/adapters/), the wiring
  (tokex/wiring.py) and the tooling (tokex/cli/, tokex/local/, tokex/client/), counting
  imports inside functions and inside `if TYPE_CHECKING:` too;
- no import cycle among tokex modules (function-level imports included).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "layers" / "core"
LIBRARY = CORE / "tokex"
SCANNED = [LIBRARY, ROOT / "functions", ROOT / "cdk", ROOT / "app.py"]
AWS_SDK = frozenset({"boto3", "botocore"})
# Where an AWS SDK import is allowed, as paths relative to layers/core.
SDK_ALLOWED = (
    "tokex/adapters/",
    "tokex/wiring.py",
    "tokex/cli/",
    "tokex/local/",
    "tokex/client/",
    "tokex/proxy/",
    "tokex/extension/",
)


def python_files() -> Iterator[Path]:
    for place in SCANNED:
        files = [place] if place.is_file() else sorted(place.rglob("*.py"))
        yield from (f for f in files if "__pycache__" not in f.parts)


def imported_names(tree: ast.AST, module: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import anywhere in `tree`; `from x import y` yields
    `x.y` (a module, or a name in x). Relative imports are resolved against `module`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (module or "").split(".")
                base = ".".join(package[: len(package) - node.level] + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def sdk_allowed(path: Path) -> bool:
    if not path.is_relative_to(CORE):
        return False
    relative = path.relative_to(CORE).as_posix()
    return any(relative == allowed or relative.startswith(allowed) for allowed in SDK_ALLOWED)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_graph() -> dict[str, set[str]]:
    """tokex module -> the tokex modules it imports (a package when the name is not a
    module of its own)."""
    paths = [p for p in python_files() if p.is_relative_to(LIBRARY)]
    modules = {module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        context = f"{name}.__init__" if is_package else name
        for _, imported in imported_names(tree, context):
            target = imported
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("tokex") and target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (`[a, b, ..., a]`), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for following in sorted(graph.get(node, ())):
            if state.get(following) == 1:
                return [*path[path.index(following) :], following]
            if following not in state and (cycle := visit(following)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_only_the_adapters_the_wiring_and_the_tooling_import_the_aws_sdk() -> None:
    found = []
    for path in python_files():
        if sdk_allowed(path):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, name in imported_names(tree):
            if name.split(".")[0] in AWS_SDK:
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not found, "\n".join(found)


def test_the_sdk_walk_sees_the_adapters_and_type_checking_imports() -> None:
    """Not vacuous: the adapters' imports are seen, and so is an import under
    `if TYPE_CHECKING:` or inside a function."""
    errors = ast.parse((LIBRARY / "adapters" / "errors.py").read_text(encoding="utf-8"))
    assert any(name.startswith("botocore") for _, name in imported_names(errors))
    hidden = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import boto3\n"
        "def f():\n    from botocore.exceptions import ClientError\n"
    )
    assert {"boto3", "botocore.exceptions.ClientError"} <= {n for _, n in imported_names(hidden)}
    assert not sdk_allowed(LIBRARY / "exchange.py")
    assert sdk_allowed(LIBRARY / "adapters" / "kms.py")


def test_no_import_cycle_among_tokex_modules() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_and_resolves_imports() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = module_graph()
    assert "tokex.adapters.errors" in graph["tokex.adapters.kms"]  # from tokex.adapters import
    assert "tokex.deadline" in graph["tokex.adapters.aws_clients"]  # from tokex import deadline
    assert "tokex.cli.main" in graph  # function-level imports are followed too


def test_the_domain_and_the_use_cases_do_not_import_the_adapters_or_the_wiring() -> None:
    """Dependencies point inwards: the adapters implement the domain's interfaces, the
    wiring joins them; nothing else in the library names either."""
    outer = ("tokex.adapters", "tokex.wiring", "tokex.cli", "tokex.local", "tokex.client")
    found = [
        f"{module} imports {imported}"
        for module, imports in sorted(module_graph().items())
        if not module.startswith(outer)
        for imported in sorted(imports)
        if imported.startswith(("tokex.adapters", "tokex.wiring"))
    ]
    assert not found, "\n".join(found)


TOOLING = (
    "tokex.cli",
    "tokex.local",
    "tokex.client",
    "tokex.proxy",
    "tokex.extension",
    "tokex.kong",
)


def test_the_runtime_never_imports_the_tooling() -> None:
    """The layer leaves the tooling out (cdk/layer_bundling.py): a runtime module that
    imported it would fail in Lambda only."""
    found = [
        f"{module} imports {imported}"
        for module, imports in sorted(module_graph().items())
        if not module.startswith(TOOLING)
        for imported in sorted(imports)
        if imported.startswith(TOOLING)
    ]
    assert not found, "\n".join(found)


def test_the_core_library_is_free_of_powertools() -> None:
    """Powertools (routing, logging, metrics, tracing) belongs to the handlers
    (tokex_functions): the core's rules stay testable and reusable without it."""
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted(LIBRARY.rglob("*.py"))
        if "__pycache__" not in path.parts
        for line, name in imported_names(ast.parse(path.read_text(encoding="utf-8")))
        if name.split(".")[0] == "aws_lambda_powertools"
    ]
    assert not found, "\n".join(found)
