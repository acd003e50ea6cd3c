"""Form-encoded request bodies, shared by `POST /token` (token_request.py) and
`POST /introspect`: the media type (RFC 9110 §8.3.1; RFC 6749 §4.1.3, RFC 8693 §2.1), the
body size, strict UTF-8 and each parameter at most once (docs/contract.md).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from tokex import identifiers
from tokex.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY_BYTES = 16 * 1024
# A token request has at most 7 parameters tokex reads (token_request.py), and
# unrecognised ones are ignored (RFC 6749 §3.2), so OAuth libraries that add a few of
# their own (client_id, state, ...) still work. The cap bounds the parser's work on
# hostile input below what the 16 KiB body alone would allow (~5,000 empty parameters);
# it is far above any real form.
MAX_FORM_PARAMETERS = 64
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
# RFC 9110 §5.6.2 token, §5.6.3 OWS (SP / HTAB only), §5.6.4 quoted-string (ASCII only:
# obs-text is obsolete and never needed for a charset).
_TOKEN = identifiers.HTTP_TOKEN.pattern
# Possessive: the whitespace after one `;` and before the next could otherwise be split
# between the two in every way, and a failing match would try them all (a header of a
# hundred characters kept the parser busy for seconds).
_OWS = r"[ \t]*+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_PARAMETER_TEXT = rf"{_OWS};{_OWS}(?:(?P<name>{_TOKEN})=(?P<value>{_TOKEN}|{_QUOTED}))?"
_MEDIA_TYPE = re.compile(
    rf"{_OWS}(?P<type>{_TOKEN}/{_TOKEN})(?P<parameters>(?:{_PARAMETER_TEXT})*){_OWS}"
)
_PARAMETER = re.compile(_PARAMETER_TEXT)


def check_content_type(content_type: str | None) -> None:
    """Form encoding only (RFC 6749 §4.1.3 / RFC 8693 §2.1); UTF-8 if a charset is named.

    Parsed as RFC 9110 §8.3.1 writes it, nothing looser: `type "/" subtype *( OWS ";" OWS
    [ name "=" ( token / quoted-string ) ] )`, where optional whitespace is only SP and
    HTAB (§5.6.3). A non-breaking space or a control character is not whitespace.
    """
    match = _MEDIA_TYPE.fullmatch(content_type or "")
    if match is None or match["type"].lower() != FORM_MEDIA_TYPE:
        raise UnsupportedMediaType(_media_type_problem(content_type or ""), reason="content_type")
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
    if len(charsets) > 1:
        raise UnsupportedMediaType(
            "Content-Type names its charset more than once", reason="charset"
        )
    if charsets and charsets != ["utf-8"]:
        raise UnsupportedMediaType("the form must be UTF-8 encoded", reason="charset")


def _media_type_problem(content_type: str) -> str:
    """What is wrong with a media type that did not parse as the form's, in the words a
    client can act on: sent twice (API Gateway joins repeated headers with a comma), the
    right type with malformed parameters, or another type."""
    if "," in content_type:
        return "Content-Type must be sent once, with one value"
    media_type, parameters, _ = content_type.partition(";")
    if parameters and media_type.strip(" \t").lower() == FORM_MEDIA_TYPE:
        return (
            f"Content-Type {FORM_MEDIA_TYPE} has malformed parameters: each is `; name=value`,"
            " with no whitespace around `=`"
        )
    return f"Content-Type must be {FORM_MEDIA_TYPE}"


def check_body_size(body: bytes) -> None:
    """The one size limit of both endpoints' bodies (413)."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes", reason="body_size")


def parse_form(body: bytes) -> dict[str, str]:
    """Decode the form: strict UTF-8, each parameter at most once (contract).

    Read as the URL Standard's urlencoded parser reads it: an empty field (`a=1&&b=2`, a
    trailing `&`) is no parameter, and a name without `=` has an empty value, which the
    endpoints treat as omitted (RFC 6749 §3.2). A name sent twice is refused even when one
    of the values is empty (§3.2: "MUST NOT be included more than once")."""
    check_body_size(body)
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8", reason="form") from None
    # Counted before parsing, as parse_qsl yields them: an empty field is no parameter.
    if text.count("&") >= MAX_FORM_PARAMETERS and _parameters(text) > MAX_FORM_PARAMETERS:
        raise InvalidRequest(
            f"the form has more than {MAX_FORM_PARAMETERS} parameters",
            reason="form_parameters",
        )
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "the form has a percent-encoded value that is not UTF-8", reason="form"
        ) from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter '{_printable(name)}' is repeated", reason="repeated")
        form[name] = value
    return form


def _parameters(text: str) -> int:
    """How many parameters the form holds: its non-empty `&`-separated fields."""
    return sum(1 for field in text.split("&") if field)


def _unquote(value: str) -> str:
    """A token as it is; a quoted-string without its quotes and backslash escapes."""
    if not value.startswith('"'):
        return value
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def _printable(value: str, limit: int = 40) -> str:
    """Echo caller input only as a short, printable excerpt."""
    cleaned = "".join(c if c.isprintable() else "?" for c in value[:limit])
    return cleaned + ("..." if len(value) > limit else "")
