"""A loopback server that answers like a tokex issuer (discovery, `POST /token`) and
counts the exchanges: what the workload SDK's caching and single-flight tests count."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class FakeIssuer:
    url: str = ""
    expires_in: int = 900
    delay: float = 0.0  # seconds each POST /token takes: callers overlap
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def exchanges(self) -> int:
        with self._lock:
            return len(self.forms)

    def answer(self, form: dict[str, list[str]]) -> dict:
        with self._lock:
            self.forms.append(form)
            number = len(self.forms)
        time.sleep(self.delay)
        return {
            "access_token": f"token-{number}",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


@contextmanager
def fake_issuer(**options: object) -> Iterator[FakeIssuer]:
    issuer = FakeIssuer(**options)  # type: ignore[arg-type]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._json({"issuer": issuer.url, "token_endpoint": issuer.url + "/token"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self._json(issuer.answer(parse_qs(body)))

        def _json(self, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def use_static_credentials(monkeypatch, access_key_id: str = "AKIAEXAMPLEWORKLOAD1") -> None:
    """The default credential chain finds these (signing is offline: nothing checks
    them but the fake issuer, which checks nothing)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "workload-secret-not-real")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
