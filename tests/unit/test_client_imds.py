"""client/imds.py against a loopback stand-in for IMDS: what does not answer, or answers
broken, is ImdsUnavailable (with `--instance-identity auto` the exchange goes on without
instance evidence), never half an answer taken for evidence. Real instance evidence
against the local IMDS emulator: tests/system/test_instance_evidence.py."""

from __future__ import annotations

import pytest

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tokex.client.imds import ImdsUnavailable, read_instance_identity


class Imds(QuietHandler):
    """A session token; a document and signature cut off when `cut_off` says so."""

    cut_off = False

    def do_PUT(self) -> None:
        self.send_document(200, b"session-token", {"Content-Type": "text/plain"})

    def do_GET(self) -> None:
        body = b'{"instanceId": "i-0123456789abcdef0"}'
        if not self.cut_off:
            self.send_document(200, body, {"Content-Type": "text/plain"})
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:10])
        self.close_connection = True


class CutOffImds(Imds):
    cut_off = True


def test_a_whole_answer_is_the_evidence(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(Imds)) as server:
        evidence = read_instance_identity(server.url)
    assert evidence["document"] == '{"instanceId": "i-0123456789abcdef0"}'


def test_an_answer_cut_off_is_unavailable_not_evidence(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(CutOffImds)) as server, pytest.raises(ImdsUnavailable) as failed:
        read_instance_identity(server.url)
    assert "broke off" in str(failed.value)


class NotHttp(QuietHandler):
    def do_PUT(self) -> None:
        self.wfile.write(b"garbage, not an HTTP status line\r\n\r\n")
        self.close_connection = True


def test_an_answer_that_is_not_http_is_unavailable(monkeypatch) -> None:
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    with serving(LoopbackServer(NotHttp)) as server, pytest.raises(ImdsUnavailable):
        read_instance_identity(server.url)
