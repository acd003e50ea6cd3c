"""The layer bundling caches (cdk/layer_bundling.py, cdk/extension_layer.py) when synths
build the same bundle at once: two `cdk synth` runs (a CI matrix, a watch and a manual
synth) can both find the cache empty, build, and race to publish. Each `build_into` must
still fill its own output directory whole, one cache entry must remain, and no staging
directory may be left behind.

pip is stubbed (`_pip`, the pip subprocess): what is tested is the cache's publication
around it, and pip with a network would make the race slower, not different. The stub
writes a tree of marker files where pip would install the locked wheels, after every
builder has reached it (a barrier), so that all of them have found the cache empty and all
of them publish at about the same time. Everything else is the bundlers' own code, the bytecode
compilers of this machine included."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cdk.extension_layer import LAUNCHER, SITE, ExtensionLayerBundling
from cdk.layer_bundling import CoreLayerBundling
from tests.infra.locks import write_locks
from tokex.extension.api import EXTENSION_NAME

pytestmark = pytest.mark.infra

BUILDERS = 3
# Enough files that a publication made file by file is seen half done by the others.
MARKER_FILES = 40
# What the stub installs, as paths relative to pip's --target, and their text.
INSTALLED = {
    **{f"jwt/marker_{number:02}.py": f"MARKER = {number}\n" for number in range(MARKER_FILES)},
    "PyJWT-2.9.0.dist-info/METADATA": "Name: PyJWT\nVersion: 2.9.0\n",
}
# The project's `tokex` package: the core layer ships its runtime (not `extension/`,
# tooling), the extension layer the modules `tokex.extension.__main__` imports.
PACKAGE = {
    "__init__.py": "x = 1\n",
    "extension/__init__.py": "",
    "extension/__main__.py": "import jwt\n",
}


def project(root: Path) -> Path:
    """A project with the `tokex` package above, which depends on pyjwt (and boto3, which
    neither layer ships), and the layers' locks (pyjwt 2.9.0, whose hash is never checked:
    the stub installs it)."""
    package = root / "layers" / "core" / "tokex"
    for relative, text in PACKAGE.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "tokex"\ndependencies = ["pyjwt>=2.9", "boto3>=1.35"]\n'
    )
    write_locks(root)
    return root


def pip_meeting_at(barrier: threading.Barrier) -> Callable[..., None]:
    """`_pip` of a bundler: an install (of the lock) waits until every builder has reached
    it, then writes INSTALLED into its --target."""

    def pip(*args: str) -> None:
        barrier.wait()
        target = Path(args[args.index("--target") + 1])
        for relative, text in INSTALLED.items():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (target / relative).write_text(text)

    return pip


def built_at_once(build: Callable[[Path], None], outputs: list[Path]) -> None:
    """`build` into each of `outputs` at once, each on a thread of its own; raises what
    any of them raised."""
    with ThreadPoolExecutor(max_workers=len(outputs)) as pool:
        for future in [pool.submit(build, output) for output in outputs]:
            future.result()


def files(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> content)."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def sources(root: Path) -> dict[str, str]:
    """The files under `root` but bytecode, as text."""
    return {
        relative: content.decode()
        for relative, content in files(root).items()
        if "__pycache__" not in relative
    }


def test_core_layer_builds_at_once_each_fill_their_output_from_one_cache_entry(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    bundling = CoreLayerBundling(
        project_root=project(tmp_path / "project"),
        python_version="3.13",
        cache_dir=cache,
        find_compiler=lambda version: None,  # sources only: the race is the same
    )
    bundling._pip = pip_meeting_at(threading.Barrier(BUILDERS, timeout=30))  # type: ignore[method-assign]
    key = bundling.inputs_hash()
    outputs = [tmp_path / f"cdk.out-{number}" for number in range(BUILDERS)]

    built_at_once(lambda output: bundling.build_into(output, key=key), outputs)

    whole = {"tokex/__init__.py": PACKAGE["__init__.py"], **INSTALLED}
    for output in outputs:
        assert [entry.name for entry in output.iterdir()] == ["python"]
        assert sources(output / "python") == whole, output
    # One entry, the published bundle and its lock; no builder's staging directory.
    assert [entry.name for entry in cache.iterdir()] == [key]
    assert sorted(entry.name for entry in (cache / key).iterdir()) == [
        "python",
        "requirements.lock",
    ]
    assert sources(cache / key / "python") == whole


def test_extension_layer_builds_at_once_each_fill_their_output_from_one_cache_entry(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    bundling = ExtensionLayerBundling(project_root=project(tmp_path / "project"), cache_dir=cache)
    bundling._pip = pip_meeting_at(threading.Barrier(BUILDERS, timeout=30))  # type: ignore[method-assign]
    key = bundling.inputs_hash()
    outputs = [tmp_path / f"cdk.out-{number}" for number in range(BUILDERS)]

    built_at_once(lambda output: bundling.build_into(output, key=key), outputs)

    whole = {
        f"extensions/{EXTENSION_NAME}": LAUNCHER,
        **{f"{SITE}/tokex/{name}": text for name, text in PACKAGE.items()},
        **{f"{SITE}/{name}": text for name, text in INSTALLED.items()},
    }
    published = files(cache / key)
    for output in outputs:
        assert sources(output) == whole, output
        assert files(output) == published, output  # the bytecode of each compiler too
        assert (output / "extensions" / EXTENSION_NAME).stat().st_mode & 0o111
    # One entry; no builder's staging directory (hidden: `.<key>-…`).
    assert [entry.name for entry in cache.iterdir()] == [key]
    assert sources(cache / key) == whole


def test_pruning_the_cache_leaves_other_synths_builds_and_skips_what_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A synth that published its bundle prunes the older ones: never a staging directory
    (another synth's build in progress, however old), and an entry removed meanwhile by
    a third synth is skipped (it failed the build with FileNotFoundError)."""
    import os

    from cdk.layer_bundling import CACHE_ENTRIES_KEPT

    cache = tmp_path / "cache"
    bundling = CoreLayerBundling(
        project_root=project(tmp_path / "project"),
        python_version="3.13",
        cache_dir=cache,
        find_compiler=lambda version: None,
    )
    published = [cache / (f"{number:x}" * 64)[:64] for number in range(1, 8)]
    staging = cache / f"{'f' * 12}-inprogress"
    for age, entry in enumerate([staging, *published]):
        (entry / "python").mkdir(parents=True)
        os.utime(entry, (1_000_000 + age, 1_000_000 + age))  # the staging one is oldest
    vanished = published[-1]  # the newest: another synth removes it as this one looks
    stat = Path.stat

    def stat_racing(path: Path, **kwargs: object) -> os.stat_result:
        if path == vanished:
            raise FileNotFoundError(path)
        return stat(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", stat_racing)
    bundling._prune(keep=published[0].name)

    left = {p.name for p in cache.iterdir()}
    assert staging.name in left and published[0].name in left
    # Of the others, the newest CACHE_ENTRIES_KEPT - 1 stay (the one that vanished left
    # the listing, so it is not counted).
    readable = published[1:-1]
    kept = readable[-(CACHE_ENTRIES_KEPT - 1) :]
    assert {p.name for p in readable if p.name in left} == {p.name for p in kept}
