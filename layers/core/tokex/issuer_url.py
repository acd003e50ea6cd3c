"""What an issuer identifier may be: one rule for tokex's own issuer (`TOKEX_ISSUER`) and
for every trusted JWT issuer (OpenID Connect Discovery §2; docs/contract.md "Issuer").

The identifier is compared byte for byte with a token's `iss`, so it is written one way
only: https with a host, no query, fragment or credentials, no trailing slash, printable
ASCII. Plain http is for `tokex local`'s loopback issuers alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_ISSUER_URL_LENGTH = 512


def issuer_url_problem(url: str, *, allow_http_loopback: bool) -> str | None:
    """None if `url` is an issuer identifier; else what is wrong with it, worded to follow
    the setting's name ("TOKEX_ISSUER must be ...")."""
    if not url or len(url) > MAX_ISSUER_URL_LENGTH or any(not "!" <= c <= "~" for c in url):
        return "is not a URL"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket
        return "is not a URL"
    if parts.query or parts.fragment or parts.username or parts.password or url.endswith("/"):
        return "must be a bare URL without a trailing slash"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and allow_http_loopback and parts.hostname in LOOPBACK_HOSTS:
        return None
    return "must be an https URL (plain http only on loopback in local mode)"
