"""`tokex proxy`: the workload's outbound API calls, with a token attached on the way out
(docs/injection.md).

The application calls `http://127.0.0.1:8080/orders/1`; the proxy strips any
`Authorization` it sent, attaches `Authorization: Bearer <token>` for the route's audience
and forwards the request, unchanged but for hop-by-hop headers and `Host`, to the route's
upstream over verified TLS. The workload never handles a credential.

    config = ProxyConfig.from_file("proxy.toml")     # or ProxyConfig.from_args(...)
    server = ProxyServer(config)                      # token_source=, secret= to override
    server.start(); server.serve_forever()            # server.shutdown(timeout) to stop

- config.py: ProxyConfig, Route, ProxyConfigError (the file format, every refusal keyed);
- server.py: ProxyServer (listeners, graceful shutdown, the secret);
- handler.py: one request (routing.py, headers.py, forward.py, endpoints.py);
- tokens.py: RouteTokens, the TokenSource the server asks (TokenClient underneath).
"""

from tokex.proxy.config import Address, ProxyConfig, ProxyConfigError, Route
from tokex.proxy.headers import SECRET_HEADER
from tokex.proxy.log import JsonLog
from tokex.proxy.secret import UnsafeSecretFile
from tokex.proxy.server import ProxyServer
from tokex.proxy.tokens import RouteTokens, TokenSource, TokenUnavailable

__all__ = [
    "SECRET_HEADER",
    "Address",
    "JsonLog",
    "ProxyConfig",
    "ProxyConfigError",
    "ProxyServer",
    "Route",
    "RouteTokens",
    "TokenSource",
    "TokenUnavailable",
    "UnsafeSecretFile",
]
