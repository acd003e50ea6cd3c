"""The security properties of the synthesized template, one check per property.

Each check takes an `aws_cdk.assertions.Template` and raises AssertionError when its
property does not hold. `test_stack.py` runs them on the real template;
`test_mutations.py` weakens the template one property at a time and proves the matching
check then fails - so removing a property from the CDK code fails the infra tests.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, cast

from aws_cdk.assertions import Match, Template

from cdk.layer_bundling import BytecodeCompiler
from tokex.edge import NEXT_ORIGIN_SECRET_ENV, ORIGIN_HEADER, ORIGIN_SECRET_ENV

P = ParamSpec("P")
STACK = "Tokex"
# CloudFront managed policy ids (CloudFront developer guide, "Use managed ... policies").
CACHING_DISABLED = "4135ea2d-6df8-44a3-9df3-4b5a84be39ad"
ALL_VIEWER_EXCEPT_HOST_HEADER = "b689b0a8-53d0-40ab-baf2-68738e2966ac"
SECURITY_HEADERS = "67f7725c-6f97-4210-82d7-5512b31e9d03"
RUNTIME = "python3.13"
MAGIC_PROBE = "import importlib.util, sys; sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"
EM_AARCH64 = 183

SIGNING_ALGORITHMS = {"RSA_2048": "RSASSA_PKCS1_V1_5_SHA_256", "ECC_NIST_P256": "ECDSA_SHA_256"}
# Key-policy actions that use the key (anything not administration).
CRYPTO_ACTIONS = (
    "kms:Sign",
    "kms:Verify",
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateMac",
)
# The logical ids of slot "a"'s key (RSA_2048, the default) and alias in every stack
# deployed so far: changing either would make CloudFormation replace the key (or fail on a
# duplicate alias). Another key spec is another key, with its own logical id.
SLOT_A_KEY_LOGICAL_ID = "SigningKey49B95470"
SLOT_A_ALIAS_LOGICAL_ID = "SigningKeyAliasFA392759"
# The only items the exchange may write to the state table
# (tokex/adapters/state_table/admission.py).
SINGLE_USE_CONDITION = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["sig#*"]}}
RATE_COUNTER_CONDITION = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["rate#*"]}}
# The policy table's generation item, read before and after each Scan (and no policy).
POLICY_GENERATION_CONDITION = {
    "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["#generation"]}
}
INTROSPECT_READ_CONDITION = {
    "ForAllValues:StringLike": {
        "dynamodb:LeadingKeys": ["client#*", "revoked-jti#*", "revoked-principal#*"]
    }
}


# --- helpers --------------------------------------------------------------------------


_RAW: weakref.WeakKeyDictionary[Template, dict[str, Any]] = weakref.WeakKeyDictionary()


def raw(template: Template) -> dict[str, Any]:
    """The template as JSON, read from the jsii kernel once per Template (read-only)."""
    if template not in _RAW:
        _RAW[template] = cast(dict[str, Any], template.to_json())
    return _RAW[template]


def logical_id(template: Template, path: str) -> str:
    """Logical id of the resource whose construct path is `Tokex/<path>/Resource`."""
    return logical_id_in(raw(template), path)


def logical_id_in(template_json: dict[str, Any], path: str) -> str:
    """`logical_id` on the template's JSON (no jsii Template needed)."""
    wanted = f"{STACK}/{path}/Resource"
    found = [
        lid
        for lid, res in template_json["Resources"].items()
        if res.get("Metadata", {}).get("aws:cdk:path") == wanted
    ]
    assert len(found) == 1, f"expected one resource at {wanted}, found {found}"
    return found[0]


def resource(template: Template, path: str) -> dict[str, Any]:
    return raw(template)["Resources"][logical_id(template, path)]


def arn_of(template: Template, path: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical_id(template, path), "Arn"]}


def ref(template: Template, path: str) -> dict[str, Any]:
    return {"Ref": logical_id(template, path)}


def slot_path(slot: str) -> str:
    """The construct path of a key slot: `SigningKey` (slot "a", as ever), `SigningKeyB`,
    `SigningKeyMrkA`."""
    from cdk.signing_key import slot_construct_id

    return slot_construct_id(slot)


def key_path(template: Template, slot: str) -> str:
    """The construct path of a slot's key: `<slot>/Key` (RSA_2048), `<slot>/KeyEccNistP256`
    (cdk/signing_key.py: the construct id names the key spec)."""
    from cdk.signing_key import key_construct_id

    present = {
        r.get("Metadata", {}).get("aws:cdk:path") for r in raw(template)["Resources"].values()
    }
    paths = [f"{slot_path(slot)}/{key_construct_id(spec)}" for spec in SIGNING_ALGORITHMS]
    found = [path for path in paths if f"{STACK}/{path}/Resource" in present]
    assert len(found) == 1, f"expected one key of slot {slot}, found {found}"
    return found[0]


def grants_path(template: Template, slot: str, name: str) -> str:
    """The construct path of a slot's grant policy `name` (`ExchangeGrants`...), named for
    the slot's key spec as the key is (cdk/signing_key.py `grants_construct_id`)."""
    from cdk.signing_key import grants_construct_id, key_construct_id

    key = key_path(template, slot).rpartition("/")[2]
    spec = next(s for s in SIGNING_ALGORITHMS if key_construct_id(s) == key)
    return f"{slot_path(slot)}/{grants_construct_id(name, spec)}"


def key_arn(template: Template, slot: str) -> dict[str, Any]:
    return arn_of(template, key_path(template, slot))


def published_ids(
    template: Template, *, slots: tuple[str, ...], active: str, published_keys: tuple[str, ...]
) -> list[Any]:
    """What TOKEX_PUBLISHED_KEY_IDS must list, in order: the other slots' keys (slot
    order), then the publishedKeyArns keys."""
    return [*(key_arn(template, s) for s in slots if s != active), *published_keys]


def split_ids(value: Any) -> list[Any]:
    """A comma-separated list as the template holds it (a literal, one reference, or an
    `Fn::Join` on ","), as a list of ARN literals and references."""
    if isinstance(value, str):
        return [part for part in value.split(",") if part]
    if isinstance(value, dict) and "Fn::Join" in value:
        delimiter, parts = value["Fn::Join"]
        assert delimiter == ",", f"not a comma-separated list: {value}"
        return [item for part in parts for item in split_ids(part)]
    return [value]


