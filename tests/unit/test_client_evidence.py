"""The workload's JWT evidence (tokex/client/evidence.py, docs/contract.md "JWT evidence"):
what `tokex token --evidence aws-oif|eks` and `TokenClient(evidence=...)` send.

- `aws-oif`: boto3 asks sts:GetWebIdentityToken, on the region's own STS endpoint, for
  exactly Audience=[this issuer], DurationSeconds=60, SigningAlgorithm RS256 (or ES384),
  and the JWT STS returns is the subject token, once per exchange. STS here is a loopback
  server speaking the STS query protocol (a fake of AWS, not of tokex);
- `eks`: the token file's JWT, stripped, refused when empty, oversized, not a JWT or made
  for another issuer's audience; read again at every exchange (the kubelet rotates it);
- options that do not go with the chosen kind are refused, never ignored.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import pytest

from tests.support.fake_issuer import (
    FakeIssuer,
    fake_issuer,
    use_static_credentials,
    without_aws_set_up,
)
from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url
from tokex.cli import token as token_command
from tokex.cli.main import main
from tokex.client import TokenClient, TokexAuth, TokexHttpxAuth
from tokex.client import evidence as client_evidence
from tokex.client.evidence import (
    DEFAULT_TOKEN_FILE,
    MAX_TOKEN_FILE_BYTES,
    OIF_DURATION_SECONDS,
    EvidenceOptions,
    read_token_file,
    regional_sts_client,
    unverified_claims,
)
from tokex.client.token_client import TokenError, fails_over, request_token
from tokex.forms import MAX_BODY_BYTES
from tokex.token_request import JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"


def make_jwt(claims: dict, *, alg: str = "RS256") -> str:
    """A compact JWS of these claims (the signature is not checked by the workload)."""
    header = base64url.encode_json({"alg": alg, "kid": "key-1", "typ": "JWT"})
    return f"{header}.{base64url.encode_json(claims)}.{base64url.encode(b'signature')}"


def claims_of(token: str) -> dict:
    header, payload, _ = token.split(".")
    return {"header": json.loads(base64url.decode(header)), **json.loads(base64url.decode(payload))}


# --- a loopback STS: the query protocol's GetWebIdentityToken -----------------------------


@dataclass
class FakeSts:
    url: str = ""
    refuse_with: str | None = None  # an STS error code to answer with
    answer_with: tuple[int, str] | None = None  # (status, body) answered instead, as they are
    calls: list[dict] = field(default_factory=list)  # {"path", "form", "authorization"}
    tokens: list[str] = field(default_factory=list)  # the JWTs it handed out


@pytest.fixture
def sts() -> Iterator[FakeSts]:
    fake = FakeSts()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            form = parse_qs(body, keep_blank_values=True)
            authorization = self.headers.get("Authorization", "")
            fake.calls.append({"path": self.path, "form": form, "authorization": authorization})
            # What STS checks before anything else: a SigV4 signature for service sts.
            if not authorization.startswith("AWS4-HMAC-SHA256 Credential=") or (
                "/sts/aws4_request" not in authorization
            ):
                return self._error(403, "MissingAuthenticationToken", "Request is missing auth")
            if form.get("Action") != ["GetWebIdentityToken"]:
                return self._error(400, "InvalidAction", "Could not find operation")
            if fake.refuse_with:
                return self._error(403, fake.refuse_with, "refused by the test")
            if fake.answer_with:
                return self._xml(*fake.answer_with)
            now = int(time.time())
            audiences = [v[0] for k, v in sorted(form.items()) if k.startswith("Audience.member.")]
            duration = int(form.get("DurationSeconds", ["300"])[0])
            token = make_jwt(
                {
                    "iss": "https://a1d2b0fd-1177-4468-9351-2f0123456723.tokens.sts.global.api.aws",
                    "aud": audiences[0] if len(audiences) == 1 else audiences,
                    "sub": "arn:aws:iam::123456789012:role/orders",
                    "iat": now,
                    "exp": now + duration,
                    "jti": f"jti-{len(fake.tokens) + 1}",
                },
                alg=form["SigningAlgorithm"][0],
            )
            fake.tokens.append(token)
            self._xml(
                200,
                f'<GetWebIdentityTokenResponse xmlns="{STS_NAMESPACE}">'
                f"<GetWebIdentityTokenResult><WebIdentityToken>{token}</WebIdentityToken>"
                f"<Expiration>{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now + duration))}"
                "</Expiration></GetWebIdentityTokenResult>"
                "<ResponseMetadata><RequestId>4a396884-3469-427a-938f-e5c0ffee011e</RequestId>"
                "</ResponseMetadata></GetWebIdentityTokenResponse>",
            )

        def _error(self, status: int, code: str, message: str) -> None:
            self._xml(
                status,
                f'<ErrorResponse xmlns="{STS_NAMESPACE}"><Error><Type>Sender</Type>'
                f"<Code>{code}</Code><Message>{message}</Message></Error>"
                "<RequestId>4a396884-3469-427a-938f-e5c0ffee011e</RequestId></ErrorResponse>",
            )

        def _xml(self, status: int, document: str) -> None:
            self.send_document(status, document.encode(), {"Content-Type": "text/xml"})

    with serving(LoopbackServer(Handler)) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def aws_env(monkeypatch) -> None:
    """Static credentials, region eu-west-1, and nothing else of this machine's AWS set-up."""
    use_static_credentials(monkeypatch)
    # As Lambda sets them; a boto3 session reads only the second, `tokex token` both.
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")


