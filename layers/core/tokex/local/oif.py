"""STS `GetWebIdentityToken` (IAM outbound identity federation) for `tokex local`, which
moto does not implement.

A signed request of a demo session (tokex.local.sigv4_check) gets a JWT from the local
issuer of the demo account (tokex.local.oidc_issuers) carrying the claims AWS documents
(IAM User Guide, "Understanding token claims"): `iss`, `sub` (the principal ARN), `aud`,
`iat`, `exp`, `jti`, and under `https://sts.amazonaws.com/` the account, the Region the
request was signed for, `principal_id` (for a role session, the role's ARN), the session
context that applies (`lambda_source_function_arn`, `ec2_source_instance_arn`,
`ec2_role_delivery`) and the caller's tags as `request_tags`. The parameters are checked
as STS checks them (STS API Reference, "GetWebIdentityToken").
"""

from __future__ import annotations

import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokex.evidence.jwt_claims import AWS_IDENTITY_SUBJECT_MODE, STS_NAMESPACE
from tokex.local.oidc_issuers import OIF_ALGORITHMS, LocalIssuer
from tokex.local.provision import ACCOUNT_ID, Credentials
from tokex.local.sigv4_check import SignedBy
from tokex.local.sts_protocol import (
    STS_VERSION,
    StsError,
    new_request_id,
    result_xml,
    validation_error,
)

ACTION = "GetWebIdentityToken"
MIN_DURATION_SECONDS = 60
MAX_DURATION_SECONDS = 3600
DEFAULT_DURATION_SECONDS = 300
MAX_AUDIENCES = 10
MAX_AUDIENCE_LENGTH = 1000
MAX_TAGS = 50
MAX_TAG_KEY_LENGTH = 128
MAX_TAG_VALUE_LENGTH = 256
ORIGIN_IDENTITY = "OriginIdentity"
_AUDIENCE_MEMBER = re.compile(r"Audience\.member\.([1-9][0-9]{0,3})")
_TAG_MEMBER = re.compile(r"Tags\.member\.([1-9][0-9]{0,3})\.(Key|Value)")
_DURATION = re.compile(r"[0-9]{1,9}")
_TAG_PUNCTUATION = frozenset("_.:/=+-@")


@dataclass(frozen=True)
class OifSession:
    """What STS knows of the session behind an access key, besides its secret."""

    credentials: Credentials
    principal_arn: str  # the role ARN for a role session, the user ARN for an IAM user
    lambda_function_arn: str | None = None  # a Lambda function's execution-role session
    ec2_instance_arn: str | None = None  # an EC2 instance-profile session...
    ec2_role_delivery: str | None = None  # ...and its IMDS version, "1.0" or "2.0"


@dataclass(frozen=True)
class WebIdentityTokenRequest:
    audiences: tuple[str, ...]
    signing_algorithm: str
    duration_seconds: int = DEFAULT_DURATION_SECONDS
    tags: Mapping[str, str] = field(default_factory=dict)


def parse_request(params: Mapping[str, str]) -> WebIdentityTokenRequest:
    """The request's parameters, each checked as STS checks it, or StsError."""
    if params.get("Version") != STS_VERSION:
        raise StsError(
            400,
            "InvalidAction",
            f"Could not find operation {ACTION} for version {params.get('Version')}",
        )
    audiences = _members(params, _AUDIENCE_MEMBER, "audience")
    if not 1 <= len(audiences) <= MAX_AUDIENCES:
        raise validation_error(
            None if not audiences else f"[{len(audiences)} members]",
            "audience",
            f"Member must have length between 1 and {MAX_AUDIENCES}",
        )
    for audience in audiences:
        if not 1 <= len(audience) <= MAX_AUDIENCE_LENGTH:
            raise validation_error(
                audience, "audience", f"Member must have length between 1 and {MAX_AUDIENCE_LENGTH}"
            )
    algorithm = params.get("SigningAlgorithm")
    if algorithm not in OIF_ALGORITHMS:
        raise validation_error(
            algorithm,
            "signingAlgorithm",
            "Member must not be null" if algorithm is None else "Member must be RS256 or ES384",
        )
    duration = params.get("DurationSeconds", str(DEFAULT_DURATION_SECONDS))
    if not _DURATION.fullmatch(duration):
        raise validation_error(duration, "durationSeconds", "Member must be an integer")
    if int(duration) < MIN_DURATION_SECONDS:
        raise validation_error(
            duration,
            "durationSeconds",
            f"Member must have value greater than or equal to {MIN_DURATION_SECONDS}",
        )
    if int(duration) > MAX_DURATION_SECONDS:
        raise validation_error(
            duration,
            "durationSeconds",
            f"Member must have value less than or equal to {MAX_DURATION_SECONDS}",
        )
    mode = params.get("SubjectMode", AWS_IDENTITY_SUBJECT_MODE)
    if mode == ORIGIN_IDENTITY:
        # Its `sub` is the session's trusted identity propagation subject; no session of
        # tokex local has one, and STS refuses such a session the same way.
        raise StsError(
            400,
            "ValidationError",
            "SubjectMode OriginIdentity needs a trusted identity propagation context "
            "(aws:OriginIdentity/Subject); the calling session has none",
        )
    if mode != AWS_IDENTITY_SUBJECT_MODE:
        raise validation_error(
            mode, "subjectMode", "Member must satisfy enum value set: [AWSIdentity, OriginIdentity]"
        )
    if "Scope" in params:
        raise StsError(
            400, "ValidationError", "Scope can be specified only with SubjectMode OriginIdentity"
        )
    return WebIdentityTokenRequest(tuple(audiences), algorithm, int(duration), _tags(params))


