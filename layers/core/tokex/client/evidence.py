"""The JWT evidence a workload can bring instead of a signed GetCallerIdentity
(signing.py): docs/contract.md "JWT evidence".

- `aws-oif` (`oif` for short): a token from `sts:GetWebIdentityToken` (IAM outbound
  identity federation), asked for on the regional STS endpoint with this tokex issuer as
  its only audience, for one exchange;
- `eks`: the pod's projected service-account token, read from its file, sent only to the
  issuer it names as its audience.

The kinds are named as everywhere else (identifiers.EVIDENCE_KINDS); `sigv4` is the
signed request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError

from tokex import base64url, identifiers
from tokex.client.endpoint import redacted, redacted_text
from tokex.client.signing import sts_host
from tokex.client.token_error import (
    AWS_ERROR,
    INVALID_INPUT,
    ISSUER_MISMATCH,
    NO_CREDENTIALS,
    UNREACHABLE,
    TokenError,
)
from tokex.evidence.jwt_evidence import ALGORITHMS, MAX_SUBJECT_JWT_CHARS, is_compact_jws
from tokex.evidence.trusted_issuers import AWS_OIF, EKS

SIGV4 = "sigv4"
EVIDENCE_KINDS = identifiers.EVIDENCE_KINDS  # ("sigv4", "aws-oif", "eks")
ALIASES = {"oif": AWS_OIF}
# Where the pod manifest of docs/deploy.md mounts the projected token (audience: the
# tokex issuer), apart from the service account's own token for the Kubernetes API.
DEFAULT_TOKEN_FILE = "/var/run/secrets/tokex/serviceaccount/token"
# What the exchange accepts as a subject JWT at most (12 KiB): a larger file is not one.
MAX_TOKEN_FILE_BYTES = MAX_SUBJECT_JWT_CHARS
# The token is exchanged at once and only once (tokex uses an `aws-oif` token up), so it
# asks for the shortest lifetime STS allows (DurationSeconds 60-3600, default 300): a copy
# left in a log or a proxy is worth the least, and it fits under any `sts:DurationSeconds`
# cap a workload's policy sets (docs/deploy.md asks for <= 300).
OIF_DURATION_SECONDS = 60
# What STS signs with and the exchange accepts for `aws-oif` (RS256, ES384). RS256 by
# default: verifying an RSA signature (public exponent 65537) costs the exchange a small
# fraction of verifying an ECDSA P-384 one, on every request.
OIF_SIGNING_ALGORITHMS = ALGORITHMS[AWS_OIF]
DEFAULT_OIF_SIGNING_ALGORITHM = "RS256"
# STS's global endpoint, where GetWebIdentityToken is not served (STS API Reference,
# GetWebIdentityToken: "not available on the STS Global endpoint").
_GLOBAL_STS = "https://sts.amazonaws.com"
# What the Region's STS answers sts:GetWebIdentityToken that another Region's may not
# (request_token fails over; botocore's ClientError codes, the `<Code>` of STS's answer):
# the account deactivated STS in this Region, as AWS recommends for Regions it does not use
# (RegionDisabledException, 403), or this is an opt-in Region the account has not enabled
# (InvalidClientTokenId, 403: its credentials are not valid there) ...
REGIONAL_STS_REFUSALS = frozenset({"RegionDisabledException", "InvalidClientTokenId"})
# ... or it throttles the account's calls in this Region (sts_endpoints.THROTTLING_CODES).
# With sigv4 evidence, the exchange's STS call throttled is its 503, failed over alike.
# Of an error's text that quotes what STS answered (an Expiration that is no date): enough
# to recognise it, not a whole answer in one line.
_MAX_QUOTED_CHARS = 200


def evidence_kind(name: str) -> str:
    """The kind `name` names (`oif` is short for `aws-oif`); ValueError for any other."""
    kind = ALIASES.get(name, name)
    if kind not in EVIDENCE_KINDS:
        raise ValueError(f"evidence must be one of {', '.join(EVIDENCE_KINDS)}, not {name!r}")
    return kind


@dataclass(frozen=True)
class EvidenceOptions:
    """What a workload chose: the kind, and the options only that kind takes."""

    kind: str = SIGV4
    token_file: str = DEFAULT_TOKEN_FILE  # eks
    signing_algorithm: str = DEFAULT_OIF_SIGNING_ALGORITHM  # aws-oif

    @classmethod
    def of(
        cls,
        evidence: str = SIGV4,
        *,
        token_file: str | Path | None = None,
        signing_algorithm: str | None = None,
        instance_evidence: object = None,
    ) -> EvidenceOptions:
        """Refuses an option the kind does not take rather than ignore it (ValueError)."""
        kind = evidence_kind(evidence)
        if instance_evidence and kind != SIGV4:
            raise ValueError("instance identity evidence goes with sigv4 evidence only")
        if token_file is not None and kind != EKS:
            raise ValueError("token_file goes with eks evidence only")
        if signing_algorithm is not None and kind != AWS_OIF:
            raise ValueError("signing_algorithm goes with aws-oif evidence only")
        algorithm = signing_algorithm or DEFAULT_OIF_SIGNING_ALGORITHM
        if algorithm not in OIF_SIGNING_ALGORITHMS:
            raise ValueError(
                f"signing_algorithm must be one of {', '.join(OIF_SIGNING_ALGORITHMS)},"
                f" not {algorithm!r}"
            )
        return cls(kind, str(token_file or DEFAULT_TOKEN_FILE), algorithm)

    def described(self, region: str | None) -> str:
        """The evidence made for `region`, in words (what `tokex token -v` says is sent)."""
        if self.kind == EKS:
            return f"the service-account token in {self.token_file}"
        if self.kind == AWS_OIF:
            return (
                f"a JWT from sts:GetWebIdentityToken in {region} ({self.signing_algorithm}, "
                f"{OIF_DURATION_SECONDS} s)"
            )
        return f"a GetCallerIdentity request signed for {region}"


# --- aws-oif ------------------------------------------------------------------------------


def regional_sts_client(region: str, *, session: Any = None, timeout: float = 10.0) -> Any:
    """An STS client for the region's own endpoint, whose one call takes at most about
    `timeout` seconds: half to connect, half for the answer, and a single attempt
    (botocore's retries, 5 attempts in its default mode, would multiply the time the
    caller gave; request_token fails over to another Region instead). It honours
    AWS_ENDPOINT_URL_STS (what `tokex local` sets); where the session would use the global
    endpoint (AWS_STS_REGIONAL_ENDPOINTS=legacy, which puts the older regions there), the
    regional one is named explicitly."""
    config = Config(
        connect_timeout=timeout / 2,
        read_timeout=timeout / 2,
        retries={"mode": "standard", "total_max_attempts": 1},
    )
    try:  # the profile, the region, the endpoint variables: the AWS set-up, not a bug
        session = session or boto3.session.Session()
        client = session.client("sts", region_name=region, config=config)
        if client.meta.endpoint_url.rstrip("/") == _GLOBAL_STS:
            client = session.client(
                "sts", region_name=region, config=config, endpoint_url=f"https://{sts_host(region)}"
            )
    except BotoCoreError as err:
        why = redacted_text(str(err))
        raise TokenError(f"no STS client for {region}: {why}", error=AWS_ERROR) from None
    if not hasattr(client, "get_web_identity_token"):
        # A boto3 older than the operation (1.41), as a Lambda runtime may bundle: the
        # extension runs on the runtime's.
        raise TokenError(
            f"this botocore ({botocore.__version__}) has no sts:GetWebIdentityToken: aws-oif"
            " evidence needs boto3 >= 1.41 (pip install -U boto3)",
            error=AWS_ERROR,
        )
    return client


def web_identity_token(
    *,
    issuer: str,
    region: str,
    signing_algorithm: str = DEFAULT_OIF_SIGNING_ALGORITHM,
    session: Any = None,
    timeout: float = 10.0,
) -> str:
    """A JWT from `sts:GetWebIdentityToken` whose only audience is the tokex `issuer`:
    it can buy nothing anywhere else."""
    client = regional_sts_client(region, session=session, timeout=timeout)
    # Quoted in errors, as botocore's own messages quote it: never the password of an
    # AWS_ENDPOINT_URL_STS (or AWS_ENDPOINT_URL) with one.
    url = redacted(client.meta.endpoint_url)
    # The HTTP status STS answered, kept before botocore parses the answer: one it cannot
    # parse raises without it, and a Region's STS answering 5xx, whatever its body (a load
    # balancer's page), is still failed over.
    answered: dict[str, int] = {}
    client.meta.events.register(
        "before-parse.sts.GetWebIdentityToken",
        lambda response_dict, **_: answered.update(status=response_dict["status_code"]),
    )
    try:
        answer = client.get_web_identity_token(
            Audience=[issuer],
            DurationSeconds=OIF_DURATION_SECONDS,
            SigningAlgorithm=signing_algorithm,
        )
    except ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code", "error"))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        raise TokenError(
            f"sts:GetWebIdentityToken at {url} refused: {code}: {error.get('Message', '')}"
            f"{_refusal_hint(code, issuer)}",
            error=AWS_ERROR,
            # A 5xx (STS unavailable in this Region), or a code of REGIONAL_STS_REFUSALS or
            # THROTTLING_CODES, lets the client fail over.
            status=status if isinstance(status, int) else None,
            url=url,
            aws_code=code,
        ) from None
    except NoCredentialsError:
        raise TokenError(
            "no AWS credentials found to call sts:GetWebIdentityToken (the default credential"
            " chain)",
            error=NO_CREDENTIALS,
        ) from None
    except (BotocoreConnectionError, HTTPClientError) as err:
        # No answer: refused, timed out, reset or closed early (ConnectionClosedError), TLS
        # or a proxy failed. Another Region's STS may answer (request_token fails over).
        why = redacted_text(str(err))
        raise TokenError(f"cannot reach {url}: {why}", error=UNREACHABLE, url=url) from None
    except BotoCoreError as err:
        why = redacted_text(str(err))
        raise TokenError(
            f"sts:GetWebIdentityToken at {url} failed: {why}",
            error=AWS_ERROR,
            status=answered.get("status"),
            url=url,
        ) from None
    except Exception as err:
        # An answer botocore cannot parse raises whatever its parser met: ResponseParserError
        # (not XML), KeyError (another document), ValueError or RuntimeError (an Expiration
        # that is no date). The first line of its text only: the rest quotes the answer,
        # which may hold a token.
        status = answered.get("status")
        what = (
            "failed"
            if status is None
            else f"answered HTTP {status} with a body botocore cannot read"
        )
        why = redacted_text(str(err).partition("\n")[0])[:_MAX_QUOTED_CHARS]
        raise TokenError(
            f"sts:GetWebIdentityToken at {url} {what}: {type(err).__name__}: {why}",
            error=AWS_ERROR,
            status=status,
            url=url,
        ) from None
    token = answer.get("WebIdentityToken")
    if not isinstance(token, str) or not is_compact_jws(token):
        raise TokenError(f"{url} answered GetWebIdentityToken without a JWT", error=AWS_ERROR)
    return token


def _refusal_hint(code: str, issuer: str) -> str:
    if code == "OutboundWebIdentityFederationDisabledException":
        return (
            " (outbound identity federation is off in this account: `aws iam"
            ' enable-outbound-web-identity-federation`, docs/deploy.md "JWT evidence: trusted'
            ' issuers")'
        )
    if code in ("AccessDenied", "AccessDeniedException"):
        return (
            f" (the workload needs sts:GetWebIdentityToken for audience {issuer}, with"
            ' DurationSeconds 60: docs/deploy.md "JWT evidence: trusted issuers")'
        )
    return ""


# --- eks ----------------------------------------------------------------------------------


def read_token_file(path: str | Path) -> str:
    """The projected service-account token: the file's text without surrounding
    whitespace, at most MAX_TOKEN_FILE_BYTES (12 KiB), a compact JWS. Read at every
    exchange: the kubelet rotates the file (a symlink into the volume's current data)
    before the token expires."""
    try:
        with Path(path).open("rb") as file:
            raw = file.read(MAX_TOKEN_FILE_BYTES + 1)
    except FileNotFoundError:
        raise _file_error(
            path,
            f"token file {path}: no such file (mount the pod's projected service-account"
            ' token there: docs/deploy.md "JWT evidence: trusted issuers")',
        ) from None
    except OSError as err:
        raise _file_error(path, f"cannot read token file {path}: {err.strerror or err}") from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise _file_error(
            path,
            f"token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes: not a"
            " service-account token",
        )
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _file_error(path, f"token file {path} is not a JWT (not ASCII text)") from None
    if not token:
        raise _file_error(path, f"token file {path} is empty")
    if not is_compact_jws(token):
        raise _file_error(path, f"token file {path} is not a JWT (three base64url parts)")
    return token


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS, not verified (the exchange verifies it): what the
    workload reads to know where the token may go. {} when it is not a JSON object."""
    try:
        claims = json.loads(base64url.decode(token.split(".")[1]))
    except (IndexError, ValueError, RecursionError):  # RecursionError: nested too deeply
        return {}
    return claims if isinstance(claims, dict) else {}


def check_token_audience(token: str, issuer: str, *, source: str) -> None:
    """A service-account token is not single use: it goes only to the issuer it was made
    for (its `aud`), never to an endpoint that merely answers for another issuer."""
    aud = unverified_claims(token).get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if issuer.rstrip("/") not in {a.rstrip("/") for a in audiences if isinstance(a, str)}:
        raise TokenError(
            f"the token in {source} is for audience {json.dumps(aud)}, not for {issuer}: not"
            " sent (its projected volume's `audience` must be the tokex issuer URL)",
            error=ISSUER_MISMATCH,
            url=source,
        )


def token_subject(token: str) -> str:
    """Who the token says it is (`iss` and `sub`, unverified): the disk cache's key."""
    claims = unverified_claims(token)
    return json.dumps([claims.get("iss"), claims.get("sub")])


def _file_error(path: str | Path, message: str) -> TokenError:
    return TokenError(message, error=INVALID_INPUT, url=str(path))
