"""ProxyServer: the listeners of a ProxyConfig, their lifecycle and the secret.

    server = ProxyServer(ProxyConfig.from_file("proxy.toml"))
    server.start()            # every listener bound and answering; the secret file written
    server.addresses          # {"listen": ("127.0.0.1", 8080), "routes[1].listen": (...)}
    server.serve_forever()    # returns once shutdown() is done (from a signal handler, ...)
    server.shutdown(10.0)     # stop accepting, finish what is in flight, close the rest

A thread per connection (http.server's ThreadingHTTPServer), keep-alive towards the
application and the upstreams. In Lambda the secret of `/.tokex/token` is the function's
session token (`secret=os.environ["AWS_SESSION_TOKEN"]`); without `secret=` a new one is
made at every start and written to the configuration's `secret_file` (secret.py).
"""

from __future__ import annotations

import errno
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tokex.client.endpoint import is_loopback
from tokex.proxy.config import Address, ProxyConfig, Route
from tokex.proxy.connections import (
    Connections,
    connection_limit,
    descriptors_needed,
    raise_descriptor_limit,
)
from tokex.proxy.forward import Upstream
from tokex.proxy.handler import ProxyHandler, ProxyState
from tokex.proxy.log import JsonLog
from tokex.proxy.routing import RouteTable
from tokex.proxy.secret import new_secret, remove_secret_file, write_secret_file
from tokex.proxy.tokens import RouteTokens, TokenSource

POLL_SECONDS = 0.2  # how soon an accept loop notices shutdown
# A flood of connections over the limit (connections.py) is one log line per this long;
# so are the failures of `accept` for want of a descriptor.
REFUSAL_LOG_SECONDS = 10.0
# `accept` failed for want of a descriptor (another part of the process holds them, the
# system ran out) or of memory: the connection waits in the listen queue and the accept
# loop this long before trying again, rather than spin on a listener that stays readable.
ACCEPT_RETRY_SECONDS = 0.1
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
OUT_OF_MEMORY = frozenset({errno.ENOBUFS, errno.ENOMEM})
DEFAULT_GRACE_SECONDS = 10.0
# The first port any user may bind (Linux's net.ipv4.ip_unprivileged_port_start): 1024
# on most hosts, 0 in Docker's and Podman's containers and containerd 2.0's CRI.
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
DEFAULT_UNPRIVILEGED_PORT_START = 1024
PLAIN_HTTP_WARNING = (
    "the token goes in the clear to a loopback port any local user may bind: another"
    " user's process that binds it while the service is down or restarting receives the"
    " token; use https to loopback, or a port only root may bind, to rule it out"
)


class ListenFailed(OSError):
    """A listener's address cannot be bound (in use, not this host's, not permitted);
    `listener` is its name in the configuration."""

    def __init__(self, errno_: int | None, why: str, listener: str, address: object) -> None:
        super().__init__(errno_, f"{listener} {address}: {why}")
        self.listener = listener


