"""JWT evidence in `tokex local` (docs/local.md "JWT evidence"): the demo account's AWS
outbound identity federation issuer with its STS-compatible `GetWebIdentityToken`, and the
demo EKS cluster's issuer with the demo pod's service-account token file.

The demo sessions the emulated STS knows are those `tokex local` made (their secrets are
its own): the demo workload (an EC2 instance-profile session of the demo instance), the
demo IAM user, and the two demo Lambda functions' sessions of one role.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokex.local.eks_token import EksTokenFile
from tokex.local.oidc_issuers import LocalIssuer, eks_issuer, oif_issuer
from tokex.local.oif import OifEmulator, OifSession
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_INSTANCE_ID,
    DEMO_LAMBDA_ROLE_ARN,
    DEMO_ROLE_ARN,
    DEMO_USER_NAME,
    REGION,
    LocalDeployment,
    lambda_function_arn,
)
from tokex.local.sts_endpoint import StsEndpoint

EKS_TOKEN_FILE = "eks-token"
# The IMDS emulator serves IMDSv2 only (tokex.local.imds): role credentials delivered by v2.
EC2_ROLE_DELIVERY = "2.0"


@dataclass(frozen=True)
class LocalFederation:
    oif_issuer: LocalIssuer
    eks_issuer: LocalIssuer
    oif: OifEmulator
    sts: StsEndpoint
    eks_token: EksTokenFile

    @property
    def sts_url(self) -> str:
        return self.sts.url

    def documents(self, origin: str) -> dict[str, bytes]:
        """Both issuers' discovery documents and JWKS, by their path on the front."""
        return {**self.oif_issuer.documents(origin), **self.eks_issuer.documents(origin)}

    def stop(self) -> None:
        self.eks_token.stop()
        self.sts.stop()


def start_federation(
    tokex_issuer: str, deployment: LocalDeployment, state_dir: Path
) -> LocalFederation:
    """Keys, the STS-compatible endpoint (passing all but GetWebIdentityToken to the
    emulator) and the EKS token file; the issuers' documents are served by the front."""
    oif = oif_issuer(tokex_issuer)
    eks = eks_issuer(tokex_issuer)
    emulator = OifEmulator(oif, demo_sessions(deployment))
    sts = StsEndpoint(emulator, deployment.endpoint_url)
    try:
        token = EksTokenFile(state_dir / EKS_TOKEN_FILE, eks, audience=tokex_issuer)
    except BaseException:
        sts.stop()
        raise
    return LocalFederation(oif, eks, emulator, sts, token)


def demo_sessions(deployment: LocalDeployment) -> list[OifSession]:
    instance_arn = f"arn:aws:ec2:{REGION}:{ACCOUNT_ID}:instance/{DEMO_INSTANCE_ID}"
    sessions = [
        OifSession(
            deployment.workload,
            DEMO_ROLE_ARN,
            ec2_instance_arn=instance_arn,
            ec2_role_delivery=EC2_ROLE_DELIVERY,
        ),
        OifSession(deployment.user, f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"),
    ]
    sessions += [
        OifSession(credentials, DEMO_LAMBDA_ROLE_ARN, lambda_function_arn=lambda_function_arn(name))
        for name, credentials in deployment.lambdas.items()
    ]
    return sessions
