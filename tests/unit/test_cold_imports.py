"""The exchange's cold start loads only what a signed request needs (issue 11,
docs/performance.md "Results"): instance documents, JWT evidence, the EC2 tag
lookup, the issuers' keys, introspection and the publisher load when first needed, in
that request, never at import. A fresh interpreter loads the handler as Lambda's runtime
does, with a deployment's settings."""

from __future__ import annotations

import pytest

from tests.support.fresh_handler import FUNCTIONS, run_probe

PROBE = """
import importlib, json, sys
importlib.import_module("tokex_functions.exchange.handler")
print(json.dumps(sorted(name for name in sys.argv[2:] if name in sys.modules)))
"""
# Loaded only by the request that needs them (tokex/exchange.py, tokex/wiring.py).
ON_DEMAND = [
    "tokex.evidence.instance_identity",  # instance evidence
    "tokex.evidence.pkcs7",
    "asn1crypto",
    "tokex.evidence.jwt_evidence",  # JWT evidence
    "tokex.evidence.jwt_claims",
    "tokex.adapters.oidc_keys",
    "tokex.adapters.ec2",  # a policy's instance tag condition
    "tokex.introspection",  # other functions' use cases
    "tokex.publish",
]
# What a signed request alone needs, loaded at import: proof the probe sees the modules.
AT_IMPORT = ["tokex.exchange", "tokex.evidence.sigv4_request", "tokex.tokens.jws", "jwt"]
# The deployment's optional features on: their adapters are still built on first use.
FEATURES = {
    "TOKEX_INSTANCE_TAGS_ROLE_NAME": "tokex-instance-tags",
    "TOKEX_TRUSTED_ISSUERS": (
        '[{"kind": "eks", "issuer": "https://oidc.eks.us-east-1.amazonaws.com/id/0123ABCD",'
        ' "account": "123456789012", "region": "us-east-1", "cluster": "prod"}]'
    ),
}


@pytest.mark.parametrize("env", [{}, FEATURES], ids=["signed requests", "every feature on"])
def test_a_cold_exchange_loads_what_a_signed_request_needs(env: dict[str, str]) -> None:
    loaded = run_probe(PROBE, FUNCTIONS / "exchange", *ON_DEMAND, *AT_IMPORT, env=env)
    assert loaded == sorted(AT_IMPORT)