def _listify(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(template: Template, role_path: str) -> list[dict[str, Any]]:
    """Every identity-policy statement attached to a role: inline, managed or separate."""
    role_id = logical_id(template, role_path)
    role = raw(template)["Resources"][role_id]["Properties"]
    assert not role.get("ManagedPolicyArns"), f"{role_path} has managed policies"
    statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
    for res in raw(template)["Resources"].values():
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and {
            "Ref": role_id
        } in res["Properties"].get("Roles", []):
            statements.extend(res["Properties"]["PolicyDocument"]["Statement"])
    return statements


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(action, resource, condition) triples for Allow statements, JSON-normalized."""
    out = set()
    for statement in statements:
        assert statement["Effect"] == "Allow", f"unexpected statement {statement}"
        assert "NotAction" not in statement and "NotResource" not in statement
        condition = json.dumps(statement.get("Condition", {}), sort_keys=True)
        for action in _listify(statement["Action"]):
            for res in _listify(statement["Resource"]):
                out.add((action, json.dumps(res, sort_keys=True), condition))
    return out


def _grant(action: str, res: Any, condition: dict[str, Any] | None = None) -> tuple[str, str, str]:
    return (action, json.dumps(res, sort_keys=True), json.dumps(condition or {}, sort_keys=True))


def _iter_refs(value: Any) -> Iterator[str]:
    """Logical ids referenced by Ref / Fn::GetAtt / Fn::Sub inside a value."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref" and isinstance(inner, str) and not inner.startswith("AWS::"):
                yield inner
            elif key == "Fn::GetAtt":
                yield inner[0] if isinstance(inner, list) else inner.split(".")[0]
            elif key == "Fn::Sub":
                text = inner[0] if isinstance(inner, list) else inner
                for part in text.split("${")[1:]:
                    name = part.split("}")[0].split(".")[0]
                    if not name.startswith("AWS::"):
                        yield name
                yield from _iter_refs(inner)
            else:
                yield from _iter_refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _iter_refs(inner)


def dependencies(template: Template) -> dict[str, set[str]]:
    resources = raw(template)["Resources"]
    graph = {}
    for lid, res in resources.items():
        deps = set(_iter_refs(res.get("Properties", {})))
        deps.update(_listify(res.get("DependsOn", [])))
        graph[lid] = deps & resources.keys()
    return graph


def depends_on(template: Template, source: str, target: str) -> bool:
    graph, seen, stack = dependencies(template), set(), [source]
    while stack:
        node = stack.pop()
        for dep in graph[node]:
            if dep == target:
                return True
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return False


# --- checks ---------------------------------------------------------------------------


def check(fn: Callable[P, None]) -> Callable[P, None]:
    """Every failure of a check is an AssertionError: a missing key in the template and a
    failed `Template` assertion (a jsii RuntimeError) included."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except (KeyError, IndexError, TypeError, RuntimeError) as exc:
            raise AssertionError(f"{fn.__name__}: {type(exc).__name__}: {exc}") from exc

    return wrapper


@check
def check_no_dependency_cycle(template: Template) -> None:
    """CloudFormation refuses a cyclic template; neither cfn-lint nor the CDK assertions
    library reports one, so walk the graph ourselves."""
    graph = dependencies(template)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            assert state.get(dep) != 1, f"dependency cycle: {' -> '.join([*trail, node, dep])}"
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@check
def check_issuer_wiring(template: Template, *, issuer: Any, active: str = "a") -> None:
    """The issuer reaches the functions; the API itself never depends on a function; every
    function knows the active slot's key as the signing key."""
    api = logical_id(template, "TokenApi/Api")
    for fn in ("Exchange/Function", "Introspect/Function", "JwksPublisher/Function"):
        assert not depends_on(template, api, logical_id(template, fn))
        env = _env(template, fn)
        assert env["TOKEX_ISSUER"] == issuer
        assert env["TOKEX_SIGNING_KEY_ID"] == key_arn(template, active)
    for fn in ("Exchange/Function", "JwksPublisher/Function"):
        assert _env(template, fn)["TOKEX_TOKEN_ENDPOINT"] == _append(issuer, "/token")
    # Discovery lists the introspection endpoint (the publisher writes it).
    publisher = _env(template, "JwksPublisher/Function")
    assert publisher["TOKEX_INTROSPECTION_ENDPOINT"] == _append(issuer, "/introspect")


def _env(template: Template, function_path: str) -> dict[str, Any]:
    variables: dict[str, Any] = resource(template, function_path)["Properties"]["Environment"][
        "Variables"
    ]
    return variables


@check
def check_introspection_wiring(
    template: Template,
    *,
    issuer: Any,
    ttl_cap: int = 3600,
    default_ttl: int = 900,
    published_keys: tuple[str, ...] = (),
    slots: tuple[str, ...] = ("a",),
    active: str = "a",
) -> None:
    """The introspect function's exact environment; the state table reaches the exchange
    (single use on) and introspection; both use the same TTL cap and published keys as
    the exchange and the publisher: the other slots' keys, then `published_keys`."""
    state_table = ref(template, "StateTable/Table")
    published = published_ids(template, slots=slots, active=active, published_keys=published_keys)
    env = dict(_env(template, "Introspect/Function"))
    assert split_ids(env.pop("TOKEX_PUBLISHED_KEY_IDS")) == published
    assert env.pop(ORIGIN_SECRET_ENV) and env.pop(NEXT_ORIGIN_SECRET_ENV)  # check_one_door
    assert env.pop("POWERTOOLS_TRACE_DISABLED")  # its value: check_functions
    assert env.pop("TOKEX_STACK_NAME")  # its value: check_functions
    assert env == {
        "TOKEX_ISSUER": issuer,
        "TOKEX_SIGNING_KEY_ID": key_arn(template, active),
        "TOKEX_STATE_TABLE": state_table,
        "TOKEX_TTL_CAP_SECONDS": str(ttl_cap),
        "TOKEX_DEFAULT_TTL_SECONDS": str(default_ttl),
        "POWERTOOLS_SERVICE_NAME": "tokex",
        "POWERTOOLS_METRICS_NAMESPACE": "tokex",
        "POWERTOOLS_LOGGER_LOG_EVENT": "false",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
        "LOG_LEVEL": "INFO",
    }
    exchange = _env(template, "Exchange/Function")
    assert exchange["TOKEX_STATE_TABLE"] == state_table
    # Single use is on unless TOKEX_SINGLE_USE=false: nothing may switch it off.
    assert "TOKEX_SINGLE_USE" not in exchange
    assert exchange["TOKEX_TTL_CAP_SECONDS"] == str(ttl_cap)
    assert "TOKEX_PUBLISHED_KEY_IDS" not in exchange  # it signs with one key only
    publisher = _env(template, "JwksPublisher/Function")
    assert split_ids(publisher["TOKEX_PUBLISHED_KEY_IDS"]) == published


def _append(value: Any, suffix: str) -> Any:
    if isinstance(value, str):
        return value + suffix
    parts = value["Fn::Join"][1]
    return {"Fn::Join": ["", [*parts, suffix]]}


def default_issuer(template: Template) -> dict[str, Any]:
    distribution = logical_id(template, "IssuerSite/Distribution")
    return {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [distribution, "DomainName"]}]]}


