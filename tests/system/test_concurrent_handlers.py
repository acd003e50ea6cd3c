"""Concurrent callers of one new execution environment, for the paths a cold start and a
replay take: introspection's first requests (its published keys load once, however many
ask at once) and copies of one signed request arriving together (one token, the rest
refused as replays, the exchange counted once).

Lambda serves one request at a time per environment, and so does `tokex local`'s front;
the threads here call the use cases the handlers call (`build_introspection`'s
`ClientStore.authenticate` and `Introspector.introspect`, `build_token_exchange`'s
`TokenExchange.exchange`), as any host that serves requests side by side would, and as
an exchange's own loads ahead run beside its request. Against the emulator with SigV4
checks on, through a proxy that counts the calls on the wire."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt

from tests.system.conftest import FreshRole
from tests.system.endpoints import exchange, sign, verify
from tests.system.test_cold_environment import new_environment
from tests.system.test_single_use import budget_spent
from tests.system.upstreams import CountingProxy
from tokex.adapters.state_table import schema
from tokex.adapters.state_table.introspection_clients import ClientStore
from tokex.client.imds import encode_instance_evidence, read_instance_identity
from tokex.client.signing import encode_subject_token
from tokex.deadline import request_deadline
from tokex.errors import TokexError
from tokex.evidence.instance_identity import _packaged_certificates
from tokex.exchange import ExchangeAudit
from tokex.introspection import IntrospectionAudit, Introspector
from tokex.local.provision import DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE, DEMO_INSTANCE_ID
from tokex.local.runner import LocalSystem, handler_environment
from tokex.settings import Settings
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, parse_token_request
from tokex.wiring import build_introspection, published_key_ids

GET_PUBLIC_KEY = "TrentService.GetPublicKey"
GET_ITEM = "DynamoDB_20120810.GetItem"
INTROSPECTIONS = 8
COPIES = 6
FORM = "application/x-www-form-urlencoded"


def new_introspection(
    system: LocalSystem, proxy: CountingProxy
) -> tuple[Introspector, ClientStore, int]:
    """Introspection as its function's cold start builds it, talking to AWS through the
    proxy, and how many keys it publishes."""
    with handler_environment(system.handler_env(**proxy.handler_settings())):
        settings = Settings.from_env()
        introspector, clients = build_introspection(settings)
    return introspector, clients, len(published_key_ids(settings))


def issued_token(system: LocalSystem) -> str:
    status, _, body = exchange(system)
    assert status == 200, body
    return str(body["access_token"])


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_concurrent_first_introspections_load_the_published_keys_once(local_system, counting_proxy):
    """Eight requests of one client, each about its own token, reach a new environment at once:
    each is answered `active` with its own token's claims, and every published key is read
    from KMS once (PublishedKeys' lock), not once per request. The client store has no
    single flight: each cold caller may read the client; once one has, it is cached."""
    introspector, clients, published = new_introspection(local_system, counting_proxy)
    store = ClientStore(
        local_system.deployment.client("dynamodb"), local_system.deployment.state_table
    )
    client, secret = store.add("concurrent-gateway", [DEMO_AUDIENCE])
    tokens = [issued_token(local_system) for _ in range(INTROSPECTIONS)]
    counting_proxy.take()
    start = threading.Barrier(INTROSPECTIONS, timeout=10)

    def introspect(token: str) -> dict[str, Any]:
        """What the handler's route does for one request (functions/introspect)."""
        with request_deadline(10):
            caller = clients.authenticate(client.client_id, secret)
            return introspector.introspect(token, IntrospectionAudit(), audiences=caller.audiences)

    def together(token: str) -> dict[str, Any]:
        start.wait()
        return introspect(token)

    # A 503 (TemporarilyUnavailable) or a bug would raise here.
    with ThreadPoolExecutor(INTROSPECTIONS) as pool:
        answers = list(pool.map(together, tokens))
    assert [a["active"] for a in answers] == [True] * INTROSPECTIONS, answers
    assert [a["jti"] for a in answers] == [jti_of(token) for token in tokens]
    calls = counting_proxy.take()
    assert calls.count(GET_PUBLIC_KEY) == published, calls
    # As it is today: between one read and one per cold caller.
    assert 1 <= calls.count(GET_ITEM) <= INTROSPECTIONS, calls

    ninth = issued_token(local_system)
    counting_proxy.take()
    answer = introspect(ninth)
    assert (answer["active"], answer["jti"]) == (True, jti_of(ninth))
    calls = counting_proxy.take()
    assert GET_ITEM not in calls and GET_PUBLIC_KEY not in calls, calls


def signature_record(system: LocalSystem, signed: dict[str, Any]) -> dict[str, Any] | None:
    """The state table's single-use record of `signed` (evidence/replay.py: the SHA-256
    of its signature), or None."""
    authorization = signed["headers"]["Authorization"]
    signature = authorization.rsplit("Signature=", 1)[1]
    digest = hashlib.sha256(signature.encode("ascii")).hexdigest()
    item: dict[str, Any] | None = (
        system.deployment.client("dynamodb")
        .get_item(
            TableName=system.deployment.state_table,
            Key=schema.key(schema.used_evidence_key(digest)),
            ConsistentRead=True,
        )
        .get("Item")
    )
    return item


def test_copies_of_one_signed_request_at_once_get_one_token(
    local_system, counting_proxy, fresh_role: FreshRole
):
    """Six copies of one signed request reach a new environment at once, all before any
    of them is known used up here (RecentlyUsed): the state table's one conditional write
    decides. One gets a token; five are refused 400 `invalid_grant`, reason `replay` (what
    the handler answers and audits for that refusal); none is a 503. The signature is
    recorded used, and the caller's budget is charged once."""
    environment = new_environment(local_system, counting_proxy)
    signed = sign(local_system, credentials=fresh_role.credentials)
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": DEMO_AUDIENCE,
    }
    body = urllib.parse.urlencode(form).encode()
    start = threading.Barrier(COPIES, timeout=10)
    started = time.time()

    def exchange_copy(_: int) -> tuple[int, str | None, str | None]:
        """(status, error, reason) as the handler answers and audits it; the token in
        place of the error for a 200."""
        request = parse_token_request(body, FORM)
        start.wait()
        try:
            with request_deadline(10):
                issued = environment.exchange(request, ExchangeAudit())
        except TokexError as err:  # a 503 too: TemporarilyUnavailable
            return err.status, err.error, err.reason
        return 200, issued.access_token, None

    with ThreadPoolExecutor(COPIES) as pool:
        answers = list(pool.map(exchange_copy, range(COPIES)))
    assert all(status < 500 for status, _, _ in answers), answers
    issued = [answer for answer in answers if answer[0] == 200]
    refused = [answer for answer in answers if answer[0] != 200]
    assert len(issued) == 1, answers
    assert jwt.decode(issued[0][1], options={"verify_signature": False})["sub"] == fresh_role.arn
    assert refused == [(400, "invalid_grant", "replay")] * (COPIES - 1), answers
    record = signature_record(local_system, signed)
    assert record is not None and "released_at" not in record, record
    assert budget_spent(local_system, fresh_role.arn, started) == 1


