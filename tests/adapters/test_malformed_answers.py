"""What no AWS service answers is a failure of the call, never its result: a DynamoDB 200
whose body is no JSON object (botocore reads it as an empty result), a result without the
list DynamoDB always sends, a body larger than any AWS answer, an XML service's body that
does not parse. Each is 503 `temporarily_unavailable` from the adapter (docs/contract.md
"Errors"): never "not revoked", "no policy" or "unknown client", and never a crash.

Against a loopback server answering what each case needs, through the hot path's
clients (adapters/aws_clients.py) under a request deadline, as the handlers call them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.adapters.test_ec2 import identity
from tests.system.upstreams import Answer, LoopbackHttpServer
from tokex.adapters import aws_clients
from tokex.adapters.ec2 import InstanceTagLookup
from tokex.adapters.policy_table import PolicyStore
from tokex.adapters.state_table.introspection_clients import ClientStore
from tokex.adapters.state_table.revocations import RevocationStore
from tokex.deadline import request_deadline
from tokex.errors import TemporarilyUnavailable

JSON_10 = [("Content-Type", "application/x-amz-json-1.0")]
HTML = b"<html><body>502 Bad Gateway</body></html>"
PRINCIPAL = "arn:aws:iam::123456789012:role/demo-workload"


class Scripted(LoopbackHttpServer):
    """Answers every call with `answer`; counts the calls and the connections they came on."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls = 0
        self.connections: set[int] = set()
        super().__init__(self._answer)

    def _answer(self, request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        self.calls += 1
        self.connections.add(id(request.connection))
        return self.answer


class ScanScripted(Scripted):
    """A policy table's server: the generation's GetItem (adapters/policy_table.py) finds
    no item (generation 0), every other call is answered `answer`."""

    def _answer(self, request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        if request.headers.get("X-Amz-Target", "").endswith(".GetItem"):
            return (200, JSON_10, b"{}")
        return super()._answer(request, body)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Answer) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def client(service: str, server: Scripted) -> Any:
    return aws_clients.client(
        service,
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIAEXAMPLEEXAMPLE00",
        aws_secret_access_key="secret",
    )


def revoked(server: Scripted) -> str | None:
    store = RevocationStore(client("dynamodb", server), "state", ttl_cap_seconds=3600)
    with request_deadline(5):
        return store.revoked(jti="j" * 32, principal=PRINCIPAL, issued_at=1_800_000_000)


NO_ANSWER_BODIES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"{}", id="no-responses"),
    pytest.param(b'{"Responses": {}}', id="no-table"),
    pytest.param(HTML, id="html"),
    pytest.param(b'{"Responses": {"state": [', id="truncated"),
    pytest.param(b"\xff\xfe{}", id="not-utf-8"),
    pytest.param(b"[]", id="a-list"),
]


@pytest.mark.parametrize("body", NO_ANSWER_BODIES)
def test_a_revocation_lookup_without_an_answer_is_unavailable_never_not_revoked(
    serve: Callable[[Answer], Scripted], body: bytes
) -> None:
    server = serve((200, JSON_10, body))
    with pytest.raises(TemporarilyUnavailable) as failed:
        revoked(server)
    assert failed.value.status == 503 and failed.value.headers()["Retry-After"]
    assert failed.value.reason in (
        "dynamodb BatchGetItem: MalformedResponse",
        "dynamodb BatchGetItem: malformed response",
    )
    assert "Bad Gateway" not in failed.value.description


def test_a_revocation_lookup_answered_is_read_and_its_connection_kept(
    serve: Callable[[Answer], Scripted],
) -> None:
    """A real answer goes through (nothing revoked), over one kept-alive connection; one
    that leaves every key unprocessed is retried, and still unprocessed, unknown."""
    server = serve((200, JSON_10, b'{"Responses": {"state": []}, "UnprocessedKeys": {}}'))
    assert revoked(server) is None and revoked(server) is None
    assert server.calls == 2 and len(server.connections) == 1
    unprocessed = b'{"Keys": [{"id": {"S": "revoked-jti#x"}}]}'
    server.answer = (
        200,
        JSON_10,
        b'{"Responses": {}, "UnprocessedKeys": {"state": %s}}' % unprocessed,
    )
    with pytest.raises(TemporarilyUnavailable) as failed:  # still unprocessed: unknown
        revoked(server)
    assert failed.value.reason == "dynamodb BatchGetItem: unprocessed"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{}", id="no-items"),
        pytest.param(HTML, id="html"),
    ],
)
def test_a_policy_scan_without_its_items_is_unavailable_never_no_policy(body: bytes) -> None:
    """Not "no policy": every caller would hear invalid_target, and the empty set be kept."""
    server = ScanScripted((200, JSON_10, body))
    try:
        with pytest.raises(TemporarilyUnavailable) as failed, request_deadline(5):
            PolicyStore(client("dynamodb", server), "policies").load_all()
        assert failed.value.reason.startswith("dynamodb Scan: ")
        server.answer = (200, JSON_10, b'{"Items": [], "Count": 0}')
        with request_deadline(5):
            assert PolicyStore(client("dynamodb", server), "policies").load_all() == ([], [])
    finally:
        server.stop()


