"""The workload side: sign GetCallerIdentity, exchange it for a token."""

from tokex.client.signing import signed_get_caller_identity
from tokex.client.token_client import TokenClient, TokenError, request_token

__all__ = ["TokenClient", "TokenError", "request_token", "signed_get_caller_identity"]
