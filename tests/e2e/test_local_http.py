"""The local front speaks the contract at the HTTP level: every row of docs/local.md
"HTTP answers", sent with raw sockets to a real `tokex local`."""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.e2e.raw_http import (
    READ_TIMEOUT_SECONDS,
    assert_contract_error,
    parse_reply,
    read_to_end,
    request,
    send,
    send_raw,
)
from tokex.local.http_request import (
    MAX_BODY_BYTES,
    MAX_EMPTY_LINES,
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_REQUEST_LINE_BYTES,
)

pytestmark = pytest.mark.e2e
GARBAGE_FORM = b"grant_type=nothing-valid&audience=x"


# -- methods ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/token", "/introspect"])
@pytest.mark.parametrize(
    "method",
    ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "post", "Post", "TRACE", "CONNECT", "FOO"],
)
def test_functions_answer_every_method_but_post_with_405(local_process, path, method):
    assert_contract_error(send(local_process, request(method, path)), 405, allow="POST")


@pytest.mark.parametrize("path", ["/token", "/introspect"])
def test_head_of_a_function_is_405_without_a_body(local_process, path):
    reply = send(local_process, request("HEAD", path))
    assert_contract_error(reply, 405, allow="POST", head=True)


def test_post_reaches_the_handler(local_process):
    form = (
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(GARBAGE_FORM)}",
    )
    reply = send(local_process, request("POST", "/token", *form, body=GARBAGE_FORM))
    assert_contract_error(reply, 400, error="unsupported_grant_type")


@pytest.mark.parametrize("path", ["/.well-known/jwks.json", "/.well-known/openid-configuration"])
def test_issuer_documents_answer_get_and_head(local_process, path):
    got = send(local_process, request("GET", path))
    assert got.status == 200 and got.headers["content-type"] == "application/json"
    assert got.headers["cache-control"] == "public, max-age=300"
    assert int(got.headers["content-length"]) == len(got.body) and got.json()
    head = send(local_process, request("HEAD", path))
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get", "TRACE", "FOO"])
def test_issuer_documents_answer_other_methods_with_405(local_process, method):
    reply = send(local_process, request(method, "/.well-known/jwks.json"))
    assert_contract_error(reply, 405, allow="GET, HEAD")


@pytest.mark.parametrize("method", ["GET", "POST", "FOO"])
@pytest.mark.parametrize("path", ["/", "/nope", "/token/", "/.well-known/other", "/TOKEN"])
def test_other_paths_are_404_for_any_method(local_process, method, path):
    assert_contract_error(send(local_process, request(method, path)), 404)


def test_absolute_form_target_is_accepted(local_process):
    target = f"http://127.0.0.1:{local_process.port}/.well-known/jwks.json"
    assert send(local_process, request("GET", target)).status == 200


@pytest.mark.parametrize("target", ["http://[/token", "http://[zz]/token", "http://x]/token"])
def test_an_absolute_target_that_is_no_url_is_400(local_process, target):
    assert_contract_error(send(local_process, request("GET", target)), 400)


# -- the request line and the header section ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET /token\r\n\r\n",  # HTTP/0.9
        b"GET  /token HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /token HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /token HTTP/x\r\nHost: x\r\n\r\n",
        b"G(T /token HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /t\x7foken HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n",  # authority form
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /token HTTP/1.1\rHost: x\r\n\r\n",  # a bare CR
    ],
)
def test_malformed_request_lines_are_400(local_process, data):
    assert_contract_error(send(local_process, data), 400)