@check
def check_signing_key(
    template: Template, *, key_spec: str, slots: tuple[str, ...] = ("a",)
) -> None:
    """One retained asymmetric SIGN_VERIFY key and its alias per slot, nothing else; slot
    "a" keeps the logical ids every deployed stack has (the key: with the default spec)."""
    from cdk.signing_key import key_construct_id

    template.resource_count_is("AWS::KMS::Key", len(slots))
    template.resource_count_is("AWS::KMS::Alias", len(slots))
    for slot in slots:
        assert key_path(template, slot) == f"{slot_path(slot)}/{key_construct_id(key_spec)}"
        key = resource(template, key_path(template, slot))
        assert key["Properties"]["KeySpec"] == key_spec
        assert key["Properties"]["KeyUsage"] == "SIGN_VERIFY"
        assert key["DeletionPolicy"] == "Retain" and key["UpdateReplacePolicy"] == "Retain"
        alias = resource(template, f"{slot_path(slot)}/Alias")["Properties"]
        suffix = "" if slot == "a" else f"-{slot}"
        assert alias == {
            "AliasName": f"alias/tokex/{STACK}/signing{suffix}",
            "TargetKeyId": key_arn(template, slot),
        }, f"slot {slot}: alias {alias}"
    if "a" in slots:
        key_id = logical_id(template, key_path(template, "a"))
        assert (key_id == SLOT_A_KEY_LOGICAL_ID) == (key_spec == "RSA_2048"), key_id
        assert logical_id(template, "SigningKey/Alias") == SLOT_A_ALIAS_LOGICAL_ID


@check
def check_key_policy(
    template: Template, *, key_spec: str, slots: tuple[str, ...] = ("a",), active: str = "a"
) -> None:
    """Every slot: administration for the account's IAM, no grants at all (a grant would
    give Sign past the key policy's conditions). The active slot only: kms:Sign for the
    exchange role's ARN; a published key that is not active cannot sign."""
    for slot in slots:
        _check_one_key_policy(template, slot, key_spec=key_spec, signs=slot == active)


def _check_one_key_policy(template: Template, slot: str, *, key_spec: str, signs: bool) -> None:
    key = resource(template, key_path(template, slot))
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    exchange_role = arn_of(template, "Exchange/Role")
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert denies == [
        {
            "Sid": "NoGrants",
            "Effect": "Deny",
            "Principal": {"AWS": "*"},
            "Action": "kms:CreateGrant",
            "Resource": "*",
        }
    ], f"key policy must deny kms:CreateGrant to everyone: {denies}"
    statements = [s for s in statements if s["Effect"] != "Deny"]
    signers = []
    for statement in statements:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement
        assert not any(_glob_match(a, "kms:CreateGrant") for a in _listify(statement["Action"])), (
            "key policy allows kms:CreateGrant"
        )
        actions = _listify(statement["Action"])
        assert "kms:*" not in actions and "*" not in actions, "key policy grants kms:*"
        uses = [a for a in actions if any(_glob_match(a, c) for c in CRYPTO_ACTIONS)]
        if uses:
            signers.append(statement)
            assert uses == ["kms:Sign"] == actions, f"crypto actions in key policy: {actions}"
    if not signs:
        assert signers == [], f"slot {slot} is not active but its key policy allows signing"
        return
    assert len(signers) == 1, f"slot {slot}: exactly one key-policy statement may allow signing"
    assert signers[0]["Condition"] == {
        "ArnEquals": {"aws:PrincipalArn": exchange_role},
        "StringEquals": {
            "kms:MessageType": "RAW",
            "kms:SigningAlgorithm": SIGNING_ALGORITHMS[key_spec],
        },
    }


def _glob_match(pattern: str, action: str) -> bool:
    if pattern.endswith("*"):
        return action.startswith(pattern[:-1])
    return pattern == action


def instance_tags_role_arn(account: str, role_name: str) -> dict[str, Any]:
    return {
        "Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":iam::{account}:role/{role_name}"]]
    }


@check
def check_exchange_permissions(
    template: Template,
    *,
    key_spec: str,
    instance_tags_roles: tuple[Any, ...] = (),
    active: str = "a",
) -> None:
    """Exactly: write its logs, X-Ray, sign with (and read) the active key and no other,
    read the policy table (Scan, and GetItem of its generation item only), put `sig#` items
    and count in `rate#` items (only) in the state table, and assume the instance-tags
    roles (only when configured)."""
    key, table = key_arn(template, active), arn_of(template, "PolicyTable/Table")
    state = arn_of(template, "StateTable/Table")
    logs = arn_of(template, "Exchange/Logs")
    sign_condition = {
        "StringEquals": {
            "kms:MessageType": "RAW",
            "kms:SigningAlgorithm": SIGNING_ALGORITHMS[key_spec],
        }
    }
    expected = {
        _grant("logs:CreateLogStream", logs),
        _grant("logs:PutLogEvents", logs),
        *_xray_grants(template, "Exchange"),
        _grant("kms:Sign", key, sign_condition),
        _grant("kms:GetPublicKey", key),
        _grant("dynamodb:Scan", table),
        _grant("dynamodb:GetItem", table, POLICY_GENERATION_CONDITION),
        _grant("dynamodb:PutItem", state, SINGLE_USE_CONDITION),
        _grant("dynamodb:UpdateItem", state, RATE_COUNTER_CONDITION),
        *(_grant("sts:AssumeRole", role) for role in instance_tags_roles),
    }
    actual = grants(role_statements(template, "Exchange/Role"))
    assert actual == expected, (
        f"exchange role: extra {actual - expected}, missing {expected - actual}"
    )
    _check_lambda_trust(template, "Exchange/Role")


