"""The issuer's base URL, as a workload or an operator gives it: what a signed request may
be sent to (`check_endpoint`), and where plain http is allowed (`is_loopback`). Apart from
the client so that commands that only check a URL (kong-config) load no AWS SDK."""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

from tokex import identifiers
from tokex.client.token_error import INVALID_ENDPOINT, TokenError
from tokex.regions import REGIONS_PREFIX

# Paths a tokex issuer serves (docs/contract.md): an endpoint ending in one is not the base
# URL.
ISSUER_PATHS = (
    "/token",
    "/introspect",
    "/.well-known/openid-configuration",
    "/.well-known/jwks.json",
)
_LOOPBACK_NAMES = {"localhost"}


# `scheme://user:password@`, or `user:password@` without a scheme: what an error message
# quoting a URL must not repeat. Up to the last `@` (a password typed without its escapes
# may hold `/`, `?`, `#`, `@` or spaces): a path's `@` hides the host too, which costs
# nothing.
_USERINFO = re.compile(r"^(\s*(?:[A-Za-z][A-Za-z0-9+.-]*://)?).*@", re.DOTALL)


def redacted(url: str) -> str:
    """`url` fit to quote in an error or a log: a password or user name in it (refused, but
    quoted by the refusal) replaced with `***`."""
    return _USERINFO.sub(r"\1***@", url)


# The same inside a text, such as botocore's messages, which quote the endpoint URL
# (`Could not connect to the endpoint URL: "http://user:pw@host/"`): up to the last `@`
# before the end of the URL's authority.
_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#\"']*@")


def redacted_text(text: str) -> str:
    """`text` with the user name and password of every URL it quotes replaced with `***`."""
    return _USERINFO_IN_TEXT.sub(r"\1***@", text)


def is_loopback(host: str) -> bool:
    """Plain http is allowed to this host: only `tokex local` serves http, on loopback."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_problem(host: str) -> str | None:
    """Why `host` names nothing a connection could be made to, or None: a control
    character or whitespace, a non-ASCII character, or a name the IDNA encoding every
    connection applies refuses (an empty label, `a..b`, or one longer than 63
    characters). An internationalized name is taken as its A-label only: the libraries
    on the way encode a Unicode one each their own way (IDNA 2003, 2008, or Latin-1 in
    the Host header), or fail."""
    if any(c.isspace() or not c.isprintable() for c in host):
        return "has whitespace or control characters"
    if not host.isascii():
        return (
            "has non-ASCII characters: give an internationalized name as its IDNA A-label (xn--...)"
        )
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError:
        return "is not a valid host name (an empty label, or one longer than 63 characters)"
    return None


def check_endpoint(endpoint: str) -> str:
    """The issuer's base URL: https (plain http only on loopback, for `tokex local`), no
    query, fragment or userinfo, no whitespace, control or non-ASCII character (an
    internationalized host as its A-label), not one of the issuer's own endpoints."""

    shown = redacted(endpoint)

    def refuse(why: str) -> TokenError:
        return TokenError(f"endpoint {shown!r} {why}", error=INVALID_ENDPOINT, url=shown)

    # Before urlsplit, which drops tabs and line breaks without a word. A request line
    # cannot carry these, nor non-ASCII (below): every request would fail, mislabelled.
    if any(c.isspace() or not c.isprintable() for c in endpoint):
        raise refuse("has whitespace or control characters: percent-encode them (a space is %20)")
    if "://" not in endpoint:
        host = endpoint.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        scheme = "http" if is_loopback(host) else "https"
        raise refuse(f"has no scheme: pass {scheme}://{shown}")
    try:
        parts = urllib.parse.urlsplit(endpoint.rstrip("/"))
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as err:  # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
        raise refuse(f"is not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("is not an http(s) URL with a host")
    if problem := host_problem(parts.hostname):
        raise refuse(f"has a host that {problem}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise refuse(
            "is plain http: use https (http only on loopback, e.g. http://127.0.0.1:8787 of "
            "`tokex local`)"
        )
    # "@", not username: urlsplit reads `http://@host` as having no user name at all.
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise refuse("must be a plain base URL, without user, query or fragment")
    if not parts.path.isascii():
        raise refuse("has a path with non-ASCII characters: percent-encode them (é is %C3%A9)")
    path = parts.path.rstrip("/")
    for served in ISSUER_PATHS:
        if path.endswith(served):  # e.g. the "token endpoint" `tokex local` prints
            base_path = path[: -len(served)]
            # A Region's own endpoint (`{iss}/regions/<region>/token`, as a multi-Region
            # discovery document lists it) belongs to the issuer above `/regions/`.
            above, regional, region = base_path.rpartition(REGIONS_PREFIX.rstrip("/") + "/")
            if regional and "/" not in region and identifiers.is_region(region):
                base_path = above
            base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, base_path, "", ""))
            raise refuse(
                f"is the issuer's {served} endpoint, not its base URL: pass the issuer URL {base}"
            )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
