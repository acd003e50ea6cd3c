"""A new execution environment's first exchange waits for the round trips of a warm one:
its signing key (KMS GetPublicKey, for the kid) and its policies (a DynamoDB Scan between
two reads of the table's generation, adapters/policy_table.py) load in the background
while STS answers (exchange.py `_load_ahead`), each once however many
exchanges ask for them at once.

Against the emulator with SigV4 checks on, through a proxy that counts and holds calls on
the wire."""

from __future__ import annotations

import urllib.parse
from concurrent.futures import ThreadPoolExecutor

from tests.support.exchange_handler import cold_exchange_handler, invoke_exchange
from tests.system.endpoints import sign
from tests.system.upstreams import CountingProxy
from tokex.client.signing import encode_subject_token
from tokex.deadline import request_deadline
from tokex.exchange import ExchangeAudit, TokenExchange
from tokex.local.runner import LocalSystem, handler_environment
from tokex.settings import Settings
from tokex.token_request import (
    SIGV4_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    TokenRequest,
    parse_token_request,
)
from tokex.wiring import build_token_exchange

STS = "sts:GetCallerIdentity"
GET_PUBLIC_KEY = "TrentService.GetPublicKey"
POLICY_SCAN = "DynamoDB_20120810.Scan"
POLICY_GENERATION = "DynamoDB_20120810.GetItem"  # before the Scan and after it
SIGN = "TrentService.Sign"
ADMIT = "DynamoDB_20120810.TransactWriteItems"
FIRST_EXCHANGES = 6
FORM = "application/x-www-form-urlencoded"


def test_the_key_and_the_policies_load_while_sts_answers(local_system, counting_proxy):
    """The proxy holds STS, GetPublicKey and the policy Scan until all three have
    arrived: loaded after STS answered, they would never be held together (and the
    exchange would wait out the hold)."""
    handler = cold_exchange_handler(local_system, **counting_proxy.handler_settings())
    counting_proxy.hold_together(STS, GET_PUBLIC_KEY, POLICY_SCAN, timeout=4)
    status, _, body = invoke_exchange(handler, sign(local_system))
    assert status == 200, body
    assert sorted(counting_proxy.held_together) == sorted([STS, GET_PUBLIC_KEY, POLICY_SCAN])
    loads = [GET_PUBLIC_KEY, POLICY_GENERATION, POLICY_SCAN, POLICY_GENERATION]
    assert sorted(counting_proxy.take()) == sorted([STS, *loads, SIGN, ADMIT])


def new_environment(system: LocalSystem, proxy: CountingProxy) -> TokenExchange:
    """The exchange as a cold start builds it, talking to AWS through the proxy."""
    env = system.handler_env(**proxy.handler_settings())
    with handler_environment(env):
        return build_token_exchange(Settings.from_env())


def token_request(system: LocalSystem) -> TokenRequest:
    """A `POST /token` form with a freshly signed request, parsed as the handler does."""
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(sign(system)),
        "audience": "demo-api",
    }
    return parse_token_request(urllib.parse.urlencode(form).encode(), FORM)


def test_concurrent_first_exchanges_load_the_key_and_the_policies_once(
    local_system, counting_proxy
):
    """One exchange called from several threads at once (as its own loads ahead run
    beside the request, and as any host that serves requests side by side would call it;
    `tokex local`'s front runs one handler at a time): first exchanges arriving together
    in one new environment each get a token, and the key and the policies load once."""
    environment = new_environment(local_system, counting_proxy)
    requests = [token_request(local_system) for _ in range(FIRST_EXCHANGES)]

    def exchange(request: TokenRequest) -> str:
        with request_deadline(10):
            return environment.exchange(request, ExchangeAudit()).access_token

    with ThreadPoolExecutor(FIRST_EXCHANGES) as pool:
        tokens = list(pool.map(exchange, requests))
    assert len(set(tokens)) == FIRST_EXCHANGES
    calls = counting_proxy.take()
    assert calls.count(GET_PUBLIC_KEY) == 1, calls
    assert calls.count(POLICY_SCAN) == 1, calls
    assert calls.count(POLICY_GENERATION) == 2, calls
    assert (calls.count(STS), calls.count(SIGN)) == (FIRST_EXCHANGES,) * 2
    # One admission each, plus a retry for each transaction DynamoDB (and the emulator)
    # cancelled for a conflict on the caller's one rate item: more of them the more the
    # six overlap, which a loaded machine decides (the count flaked there).
    assert calls.count(ADMIT) >= FIRST_EXCHANGES
