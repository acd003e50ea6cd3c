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
from tests.infra.conftest import (
    ACCOUNTS_CONTEXT,
    ALTERNATE_CONTEXT,
    TEST_NONCE,
    Synthesized,
)

pytestmark = pytest.mark.infra

Raw = dict[str, Any]


def _res(raw: Raw, path: str) -> dict[str, Any]:
    return raw["Resources"][checks.logical_id_in(raw, path)]


def _arn(raw: Raw, path: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [checks.logical_id_in(raw, path), "Arn"]}


def _props(raw: Raw, path: str) -> dict[str, Any]:
    return _res(raw, path)["Properties"]


def _policy(raw: Raw, role_path: str) -> list[dict[str, Any]]:
    return _props(raw, f"{role_path}/DefaultPolicy")["PolicyDocument"]["Statement"]


def _bucket_policy(raw: Raw, bucket_path: str) -> list[dict[str, Any]]:
    return _props(raw, f"{bucket_path}/Policy")["PolicyDocument"]["Statement"]


def _key_statements(raw: Raw, slot: str = "a") -> list[dict[str, Any]]:
    return _props(raw, f"{checks.slot_path(slot)}/Key")["KeyPolicy"]["Statement"]


def _key_statement(raw: Raw, sid: str, slot: str = "a") -> dict[str, Any]:
    (statement,) = [s for s in _key_statements(raw, slot) if s.get("Sid") == sid]
    return statement


def _distribution(raw: Raw) -> dict[str, Any]:
    return _props(raw, "IssuerSite/Distribution")["DistributionConfig"]


def _env(raw: Raw, fn: str) -> dict[str, Any]:
    return _props(raw, f"{fn}/Function")["Environment"]["Variables"]


def _delete_type(raw: Raw, type_: str) -> None:
    for lid in [k for k, v in raw["Resources"].items() if v["Type"] == type_]:
        del raw["Resources"][lid]


def _cycle(raw: Raw) -> None:
    # What giving the API a dependency on the function would do (see tokex_stack.py).
    fn = checks.logical_id_in(raw, "Exchange/Function")
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
    table = _arn(raw, "PolicyTable/Table")
    _extra_statement("Exchange/Role", "dynamodb:PutItem", table)(raw)


def _on_table(role: str, table: str, action: str) -> Callable[[Raw], None]:
    """An extra grant of `action` on one of our tables."""

    def mutate(raw: Raw) -> None:
        arn = _arn(raw, f"{table}/Table")
        _extra_statement(role, action, arn)(raw)

    return mutate