@pytest.fixture
def issuer(aws_env) -> Iterator[FakeIssuer]:
    with fake_issuer(expires_in=900) as running:
        yield running


@pytest.fixture
def at_sts(sts: FakeSts, monkeypatch) -> FakeSts:
    """boto3 sends STS calls to the loopback STS, as `tokex local` makes it do."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
    return sts


def tokex(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out.strip(), err


# --- aws-oif -------------------------------------------------------------------------------


def test_oif_asks_sts_for_this_issuer_only_and_exchanges_what_it_returns(issuer, at_sts) -> None:
    response = request_token(issuer.url, "orders-api", scopes=["orders:read"], evidence="aws-oif")
    assert response["access_token"] == "token-1"
    [call] = at_sts.calls
    assert call["path"] == "/"
    # Exactly these parameters: one audience (this issuer), the shortest lifetime, RS256.
    assert call["form"] == {
        "Action": ["GetWebIdentityToken"],
        "Version": ["2011-06-15"],
        "Audience.member.1": [issuer.url],
        "DurationSeconds": [str(OIF_DURATION_SECONDS)],
        "SigningAlgorithm": ["RS256"],
    }
    assert OIF_DURATION_SECONDS == 60
    # Signed for the session's region: its regional endpoint.
    assert "/eu-west-1/sts/aws4_request" in call["authorization"]
    [jwt] = at_sts.tokens
    assert issuer.forms == [
        {
            "grant_type": [GRANT],
            "subject_token_type": [JWT_TYPE],
            "subject_token": [jwt],
            "audience": ["orders-api"],
            "scope": ["orders:read"],
        }
    ]
    assert claims_of(jwt)["aud"] == issuer.url


def test_oif_short_name_es384_and_an_explicit_region(issuer, at_sts) -> None:
    request_token(
        issuer.url, "orders-api", evidence="oif", signing_algorithm="ES384", region="ap-south-2"
    )
    [call] = at_sts.calls
    assert call["form"]["SigningAlgorithm"] == ["ES384"]
    assert "/ap-south-2/sts/aws4_request" in call["authorization"]
    assert claims_of(at_sts.tokens[0])["header"]["alg"] == "ES384"
    assert "scope" not in issuer.forms[0]  # no scopes asked for: none sent


def test_oif_with_a_bound_issuer_skips_discovery_and_names_it(issuer, at_sts) -> None:
    request_token(issuer.url, "orders-api", evidence="aws-oif", issuer="https://auth.example.com")
    assert at_sts.calls[0]["form"]["Audience.member.1"] == ["https://auth.example.com"]


def test_every_oif_exchange_gets_its_own_token(issuer, at_sts) -> None:
    """An OIF token is used up by its exchange: a refresh asks STS again."""
    now = [0.0]
    client = TokenClient(issuer.url, evidence="oif", clock=lambda: now[0])
    assert client.token("orders-api") == "token-1"
    assert client.token("orders-api") == "token-1"  # cached: no STS call
    now[0] = 0.8 * 900
    assert client.token("orders-api") == "token-2"
    assert len(at_sts.calls) == 2
    assert [form["subject_token"] for form in issuer.forms] == [[t] for t in at_sts.tokens]
    assert at_sts.tokens[0] != at_sts.tokens[1]


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("OutboundWebIdentityFederationDisabledException", "enable-outbound-web-identity"),
        ("AccessDenied", "needs sts:GetWebIdentityToken for audience"),
    ],
)
def test_an_sts_refusal_is_an_aws_error_and_nothing_is_exchanged(
    issuer, at_sts, code, hint
) -> None:
    at_sts.refuse_with = code
    with pytest.raises(TokenError) as refused:
        request_token(issuer.url, "orders-api", evidence="aws-oif")
    assert refused.value.error == "aws_error"
    assert refused.value.url == at_sts.url
    assert f"sts:GetWebIdentityToken at {at_sts.url} refused: {code}: " in str(refused.value)
    assert hint in str(refused.value)
    if code == "AccessDenied":
        assert issuer.url in str(refused.value)
    assert issuer.exchanges == 0


JWS = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


def oif_answer(expiration: str | None = None) -> str:
    """A GetWebIdentityToken answer with the token JWS, and this Expiration if given."""
    expires = "" if expiration is None else f"<Expiration>{expiration}</Expiration>"
    return (
        f'<GetWebIdentityTokenResponse xmlns="{STS_NAMESPACE}"><GetWebIdentityTokenResult>'
        f"<WebIdentityToken>{JWS}</WebIdentityToken>{expires}</GetWebIdentityTokenResult>"
        "</GetWebIdentityTokenResponse>"
    )


@pytest.mark.parametrize(
    ("status", "body", "raised"),
    [
        (503, "Service Unavailable", "ResponseParserError"),  # a load balancer's page
        (504, '{"message": "Endpoint request timed out"}', "ResponseParserError"),
        (200, "not xml", "ResponseParserError"),
        (200, oif_answer() * 2, "ResponseParserError"),  # the text quotes the whole body
        (200, "<x>1</x>", "KeyError"),
        (200, oif_answer(expiration="soon"), "ValueError"),
        (200, oif_answer(expiration="1e400"), "RuntimeError"),
    ],
    ids=["503-text", "504-json", "not-xml", "two-answers", "another-document", "soon", "1e400"],
)
def test_an_sts_answer_botocore_cannot_read_is_an_aws_error_with_its_status(
    issuer, at_sts, status, body, raised
) -> None:
    """botocore raised what its parser met (not a BotoCoreError): an internal error of
    `tokex token`; and a Region's STS answering 5xx with a body that is no STS XML was not
    failed over. Never quoted: the answer, which may hold a token."""
    at_sts.answer_with = (status, body)
    with pytest.raises(TokenError) as failed:
        request_token(issuer.url, "orders-api", evidence="aws-oif")
    assert (failed.value.error, failed.value.status) == ("aws_error", status)
    assert failed.value.url == at_sts.url
    assert str(failed.value).startswith(
        f"sts:GetWebIdentityToken at {at_sts.url} answered HTTP {status} with a body botocore"
        f" cannot read: {raised}: "
    )
    assert JWS not in str(failed.value)
    assert fails_over(failed.value) is (status >= 500)
    assert issuer.exchanges == 0


def test_unreachable_sts_is_a_network_failure(issuer, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(TokenError) as failed:
        request_token(issuer.url, "orders-api", evidence="aws-oif", timeout=2)
    assert failed.value.error == "unreachable"
    assert issuer.exchanges == 0


def test_cli_oif_cache_key_and_hit(issuer, at_sts, capsys, tmp_path) -> None:
    """A cached OIF token costs no STS call; the key tells OIF from SigV4 evidence."""
    ask = ("token", "--endpoint", issuer.url, "--audience", "a", "--cache-dir", str(tmp_path))
    assert tokex(capsys, *ask)[:2] == (0, "token-1")  # sigv4
    assert tokex(capsys, *ask, "--evidence", "aws-oif")[:2] == (0, "token-2")
    assert tokex(capsys, *ask, "--evidence", "oif")[:2] == (0, "token-2")  # the same kind
    assert len(at_sts.calls) == 1
    assert issuer.exchanges == 2


@pytest.mark.parametrize(
    ("region", "regional_endpoints", "endpoint"),
    [
        ("eu-west-1", None, "https://sts.eu-west-1.amazonaws.com"),
        ("us-east-1", None, "https://sts.us-east-1.amazonaws.com"),
        # `legacy` puts the older regions on the global endpoint, which has no
        # GetWebIdentityToken: the regional one is named instead.
        ("us-east-1", "legacy", "https://sts.us-east-1.amazonaws.com"),
        ("ap-northeast-1", "legacy", "https://sts.ap-northeast-1.amazonaws.com"),
        ("cn-north-1", None, "https://sts.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", "legacy", "https://sts.us-gov-west-1.amazonaws.com"),
    ],
)
def test_sts_is_always_the_regional_endpoint(
    aws_env, monkeypatch, region, regional_endpoints, endpoint
) -> None:
    if regional_endpoints:
        monkeypatch.setenv("AWS_STS_REGIONAL_ENDPOINTS", regional_endpoints)
    assert regional_sts_client(region).meta.endpoint_url == endpoint


def test_aws_endpoint_url_sts_is_honoured(aws_env, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4566")
    assert regional_sts_client("eu-west-1").meta.endpoint_url == "http://127.0.0.1:4566"


def test_cli_oif(issuer, at_sts, capsys) -> None:
    ask = ("token", "--endpoint", issuer.url, "--audience", "orders-api", "--evidence")
    code, out, err = tokex(capsys, *ask, "aws-oif", "--scope", "orders:read", "-v")
    assert (code, out) == (0, "token-1")
    assert "sts:GetWebIdentityToken in eu-west-1 (RS256, 60 s)" in err
    code, out, _ = tokex(capsys, *ask, "oif", "--signing-algorithm", "ES384", "--json")
    assert code == 0 and json.loads(out)["access_token"] == "token-2"
    assert [c["form"]["SigningAlgorithm"] for c in at_sts.calls] == [["RS256"], ["ES384"]]
    assert [f["subject_token"] for f in issuer.forms] == [[t] for t in at_sts.tokens]
    at_sts.refuse_with = "AccessDenied"
    code, out, _ = tokex(capsys, *ask, "oif", "--json")
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (1, "aws_error", at_sts.url)


# --- eks -----------------------------------------------------------------------------------


def sa_token(audience: object, *, sub: str = "system:serviceaccount:orders:api") -> str:
    now = int(time.time())
    return make_jwt(
        {
            "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF",
            "aud": audience,
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "kubernetes.io": {"namespace": "orders", "serviceaccount": {"name": "api"}},
        }
    )


@pytest.fixture
def no_aws(monkeypatch) -> None:
    """An EKS pod without any AWS credentials or region."""
    without_aws_set_up(monkeypatch)


@pytest.fixture
def pod_issuer(no_aws) -> Iterator[FakeIssuer]:
    with fake_issuer(expires_in=900) as running:
        yield running


def test_eks_sends_the_token_file_stripped(pod_issuer, tmp_path) -> None:
    token = sa_token(pod_issuer.url)
    path = tmp_path / "token"
    path.write_text(f"\n  {token}\t\n")
    response = request_token(
        pod_issuer.url, "orders-api", scopes=["orders:read"], evidence="eks", token_file=path
    )
    assert response["access_token"] == "token-1"
    assert pod_issuer.forms == [
        {
            "grant_type": [GRANT],
            "subject_token_type": [JWT_TYPE],
            "subject_token": [token],
            "audience": ["orders-api"],
            "scope": ["orders:read"],
        }
    ]


def test_eks_token_may_list_the_issuer_among_audiences(pod_issuer, tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text(sa_token(["https://other.example.com", pod_issuer.url + "/"]))
    assert request_token(pod_issuer.url, "a", evidence="eks", token_file=path)["access_token"]


@pytest.mark.parametrize(
    "audience", ["https://other.example.com", ["sts.amazonaws.com"], None, 7, "https://x/"]
)
def test_eks_token_for_another_audience_is_never_sent(pod_issuer, tmp_path, audience) -> None:
    """Not single use, so not sent to an endpoint it was not made for (a look-alike, or
    another deployment) where it could be replayed."""
    path = tmp_path / "token"
    path.write_text(sa_token(audience))
    with pytest.raises(TokenError) as refused:
        request_token(pod_issuer.url, "orders-api", evidence="eks", token_file=path)
    assert refused.value.error == "issuer_mismatch"
    assert refused.value.url == str(path)
    assert f"is for audience {json.dumps(audience)}, not for {pod_issuer.url}" in str(refused.value)
    assert pod_issuer.exchanges == 0


def test_eks_with_a_bound_issuer_checks_the_audience_against_it(pod_issuer, tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text(sa_token("https://auth.example.com"))
    request_token(
        pod_issuer.url, "a", evidence="eks", token_file=path, issuer="https://auth.example.com"
    )
    assert pod_issuer.exchanges == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b" \n\t\n", "is empty"),
        (b"x" * (MAX_TOKEN_FILE_BYTES + 1), f"is larger than {MAX_TOKEN_FILE_BYTES} bytes"),
        (b"not a jwt", "is not a JWT (three base64url parts)"),
        (b"a.b.c.d.e", "is not a JWT (three base64url parts)"),
        ("eyJ\u00e9.a.b".encode(), "is not a JWT (not ASCII text)"),
    ],
)
def test_token_file_rules(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(TokenError, match=re.escape(message)) as refused:
        read_token_file(path)
    assert (refused.value.error, refused.value.url) == ("invalid_input", str(path))


def test_token_file_limits(tmp_path) -> None:
    assert MAX_TOKEN_FILE_BYTES == 12 * 1024
    token = make_jwt({"aud": "https://auth.example.com"})
    largest = token + "A" * (MAX_TOKEN_FILE_BYTES - len(token))  # a longer signature
    path = tmp_path / "token"
    path.write_text(largest)
    assert read_token_file(path) == largest
    # ...and the form that carries it stays within the exchange's 16 KiB body.
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": JWT_TOKEN_TYPE,
        "subject_token": largest,
        "audience": "a" * 256,
        "scope": " ".join(f"orders:scope-{n:02d}" for n in range(32)),
    }
    assert len(urlencode(form)) <= MAX_BODY_BYTES
    with pytest.raises(TokenError, match="no such file") as missing:
        read_token_file(tmp_path / "absent")
    assert "projected service-account token" in str(missing.value)
    assert missing.value.error == "invalid_input"


def test_eks_rereads_the_rotated_file_at_each_exchange(pod_issuer, tmp_path) -> None:
    now = [0.0]
    path = tmp_path / "token"
    first, rotated = sa_token(pod_issuer.url), sa_token(pod_issuer.url, sub="system:sa:x:y")
    path.write_text(first)
    client = TokenClient(pod_issuer.url, evidence="eks", token_file=path, clock=lambda: now[0])
    assert client.token("orders-api") == "token-1"
    path.write_text(rotated)  # the kubelet rotated it
    assert client.token("orders-api") == "token-1"  # cached: the file is not read
    now[0] = 0.8 * 900
    assert client.token("orders-api") == "token-2"
    assert [form["subject_token"] for form in pod_issuer.forms] == [[first], [rotated]]


def test_cli_eks(pod_issuer, tmp_path, capsys) -> None:
    path = tmp_path / "token"
    path.write_text(sa_token(pod_issuer.url) + "\n")
    ask = ("token", "--endpoint", pod_issuer.url, "--audience", "orders-api", "--evidence", "eks")
    code, out, err = tokex(capsys, *ask, "--token-file", str(path), "-v")
    assert (code, out) == (0, "token-1")
    assert f"sending the service-account token in {path}" in err
    # Refusals of the file's content: exit 1, the file at fault.
    path.write_text("")
    code, out, _ = tokex(capsys, *ask, "--token-file", str(path), "--json")
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (1, "invalid_input", str(path))
    path.write_text(sa_token("https://other.example.com"))
    code, out, _ = tokex(capsys, *ask, "--token-file", str(path), "--json")
    assert (code, json.loads(out)["error"]) == (1, "issuer_mismatch")
    assert pod_issuer.exchanges == 1


# --- the choice of evidence: what goes with what ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "at_fault", "error"),
    [
        (["--evidence", "eks", "--instance-identity", "auto"], "--instance-identity", "usage"),
        (["--evidence", "oif", "--instance-identity", "on"], "--instance-identity", "usage"),
        (["--token-file", "/tmp/x"], "--token-file", "usage"),
        (["--evidence", "oif", "--token-file", "/tmp/x"], "--token-file", "usage"),
        (["--signing-algorithm", "ES384"], "--signing-algorithm", "usage"),
        (["--evidence", "eks", "--signing-algorithm", "RS256"], "--signing-algorithm", "usage"),
        (["--evidence", "aws-oif", "--signing-algorithm", "ES256"], "--signing-algorithm", "usage"),
        (["--evidence", "github"], "--evidence", "usage"),
        (["--evidence", "eks", "--token-file", "/nonexistent/token"], "/nonexistent/token", None),
    ],
)
def test_cli_refuses_what_does_not_go_with_the_evidence(
    issuer, capsys, argv, at_fault, error
) -> None:
    """Exit 2 before any file is read or any network call; with --json one object."""
    ask = ["token", "--endpoint", issuer.url, "--audience", "orders-api", *argv]
    code, _, err = tokex(capsys, *ask)
    assert code == 2 and at_fault in err
    code, out, err = tokex(capsys, *ask, "--json")
    failure = json.loads(out)
    assert (code, err, failure["input"]) == (2, "", at_fault)
    assert failure["error"] == (error or "file_not_found")
    assert issuer.exchanges == 0


def test_cli_eks_default_token_file(issuer, capsys, monkeypatch) -> None:
    monkeypatch.setattr(client_evidence, "DEFAULT_TOKEN_FILE", "/nonexistent/default/token")
    code, out, _ = tokex(
        capsys,
        *("token", "--endpoint", issuer.url, "--audience", "a", "--evidence", "eks", "--json"),
    )
    failure = json.loads(out)
    assert (code, failure["error"], failure["input"]) == (
        2,
        "file_not_found",
        "/nonexistent/default/token",
    )
    assert "projected service-account token" in failure["error_description"]


def test_the_command_line_names_the_library_choices(capsys) -> None:
    assert DEFAULT_TOKEN_FILE == "/var/run/secrets/tokex/serviceaccount/token"
    assert set(token_command.EVIDENCE_CHOICES) == {
        *client_evidence.EVIDENCE_KINDS,
        *client_evidence.ALIASES,
    }
    assert set(client_evidence.EVIDENCE_KINDS) == {"sigv4", "aws-oif", "eks"}
    assert client_evidence.OIF_SIGNING_ALGORITHMS == ("RS256", "ES384")
    assert main(["token", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_TOKEN_FILE})" in help_text
    assert "{sigv4,aws-oif,eks,oif}" in help_text and "{RS256,ES384}" in help_text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"evidence": "github"}, "evidence must be one of sigv4, aws-oif, eks"),
        ({"evidence": "eks", "instance_evidence": "e30"}, "goes with sigv4 evidence only"),
        ({"token_file": "/tmp/token"}, "token_file goes with eks evidence only"),
        ({"evidence": "oif", "token_file": "/tmp/token"}, "token_file goes with eks"),
        ({"signing_algorithm": "ES384"}, "signing_algorithm goes with aws-oif evidence only"),
        ({"evidence": "oif", "signing_algorithm": "ES256"}, "must be one of RS256, ES384"),
    ],
)
def test_python_api_refuses_what_does_not_go_with_the_evidence(options, message) -> None:
    """At construction, before the first token is asked for."""
    with pytest.raises(ValueError, match=message):
        TokenClient("https://auth.example.com", **options)
    with pytest.raises(ValueError, match=message):
        TokexAuth("https://auth.example.com", "orders-api", **options)
    with pytest.raises(ValueError, match=message):
        request_token("https://auth.example.com", "orders-api", **options)


def test_evidence_options() -> None:
    assert EvidenceOptions.of() == EvidenceOptions("sigv4", DEFAULT_TOKEN_FILE, "RS256")
    assert EvidenceOptions.of("oif").kind == "aws-oif"
    assert EvidenceOptions.of("eks", token_file=Path("/t")).token_file == "/t"
    assert EvidenceOptions.of("eks").token_file == DEFAULT_TOKEN_FILE


def test_options_go_to_a_shared_client_not_beside_it() -> None:
    shared = TokenClient("https://auth.example.com")
    with pytest.raises(ValueError, match="to the TokenClient"):
        TokexAuth(shared, "orders-api", evidence="eks")
    with pytest.raises(ValueError, match="to the TokenClient"):
        TokexHttpxAuth(shared, "orders-api", region="eu-west-1")
    assert TokexAuth(shared, "orders-api").client is shared


def test_a_payload_nested_too_deeply_has_no_claims_and_no_crash() -> None:
    """A token file is the workload's input: a payload of 5,000 `[` was an internal error
    of `tokex token` (the audience check and the cache key read it)."""
    payload = base64.urlsafe_b64encode(b"[" * 5000).rstrip(b"=").decode()
    assert unverified_claims(f"e30.{payload}.sig") == {}


def test_an_sdk_older_than_get_web_identity_token_is_a_clear_aws_error(
    issuer, at_sts, monkeypatch, tmp_path
) -> None:
    """botocore before 1.41 has no GetWebIdentityToken (a Lambda runtime's bundled boto3,
    which the extension runs on, may be one): made here by the real botocore reading an STS
    model without the operation (AWS_DATA_PATH), it was a raw AttributeError."""
    import botocore

    model_dir = Path(botocore.__file__).parent / "data" / "sts" / "2011-06-15"
    [model_file] = model_dir.glob("service-2.json*")
    raw = model_file.read_bytes()
    model = json.loads(gzip.decompress(raw) if model_file.suffix == ".gz" else raw)
    del model["operations"]["GetWebIdentityToken"]
    older = tmp_path / "sts" / "2011-06-15"
    older.mkdir(parents=True)
    (older / "service-2.json").write_text(json.dumps(model))
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    with pytest.raises(TokenError) as refused:
        request_token(issuer.url, "orders-api", evidence="aws-oif")
    assert refused.value.error == "aws_error"
    assert "has no sts:GetWebIdentityToken: aws-oif evidence needs boto3 >= 1.41" in str(
        refused.value
    )
    assert at_sts.calls == [] and issuer.exchanges == 0


@pytest.mark.parametrize("evidence", ["sigv4", "aws-oif"])
def test_a_profile_that_does_not_exist_is_no_credentials(issuer, monkeypatch, evidence) -> None:
    """botocore's ProfileNotFound escaped the client (and stale_if_error, and the auth
    classes' callers) as itself."""
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(TokenError) as refused:
        request_token(issuer.url, "orders-api", evidence=evidence)
    assert refused.value.error == "no_credentials"
    assert "(nope) could not be found" in str(refused.value)
    assert issuer.exchanges == 0


def test_a_region_that_is_no_region_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(ValueError, match="'bad region' is not an AWS Region name"):
        TokenClient("https://auth.example.com", evidence="aws-oif", region="bad region")


@pytest.mark.parametrize("region", ["bad region", "us-east-1\n"])
def test_a_region_that_is_no_region_is_refused_by_request_token_before_any_request(
    issuer, region: str
) -> None:
    with pytest.raises(ValueError, match="is not an AWS Region name"):
        request_token(issuer.url, "orders-api", region=region)
    assert issuer.exchanges == 0
