"""Policy documents are validated when written; globs mean only `*` and `?`."""

from __future__ import annotations

import copy
import json
import random
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tokex.policy.globs import (
    GlobError,
    check_principal_pattern,
    glob_matches,
    literal_prefix_length,
    principal_matches,
)
from tokex.policy.model import InstanceConditions, Policy, PolicyValidationError

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/"
USER = f"arn:aws:iam::{ACCOUNT}:user/"


def allow_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "orders-reader",
        "description": "orders service may read the orders API",
        "effect": "allow",
        "principals": [ROLE + "orders-*"],
        "principal_ids": ["AROAEXAMPLEID"],
        "audiences": ["orders-api"],
        "scopes": ["orders:read"],
        "max_ttl_seconds": 900,
        "instance": {
            "required": True,
            "regions": ["eu-west-1"],
            "image_ids": ["ami-0abc"],
            "instance_types": ["m7g.*"],
            "availability_zones": ["eu-west-1a"],
            "tags": {"team": ["orders", "orders-*"]},
        },
        "claims": {"team": "orders", "tier": {"level": 2, "tags": ["a", "b"]}},
        "enabled": True,
    }
    doc.update(overrides)
    return doc


def refused(doc: dict[str, Any], ttl_cap: int = 3600) -> PolicyValidationError:
    with pytest.raises(PolicyValidationError) as info:
        Policy.from_document(doc, ttl_cap=ttl_cap)
    assert str(info.value) == f"{info.value.field}: {info.value.message}"
    return info.value


def test_design_example_parses_and_round_trips() -> None:
    policy = Policy.from_document(allow_doc())
    assert policy.principals == (ROLE + "orders-*",)
    assert policy.instance == InstanceConditions(
        required=True,
        regions=("eu-west-1",),
        availability_zones=("eu-west-1a",),
        image_ids=("ami-0abc",),
        instance_types=("m7g.*",),
        tags={"team": ("orders", "orders-*")},
    )
    doc = policy.to_document()
    assert Policy.from_document(doc) == policy
    assert json.loads(json.dumps(doc)) == doc
    minimal = Policy.from_document(
        {"id": "m", "effect": "allow", "principals": [ROLE + "x"], "audiences": ["a"]}
    )
    assert (minimal.enabled, minimal.scopes, minimal.max_ttl_seconds) == (True, (), None)
    assert Policy.from_document(minimal.to_document()) == minimal


def test_deny_round_trips_without_allow_only_keys() -> None:
    doc = {"id": "d", "effect": "deny", "principals": [ROLE + "x"], "audiences": ["*"]}
    policy = Policy.from_document(doc)
    assert Policy.from_document(policy.to_document()) == policy
    assert set(policy.to_document()) == {
        "id", "description", "effect", "principals", "audiences", "enabled",
    }  # fmt: skip


def test_claims_may_nest_sixteen_levels_and_hold_any_unicode() -> None:
    deep = json.loads("[" * 16 + "]" * 16)
    policy = Policy.from_document(allow_doc(claims={"deep": deep, "name": "café ☕"}))
    assert policy.claims == {"deep": deep, "name": "café ☕"}


