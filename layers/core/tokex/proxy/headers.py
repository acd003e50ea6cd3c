"""What the proxy passes on of a request's and a response's headers.

Hop-by-hop headers belong to one connection and are never forwarded (RFC 9110 §7.6.1):
Connection and every header it names, Keep-Alive, Proxy-Connection, TE, Trailer,
Transfer-Encoding, Upgrade. Towards the upstream the proxy also drops the application's
`Authorization` (the route's token replaces it), `Proxy-Authorization` (a credential for
a proxy, not for the API), the proxy's own secret header, `Expect` (the proxy already
answered it) and the body's framing (set again for the body as it is sent), and sets
`Host` to the upstream's authority (Kong routes by host). No `X-Forwarded-For` or `Via`
is added: the upstream learns nothing about the host the workload runs on.

A field value folded over lines (obs-fold, RFC 9112 §5.2) is passed on unfolded, each
line break a space: a receiver that took the next line for a field of its own could be
made to frame the message differently (request smuggling).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

HeaderList = list[tuple[str, str]]

# The header of the local token endpoint (server.py): never forwarded anywhere.
SECRET_HEADER = "X-Tokex-Proxy-Secret"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Dropped from requests on top of the hop-by-hop ones (see the module docstring).
_NOT_FORWARDED = frozenset(
    {"authorization", "proxy-authorization", SECRET_HEADER.lower(), "host", "expect"}
)
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# Dropped from responses: a challenge for proxy credentials is not the application's.
_NOT_RETURNED = frozenset({"proxy-authenticate"})
_LINE_BREAK = re.compile(r"[\r\n]+[ \t]*")


def _passed_on(headers: Iterable[tuple[str, str]], dropped: frozenset[str]) -> HeaderList:
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    return [(name, _LINE_BREAK.sub(" ", value)) for name, value in kept]


def connection_options(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """What the Connection headers list, lower-cased: header names and `close` (RFC 9110
    §7.6.1, a list in any order, over one header or several)."""
    return frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    )


def connection_scoped(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """The hop-by-hop header names, those the Connection header lists included."""
    return HOP_BY_HOP | connection_options(headers)


def upstream_request_headers(
    incoming: Iterable[tuple[str, str]], *, authority: str, authorization: str
) -> HeaderList:
    """The application's headers as the upstream gets them, in order, repeats kept, with
    `Host: authority` and `Authorization: authorization` (the route's bearer token)."""
    incoming = list(incoming)
    dropped = connection_scoped(incoming) | _NOT_FORWARDED | _FRAMING
    return [("Host", authority), *_passed_on(incoming, dropped), ("Authorization", authorization)]


def client_response_headers(upstream: Iterable[tuple[str, str]]) -> HeaderList:
    """The upstream's response headers as the application gets them; Content-Length is
    kept (the body is copied byte for byte), Transfer-Encoding is the proxy's own. A
    response with both is read as chunked (RFC 9112 §6.3), so its Content-Length, which
    would frame the body the proxy sends differently, is dropped too."""
    upstream = list(upstream)
    dropped = connection_scoped(upstream) | _NOT_RETURNED
    if any(name.lower() == "transfer-encoding" for name, _ in upstream):
        dropped |= {"content-length"}
    return _passed_on(upstream, dropped)
