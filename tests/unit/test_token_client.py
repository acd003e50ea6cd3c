"""The workload client refuses endpoints that could misuse what it signs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tokex.client.token_client import TokenError, check_endpoint, discover_issuer


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://auth.example.com",  # plain http off loopback
        "ftp://auth.example.com",
        "https://user:pw@auth.example.com",
        "https://auth.example.com/?x=1",
        "https://",
    ],
)
def test_endpoint_must_be_https_base_url(endpoint: str) -> None:
    with pytest.raises(TokenError):
        check_endpoint(endpoint)


def test_loopback_http_and_https_are_accepted() -> None:
    assert check_endpoint("http://127.0.0.1:8787/") == "http://127.0.0.1:8787"
    assert check_endpoint("https://auth.example.com") == "https://auth.example.com"


@pytest.fixture
def lookalike() -> Iterator[tuple[str, dict]]:
    """A loopback endpoint whose discovery document says what the test wants."""
    state: dict = {"status": 200, "document": {}, "location": None}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = json.dumps(state["document"]).encode()
            self.send_response(state["status"])
            if state["location"]:
                self.send_header("Location", state["location"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


def test_discovered_issuer_must_be_the_endpoint(lookalike) -> None:
    url, state = lookalike
    state["document"] = {"issuer": url}
    assert discover_issuer(url) == url
    state["document"] = {"issuer": "https://real-tokex.example.com"}
    with pytest.raises(TokenError, match="not this endpoint"):
        discover_issuer(url)


def test_discovery_does_not_follow_redirects(lookalike) -> None:
    url, state = lookalike
    state.update(status=302, location="https://elsewhere.example.com/")
    with pytest.raises(TokenError):
        discover_issuer(url)
