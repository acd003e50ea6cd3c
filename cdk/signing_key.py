"""The KMS asymmetric keys that sign tokens, with least-privilege key policies.

A stack holds one or two key *slots* (context `signingKeys`): slot "a" is the key every
stack has had from the start (construct `SigningKey`, alias `alias/tokex/<stack>/signing`;
its construct path must never change, or CloudFormation would replace the key), slot "b"
the second key of a rotation (`SigningKeyB`, alias `.../signing-b`). Every slot's key is
published (the publisher and the introspect function read its public key); exactly one,
the active slot (`activeSigningKey`), signs.

KMS cannot change a key's spec, and CloudFormation does not replace a key whose `KeySpec`
changes: the update fails. So the key's construct id names its spec (`key_construct_id`),
and another `signingKeySpec` is another resource: CloudFormation creates the new key,
moves the slot's alias to it (an in-place update: both are asymmetric SIGN_VERIFY keys),
and the old key leaves the template, retained. The alias's construct id never changes: a
second alias resource of the same name could not be created.

Each key policy delegates key *administration* to the account's IAM (so operators can
manage it), but no cryptographic operation: only the active key's policy allows
`kms:Sign`, and only to IAM principals whose ARN is the exchange role's, so even an
account administrator with `kms:*` in an identity policy cannot mint tokens without
changing the key policy first (which CloudTrail records), and a published key that is
not active cannot sign at all. The roles still need their own identity policy statements.

Zero-downtime switches (why the grants are per-slot policies, and the ordering): each
slot's identity-policy statements live in their own `AWS::IAM::Policy`, which exists
exactly as long as the slot (or, for signing, its being active) does, and each function
depends on the policies it needs. CloudFormation creates and updates resources in
dependency order and deletes the ones a template no longer has only in its cleanup phase,
after every update. So when the active slot changes, the new key's Sign statement and
grant exist before the exchange is told the new key id; the old key's key-policy Sign
statement goes after the exchange was switched (an inactive key depends on the exchange
function), and the old grant in the cleanup phase. When a slot is removed, the readers
are updated before its grants go. The roles' default policies depend on the slot policies
too, so a stack that had its key grants in the default policies (before slots existed)
gets the new policies before the old statements are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from tokex import identifiers

# KeySpec -> the only KMS SigningAlgorithm the exchange uses with it (RS256 / ES256,
# tokex/identifiers.py); pinned in the policies so the key cannot sign anything else.
SIGNING_ALGORITHMS = {
    spec: identifiers.KMS_SIGNING_ALGORITHMS[alg]
    for spec, alg in identifiers.SIGNING_KEY_SPECS.items()
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


# A multi-Region key's administrators may also move its primary Region; and replicate it
# (CloudFormation creates each Regional replica as the deploying principal), but only into
# the deployment's own Regions (`ReplicateOnlyIntoTheDeploymentsRegions`): a replica is a
# key with the same material, so the same `kid`, under a key policy its creator chooses,
# and one in any other Region would let an IAM administrator sign tokens every verifier
# accepts without changing a key policy of ours.
MULTI_REGION_ADMIN_ACTIONS = ["kms:UpdatePrimaryRegion"]


def slot_construct_id(slot: str) -> str:
    """`SigningKey` for slot "a" (the construct id every stack has had), `SigningKeyB`,
    `SigningKeyMrkA`..."""
    if slot == "a":
        return "SigningKey"
    return "SigningKey" + "".join(part.capitalize() for part in slot.split("-"))


def key_construct_id(key_spec: str) -> str:
    """`Key` for RSA_2048, the default (the construct id every RSA key has had, so a
    default stack keeps its key), else with the spec in it: `KeyEccNistP256`. Another
    spec is another key (module docstring)."""
    if key_spec == "RSA_2048":
        return "Key"
    return "Key" + "".join(part.capitalize() for part in key_spec.split("_"))


def grants_construct_id(name: str, key_spec: str) -> str:
    """A slot's grant policy on its key (`ExchangeGrants`...), named for the key's spec as
    the key is (`ExchangeGrantsEccNistP256`; RSA_2048 keeps the bare name every stack has
    had). Another spec is another key, so another policy: kept with one name, the policy
    would be updated in place to the new key before the exchange function is, and warm
    environments still signing with the old key would lose `kms:Sign` on it. As its own
    resource, the old policy goes in the cleanup phase, after the function's update."""
    return name + key_construct_id(key_spec).removeprefix("Key")


def slot_alias_name(stack_name: str, slot: str) -> str:
    base = f"alias/tokex/{stack_name}/signing"
    return base if slot == "a" else f"{base}-{slot}"


