"""The local STS-compatible endpoint: what `AWS_ENDPOINT_URL_STS` names in the demo
sessions' env files, on a loopback port of its own.

`GetWebIdentityToken`, which moto lacks, is answered here (tokex.local.oif) after the
request's SigV4 signature is checked (tokex.local.sigv4_check). Every other request is
passed to the moto emulator unchanged, bytes and `Host` header alike, so moto checks its
signature as it would have been sent: `GetCallerIdentity`, `AssumeRole`, ... work as
before. A listener of its own rather than a path of the front: SigV4 signs the path, and
moto answers STS at `/` only.

The workload's SigV4 evidence is not affected: tokex.client.signing signs its
GetCallerIdentity for the public STS host, whatever endpoint the SDK is configured with.
"""

from __future__ import annotations

import http.client
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tokex.local.http_request import OneRequestWithinADeadline
from tokex.local.oif import ACTION, OifEmulator
from tokex.local.sigv4_check import verify_sigv4
from tokex.local.sts_protocol import StsError, error_xml, form_parameters, new_request_id
from tokex.proxy.headers import HOP_BY_HOP  # RFC 9110 §7.6.1: one connection's, not forwarded

LOOPBACK = "127.0.0.1"
MAX_BODY_BYTES = 1024 * 1024
READ_TIMEOUT_SECONDS = 5  # per read: an idle client does not hold a thread for ever
REQUEST_SECONDS = 10  # the whole request: nor does one that trickles it in
UPSTREAM_TIMEOUT_SECONDS = 30
_DIGITS = re.compile(r"[0-9]{1,7}")


class StsEndpoint:
    """Serves on `url` from a thread until `stop`."""

    def __init__(self, oif: OifEmulator, upstream: str, port: int = 0) -> None:
        self.oif = oif
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname or LOOPBACK, parts.port or 80)
        self._server = _StsServer((LOOPBACK, port), self._handler_class())
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sts-endpoint", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        endpoint = self

        class Handler(OneRequestWithinADeadline, BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = READ_TIMEOUT_SECONDS
            request_seconds = REQUEST_SECONDS

            def do_POST(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                self.close_connection = True  # one request per connection
                try:
                    body = self._body()
                    if ACTION in _actions(self.path, body):
                        self._send(200, {"Content-Type": "text/xml"}, self._token(body))
                    else:
                        self._send(*endpoint._pass_through(self, body))
                except StsError as err:
                    xml = error_xml(err, new_request_id())
                    self._send(err.status, {"Content-Type": "text/xml"}, xml)
                except Exception as err:  # a bug here: fail closed, one console line
                    print(f"tokex local: STS endpoint: {type(err).__name__}: {err}", flush=True)
                    failure = StsError(500, "InternalFailure", "internal error", sender=False)
                    self._send(500, {"Content-Type": "text/xml"}, error_xml(failure, "local"))

            def _token(self, body: bytes) -> bytes:
                # As STS: the signature first, then the parameters.
                signed_by = verify_sigv4(
                    self.command,
                    self.path,
                    list(self.headers.items()),
                    body,
                    credentials_of=endpoint.oif.credentials_of,
                )
                query = urllib.parse.urlsplit(self.path).query
                params = form_parameters(query, body, self.headers.get("Content-Type", ""))
                return endpoint.oif.answer(params, signed_by)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding"):
                    raise StsError(411, "MissingContentLength", "send a Content-Length")
                lengths = self.headers.get_all("Content-Length") or ["0"]
                if len(lengths) != 1 or not _DIGITS.fullmatch(lengths[0]):
                    raise StsError(400, "MalformedInput", "bad Content-Length")
                if int(lengths[0]) > MAX_BODY_BYTES:
                    raise StsError(413, "RequestEntityTooLarge", "request body too large")
                try:
                    body = self.rfile.read(int(lengths[0]))
                except TimeoutError:
                    late = "the body did not arrive in time"
                    raise StsError(408, "RequestTimeout", late) from None
                if len(body) != int(lengths[0]):
                    raise StsError(400, "MalformedInput", "the body ended early")
                return body

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _pass_through(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Send the request to moto exactly as it came (method, target, headers with
        `Host`, body); moto's answer."""
        connection = http.client.HTTPConnection(*self._upstream, timeout=UPSTREAM_TIMEOUT_SECONDS)
        try:
            connection.putrequest(
                handler.command, handler.path, skip_host=True, skip_accept_encoding=True
            )
            for name, value in handler.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    connection.putheader(name, value)
            connection.endheaders(body or None)
            response = connection.getresponse()
            data = response.read()
        except OSError as err:
            raise StsError(
                503, "ServiceUnavailable", f"the AWS emulator did not answer: {err}", sender=False
            ) from None
        finally:
            connection.close()
        headers = {
            name: value
            for name, value in response.getheaders()
            if name.lower() not in HOP_BY_HOP | {"content-length", "date", "server"}
        }
        return response.status, headers, data


def _actions(target: str, body: bytes) -> set[str]:
    """Every `Action` the request names, in its query or its form body, read leniently: a
    request that does not clearly ask for GetWebIdentityToken goes to moto as it is."""
    query = urllib.parse.urlsplit(target).query
    text = body.decode("utf-8", errors="replace")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    pairs += urllib.parse.parse_qsl(text, keep_blank_values=True)
    return {value for name, value in pairs if name == "Action"}


class _StsServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 is too few for a crowd of clients

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):  # a client that went away is nothing to report
            print(f"tokex local: STS endpoint error: {type(error).__name__}: {error}", flush=True)