@check
def check_introspect_permissions(
    template: Template, *, published_keys: tuple[str, ...] = (), slots: tuple[str, ...] = ("a",)
) -> None:
    """Exactly: write its logs, X-Ray, read the public keys of every slot and of
    `published_keys` (never sign), and read clients and revocations from the state table
    (never write, never another table)."""
    logs = arn_of(template, "Introspect/Logs")
    state = arn_of(template, "StateTable/Table")
    expected = {
        _grant("logs:CreateLogStream", logs),
        _grant("logs:PutLogEvents", logs),
        *_xray_grants(template, "Introspect"),
        *(_grant("kms:GetPublicKey", key_arn(template, slot)) for slot in slots),
        *(_grant("kms:GetPublicKey", arn) for arn in published_keys),
        _grant("dynamodb:GetItem", state, INTROSPECT_READ_CONDITION),
        _grant("dynamodb:BatchGetItem", state, INTROSPECT_READ_CONDITION),
    }
    actual = grants(role_statements(template, "Introspect/Role"))
    assert actual == expected, (
        f"introspect role: extra {actual - expected}, missing {expected - actual}"
    )
    _check_lambda_trust(template, "Introspect/Role")


@check
def check_publisher_permissions(
    template: Template, *, published_keys: tuple[str, ...] = (), slots: tuple[str, ...] = ("a",)
) -> None:
    """Exactly: write its logs, X-Ray, read the public keys of every slot and of
    `published_keys`, publish under .well-known/."""
    logs = arn_of(template, "JwksPublisher/Logs")
    documents = [
        {"Fn::Join": ["", [arn_of(template, "IssuerSite/Documents"), f"/.well-known/{name}"]]}
        for name in ("jwks.json", "openid-configuration")
    ]
    expected = {
        _grant("logs:CreateLogStream", logs),
        _grant("logs:PutLogEvents", logs),
        *_xray_grants(template, "JwksPublisher"),
        *(_grant("kms:GetPublicKey", key_arn(template, slot)) for slot in slots),
        *(_grant("kms:GetPublicKey", arn) for arn in published_keys),
        *(
            _grant(action, document)
            for action in ("s3:GetObject", "s3:PutObject")
            for document in documents
        ),
    }
    actual = grants(role_statements(template, "JwksPublisher/Role"))
    assert actual == expected, (
        f"publisher role: extra {actual - expected}, missing {expected - actual}"
    )
    assert not any(action == "kms:Sign" for action, _, _ in actual)
    _check_lambda_trust(template, "JwksPublisher/Role")


def _xray_grants(template: Template, function: str) -> set[tuple[str, str, str]]:
    """X-Ray's two actions when the function is traced (check_functions pins whether it
    is), none when tracing is off."""
    if "TracingConfig" not in resource(template, f"{function}/Function")["Properties"]:
        return set()
    return {_grant("xray:PutTraceSegments", "*"), _grant("xray:PutTelemetryRecords", "*")}


def _check_lambda_trust(template: Template, role_path: str) -> None:
    trust = resource(template, role_path)["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
        }
    ]


@check
def check_documents_bucket(template: Template) -> None:
    """Private (all four public-access blocks), versioned, encrypted, TLS-only, and readable
    only by this distribution through origin access control."""
    props = resource(template, "IssuerSite/Documents")["Properties"]
    _check_private_encrypted(props)
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert "AccessControl" not in props
    assert props["LoggingConfiguration"]["DestinationBucketName"] == ref(
        template, "IssuerSite/AccessLogs"
    )
    statements = _bucket_policy(template, "IssuerSite/Documents")
    _check_tls_only(template, "IssuerSite/Documents", statements)
    allows = [s for s in statements if s["Effect"] == "Allow"]
    distribution = logical_id(template, "IssuerSite/Distribution")
    assert allows == [
        {
            "Action": "s3:GetObject",
            "Condition": {
                "StringEquals": {
                    "AWS:SourceArn": {
                        "Fn::Join": [
                            "",
                            [
                                "arn:",
                                {"Ref": "AWS::Partition"},
                                ":cloudfront::",
                                {"Ref": "AWS::AccountId"},
                                ":distribution/",
                                {"Ref": distribution},
                            ],
                        ]
                    }
                }
            },
            "Effect": "Allow",
            "Principal": {"Service": "cloudfront.amazonaws.com"},
            "Resource": {"Fn::Join": ["", [arn_of(template, "IssuerSite/Documents"), "/*"]]},
        }
    ], f"unexpected Allow in the documents bucket policy: {allows}"
    bucket = resource(template, "IssuerSite/Documents")
    assert bucket["DeletionPolicy"] == "Retain"


@check
def check_log_bucket(template: Template) -> None:
    props = resource(template, "IssuerSite/AccessLogs")["Properties"]
    _check_private_encrypted(props)
    statements = _bucket_policy(template, "IssuerSite/AccessLogs")
    _check_tls_only(template, "IssuerSite/AccessLogs", statements)
    for statement in statements:
        if statement["Effect"] == "Allow":
            assert statement["Principal"] == {"Service": "logging.s3.amazonaws.com"}
            assert statement["Action"] == "s3:PutObject"