def test_empty_lines_before_the_request_line_are_skipped(local_process):
    """RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request
    line; the front skips up to MAX_EMPTY_LINES."""
    blank = b"\r\n" * MAX_EMPTY_LINES
    reply = send(local_process, blank + b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.status == 200 and "keys" in reply.json()
    assert_contract_error(send(local_process, blank + b"\r\nGET /x HTTP/1.1\r\n\r\n"), 400)


@pytest.mark.parametrize("blank", [b"", b"\r\n", b"\r\n\r\n", b"\n"])
def test_empty_lines_and_then_the_end_are_no_request(local_process, blank):
    """Nothing but empty lines before the client closed: no request line ever came, so
    there is nothing to answer, and the front closes without a word."""
    assert send_raw(local_process, blank, half_close=True) == b""


def test_http_2_and_0_9_versions_are_505(local_process):
    for version in (b"HTTP/2.0", b"HTTP/0.9"):
        reply = send(local_process, b"GET /token " + version + b"\r\nHost: x\r\n\r\n")
        assert_contract_error(reply, 505)


def test_request_line_over_the_limit_is_414(local_process):
    target = "/" + "a" * MAX_REQUEST_LINE_BYTES
    assert_contract_error(send(local_process, request("GET", target)), 414)


def test_too_many_header_fields_is_431(local_process):
    fields = [f"X-Field-{n}: {n}" for n in range(MAX_HEADER_FIELDS)]
    assert_contract_error(send(local_process, request("GET", "/token", *fields)), 431)


def test_header_section_over_the_limit_is_431_and_readable(local_process):
    # http.client sends everything before it reads: the front must drain what it refused.
    connection = http.client.HTTPConnection("127.0.0.1", local_process.port, timeout=60)
    connection.request("GET", "/token", headers={"X-Big": "b" * (4 * MAX_HEADER_BYTES)})
    response = connection.getresponse()
    assert response.status == 431
    assert json.loads(response.read())["error"] == "invalid_request"
    connection.close()


@pytest.mark.parametrize(
    "field",
    [
        "No-Colon",
        "Space-Before-Colon : x",
        "Bad(Name): x",
        "X-Control: a\x01b",
        "X-Nul: a\x00b",
    ],
)
def test_malformed_header_fields_are_400(local_process, field):
    assert_contract_error(send(local_process, request("GET", "/token", field)), 400)


def test_folded_header_lines_are_400(local_process):
    assert_contract_error(send(local_process, request("GET", "/token", "X-A: a", " folded")), 400)


def test_http_1_1_needs_exactly_one_host(local_process):
    assert_contract_error(send(local_process, b"GET /token HTTP/1.1\r\n\r\n"), 400)
    two = request("GET", "/token", "Host: other")
    assert_contract_error(send(local_process, two), 400)
    # HTTP/1.0 has no Host requirement: the request goes on to its answer.
    assert_contract_error(send(local_process, b"GET /nope HTTP/1.0\r\n\r\n"), 404)


# -- framing and size -------------------------------------------------------------------


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked", "identity"])
def test_transfer_encoding_is_411(local_process, coding):
    data = request(
        "POST", "/token", f"Transfer-Encoding: {coding}", body=b"5\r\nhello\r\n0\r\n\r\n"
    )
    assert_contract_error(send(local_process, data), 411)


@pytest.mark.parametrize(
    "lengths",
    [["abc"], ["-1"], ["+5"], ["5, 5"], ["5", "5"], ["5", "6"], ["0x10"], [""], ["1e3"]],
)
def test_bad_content_length_is_400(local_process, lengths):
    fields = [f"Content-Length: {length}" for length in lengths]
    data = request("POST", "/token", *fields, body=b"hello")
    assert_contract_error(send(local_process, data), 400)


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES])
def test_body_over_the_limit_is_413_and_readable(local_process, size):
    connection = http.client.HTTPConnection("127.0.0.1", local_process.port, timeout=60)
    connection.request(
        "POST",
        "/token",
        body=b"a" * size,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"] == "invalid_request"
    connection.close()


def test_declared_length_over_the_limit_is_413_before_any_body(local_process):
    huge = request("POST", "/token", "Content-Length: " + "9" * 40)
    assert_contract_error(send(local_process, huge), 413)


def test_body_cut_short_by_the_client_is_400(local_process):
    data = request("POST", "/token", "Content-Length: 100", body=b"grant_type=")
    assert_contract_error(send(local_process, data, half_close=True), 400)


def test_expect_100_continue_is_honoured(local_process):
    fields = (
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(GARBAGE_FORM)}",
        "Expect: 100-continue",
    )
    with socket.create_connection(("127.0.0.1", local_process.port), timeout=60) as sock:
        sock.sendall(request("POST", "/token", *fields))
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(GARBAGE_FORM)
        reply = parse_reply(read_to_end(sock))
    assert_contract_error(reply, 400, error="unsupported_grant_type")


