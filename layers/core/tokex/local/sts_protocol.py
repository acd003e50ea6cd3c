"""The AWS query protocol as STS speaks it, for the local STS-compatible endpoint: form
parameters in, XML out, and STS's error shape (STS API Reference, "Common Errors")."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Mapping
from xml.sax.saxutils import escape

STS_XML_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
STS_VERSION = "2011-06-15"


class StsError(Exception):
    """An STS error answer: HTTP status, error code and message, as STS sends them."""

    def __init__(self, status: int, code: str, message: str, *, sender: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.sender = sender  # a fault of the request (Sender) or of the service (Receiver)


def validation_error(value: object, field: str, constraint: str) -> StsError:
    """STS's wording for a parameter that breaks its model's constraints."""
    shown = "null" if value is None else f"'{value}'"
    return StsError(
        400,
        "ValidationError",
        f"1 validation error detected: Value {shown} at '{field}' failed to satisfy "
        f"constraint: {constraint}",
    )


def form_parameters(query: str, body: bytes, content_type: str) -> dict[str, str]:
    """The request's parameters: the query string's and a form body's. A parameter given
    twice is refused, never "the last one wins"."""
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise StsError(400, "MalformedQueryString", "the body is not UTF-8") from None
        pairs += urllib.parse.parse_qsl(text, keep_blank_values=True)
    parameters: dict[str, str] = {}
    for name, value in pairs:
        if name in parameters:
            raise StsError(400, "MalformedQueryString", f"parameter {name} given twice")
        parameters[name] = value
    return parameters


def result_xml(action: str, result: Mapping[str, str], request_id: str) -> bytes:
    """`<{action}Response><{action}Result>…</…><ResponseMetadata>…` as STS answers."""
    members = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in result.items())
    return (
        f'<{action}Response xmlns="{STS_XML_NAMESPACE}">'
        f"<{action}Result>{members}</{action}Result>"
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>\n"
    ).encode()


def error_xml(error: StsError, request_id: str) -> bytes:
    kind = "Sender" if error.sender else "Receiver"
    return (
        f'<ErrorResponse xmlns="{STS_XML_NAMESPACE}">'
        f"<Error><Type>{kind}</Type><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId>"
        f"</ErrorResponse>\n"
    ).encode()


def new_request_id() -> str:
    return str(uuid.uuid4())
