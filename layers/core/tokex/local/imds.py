"""An IMDSv2 emulator for the demo workload of `tokex local`.

It serves one demo instance whose identity document is signed by a certificate created at
start-up. Only the local exchange trusts that certificate (settings refuse it for any
deployed, https issuer). The demo role session is named after the instance id, like an
EC2 instance-profile session, so the evidence binds to the SigV4 caller.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tokex.local.http_request import OneRequestWithinADeadline
from tokex.local.imds_signing import create_local_signing_certificate, sign_document_for_local_mode
from tokex.local.provision import ACCOUNT_ID, DEMO_INSTANCE_ID, REGION
from tokex.private_files import write_private

TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
# IMDS's limits: a session token lives 1 s to 6 h, or the PUT is 400.
MAX_TOKEN_TTL_SECONDS = 21600
_TTL = re.compile(r"[0-9]{1,5}")
MAX_SESSION_TOKENS = 1024

DEMO_DOCUMENT = {
    "accountId": ACCOUNT_ID,
    "architecture": "arm64",
    "availabilityZone": f"{REGION}a",
    "billingProducts": None,
    "devpayProductCodes": None,
    "marketplaceProductCodes": None,
    "imageId": "ami-0123456789abcdef0",
    "instanceId": DEMO_INSTANCE_ID,
    "instanceType": "t4g.micro",
    "kernelId": None,
    "pendingTime": "2026-01-01T00:00:00Z",
    "privateIp": "10.0.0.10",
    "ramdiskId": None,
    "region": REGION,
    "version": "2017-09-30",
}


class ImdsEmulator:
    """IMDSv2 on loopback: PUT a session token, then GET the identity document texts."""

    def __init__(self, state_dir: Path, port: int = 0) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = create_local_signing_certificate(key)
        self.certificate_path = state_dir / "imds-local-ca.pem"
        # The only certificate the local exchange trusts for instance identity, read at its
        # first instance evidence: 0600 and atomic, as the other state files, never one
        # another user could swap meanwhile (a state directory of mode 0755 is accepted).
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        write_private(self.certificate_path, pem)
        self._key, self._certificate = key, certificate
        self.document = json.dumps(DEMO_DOCUMENT, indent=2)
        self.rsa2048 = self.sign(self.document)
        self._tokens: dict[str, float] = {}  # session token -> when it expires (monotonic)
        self._tokens_lock = threading.Lock()
        self._server = _ImdsServer(("127.0.0.1", port), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def sign(self, document: str) -> str:
        """The `/rsa2048` text for any document, signed by this emulator's local CA."""
        return sign_document_for_local_mode(document, self._key, self._certificate)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def new_session_token(self, ttl_seconds: int) -> str:
        """A session token valid for `ttl_seconds`; expired ones are forgotten, and the
        oldest beyond MAX_SESSION_TOKENS (a loop of PUTs grew the set without end)."""
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._tokens_lock:
            live = {t: until for t, until in self._tokens.items() if until > now}
            while len(live) >= MAX_SESSION_TOKENS:
                del live[next(iter(live))]
            live[token] = now + ttl_seconds
            self._tokens = live
        return token

    def is_session_token(self, token: str | None) -> bool:
        with self._tokens_lock:
            until = self._tokens.get(token or "")
        return until is not None and time.monotonic() < until

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        emulator = self
        paths = {
            "/latest/dynamic/instance-identity/document": lambda: emulator.document,
            "/latest/dynamic/instance-identity/rsa2048": lambda: emulator.rsa2048,
        }

        class Handler(OneRequestWithinADeadline, BaseHTTPRequestHandler):
            timeout = 5  # seconds per read: an idle client does not hold a thread for ever

            def do_PUT(self) -> None:
                if self.headers.get("X-Forwarded-For") is not None:
                    # As IMDS: a token PUT that came through a proxy is refused.
                    self._send(403, "")
                    return
                ttl = self.headers.get(TTL_HEADER, "")
                if self.path != "/latest/api/token" or not _TTL.fullmatch(ttl):
                    self._send(400, "")
                    return
                if not 1 <= int(ttl) <= MAX_TOKEN_TTL_SECONDS:
                    self._send(400, "")
                    return
                self._send(200, emulator.new_session_token(int(ttl)))

            def do_GET(self) -> None:
                if not emulator.is_session_token(self.headers.get(TOKEN_HEADER)):
                    self._send(401, "")  # IMDSv2 only: no session token, no answer
                elif self.path in paths:
                    self._send(200, paths[self.path]())
                else:
                    self._send(404, "")

            def _send(self, status: int, text: str) -> None:
                data = text.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class _ImdsServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request: nothing for the console
