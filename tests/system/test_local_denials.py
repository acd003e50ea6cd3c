"""The emulator's answer to a signed request its identity may not make, as the SDK reads it
(docs/local.md "Files in the state directory"): AWS's code and message in the service's
own protocol, not moto's query-protocol XML, which botocore cannot read from a JSON
service and reported as a bare "403"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tokex.local.provision import ACCOUNT_ID, DEMO_INSTANCE_ID, Credentials
from tokex.local.runner import LocalSystem

WORKLOAD = f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-workload/{DEMO_INSTANCE_ID}"
SERVICE = f"arn:aws:iam::{ACCOUNT_ID}:user/tokex-service"


def _refusal(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as refused:
        call()
    response = refused.value.response
    error = response["Error"]
    return response["ResponseMetadata"]["HTTPStatusCode"], error["Code"], error["Message"]


def test_a_json_service_denies_in_json_as_aws_does(local_system: LocalSystem) -> None:
    """An operator command with workload.env's credentials (a DynamoDB Scan), and the key
    disabled by tokex's own identity, which may not: `AccessDeniedException` with its
    message, where botocore saw only "403" and the XML as the message."""
    deployment = local_system.deployment
    dynamodb = deployment.client("dynamodb", deployment.workload)
    status, code, message = _refusal(lambda: dynamodb.scan(TableName=deployment.policy_table))
    assert (status, code) == (400, "AccessDeniedException")
    assert message == f"User: {WORKLOAD} is not authorized to perform: dynamodb:Scan"

    kms = deployment.client("kms", deployment.service)
    status, code, message = _refusal(lambda: kms.disable_key(KeyId=deployment.signing_key_arn))
    assert (status, code) == (400, "AccessDeniedException")
    assert message == f"User: {SERVICE} is not authorized to perform: kms:DisableKey"


@pytest.mark.parametrize("service", ["dynamodb", "kms"])
def test_a_json_service_refuses_a_wrong_key_or_secret_in_json_as_aws_does(
    local_system: LocalSystem, service: str
) -> None:
    """An env file of an earlier run (its keys unknown now) or a mistyped secret: the codes
    botocore reads and tokex's operator commands explain, where moto's XML was "403"."""
    deployment = local_system.deployment
    service_keys = deployment.service
    list_all = {"dynamodb": "list_tables", "kms": "list_keys"}[service]

    def refusal_with(credentials: Credentials) -> tuple[int, str, str]:
        return _refusal(getattr(deployment.client(service, credentials), list_all))

    status, code, message = refusal_with(
        replace(service_keys, access_key_id="AKIAUNKNOWNUNKNOWN00")
    )
    assert (status, code) == (400, "UnrecognizedClientException")
    assert message == "The security token included in the request is invalid."
    status, code, message = refusal_with(
        replace(service_keys, secret_access_key="not-" + service_keys.secret_access_key)
    )
    assert (status, code) == (400, "InvalidSignatureException")
    assert message.startswith("The request signature we calculated does not match")


def test_a_query_protocol_service_still_denies_in_xml(local_system: LocalSystem) -> None:
    """IAM (the query protocol, as STS): moto's `AccessDenied` is AWS's answer already."""
    deployment = local_system.deployment
    iam = deployment.client("iam", deployment.workload)
    status, code, message = _refusal(iam.list_users)
    assert (status, code) == (403, "AccessDenied")
    assert message == f"User: {WORKLOAD} is not authorized to perform: iam:ListUsers"
    unknown = replace(deployment.workload, access_key_id="ASIAUNKNOWNUNKNOWN00")
    status, code, _ = _refusal(deployment.client("iam", unknown).list_users)
    assert (status, code) == (403, "InvalidClientTokenId")