# -- slow and idle connections ------------------------------------------------------------


def test_idle_and_slow_connections_are_closed(local_process):
    """Each case waits out the front's request timeout; they run side by side."""
    results: dict[str, bytes] = {}

    def silent() -> None:
        with socket.create_connection(("127.0.0.1", local_process.port)) as sock:
            results["idle"] = read_to_end(sock)

    def partial(name: str, data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", local_process.port)) as sock:
            sock.sendall(data)
            results[name] = read_to_end(sock)

    def dripping() -> None:
        """One byte every half second of a header that would take 100 s to send: the
        answer must come while the client is still sending."""
        header = request("GET", "/token", "X-Drip: " + "d" * 200)
        with socket.create_connection(("127.0.0.1", local_process.port)) as sock:
            for position, byte in enumerate(header):
                readable, _, _ = select.select([sock], [], [], 0.5)
                if readable:
                    results["drip"] = read_to_end(sock)
                    results["drip stopped at"] = str(position).encode()
                    return
                sock.sendall(bytes([byte]))
            results["drip"] = b"sent everything"

    cases = [
        threading.Thread(target=silent),
        threading.Thread(
            target=partial, args=("headers", b"POST /token HTTP/1.1\r\nHost: x\r\nCont")
        ),
        threading.Thread(
            target=partial,
            args=("body", request("POST", "/token", "Content-Length: 50", body=b"grant")),
        ),
        threading.Thread(target=dripping),
    ]
    for case in cases:
        case.start()
    for case in cases:
        case.join(timeout=2 * READ_TIMEOUT_SECONDS)
    assert results["idle"] == b""  # closed, nothing to answer
    for name in ("headers", "body", "drip"):
        assert_contract_error(parse_reply(results[name]), 408)


def test_many_idle_connections_are_all_released(local_process):
    sockets = [socket.create_connection(("127.0.0.1", local_process.port)) for _ in range(50)]
    try:
        for sock in sockets:
            assert read_to_end(sock) == b""
    finally:
        for sock in sockets:
            sock.close()
    # The front still answers afterwards.
    assert send(local_process, request("GET", "/.well-known/jwks.json")).status == 200


# -- anything at all --------------------------------------------------------------------

TOKENS = st.sampled_from(["GET", "POST", "HEAD", "post", "TRACE", "", "G ET", "\x00", "PRI"])
TARGETS = st.sampled_from(
    [
        "/token",
        "/introspect",
        "/.well-known/jwks.json",
        "/x",
        "*",
        "",
        "http://h/token",
        "http://[/token",
    ]
)
HEADER_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "Content-Length: 3",
                "Content-Length: x",
                "Transfer-Encoding: chunked",
                "Expect: 100-continue",
                "Content-Type: application/x-www-form-urlencoded",
                "Authorization: Basic eDp5",
                " folded",
            ]
        ),
        st.text(st.characters(codec="latin-1"), max_size=40),
    ),
    max_size=6,
)


@settings(max_examples=150)
@given(
    method=TOKENS,
    target=TARGETS,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/3", ""]),
    fields=HEADER_LINES,
    body=st.binary(max_size=40),
)
def test_any_request_gets_a_contract_answer(local_process, method, target, version, fields, body):
    line = " ".join(part for part in (method, target, version) if part)
    data = "\r\n".join([line, *fields]).encode("latin-1") + b"\r\n\r\n" + body
    if not data.strip(b"\r\n"):  # empty lines only: no request (the test above)
        assert send_raw(local_process, data, half_close=True) == b""
        return
    reply = send(local_process, data, half_close=True)
    assert reply.headers["connection"] == "close"
    if reply.status == 200:
        assert target.endswith("/.well-known/jwks.json") and method in ("GET", "HEAD")
        return
    assert reply.status < 500 or reply.status == 505  # no input makes the front fail
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["cache-control"] == "no-store"
    if not reply.body:  # only a HEAD request is answered without its body
        assert method == "HEAD" and int(reply.headers["content-length"]) > 0
        return
    assert set(reply.json()) == {"error", "error_description"}


def test_no_traceback_on_the_console(local_process):
    """Last in this module: everything above went through the same console."""
    assert "Traceback" not in local_process.console_text()