def test_claims_are_copied_from_the_document() -> None:
    doc = allow_doc()
    policy = Policy.from_document(doc)
    doc["claims"]["tier"]["level"] = 99
    assert policy.claims["tier"]["level"] == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"colour": "blue"}, "colour"),
        ({"id": ""}, "id"),
        ({"id": "a" * 129}, "id"),
        ({"id": "has space"}, "id"),
        ({"id": 7}, "id"),
        ({"effect": "permit"}, "effect"),
        ({"description": 3}, "description"),
        ({"description": "x" * 1025}, "description"),
        ({"principals": []}, "principals"),
        ({"principals": ROLE + "x"}, "principals"),
        ({"principals": [ROLE + "x", ROLE + "x"]}, "principals"),
        ({"principals": [ROLE + "x", 5]}, "principals[1]"),
        ({"principals": ["*"]}, "principals[0]"),
        ({"principals": [ROLE + "ok", "arn:aws:iam::*:role/x"]}, "principals[1]"),
        ({"principal_ids": ["AROA-1"]}, "principal_ids[0]"),
        ({"principal_ids": ["A" * 129]}, "principal_ids[0]"),
        ({"principal_ids": []}, "principal_ids"),  # would mean any id: leave it out
        ({"audiences": []}, "audiences"),
        ({"audiences": ["orders api"]}, "audiences[0]"),
        ({"audiences": ["a" * 257]}, "audiences[0]"),
        ({"audiences": ["a?"]}, "audiences[0]"),
        ({"scopes": ['say"hi']}, "scopes[0]"),
        ({"scopes": ["back\\slash"]}, "scopes[0]"),
        ({"scopes": ["two words"]}, "scopes[0]"),
        ({"scopes": ["é"]}, "scopes[0]"),
        ({"scopes": [""]}, "scopes[0]"),
        ({"max_ttl_seconds": 59}, "max_ttl_seconds"),
        ({"max_ttl_seconds": 3601}, "max_ttl_seconds"),
        ({"max_ttl_seconds": 900.0}, "max_ttl_seconds"),
        ({"max_ttl_seconds": True}, "max_ttl_seconds"),
        ({"max_ttl_seconds": "900"}, "max_ttl_seconds"),
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"claims": []}, "claims"),
        ({"claims": {"sub": "root"}}, "claims.sub"),
        ({"claims": {"aws": {}}}, "claims.aws"),
        ({"claims": {"scope": "admin"}}, "claims.scope"),
        ({"claims": {"bad name": 1}}, "claims.bad name"),
        ({"claims": {"n": float("nan")}}, "claims.n"),
        ({"claims": {"s": {1, 2}}}, "claims.s"),
        ({"claims": {"big": "x" * 2100}}, "claims"),
        # 500 levels fit in 2 KiB, and copying them (evaluate.py) exhausted the stack.
        ({"claims": {"deep": json.loads("[" * 17 + "]" * 17)}}, "claims.deep"),
        ({"claims": {"deep": json.loads("[" * 500 + "]" * 500)}}, "claims.deep"),
        ({"claims": {"s": "\ud800"}}, "claims.s"),  # as JSON's "\\ud800" decodes
        ({"claims": {"m": {"\udcff": 1}}}, "claims.m"),
        ({"description": "a lone \ud800"}, "description"),
        ({"instance": []}, "instance"),
        ({"instance": {"required": "true"}}, "instance.required"),
        ({"instance": {"zone": ["a"]}}, "instance.zone"),
        ({"instance": {"regions": "eu-west-1"}}, "instance.regions"),
        ({"instance": {"regions": ["eu west"]}}, "instance.regions[0]"),
        ({"instance": {"accounts": ["12[3]"]}}, "instance.accounts[0]"),
        ({"instance": {"tags": {"team": []}}}, "instance.tags.team"),
        ({"instance": {"tags": {"team": "x"}}}, "instance.tags.team"),
        ({"instance": {"tags": {"bad\nkey": ["x"]}}}, "instance.tags.bad\nkey"),
    ],
)
def test_every_refusal_names_its_field(overrides: dict[str, Any], field: str) -> None:
    assert refused(allow_doc(**overrides)).field == field


@pytest.mark.parametrize("key", ["id", "effect", "principals", "audiences"])
def test_required_keys(key: str) -> None:
    doc = allow_doc()
    del doc[key]
    assert refused(doc).field == key


