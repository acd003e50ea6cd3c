"""The /introspect request (RFC 7662 §2.1) read from its HTTP form, in the contract's order.

Media type (415), size (413), client credentials (401 `invalid_client`), then - only
once the caller has authenticated the client with them - the form (400). A client with
wrong credentials learns nothing about its form: RFC 7662 §2.1 requires the protected
resource to authenticate before the server says anything about the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tokex.errors import InvalidRequest
from tokex.forms import check_body_size, check_content_type, parse_form
from tokex.introspection_clients import CLIENT_ID, parse_basic_authorization


@dataclass(frozen=True)
class IntrospectionRequest:
    """The client's credentials and the form, not yet read (see `token`)."""

    client_id: str
    secret: str = field(repr=False)
    body: bytes = field(repr=False)

    @property
    def audit_client_id(self) -> str | None:
        """The client id for the audit line, only when it looks like one of ours: the rest
        is caller-controlled text."""
        return self.client_id if CLIENT_ID.fullmatch(self.client_id) else None

    def token(self) -> str:
        """The token to introspect. Call it after the client is authenticated: this is
        where the form's 400s come from."""
        # An empty value counts as omitted (RFC 6749 §3.2), as at /token, except `token`:
        # an empty token is one that is not active (RFC 7662 §2.2), the answer a resource
        # server forwarding an empty bearer credential must get, never a 400.
        form = {
            name: value
            for name, value in parse_form(self.body).items()
            if value != "" or name == "token"
        }
        # One authentication method per request (RFC 6749 §2.3): a secret in the body
        # beside HTTP Basic is a second one, and a body `client_id` naming another client
        # contradicts the header. Either means a confused or forging caller.
        if "client_secret" in form:
            raise InvalidRequest(
                "client_secret in the body: authenticate with HTTP Basic only",
                reason="two_client_authentications",
            )
        if form.get("client_id", self.client_id) != self.client_id:
            raise InvalidRequest(
                "client_id in the body names another client than the Authorization header",
                reason="two_client_authentications",
            )
        if "token" not in form:
            raise InvalidRequest("token is required", reason="token_missing")
        # `token_type_hint` may be ignored (RFC 7662 §2.1): there is one token type.
        return form["token"]


def parse_introspection_request(body: bytes, headers: Mapping[str, str]) -> IntrospectionRequest:
    """Checks what can be checked before client authentication; `headers` keyed in lower
    case, as HTTP API events carry them."""
    check_content_type(headers.get("content-type"))
    check_body_size(body)
    client_id, secret = parse_basic_authorization(headers.get("authorization"))
    return IntrospectionRequest(client_id, secret, body)
