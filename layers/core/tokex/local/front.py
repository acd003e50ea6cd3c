"""The local HTTP front: what API Gateway and CloudFront do in a deployment.

A request for a routed path (`/token`, `/introspect`) becomes an API Gateway HTTP API
payload v2 event for that path's handler. `/.well-known/*` is served from the S3 bucket the
publisher wrote, with the object's own content type and cache headers. Any other path gets
the contract's 404 `invalid_request` "no such endpoint" (docs/contract.md); in a deployment
CloudFront sends such paths to the S3 bucket instead, which answers them itself.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tokex.http_api import NOT_FOUND, json_text, no_store
from tokex.local.functions import LambdaContext

# API Gateway refuses payloads over 10 MB; the handler refuses far less (16 KiB). The
# front only protects itself from reading unbounded input.
MAX_READ_BYTES = 1024 * 1024
WELL_KNOWN = ("/.well-known/jwks.json", "/.well-known/openid-configuration")

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def http_api_event(
    method: str, path: str, query: str, headers: dict[str, str], body: bytes, source_ip: str
) -> dict[str, Any]:
    """An API Gateway HTTP API payload format 2.0 event (AWS docs, "Working with AWS
    Lambda proxy integrations for HTTP APIs")."""
    now = time.time()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": headers.get("host", "127.0.0.1"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode("ascii"),
        "isBase64Encoded": True,
    }


def make_server(
    port: int,
    *,
    routes: Mapping[str, LambdaHandler],
    s3: Any,
    bucket: str,
    host: str = "127.0.0.1",
) -> ThreadingHTTPServer:
    """`routes` maps a path to its handler, read at request time (so handlers that are
    loaded after the port is known can be added later)."""

    class Front(BaseHTTPRequestHandler):
        server_version = "tokex-local"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in WELL_KNOWN:
                self._serve_object(path.lstrip("/"))
            else:
                self._invoke()

        def do_POST(self) -> None:
            self._invoke()

        do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_POST

        def _serve_object(self, key: str) -> None:
            try:
                obj = s3.get_object(Bucket=bucket, Key=key)
            except (ClientError, BotoCoreError):
                self._send(404, {"Content-Type": "text/plain"}, b"not published\n")
                return
            self._send(
                200,
                {"Content-Type": obj["ContentType"], "Cache-Control": obj.get("CacheControl", "")},
                obj["Body"].read(),
            )

        def _invoke(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_READ_BYTES:
                self._send(413, {"Content-Type": "application/json"}, b'{"message":"too large"}')
                return
            body = self.rfile.read(length) if length else b""
            headers: dict[str, str] = {}
            for name, value in self.headers.items():  # repeated headers join with commas
                key = name.lower()
                headers[key] = f"{headers[key]},{value}" if key in headers else value
            path, _, query = self.path.partition("?")
            handler = routes.get(path)
            if handler is None:  # the contract's answer for a path that is no endpoint
                headers = no_store({"Content-Type": "application/json"})
                self._send(404, headers, json_text(NOT_FOUND).encode())
                return
            event = http_api_event(self.command, path, query, headers, body, self.client_address[0])
            result = handler(event, LambdaContext(function_name=f"tokex{path.replace('/', '-')}"))
            payload = result.get("body") or ""
            data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
            out_headers = dict(result.get("headers") or {})
            for name, values in (result.get("multiValueHeaders") or {}).items():
                out_headers[name] = ", ".join(values)
            self._send(int(result.get("statusCode", 502)), out_headers, data)

        def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                if name.lower() not in ("content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the handler's own structured audit line is the access log

    server = ThreadingHTTPServer((host, port), Front)
    server.daemon_threads = True
    return server
