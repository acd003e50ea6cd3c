"""Context options: defaults agree with cdk.json, bad values fail synth with a clear error."""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import pytest

from cdk.config import (
    CONTEXT_KEYS,
    ConfigError,
    TokexConfig,
    check_cli_region,
)
from tests.infra.conftest import ALTERNATE_CONTEXT, EKS_ISSUER, OIF_ISSUER, REPO_ROOT

pytestmark = pytest.mark.infra

CERT = "arn:aws:acm:us-east-1:123456789012:certificate/12345678-1234-1234-1234-123456789012"


DEPLOY_MD = (REPO_ROOT / "docs" / "deploy.md").read_text()
MRK = {"signingKeys": "mrk-a", "activeSigningKey": "mrk-a"}


def config_from(context: dict[str, Any]) -> TokexConfig:
    return TokexConfig.from_context(cdk.App(context=context).node)


def test_cdk_json_options_match_the_code_defaults() -> None:
    context = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]
    options = {k: v for k, v in context.items() if not k.startswith("@aws-cdk")}
    assert config_from(options) == TokexConfig()


def test_ecc_and_custom_domain_from_context() -> None:
    config = config_from(
        {"signingKeySpec": "ECC_NIST_P256", "domainName": "auth.example.com",
         "certificateArn": CERT, "stsRegions": "eu-west-1, us-east-1"}
    )  # fmt: skip
    assert config.signing_key_spec == "ECC_NIST_P256"
    assert config.domain_name == "auth.example.com"
    assert config.sts_regions == ("eu-west-1", "us-east-1")


def test_published_keys_and_instance_tags_from_context() -> None:
    next_key = "arn:aws:kms:eu-west-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef"
    config = config_from(
        {"publishedKeyArns": [next_key], "instanceTagsRoleName": "tokex/tags",
         "instanceTagsAccounts": "111111111111, 222222222222"}
    )  # fmt: skip
    assert config.published_key_arns == (next_key,)
    assert config.instance_tags_role_name == "tokex/tags"
    assert config.instance_tags_accounts == ("111111111111", "222222222222")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", "b"], ("a", "b")),
        (["b", "a"], ("a", "b")),  # order is irrelevant
        ("b,a", ("a", "b")),
        ('["b", "a"]', ("a", "b")),  # what `-c signingKeys='["b","a"]'` passes
        ("b", ("b",)),
    ],
)
def test_signing_keys_from_context(value: object, expected: tuple[str, ...]) -> None:
    config = config_from({"signingKeys": value})
    assert config.signing_keys == expected
    # Default active slot: "a" if it exists, else "b".
    assert config.active_signing_key == expected[0]
    assert config.inactive_keys == expected[1:]


