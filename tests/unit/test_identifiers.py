"""Each identifier rule (tokex/identifiers.py) gives the same verdict at every entry point
where that input enters: the rule itself, the token form, the policy model, the CLI, the
Kong generator, the CDK context, the STS allowlist, the IMDS document and the EC2 lookup.

Each table lists values the rule accepts and values just outside it (too long, wrong
case, stray characters, empty, a trailing newline, non-ASCII digits); each entry point is
a function that answers True (accepted) or False (refused), and asserts that a refusal
came from this rule and not another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cdk import config as cdk_config
from cdk import signing_key as cdk_signing_key
from cdk.config import ConfigError, TokexConfig
from tokex import identifiers, introspection, kong
from tokex.adapters import kms
from tokex.adapters.ec2 import InstanceTagLookup
from tokex.adapters.sts import _caller_identity
from tokex.cli.errors import UsageError
from tokex.cli.principal_arn import caller_from_principal
from tokex.cli.request_arguments import check_audience, requested_scopes
from tokex.cli.revoke import _check_principal
from tokex.client import signing
from tokex.errors import ConfigurationError, InvalidGrant, TokexError
from tokex.evidence import sigv4_request
from tokex.evidence.identity import InstanceIdentity
from tokex.evidence.instance_identity import CertificateStore, _parse_document
from tokex.evidence.sts_endpoints import PARTITION_DNS_SUFFIX, PARTITION_REGIONS, StsEndpoints
from tokex.introspection_clients import served_audiences
from tokex.kong import KongConfigError, Placement
from tokex.policy.model import Policy, PolicyValidationError
from tokex.settings import Settings
from tokex.token_request import (
    JWT_TOKEN_TYPE,
    MAX_SCOPES,
    SIGV4_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    parse_token_request,
)
from tokex.tokens import jwks, jws

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/orders"
INSTANCE_ID = "i-0123456789abcdef0"
CONTRACT = Path(__file__).parents[2] / "docs" / "contract.md"

Check = Callable[[str], bool]


def verdicts(checks: dict[str, Any], table: list[tuple[str, bool]]) -> list[Any]:
    return [
        pytest.param(name, value, expected, id=f"{name}-{value!r}")
        for value, expected in table
        for name in checks
    ]


# --- entry points -------------------------------------------------------------------


def token_form(**fields: str) -> bool:
    """parse_token_request; refusals other than the field's own are not this rule's."""
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": "e30",  # {} : refused later, by the signed-request rules
        "requested_token_type": JWT_TOKEN_TYPE,
        "audience": "orders-api",
        **fields,
    }
    try:
        parse_token_request(urlencode(form).encode(), "application/x-www-form-urlencoded")
    except TokexError as exc:
        (field,) = fields
        if exc.reason in (field, f"{field}_missing"):
            return False
        assert exc.reason not in ("audience", "scope"), exc.reason
    return True


def policy(**fields: Any) -> tuple[bool, str]:
    document = {
        "id": "p",
        "effect": "allow",
        "principals": [ROLE],
        "audiences": ["orders-api"],
        **fields,
    }
    try:
        Policy.from_document(document)
    except PolicyValidationError as exc:
        return False, str(exc)
    return True, ""


def refused_by(field: str, outcome: tuple[bool, str]) -> bool:
    accepted, message = outcome
    assert accepted or message.startswith(field), message
    return accepted


def cli(call: Callable[[], object], flag: str) -> bool:
    try:
        call()
    except UsageError as exc:
        assert exc.input == flag, exc
        return False
    return True


def cdk(key: str, **options: Any) -> bool:
    try:
        TokexConfig(**options)
    except ConfigError as exc:
        assert key in str(exc), exc
        return False
    return True


def sts_answer(arn: str, account: str = ACCOUNT) -> bool:
    """The STS forwarder's reading of GetCallerIdentity's answer."""
    session = arn.rsplit("/", 1)[-1]
    user_id = f"AROAEXAMPLE:{session}" if ":assumed-role/" in arn else "AIDAEXAMPLE"
    partition = arn.split(":")[1] if arn.count(":") >= 5 else "aws"
    try:
        _caller_identity({"Arn": arn, "UserId": user_id, "Account": account}, partition)
    except InvalidGrant as exc:
        assert exc.reason in ("sts_result_values", "sts_principal_type"), exc.reason
        return False
    return True


def imds_document(**fields: str) -> bool:
    document = {
        "instanceId": INSTANCE_ID,
        "accountId": ACCOUNT,
        "region": "us-east-1",
        "availabilityZone": fields.get("region", "us-east-1") + "a",
        "imageId": "ami-0123456789abcdef0",
        "instanceType": "t3.micro",
        **fields,
    }
    try:
        _parse_document(json.dumps(document))
    except InvalidGrant as exc:
        (field,) = fields
        assert str(exc) == f"instance identity document has no valid `{field}`", exc
        return False
    return True


class _Reached(Exception):
    """The EC2 lookup got past its checks and asked STS for the role."""


class _Sts:
    def assume_role(self, **_: Any) -> Any:
        raise _Reached


def ec2_lookup(account: str = ACCOUNT, region: str = "us-east-1") -> bool:
    lookup = InstanceTagLookup(_Sts(), role_name="reader", partition_of=lambda _: "aws")
    instance = InstanceIdentity(
        INSTANCE_ID, account, region, region + "a", "ami-1", "t3.micro", "rsa2048", "x", True
    )
    try:
        assert lookup(instance) == {}
    except _Reached:
        return True
    return False


@pytest.fixture(scope="module")
def certificate() -> x509.Certificate:
    """An RSA certificate of the packaged store, to pin again under a region name."""
    return next(p.certificate for p in CertificateStore.default() if p.variant == "rsa2048")


# --- audience -------------------------------------------------------------------------

AUDIENCES = [
    ("orders-api", True),
    ("a", True),
    ("a" * 256, True),
    ("https://api.example.com/v1", True),
    ("urn:example:Orders_API.v2", True),
    ("", False),
    ("a" * 257, False),
    ("orders api", False),
    ("orders-api\n", False),
    ("órders-api", False),
    ("orders#api", False),
    ("orders%20api", False),
    ("orders?api", False),
]
AUDIENCE_CHECKS: dict[str, Check] = {
    "rule": identifiers.is_audience,
    "token form": lambda v: token_form(audience=v),
    "policy": lambda v: refused_by("audiences", policy(audiences=[v])),
    "cli --audience": lambda v: cli(lambda: check_audience(v), "--audience"),
    "kong placement": lambda v: kong_audience(v),
    "introspection client": lambda v: introspection_audience(v),
}


def kong_audience(value: str) -> bool:
    try:
        Placement(service="orders", audiences=(value,)).check()
    except KongConfigError as exc:
        assert exc.field == "audiences", exc
        return False
    return True


def introspection_audience(value: str) -> bool:
    try:
        served_audiences([value])
    except ValueError as exc:
        assert str(exc).startswith("audience "), exc
        return False
    return True


@pytest.mark.parametrize("entry,value,expected", verdicts(AUDIENCE_CHECKS, AUDIENCES))
def test_audience_rule_is_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert AUDIENCE_CHECKS[entry](value) is expected


def test_a_policy_audience_pattern_is_an_audience_plus_the_wildcard() -> None:
    for value, expected in AUDIENCES:
        assert (identifiers.AUDIENCE_PATTERN.fullmatch(value) is not None) is expected
    # A wildcard is for policies only: a caller's `orders-*` is no audience.
    assert not identifiers.is_audience("orders-*")
    assert not token_form(audience="orders-*")
    assert refused_by("audiences", policy(audiences=["orders-*"]))


# --- scope ----------------------------------------------------------------------------

# Empty and whitespace are not in the table: the form splits the scope parameter into
# tokens on spaces and treats an empty one as absent (RFC 6749 §3.2, §3.3); the CLI refuses
# a --scope that names no scope (test_a_scope_flag_that_names_no_scope_is_refused).
SCOPES = [
    ("orders:read", True),
    ("a" * 128, True),
    ("!#[]~", True),
    ("https://api.example.com/orders.read", True),
    ("a" * 129, False),
    ('orders"read', False),
    ("orders\\read", False),
    ("órders", False),
    ("orders\x7f", False),
    ("orders:read\torders:write", False),  # a tab separates nothing: refused, not split
    ("orders:read\norders:write", False),
]
SCOPE_CHECKS: dict[str, Check] = {
    "rule": identifiers.is_scope_token,
    "token form": lambda v: token_form(scope=v),
    "policy": lambda v: refused_by("scopes", policy(scopes=[v])),
    "cli --scope": lambda v: cli(lambda: requested_scopes([v]), "--scope"),
}


@pytest.mark.parametrize("entry,value,expected", verdicts(SCOPE_CHECKS, SCOPES))
def test_scope_rule_is_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert SCOPE_CHECKS[entry](value) is expected


@pytest.mark.parametrize("values", [[""], [" "], ["orders:read", ""]])
def test_a_scope_flag_that_names_no_scope_is_refused(values: list[str]) -> None:
    """No `scope` asks for every scope the policy grants: `--scope "$SCOPE"` with SCOPE
    unset is a usage error, never that broadest request. No --scope at all is no scope."""
    assert cli(lambda: requested_scopes(values), "--scope") is False
    assert requested_scopes([]) is None


SCOPE_COUNTS = [
    (" ".join(f"s{n}" for n in range(MAX_SCOPES)), True),
    # Repeats ask for nothing more: the limit counts distinct scopes, in the form and
    # the CLI alike (the CLI counted every repeat).
    (" ".join(f"s{n}" for n in range(MAX_SCOPES)) + " s0 s1", True),
    (" ".join(f"s{n}" for n in range(MAX_SCOPES + 1)), False),
]


@pytest.mark.parametrize("scope,expected", SCOPE_COUNTS)
def test_scope_count_rule_is_the_same_everywhere(scope: str, expected: bool) -> None:
    assert token_form(scope=scope) is expected
    assert cli(lambda: requested_scopes([scope]), "--scope") is expected
    assert cli(lambda: requested_scopes(scope.split(" ")), "--scope") is expected


# --- account id -----------------------------------------------------------------------

ACCOUNTS = [
    (ACCOUNT, True),
    ("000000000000", True),
    ("", False),
    ("12345678901", False),
    ("1234567890123", False),
    ("12345678901a", False),
    ("1234-5678-90", False),
    (" 123456789012", False),
    ("123456789012\n", False),  # `^...$` with re.match let this through (cdk/config.py)
    ("\u0661" * 12, False),  # Arabic-Indic digits: `\d` let these through (cdk/config.py)
]
ACCOUNT_CHECKS: dict[str, Check] = {
    "rule": identifiers.is_account_id,
    "policy principal": lambda v: refused_by(
        "principals[0]", policy(principals=[f"arn:aws:iam::{v}:role/orders"])
    ),
    "cli --account": lambda v: cli(lambda: caller_from_principal("role/x", v, None), "--account"),
    "cli revoke": lambda v: cli(
        lambda: _check_principal(f"arn:aws:iam::{v}:role/x"), "--principal"
    ),
    "cdk instanceTagsAccounts": lambda v: cdk(
        "instanceTagsAccounts", instance_tags_role_name="reader", instance_tags_accounts=(v,)
    ),
    "imds document": lambda v: imds_document(accountId=v),
    "ec2 lookup": lambda v: ec2_lookup(account=v),
    "sts answer": lambda v: sts_answer(f"arn:aws:sts::{v}:assumed-role/r/session", v),
}


@pytest.mark.parametrize("entry,value,expected", verdicts(ACCOUNT_CHECKS, ACCOUNTS))
def test_account_id_rule_is_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert ACCOUNT_CHECKS[entry](value) is expected


# --- region ---------------------------------------------------------------------------

REGIONS = [
    ("us-east-1", True),
    ("eusc-de-east-1", True),  # European Sovereign Cloud: ec2.py's pattern refused it
    ("us-gov-west-1", True),
    ("cn-north-1", True),
    ("ap-southeast-5", True),
    ("il-central-1", True),
    ("mx-central-1", True),
    ("us-isob-east-1", True),  # ec2.py's pattern refused it
    ("eu-central-10", True),  # cdk/config.py's pattern refused two digits
    ("", False),
    ("US-EAST-1", False),
    ("us-east", False),
    ("us-east-1a", False),  # an availability zone
    ("us-east-100", False),
    ("us_east_1", False),
    ("useast1", False),
    ("u-east-1", False),
    ("abcde-east-1", False),
    ("us--east-1", False),
    ("us-east-1.", False),
    ("us-east-1 ", False),
    ("us-east-1\n", False),  # cdk/config.py's `$` let this through
    ("us-east-\u0661", False),  # cdk/config.py's `\d` let this through
    ("sts.us-east-1", False),
]


def sts_allowlist_region(value: str) -> bool:
    """The allowlist's format verdict: a well-formed region may still be one STS is not
    served in by tokex's partitions (eusc-de-east-1), refused for that reason instead."""
    try:
        StsEndpoints(identifiers.PARTITIONS, [value])
    except ConfigurationError as exc:
        if "not region names" in str(exc):
            return False
        assert "unknown STS region" in str(exc), exc
    return True


