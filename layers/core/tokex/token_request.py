"""Parsing of `POST /token` bodies (RFC 8693 §2.1 over RFC 6749 §3.2).

Only the transport-level shape is checked here: form encoding, each parameter once,
value formats. What the `subject_token` *proves* is for `tokex.evidence`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from tokex.errors import (
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedGrantType,
    UnsupportedMediaType,
)
from tokex.evidence.sigv4_request import decode_b64url_json, decode_subject_token

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
SIGV4_TOKEN_TYPE = "urn:tokex:token-type:aws-sigv4"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"

MAX_BODY_BYTES = 16 * 1024
# A token request has at most 7 parameters tokex reads, and unrecognised ones are ignored
# (RFC 6749 §3.2), so OAuth libraries that add a few of their own (client_id, state,
# ...) still work. The cap bounds the parser's work on hostile input below what the
# 16 KiB body alone would allow (~5,000 empty parameters); it is far above any real form.
MAX_FORM_PARAMETERS = 64
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
MAX_INSTANCE_EVIDENCE_CHARS = 12 * 1024
MAX_SCOPES = 32
_AUDIENCE = re.compile(r"[A-Za-z0-9._:/-]{1,256}")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
# RFC 9110 §5.6.2 token, §5.6.3 OWS (SP / HTAB only), §5.6.4 quoted-string (ASCII only:
# obs-text is obsolete and never needed for a charset).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_OWS = r"[ \t]*"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_PARAMETER_TEXT = rf"{_OWS};{_OWS}(?:(?P<name>{_TOKEN})=(?P<value>{_TOKEN}|{_QUOTED}))?"
_MEDIA_TYPE = re.compile(
    rf"{_OWS}(?P<type>{_TOKEN}/{_TOKEN})(?P<parameters>(?:{_PARAMETER_TEXT})*){_OWS}"
)
_PARAMETER = re.compile(_PARAMETER_TEXT)
# The parameters the exchange reads; any other is ignored (docs/contract.md), except those
# refused as unsupported below.
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
    signed_request: dict[str, Any]
    audience: str
    scopes: tuple[str, ...] | None
    instance_evidence: dict[str, Any] | None


def check_content_type(content_type: str | None) -> None:
    """Form encoding only (RFC 6749 §4.1.3 / RFC 8693 §2.1); UTF-8 if a charset is named.

    Parsed as RFC 9110 §8.3.1 writes it, nothing looser: `type "/" subtype *( OWS ";" OWS
    [ name "=" ( token / quoted-string ) ] )`, where optional whitespace is only SP and
    HTAB (§5.6.3). A non-breaking space or a control character is not whitespace.
    """
    match = _MEDIA_TYPE.fullmatch(content_type or "")
    if match is None or match["type"].lower() != FORM_MEDIA_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {FORM_MEDIA_TYPE}", reason="content_type")
    charsets = []
    for parameter in _PARAMETER.finditer(match["parameters"]):
        name, value = parameter["name"], parameter["value"]
        if name is None:
            continue  # an empty parameter (`;;`) is allowed by the grammar
        if name.lower() != "charset":
            raise UnsupportedMediaType(
                "Content-Type may carry only the charset parameter", reason="content_type_param"
            )
        charsets.append(_unquote(value).lower())
    if charsets and charsets != ["utf-8"]:
        raise UnsupportedMediaType("the form must be UTF-8 encoded", reason="charset")


def parse_form(body: bytes) -> dict[str, str]:
    """Decode the form: strict UTF-8, each parameter at most once (contract)."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes", reason="body_size")
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not a valid UTF-8 form", reason="form") from None
    # Counted as parse_qsl counts fields (one more than the separators), before parsing.
    if text and text.count("&") + 1 > MAX_FORM_PARAMETERS:
        raise InvalidRequest(
            f"the form has more than {MAX_FORM_PARAMETERS} parameters",
            reason="form_parameters",
        )
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the request body is not a valid UTF-8 form", reason="form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter '{_printable(name)}' is repeated", reason="repeated")
        form[name] = value
    return form


def parse_token_request(body: bytes, content_type: str | None) -> TokenRequest:
    check_content_type(content_type)
    form = parse_form(body)
    # RFC 6749 §3.2: an empty value is treated as omitted.
    form = {name: value for name, value in form.items() if value != ""}
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required", reason="grant_type_missing")
    if grant_type != TOKEN_EXCHANGE_GRANT:
        raise UnsupportedGrantType(
            f"grant_type must be {TOKEN_EXCHANGE_GRANT}", reason="grant_type"
        )
    for name in sorted(_UNSUPPORTED & form.keys()):
        raise InvalidRequest(f"parameter '{name}' is not supported", reason="unsupported_param")
    if form.get("subject_token_type") != SIGV4_TOKEN_TYPE:
        raise InvalidRequest(
            f"subject_token_type must be {SIGV4_TOKEN_TYPE}", reason="subject_token_type"
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
    if not _AUDIENCE.fullmatch(audience):
        raise InvalidRequest(
            "audience must be 1-256 characters of A-Z a-z 0-9 . _ : / -", reason="audience"
        )
    evidence = form.get("aws_instance_identity")
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
    tokens = scope.split(" ")
    if len(tokens) > MAX_SCOPES or not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        raise InvalidRequest(
            "scope must be space-delimited scope tokens (RFC 6749 §3.3)", reason="scope"
        )
    return tuple(dict.fromkeys(tokens))


def _unquote(value: str) -> str:
    """A token as it is; a quoted-string without its quotes and backslash escapes."""
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def _printable(value: str, limit: int = 40) -> str:
    """Echo caller input only as a short, printable excerpt."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return cleaned + ("..." if len(value) > limit else "")