def _on_key(role: str, action: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        arn = _arn(raw, "SigningKey/Key")
        _extra_statement(role, action, arn)(raw)

    return mutate


def _statement(raw: Raw, role: str, sid: str) -> dict[str, Any]:
    found = [s for s in _policy(raw, role) if s.get("Sid") == sid]
    assert len(found) == 1, f"{role}: no statement {sid}"
    return found[0]


def _drop_statement(role: str, sid: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        _policy(raw, role).remove(_statement(raw, role, sid))

    return mutate


def _single_use(raw: Raw) -> dict[str, Any]:
    return _statement(raw, "Exchange/Role", "RecordSignatureUse")


def _widen_leading_keys(role: str, sid: str, pattern: str) -> Callable[[Raw], None]:
    """The statement's `dynamodb:LeadingKeys` condition also allows `pattern`."""

    def widen(raw: Raw) -> None:
        condition = _statement(raw, role, sid)["Condition"]["ForAllValues:StringLike"]
        condition["dynamodb:LeadingKeys"].append(pattern)

    return widen


def _route(raw: Raw, route_key: str) -> str:
    found = [
        lid
        for lid, r in raw["Resources"].items()
        if r["Type"] == "AWS::ApiGatewayV2::Route" and r["Properties"]["RouteKey"] == route_key
    ]
    assert len(found) == 1, route_key
    return found[0]


def _delete_route(route_key: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        del raw["Resources"][_route(raw, route_key)]

    return mutate


def _retarget(route_key: str, to_route: str) -> Callable[[Raw], None]:
    """Point one route at the integration of another."""

    def mutate(raw: Raw) -> None:
        target = raw["Resources"][_route(raw, to_route)]["Properties"]["Target"]
        raw["Resources"][_route(raw, route_key)]["Properties"]["Target"] = copy.deepcopy(target)

    return mutate


def _role_resource(value: Any) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        _statement(raw, "Exchange/Role", "AssumeInstanceTagsRole")["Resource"] = value

    return mutate


RSA = "RSA_2048"
AB = ("a", "b")
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


introspect = checks.check_introspect_permissions
state = checks.check_state_table
no_tags = partial(checks.check_instance_tag_lookups, role_name=None)


def outputs(template: Template) -> None:
    checks.check_outputs(template, issuer=checks.default_issuer(template))


def wiring(template: Template) -> None:
    issuer = checks.default_issuer(template)
    checks.check_issuer_wiring(template, issuer=issuer)
    checks.check_introspection_wiring(template, issuer=issuer)


def key_props(r: Raw) -> dict[str, Any]:
    return _props(r, "SigningKey/Key")


def bucket_props(r: Raw) -> dict[str, Any]:
    return _props(r, "IssuerSite/Documents")


def stage_props(r: Raw) -> dict[str, Any]:
    return _props(r, "TokenApi/DefaultStage")


def token_behavior(r: Raw) -> dict[str, Any]:
    return _distribution(r)["CacheBehaviors"][0]


def introspect_behavior(r: Raw) -> dict[str, Any]:
    behavior = _distribution(r)["CacheBehaviors"][1]
    assert behavior["PathPattern"] == "/introspect"
    return behavior


def state_props(r: Raw) -> dict[str, Any]:
    return _props(r, "StateTable/Table")


def default_behavior(r: Raw) -> dict[str, Any]:
    return _distribution(r)["DefaultCacheBehavior"]


# (name, mutation, the check that must then fail)
def _api_origin(raw: Raw) -> dict[str, Any]:
    (origin,) = [o for o in _distribution(raw)["Origins"] if "OriginCustomHeaders" in o]
    return origin


def _function_url(raw: Raw) -> None:
    raw["Resources"]["ExchangeUrl"] = {
        "Type": "AWS::Lambda::Url",
        "Properties": {"AuthType": "NONE", "TargetFunctionArn": _arn(raw, "Exchange/Function")},
    }


def _public_permission(raw: Raw) -> None:
    raw["Resources"]["AnyoneInvokes"] = {
        "Type": "AWS::Lambda::Permission",
        "Properties": {
            "Action": "lambda:InvokeFunction",
            "FunctionName": _arn(raw, "Introspect/Function"),
            "Principal": "*",
        },
    }


one_door = checks.check_one_door
ONE_DOOR_MUTATIONS: list[tuple[str, Callable[[Raw], None], Callable[[Template], None]]] = [
    ("no origin header", lambda r: _api_origin(r).pop("OriginCustomHeaders"), one_door),
    (
        "literal origin secret",
        lambda r: _api_origin(r)["OriginCustomHeaders"][0].update(HeaderValue="x" * 48),
        one_door,
    ),
    ("exchange ungated", lambda r: _env(r, "Exchange").pop("TOKEX_ORIGIN_SECRET"), one_door),
    ("introspect ungated", lambda r: _env(r, "Introspect").pop("TOKEX_ORIGIN_SECRET"), one_door),
    ("function URL", _function_url, one_door),
    ("public permission", _public_permission, one_door),
    (
        "no next origin secret",
        lambda r: _env(r, "Exchange").pop("TOKEX_ORIGIN_SECRET_NEXT"),
        one_door,
    ),
    (
        "next origin secret is the current one",
        lambda r: _env(r, "Introspect").update(
            TOKEX_ORIGIN_SECRET_NEXT=_env(r, "Introspect")["TOKEX_ORIGIN_SECRET"]
        ),
        one_door,
    ),
    (
        "functions deploy beside the distribution",
        lambda r: _res(r, "Exchange/Function").pop("DependsOn"),
        one_door,
    ),
]

MUTATIONS: list[tuple[str, Callable[[Raw], None], Callable[[Template], None]]] = [
    *ONE_DOOR_MUTATIONS,
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
    (
        "sign unconditioned",
        lambda r: _key_statement(r, "SignOnlyAsTheExchangeRole").pop("Condition"),
        key_policy,
    ),
    (
        "admins create grants",
        lambda r: _key_statement(r, "KeyAdministrationByAccountIam")["Action"].append(
            "kms:Create*"
        ),
        key_policy,
    ),
    (
        "grants not denied",
        lambda r: _key_statements(r).remove(_key_statement(r, "NoGrants")),
        key_policy,
    ),
    ("exchange writes S3", _extra_statement("Exchange/Role", "s3:PutObject"), exchange),
    ("exchange reads any table", _extra_statement("Exchange/Role", "dynamodb:GetItem"), exchange),
    ("exchange writes table", _table_write, exchange),
    (
        "exchange reads any policy",
        _on_table("Exchange/Role", "PolicyTable", "dynamodb:GetItem"),
        exchange,
    ),
    (
        "exchange reads policies by key",
        lambda r: _statement(r, "Exchange/Role", "ReadPolicyGeneration")["Condition"][
            "ForAllValues:StringEquals"
        ]["dynamodb:LeadingKeys"].append("orders-reader"),
        exchange,
    ),
    (
        "exchange no generation read",
        _drop_statement("Exchange/Role", "ReadPolicyGeneration"),
        exchange,
    ),
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
        "metrics mixed with another stack's",
        _set(lambda r: _env(r, "Introspect"), "TOKEX_STACK_NAME", "Other"),
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
    (
        "empty PublishedKeyArns output",
        lambda r: r["Outputs"].update(PublishedKeyArns={"Value": ""}),
        outputs,
    ),
    # --- key grants ordered for zero-downtime key switches ---------------------------
    (
        "default policy drops the key grant before its replacement exists",
        lambda r: _res(r, "Exchange/Role/DefaultPolicy").pop("DependsOn"),
        checks.check_key_switch_ordering,
    ),
    (
        "publisher created before its key grant",
        lambda r: _drop_depends_on("JwksPublisher/Function", "SigningKey/PublisherGrants")(r),
        checks.check_key_switch_ordering,
    ),
    (
        "key grant in the exchange's default policy",
        lambda r: _grant_in_default_policy(r, "a", "ExchangeGrants", "Exchange/Role"),
        checks.check_key_switch_ordering,
    ),
    (
        "slot policy grants another resource",
        lambda r: _slot_policy(r, "a", "IntrospectGrants")[0].update(Resource="*"),
        checks.check_key_switch_ordering,
    ),
    # --- the state table and single use --------------------------------------------------
    ("state table no TTL", _set(state_props, "TimeToLiveSpecification", _DELETE), state),
    (
        "state TTL attribute",
        lambda r: state_props(r)["TimeToLiveSpecification"].update(AttributeName="ttl"),
        state,
    ),
    (
        "state TTL off",
        lambda r: state_props(r)["TimeToLiveSpecification"].update(Enabled=False),
        state,
    ),
    (
        "state no PITR",
        lambda r: state_props(r)["Replicas"][0].update(
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": False}
        ),
        state,
    ),
    (
        "state deletable",
        _set(lambda r: _res(r, "StateTable/Table"), "DeletionPolicy", "Delete"),
        state,
    ),
    (
        "state replaced away",
        _set(lambda r: _res(r, "StateTable/Table"), "UpdateReplacePolicy", "Delete"),
        state,
    ),
    ("state provisioned", _set(state_props, "BillingMode", "PROVISIONED"), state),
    (
        "state unencrypted",
        lambda r: state_props(r)["SSESpecification"].update(SSEEnabled=False),
        state,
    ),
    (
        "single use without leading keys",
        lambda r: _single_use(r).pop("Condition"),
        exchange,
    ),
    (
        "single use any key",
        lambda r: _single_use(r)["Condition"]["ForAllValues:StringLike"].update(
            {"dynamodb:LeadingKeys": ["*"]}
        ),
        exchange,
    ),
    (
        "single use writes clients",
        _widen_leading_keys("Exchange/Role", "RecordSignatureUse", "client#*"),
        exchange,
    ),
    (
        "single use ForAnyValue",
        lambda r: _single_use(r).update(
            Condition={"ForAnyValue:StringLike": {"dynamodb:LeadingKeys": ["sig#*"]}}
        ),
        exchange,
    ),
    (
        "rate counters write clients",
        _widen_leading_keys("Exchange/Role", "CountCallerExchanges", "client#*"),
        exchange,
    ),
    (
        "exchange updates state",
        _on_table("Exchange/Role", "StateTable", "dynamodb:UpdateItem"),
        exchange,
    ),
    (
        "exchange reads state",
        _on_table("Exchange/Role", "StateTable", "dynamodb:GetItem"),
        exchange,
    ),
    (
        "exchange deletes state",
        _on_table("Exchange/Role", "StateTable", "dynamodb:DeleteItem"),
        exchange,
    ),
    (
        "exchange no single use grant",
        _drop_statement("Exchange/Role", "RecordSignatureUse"),
        exchange,
    ),
    (
        "single use off (no table)",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_STATE_TABLE", _DELETE),
        wiring,
    ),
    (
        "single use off (flag)",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_SINGLE_USE", "false"),
        wiring,
    ),
    ("exchange assumes roles", _extra_statement("Exchange/Role", "sts:AssumeRole"), exchange),
    (
        "exchange told a tags role",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_INSTANCE_TAGS_ROLE_NAME", "x"),
        no_tags,
    ),
    # --- the introspect function ------------------------------------------------------
    ("introspect signs", _on_key("Introspect/Role", "kms:Sign"), introspect),
    ("introspect decrypts", _on_key("Introspect/Role", "kms:Decrypt"), introspect),
    ("introspect any key", _extra_statement("Introspect/Role", "kms:GetPublicKey"), introspect),
    (
        "introspect writes state",
        _on_table("Introspect/Role", "StateTable", "dynamodb:PutItem"),
        introspect,
    ),
    (
        "introspect deletes state",
        _on_table("Introspect/Role", "StateTable", "dynamodb:DeleteItem"),
        introspect,
    ),
    (
        "introspect scans state",
        _on_table("Introspect/Role", "StateTable", "dynamodb:Scan"),
        introspect,
    ),
    (
        "introspect reads policies",
        _on_table("Introspect/Role", "PolicyTable", "dynamodb:GetItem"),
        introspect,
    ),
    (
        "introspect reads any table",
        _extra_statement("Introspect/Role", "dynamodb:GetItem"),
        introspect,
    ),
    (
        "introspect no reads",
        _drop_statement("Introspect/Role", "ReadClientsAndRevocations"),
        introspect,
    ),
    (
        "introspect reads single-use records",
        _widen_leading_keys("Introspect/Role", "ReadClientsAndRevocations", "sig#*"),
        introspect,
    ),
    (
        "introspect reads every item",
        lambda r: _statement(r, "Introspect/Role", "ReadClientsAndRevocations").pop("Condition"),
        introspect,
    ),
    (
        "introspect admin",
        _set(
            lambda r: _props(r, "Introspect/Role"),
            "ManagedPolicyArns",
            ["arn:aws:iam::aws:policy/AdministratorAccess"],
        ),
        introspect,
    ),
    (
        "introspect x86",
        _set(lambda r: _props(r, "Introspect/Function"), "Architectures", ["x86_64"]),
        functions,
    ),
    (
        "introspect no tracing",
        _set(lambda r: _props(r, "Introspect/Function"), "TracingConfig", _DELETE),
        functions,
    ),
    (
        "introspect logs forever",
        _set(lambda r: _props(r, "Introspect/Logs"), "RetentionInDays", _DELETE),
        functions,
    ),
    (
        "introspect without layer",
        _set(lambda r: _props(r, "Introspect/Function"), "Layers", _DELETE),
        functions,
    ),
    (
        "introspect events logged",
        _set(lambda r: _env(r, "Introspect"), "POWERTOOLS_LOGGER_LOG_EVENT", "true"),
        wiring,
    ),
    (
        "introspect responses traced",
        _set(lambda r: _env(r, "Introspect"), "POWERTOOLS_TRACER_CAPTURE_RESPONSE", _DELETE),
        wiring,
    ),
    (
        "introspect longer TTL cap",
        _set(lambda r: _env(r, "Introspect"), "TOKEX_TTL_CAP_SECONDS", "7200"),
        wiring,
    ),
    (
        "introspect other published keys",
        _set(
            lambda r: _env(r, "Introspect"),
            "TOKEX_PUBLISHED_KEY_IDS",
            "arn:aws:kms:eu-west-1:123456789012:key/abcdef01-2345-6789-abcd-ef0123456789",
        ),
        wiring,
    ),
    (
        "introspect other issuer",
        _set(lambda r: _env(r, "Introspect"), "TOKEX_ISSUER", "https://evil.example"),
        wiring,
    ),
    (
        "introspect without state table",
        _set(lambda r: _env(r, "Introspect"), "TOKEX_STATE_TABLE", _DELETE),
        wiring,
    ),
    (
        "no introspection in discovery",
        _set(lambda r: _env(r, "JwksPublisher"), "TOKEX_INTROSPECTION_ENDPOINT", _DELETE),
        wiring,
    ),
    ("no POST /introspect", _delete_route("POST /introspect"), api),
    ("no ANY /introspect", _delete_route("ANY /introspect"), api),
    ("introspect to the exchange", _retarget("POST /introspect", "POST /token"), api),
    ("token to introspect", _retarget("ANY /token", "ANY /introspect"), api),
    (
        "introspect behaviour missing",
        lambda r: _distribution(r)["CacheBehaviors"].pop(1),
        distribution,
    ),
    (
        "introspect redirect",
        _set(introspect_behavior, "ViewerProtocolPolicy", "redirect-to-https"),
        distribution,
    ),
    (
        "introspect cached",
        _set(introspect_behavior, "CachePolicyId", CACHING_OPTIMIZED),
        distribution,
    ),
    (
        "introspect no Authorization",
        _set(introspect_behavior, "OriginRequestPolicyId", _DELETE),
        distribution,
    ),
    (
        "introspect GET only",
        _set(introspect_behavior, "AllowedMethods", ["GET", "HEAD"]),
        distribution,
    ),
    ("introspect compressed", _set(introspect_behavior, "Compress", True), distribution),
    *[
        (f"no {name} output", partial(lambda r, n: r["Outputs"].pop(n), n=name), outputs)
        for name in (
            "IntrospectionEndpoint",
            "StateTableName",
            "DefaultTtlSeconds",
            "TtlCapSeconds",
            "ExchangeRoleArn",
        )
    ],
    (
        "TTL cap output differs",
        lambda r: r["Outputs"]["TtlCapSeconds"].update(Value="60"),
        outputs,
    ),
]


def _tags_check(synth: str) -> Callable[[Template], None]:
    """The exchange's exact permissions with the instance-tags roles of that synth."""
    context = ALTERNATE_CONTEXT if synth == "alternate" else ACCOUNTS_CONTEXT
    role_name = str(context["instanceTagsRoleName"])
    accounts = str(context.get("instanceTagsAccounts", "*")).split(",")
    return partial(
        checks.check_exchange_permissions,
        key_spec=str(context.get("signingKeySpec", RSA)),
        instance_tags_roles=tuple(checks.instance_tags_role_arn(a, role_name) for a in accounts),
        active=str(context.get("activeSigningKey", "a")),
    )


def _tags_env(synth: str) -> Callable[[Template], None]:
    context = ALTERNATE_CONTEXT if synth == "alternate" else ACCOUNTS_CONTEXT
    return partial(
        checks.check_instance_tag_lookups, role_name=str(context["instanceTagsRoleName"])
    )


def _wildcard_role(raw: Raw) -> None:
    role = _statement(raw, "Exchange/Role", "AssumeInstanceTagsRole")
    role["Resource"] = "*"


# Mutations of the deployments with instance tag lookups: (name, synth, mutation, check).
TAG_MUTATIONS: list[tuple[str, str, Callable[[Raw], None], Callable[[Template], None]]] = [
    ("any role", "alternate", _wildcard_role, _tags_check("alternate")),
    (
        "any role name",
        "alternate",
        _role_resource(checks.instance_tags_role_arn("*", "*")),
        _tags_check("alternate"),
    ),
    (
        "no tags grant",
        "alternate",
        _drop_statement("Exchange/Role", "AssumeInstanceTagsRole"),
        _tags_check("alternate"),
    ),
    (
        "no tags role env",
        "alternate",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_INSTANCE_TAGS_ROLE_NAME", _DELETE),
        _tags_env("alternate"),
    ),
    (
        "other role env",
        "alternate",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_INSTANCE_TAGS_ROLE_NAME", "admin"),
        _tags_env("alternate"),
    ),
    (
        "listed accounts widened",
        "accounts",
        _role_resource(checks.instance_tags_role_arn("*", "tokex-instance-tags")),
        _tags_check("accounts"),
    ),
    (
        "extra account",
        "accounts",
        lambda r: _statement(r, "Exchange/Role", "AssumeInstanceTagsRole")["Resource"].append(
            checks.instance_tags_role_arn("333333333333", "tokex-instance-tags")
        ),
        _tags_check("accounts"),
    ),
    (
        "published key not readable by introspect",
        "alternate",
        _drop_statement("Introspect/Role", "ReadPublishedPublicKeys"),
        partial(
            checks.check_introspect_permissions,
            published_keys=(str(ALTERNATE_CONTEXT["publishedKeyArns"]),),
            slots=AB,
        ),
    ),
]


# --- trusted JWT issuers (alternate synth: an OIF and an EKS issuer) -----------------

_trusted = partial(
    checks.check_trusted_issuers,
    expected=json.dumps(ALTERNATE_CONTEXT["trustedIssuers"], separators=(",", ":")),
)
_ROGUE_ISSUER = {
    "kind": "aws-oif",
    "issuer": "https://rogue.example.com",
    "account": "999999999999",
}


def _extra_trusted_issuer(raw: Raw) -> None:
    env = _env(raw, "Exchange")
    env["TOKEX_TRUSTED_ISSUERS"] = json.dumps(
        [*json.loads(env["TOKEX_TRUSTED_ISSUERS"]), _ROGUE_ISSUER], separators=(",", ":")
    )


TRUSTED_ISSUER_MUTATIONS: list[tuple[str, Callable[[Raw], None]]] = [
    (
        "trusted issuers dropped",
        _set(lambda r: _env(r, "Exchange"), "TOKEX_TRUSTED_ISSUERS", _DELETE),
    ),
    ("an issuer trusted besides the configured ones", _extra_trusted_issuer),
    (
        "introspection trusts issuers",
        lambda r: _env(r, "Introspect").update(TOKEX_TRUSTED_ISSUERS=json.dumps([_ROGUE_ISSUER])),
    ),
    (
        "the publisher trusts issuers",
        lambda r: _env(r, "JwksPublisher").update(TOKEX_TRUSTED_ISSUERS="[]"),
    ),
]


# --- key rotation (rotation synth: slots a and b, b signs) ---------------------------

r_key_spec = partial(checks.check_signing_key, key_spec=RSA, slots=AB)
r_key_policy = partial(checks.check_key_policy, key_spec=RSA, slots=AB, active="b")
r_exchange = partial(checks.check_exchange_permissions, key_spec=RSA, active="b")
r_introspect = partial(checks.check_introspect_permissions, slots=AB)
r_publisher = partial(checks.check_publisher_permissions, slots=AB)
r_ordering = partial(checks.check_key_switch_ordering, slots=AB, active="b")
r_publication = partial(checks.check_jwks_publication, nonce=TEST_NONCE, slots=AB, active="b")


def r_wiring(template: Template) -> None:
    issuer = checks.default_issuer(template)
    checks.check_issuer_wiring(template, issuer=issuer, active="b")
    checks.check_introspection_wiring(template, issuer=issuer, slots=AB, active="b")


def r_outputs(template: Template) -> None:
    checks.check_outputs(template, issuer=checks.default_issuer(template), slots=AB, active="b")


def _key_of(slot: str) -> Callable[[Raw], Any]:
    return lambda r: _arn(r, f"{checks.slot_path(slot)}/Key")


def _sign_with(slot: str) -> Callable[[Raw], None]:
    """The exchange role may also sign with `slot`'s key (in its default policy)."""

    def mutate(raw: Raw) -> None:
        (sign,) = [
            s for s in _slot_policy(raw, "b", "ExchangeGrants") if s.get("Sid") == "SignTokens"
        ]
        statement = copy.deepcopy(sign)
        statement["Resource"] = _key_of(slot)(raw)
        _policy(raw, "Exchange/Role").append(statement)

    return mutate


def _slot_policy(raw: Raw, slot: str, name: str) -> list[dict[str, Any]]:
    return _props(raw, f"{checks.slot_path(slot)}/{name}")["PolicyDocument"]["Statement"]


def _inactive_key_may_sign(raw: Raw) -> None:
    statement = copy.deepcopy(_key_statement(raw, "SignOnlyAsTheExchangeRole", "b"))
    _key_statements(raw, "a").append(statement)


def _delete_resource(path: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        lid = checks.logical_id_in(raw, path)
        del raw["Resources"][lid]
        for res in raw["Resources"].values():
            if lid in res.get("DependsOn", []):
                res["DependsOn"].remove(lid)

    return mutate


def _drop_depends_on(source: str, target: str) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        lid = checks.logical_id_in(raw, target)
        depends = _res(raw, source)["DependsOn"]
        depends[:] = [d for d in checks._listify(depends) if d != lid]

    return mutate


def _grant_in_default_policy(raw: Raw, slot: str, name: str, role: str) -> None:
    """The same grants, but in the role's default policy: exact grants still hold, but
    a key's grant would then go before the function stopped using the key."""
    moved = _slot_policy(raw, slot, name)
    _policy(raw, role).extend(copy.deepcopy(moved))
    _delete_resource(f"{checks.slot_path(slot)}/{name}")(raw)


def _rename_slot_a(raw: Raw) -> None:
    text = json.dumps(raw).replace(checks.SLOT_A_KEY_LOGICAL_ID, "SigningKeyAKey0123ABCD")
    raw.clear()
    raw.update(json.loads(text))


def _env_value(fn: str, name: str, value: Callable[[Raw], Any]) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        _env(raw, fn)[name] = value(raw)

    return mutate


ROTATION_MUTATIONS: list[tuple[str, Callable[[Raw], None], Callable[[Template], None]]] = [
    ("exchange signs with the published key", _sign_with("a"), r_exchange),
    (
        "exchange reads the published key",
        _on_key("Exchange/Role", "kms:GetPublicKey"),
        r_exchange,
    ),
    ("published key may sign", _inactive_key_may_sign, r_key_policy),
    (
        "active key cannot sign",
        lambda r: _key_statements(r, "b").remove(
            _key_statement(r, "SignOnlyAsTheExchangeRole", "b")
        ),
        r_key_policy,
    ),
    (
        "published key grants allowed",
        lambda r: _key_statements(r, "a").remove(_key_statement(r, "NoGrants", "a")),
        r_key_policy,
    ),
    (
        "published key administrators sign",
        lambda r: _key_statement(r, "KeyAdministrationByAccountIam", "a")["Action"].append(
            "kms:Sign"
        ),
        r_key_policy,
    ),
    (
        "exchange signs with the published key id",
        _env_value("Exchange", "TOKEX_SIGNING_KEY_ID", _key_of("a")),
        r_wiring,
    ),
    (
        "exchange told published keys",
        _env_value("Exchange", "TOKEX_PUBLISHED_KEY_IDS", _key_of("a")),
        r_wiring,
    ),
    (
        "previous key leaves the JWKS",
        _set(lambda r: _env(r, "JwksPublisher"), "TOKEX_PUBLISHED_KEY_IDS", ""),
        r_wiring,
    ),
    (
        "introspection forgets the previous key",
        _set(lambda r: _env(r, "Introspect"), "TOKEX_PUBLISHED_KEY_IDS", ""),
        r_wiring,
    ),
    (
        "publisher signs with the previous key",
        lambda r: _slot_policy(r, "a", "PublisherGrants")[0].update(
            Action=["kms:GetPublicKey", "kms:Sign"]
        ),
        r_publisher,
    ),
    (
        "publisher cannot read the previous key",
        _delete_resource("SigningKey/PublisherGrants"),
        r_publisher,
    ),
    (
        "introspect cannot read the previous key",
        _delete_resource("SigningKey/IntrospectGrants"),
        r_introspect,
    ),
    (
        "previous key may be deleted",
        _set(lambda r: _res(r, "SigningKey/Key"), "DeletionPolicy", "Delete"),
        r_key_spec,
    ),
    ("slot a key renamed", _rename_slot_a, r_key_spec),
    (
        "slot b alias is slot a's",
        lambda r: _props(r, "SigningKeyB/Alias").update(AliasName="alias/tokex/Tokex/signing"),
        r_key_spec,
    ),
    (
        "previous key loses Sign before the switch",
        _drop_depends_on("SigningKey/Key", "Exchange/Function"),
        r_ordering,
    ),
    (
        "exchange switched before its grant",
        _drop_depends_on("Exchange/Function", "SigningKeyB/ExchangeGrants"),
        r_ordering,
    ),
    (
        "introspect updated before its grant",
        _drop_depends_on("Introspect/Function", "SigningKey/IntrospectGrants"),
        r_ordering,
    ),
    (
        "signing grant in the default policy",
        partial(_grant_in_default_policy, slot="b", name="ExchangeGrants", role="Exchange/Role"),
        r_ordering,
    ),
    (
        "signing grant also in the default policy",
        lambda r: _policy(r, "Exchange/Role").extend(
            copy.deepcopy(_slot_policy(r, "b", "ExchangeGrants"))
        ),
        r_ordering,
    ),
    (
        "previous key's read grant in the default policy",
        partial(
            _grant_in_default_policy, slot="a", name="IntrospectGrants", role="Introspect/Role"
        ),
        r_ordering,
    ),
    (
        "publication ignores published keys",
        lambda r: next(
            res for res in r["Resources"].values() if res["Type"] == "Custom::TokexJwks"
        )["Properties"].pop("PublishedKeyIds"),
        r_publication,
    ),
    ("no PublishedKeyArns output", lambda r: r["Outputs"].pop("PublishedKeyArns"), r_outputs),
    (
        "SigningKeyArn output is the previous key",
        lambda r: r["Outputs"]["SigningKeyArn"].update(Value=_key_of("a")(r)),
        r_outputs,
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check"),
    [pytest.param(m, c, id=name) for name, m, c in ROTATION_MUTATIONS],
)
def test_weakened_rotation_fails_its_check(
    rotation_synth: Synthesized,
    mutate: Callable[[Raw], None],
    check: Callable[[Template], None],
) -> None:
    _assert_caught(rotation_synth, mutate, check)


@pytest.mark.parametrize(
    ("mutate", "check"),
    [pytest.param(m, c, id=name) for name, m, c in MUTATIONS],
)
def test_weakened_template_fails_its_check(
    default_synth: Synthesized,
    mutate: Callable[[Raw], None],
    check: Callable[[Template], None],
) -> None:
    _assert_caught(default_synth, mutate, check)


@pytest.mark.parametrize(
    "mutate", [pytest.param(m, id=name) for name, m in TRUSTED_ISSUER_MUTATIONS]
)
def test_weakened_trusted_issuers_fail_their_check(
    alternate_synth: Synthesized, mutate: Callable[[Raw], None]
) -> None:
    _assert_caught(alternate_synth, mutate, _trusted)


def test_trusted_issuers_appear_in_no_default_template(default_synth: Synthesized) -> None:
    """The default deployment's check fails once any function gets the variable."""
    no_issuers = partial(checks.check_trusted_issuers, expected=None)
    mutate = _set(lambda r: _env(r, "Exchange"), "TOKEX_TRUSTED_ISSUERS", "[]")
    _assert_caught(default_synth, mutate, no_issuers)


@pytest.mark.parametrize(
    ("synth", "mutate", "check"),
    [pytest.param(synth, m, c, id=name) for name, synth, m, c in TAG_MUTATIONS],
)
def test_weakened_tag_lookups_fail_their_check(
    request: pytest.FixtureRequest,
    synth: str,
    mutate: Callable[[Raw], None],
    check: Callable[[Template], None],
) -> None:
    _assert_caught(request.getfixturevalue(f"{synth}_synth"), mutate, check)


def _assert_caught(
    synthesized: Synthesized, mutate: Callable[[Raw], None], check: Callable[[Template], None]
) -> None:
    check(synthesized.template)  # holds on the real template
    raw = copy.deepcopy(synthesized.raw)
    mutate(raw)
    assert raw != synthesized.raw, "mutation changed nothing"
    # The assertions library refuses a cyclic template by itself; skip that so the
    # cycle mutation exercises our own check like every other mutation does.
    weakened = Template.from_json(
        json.loads(json.dumps(raw)), skip_cyclical_dependencies_check=True
    )
    with pytest.raises(AssertionError):
        check(weakened)
