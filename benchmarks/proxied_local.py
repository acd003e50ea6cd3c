"""The local system (`tokex.local.runner.start_local`) with the delaying, counting proxy
(benchmarks/aws_proxy.py) between everything and moto: the handlers' AWS clients, the
forwarded STS request and the benchmark's own floor calls all reach the emulator through
it. The emulator and the proxy are processes of their own, so this process's CPU time is
the handlers' and the benchmark's only.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from benchmarks import split_emulator
from benchmarks.aws_proxy import ProxyProcess
from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.deadline import request_deadline
from tokex.exchange import ExchangeAudit
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.provision import DEMO_AUDIENCE, REGION
from tokex.local.runner import LocalSystem, handler_environment, start_local
from tokex.regions import TOKEN_PATH
from tokex.settings import Settings
from tokex.token_request import (
    JWT_TOKEN_TYPE,
    SIGV4_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    parse_token_request,
)
from tokex.wiring import build_token_exchange

CONTEXT = LambdaContext("tokex-token")
FORM = "application/x-www-form-urlencoded"


class ProxiedEmulator:
    """moto in a subprocess, seen through the proxy (`url` is the proxy's)."""

    def __init__(self) -> None:
        self.moto = SubprocessMotoServer(module=split_emulator.__name__)
        try:
            self.proxy = ProxyProcess(self.moto.url)
        except BaseException:
            self.moto.stop()
            raise
        self.url = self.proxy.url
        self.admin_token = self.moto.admin_token

    def serve_dynamodb_apart(self) -> None:
        """From now on DynamoDB is served by a copy of the emulator in a process of its own
        (benchmarks/split_emulator.py): called once everything is set up, while nothing
        calls the emulator (one Region: no replication thread polls it)."""
        self.proxy.send_dynamodb_to(split_emulator.fork_copy(self.moto.url))

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()


@dataclass
class BenchSystem:
    local: LocalSystem
    emulator: ProxiedEmulator
    workload: boto3.session.Session

    @property
    def proxy(self) -> ProxyProcess:
        return self.emulator.proxy

    def token_handler(self) -> Any:
        """The exchange function behind the front, as the front calls it."""
        return self.local.functions["/token"]

    def signed_request(self, audience: str = DEMO_AUDIENCE) -> dict[str, Any]:
        """A GetCallerIdentity request the demo workload signed for this issuer."""
        frozen = self.workload.get_credentials().get_frozen_credentials()
        return signed_get_caller_identity(
            frozen, region=REGION, issuer=self.local.issuer, audience=audience
        )

    def token_form(self, audience: str = DEMO_AUDIENCE) -> bytes:
        """A `POST /token` body with a freshly signed request (each buys one token)."""
        signed = self.signed_request(audience)
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": SIGV4_TOKEN_TYPE,
            "subject_token": encode_subject_token(signed),
            "audience": audience,
        }
        return urllib.parse.urlencode(form).encode("ascii")

    def token_event(self, audience: str = DEMO_AUDIENCE) -> dict[str, Any]:
        """A `POST /token` event with a freshly signed request (each buys one token)."""
        host = urllib.parse.urlsplit(self.local.issuer).netloc
        headers = {"host": host, "content-type": FORM}
        return http_api_event("POST", "/token", "", headers, self.token_form(audience), "127.0.0.1")

    def new_environment(self) -> Callable[[], None]:
        """A new execution environment's first exchange, ready to run: the exchange built
        as a cold start builds it (its signing key and policies not loaded yet; this
        process's connections to the proxy kept), with a freshly signed request."""
        with handler_environment(self.local.handler_env()):
            settings = Settings.from_env()
            environment = build_token_exchange(settings)
        request = parse_token_request(self.token_form(), FORM)

        def first_exchange() -> None:
            with request_deadline(settings.deadline_seconds):
                environment.exchange(request, ExchangeAudit())

        return first_exchange

    def oif_token(self) -> str:
        """A fresh AWS OIF token of the demo workload, from the local STS-compatible
        endpoint (`tokex local`'s own: it answers GetWebIdentityToken without the
        emulator, so the proxy never sees it)."""
        federation = self.local.federation
        assert federation is not None
        sts = self.local.deployment.workload.session(REGION).client(
            "sts", endpoint_url=federation.sts_url
        )
        answer = sts.get_web_identity_token(
            Audience=[self.local.issuer], SigningAlgorithm="RS256", DurationSeconds=60
        )
        return str(answer["WebIdentityToken"])

    def eks_token(self) -> str:
        federation = self.local.federation
        assert federation is not None
        return federation.eks_token.path.read_text().strip()

    def jwt_event(self, token: str, audience: str = DEMO_AUDIENCE) -> dict[str, Any]:
        """A `POST /token` event with a JWT as the subject token."""
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token_type": JWT_TOKEN_TYPE,
            "subject_token": token,
            "audience": audience,
        }
        body = urllib.parse.urlencode(form).encode("ascii")
        host = urllib.parse.urlsplit(self.local.issuer).netloc
        headers = {"host": host, "content-type": "application/x-www-form-urlencoded"}
        return http_api_event("POST", "/token", "", headers, body, "127.0.0.1")

    @contextlib.contextmanager
    def token_function(self, **settings: str) -> Iterator[None]:
        """Meanwhile the front's `POST /token` reaches another exchange function, loaded
        (a cold start of its own) with `settings` changed; then the usual one again."""
        front = self.local.front
        assert front is not None
        with handler_environment(self.local.handler_env(**settings)):
            replacement = load_handler("exchange").lambda_handler
        usual = front.functions[TOKEN_PATH]
        front.functions[TOKEN_PATH] = replacement
        try:
            yield
        finally:
            front.functions[TOKEN_PATH] = usual

    def exchange(self, event: dict[str, Any]) -> None:
        """One warm exchange through the handler; anything but a token is an error."""
        result = self.token_handler()(event, CONTEXT)
        if result["statusCode"] != 200:
            raise RuntimeError(f"the exchange answered {result['statusCode']}: {result}")


@contextlib.contextmanager
def bench_system(state_dir: Path) -> Iterator[BenchSystem]:
    emulator = ProxiedEmulator()
    local = start_local(port=0, state_dir=state_dir, moto=emulator)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    try:
        emulator.serve_dynamodb_apart()
        yield BenchSystem(local, emulator, local.deployment.workload.session())
    finally:
        local.stop()