class _Listener(ThreadingHTTPServer):
    daemon_threads = True  # connections are drained by ProxyServer.shutdown, not joined
    block_on_close = False
    request_queue_size = 128

    def __init__(self, name: str, address: Address, state: ProxyState) -> None:
        self.address_family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.name = name
        self.state = state
        # Its requests must name a loopback host (handler.py: DNS rebinding).
        self.loopback = is_loopback(address.host)
        self._last_logged: dict[str, float] = {}  # per event, for those logged rarely
        super().__init__((address.host, address.port), ProxyHandler)

    def server_bind(self) -> None:
        # HTTPServer's would look the host's name up in DNS (getfqdn): nothing needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as err:  # socketserver drops it and polls again at once
            if err.errno in OUT_OF_DESCRIPTORS | OUT_OF_MEMORY:
                left = "descriptor" if err.errno in OUT_OF_DESCRIPTORS else "memory"
                reason = f"no {left} left: the connection waits to be accepted"
                error = errno.errorcode[err.errno]
                self._log_rarely("accept_failed", reason=reason, error=error)
                time.sleep(ACCEPT_RETRY_SECONDS)
            raise

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.state.connections.admit(request):
            return True
        self._log_rarely("connection_refused", reason="too many connections")
        return False  # closed at once (socketserver), no thread started

    def _log_rarely(self, event: str, **fields: Any) -> None:
        """One line per REFUSAL_LOG_SECONDS for the event, however often it happens."""
        now = time.monotonic()
        if now - self._last_logged.get(event, -REFUSAL_LOG_SECONDS) >= REFUSAL_LOG_SECONDS:
            self._last_logged[event] = now
            self.state.log.write(event, listener=self.name, **fields)

    def shutdown_request(self, request: Any) -> None:
        self.state.connections.released(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # One JSON line, not a traceback on stderr (and never a request's content).
        error = sys.exc_info()[1]
        self.state.log.write("connection_error", listener=self.name, error=type(error).__name__)


class ProxyServer:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        token_source: TokenSource | None = None,
        secret: str | None = None,
        log: JsonLog | None = None,
    ) -> None:
        """`token_source`: RouteTokens(config) unless given; `secret`: the token
        endpoint's (Lambda: the session token), else a new one per start, written to a file;
        `log`: JSON lines on stderr unless given."""
        if secret is not None and not secret:
            raise ValueError("secret must not be empty: it would let anyone have the tokens")
        self.config = config
        self.log = log or JsonLog()
        self.tokens = token_source or RouteTokens(config, log=self.log)
        self.secret_file: Path | None = None  # where start() wrote the secret
        self.addresses: dict[str, tuple[str, int]] = {}
        self._given_secret = secret
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._connections = Connections()
        self._state = ProxyState(
            table=RouteTable(config.routes),
            routes=config.routes,
            upstreams={route.name: Upstream(route) for route in config.routes},
            tokens=self.tokens,
            log=self.log,
            secret=secret or new_secret(),
            connections=self._connections,
        )

    def start(self) -> None:
        """Bind every listener and serve them (background threads); then write the secret
        file. ListenFailed if an address cannot be bound (nothing is left bound), OSError if
        the file cannot be written, secret.UnsafeSecretFile if its path is unsafe."""
        routes = len(self.config.routes)
        descriptors = raise_descriptor_limit(descriptors_needed(routes))
        self._connections.limit = connection_limit(descriptors, routes)
        try:
            for name, address in self.config.listeners.items():
                try:
                    listener = _Listener(name, address, self._state)
                except OSError as err:
                    why = err.strerror or str(err)
                    raise ListenFailed(err.errno, why, name, address) from None
                self._listeners.append(listener)
                self.addresses[name] = (address.host, int(listener.server_address[1]))
            if self._given_secret is None:
                self.secret_file = write_secret_file(self._state.secret, self.config.secret_file)
        except BaseException:
            for listener in self._listeners:
                listener.server_close()
            self._listeners.clear()
            raise
        for listener in self._listeners:
            thread = threading.Thread(
                target=listener.serve_forever,
                args=(POLL_SECONDS,),
                name=f"tokex-proxy {listener.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        unprivileged_from = unprivileged_port_start()
        for route in self.config.routes:
            if _unprivileged_plain_http(route, unprivileged_from):
                self.log.write(
                    "plain_http_upstream",
                    route=route.name,
                    upstream=route.upstream,
                    warning=PLAIN_HTTP_WARNING,
                )
        self.log.write(
            "started",
            listening={name: _url(host, port) for name, (host, port) in self.addresses.items()},
            secret_file=str(self.secret_file) if self.secret_file else None,
            max_connections=self._connections.limit,
        )

    def serve_forever(self) -> None:
        """Block until shutdown() is done."""
        self._stopped.wait()

    def shutdown(self, timeout: float = DEFAULT_GRACE_SECONDS) -> bool:
        """Stop accepting (new connections are refused), close idle connections, let the
        requests in flight finish for up to `timeout` seconds, close the rest. True if
        every request finished. Safe to call more than once, from any thread."""
        ends = time.monotonic() + timeout  # the caller's deadline (Lambda's, say) holds
        with self._stop_lock:
            if self._stopped.is_set():
                return True
            if not self._threads:  # never started (or its start failed): nothing to stop
                self._stopped.set()
                return True
            # Each accept loop notices within a poll: all at once, not one poll after the
            # other (a route with a listener of its own adds one).
            stopping = [
                threading.Thread(target=listener.shutdown, daemon=True)
                for listener in self._listeners
            ]
            for thread in stopping:
                thread.start()
            for thread in stopping:
                thread.join(timeout=POLL_SECONDS * 5)
            for listener in self._listeners:
                listener.server_close()  # the port is closed: connections are refused
            for thread in self._threads:
                thread.join(timeout=POLL_SECONDS)
            in_flight = self._connections.in_flight()
            finished = self._connections.drain(max(0.0, ends - time.monotonic()))
            for upstream in self._state.upstreams.values():
                upstream.close()
            if self.secret_file is not None:
                remove_secret_file(
                    self.secret_file,
                    self._state.secret,
                    with_directory=self.config.secret_file is None,
                )
            self.log.write("stopped", in_flight=in_flight, all_finished=finished)
            self._stopped.set()
            return finished


def unprivileged_port_start() -> int:
    """The first port any user may bind here; 1024 where the system does not say."""
    try:
        return int(UNPRIVILEGED_PORT_START.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_UNPRIVILEGED_PORT_START


def _unprivileged_plain_http(route: Route, unprivileged_from: int) -> bool:
    """Whether the route's token goes over plain http (to loopback: config.py allows no
    other) to a port any user may bind: docs/injection.md "Threat model"."""
    parts = urllib.parse.urlsplit(route.upstream)
    return parts.scheme == "http" and (parts.port or 80) >= unprivileged_from


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
