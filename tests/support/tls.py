"""Real TLS on loopback for the adapter tests: a throwaway CA, a server certificate it issues
for 127.0.0.1 and localhost, and an HTTPS server presenting it.

Nothing but the contexts made here (or a process pointed at `Pki.ca_file`, e.g. through
`SSL_CERT_FILE`) trusts the CA: the system's CA store refuses the server.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.loopback import LoopbackServer

# What OpenSSL reports on the server's side when the client refuses its certificate.
UNKNOWN_CA = "TLSV1_ALERT_UNKNOWN_CA"


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the CA's certificate, PEM
    client: ssl.SSLContext  # trusts the throwaway CA only
    server: ssl.SSLContext  # presents the certificate for 127.0.0.1


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    """A CA and a certificate it issues for 127.0.0.1 and localhost, valid for an hour; the
    PEM files are written to `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("tokex test CA"))
        .issuer_name(_name("tokex test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=ca_path)
    return Pki(ca_file=ca_path, client=client_context, server=server_context)


class HttpsServer(LoopbackServer):
    """HTTPS on 127.0.0.1 with `tls` (plain HTTP without it); counts the TCP connections it
    accepts.

    The handshake runs in the handler's thread, so a slow one holds up no other connection.
    A client refusing the certificate (its CA unknown to the client) is what some tests
    want: it sets `certificate_refused` and prints nothing. Any other error in a handler is
    reported as usual.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None) -> None:
        super().__init__(handler)
        self.tls = tls
        if tls is not None:
            self.url = f"https://127.0.0.1:{self.server_address[1]}"
        self.connections = 0
        self.certificate_refused = threading.Event()
        self._connections_lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self._connections_lock:
            self.connections += 1
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError) and error.reason == UNKNOWN_CA:
            self.certificate_refused.set()
            return
        super().handle_error(request, client_address)
