"""The issuer documents `tokex local`'s front serves, under a crowd: the tokex issuer's
JWKS and discovery document (read from the S3 bucket the publisher wrote, as CloudFront
serves them) and the local JWT issuers' (from memory), while token exchanges run through
the same front; the 503 a front answers before anything is published (docs/local.md
"HTTP answers"); and requests of different kinds at once, each answered from its own
request (the handlers share Powertools' current event: the front serves one at a time)."""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.system.endpoints import exchange, sign
from tokex.introspection_clients import basic_authorization
from tokex.local.front import (
    LOCAL_DOCUMENT_CACHE_CONTROL,
    WELL_KNOWN,
    FrontServer,
    bind_front,
    s3_documents,
)
from tokex.local.provision import ACCOUNT_ID, DEMO_CLUSTER
from tokex.local.runner import LocalSystem
from tokex.publish import CACHE_CONTROL

Fetched = tuple[int, dict[str, str], bytes]

LOCAL_DOCUMENTS = (
    f"/_local/oif/{ACCOUNT_ID}/.well-known/openid-configuration",
    f"/_local/oif/{ACCOUNT_ID}/.well-known/jwks.json",
    f"/_local/eks/{DEMO_CLUSTER}/.well-known/openid-configuration",
    f"/_local/eks/{DEMO_CLUSTER}/keys",
)
READERS = 32
EXCHANGES = 8


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switch every microsecond instead of every 5 ms: state shared between
    answers without a lock is interrupted often enough for a torn answer to be seen."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


