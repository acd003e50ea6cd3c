"""Creates a complete tokex deployment inside the emulator.

Everything is made while moto still accepts unsigned calls; then signature checking is
switched on, and from there every call (tokex's own KMS, DynamoDB and S3 calls, and the
forwarded GetCallerIdentity) must carry a valid SigV4 signature of a moto IAM identity.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3

from tokex.adapters.policy_table import PolicyStore, create_table
from tokex.adapters.state_table.schema import create_state_table
from tokex.local.emulator import set_signature_checking
from tokex.policy.model import Policy

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
DEMO_ROLE_NAME = "demo-workload"
DEMO_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{DEMO_ROLE_NAME}"
DEMO_USER_NAME = "demo-user"
# The demo workload's role session is named like an EC2 instance-profile session: the
# instance id of the emulated instance (see tokex.local.imds).
DEMO_INSTANCE_ID = "i-0123456789abcdef0"
DEMO_AUDIENCE = "demo-api"
DEMO_INSTANCE_AUDIENCE = "demo-instance-api"
DEMO_SCOPES = ("demo:read", "demo:write")
# Two demo Lambda functions sharing one execution role: only the AWS outbound identity
# federation token's `lambda_source_function_arn` tells them apart (tokex.local.oif).
# Lambda names an execution role's session after the function.
DEMO_LAMBDA_ROLE_NAME = "demo-lambda"
DEMO_LAMBDA_ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/{DEMO_LAMBDA_ROLE_NAME}"
DEMO_LAMBDA_FUNCTIONS = ("tokex-demo-a", "tokex-demo-b")
DEMO_LAMBDA_AUDIENCE = "demo-lambda-api"
# The demo EKS cluster whose issuer mints the demo service-account token (local/eks_token.py).
DEMO_CLUSTER = "tokex-local"
DEMO_EKS_NAMESPACE = "demo"
DEMO_EKS_SERVICE_ACCOUNT = "api"
DEMO_EKS_POD = "api-0"


def lambda_function_arn(name: str, region: str = REGION) -> str:
    return f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"


DEMO_POLICY = {
    "id": "demo-workload",
    "description": "the demo workload may call the demo API",
    "effect": "allow",
    "principals": [DEMO_ROLE_ARN, f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"],
    "audiences": [DEMO_AUDIENCE],
    "scopes": list(DEMO_SCOPES),
    "max_ttl_seconds": 900,
    "claims": {"environment": "local"},
}
# Only for a caller that also proves, with instance identity evidence bound to its SigV4
# identity, that it runs on an instance of this account in us-east-1.
DEMO_INSTANCE_POLICY = {
    "id": "demo-instance",
    "description": "the demo workload, on its EC2 instance, may call the instance API",
    "effect": "allow",
    "principals": [DEMO_ROLE_ARN],
    "audiences": [DEMO_INSTANCE_AUDIENCE],
    "scopes": ["instance:read"],
    "max_ttl_seconds": 600,
    "instance": {"required": True, "regions": [REGION], "accounts": [ACCOUNT_ID]},
}
# JWT evidence (docs/contract.md "JWT evidence"): an AWS outbound identity federation token
# of the demo workload or of either demo Lambda function...
DEMO_OIF_POLICY = {
    "id": "demo-oif",
    "description": "the demo workload and Lambda functions may call the demo API with AWS "
    "outbound identity federation tokens",
    "effect": "allow",
    "evidence": ["aws-oif"],
    "principals": [DEMO_ROLE_ARN, DEMO_LAMBDA_ROLE_ARN],
    "audiences": [DEMO_AUDIENCE],
    "scopes": list(DEMO_SCOPES),
    "max_ttl_seconds": 900,
}
# ...the demo service account's token of the demo EKS cluster...
DEMO_EKS_POLICY = {
    "id": "demo-eks",
    "description": "the demo EKS service account may call the demo API",
    "effect": "allow",
    "evidence": ["eks"],
    "eks": {
        "clusters": [f"{ACCOUNT_ID}:{REGION}:{DEMO_CLUSTER}"],
        "namespaces": [DEMO_EKS_NAMESPACE],
        "service_accounts": [DEMO_EKS_SERVICE_ACCOUNT],
    },
    "audiences": [DEMO_AUDIENCE],
    "scopes": ["demo:read"],
    "max_ttl_seconds": 900,
}
# ...and one Lambda function of the two that share a role, named by its function ARN.
DEMO_LAMBDA_POLICY = {
    "id": "demo-lambda-a",
    "description": "only the demo Lambda function tokex-demo-a may call the Lambda API",
    "effect": "allow",
    "evidence": ["aws-oif"],
    "principals": [DEMO_LAMBDA_ROLE_ARN],
    "workload": {"lambda_function_arns": [lambda_function_arn(DEMO_LAMBDA_FUNCTIONS[0])]},
    "audiences": [DEMO_LAMBDA_AUDIENCE],
    "scopes": ["lambda:invoke"],
    "max_ttl_seconds": 900,
}
DEMO_POLICIES = (DEMO_POLICY, DEMO_INSTANCE_POLICY)
DEMO_JWT_POLICIES = (DEMO_OIF_POLICY, DEMO_EKS_POLICY, DEMO_LAMBDA_POLICY)

# What tokex itself may do, as its Lambda roles would allow in a deployment.
_SERVICE_ACTIONS = [
    "kms:Sign",
    "kms:GetPublicKey",
    "kms:DescribeKey",
    "dynamodb:GetItem",
    "dynamodb:BatchGetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    # The admission write (tokex/adapters/state_table/admission.py). Real IAM authorises
    # a transaction's items as PutItem and UpdateItem; moto checks the operation's own name.
    "dynamodb:TransactWriteItems",
    "dynamodb:Scan",
    "dynamodb:Query",
    "dynamodb:DescribeTable",
    # The CLI's check that --table names the right table (cli/deployment.py), for the
    # operator identity operator.env holds.
    "dynamodb:DescribeTimeToLive",
    "s3:GetObject",
    "s3:PutObject",
    "s3:HeadObject",
    "s3:ListBucket",
    "iam:PassRole",
]


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expiration: float | None = None  # a role session's end (seconds since the epoch)

    def env(self) -> dict[str, str]:
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def session(self, region: str = REGION) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            aws_session_token=self.session_token,
            region_name=region,
        )


@dataclass(frozen=True)
class LocalDeployment:
    endpoint_url: str
    service: Credentials  # tokex itself (the Lambdas' role)
    workload: Credentials  # demo role session
    user: Credentials  # demo IAM user
    signing_key_arn: str
    key_ids: dict[str, str] = field(default_factory=dict)  # key spec -> key ARN
    policy_table: str = "tokex-policies"
    state_table: str = "tokex-state"
    jwks_bucket: str = "tokex-issuer"
    region: str = REGION
    # The demo Lambda functions' sessions of DEMO_LAMBDA_ROLE_ARN, by function name.
    lambdas: Mapping[str, Credentials] = field(default_factory=dict)
    # Its Regions, home first (`tokex local --regions`): each has tables of the same names
    # and a replica of every key, by Region then key spec (the home Region's: `key_ids`).
    regions: tuple[str, ...] = (REGION,)
    regional_key_ids: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # What the emulator's own API asks for (tests switch signature checks off and on).
    emulator_admin_token: str = field(default="", repr=False)

    def client(self, service: str, credentials: Credentials | None = None) -> Any:
        creds = credentials or self.service
        return creds.session(self.region).client(service, endpoint_url=self.endpoint_url)

    def in_region(self, region: str) -> LocalDeployment:
        """The deployment as one of its Regions sees it: that Region's clients, tables
        and key replicas (the same keys: a multi-Region key's replicas share its material)."""
        if region not in self.regions:
            raise ValueError(f"{region!r} is not one of this deployment's Regions")
        key_ids = dict(self.regional_key_ids.get(region, self.key_ids))
        signing_spec = next(s for s, arn in self.key_ids.items() if arn == self.signing_key_arn)
        return dataclasses.replace(
            self, region=region, key_ids=key_ids, signing_key_arn=key_ids[signing_spec]
        )

    def handler_env(self, issuer: str, **overrides: str) -> dict[str, str]:
        """Environment of the Lambda handlers (what the CDK app sets in a deployment)."""
        env = {
            **self.service.env(),
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "TOKEX_ISSUER": issuer,
            "TOKEX_TOKEN_ENDPOINT": f"{issuer}/token",
            "TOKEX_INTROSPECTION_ENDPOINT": f"{issuer}/introspect",
            "TOKEX_SIGNING_KEY_ID": self.signing_key_arn,
            "TOKEX_PUBLISHED_KEY_IDS": ",".join(
                arn for arn in self.key_ids.values() if arn != self.signing_key_arn
            ),
            "TOKEX_POLICY_TABLE": self.policy_table,
            "TOKEX_STATE_TABLE": self.state_table,
            # Generous: test suites exchange hundreds of times a minute as the demo role.
            "TOKEX_RATE_LIMIT_PER_MINUTE": "1000",
            "TOKEX_JWKS_BUCKET": self.jwks_bucket,
            "TOKEX_STS_CONNECT_OVERRIDE": self.endpoint_url,
            "POWERTOOLS_SERVICE_NAME": "tokex",
            "POWERTOOLS_METRICS_NAMESPACE": "tokex",
            "POWERTOOLS_TRACE_DISABLED": "true",
        }
        env.update(overrides)
        return env


def provision(
    endpoint_url: str,
    *,
    admin_token: str,
    signing_key_spec: str = "RSA_2048",
    policies: list[dict[str, Any]] | None = None,
    regions: Sequence[str] = (REGION,),
) -> LocalDeployment:
    """Create IAM identities, keys, tables, bucket and demo policies; then require SigV4.

    `regions`, home first: the bucket, the demo policies and every primary key are the home
    Region's; each Region has the two tables. With several Regions the keys are
    multi-Region keys, replicated to every other Region."""
    admin = Credentials("AKIAIOSFODNN7SETUP00", "setup-only-secret")  # auth is still off
    home, *others = regions

    def client(service: str, region: str = home) -> Any:
        return admin.session(region).client(service, endpoint_url=endpoint_url)

    iam, kms, dynamodb = client("iam"), client("kms"), client("dynamodb")
    service = _iam_user(iam, "tokex-service", _SERVICE_ACTIONS, "*")
    user = _iam_user(iam, DEMO_USER_NAME, ["sts:AssumeRole"], DEMO_ROLE_ARN)
    _role(iam, DEMO_ROLE_NAME)
    sts = user.session().client("sts", endpoint_url=endpoint_url)
    workload = _assume(sts, DEMO_ROLE_ARN, DEMO_INSTANCE_ID)
    _role(iam, DEMO_LAMBDA_ROLE_NAME)
    lambdas = {
        name: _assume(client("sts"), DEMO_LAMBDA_ROLE_ARN, name) for name in DEMO_LAMBDA_FUNCTIONS
    }

    key_ids: dict[str, dict[str, str]] = {region: {} for region in regions}
    for spec in dict.fromkeys((signing_key_spec, "RSA_2048", "ECC_NIST_P256")):
        key = kms.create_key(
            KeySpec=spec,
            KeyUsage="SIGN_VERIFY",
            Description=f"tokex local {spec}",
            # Several Regions sign with one key (one JWKS, one kid): a key of the same
            # material in each, as multi-Region keys are; one Region keeps today's key.
            **({"MultiRegion": True} if others else {}),
        )["KeyMetadata"]
        key_ids[home][spec] = key["Arn"]
        for region in others:
            # The key id: moto's ReplicateKey finds no key by ARN (AWS takes either).
            replica = kms.replicate_key(KeyId=key["KeyId"], ReplicaRegion=region)
            key_ids[region][spec] = replica["ReplicaKeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/tokex-signing", TargetKeyId=key_ids[home][signing_key_spec])

    deployment = LocalDeployment(
        endpoint_url=endpoint_url,
        service=service,
        workload=workload,
        user=user,
        signing_key_arn=key_ids[home][signing_key_spec],
        key_ids=key_ids[home],
        region=home,
        lambdas=lambdas,
        regions=tuple(regions),
        regional_key_ids=key_ids if others else {},
        emulator_admin_token=admin_token,
    )
    for region in regions:
        create_table(client("dynamodb", region), deployment.policy_table)
        create_state_table(client("dynamodb", region), deployment.state_table)
    # Outside us-east-1, CreateBucket names the bucket's Region.
    where: dict[str, Any] = {}
    if home != "us-east-1":
        where["CreateBucketConfiguration"] = {"LocationConstraint": home}
    client("s3").create_bucket(Bucket=deployment.jwks_bucket, **where)
    # The home Region's table only: replication brings them to the others (tokex local).
    store = PolicyStore(dynamodb, deployment.policy_table)
    for document in [*DEMO_POLICIES, *DEMO_JWT_POLICIES] if policies is None else policies:
        store.put(Policy.from_document(document))

    set_signature_checking(endpoint_url, on=True, admin_token=admin_token)
    return deployment


def _role(iam: Any, name: str) -> None:
    """A role any identity of the demo account may assume, for sessions up to 12 hours."""
    iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_ID}:root"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
        MaxSessionDuration=43200,
    )


def _assume(sts: Any, role_arn: str, session_name: str) -> Credentials:
    session = sts.assume_role(
        RoleArn=role_arn, RoleSessionName=session_name, DurationSeconds=43200
    )["Credentials"]
    return Credentials(
        session["AccessKeyId"],
        session["SecretAccessKey"],
        session["SessionToken"],
        expiration=session["Expiration"].timestamp(),
    )


def _iam_user(iam: Any, name: str, actions: list[str], resource: str) -> Credentials:
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName=f"{name}-policy",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resource}],
            }
        ),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Credentials(key["AccessKeyId"], key["SecretAccessKey"])
