"""`tokex proxy`'s overhead (docs/performance.md, docs/injection.md): the same GET to one
loopback TLS upstream over a kept-alive connection, made directly and through the proxy
with a warm token, interleaved sample by sample; and the first request through a proxy
that has no token yet (the exchange against `tokex local` included).

The upstream is a stdlib HTTPS server with a throwaway CA made here (the benchmark does
not import the tests); the proxy is `tokex.proxy.ProxyServer` in this process, logging
its JSON lines to /dev/null (the work of writing them is measured, not the terminal).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks.figures import Figure, at_most, p50, reported
from benchmarks.proxied_local import BenchSystem
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


def _pki(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (its PEM file) and a server context for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokex benchmark CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        # Python 3.13's default TLS context verifies strictly (VERIFY_X509_STRICT): a CA
        # needs its key usage and key identifier, and the leaf its authority's.
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


@contextlib.contextmanager
def _tls_upstream(directory: Path) -> Iterator[tuple[int, Path]]:
    ca_file, context = _pki(directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], ca_file
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
