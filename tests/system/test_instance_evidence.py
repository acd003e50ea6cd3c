"""IMDS evidence through the running system: read from the local IMDSv2 emulator, verified
against the (local-only) pinned certificate, bound to the SigV4 caller
(docs/security.md "Known attacks", group 7, end to end; the byte-level cases are unit
tests)."""

from __future__ import annotations

import json

import pytest

from tests.system.endpoints import assert_refused, audit_lines, exchange, sign, verify
from tokex.client.imds import encode_instance_evidence, read_instance_identity
from tokex.local.imds import DEMO_DOCUMENT
from tokex.local.provision import DEMO_INSTANCE_AUDIENCE, DEMO_INSTANCE_ID, DEMO_ROLE_ARN


def evidence_for(system, **changes) -> str:
    document = json.dumps({**DEMO_DOCUMENT, **changes}, indent=2)
    return encode_instance_evidence({"document": document, "rsa2048": system.imds.sign(document)})


def test_instance_policy_grants_with_bound_evidence_from_imdsv2(local_system):
    evidence = read_instance_identity(local_system.imds.url)
    status, _, body = exchange(
        local_system,
        audience=DEMO_INSTANCE_AUDIENCE,
        aws_instance_identity=encode_instance_evidence(evidence),
    )
    assert status == 200, body
    claims = verify(local_system, body["access_token"], audience=DEMO_INSTANCE_AUDIENCE)
    assert claims["aws"]["instance"] == {
        "id": DEMO_INSTANCE_ID,
        "account": "123456789012",
        "region": "us-east-1",
        "availability_zone": "us-east-1a",
        "image_id": "ami-0123456789abcdef0",
        "instance_type": "t4g.micro",
    }
    assert claims["policy"] == "demo-instance"


def test_instance_policy_without_evidence_is_invalid_target(local_system):
    assert_refused(
        lambda: exchange(local_system, audience=DEMO_INSTANCE_AUDIENCE),
        400,
        "invalid_target",
        "policy demo-instance requires instance evidence; "
        "policy demo-workload does not cover the audience",
    )


@pytest.mark.parametrize(
    "changes,reason,audit_reason",
    [
        ({"accountId": "210987654321"}, "account", "iid_account_mismatch"),
        ({"instanceId": "i-0fedcba9876543210"}, "instance", "iid_instance_mismatch"),
    ],
    ids=["other-account", "other-instance"],
)
def test_validly_signed_evidence_of_another_account_or_instance_is_refused(
    local_system, changes, reason, audit_reason
):
    evidence = evidence_for(local_system, **changes)
    with audit_lines() as audits:
        body = assert_refused(
            lambda: exchange(
                local_system, audience=DEMO_INSTANCE_AUDIENCE, aws_instance_identity=evidence
            ),
            400,
            "invalid_grant",
            audit_reason,
        )
    assert reason in body["error_description"]
    # The audit line names the document presented (AWS-signed: replaying another
    # instance's is what an operator looks for) and the session that presented it.
    presented = {**DEMO_DOCUMENT, **changes}
    [audit] = audits
    assert {
        field: audit.get(field)
        for field in (
            "principal",
            "account",
            "session_name",
            "instance",
            "instance_account",
            "instance_region",
        )
    } == {
        "principal": DEMO_ROLE_ARN,
        "account": DEMO_DOCUMENT["accountId"],
        "session_name": DEMO_INSTANCE_ID,
        "instance": presented["instanceId"],
        "instance_account": presented["accountId"],
        "instance_region": "us-east-1",
    }


def test_document_swapped_under_a_valid_signature_is_refused(local_system):
    genuine = read_instance_identity(local_system.imds.url)
    forged = genuine["document"].replace("t4g.micro", "m7g.large")
    evidence = encode_instance_evidence({"document": forged, "rsa2048": genuine["rsa2048"]})
    assert_refused(
        lambda: exchange(
            local_system, audience=DEMO_INSTANCE_AUDIENCE, aws_instance_identity=evidence
        ),
        400,
        "invalid_grant",
        "iid_signature_invalid",
    )


def test_evidence_from_an_iam_user_of_the_same_account_binds_by_account(local_system):
    # An IAM user is not an instance-profile session: only the account must agree. The
    # instance policy names only the role, so the user still gets no instance token...
    signed = sign(local_system, credentials=local_system.deployment.user)
    evidence = encode_instance_evidence(read_instance_identity(local_system.imds.url))
    assert_refused(
        lambda: exchange(
            local_system,
            signed=signed,
            audience=DEMO_INSTANCE_AUDIENCE,
            aws_instance_identity=evidence,
        ),
        400,
        "invalid_target",
        "policy demo-workload does not cover the audience",
    )
    # ...while a policy without instance conditions ignores the (bound) evidence.
    signed = sign(local_system, credentials=local_system.deployment.user)
    status, _, body = exchange(local_system, signed=signed, aws_instance_identity=evidence)
    assert status == 200, body
    assert verify(local_system, body["access_token"])["aws"]["instance"]["id"] == DEMO_INSTANCE_ID


def test_malformed_evidence_parameter_is_invalid_request(local_system):
    assert_refused(
        lambda: exchange(local_system, aws_instance_identity="%%%"),
        400,
        "invalid_request",
        "aws_instance_identity is not valid base64url",
    )