def _check_private_encrypted(props: dict[str, Any]) -> None:
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rules == [{"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
    assert props.get("AccessControl") in (None, "Private")


def _bucket_policy(template: Template, bucket_path: str) -> list[dict[str, Any]]:
    bucket = ref(template, bucket_path)
    policies = [
        r["Properties"]["PolicyDocument"]["Statement"]
        for r in raw(template)["Resources"].values()
        if r["Type"] == "AWS::S3::BucketPolicy" and r["Properties"]["Bucket"] == bucket
    ]
    assert len(policies) == 1, f"{bucket_path}: expected one bucket policy"
    return policies[0]


def _check_tls_only(template: Template, bucket_path: str, statements: list[dict[str, Any]]) -> None:
    arn = arn_of(template, bucket_path)
    assert {
        "Action": "s3:*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Resource": [arn, {"Fn::Join": ["", [arn, "/*"]]}],
    } in statements, f"{bucket_path}: no TLS-only deny statement"


@check
def check_distribution(template: Template) -> None:
    """Origin access control to S3, https for viewers, /token to the API uncached."""
    template.has_resource_properties(
        "AWS::CloudFront::OriginAccessControl",
        {
            "OriginAccessControlConfig": {
                "OriginAccessControlOriginType": "s3",
                "SigningBehavior": "always",
                "SigningProtocol": "sigv4",
            }
        },
    )
    config = resource(template, "IssuerSite/Distribution")["Properties"]["DistributionConfig"]
    origins = {o["Id"]: o for o in config["Origins"]}
    s3_origin = origins[config["DefaultCacheBehavior"]["TargetOriginId"]]
    assert s3_origin["OriginAccessControlId"] == {
        "Fn::GetAtt": [
            logical_id(template, "IssuerSite/Distribution/Origin1/S3OriginAccessControl"),
            "Id",
        ]
    }
    assert s3_origin["DomainName"] == {
        "Fn::GetAtt": [logical_id(template, "IssuerSite/Documents"), "RegionalDomainName"]
    }
    assert s3_origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}

    default = config["DefaultCacheBehavior"]
    assert default["ViewerProtocolPolicy"] == "redirect-to-https"
    assert default.get("AllowedMethods", ["GET", "HEAD"]) == ["GET", "HEAD"]
    assert default["ResponseHeadersPolicyId"] == SECURITY_HEADERS

    behaviors = config["CacheBehaviors"]
    assert [b["PathPattern"] for b in behaviors] == ["/token", "/introspect"]
    for behavior in behaviors:
        # https only (a POST is refused on http, never redirected), every method reaches
        # the API, nothing cached. Caching disabled + ALL_VIEWER_EXCEPT_HOST_HEADER is
        # also what forwards `Authorization` (introspection's client credentials).
        assert behavior["ViewerProtocolPolicy"] == "https-only"
        assert "POST" in behavior["AllowedMethods"]
        assert behavior["CachePolicyId"] == CACHING_DISABLED
        assert behavior["OriginRequestPolicyId"] == ALL_VIEWER_EXCEPT_HOST_HEADER
        assert behavior["ResponseHeadersPolicyId"] == SECURITY_HEADERS
        assert behavior["Compress"] is False
        api_origin = origins[behavior["TargetOriginId"]]
        assert api_origin["CustomOriginConfig"] == {
            "OriginProtocolPolicy": "https-only",
            "OriginSSLProtocols": ["TLSv1.2"],
        }
        assert api_origin["DomainName"]["Fn::Join"][1][0] == ref(template, "TokenApi/Api")
    assert config["Logging"]["Bucket"] == {
        "Fn::GetAtt": [logical_id(template, "IssuerSite/AccessLogs"), "RegionalDomainName"]
    }
    assert config["Enabled"] is True


@check
def check_custom_domain(template: Template, *, domain: str, certificate_arn: str) -> None:
    config = resource(template, "IssuerSite/Distribution")["Properties"]["DistributionConfig"]
    assert config["Aliases"] == [domain]
    assert config["ViewerCertificate"] == {
        "AcmCertificateArn": certificate_arn,
        "MinimumProtocolVersion": "TLSv1.2_2021",
        "SslSupportMethod": "sni-only",
    }


# Construct name -> the function's subpackage of tokex_functions.
FUNCTION_PACKAGES = {
    "Exchange": "exchange",
    "Introspect": "introspect",
    "JwksPublisher": "jwks_publisher",
}


@check
def check_functions(
    template: Template,
    tracing: str = "lambda",
    *,
    retention_days: int = 30,
    require_signed_audience: bool = False,
    stack_name: str = "Tokex",
) -> None:
    """Current Python runtime on arm64, X-Ray as `tracing` says (default "lambda":
    Lambda's own segments, no tracer in the function), own log group with retention,
    layer; every metric dimensioned by the stack's name (`stack_name`, the default's)."""
    layer = ref(template, "CoreLayer/Layer")
    for name, timeout in (("Exchange", 10), ("Introspect", 10), ("JwksPublisher", 30)):
        props = resource(template, f"{name}/Function")["Properties"]
        assert props["Runtime"] == RUNTIME
        assert props["Architectures"] == ["arm64"]
        if tracing == "off":
            assert "TracingConfig" not in props
        else:
            assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["MemorySize"] == 512
        assert props["Timeout"] == timeout
        assert (
            props["Handler"] == f"tokex_functions.{FUNCTION_PACKAGES[name]}.handler.lambda_handler"
        )
        assert props["Layers"] == [layer]
        assert props["Role"] == arn_of(template, f"{name}/Role")
        assert props["LoggingConfig"]["LogGroup"] == ref(template, f"{name}/Logs")
        assert resource(template, f"{name}/Logs")["Properties"]["RetentionInDays"] == retention_days
        env = props["Environment"]["Variables"]
        assert env["POWERTOOLS_SERVICE_NAME"] == "tokex"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "tokex"
        assert env["TOKEX_STACK_NAME"] == stack_name
        assert env["POWERTOOLS_LOGGER_LOG_EVENT"] == "false"
        assert env["POWERTOOLS_TRACER_CAPTURE_RESPONSE"] == "false"
        assert env["POWERTOOLS_TRACE_DISABLED"] == ("false" if tracing == "sdk" else "true")
    template.has_resource_properties(
        "AWS::Lambda::LayerVersion",
        {"CompatibleArchitectures": ["arm64"], "CompatibleRuntimes": [RUNTIME]},
    )
    exchange = resource(template, "Exchange/Function")["Properties"]["Environment"]["Variables"]
    assert exchange["TOKEX_POLICY_TABLE"] == ref(template, "PolicyTable/Table")
    required = exchange.get("TOKEX_REQUIRE_SIGNED_AUDIENCE")
    assert required == ("true" if require_signed_audience else None)
    publisher = resource(template, "JwksPublisher/Function")["Properties"]["Environment"]
    assert publisher["Variables"]["TOKEX_JWKS_BUCKET"] == ref(template, "IssuerSite/Documents")


@check
def check_token_api(template: Template, *, rate: int = 50, burst: int = 100) -> None:
    """Routes to the exchange only; $default stage throttled and access-logged."""
    api = ref(template, "TokenApi/Api")
    template.has_resource_properties("AWS::ApiGatewayV2::Api", {"ProtocolType": "HTTP"})
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in raw(template)["Resources"].values()
        if r["Type"] == "AWS::ApiGatewayV2::Route"
    }
    expected_routes = {
        "POST /token": "Exchange",
        "ANY /token": "Exchange",
        "POST /introspect": "Introspect",
        "ANY /introspect": "Introspect",
    }
    assert set(routes) == set(expected_routes), f"routes: {sorted(routes)}"
    integrations = {
        lid: r["Properties"]
        for lid, r in raw(template)["Resources"].items()
        if r["Type"] == "AWS::ApiGatewayV2::Integration"
    }
    assert len(integrations) == 2, f"integrations: {sorted(integrations)}"
    for route_key, function in expected_routes.items():
        route = routes[route_key]
        assert route["ApiId"] == api
        assert route.get("AuthorizationType", "NONE") == "NONE"
        target = route["Target"]["Fn::Join"]
        assert target[0] == "" and target[1][0] == "integrations/", route_key
        assert integrations[target[1][1]["Ref"]] == {
            "ApiId": api,
            "IntegrationType": "AWS_PROXY",
            "IntegrationUri": arn_of(template, f"{function}/Function"),
            "PayloadFormatVersion": "2.0",
        }, f"{route_key} does not go to the {function} function"
    stage = resource(template, "TokenApi/DefaultStage")["Properties"]
    assert stage["StageName"] == "$default" and stage["AutoDeploy"] is True
    assert stage["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": burst,
        "ThrottlingRateLimit": rate,
    }
    assert stage["AccessLogSettings"]["DestinationArn"] == arn_of(template, "TokenApi/AccessLogs")
    assert "$context.requestId" in stage["AccessLogSettings"]["Format"]
    assert resource(template, "TokenApi/AccessLogs")["Properties"]["RetentionInDays"] == 30
    template.resource_count_is("AWS::ApiGatewayV2::Stage", 1)