def test_ttl_is_bounded_by_the_deployment_cap() -> None:
    assert Policy.from_document(allow_doc(max_ttl_seconds=7200), ttl_cap=7200)
    assert refused(allow_doc(max_ttl_seconds=7200), ttl_cap=3600).field == "max_ttl_seconds"


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(PolicyValidationError) as info:
        Policy.from_document(["not", "an", "object"])  # type: ignore[arg-type]
    assert info.value.field == "document"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("scopes", ["a"]),
        ("max_ttl_seconds", 900),
        ("claims", {"team": "x"}),
        ("principal_ids", ["AROAX"]),
        ("instance", {"required": True}),
    ],
)
def test_deny_refuses_what_only_an_allow_means(key: str, value: Any) -> None:
    doc = {"id": "d", "effect": "deny", "principals": [ROLE + "x"], "audiences": ["a"]}
    assert refused({**doc, key: value}).field == key
    for missing in ("principals", "audiences"):
        assert refused({**doc, missing: []}).field == missing


@pytest.mark.parametrize(
    "key", ["conditions", "workload", "instance", "evidence", "eks", "max_ttl_seconds", "scopes"]
)
def test_a_null_is_not_an_absent_key(key: str) -> None:
    """Read as "not given", `"conditions": null` would make a conditioned allow a plain
    one: refused wherever the document comes from (the table included, not only the CLI)."""
    error = refused(allow_doc(**{key: None}))
    assert (error.field, error.message) == (key, "must not be null: leave the key out")


def test_the_claims_limit_counts_the_bytes_the_token_carries() -> None:
    """The token's payload escapes every character outside ASCII (tokens/jws.py): 400 "é"
    are 800 bytes of UTF-8 but 2,400 in the token."""
    claims = {"note": "é" * 400}
    utf8 = json.dumps(claims, ensure_ascii=False).encode()
    assert len(json.dumps(claims, separators=(",", ":"))) > 2048 > len(utf8)
    error = refused(allow_doc(claims=claims))
    assert error.field == "claims" and "6-byte \\uXXXX escape" in error.message
    assert Policy.from_document(allow_doc(claims={"note": "é" * 300})).claims == {"note": "é" * 300}


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(PolicyValidationError, ValueError)


# --- principal patterns -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("*", "bare"),
        ("**", "bare"),
        ("arn:aws:iam::*:role/x", "account"),
        ("arn:aws:iam::12345678901?:role/x", "account"),
        ("arn:aws:iam:*:123456789012:role/x", "region"),
        ("arn:*:iam::123456789012:role/x", "partition"),
        ("arn:aws*:iam::123456789012:role/x", "partition"),
        ("*:aws:iam::123456789012:role/x", "arn"),
        ("arn:aws:*::123456789012:role/x", "service"),
        ("arn:aws:sts::123456789012:assumed-role/x/y", "IAM"),
        ("arn:aws:iam::123456789012:*/x", "type"),
        ("arn:aws:iam::123456789012:group/x", "role/<name>"),
        ("arn:aws:iam::123456789012:role", "path and name"),
        ("arn:aws:iam::123456789012:role/", "path and name"),
        ("arn:aws:iam::123456789012:role//x", "path and name"),
        ("arn:aws:iam::123456789012:role/x/", "path and name"),
        ("arn:aws:iam::123456789012:role/[ab]", "path and name"),
        ("arn:aws:iam::12345678901:role/x", "12 digits"),
        ("arn:aws:iam::123456789012", "arn:<partition>"),
        ("arn:aws-xx:iam::123456789012:role/x", "partition must be"),
        ("arn:aws:iam::123456789012:role/" + "a" * 1024, "characters"),
    ],
)
def test_principal_patterns_refused(pattern: str, why: str) -> None:
    with pytest.raises(GlobError, match=re.escape(why)):
        check_principal_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [
        ROLE + "*",
        ROLE + "orders-*",
        USER + "team/*/orders-?",
        "arn:aws-us-gov:iam::123456789012:user/alice",
        "arn:aws-cn:iam::123456789012:role/a+b=c,d.e@f_g-h",
    ],
)
def test_principal_patterns_accepted(pattern: str) -> None:
    check_principal_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "arn", "matches"),
    [
        (ROLE + "orders-*", ROLE + "orders-api", True),
        (ROLE + "orders-*", ROLE + "orders-", True),
        (ROLE + "orders-*", ROLE + "team/orders-api", False),  # never crosses `/`
        (ROLE + "*", ROLE + "path/name", False),
        (USER + "*/*", USER + "path/name", True),
        (USER + "team/*/x", USER + "team/a/b/x", False),
        (ROLE + "orders-?", ROLE + "orders-1", True),
        (ROLE + "orders-?", ROLE + "orders-12", False),
        (ROLE + "orders-*", "arn:aws:iam::210987654321:role/orders-api", False),
        (ROLE + "orders-*", f"arn:aws:iam::{ACCOUNT}:user/orders-api", False),
        (ROLE + "Orders", ROLE + "orders", False),  # case-sensitive, like STS's ARN
        (ROLE + "a.b", ROLE + "aXb", False),  # `.` is literal
        (ROLE + "x", ROLE + "x\n", False),
    ],
)
def test_principal_matching(pattern: str, arn: str, matches: bool) -> None:
    check_principal_pattern(pattern)
    assert principal_matches(pattern, arn) is matches


