"""Negative tests: weaken one security property of the real template at a time and prove
the check guarding it fails. Together with test_stack.py this is what makes the infra
tests fail when a property is removed from the CDK code."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.infra import checks
from tests.infra.conftest import TEST_NONCE, Synthesized

pytestmark = pytest.mark.infra

Raw = dict[str, Any]


def _res(raw: Raw, path: str) -> dict[str, Any]:
    return raw["Resources"][checks.logical_id(Template.from_json(raw), path)]


def _props(raw: Raw, path: str) -> dict[str, Any]:
    return _res(raw, path)["Properties"]


def _policy(raw: Raw, role_path: str) -> list[dict[str, Any]]:
    return _props(raw, f"{role_path}/DefaultPolicy")["PolicyDocument"]["Statement"]


def _bucket_policy(raw: Raw, bucket_path: str) -> list[dict[str, Any]]:
    return _props(raw, f"{bucket_path}/Policy")["PolicyDocument"]["Statement"]


def _key_statements(raw: Raw) -> list[dict[str, Any]]:
    return _props(raw, "SigningKey/Key")["KeyPolicy"]["Statement"]


def _distribution(raw: Raw) -> dict[str, Any]:
    return _props(raw, "IssuerSite/Distribution")["DistributionConfig"]


def _env(raw: Raw, fn: str) -> dict[str, Any]:
    return _props(raw, f"{fn}/Function")["Environment"]["Variables"]


def _delete_type(raw: Raw, type_: str) -> None:
    for lid in [k for k, v in raw["Resources"].items() if v["Type"] == type_]:
        del raw["Resources"][lid]


def _cycle(raw: Raw) -> None:
    # What giving the API a dependency on the function would do (see tokex_stack.py).
    fn = checks.logical_id(Template.from_json(raw), "Exchange/Function")
    _props(raw, "TokenApi/Api")["Description"] = {"Fn::GetAtt": [fn, "Arn"]}


def _extra_statement(role: str, action: str, resource: Any = "*") -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        _policy(raw, role).append({"Action": action, "Effect": "Allow", "Resource": resource})

    return mutate


def _public_read(raw: Raw) -> None:
    _bucket_policy(raw, "IssuerSite/Documents").append(
        {"Action": "s3:GetObject", "Effect": "Allow", "Principal": {"AWS": "*"}, "Resource": "*"}
    )


def _drop_tls_deny(bucket: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        statements = _bucket_policy(raw, bucket)
        statements[:] = [s for s in statements if s["Effect"] != "Deny"]

    return mutate


def _set(getter: Callable[[Raw], dict[str, Any]], key: str, value: Any) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        target = getter(raw)
        if value is _DELETE:
            del target[key]
        else:
            target[key] = value

    return mutate


_DELETE = object()
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"


def _table_write(raw: Raw) -> None:
    table = checks.arn_of(Template.from_json(raw), "PolicyTable/Table")
    _extra_statement("Exchange/Role", "dynamodb:PutItem", table)(raw)


RSA = "RSA_2048"
key_spec = partial(checks.check_signing_key, key_spec=RSA)
key_policy = partial(checks.check_key_policy, key_spec=RSA)
exchange = partial(checks.check_exchange_permissions, key_spec=RSA)
publisher = checks.check_publisher_permissions
documents = checks.check_documents_bucket
distribution = checks.check_distribution
functions = checks.check_functions
api = checks.check_token_api
table = checks.check_policy_table
publication = partial(checks.check_jwks_publication, nonce=TEST_NONCE)


def outputs(template: Template) -> None:
    checks.check_outputs(template, issuer=checks.default_issuer(template))


def key_props(r: Raw) -> dict[str, Any]:
    return _props(r, "SigningKey/Key")


def bucket_props(r: Raw) -> dict[str, Any]:
    return _props(r, "IssuerSite/Documents")


def stage_props(r: Raw) -> dict[str, Any]:
    return _props(r, "TokenApi/DefaultStage")


def token_behavior(r: Raw) -> dict[str, Any]:
    return _distribution(r)["CacheBehaviors"][0]


def default_behavior(r: Raw) -> dict[str, Any]:
    return _distribution(r)["DefaultCacheBehavior"]


# (name, mutation, the check that must then fail)
MUTATIONS: list[tuple[str, Callable[[Raw], None], Callable[[Template], None]]] = [
    ("dependency cycle", _cycle, checks.check_no_dependency_cycle),
    ("symmetric key", _set(key_props, "KeySpec", "SYMMETRIC_DEFAULT"), key_spec),
    ("encrypt key", _set(key_props, "KeyUsage", "ENCRYPT_DECRYPT"), key_spec),
    (
        "key deletable",
        _set(lambda r: _res(r, "SigningKey/Key"), "DeletionPolicy", "Delete"),
        key_spec,
    ),
    ("no alias", lambda r: _delete_type(r, "AWS::KMS::Alias"), key_spec),
    ("key policy kms:*", lambda r: _key_statements(r)[0]["Action"].append("kms:*"), key_policy),
    ("admins may sign", lambda r: _key_statements(r)[0]["Action"].append("kms:Sign"), key_policy),
    ("admins verify", lambda r: _key_statements(r)[0]["Action"].append("kms:Verify"), key_policy),
    ("sign unconditioned", lambda r: _key_statements(r)[1].pop("Condition"), key_policy),
    ("exchange writes S3", _extra_statement("Exchange/Role", "s3:PutObject"), exchange),
    ("exchange reads any table", _extra_statement("Exchange/Role", "dynamodb:GetItem"), exchange),
    ("exchange writes table", _table_write, exchange),
    ("exchange decrypts", _extra_statement("Exchange/Role", "kms:Decrypt"), exchange),
    (
        "exchange admin",
        _set(
            lambda r: _props(r, "Exchange/Role"),
            "ManagedPolicyArns",
            ["arn:aws:iam::aws:policy/AdministratorAccess"],
        ),
        exchange,
    ),
    ("publisher signs", _extra_statement("JwksPublisher/Role", "kms:Sign"), publisher),
    (
        "publisher writes anywhere",
        _extra_statement("JwksPublisher/Role", "s3:PutObject"),
        publisher,
    ),
    (
        "bucket public acls",
        lambda r: bucket_props(r)["PublicAccessBlockConfiguration"].update(BlockPublicAcls=False),
        documents,
    ),
    (
        "bucket public policy",
        lambda r: bucket_props(r)["PublicAccessBlockConfiguration"].update(
            RestrictPublicBuckets=False
        ),
        documents,
    ),
    ("bucket no block", _set(bucket_props, "PublicAccessBlockConfiguration", _DELETE), documents),
    (
        "bucket unversioned",
        _set(bucket_props, "VersioningConfiguration", {"Status": "Suspended"}),
        documents,
    ),
    ("bucket public read", _public_read, documents),
    ("bucket plain http", _drop_tls_deny("IssuerSite/Documents"), documents),
    ("bucket unencrypted", _set(bucket_props, "BucketEncryption", _DELETE), documents),
    ("log bucket plain http", _drop_tls_deny("IssuerSite/AccessLogs"), checks.check_log_bucket),
    (
        "no OAC",
        _set(lambda r: _distribution(r)["Origins"][0], "OriginAccessControlId", _DELETE),
        distribution,
    ),
    ("http viewers", _set(default_behavior, "ViewerProtocolPolicy", "allow-all"), distribution),
    (
        "token redirect",
        _set(token_behavior, "ViewerProtocolPolicy", "redirect-to-https"),
        distribution,
    ),
    ("token cached", _set(token_behavior, "CachePolicyId", CACHING_OPTIMIZED), distribution),
    (
        "no security headers",
        _set(default_behavior, "ResponseHeadersPolicyId", _DELETE),
        distribution,
    ),
    (
        "old runtime",
        _set(lambda r: _props(r, "Exchange/Function"), "Runtime", "python3.9"),
        functions,
    ),
    (
        "x86",
        _set(lambda r: _props(r, "JwksPublisher/Function"), "Architectures", ["x86_64"]),
        functions,
    ),
    (
        "no tracing",
        _set(lambda r: _props(r, "Exchange/Function"), "TracingConfig", {"Mode": "PassThrough"}),
        functions,
    ),
    (
        "logs forever",
        _set(lambda r: _props(r, "Exchange/Logs"), "RetentionInDays", _DELETE),
        functions,
    ),
    (
        "events logged",
        _set(lambda r: _env(r, "Exchange"), "POWERTOOLS_LOGGER_LOG_EVENT", "true"),
        functions,
    ),
    (
        "extra route",
        lambda r: r["Resources"].update(
            ExtraRoute={
                "Type": "AWS::ApiGatewayV2::Route",
                "Properties": {"ApiId": "x", "RouteKey": "GET /debug"},
            }
        ),
        api,
    ),
    ("no throttling", _set(stage_props, "DefaultRouteSettings", _DELETE), api),
    ("no access logs", _set(stage_props, "AccessLogSettings", _DELETE), api),
    (
        "no PITR",
        lambda r: _props(r, "PolicyTable/Table")["Replicas"][0].update(
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False}
        ),
        table,
    ),
    (
        "table deletable",
        _set(lambda r: _res(r, "PolicyTable/Table"), "DeletionPolicy", "Delete"),
        table,
    ),
    (
        "provisioned table",
        _set(lambda r: _props(r, "PolicyTable/Table"), "BillingMode", "PROVISIONED"),
        table,
    ),
    ("no schedule", lambda r: _delete_type(r, "AWS::Events::Rule"), publication),
    ("no deploy publish", lambda r: _delete_type(r, "Custom::TokexJwks"), publication),
    ("no output", lambda r: r["Outputs"].pop("JwksUrl"), outputs),
]


@pytest.mark.parametrize(
    ("mutate", "check"),
    [pytest.param(m, c, id=name) for name, m, c in MUTATIONS],
)
def test_weakened_template_fails_its_check(
    default_synth: Synthesized,
    mutate: Callable[[Raw], None],
    check: Callable[[Template], None],
) -> None:
    check(default_synth.template)  # holds on the real template
    raw = copy.deepcopy(default_synth.raw)
    mutate(raw)
    assert raw != default_synth.raw, "mutation changed nothing"
    # The assertions library refuses a cyclic template by itself; skip that so the
    # cycle mutation exercises our own check like every other mutation does.
    weakened = Template.from_json(
        json.loads(json.dumps(raw)), skip_cyclical_dependencies_check=True
    )
    with pytest.raises(AssertionError):
        check(weakened)
