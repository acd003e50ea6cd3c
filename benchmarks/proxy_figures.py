"""`tokex proxy`'s overhead (docs/performance.md, docs/injection.md): the same GET to one
loopback TLS upstream over a kept-alive connection, made directly and through the proxy
with a warm token, interleaved sample by sample; and the first request through a proxy
that has no token yet (the exchange against `tokex local` included).

The upstream is a stdlib HTTPS server with the tests' throwaway CA (tests/support/tls.py,
whose certificates also pass Python 3.13's strict X.509 checks); the proxy is
`tokex.proxy.ProxyServer` in this process, logging its JSON lines to /dev/null (the work
of writing them is measured, not the terminal).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3

from benchmarks.figures import Figure, at_most, p50, reported
from benchmarks.proxied_local import BenchSystem
from tests.support.tls import make_pki
from tokex.local.provision import DEMO_AUDIENCE
from tokex.proxy import JsonLog, ProxyConfig, ProxyServer, RouteTokens

BODY = b'{"order": 1}'
# A warm proxied request may add this much at p50 (issue 13).
MAX_WARM_OVERHEAD_MS = 1.0


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _tls_upstream(directory: Path) -> Iterator[tuple[int, Path]]:
    pki = make_pki(directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    server.socket = pki.server.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], pki.ca_file
    finally:
        server.shutdown()
        server.server_close()


def _timed(pool: urllib3.HTTPConnectionPool) -> float:
    started = time.perf_counter()
    response = pool.request("GET", "/orders/1", retries=False)
    elapsed = time.perf_counter() - started
    if response.status != 200 or response.data != BODY:
        raise RuntimeError(f"the upstream answered {response.status}: {response.data[:200]!r}")
    return elapsed


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def proxy_figures(system: BenchSystem, samples: int) -> list[Figure]:
    system.proxy.set_delay(0)
    with (
        tempfile.TemporaryDirectory() as scratch,
        open(os.devnull, "w") as devnull,
        _tls_upstream(Path(scratch)) as (port, ca_file),
    ):
        config = ProxyConfig.from_args(
            endpoint=system.local.issuer,
            listen="127.0.0.1:0",
            upstream=f"https://127.0.0.1:{port}",
            audience=DEMO_AUDIENCE,
            ca_file=str(ca_file),
            secret_file=str(Path(scratch) / "secret"),
        )
        log = JsonLog(devnull)
        tokens = RouteTokens(config, log=log, session=system.workload)
        server = ProxyServer(config, token_source=tokens, secret=secrets.token_urlsafe(), log=log)
        server.start()
        try:
            host, proxy_port = server.addresses["listen"]
            proxied = urllib3.HTTPConnectionPool(host, proxy_port, maxsize=1)
            direct = urllib3.HTTPSConnectionPool(
                "127.0.0.1", port, maxsize=1, ca_certs=str(ca_file), cert_reqs="CERT_REQUIRED"
            )
            cold = _timed(proxied)  # no token yet: the exchange, then the upstream's TLS
            for _ in range(50):  # kept-alive connections on both paths
                _timed(direct), _timed(proxied)
            through, alone = [], []
            for _ in range(samples):
                alone.append(_timed(direct))
                through.append(_timed(proxied))
        finally:
            server.shutdown(5.0)
    overhead = (p50(through) - p50(alone)) * 1000
    return [
        reported("proxy: direct request p50, kept-alive TLS", p50(alone) * 1000, "ms"),
        reported("proxy: proxied request p50, warm token", p50(through) * 1000, "ms"),
        at_most("proxy: warm overhead p50", overhead, "ms", MAX_WARM_OVERHEAD_MS),
        reported("proxy: warm overhead p99", (_p99(through) - _p99(alone)) * 1000, "ms"),
        reported("proxy: first request, no token yet (exchange included)", cold * 1000, "ms"),
    ]