@check
def check_policy_table(template: Template) -> None:
    """On-demand, PITR, encrypted, partition key `id` (S), retained."""
    table = resource(template, "PolicyTable/Table")
    assert table["Type"] == "AWS::DynamoDB::GlobalTable"
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["Replicas"], "no replica"
    for replica in props["Replicas"]:
        assert replica["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert replica["DeletionProtectionEnabled"] is True


@check
def check_state_table(template: Template) -> None:
    """On-demand, PITR, encrypted, key `id` (S), TTL on `expires_at`, retained (it holds
    the introspection clients)."""
    table = resource(template, "StateTable/Table")
    assert table["Type"] == "AWS::DynamoDB::GlobalTable"
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["Replicas"], "no replica"
    for replica in props["Replicas"]:
        assert replica["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert replica["DeletionProtectionEnabled"] is True


@check
def check_instance_tag_lookups(template: Template, *, role_name: str | None) -> None:
    """The exchange knows the instance-tags role name exactly when it is configured (its
    sts:AssumeRole grant is in check_exchange_permissions)."""
    exchange = _env(template, "Exchange/Function")
    assert exchange.get("TOKEX_INSTANCE_TAGS_ROLE_NAME") == role_name


@check
def check_trusted_issuers(template: Template, *, expected: str | None) -> None:
    """Only the exchange verifies JWT evidence: it alone knows the trusted issuers, exactly
    the configured ones (compact JSON), and none when `trustedIssuers` is unset. Their
    JWKS are fetched over plain HTTPS, so no grant goes with them
    (check_exchange_permissions is unchanged by them)."""
    assert _env(template, "Exchange/Function").get("TOKEX_TRUSTED_ISSUERS") == expected
    for fn in ("Introspect/Function", "JwksPublisher/Function"):
        assert "TOKEX_TRUSTED_ISSUERS" not in _env(template, fn)


@check
def check_jwks_publication(
    template: Template,
    *,
    nonce: str,
    slots: tuple[str, ...] = ("a",),
    active: str = "a",
    published_keys: tuple[str, ...] = (),
) -> None:
    """Hourly schedule and a custom resource that changes on every deploy, and whenever
    the signing key or the published keys change (even with a pinned nonce)."""
    publisher = arn_of(template, "JwksPublisher/Function")
    template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "ScheduleExpression": "rate(1 hour)",
            "State": "ENABLED",
            "Targets": [Match.object_like({"Arn": publisher})],
        },
    )
    custom = [r for r in raw(template)["Resources"].values() if r["Type"] == "Custom::TokexJwks"]
    assert len(custom) == 1, "no JWKS custom resource"
    props = custom[0]["Properties"]
    framework = arn_of(template, "JwksPublication/Provider/framework-onEvent")
    assert props["ServiceToken"] == framework
    assert props["DeployNonce"] == nonce
    assert props["SigningKeyArn"] == key_arn(template, active)
    assert split_ids(props["PublishedKeyIds"]) == published_ids(
        template, slots=slots, active=active, published_keys=published_keys
    )
    env = resource(template, "JwksPublication/Provider/framework-onEvent")["Properties"]
    assert env["Environment"]["Variables"]["USER_ON_EVENT_FUNCTION_ARN"] == publisher


@check
def check_outputs(
    template: Template,
    *,
    issuer: Any,
    default_ttl: int = 900,
    ttl_cap: int = 3600,
    slots: tuple[str, ...] = ("a",),
    active: str = "a",
    published_keys: tuple[str, ...] = (),
) -> None:
    template.has_output("IssuerUrl", {"Value": issuer})
    template.has_output("TokenEndpoint", {"Value": _append(issuer, "/token")})
    template.has_output("JwksUrl", {"Value": _append(issuer, "/.well-known/jwks.json")})
    template.has_output("PolicyTableName", {"Value": ref(template, "PolicyTable/Table")})
    template.has_output("SigningKeyArn", {"Value": key_arn(template, active)})
    # The other published keys, when there are any (an output is never left empty).
    published = published_ids(template, slots=slots, active=active, published_keys=published_keys)
    outputs = raw(template).get("Outputs", {})
    if published:
        assert split_ids(outputs["PublishedKeyArns"]["Value"]) == published
    else:
        assert "PublishedKeyArns" not in outputs
    template.has_output("IntrospectionEndpoint", {"Value": _append(issuer, "/introspect")})
    template.has_output("StateTableName", {"Value": ref(template, "StateTable/Table")})
    template.has_output("DefaultTtlSeconds", {"Value": str(default_ttl)})
    template.has_output("TtlCapSeconds", {"Value": str(ttl_cap)})
    template.has_output("ExchangeRoleArn", {"Value": arn_of(template, "Exchange/Role")})
    # `tokex policy explain --stack` reads the outputs: they must be the functions' values.
    exchange = _env(template, "Exchange/Function")
    assert exchange["TOKEX_DEFAULT_TTL_SECONDS"] == str(default_ttl)
    assert exchange["TOKEX_TTL_CAP_SECONDS"] == str(ttl_cap)


