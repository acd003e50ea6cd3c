"""`tokex local`'s STS-compatible endpoint (docs/local.md "JWT evidence"): boto3's own
`get_web_identity_token` gets a JWT of the local AWS outbound identity federation issuer
carrying the claims AWS documents, verifiable from the served JWKS alone; the SigV4 check
and the parameter rules refuse as STS does; every other action reaches moto unchanged."""

from __future__ import annotations

import datetime
import hashlib
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import jwt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError

from tests.system.local_federation import federation, refusal, sts_client, verify_issued
from tokex.evidence.jwt_claims import STS_NAMESPACE, caller_from_oif_claims
from tokex.evidence.trusted_issuers import TrustedIssuer
from tokex.local.oif import OifSession
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_INSTANCE_ID,
    DEMO_LAMBDA_FUNCTIONS,
    DEMO_LAMBDA_ROLE_ARN,
    DEMO_ROLE_ARN,
    DEMO_USER_NAME,
    Credentials,
    lambda_function_arn,
)
from tokex.local.runner import LocalSystem
from tokex.settings import Settings

ALGORITHMS = ["RS256", "ES384"]
INSTANCE_ARN = f"arn:aws:ec2:us-east-1:{ACCOUNT_ID}:instance/{DEMO_INSTANCE_ID}"
MISMATCH = "The request signature we calculated does not match the signature you provided"


def web_identity_token(system: LocalSystem, credentials=None, **params) -> dict:
    params.setdefault("Audience", [system.issuer])
    params.setdefault("SigningAlgorithm", "RS256")
    return sts_client(system, credentials).get_web_identity_token(**params)


def oif_claims(system: LocalSystem, token: str, audience: str | None = None) -> dict:
    issuer = federation(system).oif_issuer.url
    return verify_issued(token, issuer, audience or system.issuer, ALGORITHMS)


def refused_with(call) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    return refusal(raised.value)


# --- the token ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_boto3_gets_a_token_that_verifies_with_the_served_jwks(
    local_system: LocalSystem, algorithm: str
) -> None:
    answer = web_identity_token(
        local_system,
        SigningAlgorithm=algorithm,
        DurationSeconds=900,
        Tags=[{"Key": "job-id", "Value": "job 7"}, {"Key": "team", "Value": "data"}],
    )
    token = answer["WebIdentityToken"]
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    claims = oif_claims(local_system, token)

    assert claims["iss"] == f"{local_system.issuer}/_local/oif/{ACCOUNT_ID}"
    assert claims["sub"] == DEMO_ROLE_ARN
    assert claims["aud"] == local_system.issuer  # one audience: a string, as AWS's sample
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    assert answer["Expiration"] == datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC)
    assert claims[STS_NAMESPACE] == {
        "aws_account": ACCOUNT_ID,
        "source_region": "us-east-1",
        "principal_id": DEMO_ROLE_ARN,
        # The demo workload is the demo instance's instance-profile session (IMDSv2).
        "ec2_source_instance_arn": INSTANCE_ARN,
        "ec2_role_delivery": "2.0",
        "request_tags": {"job-id": "job 7", "team": "data"},
    }
    # The claims pass the exchange's own rules for an aws-oif issuer of the demo account.
    trusted = local_system_trusted(local_system, claims["iss"])
    caller = caller_from_oif_claims(trusted, claims)
    assert caller.principal_arn == DEMO_ROLE_ARN
    assert caller.workload is not None
    assert caller.workload.ec2_instance_arn == INSTANCE_ARN


def local_system_trusted(system: LocalSystem, issuer: str) -> TrustedIssuer:
    """What the local exchange's settings trust for `issuer`."""
    trusted = Settings.from_env(system.handler_env()).trusted_issuers.get(issuer)
    assert trusted is not None
    return trusted


def test_defaults_several_audiences_and_the_signed_region(local_system: LocalSystem) -> None:
    client = sts_client(local_system, region="eu-west-1")
    answer = client.get_web_identity_token(
        Audience=["https://api.example.com", "https://other.example.com"], SigningAlgorithm="RS256"
    )
    claims = jwt.decode(answer["WebIdentityToken"], options={"verify_signature": False})
    assert claims["aud"] == ["https://api.example.com", "https://other.example.com"]
    assert claims["exp"] - claims["iat"] == 300  # STS's default duration
    assert claims[STS_NAMESPACE]["source_region"] == "eu-west-1"  # the region signed for
    assert "request_tags" not in claims[STS_NAMESPACE]  # only when it applies