def test_active_signing_key_from_context() -> None:
    config = config_from({"signingKeys": "a,b", "activeSigningKey": "b"})
    assert (config.active_key, config.inactive_keys) == ("b", ("a",))
    assert TokexConfig().signing_keys == ("a",) and TokexConfig().active_key == "a"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (
            {"instanceTagsRoleName": "tokex-tags", "instanceTagAccounts": "111111111111"},
            "'instanceTagAccounts' is not a tokex context option "
            r"\(did you mean instanceTagsAccounts\?\)",
        ),
        ({"stsRegion": "eu-west-1"}, r"'stsRegion' is .* \(did you mean stsRegions\?\)"),
        ({"signingkeys": "a"}, r"'signingkeys' is .* \(did you mean signingKeys\?\)"),
        ({"frobnicate": "1"}, "'frobnicate' is not a tokex context option: docs/deploy.md"),
        # Other spellings of an option: dropped as "not tokex's shape" before.
        ({"InstanceTagsAccounts": "1"}, r"\(did you mean instanceTagsAccounts\?\)"),
        ({"instance_tags_accounts": "1"}, r"\(did you mean instanceTagsAccounts\?\)"),
        ({"instance-tags-accounts": "1"}, r"\(did you mean instanceTagsAccounts\?\)"),
        ({"stsRegions ": "eu-west-1"}, r"'stsRegions ' is .*\(did you mean stsRegions\?\)"),
        ({"sts-region": "eu-west-1"}, r"\(did you mean stsRegions\?\)"),
        # Words of any case and `_`, however far from an option's spelling: passed by before.
        ({"require_audience": True}, "^'require_audience' is not a tokex context option: "),
        ({"waf_acl_arn": "arn:aws:wafv2:..."}, "^'waf_acl_arn' is not a tokex context option"),
        ({"tag_accounts": "111111111111"}, "^'tag_accounts' is not a tokex context option"),
        ({"allowed_sts_regions": "eu-west-1"}, "^'allowed_sts_regions' is not a tokex"),
        ({"ttl_cap": 60}, "^'ttl_cap' is not a tokex context option"),
        ({"throttle_rate": 5}, "^'throttle_rate' is not a tokex context option"),
        ({"TTL_CAP": 60}, "^'TTL_CAP' is not a tokex context option"),
        ({"WafAclArn": "arn"}, "^'WafAclArn' is not a tokex context option"),
    ],
)
def test_misspelt_option_is_refused_not_dropped(context: dict[str, Any], message: str) -> None:
    """A dropped option silently meant its default: a tag role assumable in every account,
    every STS Region accepted."""
    with pytest.raises(ConfigError, match=message):
        config_from(context)


def test_cdk_own_keys_are_not_options() -> None:
    """Feature flags, the CLI's keys and cdk.context.json's lookups pass by."""
    config = config_from(
        {
            "@aws-cdk/core:newStyleStackSynthesis": True,
            "aws:cdk:bundling-stacks": ["*"],
            "acknowledged-issue-numbers": [32775],
            "availability-zones:account=123456789012:region=eu-west-1": ["eu-west-1a"],
        }
    )
    assert config == TokexConfig()