def _policy_ids_on(template: Template, role_path: str) -> set[str]:
    role = {"Ref": logical_id(template, role_path)}
    return {
        lid
        for lid, res in raw(template)["Resources"].items()
        if res["Type"] == "AWS::IAM::Policy" and role in res["Properties"].get("Roles", [])
    }


def _depends_directly(template: Template, source: str, target: str) -> bool:
    return target in _listify(raw(template)["Resources"][source].get("DependsOn", []))


# The role, function and slot policy of each key user: (role, function, policy id).
KEY_USERS = (
    ("Exchange/Role", "Exchange/Function", "ExchangeGrants"),
    ("Introspect/Role", "Introspect/Function", "IntrospectGrants"),
    ("JwksPublisher/Role", "JwksPublisher/Function", "PublisherGrants"),
)


@check
def check_key_switch_ordering(
    template: Template, *, slots: tuple[str, ...] = ("a",), active: str = "a"
) -> None:
    """What makes adding, activating and retiring a slot zero-downtime (see
    cdk/signing_key.py): every identity-policy statement on a slot's key is in that slot's
    own IAM policy (exchange: the active slot only), which the function using it and its
    role's default policy depend on; and an inactive key (whose Sign statement may just
    have been removed) is only updated after the exchange function."""
    slot_keys = {json.dumps(key_arn(template, slot), sort_keys=True) for slot in slots}
    exchange_fn = logical_id(template, "Exchange/Function")
    for role_path, function_path, policy_name in KEY_USERS:
        users = slots if policy_name != "ExchangeGrants" else (active,)
        function = logical_id(template, function_path)
        default = logical_id(template, f"{role_path}/DefaultPolicy")
        expected_policies = {
            logical_id(template, grants_path(template, s, policy_name)) for s in users
        }
        assert _policy_ids_on(template, role_path) == {default, *expected_policies}, (
            f"{role_path}: unexpected IAM policies {_policy_ids_on(template, role_path)}"
        )
        for slot in users:
            policy = logical_id(template, grants_path(template, slot, policy_name))
            statements = resource(template, grants_path(template, slot, policy_name))["Properties"]
            own_key = json.dumps(key_arn(template, slot), sort_keys=True)
            assert {r for _, r, _ in grants(statements["PolicyDocument"]["Statement"])} == {
                own_key
            }, f"{policy_name} of slot {slot} names other resources"
            assert _depends_directly(template, function, policy), (
                f"{function_path} may be updated before {policy_name} of slot {slot} exists"
            )
            assert _depends_directly(template, default, policy), (
                f"{role_path}/DefaultPolicy may drop key grants before {policy_name} of"
                f" slot {slot} exists"
            )
        default_statements = resource(template, f"{role_path}/DefaultPolicy")["Properties"]
        on_slot_keys = [
            g
            for g in grants(default_statements["PolicyDocument"]["Statement"])
            if g[1] in slot_keys
        ]
        assert not on_slot_keys, f"{role_path}/DefaultPolicy grants on slot keys: {on_slot_keys}"
    key_ids = {slot: logical_id(template, key_path(template, slot)) for slot in slots}
    for slot in slots:
        after_exchange = _depends_directly(template, key_ids[slot], exchange_fn)
        if slot == active:
            assert not after_exchange  # the exchange needs the active key first
        else:
            assert after_exchange, (
                f"the key of inactive slot {slot} may lose its Sign statement before the"
                " exchange switched to the active key"
            )


@check
def check_all_default(template: Template, *, nonce: str) -> None:
    """Every check, for the default deployment (RSA key, CloudFront domain)."""
    issuer = default_issuer(template)
    check_no_dependency_cycle(template)
    check_issuer_wiring(template, issuer=issuer)
    check_introspection_wiring(template, issuer=issuer)
    check_signing_key(template, key_spec="RSA_2048")
    check_key_policy(template, key_spec="RSA_2048")
    check_key_switch_ordering(template)
    check_exchange_permissions(template, key_spec="RSA_2048")
    check_introspect_permissions(template)
    check_publisher_permissions(template)
    check_documents_bucket(template)
    check_log_bucket(template)
    check_distribution(template)
    check_functions(template)
    check_token_api(template)
    check_policy_table(template)
    check_state_table(template)
    check_instance_tag_lookups(template, role_name=None)
    check_trusted_issuers(template, expected=None)
    check_jwks_publication(template, nonce=nonce)
    check_outputs(template, issuer=issuer)


def _lambda_target(integration_uri: Any) -> str:
    """The function logical id an HTTP API integration or a permission points at."""
    (target,) = {r for r in _iter_refs(integration_uri)}
    return target


@check
def check_one_door(template: Template) -> None:
    """No way to the functions skips CloudFront (tokex/edge.py, cdk/origin_secret.py).

    - CloudFront's API origin sends the origin header, its value a Secrets Manager dynamic
      reference (never a literal in the template);
    - every function API Gateway may invoke, and every function an API integration
      targets, has that same reference as TOKEX_ORIGIN_SECRET, so it refuses requests
      from the execute-api URL, and the next generation's secret (another one of the
      stack's secrets) as TOKEX_ORIGIN_SECRET_NEXT, and deploys after the distribution
      (a rotation refuses no one: CloudFront switches to the secret they admit first);
    - nothing else can invoke them: no function URL, and no permission for another
      principal than API Gateway (the publisher's schedule, which takes no request).
    """
    resources = raw(template)["Resources"]

    def reference(secret: str) -> dict[str, Any]:
        return {
            "Fn::Join": ["", ["{{resolve:secretsmanager:", {"Ref": secret}, ":SecretString:::}}"]]
        }

    secrets = [
        logical
        for logical, r in resources.items()
        if r["Type"] == "AWS::SecretsManager::Secret" and "Name" not in r["Properties"]
    ]
    distribution_id = logical_id(template, "IssuerSite/Distribution")
    distribution = resources[distribution_id]["Properties"]
    api_origin_id = logical_id(template, "TokenApi/Api")
    api_origins = [
        origin
        for origin in distribution["DistributionConfig"]["Origins"]
        if api_origin_id in set(_iter_refs(origin["DomainName"]))
    ]
    assert len(api_origins) == 1
    [header] = api_origins[0]["OriginCustomHeaders"]
    assert header["HeaderName"] == ORIGIN_HEADER
    current = [secret for secret in secrets if header["HeaderValue"] == reference(secret)]
    assert len(current) == 1, header  # a dynamic reference to one of the stack's secrets
    others = [secret for secret in secrets if secret not in current]
    assert len(others) == 1, secrets
    current_secret, next_secret = current[0], others[0]

    publisher = logical_id(template, "JwksPublisher/Function")
    gated: set[str] = set()
    for props in (
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::ApiGatewayV2::Integration"
    ):
        gated.add(_lambda_target(props["IntegrationUri"]))
    for props in (
        r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Permission"
    ):
        target = _lambda_target(props["FunctionName"])
        if props["Principal"] == "apigateway.amazonaws.com":
            gated.add(target)
        else:
            assert (props["Principal"], target) == ("events.amazonaws.com", publisher), props
    assert gated == {
        logical_id(template, "Exchange/Function"),
        logical_id(template, "Introspect/Function"),
    }
    for function in gated:
        env = resources[function]["Properties"]["Environment"]["Variables"]
        assert env[ORIGIN_SECRET_ENV] == reference(current_secret), function
        assert env[NEXT_ORIGIN_SECRET_ENV] == reference(next_secret), function
        assert distribution_id in resources[function].get("DependsOn", []), function
    assert not [r for r in resources.values() if r["Type"] == "AWS::Lambda::Url"]


