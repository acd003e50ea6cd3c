"""npm `jose` 6 (Node) as the relying party: `createRemoteJWKSet` on the JWKS the system
serves over plain HTTP, `jwtVerify` pinned to issuer, audience, RS256/ES256, `typ: at+jwt`
and the required registered claims. One node process verifies every case."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.interop.conftest import AUDIENCE, CASE_IDS, TOKEN_CASES, TokenCase, verifier_missing
from tokex.local.runner import LocalSystem

HERE = Path(__file__).parent
SCRIPT = HERE / "verify_jose.mjs"
JOSE_PACKAGE = HERE / "node_modules" / "jose" / "package.json"
# What jose says for each flaw: its error code and, for claim checks, the claim it names.
EXPECTED_REFUSAL = {
    "signature": ("ERR_JWS_SIGNATURE_VERIFICATION_FAILED", None),
    "expired": ("ERR_JWT_EXPIRED", "exp"),
    "audience": ("ERR_JWT_CLAIM_VALIDATION_FAILED", "aud"),
    "issuer": ("ERR_JWT_CLAIM_VALIDATION_FAILED", "iss"),
    "no-exp": ("ERR_JWT_CLAIM_VALIDATION_FAILED", "exp"),
    "nbf-future": ("ERR_JWT_CLAIM_VALIDATION_FAILED", "nbf"),
}


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, once jose is known to be installed (checked before the system
    under test is started, so a skip costs nothing)."""
    binary = shutil.which("node")
    if binary is None:
        verifier_missing("node is not installed")
    if not JOSE_PACKAGE.is_file():
        verifier_missing("npm jose is not installed in tests/interop/node_modules (npm ci)")
    return binary


@pytest.fixture(scope="module")
def jose_results(
    node: str, local_system: LocalSystem, token_cases: dict[str, str]
) -> dict[str, Any]:
    request = {
        "jwksUrl": local_system.issuer + "/.well-known/jwks.json",
        "issuer": local_system.issuer,
        "audience": AUDIENCE,
        "tokens": token_cases,
    }
    done = subprocess.run(
        [node, str(SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=HERE,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)
    assert output["jose"].split(".")[0] == "6", output["jose"]
    return output["results"]


@pytest.mark.parametrize("case", TOKEN_CASES, ids=CASE_IDS)
def test_jose_verdict(
    node: str, case: TokenCase, jose_results: dict[str, Any], local_system: LocalSystem
):
    result = jose_results[case.name]
    if case.accepted:
        assert result["ok"], result
        assert result["alg"] == case.alg
        assert result["payload"]["iss"] == local_system.issuer
        assert result["payload"]["aud"] == AUDIENCE
    else:
        assert case.flaw is not None
        code, claim = EXPECTED_REFUSAL[case.flaw]
        assert not result["ok"], f"jose accepted a token with a bad {case.flaw}"
        assert (result["code"], result.get("claim")) == (code, claim), result
