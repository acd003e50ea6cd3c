"""The KMS asymmetric key that signs every token, with a least-privilege key policy.

The key policy delegates key *administration* to the account's IAM (so operators can
manage and rotate it), but no cryptographic operation: `kms:Sign` is allowed only to IAM
principals whose ARN is the exchange role's, so even an account administrator with
`kms:*` in an identity policy cannot mint tokens without changing the key policy first
(which CloudTrail records). The roles still need their own identity policy statements.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

# KeySpec -> the only KMS SigningAlgorithm the exchange uses with it (RS256 / ES256,
# RFC 7518 §3.3/§3.4); pinned in the policies so the key cannot sign anything else.
SIGNING_ALGORITHMS = {
    "RSA_2048": "RSASSA_PKCS1_V1_5_SHA_256",
    "ECC_NIST_P256": "ECDSA_SHA_256",
}

# Administration only: no Sign, Verify, Encrypt, Decrypt, ReEncrypt or GenerateDataKey.
# (Describe*/Get* include DescribeKey and GetPublicKey: the public key is public.)
KEY_ADMIN_ACTIONS = [
    "kms:CancelKeyDeletion",
    # Not `kms:Create*`: that includes CreateGrant, and a grant can give Sign to anyone,
    # past this policy's conditions. Grants are denied outright below.
    "kms:CreateAlias",
    "kms:Delete*",
    "kms:Describe*",
    "kms:Disable*",
    "kms:Enable*",
    "kms:Get*",
    "kms:List*",
    "kms:Put*",
    "kms:Revoke*",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:Update*",
]


class SigningKey(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, key_spec: str, alias_name: str
    ) -> None:
        super().__init__(scope, construct_id)
        self.key_spec = key_spec
        self.signing_algorithm = SIGNING_ALGORITHMS[key_spec]
        self.key = kms.Key(
            self,
            "Key",
            description="tokex token signing key (asymmetric, SIGN_VERIFY)",
            key_spec=kms.KeySpec(key_spec),
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            # Asymmetric KMS keys cannot rotate automatically; rotation means a new key
            # published in the JWKS before it signs (see docs/deploy.md).
            enable_key_rotation=False,
            # Deleting the key would make every issued token unverifiable: keep it.
            removal_policy=RemovalPolicy.RETAIN,
            policy=iam.PolicyDocument(
                statements=[
                    iam.PolicyStatement(
                        sid="KeyAdministrationByAccountIam",
                        principals=[iam.AccountRootPrincipal()],
                        actions=KEY_ADMIN_ACTIONS,
                        resources=["*"],
                    ),
                    iam.PolicyStatement(
                        sid="NoGrants",
                        effect=iam.Effect.DENY,
                        principals=[iam.AnyPrincipal()],
                        actions=["kms:CreateGrant"],
                        resources=["*"],
                    ),
                ]
            ),
        )
        self.alias = kms.Alias(self, "Alias", alias_name=alias_name, target_key=self.key)

    def allow_signing(self, role: iam.IRole) -> None:
        """The exchange: kms:Sign (RAW, our algorithm only) and GetPublicKey for its `kid`."""
        conditions = {
            "StringEquals": {
                "kms:MessageType": "RAW",
                "kms:SigningAlgorithm": self.signing_algorithm,
            }
        }
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="SignOnlyAsTheExchangeRole",
                principals=[iam.AccountRootPrincipal()],
                actions=["kms:Sign"],
                resources=["*"],
                conditions={**conditions, "ArnEquals": {"aws:PrincipalArn": role.role_arn}},
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="SignTokens",
                actions=["kms:Sign"],
                resources=[self.key.key_arn],
                conditions=conditions,
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:GetPublicKey"],
                resources=[self.key.key_arn],
            )
        )

    def allow_public_key_read(self, role: iam.IRole) -> None:
        """The JWKS publisher: the public key and its description, nothing else."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:DescribeKey", "kms:GetPublicKey"],
                resources=[self.key.key_arn],
            )
        )

    def allow_verification(self, role: iam.IRole) -> None:
        """The introspect function: the public key only (it verifies, never signs)."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:GetPublicKey"],
                resources=[self.key.key_arn],
            )
        )


def allow_published_keys_read(role: iam.IRole, key_arns: Sequence[str]) -> None:
    """The publisher and the introspect function: the public keys of the other published
    keys (next and previous of a rotation). Their key policies must let this account's
    IAM grant kms:GetPublicKey (the default key policy does)."""
    if key_arns:
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadPublishedPublicKeys",
                actions=["kms:GetPublicKey"],
                resources=list(key_arns),
            )
        )
