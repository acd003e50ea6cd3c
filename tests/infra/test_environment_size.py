"""A function's environment as Lambda counts it (cdk/environment_size.py): checked at
synth against Lambda's 4 KB, its deploy-time values counted at the most they can be."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ssm as ssm

from cdk.config import ConfigError
from cdk.environment_size import LAMBDA_ENVIRONMENT_BYTES, environment_sizes
from cdk.tokex_stack import TokexStack, build_app
from tests.infra.conftest import EKS_ISSUER
from tokex.evidence.sts_endpoints import AWS_REGIONS

OFFLINE = {"aws:cdk:bundling-stacks": []}
# Every STS Region of the aws partition, a long custom domain and a pathed role name:
# the exchange's other variables at their longest in practice.
LONG_DOMAIN = "tokens." + "a" * 40 + ".example.com"
CERTIFICATE = (
    "arn:aws:acm:us-east-1:123456789012:certificate/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12
)


def eks_issuers(count: int) -> list[dict[str, str]]:
    return [{**EKS_ISSUER, "issuer": f"{EKS_ISSUER['issuer'][:-4]}{i:04X}"} for i in range(count)]


def synth(tmp_path: Path, context: dict[str, Any]) -> tuple[TokexStack, dict[str, Any]]:
    app, stack = build_app(context=context, post_cli_context=OFFLINE, outdir=str(tmp_path))
    app.synth()
    template = json.loads((tmp_path / f"{stack.stack_name}.template.json").read_text())
    return stack, template


def deployed(template: dict[str, Any], value: Any) -> str:
    """A value as CloudFormation fills it in, at its longest realistic form: generated
    names as `<stack>-<logical id>-<13 characters>`, the key ARN of a multi-Region key,
    a CloudFront domain, a 48-character secret."""
    resources = template["Resources"]
    if isinstance(value, str):
        return "s" * 48 if value.startswith("{{resolve:secretsmanager:") else value
    [(function, argument)] = value.items()
    if function == "Fn::Join":
        separator, parts = argument
        if isinstance(parts[0], str) and parts[0].startswith("{{resolve:secretsmanager:"):
            return "s" * 48
        return separator.join(deployed(template, part) for part in parts)
    if function == "Ref":
        assert resources[argument]["Type"] in ("AWS::DynamoDB::GlobalTable", "AWS::S3::Bucket")
        return f"Tokex-{argument}-{'R' * 13}"[: 63 if "Bucket" in argument else 255].lower()
    if function == "Fn::GetAtt" and argument[1] == "Arn":
        return f"arn:aws:kms:ap-southeast-5:123456789012:key/mrk-{uuid.uuid4().hex}"
    assert argument[1] == "DomainName", value
    return "d1a2b3c4d5e6f7.cloudfront.net"


def test_the_bound_is_at_least_what_lambda_counts_once_deployed(tmp_path: Path) -> None:
    stack, template = synth(
        tmp_path,
        {
            "domainName": LONG_DOMAIN,
            "certificateArn": CERTIFICATE,
            "instanceTagsRoleName": "platform/security/tokex-instance-tags",
            "trustedIssuers": eks_issuers(8),
        },
    )
    [exchange] = [
        r
        for lid, r in template["Resources"].items()
        if lid.startswith("ExchangeFunction") and r["Type"] == "AWS::Lambda::Function"
    ]
    variables = exchange["Properties"]["Environment"]["Variables"]
    measured = len(
        json.dumps({k: deployed(template, v) for k, v in variables.items()}, separators=(",", ":"))
    )
    # Lambda escapes every quote of the issuers' JSON: counted, not their compact length.
    assert '\\"' in json.dumps(variables["TOKEX_TRUSTED_ISSUERS"])
    assert measured <= stack.exchange.environment_bytes <= measured + 150


def test_an_environment_over_4_kb_fails_synth_naming_what_takes_the_room(tmp_path: Path) -> None:
    """15 EKS issuers, 2,556 bytes of compact JSON, passed the synth's old check of the
    issuers alone (2,560), and with every STS Region and a long domain Lambda, counting
    the issuers' escaped JSON with the rest, refused the function halfway through the
    deploy."""
    context = {
        "domainName": LONG_DOMAIN,
        "certificateArn": CERTIFICATE,
        "stsRegions": ",".join(AWS_REGIONS),
        "instanceTagsRoleName": "tokex-instance-tags",
    }
    fitting = synth(tmp_path / "fitting", {**context, "trustedIssuers": eks_issuers(10)})[0]
    assert fitting.exchange.environment_bytes <= LAMBDA_ENVIRONMENT_BYTES
    issuers = eks_issuers(15)
    assert len(json.dumps(issuers, separators=(",", ":"))) <= 2560
    context["trustedIssuers"] = issuers
    with pytest.raises(ConfigError) as refused:
        build_app(context=context, post_cli_context=OFFLINE, outdir=str(tmp_path / "over"))
    message = str(refused.value)
    assert message.startswith("the Exchange function's environment would be up to ")
    assert f"over Lambda's {LAMBDA_ENVIRONMENT_BYTES}" in message
    assert re.search(r"largest are TOKEX_TRUSTED_ISSUERS \(\d+ bytes\)", message)


def test_a_value_with_no_known_bound_is_a_synth_error_not_a_guess() -> None:
    stack = Stack(App(), "Probe")
    parameter = ssm.StringParameter(stack, "Parameter", string_value="x")
    with pytest.raises(ValueError, match="no size bound for an environment value"):
        environment_sizes(stack, {"FROM_SSM": parameter.string_value})
