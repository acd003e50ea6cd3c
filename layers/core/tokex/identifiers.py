"""The identifier rules: each one defined here once, imported by every validator, the CLI,
the Kong generator and the CDK app (cdk/config.py), so no two places can drift apart.

Pure: the standard library only (no boto3, no framework), so cdk/ can import it too.
Every pattern is applied with `fullmatch` (never `match` with `$`, which lets a trailing
newline through) and spells digits `[0-9]`, never `\\d`, which is Unicode.
tests/unit/test_identifiers.py feeds the same values through every entry point.
"""

from __future__ import annotations

import re

# --- Audience and scope (docs/contract.md "POST {iss}/token — RFC 8693 token exchange").
# An audience names an API as policies name it: 1-256 of A-Za-z0-9._:/- .
AUDIENCE = re.compile(r"[A-Za-z0-9._:/-]{1,256}")
# The same characters plus the policy wildcard `*` (docs/policies.md "Globs").
AUDIENCE_PATTERN = re.compile(r"[A-Za-z0-9._:/*-]{1,256}")
AUDIENCE_RULE = "1-256 characters of A-Za-z0-9._:/-"
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); tokex bounds the length.
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
# A character outside the scope-token alphabet (for error messages that quote a scope).
NOT_SCOPE_CHARACTER = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]")

# --- Accounts, partitions, regions.
# AWS account ids are exactly 12 digits (AWS Account Management guide, "View account
# identifiers").
ACCOUNT_ID = re.compile(r"[0-9]{12}")
# The partitions tokex serves: the STS host table (evidence/sts_endpoints.py), the pinned
# instance identity certificates and the ARN forms below cover these and no other.
# `aws-eusc` (European Sovereign Cloud, region eusc-de-east-1) is left out on purpose:
# serving it needs its STS hosts in the table, its instance identity certificates and a
# test in that partition, not only a name in this list. Its regions are still regions
# (REGION below), so every check agrees on what a region *is*.
PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
PARTITION = re.compile("|".join(re.escape(partition) for partition in PARTITIONS))
# DNS suffix of each partition's endpoints (botocore endpoints.json `dnsSuffix`).
PARTITION_DNS_SUFFIX = {
    "aws": "amazonaws.com",
    "aws-cn": "amazonaws.com.cn",
    "aws-us-gov": "amazonaws.com",
}
# Every AWS region name has the form <area>[-<qualifier>]-<direction>-<number>, area 2-4
# letters: us-east-1, ap-southeast-5, il-central-1, us-gov-west-1, cn-north-1,
# eusc-de-east-1, us-isob-east-1 (botocore endpoints.json `regionRegex` of every
# partition). A region name becomes part of an endpoint host, so nothing else gets in.
REGION = re.compile(r"[a-z]{2,4}(?:-[a-z]+)+-[0-9]{1,2}")
# Which served partition a region belongs to (botocore endpoints.json `regionRegex`),
# tried in this order; a region of any other partition belongs to none of ours.
_PARTITION_OF_REGION = (
    ("aws-us-gov", re.compile(r"us-gov-[a-z]+-[0-9]{1,2}")),
    ("aws-cn", re.compile(r"cn-[a-z]+-[0-9]{1,2}")),
    ("aws", re.compile(r"(?:us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-[0-9]{1,2}")),
)

# --- IAM and STS ARNs (IAM User Guide, "IAM identifiers"; STS API reference, AssumeRole).
# IAM role and user names: 1-64 of [\w+=,.@-] (ASCII); an STS RoleSessionName: 2-64.
_PARTITION = PARTITION.pattern
_NAME = r"[A-Za-z0-9_+=,.@-]"
# IAM paths are `/` or `/<printable ASCII>/`, written here without the leading `/`.
_PATH = r"(?:[\x21-\x2e\x30-\x7e]+/)*"
IAM_NAME = re.compile(rf"{_NAME}{{1,64}}")
ROLE_SESSION_NAME = re.compile(rf"{_NAME}{{2,64}}")
# A role name as configuration gives it: `name` or `path/to/name`, at most 8 levels.
ROLE_NAME_WITH_PATH = re.compile(rf"(?:{_NAME}{{1,64}}/){{0,8}}{_NAME}{{1,64}}")
# Groups: partition, account, path (may be empty), name.
ROLE_ARN = re.compile(rf"arn:({_PARTITION}):iam::([0-9]{{12}}):role/({_PATH})({_NAME}{{1,64}})")
# What GetCallerIdentity returns for a role session. Groups: partition, account, role, session.
ASSUMED_ROLE_ARN = re.compile(
    rf"arn:({_PARTITION}):sts::([0-9]{{12}}):assumed-role/({_NAME}{{1,64}})/({_NAME}{{2,64}})"
)
# An IAM user, path included. Groups: partition, account.
USER_ARN = re.compile(rf"arn:({_PARTITION}):iam::([0-9]{{12}}):user/{_PATH}{_NAME}{{1,64}}")
# A token's `sub` as an operator may type it: a role or user of a served partition; the
# name part is only bounded, not parsed (docs/contract.md "The access token (RFC 9068
# profile)").
PRINCIPAL_ARN = re.compile(
    rf"arn:(?:{_PARTITION}):iam::[0-9]{{12}}:(?:role|user)/[\x21-\x7e]{{1,512}}"
)
# IAM unique ids (AROA…, AIDA…): "IAM identifiers", "Unique identifiers".
PRINCIPAL_ID = re.compile(r"[A-Za-z0-9]{1,128}")

