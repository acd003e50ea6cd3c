"""--audience and --scope as the exchange parses them (token_request.py's rules), for the
commands that build or explain a token request: a value the exchange would refuse as
malformed is a usage error here (exit 2), found before any network call."""

from __future__ import annotations

from tokex import identifiers
from tokex.cli.errors import UsageError
from tokex.token_request import MAX_SCOPES


def check_audience(audience: str) -> str:
    if not identifiers.is_audience(audience):
        raise UsageError(
            f"--audience {audience!r}: must be {identifiers.AUDIENCE_RULE} "
            "(the API's identifier, as policies name it)",
            input="--audience",
        )
    return audience


def requested_scopes(values: list[str]) -> tuple[str, ...] | None:
    """As the exchange parses `scope`: None when absent, distinct tokens in order. Each
    --scope may hold several, separated by spaces (runs of them too); any other whitespace
    is no separator (RFC 6749 section 3.3) and makes the token invalid, rather than a
    tab or a newline silently asking for a second scope."""
    for value in values:
        if not value.strip(" "):
            # No `scope` asks for every scope the policy grants: `--scope "$SCOPE"` with
            # SCOPE unset must be refused, never sent as that broadest request.
            raise UsageError(
                f"--scope {value!r}: names no scope (leave --scope out to ask for every "
                "scope the policy grants)",
                input="--scope",
            )
    tokens = tuple(dict.fromkeys(token for value in values for token in value.split(" ") if token))
    if not tokens:
        return None
    for token in tokens:
        if not identifiers.is_scope_token(token):
            raise UsageError(
                f"--scope {token!r}: a scope is 1-128 printable ASCII characters without "
                'spaces, " or \\ (RFC 6749 section 3.3)',
                input="--scope",
            )
    # Counted as the exchange counts them: a repeat asks for nothing more.
    if len(tokens) > MAX_SCOPES:
        raise UsageError(f"--scope: at most {MAX_SCOPES} distinct scopes", input="--scope")
    return tokens