def test_caller_value_with_wildcards_is_data() -> None:
    # A caller whose ARN or audience contains `*` or `?` gets no wildcard power.
    assert not principal_matches(ROLE + "orders-api", ROLE + "orders-*")
    assert not glob_matches("orders-api", "orders-*")
    assert not glob_matches("orders-api", "orders-ap?")
    assert not glob_matches("a.c", "a*c")
    assert glob_matches("orders-*", "orders-*")  # a literal `*` is still "any run"


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("orders-api", "orders-api", True),
        ("orders-*", "orders-api", True),
        ("*", "anything/at:all", True),
        ("m7g.*", "m7g.large", True),
        ("m7g.*", "m7gxlarge", False),
        ("eu-*-1?", "eu-west-1a", True),
        ("https://api.example.com/*", "https://api.example.com/v1/x", True),
        ("[ab]", "a", False),
        ("[ab]", "[ab]", True),
        ("a", "A", False),
        ("", "", True),
        ("*", "line\nbreak", True),
        ("a", "a\n", False),
    ],
)
def test_attribute_globs(pattern: str, value: str, matches: bool) -> None:
    assert glob_matches(pattern, value) is matches


def _reference(pattern: str, value: str, star: str, one: str) -> bool:
    parts = (star if c == "*" else one if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


def test_globs_agree_with_an_anchored_regex() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        pattern = "".join(rng.choice("ab*?/:.") for _ in range(rng.randint(0, 7)))
        value = "".join(rng.choice("ab*?/:.") for _ in range(rng.randint(0, 8)))
        assert glob_matches(pattern, value) is _reference(pattern, value, ".*", ".")
        assert principal_matches(pattern, value) is _reference(pattern, value, "[^:/]*", "[^:/]")


def lines_run_in(function: Callable[..., Any], call: Callable[[], object], limit: int) -> int:
    """How many lines of `function` `call` executes: work counted, not timed; past
    `limit` the call is stopped (an exponential matcher would run for ever)."""
    executed = 0

    def count(frame: Any, event: str, arg: object) -> Any:
        nonlocal executed
        executed += event == "line"
        if executed > limit:
            raise AssertionError(f"more than {limit} lines: not quadratic")
        return count

    def calls(frame: Any, event: str, arg: object) -> Any:
        return count if frame.f_code is function.__code__ else None

    sys.settrace(calls)
    try:
        call()
    finally:
        sys.settrace(None)
    return executed


def test_glob_matching_has_no_catastrophic_backtracking() -> None:
    """At most a few lines per (pattern position, value position) pair: quadratic at
    worst, where a backtracking matcher is exponential in the number of `*`."""
    pattern, value = "*a" * 30 + "*b", "a" * 256
    limit = 10 * (len(pattern) + 1) * (len(value) + 1)
    assert lines_run_in(glob_matches, lambda: glob_matches(pattern, value), limit) > 0
    assert not glob_matches(pattern, value)
    principal = lambda: principal_matches(ROLE + pattern, ROLE + value)  # noqa: E731
    assert lines_run_in(glob_matches, principal, limit) > 0
    assert not principal()


def test_literal_prefix_length() -> None:
    assert literal_prefix_length(ROLE + "orders-*") == len(ROLE + "orders-")
    assert literal_prefix_length(ROLE + "orders-api") == len(ROLE + "orders-api")
    assert literal_prefix_length(ROLE + "o?ders") == len(ROLE + "o")


def test_from_document_does_not_mutate_input() -> None:
    doc = allow_doc()
    before = copy.deepcopy(doc)
    Policy.from_document(doc)
    assert doc == before


# Names relying parties read as, or in place of, a claim tokex sets or one they give a
# meaning to: a dotted name is a top-level key to mod_auth_openidc's `Require claim
# aws.account:...`, a reader that ignores case finds `SUB` as `sub`, Spring reads `scp`
# when there is no `scope`, .NET maps `role` as it maps `roles`.
@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("aws.account", "'aws'"),
        ("aws.evidence", "'aws'"),
        ("aws.instance.id", "'aws'"),
        ("aws:account", "'aws'"),
        ("Scope:orders", "'scope'"),
        ("sub.x", "'sub'"),
        ("SCOPE", "'scope'"),
        ("Sub", "'sub'"),
        ("ISS", "'iss'"),
        ("AWS", "'aws'"),
        ("Client_ID", "'client_id'"),
        ("Aud_Kid", "'aud_kid'"),
        ("scp", None),
        ("SCP", "'scp'"),
        ("scp:orders", "'scp'"),
        ("role", None),
        ("Role.admin", "'role'"),
    ],
)
def test_a_claim_that_stands_in_for_a_reserved_one_is_refused(
    name: str, reserved: str | None
) -> None:
    error = refused(allow_doc(claims={name: "999999999999"}))
    assert error.field == f"claims.{name}"
    assert error.message.startswith("reserved claim (")
    if reserved is not None:  # names the claim it would stand in for
        assert reserved in error.message