def cdk_sts_region(value: str) -> bool:
    """The synth's format verdict, as the allowlist's: a well-formed region of no
    partition tokex serves STS in (eusc-de-east-1) is refused for that reason instead."""
    try:
        TokexConfig(sts_partitions=tuple(identifiers.PARTITIONS), sts_regions=(value,))
    except ConfigError as exc:
        if "unknown STS region" in str(exc):
            return True
        assert "stsRegions" in str(exc), exc
        return False
    return True


def certificate_store_region(value: str, certificate: x509.Certificate) -> bool:
    try:
        CertificateStore().add("rsa2048", value, certificate)
    except ValueError as exc:
        assert "not a region name" in str(exc), exc
        return False
    return True


REGION_CHECKS: dict[str, Callable[[str, x509.Certificate], bool]] = {
    "rule": lambda v, _: identifiers.is_region(v),
    "cdk stsRegions": lambda v, _: cdk_sts_region(v),
    "sts allowlist": lambda v, _: sts_allowlist_region(v),
    "imds certificate store": certificate_store_region,
    "imds document": lambda v, _: imds_document(region=v),
    "ec2 lookup": lambda v, _: ec2_lookup(region=v),
}


@pytest.mark.parametrize("entry,value,expected", verdicts(REGION_CHECKS, REGIONS))
def test_region_rule_is_the_same_everywhere(
    entry: str, value: str, expected: bool, certificate: x509.Certificate
) -> None:
    assert REGION_CHECKS[entry](value, certificate) is expected


