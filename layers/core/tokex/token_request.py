"""Parsing of `POST /token` bodies (RFC 8693 §2.1 over RFC 6749 §3.2).

Only the transport-level shape is checked here: form encoding and each parameter once
(forms.py, shared with `POST /introspect`), then the parameters and their formats.
What the `subject_token` *proves* is for `tokex.evidence`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tokex import identifiers
from tokex.errors import InvalidRequest, InvalidScope, UnsupportedGrantType
from tokex.evidence.sigv4_request import decode_b64url_json, decode_subject_token
from tokex.forms import check_content_type, parse_form

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGV4_TOKEN_TYPE = "urn:tokex:token-type:aws-sigv4"
# RFC 8693 §3: a JWT as the subject token (JWT evidence: docs/contract.md "JWT evidence"),
# and the only token type tokex issues.
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_TYPES = (SIGV4_TOKEN_TYPE, JWT_TOKEN_TYPE)

MAX_INSTANCE_EVIDENCE_CHARS = 12 * 1024
MAX_SCOPES = 32
# The parameters the exchange reads; any other is ignored (docs/contract.md), except those
# refused as unsupported below (parse_token_request drops the rest before reading).
KNOWN_PARAMETERS = frozenset(
    {
        "grant_type",
        "subject_token_type",
        "subject_token",
        "audience",
        "scope",
        "requested_token_type",
        "aws_instance_identity",
    }
)
# RFC 8693 parameters we recognise but do not support: refusing beats ignoring them,
# since a client sending them expects semantics we would silently drop.
_UNSUPPORTED = frozenset({"resource", "actor_token", "actor_token_type"})


@dataclass(frozen=True)
class TokenRequest:
    """Exactly one of `signed_request` (SigV4 evidence) and `subject_jwt` (JWT evidence);
    instance evidence only goes with a signed request."""

    signed_request: dict[str, Any] | None
    audience: str
    scopes: tuple[str, ...] | None
    instance_evidence: dict[str, Any] | None
    subject_jwt: str | None = None


def parse_token_request(body: bytes, content_type: str | None) -> TokenRequest:
    check_content_type(content_type)
    # RFC 6749 §3.2: an empty value is treated as omitted; a parameter tokex neither reads
    # nor refuses is ignored (docs/contract.md).
    form = {
        name: value
        for name, value in parse_form(body).items()
        if value != "" and (name in KNOWN_PARAMETERS or name in _UNSUPPORTED)
    }
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required", reason="grant_type_missing")
    if grant_type != TOKEN_EXCHANGE_GRANT:
        raise UnsupportedGrantType(
            f"grant_type must be {TOKEN_EXCHANGE_GRANT}", reason="grant_type"
        )
    for name in sorted(_UNSUPPORTED & form.keys()):
        raise InvalidRequest(f"parameter '{name}' is not supported", reason="unsupported_param")
    token_type = form.get("subject_token_type")
    if token_type not in SUBJECT_TOKEN_TYPES:
        raise InvalidRequest(
            f"subject_token_type must be {SIGV4_TOKEN_TYPE} or {JWT_TOKEN_TYPE}",
            reason="subject_token_type",
        )
    if "subject_token" not in form:
        raise InvalidRequest("subject_token is required", reason="subject_token_missing")
    requested = form.get("requested_token_type")
    if requested is not None and requested != JWT_TOKEN_TYPE:
        raise InvalidRequest(
            f"requested_token_type may only be {JWT_TOKEN_TYPE}", reason="requested_token_type"
        )
    audience = form.get("audience")
    if audience is None:
        raise InvalidRequest("audience is required", reason="audience_missing")
    if not identifiers.is_audience(audience):
        raise InvalidRequest(f"audience must be {identifiers.AUDIENCE_RULE}", reason="audience")
    evidence = form.get("aws_instance_identity")
    if token_type == JWT_TOKEN_TYPE:
        if evidence is not None:
            raise InvalidRequest(
                "aws_instance_identity goes with a signed request, not with a JWT",
                reason="instance_identity_with_jwt",
            )
        return TokenRequest(
            signed_request=None,
            audience=audience,
            scopes=_parse_scope(form.get("scope")),
            instance_evidence=None,
            # Its shape and size are checked by evidence/jwt_evidence.py with the rest.
            subject_jwt=form["subject_token"],
        )
    return TokenRequest(
        signed_request=decode_subject_token(form["subject_token"]),
        audience=audience,
        scopes=_parse_scope(form.get("scope")),
        instance_evidence=None
        if evidence is None
        else decode_b64url_json(
            evidence, name="aws_instance_identity", max_len=MAX_INSTANCE_EVIDENCE_CHARS
        ),
    )


def _parse_scope(scope: str | None) -> tuple[str, ...] | None:
    if scope is None:
        return None
    # A malformed scope is `invalid_scope` (RFC 6749 §5.2: "invalid, unknown, malformed").
    tokens = scope.split(" ")
    if not all(map(identifiers.is_scope_token, tokens)):
        raise InvalidScope(
            "scope must be space-delimited scope tokens (RFC 6749 §3.3)", reason="scope"
        )
    distinct = tuple(dict.fromkeys(tokens))
    if len(distinct) > MAX_SCOPES:
        raise InvalidScope(f"scope names more than {MAX_SCOPES} scopes", reason="scope")
    return distinct
