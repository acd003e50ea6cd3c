"""`tokex local --regions us-east-1,eu-west-1` as a user runs it (docs/local.md "Several
Regions"): the issuer's discovery lists both Regions, and `tokex token` gets a token from
the Region it asks for, verified against the one JWKS."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.e2e.running_local import RunningLocal, run_token, start_tokex_local

REGIONS = ("us-east-1", "eu-west-1")


@pytest.fixture(scope="module")
def regional_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLocal]:
    running = start_tokex_local(
        tmp_path_factory.mktemp("state"), options=("--regions", ",".join(REGIONS))
    )
    yield running
    assert running.stop() == 0, running.console_text()
    assert "Traceback" not in running.console_text()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def test_discovery_lists_every_region_home_first(regional_process: RunningLocal) -> None:
    issuer = regional_process.issuer
    discovery = get_json(issuer + "/.well-known/openid-configuration")
    assert discovery["issuer"] == issuer
    assert discovery["tokex_regions"] == [
        {
            "region": region,
            "token_endpoint": f"{issuer}/regions/{region}/token",
            "introspection_endpoint": f"{issuer}/regions/{region}/introspect",
        }
        for region in REGIONS
    ]
    # The banner names the home Region and the others.
    assert "us-east-1 (home: /token, /introspect), eu-west-1" in regional_process.console_text()


@pytest.mark.parametrize("region", REGIONS)
def test_tokex_token_gets_a_token_in_either_region(
    regional_process: RunningLocal, region: str
) -> None:
    issuer = regional_process.issuer
    result = run_token(
        regional_process.state_dir,
        "--endpoint", issuer, "--audience", "demo-api", "--region", region, "-v",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    # `-v` says where it went: the asked Region's own path.
    assert f"/regions/{region}/token" in result.stderr
    keys = jwt.PyJWKClient(issuer + "/.well-known/jwks.json", cache_keys=False)
    claims = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience="demo-api",
        issuer=issuer,
    )
    assert claims["sub"]