@pytest.mark.parametrize(
    "region,partition",
    [
        ("us-east-1", "aws"),
        ("il-central-1", "aws"),
        ("mx-central-1", "aws"),
        ("cn-north-1", "aws-cn"),
        ("us-gov-west-1", "aws-us-gov"),
        ("eusc-de-east-1", None),  # aws-eusc: not a partition tokex serves (identifiers.py)
        ("us-iso-east-1", None),
        ("US-EAST-1", None),
    ],
)
def test_partition_of_region(region: str, partition: str | None) -> None:
    assert identifiers.partition_of_region(region) == partition


def test_every_sts_region_is_a_region_of_its_partition() -> None:
    assert tuple(PARTITION_REGIONS) == identifiers.PARTITIONS
    assert PARTITION_DNS_SUFFIX is identifiers.PARTITION_DNS_SUFFIX
    for partition, regions in PARTITION_REGIONS.items():
        for region in regions:
            assert identifiers.is_region(region), region
            assert identifiers.partition_of_region(region) == partition, region


def test_the_ec2_lookup_skips_a_region_of_no_served_partition() -> None:
    lookup = InstanceTagLookup(_Sts(), role_name="reader")
    instance = InstanceIdentity(
        INSTANCE_ID, ACCOUNT, "eusc-de-east-1", "eusc-de-east-1a", "ami-1", "t3", "rsa2048", "x"
    )
    assert lookup(InstanceIdentity(**{**instance.__dict__, "bound": True})) == {}


