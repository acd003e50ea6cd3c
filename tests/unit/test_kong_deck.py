"""`deck validate` on every kind of file `tokex kong-config` makes, and the example in
examples/kong/. The `deck` here is Debian's decK 1.4.0, which predates Kong 3.x and does
not check the 3.0 format's plugin fields (it accepts `_format_version: "99.9"`, misspelled
plugin settings and an unknown credential `algorithm`). It does catch a duplicate
credential key, a credential without `secret` and a reference to an entity the files do
not hold. Plugin values: test_kong_config.py, against tests/support/kong_jwt.py."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_kong_config import AUDIENCE_ROUTES, ISSUER, SERVICE, jwks_of, new_key
from tokex import kong
from tokex.cli.kong import parse_document, read_jwks, render
from tokex.kong import Placement, Route

EXAMPLES = Path(__file__).parents[2] / "examples" / "kong"
# In CI (CI=true) a missing decK is a failure: .ci/install-verifiers installs it.
requires_deck = pytest.mark.skipif(
    shutil.which("deck") is None and os.environ.get("CI", "").lower() != "true",
    reason="decK is not installed (Debian package `deck`; .ci/install-verifiers)",
)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Any, dict[str, Any]]]:
    return {alg: new_key(alg) for alg in ("RS256", "ES256")}


def deck_validate(tmp_path: Path, *documents: dict[str, Any] | str) -> subprocess.CompletedProcess:
    arguments = []
    for index, document in enumerate(documents):
        path = tmp_path / f"file{index}.yaml"
        path.write_text(
            document if isinstance(document, str) else render(document, "yaml", source="t")
        )
        arguments += ["-s", str(path)]
    return subprocess.run(
        ["deck", "validate", *arguments], capture_output=True, text=True, timeout=60, check=False
    )


STUB_ROUTES = {
    "_format_version": "3.0",
    "services": [
        {
            "name": "demo",
            "url": "http://demo.internal:8080",
            "routes": [{"name": n, "paths": [f"/{n}"]} for n in ("orders", "billing")],
        }
    ],
}


@requires_deck
def test_deck_validates_every_kind_of_generated_file(keys, tmp_path):
    jwks = jwks_of(keys["RS256"][1], keys["ES256"][1])
    referenced = Placement(routes=AUDIENCE_ROUTES.routes)
    complete = [
        kong.jwt_config(jwks, SERVICE, max_ttl=3600),
        kong.jwt_config(jwks, AUDIENCE_ROUTES, max_ttl=3600),
        kong.jwt_config(jwks, Placement(global_scope=True), max_ttl=3600),
        kong.openid_connect_config(ISSUER, AUDIENCE_ROUTES),
        kong.introspection_config(ISSUER, SERVICE, client_id="kong", client_secret="s"),
    ]
    for document in complete:
        result = deck_validate(tmp_path, document)
        assert result.returncode == 0, result.stderr
    # Plugins for a service and routes defined in the operator's own decK file.
    for document in (
        kong.jwt_config(jwks, Placement(service="demo"), max_ttl=3600),
        kong.jwt_config(jwks, referenced, max_ttl=3600),
        kong.openid_connect_config(ISSUER, referenced),
    ):
        assert deck_validate(tmp_path, document).returncode != 0  # references are checked
        result = deck_validate(tmp_path, STUB_ROUTES, document)
        assert result.returncode == 0, result.stderr


@requires_deck
def test_deck_refuses_the_naive_design_of_one_kid_on_two_consumers(keys, tmp_path):
    document = kong.jwt_config(jwks_of(keys["RS256"][1]), SERVICE, max_ttl=3600)
    twin = {**document["consumers"][0], "username": "another-audience"}
    result = deck_validate(tmp_path, {**document, "consumers": [*document["consumers"], twin]})
    assert result.returncode != 0 and "already exists" in result.stderr


@requires_deck
def test_deck_validates_the_example():
    result = subprocess.run(
        ["deck", "validate", "-s", str(EXAMPLES / "kong.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_example_is_what_the_generator_makes_from_its_jwks():
    example = parse_document((EXAMPLES / "kong.yaml").read_text())
    placement = Placement(
        service="demo",
        service_url="http://127.0.0.1:8080",
        routes=(Route("demo", ("demo-api",)), Route("demo-instance", ("demo-instance-api",))),
    )
    jwks = read_jwks(str(EXAMPLES / "jwks.json"))
    assert kong.jwt_config(jwks, placement, max_ttl=3600, existing=example) == example


@requires_deck
def test_names_yaml_would_read_as_another_type_stay_strings(keys, tmp_path):
    """`y`, `n` and `0o17` are valid Kong names that PyYAML wrote plain and decK read as a
    boolean and an integer: decK refused the file tokex had reported as written."""
    names = ("y", "n", "on", "null", "0o17", "1e3", ".inf", "12")
    routes = tuple(Route(name, (f"aud-{i}",)) for i, name in enumerate(names))
    placement = Placement(service="demo", service_url="http://demo.internal:8080", routes=routes)
    document = kong.jwt_config(jwks_of(keys["RS256"][1]), placement, max_ttl=3600)
    result = deck_validate(tmp_path, document)
    assert result.returncode == 0, result.stderr
    text = render(document, "yaml", source="t")
    for name in names:
        assert f'name: "{name}"' in text
    assert "name: demo\n" in text  # a plain word stays plain
