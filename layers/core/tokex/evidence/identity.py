"""The typed result of verifying a caller's evidence."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

# The evidence an identity came from (identifiers.EVIDENCE_KINDS): a signed
# GetCallerIdentity request, an AWS outbound identity federation JWT, an EKS
# service-account token.
SIGV4 = "sigv4"
AWS_OIF = "aws-oif"
EKS = "eks"


@dataclass(frozen=True)
class WorkloadAttributes:
    """What an AWS outbound identity federation token says about the session that asked
    for it, besides the principal (docs/contract.md "JWT evidence"). Absent = the token
    did not carry it. `principal_tags` are IAM's aws:PrincipalTag: a tagged session's
    tags take precedence over its role's. `request_tags` are chosen by the caller when it
    asks for the token: they prove nothing about who it is."""

    source_region: str | None = None
    org_id: str | None = None
    ou_paths: tuple[str, ...] = ()
    principal_tags: Mapping[str, str] = field(default_factory=dict)
    request_tags: Mapping[str, str] = field(default_factory=dict)
    lambda_function_arn: str | None = None
    ec2_instance_arn: str | None = None
    source_vpc: str | None = None
    # How the EC2 instance's role credentials were delivered: "1.0" (IMDSv1) or "2.0".
    imds_version: str | None = None
    source_identity: str | None = None


@dataclass(frozen=True)
class EksWorkload:
    """A pod's service account, from an EKS cluster's token. Account, Region and cluster
    come from the trusted issuer's configuration: the token itself names none of them."""

    account: str
    region: str
    cluster: str
    namespace: str
    service_account: str
    pod: str | None = None

    @property
    def principal(self) -> str:
        """The one principal form of an EKS workload (docs/contract.md "JWT evidence"):
        `eks:<account>:<region>:<cluster>:<namespace>:<service-account>`. It never starts
        with `arn:`, so no IAM principal pattern can match it."""
        return ":".join(
            ("eks", self.account, self.region, self.cluster, self.namespace, self.service_account)
        )


@dataclass(frozen=True)
class CallerIdentity:
    """Who the evidence says the caller is.

    principal_arn: canonical principal (contract `sub`): the role ARN for an assumed-role
        session, path-less (`arn:aws:iam::<acct>:role/<name>`: STS never reveals the
        role's path), the user ARN for an IAM user; for EKS evidence the EKS principal
        (`EksWorkload.principal`), never an ARN.
    arn: the caller ARN exactly as STS returned it (SigV4), the principal ARN (AWS OIF),
        empty for EKS.
    user_id: STS `UserId` (e.g. `AROA...:session` or `AIDA...`); empty for JWT evidence.
    principal_id: the unique id of the role or user (the part of UserId before `:`);
        empty for JWT evidence, which does not carry it.
    session_name: the role session name (assumed roles, SigV4 only).
    evidence: which kind of evidence proved it (SIGV4, AWS_OIF, EKS).
    workload: what an AWS OIF token adds; eks: the EKS workload.
    """

    principal_arn: str
    arn: str
    account: str
    user_id: str
    principal_id: str
    partition: str
    session_name: str | None = None
    evidence: str = SIGV4
    workload: WorkloadAttributes | None = None
    eks: EksWorkload | None = None


@dataclass(frozen=True)
class InstanceIdentity:
    """Fields of an EC2 instance identity document whose AWS signature was verified.

    `variant` is which signature verified it (`rsa2048`, `pkcs7` or `signature`) and
    `certificate` names the pinned certificate used (e.g. `rsa2048/us-east-1`).
    `pending_time` is the document's `pendingTime` (UTC): when the instance last entered
    `pending`, at its launch or its last start; None when the document has none in AWS's
    form.
    """

    instance_id: str
    account: str
    region: str
    availability_zone: str
    image_id: str
    instance_type: str
    variant: str
    certificate: str
    # Set once the evidence has been bound to the SigV4 caller (same account, and same
    # instance for an instance-profile session).
    bound: bool = False
    pending_time: datetime | None = None

    def claims(self) -> dict[str, str]:
        """The contract's `aws.instance` claim."""
        return {
            "id": self.instance_id,
            "account": self.account,
            "region": self.region,
            "availability_zone": self.availability_zone,
            "image_id": self.image_id,
            "instance_type": self.instance_type,
        }