# --- partition ------------------------------------------------------------------------

PARTITIONS_TABLE = [
    ("aws", True),
    ("aws-cn", True),
    ("aws-us-gov", True),
    ("aws-eusc", False),  # kept out on purpose: see identifiers.PARTITIONS
    ("aws-iso", False),
    ("AWS", False),
    ("", False),
    ("aws ", False),
    ("aws\n", False),
]


def settings_partition(value: str) -> bool:
    try:
        Settings(issuer="https://issuer.example", partitions=(value,))
    except ConfigurationError as exc:
        assert "partition" in str(exc), exc
        return False
    return True


def sts_allowlist_partition(value: str) -> bool:
    try:
        StsEndpoints([value])
    except ConfigurationError as exc:
        assert "unknown STS partition" in str(exc), exc
        return False
    return True


PARTITION_CHECKS: dict[str, Check] = {
    "rule": identifiers.is_partition,
    "settings": settings_partition,
    "cdk stsPartitions": lambda v: cdk("stsPartitions", sts_partitions=(v,)),
    "sts allowlist": sts_allowlist_partition,
    "policy principal": lambda v: refused_by(
        "principals[0]", policy(principals=[f"arn:{v}:iam::{ACCOUNT}:role/orders"])
    ),
    "cli --principal": lambda v: cli(
        lambda: caller_from_principal(f"arn:{v}:iam::{ACCOUNT}:role/x", None, None),
        "--principal",
    ),
    "cli revoke": lambda v: cli(
        lambda: _check_principal(f"arn:{v}:iam::{ACCOUNT}:role/x"), "--principal"
    ),
    "sts answer": lambda v: sts_answer(f"arn:{v}:sts::{ACCOUNT}:assumed-role/r/session"),
}