def test_the_iam_user_gets_its_own_arn(local_system: LocalSystem) -> None:
    token = web_identity_token(local_system, local_system.deployment.user)["WebIdentityToken"]
    claims = oif_claims(local_system, token)
    user_arn = f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"
    assert claims["sub"] == claims[STS_NAMESPACE]["principal_id"] == user_arn
    assert set(claims[STS_NAMESPACE]) == {"aws_account", "source_region", "principal_id"}


def test_the_two_lambda_sessions_differ_only_in_their_function(local_system: LocalSystem) -> None:
    lambdas = local_system.deployment.lambdas
    assert list(lambdas) == list(DEMO_LAMBDA_FUNCTIONS)
    claims = {
        name: oif_claims(
            local_system, web_identity_token(local_system, lambdas[name])["WebIdentityToken"]
        )
        for name in DEMO_LAMBDA_FUNCTIONS
    }
    a, b = (claims[name] for name in DEMO_LAMBDA_FUNCTIONS)
    assert a[STS_NAMESPACE]["lambda_source_function_arn"] == lambda_function_arn("tokex-demo-a")
    assert b[STS_NAMESPACE]["lambda_source_function_arn"] == lambda_function_arn("tokex-demo-b")
    assert a["sub"] == b["sub"] == DEMO_LAMBDA_ROLE_ARN
    assert a["jti"] != b["jti"]

    def without_function(c: dict) -> dict:
        aws = {k: v for k, v in c[STS_NAMESPACE].items() if k != "lambda_source_function_arn"}
        rest = {k: v for k, v in c.items() if k not in ("jti", "iat", "exp", STS_NAMESPACE)}
        return {**rest, STS_NAMESPACE: aws, "lifetime": c["exp"] - c["iat"]}

    assert without_function(a) == without_function(b)


