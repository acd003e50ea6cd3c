"""A function's environment as Lambda measures it, checked at synth.

Lambda allows 4 KB of environment variables per function and counts the JSON of the
variables map, each `"` in a value escaped (a refusal quotes the string it measured), so
JSON values such as TOKEX_TRUSTED_ISSUERS cost more than their length. A deploy over it
fails halfway, when CloudFormation creates or updates the function; synth refuses it
instead. Values CloudFormation fills in at deploy time are counted at the most they can
be: generated names from their stack's name and logical id, ARNs and domain names at
their longest form, a secret dynamic reference at the secret's length.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from aws_cdk import CfnResource, Stack, Token
from constructs import Construct, IConstruct

from cdk.config import ConfigError
from cdk.origin_secret import SECRET_LENGTH

LAMBDA_ENVIRONMENT_BYTES = 4096
DYNAMIC_SECRET = "{{resolve:secretsmanager:"
# CloudFormation's generated names: "<stack>-<logical id>-<12 or 13 characters>".
GENERATED_SUFFIX = 14
MAX_GENERATED_NAME = 255
# The longest forms: arn:aws-us-gov:kms:us-gov-west-1:<account>:key/mrk-<32 hex>, and a
# CloudFront domain (d + 13 characters + .cloudfront.net).
KMS_KEY_ARN_BOUND = 96
DISTRIBUTION_DOMAIN_BOUND = 32
BUCKET_NAME_BOUND = 63
PSEUDO_PARAMETER_BOUNDS = {
    "AWS::Region": 14,
    "AWS::AccountId": 12,
    "AWS::Partition": 10,
    "AWS::URLSuffix": 16,
}


def check_environment(scope: Construct, name: str, environment: Mapping[str, str]) -> int:
    """The most bytes `environment` can be once deployed, as Lambda counts them; raise
    ConfigError if that is over Lambda's 4 KB."""
    sizes = environment_sizes(scope, environment)
    total = len(json.dumps({key: "x" * size for key, size in sizes.items()}, separators=(",", ":")))
    if total > LAMBDA_ENVIRONMENT_BYTES:
        largest = sorted(sizes, key=lambda key: -sizes[key])[:3]
        raise ConfigError(
            f"the {name} function's environment would be up to {total} bytes as Lambda counts"
            f" it (the JSON of its variables), over Lambda's {LAMBDA_ENVIRONMENT_BYTES}: the"
            " largest are " + ", ".join(f"{key} ({sizes[key]} bytes)" for key in largest)
        )
    return total


def environment_sizes(scope: Construct, environment: Mapping[str, str]) -> dict[str, int]:
    """Each variable's value as Lambda counts it (JSON-escaped, without its quotes), at
    the most a deployed value can be."""
    stack = Stack.of(scope)
    resources = dict(_resources(scope.node.root))
    return {
        key: _bound(stack.resolve(value) if Token.is_unresolved(value) else value, resources)
        for key, value in environment.items()
    }


def _resources(root: IConstruct) -> Iterator[tuple[str, tuple[str, str]]]:
    """Each resource's logical id: (its type, its stack's name), in every stack so far."""
    for construct in root.node.find_all():
        if isinstance(construct, CfnResource):
            stack = Stack.of(construct)
            logical = stack.resolve(stack.get_logical_id(construct))
            yield logical, (construct.cfn_resource_type, stack.stack_name)


def _bound(value: Any, resources: Mapping[str, tuple[str, str]]) -> int:
    if isinstance(value, str):
        return SECRET_LENGTH if value.startswith(DYNAMIC_SECRET) else len(json.dumps(value)) - 2
    if isinstance(value, dict) and len(value) == 1:
        [(function, argument)] = value.items()
        if function == "Fn::Join":
            separator, parts = argument
            if parts and isinstance(parts[0], str) and parts[0].startswith(DYNAMIC_SECRET):
                return SECRET_LENGTH
            return len(separator) * max(len(parts) - 1, 0) + sum(
                _bound(part, resources) for part in parts
            )
        if function == "Ref" and argument in PSEUDO_PARAMETER_BOUNDS:
            return PSEUDO_PARAMETER_BOUNDS[argument]
        if function == "Ref" and argument in resources:
            kind, stack_name = resources[argument]
            if kind in ("AWS::DynamoDB::Table", "AWS::DynamoDB::GlobalTable"):
                generated = len(stack_name) + 1 + len(argument) + 1 + GENERATED_SUFFIX
                return min(generated, MAX_GENERATED_NAME)
            if kind == "AWS::S3::Bucket":
                return BUCKET_NAME_BOUND
        if function == "Fn::GetAtt" and argument[0] in resources:
            kind = resources[argument[0]][0]
            if kind in ("AWS::KMS::Key", "AWS::KMS::ReplicaKey") and argument[1] == "Arn":
                return KMS_KEY_ARN_BOUND
            if (kind, argument[1]) == ("AWS::CloudFront::Distribution", "DomainName"):
                return DISTRIBUTION_DOMAIN_BOUND
    # A value this module has no bound for: say so at synth, never guess.
    raise ValueError(f"no size bound for an environment value {json.dumps(value)[:200]}")