class SigningKey(Construct):
    """One key slot: the KMS key, its alias, and the grants on it (each an IAM policy of
    its own, see the module docstring)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key_spec: str,
        alias_name: str,
        multi_region: bool = False,
        primary_key_arn: str | None = None,
        replica_regions: Sequence[str] = (),
    ) -> None:
        """A new key, or (`primary_key_arn`) the Regional replica of a multi-Region key:
        the same key material, so the same public key and `kid` (docs/multi-region.md).
        `replica_regions`: the only Regions a multi-Region key may be replicated into."""
        super().__init__(scope, construct_id)
        self.key_spec = key_spec
        self.signing_algorithm = SIGNING_ALGORITHMS[key_spec]
        replicated = bool(multi_region or primary_key_arn)
        admin_actions = KEY_ADMIN_ACTIONS + (MULTI_REGION_ADMIN_ACTIONS if replicated else [])
        statements = [
            iam.PolicyStatement(
                sid="KeyAdministrationByAccountIam",
                principals=[iam.AccountRootPrincipal()],
                actions=admin_actions,
                resources=["*"],
            )
        ]
        if replicated and replica_regions:
            statements.append(
                iam.PolicyStatement(
                    sid="ReplicateOnlyIntoTheDeploymentsRegions",
                    principals=[iam.AccountRootPrincipal()],
                    actions=["kms:ReplicateKey"],
                    resources=["*"],
                    conditions={"StringEquals": {"kms:ReplicaRegion": sorted(replica_regions)}},
                )
            )
        statements.append(
            iam.PolicyStatement(
                sid="NoGrants",
                effect=iam.Effect.DENY,
                principals=[iam.AnyPrincipal()],
                actions=["kms:CreateGrant"],
                resources=["*"],
            )
        )
        policy = iam.PolicyDocument(statements=statements)
        if primary_key_arn is None:
            key = kms.Key(
                self,
                key_construct_id(key_spec),
                description="tokex token signing key (asymmetric, SIGN_VERIFY)",
                key_spec=kms.KeySpec(key_spec),
                key_usage=kms.KeyUsage.SIGN_VERIFY,
                # Asymmetric KMS keys cannot rotate automatically; rotation means a second
                # key slot published before it signs (see docs/deploy.md, Key rotation).
                enable_key_rotation=False,
                multi_region=multi_region or None,
                # Deleting the key would make every issued token unverifiable: keep it,
                # also when its slot is removed from the stack.
                removal_policy=RemovalPolicy.RETAIN,
                policy=policy,
            )
            self.key_resource: Construct = key
            self.key_arn = key.key_arn
            self._add_to_key_policy = key.add_to_resource_policy
            self.alias: Construct = kms.Alias(self, "Alias", alias_name=alias_name, target_key=key)
            return
        # A replica's key spec and usage are the primary's; its policy is its own. Its
        # construct id names the spec as the primary's does: another spec is a new
        # primary, so a new replica, and the old one leaves the template, retained.
        replica = kms.CfnReplicaKey(
            self,
            key_construct_id(key_spec),
            primary_key_arn=primary_key_arn,
            key_policy=policy,
            description="tokex token signing key, Regional replica (asymmetric, SIGN_VERIFY)",
        )
        replica.apply_removal_policy(RemovalPolicy.RETAIN)
        self.key_resource = replica
        self.key_arn = replica.attr_arn
        self._add_to_key_policy = policy.add_statements
        self.alias = kms.CfnAlias(
            self, "Alias", alias_name=alias_name, target_key_id=replica.attr_key_id
        )

    def allow_signing(self, role: iam.IRole, function: lambda_.Function) -> None:
        """The active slot, for the exchange: kms:Sign (RAW, our algorithm only) and
        GetPublicKey for its `kid`."""
        conditions = {
            "StringEquals": {
                "kms:MessageType": "RAW",
                "kms:SigningAlgorithm": self.signing_algorithm,
            }
        }
        self._add_to_key_policy(
            iam.PolicyStatement(
                sid="SignOnlyAsTheExchangeRole",
                principals=[iam.AccountRootPrincipal()],
                actions=["kms:Sign"],
                resources=["*"],
                conditions={**conditions, "ArnEquals": {"aws:PrincipalArn": role.role_arn}},
            )
        )
        self._grant(
            "ExchangeGrants",
            role,
            function,
            iam.PolicyStatement(
                sid="SignTokens",
                actions=["kms:Sign"],
                resources=[self.key_arn],
                conditions=conditions,
            ),
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:GetPublicKey"],
                resources=[self.key_arn],
            ),
        )

    def sign_only_after(self, exchange: lambda_.Function) -> None:
        """An inactive slot: its key (whose policy loses the Sign statement when the slot
        stops being active) is updated only after the exchange, which then already signs
        with the new active key."""
        self.key_resource.node.add_dependency(exchange)

    def allow_public_key_read(self, role: iam.IRole, function: lambda_.Function) -> None:
        """The JWKS publisher: the public key, nothing else (GetPublicKey names the key
        spec and algorithms too: no DescribeKey)."""
        self._grant(
            "PublisherGrants",
            role,
            function,
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:GetPublicKey"],
                resources=[self.key_arn],
            ),
        )

    def allow_verification(self, role: iam.IRole, function: lambda_.Function) -> None:
        """The introspect function: the public key only (it verifies, never signs)."""
        self._grant(
            "IntrospectGrants",
            role,
            function,
            iam.PolicyStatement(
                sid="ReadSigningPublicKey",
                actions=["kms:GetPublicKey"],
                resources=[self.key_arn],
            ),
        )

    def _grant(
        self,
        construct_id: str,
        role: iam.IRole,
        function: lambda_.Function,
        *statements: iam.PolicyStatement,
    ) -> None:
        """`statements` as an IAM policy of this slot on `role`, created before `function`
        is created or updated, and before the role's default policy is updated."""
        policy = iam.Policy(
            self,
            grants_construct_id(construct_id, self.key_spec),
            roles=[role],
            statements=list(statements),
        )
        function.node.add_dependency(policy)
        default_policy = role.node.try_find_child("DefaultPolicy")
        if default_policy is not None:
            default_policy.node.add_dependency(policy)


def allow_published_keys_read(role: iam.IRole, key_arns: Sequence[str]) -> None:
    """The publisher and the introspect function: the public keys of the other published
    keys (next and previous of a rotation) given by ARN, outside the stack. Their key
    policies must let this account's IAM grant kms:GetPublicKey (the default key policy
    does)."""
    if key_arns:
        role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadPublishedPublicKeys",
                actions=["kms:GetPublicKey"],
                resources=list(key_arns),
            )
        )