def test_every_documented_option_is_read() -> None:
    """docs/deploy.md's table and the keys `from_context` accepts are the same set."""
    section = DEPLOY_MD.split("\n## Context options\n", 1)[1].split("\n#", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)`(?: / `(\w+)`)? \|", section, re.M))
    keys = {key for pair in documented for key in pair if key}
    assert keys == CONTEXT_KEYS


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"signingKeys": "a,c"}, "signingKeys: unknown key slot 'c'"),
        ({"signingKeys": ["A"]}, "signingKeys: unknown key slot 'A'"),
        ({"signingKeys": []}, "signingKeys must list at least one key slot"),
        ({"signingKeys": "[]"}, "signingKeys must list at least one key slot"),
        ({"signingKeys": ","}, "signingKeys must list at least one key slot"),
        ({"signingKeys": "a,a"}, "signingKeys lists a slot twice"),
        ({"signingKeys": '["a", "b"'}, "signingKeys is not a valid JSON list"),
        ({"signingKeys": '["a", 2]'}, "signingKeys must be a list of strings"),
        ({"signingKeys": {"a": 1}}, "signingKeys must be a list of strings"),
        ({"activeSigningKey": "b"}, r"activeSigningKey 'b' is not in signingKeys \(a\)"),
        ({"signingKeys": "b", "activeSigningKey": "a"}, "activeSigningKey 'a' is not in"),
        ({"signingKeys": "a,b", "activeSigningKey": "c"}, "activeSigningKey 'c' is not in"),
        ({"activeSigningKey": ["a"]}, "activeSigningKey must be a string"),
        ({"signingKeySpec": "RSA_4096"}, "signingKeySpec"),
        ({"signingKeySpec": "SYMMETRIC_DEFAULT"}, "signingKeySpec"),
        ({"domainName": "auth.example.com"}, "go together"),
        ({"certificateArn": CERT}, "go together"),
        (
            {
                "domainName": "auth.example.com",
                "certificateArn": CERT.replace("us-east-1", "eu-west-1"),
            },
            "us-east-1",
        ),
        ({"domainName": "https://auth.example.com", "certificateArn": CERT}, "domainName"),
        ({"stsPartitions": "aws,mars"}, "partition"),
        ({"stsRegions": "eu-west-1,*"}, "stsRegions"),
        # Region names the exchange would refuse as it loads, after a deploy that worked.
        ({"stsRegions": "eu-west-9"}, r"stsRegions: unknown STS region\(s\) .*'eu-west-9'"),
        ({"stsRegions": "eu-west-1,cn-north-1"}, r"stsRegions: .*'cn-north-1'.*: aws\)"),
        (
            {"stsPartitions": "aws-cn", "stsRegions": "eu-west-1"},
            r"stsRegions: .*\['eu-west-1'\] \(stsPartitions: aws-cn\)",
        ),
        ({"ttlCapSeconds": 10}, "ttlCapSeconds"),
        ({"defaultTtlSeconds": 7200}, "defaultTtlSeconds"),
        ({"throttleRateLimit": "fast"}, "throttleRateLimit"),
        ({"throttleBurstLimit": 0}, "throttle"),
        ({"rateLimitPerMinute": 0}, "rateLimitPerMinute must be between 1 and 100000"),
        ({"rateLimitPerMinute": "100001"}, "rateLimitPerMinute must be between 1 and 100000"),
        ({"logLevel": "TRACE"}, "logLevel"),
        ({"logLevel": "WARNING"}, "logLevel must be one of DEBUG, INFO: the audit trail"),
        ({"logLevel": "ERROR"}, "logLevel must be one of DEBUG, INFO"),
        ({"tracing": "xray"}, "tracing must be one of lambda, sdk, off"),
        ({"webAclArn": "arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/x/y"}, "webAclArn"),
        ({"stackName": "9lives"}, "stackName"),
        ({"publishedKeyArns": "alias/tokex/next"}, "publishedKeyArns"),
        ({"publishedKeyArns": CERT}, "publishedKeyArns"),
        ({"instanceTagsRoleName": "role/with space"}, "instanceTagsRoleName"),
        ({"instanceTagsRoleName": "a" * 65}, "instanceTagsRoleName"),
        ({"instanceTagsAccounts": "123456789012"}, "needs instanceTagsRoleName"),
        (
            {"instanceTagsRoleName": "tokex-tags", "instanceTagsAccounts": "12345678901"},
            "instanceTagsAccounts",
        ),
        ({"instanceTagsRoleName": "tokex-tags", "instanceTagsAccounts": "*"}, "account id"),
        # Multi-Region (docs/multi-region.md): every message names `regions`.
        ({"regions": "us-east-1,mars-1"}, "regions: 'mars-1' is not a region name"),
        ({"regions": '["us-east-1", 1]'}, "regions must be a list of strings"),
        ({"regions": '["us-east-1"'}, "regions is not a valid JSON list"),
        ({"regions": "us-east-1,eu-west-1,us-east-1"}, "regions lists a Region twice"),
        (
            {"regions": "us-east-1,cn-north-1"},
            "regions: 'cn-north-1' is not in the aws partition .*: deploy tokex in the aws"
            " partition, and serve aws-cn and aws-us-gov workloads from there with the"
            " stsPartitions context",
        ),
        ({"originSecretGeneration": "0"}, "originSecretGeneration must be a positive integer"),
        ({"originSecretGeneration": "two"}, "originSecretGeneration must be a whole number"),
        ({"ttlCapSeconds": "\u0663\u0666\u0660\u0660"}, "ttlCapSeconds must be a whole number"),
        ({"rateLimitPerMinute": "1000000"}, "rateLimitPerMinute must be a whole number from 0 to"),
        (
            {"logRetentionDays": "31"},
            "logRetentionDays must be one of CloudWatch Logs' periods: 1,",
        ),
        ({"logRetentionDays": "0"}, "logRetentionDays must be one of"),
        ({"requireSignedAudience": "yes"}, "requireSignedAudience must be true or false"),
        ({"requireSignedAudience": 1}, "requireSignedAudience must be true or false"),
        ({"logRetentionDays": "forever"}, "logRetentionDays must be a whole number"),
        (
            {
                "regions": "us-east-1,us-east-2,us-west-1,us-west-2,eu-west-1,eu-west-2,"
                "eu-west-3,eu-central-1,eu-north-1,ap-southeast-1,ap-southeast-2,ap-northeast-1",
                **{"signingKeys": "mrk-a", "activeSigningKey": "mrk-a"},
            },
            "regions: at most 11 Regions, not 12: .* CloudFront allows 25 by default",
        ),
        (
            {"regions": "us-east-1,eu-west-1"},
            "regions: every signing key .* not a: a new deployment sets signingKeys=mrk-a and"
            " activeSigningKey=mrk-a;",
        ),
        (
            {"regions": "us-east-1,eu-west-1", "stsPartitions": "aws-us-gov", **MRK},
            r"regions: unknown STS region\(s\) .*'us-east-1'.*aws-us-gov",
        ),
        (
            {"regions": "us-east-1,ap-southeast-2", "stackName": "T" * 110, **MRK},
            "stackName is too long for regions: the Regional stack T+... would be 129"
            " characters, and CloudFormation allows 128",
        ),
        (
            {"regions": "us-east-1,eu-west-9", **MRK},
            r"regions: unknown STS region\(s\) for the partitions: \['eu-west-9'\]",
        ),
        (
            {
                "regions": "us-east-1,eu-west-1",
                "signingKeys": "a,mrk-a",
                "activeSigningKey": "mrk-a",
            },
            "regions: every signing key of a multi-Region deployment is a multi-Region key",
        ),
        (
            {
                "regions": "us-east-1,eu-west-1",
                "signingKeys": "mrk-a",
                "activeSigningKey": "mrk-a",
                "stsRegions": "eu-west-1",
            },
            "stsRegions and regions do not go together",
        ),
        (
            {
                "regions": "us-east-1,eu-west-1",
                "signingKeys": "mrk-a",
                "activeSigningKey": "mrk-a",
                "publishedKeyArns": "arn:aws:kms:eu-west-1:123456789012:key/"
                "abcdef01-2345-6789-abcd-ef0123456789",
            },
            "publishedKeyArns is for single-Region deployments",
        ),
    ],
)
def test_invalid_context_is_refused(context: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from(context)


MULTI_REGION_KEYS = {"signingKeys": "mrk-a", "activeSigningKey": "mrk-a"}


@pytest.mark.parametrize(
    "value",
    [
        "us-east-1,eu-west-1,ap-southeast-2",
        " us-east-1 , eu-west-1,ap-southeast-2 ",
        ["us-east-1", "eu-west-1", "ap-southeast-2"],
        '["us-east-1", "eu-west-1", "ap-southeast-2"]',  # what `-c regions='[...]'` passes
    ],
)
def test_regions_from_context(value: object) -> None:
    config = config_from({"regions": value, **MULTI_REGION_KEYS})
    assert config.regions == ("us-east-1", "eu-west-1", "ap-southeast-2")
    assert config.is_multi_region
    assert config.home_region == "us-east-1"
    assert config.other_regions == ("eu-west-1", "ap-southeast-2")


@pytest.mark.parametrize("value", [None, "[]", "eu-west-1", ["eu-west-1"]])
def test_absent_or_one_region_is_the_single_region_deployment(value: object) -> None:
    """One Region needs no multi-Region key: it is today's deployment (the template is
    the default one, tests/infra/test_multi_region.py)."""
    config = config_from({} if value is None else {"regions": value})
    assert not config.is_multi_region
    assert config.other_regions == ()


def test_multi_region_key_slots_may_exist_before_regions_are_added() -> None:
    """Opting in (docs/multi-region.md): the multi-Region key is rotated in while the
    deployment is still single-Region."""
    config = config_from({"signingKeys": "a,mrk-a", "activeSigningKey": "mrk-a"})
    assert config.signing_keys == ("a", "mrk-a")
    assert config.inactive_keys == ("a",)


def test_deploy_nonce_changes_between_synths_unless_pinned() -> None:
    from cdk.tokex_stack import deploy_nonce

    assert deploy_nonce(config_from({"deployNonce": "pinned"})) == "pinned"
    assert deploy_nonce(TokexConfig()) != deploy_nonce(TokexConfig())


# --- trustedIssuers: JWT evidence (docs/deploy.md "JWT evidence: trusted issuers") -------


@pytest.mark.parametrize(
    "value",
    [
        [OIF_ISSUER, EKS_ISSUER],  # cdk.json: a list
        json.dumps([OIF_ISSUER, EKS_ISSUER]),  # -c trustedIssuers='[...]': a string
        json.dumps([OIF_ISSUER, EKS_ISSUER], indent=2),
    ],
)
def test_trusted_issuers_from_context(value: object) -> None:
    config = config_from({"trustedIssuers": value})
    assert [issuer.to_document() for issuer in config.trusted_issuers.issuers] == [
        OIF_ISSUER,
        EKS_ISSUER,
    ]
    assert config.trusted_issuers.to_json() == json.dumps(
        [OIF_ISSUER, EKS_ISSUER], separators=(",", ":")
    )


@pytest.mark.parametrize("value", [[], "[]", " [ ] "])
def test_no_trusted_issuers_is_the_default(value: object) -> None:
    config = config_from({"trustedIssuers": value})
    assert config == TokexConfig()
    assert not config.trusted_issuers


def test_own_issuer_is_refused_only_when_synth_knows_it() -> None:
    own = {**OIF_ISSUER, "issuer": "https://auth.example.com"}
    with pytest.raises(ConfigError, match=r"trustedIssuers\[0\]\.issuer: tokex's own issuer"):
        config_from(
            {"domainName": "auth.example.com", "certificateArn": CERT, "trustedIssuers": [own]}
        )
    # Another issuer with a custom domain, and any https issuer with the CloudFront domain
    # (unknown until deployed: the exchange refuses its own issuer at cold start).
    other = {"domainName": "tokex.example.com", "certificateArn": CERT, "trustedIssuers": [own]}
    assert config_from(other).trusted_issuers.get("https://auth.example.com") is not None
    assert config_from({"trustedIssuers": [own]}).trusted_issuers


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{", r"^trustedIssuers is not valid JSON$"),
        ('{"kind": "eks"}', r"^trustedIssuers must be a list of objects$"),
        ({"kind": "eks"}, r"^trustedIssuers must be a list of objects$"),
        (5, r"^trustedIssuers must be a list of objects$"),
        (["https://oidc.example.com"], r"^trustedIssuers\[0\] must be an object$"),
        ([{**OIF_ISSUER, "kind": "github"}], r"^trustedIssuers\[0\]\.kind must be one of"),
        (
            [OIF_ISSUER, {**OIF_ISSUER, "issuer": "http://127.0.0.1:9000"}],
            # A deployment never trusts plain http, not even on loopback (local mode only).
            r"^trustedIssuers\[1\]\.issuer must be an https URL",
        ),
        ([{**OIF_ISSUER, "issuer": "https://sts.example.com/"}], r"without a trailing slash"),
        ([{**OIF_ISSUER, "region": "eu-west-1"}], r"^trustedIssuers\[0\]\.region: unknown key"),
        ([{**OIF_ISSUER, "account": "12345"}], r"^trustedIssuers\[0\]\.account must be"),
        ([{**EKS_ISSUER, "cluster": "a b"}], r"^trustedIssuers\[0\]\.cluster 'a b' is not"),
        ([{**EKS_ISSUER, "region": "mars"}], r"^trustedIssuers\[0\]\.region 'mars' is not"),
        ([EKS_ISSUER, EKS_ISSUER], r"^trustedIssuers\[1\]\.issuer: listed twice$"),
        # A repeated key: which of the two values would count is the parser's choice.
        ('[{"kind": "eks", "kind": "aws-oif"}]', r"^trustedIssuers is not valid JSON$"),
    ],
)
def test_invalid_trusted_issuers_are_refused_naming_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from({"trustedIssuers": value})


@pytest.mark.parametrize("value", ["", ",", " , ", "[]", [], [""]])
@pytest.mark.parametrize("key", ["stsPartitions", "stsRegions", "instanceTagsAccounts"])
def test_an_empty_allow_list_is_refused_not_the_default(key: str, value: object) -> None:
    """Empty (a templating step's empty variable), each would silently mean its default,
    the widest: any account may be assumed into, every STS Region accepted."""
    context = {key: value, "instanceTagsRoleName": "tokex-tags"}
    with pytest.raises(ConfigError, match=f"^{key} is empty: name at least one, or leave it out"):
        config_from(context)


@pytest.mark.parametrize("value", ["", " "])
@pytest.mark.parametrize("key", sorted(CONTEXT_KEYS))
def test_an_empty_value_is_refused_not_the_default(key: str, value: str) -> None:
    """`-c key=` passes "": taken as unset, the option's default (often the weaker one)
    would replace cdk.json's value without a word."""
    with pytest.raises(ConfigError, match=f"^{key} is empty: "):
        config_from({"instanceTagsRoleName": "tokex-tags", key: value})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("requireSignedAudience", True),
        ("webAclArn", ALTERNATE_CONTEXT["webAclArn"]),
        ("logRetentionDays", 3653),
        ("rateLimitPerMinute", 10),
        ("regions", ["us-east-1", "eu-west-1"]),
    ],
)
def test_an_empty_cli_value_does_not_replace_cdk_json(key: str, value: object) -> None:
    """`-c key=` sends "" in CDK_CONTEXT_JSON, which wins over cdk.json's value as a later
    layer of context does (`post_cli_context` here: the jsii process's environment is fixed
    when it starts)."""
    app = cdk.App(context={key: value, **MULTI_REGION_KEYS}, post_cli_context={key: ""})
    with pytest.raises(ConfigError, match=f"^{key} is empty: give it a value, or leave it out$"):
        TokexConfig.from_context(app.node)


DEEP = 100_000


@pytest.mark.parametrize("value", ["[" * DEEP, "[" * DEEP + "]" * DEEP], ids=["unclosed", "closed"])
@pytest.mark.parametrize(
    "key",
    [
        "trustedIssuers",
        "stsPartitions",
        "stsRegions",
        "regions",
        "signingKeys",
        "publishedKeyArns",
        "instanceTagsAccounts",
    ],
)
def test_deeply_nested_json_is_refused_naming_the_key(key: str, value: str) -> None:
    """Too deep for the parser, it was a RecursionError traceback instead of the key."""
    with pytest.raises(ConfigError, match=f"^{key}"):
        config_from({"instanceTagsRoleName": "tokex-tags", key: value})


@pytest.mark.parametrize(
    ("regions", "cli_region"),
    [(None, "us-east-1"), ("eu-west-1", "eu-west-1"), ("eu-west-1", None), ("eu-west-1", "")],
)
def test_a_one_region_deployment_goes_where_the_cli_deploys(
    regions: str | None, cli_region: str | None
) -> None:
    config = config_from({} if regions is None else {"regions": regions})
    check_cli_region(config, cli_region)


def test_a_one_region_deployment_the_cli_would_put_elsewhere_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The single-Region stack is not pinned to a Region: named one Region, it would
    silently deploy to the CLI's."""
    from cdk.tokex_stack import build_app

    monkeypatch.setenv("CDK_DEFAULT_REGION", "us-east-1")
    with pytest.raises(
        ConfigError,
        match=r"^regions names eu-west-1 only, but the CDK CLI deploys to us-east-1: deploy",
    ):
        build_app(context={"regions": "eu-west-1"})
    # A multi-Region deployment pins each stack to its Region: the CLI's does not matter.
    config = config_from({"regions": "us-east-1,eu-west-1", **MULTI_REGION_KEYS})
    check_cli_region(config, "ap-southeast-2")


KEY_IN = "arn:{partition}:kms:{region}:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("context", "cli_region", "why"),
    [
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws", region="ap-southeast-2")},
            "eu-west-1",
            "must be in eu-west-1, where the CDK CLI deploys, not ap-southeast-2",
        ),
        (
            {
                "regions": "eu-west-1",
                "publishedKeyArns": KEY_IN.format(partition="aws", region="us-east-1"),
            },
            None,
            "must be in eu-west-1, the deployment's Region, not us-east-1",
        ),
        (
            {
                "publishedKeyArns": ",".join(
                    KEY_IN.format(partition="aws", region=region)
                    for region in ("eu-west-1", "us-east-1")
                )
            },
            None,
            "not in eu-west-1, us-east-1",
        ),
    ],
)
def test_published_keys_of_another_region_are_refused_at_synth(
    context: dict[str, str], cli_region: str | None, why: str
) -> None:
    """The publisher and introspection read them with their own Region's KMS client: the
    JWKS resource, and the deploy with it, would fail."""
    with pytest.raises(ConfigError, match=f"^publishedKeyArns: every key .*{why}"):
        check_cli_region(config_from(context), cli_region)


def test_published_keys_of_the_deployments_region_are_accepted() -> None:
    key = KEY_IN.format(partition="aws", region="eu-west-1")
    check_cli_region(config_from({"publishedKeyArns": key}), "eu-west-1")
    check_cli_region(config_from({"publishedKeyArns": key}), None)  # no CLI Region: no check
    check_cli_region(config_from({"publishedKeyArns": key, "regions": "eu-west-1"}), "eu-west-1")


# Amazon CloudFront Developer Guide, "Choosing an Amazon S3 bucket for your standard logs".
NO_STANDARD_LOGS = ("af-south-1", "ap-east-1", "ap-southeast-3", "eu-south-1", "me-south-1")


@pytest.mark.parametrize("region", NO_STANDARD_LOGS)
def test_a_stack_where_cloudfront_delivers_no_standard_logs_is_refused(region: str) -> None:
    """The access-log bucket is in the stack's (home) Region: there CloudFront would deliver
    none of the standard logs that record each client's IP, and nothing would say so."""
    why = (
        rf"{region}, cannot hold the stack: CloudFront delivers no standard logs to a bucket"
        rf" in {region} \(Amazon CloudFront Developer Guide"
    )
    with pytest.raises(ConfigError, match=f"^regions: the home Region, {why}"):
        config_from({"regions": f"{region},eu-west-1", **MRK})
    with pytest.raises(ConfigError, match=f"^regions: the home Region, {why}"):
        config_from({"regions": region})
    with pytest.raises(ConfigError, match=f"^the CDK CLI's Region, {why}"):
        check_cli_region(config_from({}), region)
    # Another Region of a multi-Region deployment holds no log bucket.
    check_cli_region(config_from({"regions": f"eu-west-1,{region}", **MRK}), region)


# The stack deploys in the aws partition only: its CloudFront distribution (none in
# GovCloud; in China, not as the stack builds it). Callers of aws-cn and aws-us-gov are
# served from there (stsPartitions).
SERVE_FROM_AWS = (
    "deploy tokex in the aws partition, and serve aws-cn and aws-us-gov workloads from"
    " there with the stsPartitions context"
)
OTHER_PARTITIONS = [
    ("us-gov-west-1", "aws-us-gov"), ("us-gov-east-1", "aws-us-gov"),
    ("cn-north-1", "aws-cn"), ("cn-northwest-1", "aws-cn"),
]  # fmt: skip


@pytest.mark.parametrize(("region", "partition"), OTHER_PARTITIONS)
def test_a_cli_region_outside_the_aws_partition_is_refused(region: str, partition: str) -> None:
    """As `regions` refuses it: synth used to pass, with a distribution in the template,
    and only the deploy failed."""
    why = (
        f"^the CDK CLI's Region, {region}, is in the {partition} partition, not aws: the"
        f" stack's CloudFront distribution deploys in aws only; {SERVE_FROM_AWS}$"
    )
    for context in ({}, {"stsPartitions": partition}, {"stsPartitions": f"aws,{partition}"}):
        with pytest.raises(ConfigError, match=why):
            check_cli_region(config_from(context), region)
    with pytest.raises(ConfigError, match=f"^regions: '{region}' is not in the aws partition"):
        config_from({"regions": region})


def test_an_aws_cli_region_serving_other_partitions_is_accepted() -> None:
    config = config_from({"stsPartitions": "aws,aws-cn,aws-us-gov"})
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        check_cli_region(config, region)


ARN_KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        # An ARN whose partition is not its Region's.
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws", region="cn-north-1")},
            "^publishedKeyArns: 'arn:aws:kms:cn-north-1:.*' is an aws ARN, but its Region,"
            " cn-north-1, is in the aws-cn partition$",
        ),
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws-cn", region="us-east-1")},
            "^publishedKeyArns: 'arn:aws-cn:kms:us-east-1:.*' is an aws-cn ARN, but its Region,"
            " us-east-1, is in the aws partition$",
        ),
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws", region="us-gov-west-1")},
            "is an aws ARN, but its Region, us-gov-west-1, is in the aws-us-gov partition$",
        ),
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws", region="eusc-de-east-1")},
            "is an aws ARN, but its Region, eusc-de-east-1, is in no partition tokex serves$",
        ),
        (
            {
                "domainName": "auth.example.com",
                "certificateArn": CERT.replace("arn:aws:", "arn:aws-us-gov:"),
            },
            "^certificateArn: 'arn:aws-us-gov:acm:us-east-1:.*' is an aws-us-gov ARN, but its"
            " Region, us-east-1, is in the aws partition$",
        ),
        (
            {
                "domainName": "auth.example.com",
                "certificateArn": CERT.replace("arn:aws:", "arn:aws-cn:"),
            },
            "^certificateArn: 'arn:aws-cn:acm:us-east-1:.*' is an aws-cn ARN",
        ),
        (
            {"webAclArn": f"arn:aws-cn:wafv2:us-east-1:123456789012:global/webacl/w/{ARN_KEY}"},
            "^webAclArn: 'arn:aws-cn:wafv2:us-east-1:.*' is an aws-cn ARN, but its Region,"
            " us-east-1, is in the aws partition$",
        ),
        # Of its Region's partition, but not the stack's.
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws-cn", region="cn-north-1")},
            f"^publishedKeyArns: 'arn:aws-cn:kms:cn-north-1:.*' is in the aws-cn partition, not"
            f" aws, the stack's: {SERVE_FROM_AWS}$",
        ),
        (
            {"publishedKeyArns": KEY_IN.format(partition="aws-us-gov", region="us-gov-east-1")},
            "is in the aws-us-gov partition, not aws, the stack's: ",
        ),
    ],
)
def test_an_arn_outside_its_own_or_the_stacks_partition_is_refused(
    context: dict[str, str], message: str
) -> None:
    """The stack (aws) could not use it, and synth used to pass: the deploy failed."""
    with pytest.raises(ConfigError, match=message):
        config_from(context)


def test_arns_of_the_aws_partition_are_accepted() -> None:
    config = config_from(
        {"domainName": "auth.example.com", "certificateArn": CERT,
         "webAclArn": f"arn:aws:wafv2:us-east-1:123456789012:global/webacl/w/{ARN_KEY}",
         "publishedKeyArns": KEY_IN.format(partition="aws", region="eu-west-1"),
         "stsPartitions": "aws,aws-cn,aws-us-gov"}
    )  # fmt: skip
    check_cli_region(config, "eu-west-1")
