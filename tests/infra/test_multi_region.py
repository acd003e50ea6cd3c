"""The multi-Region deployment (docs/multi-region.md): one issuer, a stack pair per Region.

Synthesized once per session with the layer bundled (as `cdk synth` does) and cdk-nag's
checks on every stack: three Regions, both multi-Region key slots (rotation step 1: mrk-a
signs, mrk-b is published), a trusted issuer and instance tag lookups, so that every
Regional property has something to show. The opt-in path from a single-Region stack is
synthesized offline, step by step, and compared template to template.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra import checks
from tests.infra.checks import INTROSPECT_READ_CONDITION, POLICY_GENERATION_CONDITION
from tests.infra.conftest import OIF_ISSUER, TEST_NONCE, Synthesized
from tokex.cli.deployment import POLICY_TABLE_OUTPUT, STATE_TABLE_OUTPUT
from tokex.edge import NEXT_ORIGIN_SECRET_ENV, ORIGIN_HEADER, ORIGIN_SECRET_ENV

pytestmark = pytest.mark.infra

HOME = "us-east-1"
OTHERS = ("eu-west-1", "ap-southeast-2")
REGIONS = (HOME, *OTHERS)
MULTI_REGION_CONTEXT: dict[str, Any] = {
    "regions": ",".join(REGIONS),
    "signingKeys": ["mrk-a", "mrk-b"],
    "activeSigningKey": "mrk-a",
    "trustedIssuers": [OIF_ISSUER],
    "instanceTagsRoleName": "tokex-instance-tags",
    "instanceTagsAccounts": "111111111111",
    # Short tokens: a cap under the settings' own default TTL (900) reaches every Region.
    "ttlCapSeconds": 600,
    "defaultTtlSeconds": 300,
    "requireSignedAudience": True,  # as cdk.json holds it: a boolean
}
REGIONAL_SECRET = "tokex/Tokex/regional-origin"
# The deployment's settings, the same for the exchange of every Region.
SHARED_EXCHANGE_SETTINGS = (
    "TOKEX_TRUSTED_ISSUERS",
    "TOKEX_INSTANCE_TAGS_ROLE_NAME",
    "TOKEX_TTL_CAP_SECONDS",
    "TOKEX_DEFAULT_TTL_SECONDS",
    "TOKEX_RATE_LIMIT_PER_MINUTE",
    "TOKEX_STS_PARTITIONS",
    "TOKEX_REQUIRE_SIGNED_AUDIENCE",
)


@dataclass(frozen=True)
class App:
    outdir: Path
    manifest: dict[str, Any]
    templates: dict[str, dict[str, Any]]  # by stack name

    def resources(self, stack: str, type_: str | None = None) -> dict[str, dict[str, Any]]:
        found = self.templates[stack]["Resources"]
        return {k: v for k, v in found.items() if type_ is None or v["Type"] == type_}

    def at(self, stack: str, path: str) -> tuple[str, dict[str, Any]]:
        """The resource at construct path `<stack>/<path>/Resource` (an L2 construct's)
        or `<stack>/<path>` (an L1 construct's, as a Regional replica key)."""
        wanted = {f"{stack}/{path}/Resource", f"{stack}/{path}"}
        found = [
            (lid, res)
            for lid, res in self.resources(stack).items()
            if res.get("Metadata", {}).get("aws:cdk:path") in wanted
        ]
        assert len(found) == 1, f"expected one resource at {wanted}, found {found}"
        return found[0]

    def env(self, stack: str, function: str) -> dict[str, Any]:
        return self.at(stack, f"{function}/Function")[1]["Properties"]["Environment"]["Variables"]

    def output_value(self, stack: str, reference: dict[str, Any]) -> Any:
        """What a `Fn::GetStackOutput` names: the output's value in the producing stack."""
        spec = reference["Fn::GetStackOutput"]
        assert spec["StackName"] in self.templates, spec
        return self.templates[spec["StackName"]]["Outputs"][spec["OutputName"]]["Value"]


def synth_app(outdir: Path, context: dict[str, Any], *, bundle: bool = True) -> App:
    from cdk.tokex_stack import build_app

    app, _ = build_app(
        context={"deployNonce": TEST_NONCE, "aws:cdk:enable-path-metadata": True, **context},
        post_cli_context=None if bundle else {"aws:cdk:bundling-stacks": []},
        outdir=str(outdir),
    )
    app.synth()  # cdk-nag on every stack: raises on any unacknowledged finding
    manifest = json.loads((outdir / "manifest.json").read_text())
    templates = {
        name: json.loads((outdir / artifact["properties"]["templateFile"]).read_text())
        for name, artifact in manifest["artifacts"].items()
        if artifact["type"] == "aws:cloudformation:stack"
    }
    return App(outdir, manifest, templates)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> App:
    return synth_app(tmp_path_factory.mktemp("cdk-multi-region"), MULTI_REGION_CONTEXT)


def api_stack(region: str) -> str:
    return f"Tokex-{region}-Api"


def regional_stack(region: str) -> str:
    return f"Tokex-{region}"


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


# --- the stacks ---------------------------------------------------------------------


def test_one_home_stack_and_a_stack_pair_per_other_region(multi: App) -> None:
    artifacts = multi.manifest["artifacts"]
    expected = {"Tokex": HOME}
    for region in OTHERS:
        expected[api_stack(region)] = region
        expected[regional_stack(region)] = region
    assert set(multi.templates) == set(expected)
    for name, region in expected.items():
        # An explicit Region per stack, no StackSets.
        assert artifacts[name]["environment"] == f"aws://unknown-account/{region}"
        assert artifacts[name]["properties"].get("stackName", name) == name
    assert not any(r["Type"].startswith("AWS::CloudFormation::StackSet") for t in
                   multi.templates.values() for r in t["Resources"].values())  # fmt: skip
    # The deploy order that has no cycle: Regional API, home, Regional functions.
    for region in OTHERS:
        assert api_stack(region) in artifacts["Tokex"]["dependencies"]
        assert {"Tokex", api_stack(region)} <= set(
            artifacts[regional_stack(region)]["dependencies"]
        )
        assert not set(artifacts[api_stack(region)].get("dependencies", [])) & set(multi.templates)


def test_cross_stack_references_are_weak_stack_outputs(multi: App) -> None:
    """docs/multi-region.md "Stacks": every cross-stack value is a `Fn::GetStackOutput`
    (weak, read at deploy), never an export lock or an SSM custom resource."""
    for name, template in multi.templates.items():
        text = json.dumps(template)
        assert "Fn::ImportValue" not in text, name
        assert "Custom::CrossRegion" not in text, name
        assert not any(o.get("Export") for o in template.get("Outputs", {}).values()), name
    for region in OTHERS:
        references = [
            v for v in _walk(multi.templates[regional_stack(region)])
            if isinstance(v, dict) and "Fn::GetStackOutput" in v
        ]  # fmt: skip
        assert references
        for reference in references:
            # Each names a real output of a stack of this app, in that stack's Region.
            spec = reference["Fn::GetStackOutput"]
            assert multi.manifest["artifacts"][spec["StackName"]]["environment"].endswith(
                "/" + spec["Region"]
            )
            multi.output_value(regional_stack(region), reference)


# --- keys ---------------------------------------------------------------------------


def test_one_signing_key_per_slot_as_a_multi_region_key_with_regional_replicas(
    multi: App,
) -> None:
    for slot_path in ("SigningKeyMrkA", "SigningKeyMrkB"):
        primary_id, primary = multi.at("Tokex", f"{slot_path}/Key")
        assert primary["Type"] == "AWS::KMS::Key"
        assert primary["Properties"]["MultiRegion"] is True
        assert primary["Properties"]["KeySpec"] == "RSA_2048"
        assert primary["DeletionPolicy"] == "Retain"
        for region in OTHERS:
            _, replica = multi.at(regional_stack(region), f"{slot_path}/Key")
            assert replica["Type"] == "AWS::KMS::ReplicaKey"
            assert replica["DeletionPolicy"] == "Retain"
            # Same key material: the replica of exactly this primary.
            assert multi.output_value(
                regional_stack(region), replica["Properties"]["PrimaryKeyArn"]
            ) == {"Fn::GetAtt": [primary_id, "Arn"]}


def _replication(key_policy: dict[str, Any]) -> list[Any]:
    """The Regions each statement that allows kms:ReplicateKey names (None: no condition)."""
    return [
        (s.get("Condition") or {}).get("StringEquals", {}).get("kms:ReplicaRegion")
        for s in key_policy["Statement"]
        if s["Effect"] == "Allow" and "kms:ReplicateKey" in json.dumps(s["Action"])
    ]


def test_a_signing_key_is_replicated_only_into_the_deployments_regions(multi: App) -> None:
    """A replica has the key's material (the same `kid`) under a policy its creator picks:
    one in any other Region would let an IAM administrator sign accepted tokens."""
    every = [HOME, *OTHERS]
    for slot_path in ("SigningKeyMrkA", "SigningKeyMrkB"):
        _, primary = multi.at("Tokex", f"{slot_path}/Key")
        assert _replication(primary["Properties"]["KeyPolicy"]) == [sorted(OTHERS)]
        for region in OTHERS:
            _, replica = multi.at(regional_stack(region), f"{slot_path}/Key")
            targets = sorted(r for r in every if r != region)
            assert _replication(replica["Properties"]["KeyPolicy"]) == [targets]


def _sign_principals(key_policy: dict[str, Any]) -> list[Any]:
    return [
        s["Condition"]["ArnEquals"]["aws:PrincipalArn"]
        for s in key_policy["Statement"]
        if s["Effect"] == "Allow" and "kms:Sign" in json.dumps(s["Action"])
    ]


def test_each_region_signs_with_its_own_replica_and_only_its_exchange_may(multi: App) -> None:
    for region in OTHERS:
        stack = regional_stack(region)
        active_id, active = multi.at(stack, "SigningKeyMrkA/Key")
        published_id, published = multi.at(stack, "SigningKeyMrkB/Key")
        exchange_role, _ = multi.at(stack, "Exchange/Role")
        assert multi.env(stack, "Exchange")["TOKEX_SIGNING_KEY_ID"] == {
            "Fn::GetAtt": [active_id, "Arn"]
        }
        assert _sign_principals(active["Properties"]["KeyPolicy"]) == [
            {"Fn::GetAtt": [exchange_role, "Arn"]}
        ]
        # The published slot signs nowhere; the Regional introspection verifies both.
        assert _sign_principals(published["Properties"]["KeyPolicy"]) == []
        assert multi.env(stack, "Introspect")["TOKEX_PUBLISHED_KEY_IDS"] == {
            "Fn::GetAtt": [published_id, "Arn"]
        }
        denies = [
            s for s in active["Properties"]["KeyPolicy"]["Statement"] if s["Effect"] == "Deny"
        ]
        assert denies and denies[0]["Action"] == "kms:CreateGrant"


# --- tables -------------------------------------------------------------------------


def test_tables_are_global_tables_with_a_replica_in_every_region(multi: App) -> None:
    for path in ("PolicyTable/Table", "StateTable/Table"):
        _, table = multi.at("Tokex", path)
        assert table["Type"] == "AWS::DynamoDB::GlobalTable"
        replicas = table["Properties"]["Replicas"]
        assert sorted(r["Region"] for r in replicas) == sorted(REGIONS)
        for replica in replicas:
            assert replica["PointInTimeRecoverySpecification"] == {
                "PointInTimeRecoveryEnabled": True
            }
            assert replica["DeletionProtectionEnabled"] is True
        assert table["DeletionPolicy"] == "Retain"
        for region in OTHERS:
            assert not multi.resources(regional_stack(region), "AWS::DynamoDB::GlobalTable")
            assert not multi.resources(regional_stack(region), "AWS::DynamoDB::Table")


def _statements(app: App, stack: str, role: str) -> list[dict[str, Any]]:
    role_id, _ = app.at(stack, f"{role}/Role")
    found = []
    for policy in app.resources(stack, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def _table_arn_name(arn: Any, region: str) -> Any:
    """`arn:<partition>:dynamodb:<region>:<account>:table/<name>` → <name>."""
    parts = arn["Fn::Join"][1]
    assert f":dynamodb:{region}:" in json.dumps(parts), arn
    assert parts[-2] == ":table/" or str(parts[-2]).endswith(":table/"), arn
    return parts[-1]


def test_regional_functions_use_their_own_regions_replicas(multi: App) -> None:
    policy_table = multi.at("Tokex", "PolicyTable/Table")[0]
    state_table = multi.at("Tokex", "StateTable/Table")[0]
    for region in OTHERS:
        stack = regional_stack(region)
        env = multi.env(stack, "Exchange")
        assert multi.output_value(stack, env["TOKEX_POLICY_TABLE"]) == {"Ref": policy_table}
        assert multi.output_value(stack, env["TOKEX_STATE_TABLE"]) == {"Ref": state_table}
        granted = {}
        for statement in _statements(multi, stack, "Exchange"):
            if statement["Action"] in (
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:Scan",
                "dynamodb:GetItem",
            ):
                name = _table_arn_name(statement["Resource"], region)
                granted[statement["Sid"]] = (
                    multi.output_value(stack, name),
                    statement.get("Condition"),
                )
        assert granted == {
            "ReadPolicies": ({"Ref": policy_table}, None),
            "ReadPolicyGeneration": ({"Ref": policy_table}, POLICY_GENERATION_CONDITION),
            "RecordSignatureUse": (
                {"Ref": state_table},
                {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["sig#*"]}},
            ),
            "CountCallerExchanges": (
                {"Ref": state_table},
                {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["rate#*"]}},
            ),
        }
        reads = [s for s in _statements(multi, stack, "Introspect") if s.get("Sid") ==
                 "ReadClientsAndRevocations"]  # fmt: skip
        assert len(reads) == 1
        assert reads[0]["Action"] == ["dynamodb:BatchGetItem", "dynamodb:GetItem"]
        assert reads[0]["Condition"] == INTROSPECT_READ_CONDITION
        assert multi.output_value(stack, _table_arn_name(reads[0]["Resource"], region)) == {
            "Ref": state_table
        }


# --- one door, one issuer -----------------------------------------------------------


def _behaviors(app: App) -> dict[str, dict[str, Any]]:
    _, distribution = app.at("Tokex", "IssuerSite/Distribution")
    config = distribution["Properties"]["DistributionConfig"]
    return {b["PathPattern"]: b for b in config["CacheBehaviors"]}


def _origin(app: App, origin_id: str) -> dict[str, Any]:
    _, distribution = app.at("Tokex", "IssuerSite/Distribution")
    origins = distribution["Properties"]["DistributionConfig"]["Origins"]
    return next(o for o in origins if o["Id"] == origin_id)


def _header(origin: dict[str, Any]) -> Any:
    headers = {h["HeaderName"]: h["HeaderValue"] for h in origin["OriginCustomHeaders"]}
    assert set(headers) == {ORIGIN_HEADER}
    return headers[ORIGIN_HEADER]


def test_every_region_is_behind_the_one_cloudfront_at_its_own_path(multi: App) -> None:
    behaviors = _behaviors(multi)
    paths = {"/token", "/introspect"} | {
        f"/regions/{region}/{endpoint}"
        for region in REGIONS
        for endpoint in ("token", "introspect")
    }
    assert set(behaviors) == paths
    # Every API path has exactly the behaviour of /token (https only, no cache, no
    # compression, every viewer header but Host).
    reference = {
        k: v for k, v in behaviors["/token"].items() if k not in ("PathPattern", "TargetOriginId")
    }
    for behavior in behaviors.values():
        assert {
            k: v for k, v in behavior.items() if k not in ("PathPattern", "TargetOriginId")
        } == reference
    home_origin = behaviors["/token"]["TargetOriginId"]
    assert behaviors[f"/regions/{HOME}/token"]["TargetOriginId"] == home_origin
    assert behaviors["/introspect"]["TargetOriginId"] == home_origin
    secret_id, _ = multi.at("Tokex", "RegionalOriginSecret/Secret")
    for region in OTHERS:
        origin_id = behaviors[f"/regions/{region}/token"]["TargetOriginId"]
        assert behaviors[f"/regions/{region}/introspect"]["TargetOriginId"] == origin_id
        origin = _origin(multi, origin_id)
        assert origin["CustomOriginConfig"]["OriginProtocolPolicy"] == "https-only"
        domain = origin["DomainName"]["Fn::Join"][1]
        api_id, _ = multi.at(api_stack(region), "TokenApi/Api")
        assert multi.output_value("Tokex", domain[0]) == {"Ref": api_id}
        assert domain[1] == f".execute-api.{region}."
        # The Regional door's secret, not the home one.
        assert {"Ref": secret_id} in _header(origin)["Fn::Join"][1]


def test_regional_functions_refuse_anything_but_cloudfront(multi: App) -> None:
    _, secret = multi.at("Tokex", "RegionalOriginSecret/Secret")
    assert secret["Properties"]["Name"] == REGIONAL_SECRET
    assert sorted(r["Region"] for r in secret["Properties"]["ReplicaRegions"]) == sorted(OTHERS)
    for region in OTHERS:
        for function in ("Exchange", "Introspect"):
            # Read by name: the replica in the function's own Region.
            assert multi.env(regional_stack(region), function)[ORIGIN_SECRET_ENV] == (
                f"{{{{resolve:secretsmanager:{REGIONAL_SECRET}:SecretString:::}}}}"
            )


def test_a_new_origin_secret_generation_replaces_both_secrets_everywhere(
    multi: App, tmp_path: Path
) -> None:
    """The rotation of docs/deploy.md "One door": the home secret is a new resource, the
    Regional one a new name (a deleted secret's name stays taken for 30 days), and
    CloudFront and every function follow in the same deploy."""
    rotated = synth_app(
        tmp_path, {**MULTI_REGION_CONTEXT, "originSecretGeneration": 2}, bundle=False
    )
    old_home, _ = multi.at("Tokex", "OriginSecret/Secret")
    new_home, _ = rotated.at("Tokex", "OriginSecret2/Secret")
    assert old_home != new_home and old_home not in rotated.resources("Tokex")
    # The new one is the resource generation 1 made as its next and its functions admit:
    # the same secret, so the switch refuses no one (docs/deploy.md "One door").
    assert multi.at("Tokex", "OriginSecret2/Secret")[0] == new_home
    for function in ("Exchange", "Introspect"):
        assert {"Ref": new_home} in multi.env("Tokex", function)[NEXT_ORIGIN_SECRET_ENV][
            "Fn::Join"
        ][1]
        assert (
            rotated.env("Tokex", function)[NEXT_ORIGIN_SECRET_ENV]
            != (multi.env("Tokex", function)[NEXT_ORIGIN_SECRET_ENV])
        )
    regional_id, regional = rotated.at("Tokex", "RegionalOriginSecret/Secret")
    assert regional["Properties"]["Name"] == REGIONAL_SECRET + "-2"
    for function in ("Exchange", "Introspect"):
        assert json.dumps({"Ref": new_home}) in json.dumps(rotated.env("Tokex", function))
        for region in OTHERS:
            assert rotated.env(regional_stack(region), function)[ORIGIN_SECRET_ENV] == (
                f"{{{{resolve:secretsmanager:{REGIONAL_SECRET}-2:SecretString:::}}}}"
            )
    behaviors = _behaviors(rotated)
    assert {"Ref": new_home} in _header(_origin(rotated, behaviors["/token"]["TargetOriginId"]))[
        "Fn::Join"
    ][1]
    for region in OTHERS:
        origin = _origin(rotated, behaviors[f"/regions/{region}/token"]["TargetOriginId"])
        assert {"Ref": regional_id} in _header(origin)["Fn::Join"][1]


def test_each_region_serves_its_own_path_and_evidence(multi: App) -> None:
    home_env = multi.env("Tokex", "Exchange")
    assert home_env["TOKEX_SERVING_REGION"] == HOME
    assert multi.env("Tokex", "Introspect")["TOKEX_SERVING_REGION"] == HOME
    assert "TOKEX_STS_REGIONS" not in home_env
    assert multi.env("Tokex", "JwksPublisher")["TOKEX_SERVED_REGIONS"] == ",".join(REGIONS)
    for region in OTHERS:
        stack = regional_stack(region)
        env = multi.env(stack, "Exchange")
        assert env["TOKEX_SERVING_REGION"] == region
        assert multi.env(stack, "Introspect")["TOKEX_SERVING_REGION"] == region
        # The same issuer (home's CloudFront) and the same deployment settings.
        assert env["TOKEX_ISSUER"]["Fn::Join"][1][0] == "https://"
        assert multi.output_value(stack, env["TOKEX_ISSUER"]["Fn::Join"][1][1]) == {
            "Fn::GetAtt": [multi.at("Tokex", "IssuerSite/Distribution")[0], "DomainName"]
        }
        for key in SHARED_EXCHANGE_SETTINGS:
            assert env[key] == home_env[key], key
        api_id, _ = multi.at(api_stack(region), "TokenApi/Api")
        routes = multi.resources(stack, "AWS::ApiGatewayV2::Route").values()
        assert sorted(r["Properties"]["RouteKey"] for r in routes) == sorted(
            f"{method} /regions/{region}/{endpoint}"
            for method in ("POST", "ANY")
            for endpoint in ("token", "introspect")
        )
        for route in routes:
            assert multi.output_value(stack, route["Properties"]["ApiId"]) == {"Ref": api_id}
        # The Regional API itself has no route, and is throttled like home's.
        assert not multi.resources(api_stack(region), "AWS::ApiGatewayV2::Route")
        _, stage = multi.at(api_stack(region), "TokenApi/DefaultStage")
        assert stage["Properties"]["DefaultRouteSettings"] == {
            "ThrottlingBurstLimit": 100,
            "ThrottlingRateLimit": 50,
        }
    home_routes = {
        r["Properties"]["RouteKey"]
        for r in multi.resources("Tokex", "AWS::ApiGatewayV2::Route").values()
    }
    assert home_routes == {
        f"{method} {path}"
        for method in ("POST", "ANY")
        for path in (
            "/token",
            "/introspect",
            f"/regions/{HOME}/token",
            f"/regions/{HOME}/introspect",
        )
    }


def test_issuer_documents_are_published_once_from_home(multi: App) -> None:
    [publication] = multi.resources("Tokex", "Custom::TokexJwks").values()
    # Discovery lists the Regions: changing them must republish it even with a pinned
    # deployNonce (the tests pin it), which sends an Update only for a changed property.
    assert publication["Properties"]["ServedRegions"] == ",".join(REGIONS)
    for name in multi.templates:
        if name == "Tokex":
            continue
        for type_ in ("Custom::TokexJwks", "AWS::S3::Bucket", "AWS::CloudFront::Distribution",
                      "AWS::DynamoDB::GlobalTable", "AWS::SecretsManager::Secret"):  # fmt: skip
            assert not multi.resources(name, type_), (name, type_)
        assert not any("JwksPublisher" in lid for lid in multi.resources(name))
    outputs = multi.templates["Tokex"]["Outputs"]
    assert outputs["RegionalTokenEndpoints"]["Value"]["Fn::Join"][0] == ","


# --- single-Region, unchanged; opting in --------------------------------------------


def test_one_region_is_the_single_region_deployment(tmp_path: Path) -> None:
    """`regions` absent or one Region: the template is today's, byte for byte."""
    default = synth_app(tmp_path / "default", {}, bundle=False)
    one = synth_app(tmp_path / "one", {"regions": "eu-west-1"}, bundle=False)
    assert set(one.templates) == {"Tokex"} == set(default.templates)
    assert one.templates == default.templates
    assert default.manifest["artifacts"]["Tokex"]["environment"] == (
        "aws://unknown-account/unknown-region"
    )
    text = json.dumps(default.templates["Tokex"])
    for absent in ("TOKEX_SERVING_REGION", "TOKEX_SERVED_REGIONS", "/regions/", "MultiRegion"):
        assert absent not in text


# The documented opt-in (docs/multi-region.md "Opting in"): each step is one deploy, and
# an existing deployment adds its other Regions one per deploy.
OPT_IN_STEPS: list[dict[str, Any]] = [
    {},
    {"signingKeys": "a,mrk-a", "activeSigningKey": "a"},
    {"signingKeys": "a,mrk-a", "activeSigningKey": "mrk-a"},
    {"signingKeys": "mrk-a", "activeSigningKey": "mrk-a"},
    {"signingKeys": "mrk-a", "activeSigningKey": "mrk-a", "regions": "us-east-1,eu-west-1"},
    {"signingKeys": "mrk-a", "activeSigningKey": "mrk-a", "regions": ",".join(REGIONS)},
]
# What CloudFormation cannot update in place (each property's "Update requires"): it
# replaces a table, bucket or replica key whose property changes, and fails the update of
# a KMS key whose KeySpec, KeyUsage, MultiRegion or Origin changes ("regardless of the
# value of the UpdateReplacePolicy attribute", AWS::KMS::Key). A step changes none of them
# on a resource it keeps: another value is another resource (another logical id).
IMMUTABLE_PROPERTIES = {
    "AWS::DynamoDB::GlobalTable": ("TableName", "KeySchema", "LocalSecondaryIndexes"),
    "AWS::KMS::Key": ("KeySpec", "KeyUsage", "MultiRegion", "Origin"),
    "AWS::KMS::ReplicaKey": ("PrimaryKeyArn",),
    "AWS::S3::Bucket": ("BucketName", "ObjectLockEnabled"),
}


def _assert_nothing_replaced(before: App, after: App, stack: str, step: Any) -> None:
    """Every table, bucket and key of `stack` that `after` keeps keeps its immutable
    properties, and every one it drops was retained."""
    old = before.templates[stack]["Resources"]
    new = after.templates[stack]["Resources"]
    for logical_id, resource in old.items():
        if resource["Type"] not in IMMUTABLE_PROPERTIES:
            continue
        if logical_id not in new:
            # Leaves the template (a retired key slot or key spec): kept, never deleted.
            assert resource.get("DeletionPolicy") == "Retain", (step, logical_id)
            continue
        assert new[logical_id]["Type"] == resource["Type"]
        for prop in IMMUTABLE_PROPERTIES[resource["Type"]]:
            assert new[logical_id]["Properties"].get(prop) == resource["Properties"].get(prop), (
                step,
                logical_id,
                prop,
            )


def _replica_regions(app: App) -> dict[str, set[str]]:
    """Each global table's replica Regions. A single-Region stack's one replica is in the
    stack's Region (`Ref: AWS::Region`): home, where the opt-in keeps the stack."""
    return {
        lid: {
            HOME if r["Region"] == {"Ref": "AWS::Region"} else r["Region"]
            for r in table["Properties"]["Replicas"]
        }
        for lid, table in app.resources("Tokex", "AWS::DynamoDB::GlobalTable").items()
    }


def test_opting_in_replaces_no_table_and_no_retained_key(tmp_path: Path) -> None:
    apps = [
        synth_app(tmp_path / f"step{n}", context, bundle=False)
        for n, context in enumerate(OPT_IN_STEPS)
    ]
    for n, (before, after) in enumerate(itertools.pairwise(apps), start=1):
        _assert_nothing_replaced(before, after, "Tokex", n)
        # AWS::DynamoDB::GlobalTable: "you can only add or remove a single replica in each
        # update". A step that adds more fails the deploy: one Region per deploy.
        old_replicas, new_replicas = _replica_regions(before), _replica_regions(after)
        for table, replicas in new_replicas.items():
            assert len(replicas - old_replicas[table]) <= 1, (n, table, replicas)
            assert len(old_replicas[table] - replicas) <= 1, (n, table, replicas)
    # Listing both other Regions at once, as `regions=<home>,<a>,<b>` in one deploy, would add
    # two replicas to each table in one update: the deploy CloudFormation refuses.
    single, every = _replica_regions(apps[3]), _replica_regions(apps[-1])
    assert all(len(every[table] - single[table]) == 2 for table in every)
    first = apps[0].templates["Tokex"]["Resources"]
    last = apps[-1].templates["Tokex"]["Resources"]
    for path in ("PolicyTable/Table", "StateTable/Table"):
        lid, _ = apps[0].at("Tokex", path)
        assert lid in last
        # Replicas added in place: the home replica's settings are unchanged.
        home_before = first[lid]["Properties"]["Replicas"]
        assert len(home_before) == 1
        regions = {r["Region"]: r for r in last[lid]["Properties"]["Replicas"]}
        assert set(regions) == set(REGIONS)
        assert {k: v for k, v in home_before[0].items() if k != "Region"} == {
            k: v for k, v in regions["us-east-1"].items() if k != "Region"
        }
    # The old single-Region key slot left in step 3; it was retained, and a new
    # multi-Region key took over by the rotation.
    key_a, _ = apps[0].at("Tokex", "SigningKey/Key")
    assert key_a not in apps[3].templates["Tokex"]["Resources"]
    mrk_id, mrk = apps[1].at("Tokex", "SigningKeyMrkA/Key")
    assert mrk["Properties"]["MultiRegion"] is True
    assert _sign_principals(mrk["Properties"]["KeyPolicy"]) == []  # published before it signs
    signing = apps[4].templates["Tokex"]["Resources"][mrk_id]["Properties"]
    exchange_role, _ = apps[4].at("Tokex", "Exchange/Role")
    assert _sign_principals(signing["KeyPolicy"]) == [{"Fn::GetAtt": [exchange_role, "Arn"]}]


def test_the_multi_region_layer_is_the_single_region_layer(
    multi: App, default_synth: Synthesized
) -> None:
    """One layer build serves every Region (same asset, uploaded per Region)."""
    layers = set()
    for name in multi.templates:
        for layer in multi.resources(name, "AWS::Lambda::LayerVersion").values():
            if "CoreLayer" in layer["Metadata"]["aws:cdk:path"]:
                layers.add(layer["Properties"]["Content"]["S3Key"])
    default_layer = default_synth.raw["Resources"][
        next(k for k in default_synth.raw["Resources"] if k.startswith("CoreLayer"))
    ]["Properties"]["Content"]["S3Key"]
    assert layers == {default_layer}


def test_cfn_lint_is_clean_on_every_stack(multi: App) -> None:
    """As tests/infra/test_cfn_lint.py does for the single-Region templates."""
    from tests.infra.test_cfn_lint import assert_cfn_lint_clean

    templates = [
        str(multi.outdir / artifact["properties"]["templateFile"])
        for artifact in multi.manifest["artifacts"].values()
        if artifact["type"] == "aws:cloudformation:stack"
    ]
    assert len(templates) == 5
    assert_cfn_lint_clean(templates)


def test_a_multi_region_key_switch_keeps_the_zero_downtime_order(tmp_path: Path) -> None:
    """docs/multi-region.md "Key rotation", step 2 (mrk-b signs, mrk-a still published), in
    a Regional stack: the new replica's Sign grant exists before the exchange is told the
    new key, and the old replica loses its Sign statement only after the exchange moved."""
    app = synth_app(
        tmp_path,
        {**MULTI_REGION_CONTEXT, "regions": "us-east-1,eu-west-1", "activeSigningKey": "mrk-b"},
        bundle=False,
    )
    stack = regional_stack("eu-west-1")
    resources = app.resources(stack)
    exchange_id, exchange = app.at(stack, "Exchange/Function")
    _, old = app.at(stack, "SigningKeyMrkA/Key")
    new_id, new = app.at(stack, "SigningKeyMrkB/Key")
    grants_id, grants = app.at(stack, "SigningKeyMrkB/ExchangeGrants")
    assert exchange["Properties"]["Environment"]["Variables"]["TOKEX_SIGNING_KEY_ID"] == {
        "Fn::GetAtt": [new_id, "Arn"]
    }
    assert grants_id in exchange.get("DependsOn", [])
    assert exchange_id in old.get("DependsOn", [])
    assert exchange_id not in new.get("DependsOn", [])
    exchange_role, _ = app.at(stack, "Exchange/Role")
    assert _sign_principals(new["Properties"]["KeyPolicy"]) == [
        {"Fn::GetAtt": [exchange_role, "Arn"]}
    ]
    assert _sign_principals(old["Properties"]["KeyPolicy"]) == []
    # Only the active replica's grants are on the exchange's role.
    exchange_grants = [
        lid for lid, r in resources.items()
        if r["Type"] == "AWS::IAM::Policy" and "ExchangeGrants" in lid
    ]  # fmt: skip
    assert exchange_grants == [grants_id]
    statements = grants["Properties"]["PolicyDocument"]["Statement"]
    assert statements
    assert all(s["Resource"] == {"Fn::GetAtt": [new_id, "Arn"]} for s in statements)


def test_each_region_outputs_what_its_workloads_and_operators_need(multi: App) -> None:
    """Lambda layers and IAM roles are per Region: a workload in eu-west-1 takes the
    extension layer of eu-west-1, and an instance-tag role trusts every Region's exchange."""
    for region in OTHERS:
        stack = regional_stack(region)
        outputs = multi.templates[stack]["Outputs"]
        layer_id, _ = multi.at(stack, "ProxyExtensionLayer/Layer")
        assert outputs["ProxyExtensionLayerArn"]["Value"] == {"Ref": layer_id}
        role_id, _ = multi.at(stack, "Exchange/Role")
        assert outputs["ExchangeRoleArn"]["Value"] == {"Fn::GetAtt": [role_id, "Arn"]}
        key_id, _ = multi.at(stack, "SigningKeyMrkA/Key")
        assert outputs["SigningKeyArn"]["Value"] == {"Fn::GetAtt": [key_id, "Arn"]}
        for name, path in (("TokenEndpoint", "token"), ("IntrospectionEndpoint", "introspect")):
            parts = outputs[name]["Value"]["Fn::Join"][1]
            assert parts[-1] == f"/regions/{region}/{path}"


def test_each_region_names_the_tables_for_the_cli_as_home_does(multi: App) -> None:
    """`tokex revoke --stack Tokex-<r> --region <r>` writes to that Region's replica of the
    same global table when home is down (docs/multi-region.md "When the home Region is
    lost"): each Regional stack outputs what `tokex policy|revoke|clients --stack` read from
    home's (the tables' names, and `policy explain`'s TTLs), with home's values."""
    home = multi.templates["Tokex"]["Outputs"]
    for region in OTHERS:
        stack = regional_stack(region)
        outputs = multi.templates[stack]["Outputs"]
        for name in (POLICY_TABLE_OUTPUT, STATE_TABLE_OUTPUT):
            assert multi.output_value(stack, outputs[name]["Value"]) == home[name]["Value"]
        for name in ("DefaultTtlSeconds", "TtlCapSeconds"):
            assert outputs[name]["Value"] == home[name]["Value"]
    assert home["TtlCapSeconds"]["Value"] == str(MULTI_REGION_CONTEXT["ttlCapSeconds"])


def test_a_custom_domain_and_ecc_keys_reach_every_region(tmp_path: Path) -> None:
    """With `domainName` the issuer is known at synth: a literal in every Region; with
    ECC keys every replica signs ES256 only."""
    app = synth_app(
        tmp_path,
        {
            "regions": "us-east-1,eu-west-1",
            "signingKeys": "mrk-a",
            "activeSigningKey": "mrk-a",
            "signingKeySpec": "ECC_NIST_P256",
            "domainName": "auth.example.com",
            "certificateArn": (
                "arn:aws:acm:us-east-1:123456789012:certificate/"
                "12345678-1234-1234-1234-123456789012"
            ),
        },
        bundle=False,
    )
    stack = regional_stack("eu-west-1")
    env = app.env(stack, "Exchange")
    assert env["TOKEX_ISSUER"] == "https://auth.example.com"
    assert env["TOKEX_TOKEN_ENDPOINT"] == "https://auth.example.com/regions/eu-west-1/token"
    _, replica = app.at(stack, "SigningKeyMrkA/KeyEccNistP256")
    signs = [
        s for s in replica["Properties"]["KeyPolicy"]["Statement"]
        if s["Effect"] == "Allow" and s["Action"] == "kms:Sign"
    ]  # fmt: skip
    assert [s["Condition"]["StringEquals"]["kms:SigningAlgorithm"] for s in signs] == [
        "ECDSA_SHA_256"
    ]
    _, primary = app.at("Tokex", "SigningKeyMrkA/KeyEccNistP256")
    assert primary["Properties"]["KeySpec"] == "ECC_NIST_P256"


def test_a_key_spec_change_is_a_new_key_in_every_region_under_the_same_aliases(
    tmp_path: Path,
) -> None:
    """CloudFormation fails the update of a KMS key whose KeySpec changes. So another
    `signingKeySpec` gives home's multi-Region key and each Region's replica new logical
    ids: new keys are created, the old ones leave the templates (retained), each alias is
    updated in place (a new alias of the same name could not be created), and nothing else
    is replaced (docs/multi-region.md "Key rotation")."""
    context = {
        "regions": "us-east-1,eu-west-1",
        "signingKeys": "mrk-a",
        "activeSigningKey": "mrk-a",
    }
    rsa = synth_app(tmp_path / "rsa", context, bundle=False)
    ecc = synth_app(tmp_path / "ecc", {**context, "signingKeySpec": "ECC_NIST_P256"}, bundle=False)
    assert set(ecc.templates) == set(rsa.templates)
    for stack in rsa.templates:
        old, new = rsa.resources(stack), ecc.resources(stack)
        if stack == api_stack("eu-west-1"):
            assert set(new) == set(old)
            continue
        old_key, _ = rsa.at(stack, "SigningKeyMrkA/Key")
        new_key, key = ecc.at(stack, "SigningKeyMrkA/KeyEccNistP256")
        # The keys, and the grants on them (cdk/signing_key.py grants_construct_id: the
        # old grants go after the functions' update), and only they, are new resources.
        grants = _grants_and(old, set(old) - set(new), old_key, "")
        assert grants == _grants_and(new, set(new) - set(old), new_key, "EccNistP256")
        assert "ExchangeGrants" in grants, stack
        assert key["DeletionPolicy"] == "Retain"
        alias_id, alias = ecc.at(stack, "SigningKeyMrkA/Alias")
        assert alias_id == rsa.at(stack, "SigningKeyMrkA/Alias")[0]
        assert json.dumps(alias["Properties"]["TargetKeyId"]).count(new_key) == 1
        _assert_nothing_replaced(rsa, ecc, stack, "RSA_2048 -> ECC_NIST_P256")
    # Each replica is of the new primary.
    _, replica = ecc.at(regional_stack("eu-west-1"), "SigningKeyMrkA/KeyEccNistP256")
    assert ecc.output_value(
        regional_stack("eu-west-1"), replica["Properties"]["PrimaryKeyArn"]
    ) == {"Fn::GetAtt": [ecc.at("Tokex", "SigningKeyMrkA/KeyEccNistP256")[0], "Arn"]}


def _grants_and(
    resources: dict[str, Any], ids: set[str], key_id: str, spec_suffix: str
) -> set[str]:
    """The names of slot mrk-a's grant policies among `ids` (the key `key_id` and each
    policy named `<name><spec_suffix>` accounted for; anything else fails)."""
    names = set()
    for lid in ids - {key_id}:
        path = resources[lid].get("Metadata", {}).get("aws:cdk:path", "")
        slot, _, rest = path.partition("/SigningKeyMrkA/")
        name = rest.removesuffix("/Resource").removesuffix(spec_suffix)
        assert resources[lid]["Type"] == "AWS::IAM::Policy" and slot, path
        assert name in ("ExchangeGrants", "IntrospectGrants", "PublisherGrants"), path
        names.add(name)
    assert key_id in ids
    return names


def test_every_regions_functions_cold_start_with_their_settings(
    multi: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the single-Region stack (test_stack.py): a Regional function given settings
    it refuses at cold start fails every request of its Region after a deploy that went
    well (the introspect function's TTLs were one such case, in every Region)."""
    for region in REGIONS:
        stack = "Tokex" if region == REGIONS[0] else regional_stack(region)
        started = checks.cold_start_every_function(
            multi.templates[stack],
            monkeypatch,
            stack_output=lambda reference, stack=stack: multi.output_value(stack, reference),
            region=region,
        )
        kinds = ["exchange", "introspect"] + (["jwks_publisher"] if stack == "Tokex" else [])
        assert sorted(started) == sorted(kinds), region
        if stack != "Tokex":
            assert started["exchange"].serving_region == region