def test_many_threads_at_once(local_system: LocalSystem) -> None:
    """64 requests, released 16 at a time (8 clients of the 4 demo identities, both
    algorithms, GetCallerIdentity pass-throughs in between): each gets its own answer, one
    naming the identity that signed it, with the algorithm and the tag it asked for."""
    deployment = local_system.deployment
    user_arn = f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"
    # Per identity: what its token says of it (sub, then the namespaced claims that name
    # the session: the two Lambda sessions share a role and differ only in the function),
    # and the ARN moto's GetCallerIdentity gives it.
    identities = [
        (
            deployment.workload,
            (DEMO_ROLE_ARN, DEMO_ROLE_ARN, None, INSTANCE_ARN),
            f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-workload/{DEMO_INSTANCE_ID}",
        ),
        (deployment.user, (user_arn, user_arn, None, None), user_arn),
        *(
            (
                credentials,
                (DEMO_LAMBDA_ROLE_ARN, DEMO_LAMBDA_ROLE_ARN, lambda_function_arn(name), None),
                f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-lambda/{name}",
            )
            for name, credentials in deployment.lambdas.items()
        ),
    ]
    clients = [sts_client(local_system, identities[i % len(identities)][0]) for i in range(8)]
    # Call i: client i % 8, whose identity is i % 4; the algorithm alternates every 4
    # calls and every fourth run of 8 calls is GetCallerIdentity, so every identity makes
    # both kinds of call and asks for both algorithms.
    passes_through = [(i // 8) % 4 == 3 for i in range(64)]
    algorithm = [ALGORITHMS[(i // 4) % 2] for i in range(64)]
    workers = 16
    # Cyclic: each round of 16 calls is released together, so the requests really overlap.
    release = threading.Barrier(workers, timeout=60)

    def call(i: int) -> str:
        client = clients[i % len(clients)]
        release.wait()
        if passes_through[i]:
            return str(client.get_caller_identity()["Arn"])
        answer = client.get_web_identity_token(
            Audience=[local_system.issuer],
            SigningAlgorithm=algorithm[i],
            Tags=[{"Key": "call", "Value": str(i)}],  # names the request in its token
        )
        return str(answer["WebIdentityToken"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(pool.map(call, range(64)))

    def session_of(claims: dict) -> tuple:
        aws = claims[STS_NAMESPACE]
        return (
            claims["sub"],
            aws["principal_id"],
            aws.get("lambda_source_function_arn"),
            aws.get("ec2_source_instance_arn"),
        )

    assert passes_through.count(True) == 16
    jtis = set()
    for i, answer in enumerate(answers):
        _, session, caller_arn = identities[i % len(identities)]
        if passes_through[i]:
            assert (i, answer) == (i, caller_arn)  # moto's answer to this caller
            continue
        assert (i, jwt.get_unverified_header(answer)["alg"]) == (i, algorithm[i])
        claims = oif_claims(local_system, answer)
        assert (i, session_of(claims)) == (i, session)
        assert claims[STS_NAMESPACE]["request_tags"] == {"call": str(i)}
        jtis.add(claims["jti"])
    assert len(jtis) == 48


# --- the SigV4 check --------------------------------------------------------------------


def test_a_wrong_secret_is_refused(local_system: LocalSystem) -> None:
    workload = local_system.deployment.workload
    forged = Credentials(workload.access_key_id, "not-the-secret", workload.session_token)
    status, code, message = refused_with(lambda: web_identity_token(local_system, forged))
    assert (status, code) == (403, "SignatureDoesNotMatch")
    assert message.startswith(MISMATCH)


@pytest.mark.parametrize("who", ["service", "made-up"])
def test_an_unknown_access_key_is_refused(local_system: LocalSystem, who: str) -> None:
    """tokex's own identity is a moto identity, but no demo session: it cannot ask."""
    unknown = {
        "service": local_system.deployment.service,
        "made-up": Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    }[who]
    status, code, message = refused_with(lambda: web_identity_token(local_system, unknown))
    assert (status, code) == (403, "InvalidClientTokenId")
    assert message == "The security token included in the request is invalid."


def test_a_session_key_without_its_token_is_refused(local_system: LocalSystem) -> None:
    workload = local_system.deployment.workload
    tokenless = Credentials(workload.access_key_id, workload.secret_access_key)
    status, code, _ = refused_with(lambda: web_identity_token(local_system, tokenless))
    assert (status, code) == (403, "InvalidClientTokenId")


@pytest.mark.parametrize(
    "minutes,message",
    [(-16, "Signature expired: "), (16, "Signature not yet current: ")],
)
def test_a_signature_outside_the_15_minute_window_is_refused(
    local_system: LocalSystem, minutes: int, message: str
) -> None:
    signed_at = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    signed_at += datetime.timedelta(minutes=minutes)
    with mock.patch("botocore.auth.get_current_datetime", return_value=signed_at):
        status, code, text = refused_with(lambda: web_identity_token(local_system))
    assert (status, code) == (403, "SignatureDoesNotMatch")
    assert text.startswith(message)


def test_a_body_changed_after_signing_is_refused(local_system: LocalSystem) -> None:
    body = (
        "Action=GetWebIdentityToken&Version=2011-06-15&Audience.member.1=a&SigningAlgorithm=RS256"
    )
    request = signed_request(local_system, body)
    request.data = body.replace("Audience.member.1=a", "Audience.member.1=b").encode()
    status, text = send(request)
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text

    # ...and so is a body whose signed X-Amz-Content-SHA256 names another body's hash.
    claimed = hashlib.sha256(b"another body").hexdigest()
    status, text = send(signed_request(local_system, body, {"X-Amz-Content-SHA256": claimed}))
    assert status == 403 and "<Code>SignatureDoesNotMatch</Code>" in text

    # The same request, untouched, is answered.
    status, text = send(signed_request(local_system, body))
    assert status == 200 and "<WebIdentityToken>" in text


def test_an_unsigned_request_is_refused(local_system: LocalSystem) -> None:
    request = urllib.request.Request(
        federation(local_system).sts_url + "/",
        data=b"Action=GetWebIdentityToken&Version=2011-06-15",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    status, text = send(request)
    assert status == 403 and "<Code>MissingAuthenticationToken</Code>" in text
    assert "<Type>Sender</Type>" in text and "<RequestId>" in text


@pytest.mark.parametrize(
    "header,value,code",
    [
        ("Authorization", "AWS4-HMAC-SHA256 Credential=garbage", "IncompleteSignature"),
        ("X-Amz-Date", "{day}T996099Z", "IncompleteSignature"),  # the signed day, hour 99
        ("X-Amz-Date", "yesterday", "IncompleteSignature"),
    ],
)
def test_a_malformed_signature_is_refused(
    local_system: LocalSystem, header: str, value: str, code: str
) -> None:
    request = signed_request(local_system, "Action=GetWebIdentityToken&Version=2011-06-15")
    day = request.headers["X-amz-date"][:8]
    request.headers[header.capitalize()] = value.format(day=day)
    status, text = send(request)
    assert status == 400 and f"<Code>{code}</Code>" in text


def test_an_expired_session_and_a_token_outliving_its_session(local_system: LocalSystem) -> None:
    emulator = federation(local_system).oif
    expired = Credentials(
        "ASIAEXPIREDSESSION01", "expired-secret", "expired-token", time.time() - 1
    )
    ending = Credentials("ASIAENDINGSESSION001", "ending-secret", "ending-token", time.time() + 120)
    for credentials in (expired, ending):
        emulator.add_session(OifSession(credentials, DEMO_ROLE_ARN))

    status, code, _ = refused_with(lambda: web_identity_token(local_system, expired))
    assert (status, code) == (400, "ExpiredToken")
    status, code, _ = refused_with(
        lambda: web_identity_token(local_system, ending, DurationSeconds=300)
    )
    assert (status, code) == (403, "SessionDurationEscalationException")
    assert web_identity_token(local_system, ending, DurationSeconds=60)["WebIdentityToken"]


# --- the parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "params,field",
    [
        ({"DurationSeconds": 59}, "durationSeconds"),
        ({"DurationSeconds": 3601}, "durationSeconds"),
        ({"Audience": [f"api-{i}" for i in range(11)]}, "audience"),
        ({"Audience": []}, "audience"),
        ({"Audience": ["x" * 1001]}, "audience"),
        ({"SigningAlgorithm": "HS256"}, "signingAlgorithm"),
        ({"SigningAlgorithm": None}, "signingAlgorithm"),
        ({"SubjectMode": "Someone"}, "subjectMode"),
        ({"Tags": [{"Key": "a*b", "Value": "v"}]}, "tags.1.member.key"),
        ({"Tags": [{"Key": "k", "Value": "v" * 257}]}, "tags.1.member.value"),
        ({"Tags": [{"Key": f"k{i}", "Value": "v"} for i in range(51)]}, "tags"),
    ],
)
def test_parameters_are_checked_as_sts_does(
    local_system: LocalSystem, params: dict, field: str
) -> None:
    call = {"Audience": [local_system.issuer], "SigningAlgorithm": "RS256", **params}
    call = {name: value for name, value in call.items() if value is not None}
    client = sts_client(local_system, validate=False)  # boto3 would refuse them itself
    status, code, message = refused_with(lambda: client.get_web_identity_token(**call))
    assert (status, code) == (400, "ValidationError")
    assert f"at '{field}' failed to satisfy constraint" in message


@pytest.mark.parametrize(
    "params,message",
    [
        ({"SubjectMode": "OriginIdentity"}, "trusted identity propagation"),
        ({"Scope": "read"}, "Scope can be specified only with SubjectMode OriginIdentity"),
        (
            {"Tags": [{"Key": "team", "Value": "a"}, {"Key": "team", "Value": "b"}]},
            "Duplicate tag key: team",
        ),
    ],
)
def test_what_no_local_session_may_ask_is_refused(
    local_system: LocalSystem, params: dict, message: str
) -> None:
    status, code, text = refused_with(lambda: web_identity_token(local_system, **params))
    assert (status, code) == (400, "ValidationError")
    assert message in text


# --- everything else goes to moto ---------------------------------------------------------


def test_other_actions_pass_through_to_moto_unchanged(local_system: LocalSystem) -> None:
    deployment = local_system.deployment
    assert sts_client(local_system).get_caller_identity()["Arn"] == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-workload/{DEMO_INSTANCE_ID}"
    )
    for name, credentials in deployment.lambdas.items():
        arn = sts_client(local_system, credentials).get_caller_identity()["Arn"]
        assert arn == f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/demo-lambda/{name}"
    # Any action: moto's own answer to AssumeRole (its IAM evaluation refuses the demo
    # user, exactly as when called directly) comes back as it was sent.
    call = {"RoleArn": DEMO_ROLE_ARN, "RoleSessionName": "pass-through"}
    direct = deployment.client("sts", deployment.user)
    through = sts_client(local_system, deployment.user)
    answers = [refused_with(lambda c=client: c.assume_role(**call)) for client in (direct, through)]
    assert answers[0] == answers[1]
    assert answers[1][:2] == (403, "AccessDenied") and "demo-user" in answers[1][2]


def test_moto_checks_the_passed_through_signature_itself(local_system: LocalSystem) -> None:
    """The Host header and bytes arrive as signed: a good signature verifies at moto, a
    wrong secret does not (moto's own refusal, passed back)."""
    workload = local_system.deployment.workload
    forged = Credentials(workload.access_key_id, "not-the-secret", workload.session_token)
    status, code, _ = refused_with(lambda: sts_client(local_system, forged).get_caller_identity())
    assert (status, code) == (403, "SignatureDoesNotMatch")


# --- raw requests ---------------------------------------------------------------------


def signed_request(
    system: LocalSystem, body: str, headers: dict[str, str] | None = None
) -> urllib.request.Request:
    """A request signed by botocore's signer as the demo workload, sent by urllib."""
    url = federation(system).sts_url + "/"
    all_headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    aws_request = AWSRequest("POST", url, data=body, headers={**all_headers, **(headers or {})})
    credentials = system.deployment.workload.session().get_credentials().get_frozen_credentials()
    SigV4Auth(credentials, "sts", "us-east-1").add_auth(aws_request)
    return urllib.request.Request(
        url, data=body.encode(), headers=dict(aws_request.headers.items()), method="POST"
    )


def send(request: urllib.request.Request) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
