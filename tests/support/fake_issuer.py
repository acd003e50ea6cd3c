"""A loopback server that answers like a tokex issuer (discovery, `POST /token`) and
counts the exchanges: what the workload SDK's caching and single-flight tests count; and
what a workload brings to it: static AWS credentials, an EKS service-account token file."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex import base64url


@dataclass
class FakeIssuer:
    url: str = ""
    expires_in: int = 900
    delay: float = 0.0  # seconds each POST /token takes: callers overlap
    # When given, each POST /token also waits for it: callers overlap for as long as the
    # test decides, whatever the machine's load.
    gate: threading.Event | None = None
    # When given, POST /token answers this status with an OAuth error (still counted),
    # and a `Retry-After` of `retry_after` seconds when that is given too.
    failing: int | None = None
    retry_after: str | None = None
    forms: list[dict[str, list[str]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def exchanges(self) -> int:
        with self._lock:
            return len(self.forms)

    def answer(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        with self._lock:
            self.forms.append(form)
            number = len(self.forms)
        time.sleep(self.delay)
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        if self.failing is not None:
            error = "temporarily_unavailable" if self.failing >= 500 else "invalid_target"
            return self.failing, {"error": error, "error_description": f"fake {error}"}
        return 200, {
            "access_token": f"token-{number}",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


@contextmanager
def fake_issuer(**options: object) -> Iterator[FakeIssuer]:
    issuer = FakeIssuer(**options)  # type: ignore[arg-type]

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self._json(200, {"issuer": issuer.url, "token_endpoint": issuer.url + "/token"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            status, document = issuer.answer(parse_qs(body))
            headers = {"Content-Type": "application/json"}
            if status >= 400 and issuer.retry_after:
                headers["Retry-After"] = issuer.retry_after
            self.send_document(status, json.dumps(document).encode(), headers)

        def _json(self, status: int, document: dict) -> None:
            data = json.dumps(document).encode()
            self.send_document(status, data, {"Content-Type": "application/json"})

    with serving(LoopbackServer(Handler)) as server:
        issuer.url = server.url
        yield issuer


def without_aws_set_up(monkeypatch) -> None:
    """Nothing of this machine's AWS set-up reaches the test: no credentials, profile,
    region or endpoint from the environment, no config or credentials file, no instance
    metadata."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def use_static_credentials(monkeypatch, access_key_id: str = "AKIAEXAMPLEWORKLOAD1") -> None:
    """The default credential chain finds these, and nothing else of this machine's AWS
    set-up (signing is offline: nothing checks them but the fake issuer, which checks
    nothing)."""
    without_aws_set_up(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "workload-secret-not-real")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def credential_process(tmp_path: Path, monkeypatch, answer: str, *, seconds: float = 0) -> None:
    """The default chain's only credentials: a profile whose credential_process prints
    `answer`, after `seconds` (an assume-role profile whose STS does not answer is alike)."""
    without_aws_set_up(monkeypatch)
    script = tmp_path / "credentials.sh"
    script.write_text(f"#!/bin/sh\nsleep {seconds}\necho '{answer}'\n")
    script.chmod(0o700)
    config = tmp_path / "config"
    config.write_text(f"[default]\ncredential_process = {script}\nregion = us-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))


def sa_token_file(
    directory: Path, issuer_url: str, *, sub: str = "system:serviceaccount:a:b"
) -> Path:
    """A projected service-account token for this issuer, as the kubelet writes it (the
    `eks` evidence; its signature is not checked by the workload)."""
    header = base64url.encode_json({"alg": "RS256", "kid": "k"})
    claims = base64url.encode_json(
        {"iss": "https://oidc.example.com", "sub": sub, "aud": issuer_url}
    )
    path = directory / "token"
    path.write_text(f"{header}.{claims}.c2lnbmF0dXJl\n")
    return path
