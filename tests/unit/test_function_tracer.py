"""The functions' tracer: the X-Ray SDK loads only when the deployment traces in the
function (`tracing` "sdk"), so the default cold start never pays for it; when it does,
the calls tokex makes over urllib3 have their subsegments too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.support.fresh_handler import FUNCTIONS, LOAD_HANDLER, run_probe

PROBE = """
import json, sys
from tokex_functions.tracing import FunctionTracer
def handler(event, context):
    return "answered"
tracer = FunctionTracer()
wrapped = tracer.capture_lambda_handler(handler)
method = tracer.capture_method(handler)
print(json.dumps({
    "xray_loaded": "aws_xray_sdk.core" in sys.modules,
    "has_tracer": tracer.tracer is not None,
    "handler_unchanged": wrapped is handler and method is handler,
}))
"""


def probe(trace_disabled: str | None) -> dict[str, bool]:
    """A fresh interpreter (nothing imported yet) builds the functions' tracer."""
    env = {k: v for k, v in os.environ.items() if k != "POWERTOOLS_TRACE_DISABLED"}
    if trace_disabled is not None:
        env["POWERTOOLS_TRACE_DISABLED"] = trace_disabled
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, bool] = json.loads(out)
    return result


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_disabled_tracing_never_loads_the_xray_sdk(value: str) -> None:
    assert probe(value) == {"xray_loaded": False, "has_tracer": False, "handler_unchanged": True}


@pytest.mark.parametrize("value", ["false", None])
def test_sdk_tracing_wraps_the_handler_with_powertools(value: str | None) -> None:
    assert probe(value) == {"xray_loaded": True, "has_tracer": True, "handler_unchanged": False}


# A cold exchange with tracing "sdk" as Lambda runs it (LAMBDA_TASK_ROOT, a sampled trace
# id), X-Ray's daemon a UDP socket of the probe and STS a loopback fake that vouches for
# the caller. Everything after STS (KMS, DynamoDB) is a closed port: the request is a 503,
# the STS call is made all the same. Prints what STS received and every datagram sent to
# the daemon.
TRACED_EXCHANGE = (
    """
import json, os, socket, threading, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
daemon.bind(("127.0.0.1", 0))
IDENTITY = (
    '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
    "<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/traced</Arn>"
    "<UserId>AIDAEXAMPLETRACED</UserId><Account>123456789012</Account>"
    "</GetCallerIdentityResult></GetCallerIdentityResponse>"
).encode()
received = []
class FakeSts(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        received.append({**dict(self.headers), "body": body.decode()})
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(IDENTITY)))
        self.end_headers()
        self.wfile.write(IDENTITY)
    def log_message(self, *args):
        pass
sts = ThreadingHTTPServer(("127.0.0.1", 0), FakeSts)
threading.Thread(target=sts.serve_forever, daemon=True).start()
closed = socket.socket()
closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
os.environ.update({
    "LAMBDA_TASK_ROOT": "/var/task",
    "_X_AMZN_TRACE_ID": (
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    ),
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:%d" % daemon.getsockname()[1],
    "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
    "TOKEX_ISSUER": "http://127.0.0.1:9",
    "TOKEX_STS_CONNECT_OVERRIDE": "http://127.0.0.1:%d" % sts.server_address[1],
    "AWS_ENDPOINT_URL": "http://127.0.0.1:%d" % closed.getsockname()[1],
    "TOKEX_DEADLINE_SECONDS": "1",
})
"""
    + LOAD_HANDLER
    + """
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tokex.client.signing import encode_subject_token
from tokex.evidence.sigv4_request import STS_BODY
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
url = "https://sts.us-east-1.amazonaws.com/"
request = AWSRequest(method="POST", url=url, data=STS_BODY, headers={
    "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
    "X-Tokex-Issuer": os.environ["TOKEX_ISSUER"],
})
credentials = Credentials("ASIAIOSFODNN7EXAMPLE", sys.argv[2], sys.argv[3])
SigV4Auth(credentials, "sts", "us-east-1").add_auth(request)
signed = {"method": "POST", "url": url, "headers": dict(request.headers.items()), "body": STS_BODY}
form = urllib.parse.urlencode({
    "grant_type": TOKEN_EXCHANGE_GRANT,
    "subject_token_type": SIGV4_TOKEN_TYPE,
    "subject_token": encode_subject_token(signed),
    "audience": "demo-api",
})
event = {
    "version": "2.0", "routeKey": "$default", "rawPath": "/token", "rawQueryString": "",
    "headers": {"content-type": "application/x-www-form-urlencoded"},
    "requestContext": {"http": {"method": "POST", "path": "/token", "sourceIp": "127.0.0.1"},
                       "stage": "$default"},
    "body": form, "isBase64Encoded": False,
}
answer = handler.lambda_handler(event, Context())
daemon.setblocking(False)  # each subsegment was sent as it ended (Powertools: no batching)
datagrams = []
while True:
    try:
        datagrams.append(daemon.recv(65535).decode())
    except BlockingIOError:
        break
print(json.dumps({
    "status": answer["statusCode"], "sts_received": received, "datagrams": datagrams,
}))
"""
)
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYTRACEDKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE-traced-session-token"


def subsegments(datagrams: list[str]) -> list[dict[str, Any]]:
    """Every entity sent to the daemon: each datagram is a header line, then one JSON."""
    return [json.loads(datagram.split("\n", 1)[1]) for datagram in datagrams]


def test_sdk_tracing_records_the_sts_call_as_a_subsegment_without_its_secrets() -> None:
    """Powertools patches botocore, not urllib3: tokex's own STS call gets its subsegment
    from the function's tracer (tokex/adapters/tracing.py), named for the call, annotated
    with the host, and holding nothing of the signed request."""
    out = run_probe(
        TRACED_EXCHANGE,
        FUNCTIONS / "exchange" / "handler.py",
        SECRET_KEY,
        SESSION_TOKEN,
        env={  # as the stack deploys `tracing` "sdk" (cdk/tokex_stack.py)
            "POWERTOOLS_TRACE_DISABLED": "false",
            "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "false",
            "POWERTOOLS_SERVICE_NAME": "tokex",
        },
    )
    assert out["status"] == 503  # KMS and DynamoDB are closed ports
    [sent] = out["sts_received"]
    signature = sent["Authorization"].rpartition("Signature=")[2]
    assert sent["X-Amz-Security-Token"] == SESSION_TOKEN and len(signature) == 64
    traced = subsegments(out["datagrams"])
    [sts] = [entity for entity in traced if entity["name"] == "sts GetCallerIdentity"]
    assert sts["namespace"] == "remote"
    assert sts["annotations"] == {"host": "sts.us-east-1.amazonaws.com"}
    assert "error" not in sts and "fault" not in sts
    assert {"## lambda_handler", "dynamodb"} <= {entity["name"] for entity in traced}
    everything = "\n".join(out["datagrams"])
    for secret in (signature, SESSION_TOKEN, sent["body"], SECRET_KEY):
        assert secret not in everything