class OifEmulator:
    """Answers GetWebIdentityToken for the sessions it knows, with tokens of `issuer`."""

    def __init__(
        self,
        issuer: LocalIssuer,
        sessions: Iterable[OifSession],
        *,
        account: str = ACCOUNT_ID,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.account = account
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions = {session.credentials.access_key_id: session for session in sessions}

    def add_session(self, session: OifSession) -> None:
        """Know one more session's access key. A test hook (tests/system/test_local_oif.py):
        local mode passes every session to the constructor."""
        with self._lock:
            self._sessions[session.credentials.access_key_id] = session

    def credentials_of(self, access_key_id: str) -> Credentials | None:
        """The credentials behind a known access key (the SigV4 check's lookup)."""
        with self._lock:
            session = self._sessions.get(access_key_id)
        return None if session is None else session.credentials

    def answer(self, params: Mapping[str, str], signed_by: SignedBy) -> bytes:
        """The GetWebIdentityToken answer (XML) to a request whose signature was checked."""
        request = parse_request(params)
        with self._lock:
            session = self._sessions[signed_by.access_key_id]
        now = int(self._clock())
        expires = now + request.duration_seconds
        end = session.credentials.expiration
        if end is not None and expires > end:
            raise StsError(
                403,
                "SessionDurationEscalationException",
                "The requested token duration would extend the session beyond its original "
                "expiration time.",
            )
        claims = self.claims(session, request, region=signed_by.region, now=now)
        token = self.issuer.sign(claims, request.signing_algorithm)
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return result_xml(
            ACTION, {"WebIdentityToken": token, "Expiration": expiration}, new_request_id()
        )

    def claims(
        self, session: OifSession, request: WebIdentityTokenRequest, *, region: str, now: int
    ) -> dict[str, Any]:
        """The token's claims; a namespaced claim only when it applies to the session."""
        aws: dict[str, Any] = {
            "aws_account": self.account,
            "source_region": region,
            "principal_id": session.principal_arn,
        }
        if session.lambda_function_arn:
            aws["lambda_source_function_arn"] = session.lambda_function_arn
        if session.ec2_instance_arn:
            aws["ec2_source_instance_arn"] = session.ec2_instance_arn
        if session.ec2_role_delivery:
            aws["ec2_role_delivery"] = session.ec2_role_delivery
        if request.tags:
            aws["request_tags"] = dict(request.tags)
        # One audience is a string, as in AWS's sample token; several are an array.
        audiences = request.audiences
        return {
            "iss": self.issuer.url,
            "sub": session.principal_arn,
            "aud": audiences[0] if len(audiences) == 1 else list(audiences),
            "iat": now,
            "exp": now + request.duration_seconds,
            "jti": str(uuid.uuid4()),
            STS_NAMESPACE: aws,
        }


def _members(params: Mapping[str, str], pattern: re.Pattern[str], name: str) -> list[str]:
    """A query-protocol list (`Name.member.1`, `.2`, ...): numbered from 1 without gaps."""
    members = {int(m[1]): value for key, value in params.items() if (m := pattern.fullmatch(key))}
    _check_numbering(members, name)
    return [members[index] for index in sorted(members)]


def _check_numbering(indices: Collection[int], name: str) -> None:
    if sorted(indices) != list(range(1, len(indices) + 1)):
        raise validation_error(None, name, "list members must be numbered 1, 2, ... without gaps")


def _tags(params: Mapping[str, str]) -> dict[str, str]:
    parts: dict[int, dict[str, str]] = {}
    for key, value in params.items():
        if m := _TAG_MEMBER.fullmatch(key):
            parts.setdefault(int(m[1]), {})[m[2]] = value
    _check_numbering(parts, "tags")
    if len(parts) > MAX_TAGS:
        raise validation_error(
            f"[{len(parts)} members]",
            "tags",
            f"Member must have length less than or equal to {MAX_TAGS}",
        )
    tags: dict[str, str] = {}
    for index in sorted(parts):
        where = f"tags.{index}.member"
        for member in ("Key", "Value"):
            if member not in parts[index]:
                raise validation_error(None, f"{where}.{member.lower()}", "Member must not be null")
        key, value = parts[index]["Key"], parts[index]["Value"]
        if not (1 <= len(key) <= MAX_TAG_KEY_LENGTH and _tag_text(key)):
            raise validation_error(
                key, f"{where}.key", "Member must be 1-128 letters, digits, spaces or _.:/=+-@"
            )
        if not (len(value) <= MAX_TAG_VALUE_LENGTH and _tag_text(value)):
            raise validation_error(
                value, f"{where}.value", "Member must be 0-256 letters, digits, spaces or _.:/=+-@"
            )
        if key in tags:
            raise StsError(400, "ValidationError", f"Duplicate tag key: {key}")
        tags[key] = value
    return tags


def _tag_text(text: str) -> bool:
    """STS's `[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*`: Unicode letters, separators, numbers, these."""
    return all(unicodedata.category(c)[0] in "LZN" or c in _TAG_PUNCTUATION for c in text)