@pytest.fixture
def unpublished_front(local_system: LocalSystem) -> Iterator[FrontServer]:
    """A front bound and serving before anything was published (`documents` None), as
    `start_local` has it until the publisher has run; the local issuers' documents are
    the system's."""
    front = bind_front(0)
    assert local_system.front is not None
    front.local_documents = local_system.front.local_documents
    thread = threading.Thread(target=front.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield front
    finally:
        front.shutdown()
        front.server_close()


def in_crowd(count: int, work: Callable[[int], None]) -> None:
    """`work(n)` on `count` threads released together by a Barrier; fails with what any
    of them raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def one(number: int) -> None:
        start.wait()
        try:
            work(number)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def fetch(url: str) -> Fetched:
    """GET `url`: (status, headers, body bytes), whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def served_as(answer: Fetched) -> tuple[int, str | None, str | None, bytes]:
    """What a verifier or a cache relies on: status, content type, caching, bytes."""
    status, headers, body = answer
    return status, headers.get("Content-Type"), headers.get("Cache-Control"), body


def test_documents_are_served_whole_to_a_crowd_while_tokens_are_exchanged(
    local_system: LocalSystem, eager_switching: None
) -> None:
    """32 readers each GET every document (the S3 ones and the local issuers', each reader
    starting at a different one) while 8 token exchanges go through the same front: every
    answer is the 200 a lone reader got, byte for byte, with its content type and cache
    header, and every exchange is 200."""
    assert local_system.front is not None
    assert set(local_system.front.local_documents) == set(LOCAL_DOCUMENTS)
    paths = [*WELL_KNOWN, *LOCAL_DOCUMENTS]
    alone = {path: fetch(local_system.issuer + path) for path in paths}
    expected = {
        path: (200, "application/json", CACHE_CONTROL, alone[path][2]) for path in WELL_KNOWN
    } | {
        path: (200, "application/json", LOCAL_DOCUMENT_CACHE_CONTROL, alone[path][2])
        for path in LOCAL_DOCUMENTS
    }
    assert {path: served_as(answer) for path, answer in alone.items()} == expected
    assert all(json.loads(body) for _, _, _, body in expected.values())
    # The demo workload, whose policy the front has had since it started (a role made for
    # the test would wait for the front's policy cache to refresh).
    evidence = [sign(local_system) for _ in range(EXCHANGES)]

    answers: list[tuple[str, Fetched]] = []
    exchanged: list[tuple[int, dict[str, str], dict[str, Any]]] = []

    def one(number: int) -> None:
        if number >= READERS:
            signed = evidence[number - READERS]
            exchanged.append(exchange(local_system, signed=signed, scope="demo:read"))
            return
        for i in range(len(paths)):  # each reader starts at another document
            path = paths[(number + i) % len(paths)]
            answers.append((path, fetch(local_system.issuer + path)))

    in_crowd(READERS + EXCHANGES, one)

    assert len(answers) == READERS * len(paths)
    failures = [(path, answer[0]) for path, answer in answers if answer[0] >= 500]
    assert failures == []
    wrong = [
        (path, served_as(answer)[:3], len(answer[2]))
        for path, answer in answers
        if served_as(answer) != expected[path]
    ]
    assert wrong == []
    assert [(status, "access_token" in body) for status, _, body in exchanged] == [
        (200, True)
    ] * EXCHANGES


def test_a_front_answers_503_until_published_then_serves_a_crowd_from_the_first_read(
    local_system: LocalSystem, unpublished_front: FrontServer, eager_switching: None
) -> None:
    """Before the publisher has run, a crowd asking for the tokex issuer's documents gets
    the contract's 503 `temporarily_unavailable` with Retry-After, never cached (the local
    issuers' documents are already there). Once published, a crowd's very first reads
    each get the documents whole: nothing read from S3 is shared half-built between
    them, however slowly S3 answers."""
    origin = "http://{}:{}".format(*unpublished_front.server_address[:2])
    paths = [*WELL_KNOWN, *LOCAL_DOCUMENTS]
    published = {path: served_as(fetch(local_system.issuer + path)) for path in paths}
    assert {answer[0] for answer in published.values()} == {200}

    before: list[tuple[str, Fetched]] = []

    def early(number: int) -> None:
        path = paths[number % len(paths)]
        before.append((path, fetch(origin + path)))

    in_crowd(READERS, early)
    assert len(before) == READERS
    for path, (status, headers, body) in before:
        if path in LOCAL_DOCUMENTS:
            assert served_as((status, headers, body)) == published[path]
            continue
        assert status == 503, (path, status, body)
        assert json.loads(body) == {
            "error": "temporarily_unavailable",
            "error_description": "the issuer documents are not published yet, retry later",
        }
        assert (headers["Retry-After"], headers["Cache-Control"]) == ("5", "no-store")

    s3 = local_system.deployment.client("s3")
    # Every read of the bucket is slow: readers of a document overlap its first fetch.
    s3.meta.events.register("before-call.s3.GetObject", lambda **_: time.sleep(0.1))
    unpublished_front.documents = s3_documents(s3, local_system.deployment.jwks_bucket)
    after: list[tuple[str, Fetched]] = []

    def reader(number: int) -> None:
        for i in range(len(WELL_KNOWN)):
            path = WELL_KNOWN[(number + i) % len(WELL_KNOWN)]
            after.append((path, fetch(origin + path)))

    in_crowd(READERS, reader)
    assert len(after) == READERS * len(WELL_KNOWN)
    wrong = [
        (path, served_as(answer)[:3], len(answer[2]))
        for path, answer in after
        if served_as(answer) != published[path]
    ]
    assert wrong == []


def posted(url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as answer:
        return answer.code, json.loads(answer.read())


def test_requests_of_every_kind_at_once_each_get_the_answer_to_their_own(
    local_system: LocalSystem, eager_switching: None
) -> None:
    """Introspections of two different tokens, exchanges of garbage and introspections
    without credentials, six threads at once: every answer is the one its own request
    calls for (without the front's one-at-a-time handling, about one in ten came back
    with another request's answer: a 400 for an introspection, another token's claims)."""
    tokens = {}
    for scope in ("demo:read", "demo:write"):
        status, _, body = exchange(local_system, scope=scope)
        assert status == 200, body
        tokens[scope] = body["access_token"]
    basic = {"Authorization": basic_authorization(*local_system.introspection_client)}
    introspect, token = local_system.issuer + "/introspect", local_system.issuer + "/token"
    wrong: list[tuple[str, int, dict[str, Any]]] = []

    def introspection(scope: str) -> None:
        status, body = posted(introspect, {"token": tokens[scope]}, basic)
        if (status, body.get("active"), body.get("scope")) != (200, True, scope):
            wrong.append((f"introspect {scope}", status, body))

    def garbage() -> None:
        status, body = posted(token, {"grant_type": "nothing-valid", "audience": "x"}, {})
        if (status, body.get("error")) != (400, "unsupported_grant_type"):
            wrong.append(("garbage exchange", status, body))

    def no_credentials() -> None:
        status, body = posted(introspect, {"token": tokens["demo:read"]}, {})
        if (status, body.get("error")) != (401, "invalid_client"):
            wrong.append(("introspect without credentials", status, body))

    jobs: list[Callable[[], None]] = [
        lambda: introspection("demo:read"),
        lambda: introspection("demo:write"),
        garbage,
        garbage,
        no_credentials,
        no_credentials,
    ]
    start = threading.Barrier(len(jobs))

    def repeat(job: Callable[[], None]) -> None:
        start.wait(timeout=30)
        for _ in range(60):
            job()

    threads = [threading.Thread(target=repeat, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert wrong == [], wrong[:3]