def test_concurrent_first_exchanges_with_instance_evidence_parse_the_certificates_once(
    local_system, counting_proxy
):
    """Six exchanges with IMDS evidence are the first of a new environment in a process
    that has parsed no AWS certificate yet (the cache emptied): each verifies its evidence
    and gets a token with the instance's claims, and the certificate store is built once
    (`built_once`'s lock), so the ~130 packaged certificates are parsed once, not once per
    caller that found the store missing."""
    _packaged_certificates.cache_clear()
    environment = new_environment(local_system, counting_proxy)
    evidence = encode_instance_evidence(read_instance_identity(local_system.imds.url))
    bodies = [
        urllib.parse.urlencode(
            {
                "grant_type": TOKEN_EXCHANGE_GRANT,
                "subject_token_type": SIGV4_TOKEN_TYPE,
                "subject_token": encode_subject_token(sign(local_system)),
                "audience": DEMO_INSTANCE_AUDIENCE,
                "aws_instance_identity": evidence,
            }
        ).encode()
        for _ in range(COPIES)
    ]
    start = threading.Barrier(COPIES, timeout=10)

    def first_exchange(body: bytes) -> str:
        request = parse_token_request(body, FORM)
        start.wait()
        with request_deadline(10):
            return environment.exchange(request, ExchangeAudit()).access_token

    # A refusal (TokexError) or a 503 would raise here.
    with ThreadPoolExecutor(COPIES) as pool:
        tokens = list(pool.map(first_exchange, bodies))
    assert len(set(tokens)) == COPIES
    for token in tokens:
        claims = verify(local_system, token, audience=DEMO_INSTANCE_AUDIENCE)
        assert claims["policy"] == "demo-instance"
        assert claims["aws"]["instance"]["id"] == DEMO_INSTANCE_ID
    parsed = _packaged_certificates.cache_info()
    assert (parsed.misses, parsed.hits) == (1, 0), parsed  # one store: one parse, one call