@pytest.mark.parametrize("entry,value,expected", verdicts(PARTITION_CHECKS, PARTITIONS_TABLE))
def test_partition_rule_is_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert PARTITION_CHECKS[entry](value) is expected


# --- the ARN forms STS answers with ----------------------------------------------------

CALLER_ARNS = [
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/orders/session-1", True),
    (f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/o+=,.@_-/ab", True),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/{'r' * 64}/{'s' * 64}", True),
    (f"arn:aws-us-gov:iam::{ACCOUNT}:user/alice", True),
    (f"arn:aws:iam::{ACCOUNT}:user/team/a/alice", True),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/orders/s", False),  # a session name has 2+
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/{'r' * 65}/session", False),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/rôle/session", False),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/orders/session/extra", False),
    (f"arn:aws:iam::{ACCOUNT}:root", False),
    (f"arn:aws:sts::{ACCOUNT}:federated-user/bob", False),
    (f"arn:aws-eusc:sts::{ACCOUNT}:assumed-role/orders/session", False),
    (f"arn:aws:iam::{ACCOUNT}:user/{'u' * 65}", False),
]
ARN_CHECKS: dict[str, Check] = {
    "rule": lambda v: bool(
        identifiers.ASSUMED_ROLE_ARN.fullmatch(v) or identifiers.USER_ARN.fullmatch(v)
    ),
    "sts answer": sts_answer,
    "cli --principal": lambda v: cli(lambda: caller_from_principal(v, None, None), "--principal"),
}


@pytest.mark.parametrize("entry,value,expected", verdicts(ARN_CHECKS, CALLER_ARNS))
def test_caller_arn_forms_are_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert ARN_CHECKS[entry](value) is expected