def check_runtime_bytecode(tree: Path, compiler: BytecodeCompiler) -> list[Path]:
    """Every module under `tree` has its hash-based, unchecked `.pyc` of `compiler`'s
    version beside it; returns the modules."""
    magic = subprocess.run(
        [compiler.executable, "-I", "-c", MAGIC_PROBE],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    sources = [p for p in tree.rglob("*.py") if "__pycache__" not in p.parts]
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{compiler.cache_tag}.pyc"
        assert pyc.is_file(), f"no bytecode for {source.relative_to(tree)}"
        header = pyc.read_bytes()[:8]
        assert header[:4].hex() == magic, f"{pyc.name}: compiled by another version"
        # PEP 552: flags bit 0 = hash-based, bit 1 = check_source; unchecked-hash is 0b01.
        assert int.from_bytes(header[4:8], "little") == 0b01, f"{pyc.name}: not unchecked-hash"
    return sources


# Imports `names` from sys.argv[1] first, recording each module compiled from source.
_COLD_IMPORT = """
import importlib, importlib.machinery, json, sys
sys.path[:0] = [sys.argv[1]]
compiled = []
loader = importlib.machinery.SourceFileLoader
original = loader.source_to_code
def source_to_code(self, data, path, *args, **kwargs):
    compiled.append(path)
    return original(self, data, path, *args, **kwargs)
loader.source_to_code = source_to_code
names = sys.argv[2:]
modules = [importlib.import_module(name) for name in names]
assert all(m.__file__.startswith(sys.path[0]) for m in modules)
tops = {name.split(".")[0] for name in names}
loaded = sorted(n for n in sys.modules if n.split(".")[0] in tops)
print(json.dumps({"compiled": compiled, "loaded": loaded}))
"""


def cold_import(
    compiler: BytecodeCompiler, tree: Path, packages: list[str], modules: list[str], scratch: Path
) -> list[str]:
    """As Lambda meets an asset (read-only, nothing written): `packages` of `tree`, copied
    to `scratch`, imported (`modules`) by the runtime's CPython, which must compile no
    source at all and leave the tree as it was. The modules that loaded."""
    for name in packages:
        shutil.copytree(tree / name, scratch / name)
    before = sorted(p.relative_to(scratch) for p in scratch.rglob("*"))
    for path in scratch.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        result = subprocess.run(
            [compiler.executable, "-I", "-S", "-B", "-c", _COLD_IMPORT, str(scratch), *modules],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "")},
        )
    finally:
        for path in scratch.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["compiled"] == [], "compiled from source at a cold start"
    assert sorted(p.relative_to(scratch) for p in scratch.rglob("*")) == before
    loaded: list[str] = report["loaded"]
    return loaded


# --- each function's cold start on its synthesized environment ---------------------------

# What a deployment resolves the template's references to, in shapes the settings accept.
_RESOLVED_ATTRIBUTES = {
    "DomainName": "d111111abcdef8.cloudfront.net",
    "Arn": "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555",
}


def deployed_value(value: Any, stack_output: Callable[[dict[str, Any]], Any] | None = None) -> str:
    """A template value as CloudFormation would resolve it (references made plausible;
    `stack_output` resolves a `Fn::GetStackOutput` of a multi-Region app)."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(deployed_value(part, stack_output) for part in parts)
    if "Fn::GetAtt" in value:
        return _RESOLVED_ATTRIBUTES.get(value["Fn::GetAtt"][1], "resolved-attribute")
    if "Ref" in value:
        return f"resolved-{value['Ref'].lower()}"
    if "Fn::GetStackOutput" in value and stack_output is not None:
        return deployed_value(stack_output(value), stack_output)
    raise AssertionError(f"no stand-in for {value}")


def cold_start_every_function(
    template: dict[str, Any],
    monkeypatch: Any,
    *,
    stack_output: Callable[[dict[str, Any]], Any] | None = None,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """Each tokex function of `template` through what its handler module runs at import,
    on its environment as Lambda gives it (its variables resolved, plus Lambda's own): the
    settings, the origin gate, the use case's wiring (clients are made, no AWS call is).
    The settings of each, by function (`exchange`, `introspect`, `jwks_publisher`)."""
    from tokex import wiring
    from tokex.edge import OriginGate
    from tokex.settings import Settings

    builders: dict[str, Callable[[Settings], Any]] = {
        "exchange": wiring.build_token_exchange,
        "introspect": wiring.build_introspection,
        "jwks_publisher": wiring.build_issuer_publisher,
    }
    started = {}
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        handler = str(properties.get("Handler", ""))
        if resource["Type"] != "AWS::Lambda::Function" or not handler.startswith("tokex_"):
            continue
        kind = handler.split(".")[1]
        variables = properties["Environment"]["Variables"]
        environment = {k: deployed_value(v, stack_output) for k, v in variables.items()}
        lambda_runtime = {  # what Lambda sets besides the function's own variables
            "AWS_LAMBDA_FUNCTION_NAME": f"tokex-{kind}",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
        with monkeypatch.context() as patch:
            for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
                patch.delenv(name, raising=False)
            for name, value in {**environment, **lambda_runtime}.items():
                patch.setenv(name, value)
            settings = Settings.from_env()
            if kind != "jwks_publisher":
                OriginGate.from_env()
            builders[kind](settings)
        started[kind] = settings
    return started
