"""The workload side: sign GetCallerIdentity (or bring a JWT from sts:GetWebIdentityToken,
or an EKS pod's service-account token: `evidence=`), exchange it for a token.

`TokexAuth` (requests) and `TokexHttpxAuth` (httpx) are imported on first use, so
`import tokex.client` needs neither library (extras `tokex[requests]`, `tokex[httpx]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokex.client.signing import signed_get_caller_identity
from tokex.client.token_client import REFRESH_AT, TokenClient, TokenError, request_token

if TYPE_CHECKING:
    from tokex.client.httpx_auth import TokexHttpxAuth
    from tokex.client.requests_auth import TokexAuth

__all__ = [
    "REFRESH_AT",
    "TokenClient",
    "TokenError",
    "TokexAuth",
    "TokexHttpxAuth",
    "request_token",
    "signed_get_caller_identity",
]

_LAZY = {"TokexAuth": ("requests_auth", "requests"), "TokexHttpxAuth": ("httpx_auth", "httpx")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, extra = _LAZY[name]
        try:
            return getattr(importlib.import_module(f"tokex.client.{module}"), name)
        except ModuleNotFoundError as err:
            # The library it plugs into (or one of its own, as httpx's anyio) is missing.
            raise ImportError(
                f"{name} needs the {extra} extra: pip install 'tokex[{extra}]' ({err})"
            ) from err
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
