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
    character or whitespace, or a name the IDNA encoding every connection applies refuses
    (an empty label, `a..b`, or one longer than 63 characters)."""
    if any(c.isspace() or not c.isprintable() for c in host):
        return "has whitespace or control characters"
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
    query, fragment or userinfo, not one of the issuer's own endpoints."""

    shown = redacted(endpoint)

    def refuse(why: str) -> TokenError:
        return TokenError(f"endpoint {shown!r} {why}", error=INVALID_ENDPOINT, url=shown)

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
    if parts.username or parts.password or parts.query or parts.fragment:
        raise refuse("must be a plain base URL, without user, query or fragment")
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
