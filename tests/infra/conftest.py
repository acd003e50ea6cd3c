"""Synthesize the CDK app offline, once per session per configuration.

Four apps are synthesized, which between them hold every state of a key rotation
(docs/deploy.md, *Key rotation*): the default deployment (cdk.json context: slot "a"
only); an alternate one (ECC keys, custom domain, WAF, STS regions, TTLs, slot "b"
published beside the signing slot "a" - rotation step 1 -, a published key outside the
stack, instance tag lookups in any account, two trusted JWT issuers as a list); one with
slot "b" only - after step 3 - and instance tag lookups in listed accounts only; and the
rotation one (slot "b" signs, "a" is still published - step 2 -, with `signingKeys` and
`trustedIssuers` JSON strings, as `-c` passes them).
Each synth runs cdk-nag, so a finding without an acknowledgment fails every infra test.

Every test session bundles the layer from an **empty cache** (a session directory as
`TOKEX_LAYER_CACHE_DIR`), as a user's first `cdk synth` on a new machine does, with the pip
the README's setup command leaves in the venv: a warm `~/.cache/tokex/cdk-layer` once hid
a bundler that the pip of a new venv refused. The four synths share that one bundle.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Before aws_cdk starts its jsii Node process: Node 20's end-of-life banner is noise here.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
pytest.importorskip("aws_cdk", reason="the cdk extra is not installed")

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

TEST_NONCE = "infra-test-nonce"
# JWT evidence (docs/deploy.md "JWT evidence: trusted issuers"): an account's IAM outbound
# identity federation issuer and an EKS cluster's OIDC issuer.
OIF_ISSUER = {
    "kind": "aws-oif",
    "issuer": "https://a1d2b0fd-1177-4468-9351-2f0123456723.tokens.sts.global.api.aws",
    "account": "123456789012",
}
EKS_ISSUER = {
    "kind": "eks",
    "issuer": "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF",
    "account": "210987654321",
    "region": "eu-west-1",
    "cluster": "orders",
}
ALTERNATE_CONTEXT: dict[str, Any] = {
    "signingKeySpec": "ECC_NIST_P256",
    "domainName": "auth.example.com",
    "certificateArn": (
        "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"
    ),
    "webAclArn": (
        "arn:aws:wafv2:us-east-1:123456789012:global/webacl/tokex/"
        "12345678-1234-1234-1234-123456789012"
    ),
    "stsRegions": "eu-west-1,us-east-1",
    "throttleRateLimit": 20,
    "throttleBurstLimit": 40,
    "tracing": "sdk",
    "publishedKeyArns": (
        "arn:aws:kms:eu-west-1:123456789012:key/abcdef01-2345-6789-abcd-ef0123456789"
    ),
    "instanceTagsRoleName": "tokex/tokex-instance-tags",
    "ttlCapSeconds": 7200,
    "defaultTtlSeconds": 600,
    # Rotation step 1: "b" published, "a" (the default active slot) signs.
    "signingKeys": ["a", "b"],
    # As cdk.json holds it: a list.
    "trustedIssuers": [OIF_ISSUER, EKS_ISSUER],
}
ACCOUNTS_CONTEXT: dict[str, Any] = {
    "instanceTagsRoleName": "tokex-instance-tags",
    "instanceTagsAccounts": "111111111111,222222222222",
    "tracing": "off",
    # Rotation step 3: "a" retired, "b" signs.
    "signingKeys": "b",
    "activeSigningKey": "b",
    "logRetentionDays": "365",  # as -c passes it: a string
    "requireSignedAudience": "true",
}
ROTATION_CONTEXT: dict[str, Any] = {
    # Rotation step 2, as `-c signingKeys='["b","a"]' -c activeSigningKey=b` passes it.
    "signingKeys": '["b","a"]',
    "activeSigningKey": "b",
    # As `-c trustedIssuers='[...]'` passes it: a string.
    "trustedIssuers": json.dumps([EKS_ISSUER], indent=1),
}


@dataclass(frozen=True)
class Synthesized:
    outdir: Path
    template_path: Path
    raw: dict[str, Any]
    template: Any  # aws_cdk.assertions.Template
    # Hash of the layer's inputs (core sources, requirements) when this synth ran.
    layer_inputs_hash: str

    def layer_dir(self, path: str = "CoreLayer/Layer") -> Path:
        """The asset directory of the layer at `path` (the core layer; the other one is
        the proxy extension's, "ProxyExtensionLayer/Layer")."""
        from tests.infra.checks import logical_id_in

        layer = self.raw["Resources"][logical_id_in(self.raw, path)]
        assert layer["Type"] == "AWS::Lambda::LayerVersion"
        asset_hash = layer["Properties"]["Content"]["S3Key"].removesuffix(".zip")
        return self.outdir / f"asset.{asset_hash}"


def synthesize(outdir: Path, context: dict[str, Any]) -> Synthesized:
    from aws_cdk.assertions import Template

    from cdk.functions import RUNTIME
    from cdk.layer_bundling import CoreLayerBundling
    from cdk.tokex_stack import build_app

    layer_inputs = CoreLayerBundling(
        project_root=REPO_ROOT, python_version=RUNTIME.name.removeprefix("python")
    ).inputs_hash()

    app, stack = build_app(
        context={
            "deployNonce": TEST_NONCE,
            # Resource metadata carries construct paths: the checks find resources by them.
            "aws:cdk:enable-path-metadata": True,
            **context,
        },
        outdir=str(outdir),
    )
    app.synth()  # runs cdk-nag: raises on any unacknowledged finding
    path = outdir / stack.template_file
    raw = json.loads(path.read_text(encoding="utf-8"))
    return Synthesized(outdir, path, raw, Template.from_json(raw), layer_inputs)


@pytest.fixture(scope="session", autouse=True)
def cold_layer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty layer cache for this session's synths (see the module docstring)."""
    cache = tmp_path_factory.mktemp("layer-cache")
    previous = os.environ.get("TOKEX_LAYER_CACHE_DIR")
    os.environ["TOKEX_LAYER_CACHE_DIR"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("TOKEX_LAYER_CACHE_DIR", None)
    else:
        os.environ["TOKEX_LAYER_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk-default"), {})


@pytest.fixture(scope="session")
def alternate_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk-alternate"), ALTERNATE_CONTEXT)


@pytest.fixture(scope="session")
def accounts_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk-accounts"), ACCOUNTS_CONTEXT)


@pytest.fixture(scope="session")
def rotation_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk-rotation"), ROTATION_CONTEXT)


# The shortest tokens the options allow: a cap below the settings' own default TTL (900).
# And a fleet's per-principal budget.
SHORT_TOKENS_CONTEXT: dict[str, Any] = {
    "ttlCapSeconds": 600,
    "defaultTtlSeconds": 300,
    "rateLimitPerMinute": 6000,
}


@pytest.fixture(scope="session")
def short_tokens_synth(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(tmp_path_factory.mktemp("cdk-short-tokens"), SHORT_TOKENS_CONTEXT)