@pytest.mark.parametrize(
    "name",
    [
        "team",
        "awsome",
        "subject",
        "scopes_note",
        "roles_x",
        "x.sub",
        "x:aws",
        "cognito:groups",
        "a-aws",
    ],
)
def test_a_claim_that_only_begins_like_a_reserved_one_is_accepted(name: str) -> None:
    assert Policy.from_document(allow_doc(claims={name: "x"})).claims == {name: "x"}


SAFE = 2**53 - 1


@pytest.mark.parametrize(
    "value",
    [SAFE + 1, -(SAFE + 1), 10**400, [1, 2**64], {"a": {"b": [-(10**20)]}}],
    ids=["2^53", "-2^53", "400-digits", "in-a-list", "nested"],
)
def test_an_integer_beyond_ijson_range_is_refused_asking_for_a_string(value: Any) -> None:
    error = refused(allow_doc(claims={"n": value}))
    assert error.field == "claims.n"
    assert "RFC 7493" in error.message and "string" in error.message


def test_integers_within_ijson_range_and_other_numbers_are_accepted() -> None:
    claims = {"max": SAFE, "min": -SAFE, "flag": True, "f": 1e300, "n": None, "s": str(2**64)}
    assert Policy.from_document(allow_doc(claims=claims)).claims == claims


def test_a_stored_document_keeps_reserved_names_and_unsafe_integers() -> None:
    """Read back from the table (`stored`), such a document is still an allow: refused,
    an upgrade would turn it into a deny of whom it names (build_claims leaves the
    reserved names out of the token)."""
    claims = {"aws.account": "999999999999", "SCOPE": "x", "scp": "y", "big": 2**64}
    document = allow_doc(claims=claims)
    with pytest.raises(PolicyValidationError):
        Policy.from_document(document)
    assert Policy.from_document(document, stored=True).claims == claims
    # The rest of the claims' rules still hold for a stored document.
    with pytest.raises(PolicyValidationError):
        Policy.from_document(allow_doc(claims={"bad name": 1}), stored=True)