ROLE_NAMES = [
    ("reader", True),
    ("path/to/reader", True),
    ("r" * 64, True),
    ("a/" * 8 + "reader", True),
    ("", False),
    ("r" * 65, False),
    ("/reader", False),
    ("reader/", False),
    ("path//reader", False),
    ("rea der", False),
    ("réader", False),
    ("a/" * 9 + "reader", False),
    ("reader\n", False),
]


def ec2_role_name(value: str) -> bool:
    try:
        InstanceTagLookup(_Sts(), role_name=value)
    except ConfigurationError:
        return False
    return True


ROLE_NAME_CHECKS: dict[str, Check] = {
    "rule": lambda v: bool(identifiers.ROLE_NAME_WITH_PATH.fullmatch(v)),
    "cdk instanceTagsRoleName": lambda v: cdk("instanceTagsRoleName", instance_tags_role_name=v),
    "ec2 lookup": ec2_role_name,
}


@pytest.mark.parametrize("entry,value,expected", verdicts(ROLE_NAME_CHECKS, ROLE_NAMES))
def test_role_name_rule_is_the_same_everywhere(entry: str, value: str, expected: bool) -> None:
    assert ROLE_NAME_CHECKS[entry](value) is expected


# --- the STS body and the algorithms -------------------------------------------------


def test_one_sts_body_is_signed_and_accepted() -> None:
    assert sigv4_request.STS_BODY is identifiers.STS_BODY
    assert signing.GET_CALLER_IDENTITY_BODY is identifiers.STS_BODY
    sigv4_request._check_body(identifiers.STS_BODY)


class _FixedAlgSigner:
    def __init__(self, alg: str) -> None:
        self.alg, self.kid = alg, "kid"

    def sign(self, signing_input: bytes) -> bytes:
        return b"signature"


def test_one_algorithm_list_is_signed_published_and_accepted() -> None:
    assert identifiers.SIGNING_ALGS == ("RS256", "ES256")
    assert jws.SIGNING_ALGS == identifiers.SIGNING_ALGS
    assert frozenset(identifiers.SIGNING_ALGS) == introspection.ACCEPTED_ALGS
    assert frozenset(identifiers.SIGNING_ALGS) == jwks.SUPPORTED_ALGS
    assert {alg for alg, _ in kms._ALGORITHMS.values()} == set(identifiers.SIGNING_ALGS)
    assert set(cdk_config.SIGNING_KEY_SPECS) == set(kms._ALGORITHMS)
    assert {
        spec: signing for spec, (_, signing) in kms._ALGORITHMS.items()
    } == cdk_signing_key.SIGNING_ALGORITHMS
    contract = CONTRACT.read_text()
    assert '`{"alg": "RS256" | "ES256", "typ": "at+jwt"' in contract


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
EC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()


@pytest.mark.parametrize(
    "alg,expected",
    [("RS256", True), ("ES256", True), ("PS256", False), ("HS256", False), ("none", False)],
)
def test_an_algorithm_is_signed_published_and_accepted_alike(alg: str, expected: bool) -> None:
    try:
        jws.encode_jwt({"sub": "x"}, _FixedAlgSigner(alg))  # type: ignore[arg-type]
        signed = True
    except ValueError:
        signed = False
    key = EC_KEY if alg == "ES256" else RSA_KEY
    try:
        jwk = jwks.jwk_from_public_key(key, alg)
        published = True
    except ValueError:
        jwk = {**jwks.jwk_from_public_key(RSA_KEY, "RS256"), "alg": alg}
        published = False
    jwk["kid"] = kid = jwks.rfc7638_thumbprint(jwk)  # as the publisher names keys
    accepted = kid in introspection._prepare_keys([jwk])
    try:
        kong.published_keys({"keys": [jwk]})
        in_kong = True
    except KongConfigError:
        in_kong = False
    assert (signed, published, accepted, in_kong) == (expected,) * 4
