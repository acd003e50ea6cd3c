"""HTTP that is over by the request's deadline, whatever the peer does.

Socket timeouts bound one operation, not a call: a peer that sends a byte every half
second keeps each read short and the call alive for ever (issue 9 measured 34.5 s for a
dripping STS endpoint). Connections made here open within min(connect timeout, time
left), send within the same bound, and read the response through a file whose every
`recv` waits at most min(read timeout, time left) (deadline.py): once the deadline has
passed, the next read fails at once. Outside a request (no deadline: the CLI, the
publisher) only the per-operation timeouts apply.

Used by the STS forwarder (adapters/sts.py) and, through botocore's `before-send` event,
by the hot-path AWS clients (adapters/aws_clients.py); through `urllib_opener`, by the
workload client (client/token_client.py), whose `timeout` bounds a whole token call.
What this cannot bound: DNS resolution (`getaddrinfo` has no timeout; in Lambda it is the
VPC resolver, answered from cache) and a TLS handshake that trickles (each handshake read
is bounded by the connect timeout, set when the connection opens). tokex's peers are AWS
endpoints it chose, never the caller; the workload's is the issuer it was configured with.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from tokex import deadline

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


def bounded(timeout: object) -> float | None:
    """`timeout` (seconds; None = none) or the time left of the request's deadline, if
    shorter. Raises TimeoutError once the deadline has passed: nothing starts after it."""
    seconds = float(timeout) if isinstance(timeout, int | float) else None
    current = deadline.current()
    if current is None:
        return seconds
    left = current.remaining()
    if left <= 0:
        raise TimeoutError("the request's deadline has passed")
    return left if seconds is None else min(seconds, left)


class _DeadlineReads(io.RawIOBase):
    """The response side of a socket, each `recv` bounded by the deadline."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        # The socket's own file (SocketIO) keeps the socket open while the response is
        # read: http.client closes a `Connection: close` socket right after the headers.
        self._file = sock.makefile("rb", buffering=0)
        self._read_timeout = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.settimeout(bounded(self._read_timeout))
        return self._file.readinto(buffer)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


class _SocketForResponse:
    """What `http.client.HTTPResponse` asks of its socket: a file to read."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReads(self._sock))


class _BoundedResponse(http.client.HTTPResponse):
    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(_SocketForResponse(sock), *args, **kwargs)  # type: ignore[arg-type]


class _BoundedConnection:
    """Mixed into urllib3's connections: every connect and send fits in the budget left."""

    timeout: Any

    def connect(self) -> None:
        self.timeout = bounded(self.timeout)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        # urllib3 applies `timeout` to the socket of a reused connection before sending.
        self.timeout = bounded(self.timeout)
        super().request(*args, **kwargs)  # type: ignore[misc]


class _BoundedHTTPConnection(_BoundedConnection, HTTPConnection):
    response_class = _BoundedResponse


class _BoundedHTTPSConnection(_BoundedConnection, HTTPSConnection):
    response_class = _BoundedResponse


class _BoundedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _BoundedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection


class _BoundedStdlibHTTPConnection(_BoundedConnection, http.client.HTTPConnection):
    response_class = _BoundedResponse


class _BoundedStdlibHTTPSConnection(_BoundedConnection, http.client.HTTPSConnection):
    response_class = _BoundedResponse


class _BoundedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_BoundedStdlibHTTPConnection, req)


class _BoundedHTTPSHandler(urllib.request.HTTPSHandler):
    _context: ssl.SSLContext | None

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        # Python 3.12+ builds the default context here, once, when the opener is made (at
        # import, for a module-level opener): the CA store and SSL_CERT_FILE as they were
        # then. None makes each connection build it (https_open), reading them when it
        # is made, as Python 3.11 did.
        urllib.request.AbstractHTTPHandler.__init__(self)
        self._context = context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # Never http.client's own default (context None): it calls
        # `ssl._create_default_https_context`, which any code in the process may have
        # replaced with `ssl._create_unverified_context` (a common fix for
        # CERTIFICATE_VERIFY_FAILED, and how some distributions honour
        # PYTHONHTTPSVERIFY=0), which would hand the signed request to any certificate.
        context = self._context or ssl.create_default_context()
        if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
            raise urllib.error.URLError("this process's TLS context does not verify certificates")
        return self.do_open(_BoundedStdlibHTTPSConnection, req, context=context)


class _HttpsOnlyProxies(urllib.request.ProxyHandler):
    """The environment's proxies (`HTTPS_PROXY`, `NO_PROXY`, ...), for https only: plain
    http goes only to loopback (`tokex local`; client/endpoint.py refuses it elsewhere),
    where a proxy would be handed the signed request, and the token back, in the clear.
    An https request through a proxy is a CONNECT tunnel: the proxy sees neither."""

    def proxy_open(
        self, req: urllib.request.Request, proxy: str, type: str
    ) -> http.client.HTTPResponse | None:
        if req.type != "https":
            return None  # the next handler opens the connection itself
        return super().proxy_open(req, proxy, type)  # type: ignore[no-any-return]


def urllib_opener(
    *handlers: urllib.request.BaseHandler | type[urllib.request.BaseHandler],
    environment_proxies: bool = True,
) -> urllib.request.OpenerDirector:
    """urllib with `handlers`, whose connections open, send and read within the deadline
    (`deadline.request_deadline` around the call), as the pool manager's do; the
    environment's proxies serve https only, and none with `environment_proxies=False`."""
    proxies = _HttpsOnlyProxies() if environment_proxies else urllib.request.ProxyHandler({})
    return urllib.request.build_opener(
        proxies, _BoundedHTTPHandler, _BoundedHTTPSHandler, *handlers
    )


def pool_manager(
    *, connect_timeout: float, read_timeout: float, maxsize: int = 10
) -> urllib3.PoolManager:
    """Connections (kept alive and reused) whose every call ends by the deadline.

    No retries, no redirects unless asked, and no proxy from the environment (urllib3's
    PoolManager never reads one).
    """
    manager = urllib3.PoolManager(
        maxsize=maxsize,
        retries=False,
        timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
    )
    manager.pool_classes_by_scheme = {
        "http": _BoundedHTTPConnectionPool,
        "https": _BoundedHTTPSConnectionPool,
    }
    return manager