def test_a_client_lookup_without_an_answer_is_unavailable_never_unknown_client(
    serve: Callable[[Answer], Scripted],
) -> None:
    """Not 401 `invalid_client`: the caller's credentials may well be right."""
    server = serve((200, JSON_10, HTML))
    store = ClientStore(client("dynamodb", server), "state")
    with pytest.raises(TemporarilyUnavailable) as failed, request_deadline(5):
        store.authenticate("tc_0123456789abcdef0123", "s" * 43)
    assert failed.value.reason == "dynamodb GetItem: MalformedResponse"


def test_an_answer_larger_than_any_aws_answer_is_not_read(
    serve: Callable[[Answer], Scripted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aws_clients, "MAX_RESPONSE_BYTES", 1024)
    server = serve(
        (200, JSON_10, b'{"Responses": {"state": []}, "Padding": "' + b"x" * 2000 + b'"}')
    )
    with pytest.raises(TemporarilyUnavailable) as failed:
        revoked(server)
    assert failed.value.reason == "dynamodb BatchGetItem: MalformedResponse"


def test_a_kms_success_that_is_no_json_is_unavailable(
    serve: Callable[[Answer], Scripted],
) -> None:
    server = serve((200, [("Content-Type", "application/x-amz-json-1.1")], HTML))
    kms = client("kms", server)
    with pytest.raises(aws_clients.MalformedResponse), request_deadline(5):
        kms.sign(
            KeyId="k", Message=b"m" * 32, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256"
        )


def test_an_xml_service_answer_that_does_not_parse_is_unavailable(
    serve: Callable[[Answer], Scripted],
) -> None:
    """STS's AssumeRole (the instance-tag lookup) answers XML: a page botocore's parser
    refuses is a 503, not a crash."""
    server = serve((200, [("Content-Type", "text/xml")], b"<AssumeRoleResponse><Assu"))
    lookup = InstanceTagLookup(client("sts", server), role_name="tokex-tags")
    with pytest.raises(TemporarilyUnavailable) as failed, request_deadline(5):
        lookup(identity())
    assert failed.value.reason == "sts AssumeRole: ResponseParserError"


@contextlib.contextmanager
def raw_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP/1.1 server of `handler`'s own answers; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_json_success_in_utf_16_is_no_answer(serve: Callable[[Answer], Scripted]) -> None:
    """botocore reads a body as UTF-8: a UTF-16 one would be read as no item (401
    `invalid_client` for a client that exists)."""
    item = b'{"Item": {"id": {"S": "client#tc_0123456789abcdef0123"}}}'
    server = serve((200, JSON_10, item.decode().encode("utf-16")))
    store = ClientStore(client("dynamodb", server), "state")
    with pytest.raises(TemporarilyUnavailable) as failed, request_deadline(5):
        store.authenticate("tc_0123456789abcdef0123", "s" * 43)
    assert failed.value.reason == "dynamodb GetItem: MalformedResponse"


def test_a_chunked_answer_past_the_cap_is_not_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Content-Length to refuse it by: the read stops past the cap."""
    monkeypatch.setattr(aws_clients, "MAX_RESPONSE_BYTES", 1024)

    class Chunked(Quiet):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-amz-json-1.0")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client hangs up past its cap
                for _ in range(64):  # 64 KiB in all, 1 KiB a chunk
                    self.wfile.write(b"400\r\n" + b" " * 1024 + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

    with raw_server(Chunked) as url, pytest.raises(aws_clients.MalformedResponse) as failed:
        dynamodb = aws_clients.client(
            "dynamodb", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="secret",
        )  # fmt: skip
        with request_deadline(5):
            dynamodb.get_item(TableName="t", Key={"id": {"S": "x"}})
    assert "over 1024 bytes" in str(failed.value)


def test_a_head_answer_declares_a_body_it_does_not_carry() -> None:
    """HEAD's Content-Length is the object's size (RFC 9110 §8.6), not a body to refuse."""

    class Head(Quiet):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(20 * 1024 * 1024))
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.end_headers()

    with raw_server(Head) as url:
        s3 = aws_clients.client(
            "s3", endpoint_url=url, region_name="us-east-1",
            aws_access_key_id="AKIAEXAMPLEEXAMPLE00", aws_secret_access_key="secret",
        )  # fmt: skip
        with request_deadline(5):
            head = s3.head_object(Bucket="issuer", Key="k")
    assert head["ContentLength"] == 20 * 1024 * 1024
