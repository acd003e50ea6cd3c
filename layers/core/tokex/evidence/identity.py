"""The typed result of verifying a caller's evidence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallerIdentity:
    """Who STS says the caller is.

    principal_arn: canonical principal (contract `sub`): the role ARN for an assumed-role
        session (`arn:aws:iam::<acct>:role/<path/name>`), the user ARN for an IAM user.
    arn: the caller ARN exactly as STS returned it.
    user_id: STS `UserId` (e.g. `AROA...:session` or `AIDA...`).
    principal_id: the unique id of the role or user (the part of UserId before `:`).
    session_name: the role session name (assumed roles only).
    """

    principal_arn: str
    arn: str
    account: str
    user_id: str
    principal_id: str
    partition: str
    session_name: str | None = None

    @property
    def is_assumed_role(self) -> bool:
        return self.session_name is not None


@dataclass(frozen=True)
class InstanceIdentity:
    """Fields of an EC2 instance identity document whose AWS signature was verified.

    `variant` is which signature verified it (`rsa2048`, `pkcs7` or `signature`) and
    `certificate` names the pinned certificate used (e.g. `rsa2048/us-east-1`).
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