# --- JWT evidence (docs/contract.md "JWT evidence").
# The kinds of trusted JWT issuer (settings `trustedIssuers`): an account's IAM outbound
# identity federation issuer, and an EKS cluster's OIDC issuer.
JWT_ISSUER_KINDS = ("aws-oif", "eks")
# The kinds of evidence an exchange accepts: a signed GetCallerIdentity, and the JWT kinds.
EVIDENCE_KINDS = ("sigv4", *JWT_ISSUER_KINDS)
# EKS cluster names (EKS API reference, CreateCluster `name`).
EKS_CLUSTER_NAME = re.compile(r"[0-9A-Za-z][A-Za-z0-9_-]{0,99}")
# Kubernetes namespace (an RFC 1123 label) and service account name (an RFC 1123 subdomain).
K8S_NAMESPACE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
K8S_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?")
# The `sub` of a token exchanged for an EKS service-account token (EksWorkload.principal):
# eks:<account>:<region>:<cluster>:<namespace>:<service account>.
EKS_PRINCIPAL = re.compile(
    rf"eks:[0-9]{{12}}:{REGION.pattern}:{EKS_CLUSTER_NAME.pattern}:"
    rf"{K8S_NAMESPACE.pattern}:{K8S_NAME.pattern}"  # the name is last: its `$` is the end
)
# AWS Organizations ids and an OU path (`o-…/r-…/ou-…/…/`).
ORG_ID = re.compile(r"o-[a-z0-9]{10,32}")
OU_PATH = re.compile(
    r"o-[a-z0-9]{10,32}/r-[a-z0-9]{4,32}/(?:ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}/){0,5}"
)
VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
# EC2 instance ids: `i-` and 8 (older) or 17 hexadecimal digits (EC2 User Guide,
# "Resource IDs").
INSTANCE_ID = re.compile(r"i-(?:[0-9a-f]{8}|[0-9a-f]{17})")
LAMBDA_FUNCTION_ARN = re.compile(
    rf"arn:({_PARTITION}):lambda:([a-z0-9-]{{1,32}}):([0-9]{{12}}):function:[A-Za-z0-9_-]{{1,64}}"
)
EC2_INSTANCE_ARN = re.compile(
    rf"arn:({_PARTITION}):ec2:([a-z0-9-]{{1,32}}):([0-9]{{12}}):instance/i-[0-9a-f]{{8,17}}"
)

# --- HTTP (RFC 9110 §5.6.2): a `token`, as methods, field names, media types and their
# parameters are spelled.
HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# --- The signed STS request (docs/contract.md "The signed request").
# The one body tokex forwards: GetCallerIdentity and nothing else (CVE-2022-2385).
STS_BODY = "Action=GetCallerIdentity&Version=2011-06-15"

# --- Algorithms: RFC 7518 §3.3 (RS256), §3.4 (ES256);
# docs/contract.md "The access token (RFC 9068 profile)".
# The KMS key specs tokex signs with and the JWS algorithm each gives: the only algorithms
# tokex signs, publishes and accepts at introspection. (PS256 is not one: no key spec
# here signs it, so a PS256 token or JWK was not made by tokex.)
SIGNING_KEY_SPECS = {"RSA_2048": "RS256", "ECC_NIST_P256": "ES256"}
SIGNING_ALGS = tuple(SIGNING_KEY_SPECS.values())
# The KMS SigningAlgorithm of each (KMS API reference, Sign).
KMS_SIGNING_ALGORITHMS = {"RS256": "RSASSA_PKCS1_V1_5_SHA_256", "ES256": "ECDSA_SHA_256"}
# The JWK `kty` of each algorithm's keys (RFC 7518 §6.1).
KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}


def is_audience(value: str) -> bool:
    return AUDIENCE.fullmatch(value) is not None


def is_scope_token(value: str) -> bool:
    return SCOPE_TOKEN.fullmatch(value) is not None


def is_account_id(value: str) -> bool:
    return ACCOUNT_ID.fullmatch(value) is not None


def is_region(value: str) -> bool:
    return REGION.fullmatch(value) is not None


def is_partition(value: str) -> bool:
    return value in PARTITIONS


def partition_of_region(region: str) -> str | None:
    """The served partition `region` belongs to, or None (a malformed region, or one of a
    partition tokex does not serve, such as eusc-de-east-1)."""
    for partition, pattern in _PARTITION_OF_REGION:
        if pattern.fullmatch(region):
            return partition
    return None
