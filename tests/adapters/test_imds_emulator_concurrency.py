"""The IMDS emulator of `tokex local` (tokex.local.imds) under a crowd: every caller gets
its own session token and the same signed identity document, and the pruning of the
token set (expired tokens, then the oldest beyond MAX_SESSION_TOKENS) drops only what it
should, however many PUTs overlap it."""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokex.local.imds import MAX_SESSION_TOKENS, TOKEN_HEADER, TTL_HEADER, ImdsEmulator

TOKEN_PATH = "/latest/api/token"
DOCUMENT_PATH = "/latest/dynamic/instance-identity/document"
SIGNATURE_PATH = "/latest/dynamic/instance-identity/rsa2048"
CROWD = 32
SESSIONS = 3  # per workload: more PUTs to overlap one another


@pytest.fixture
def imds(tmp_path: Path) -> Iterator[ImdsEmulator]:
    emulator = ImdsEmulator(tmp_path)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def eager_switching() -> Iterator[None]:
    """Threads switch every microsecond instead of every 5 ms: an unlocked read-modify-
    write of the token set is interrupted often enough for a lost update to be seen."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(interval)


def call(url: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, ""


def new_token(imds: ImdsEmulator, ttl: int) -> str:
    status, token = call(imds.url, "PUT", TOKEN_PATH, {TTL_HEADER: str(ttl)})
    assert status == 200 and token
    return token


def identity(imds: ImdsEmulator, token: str) -> tuple[tuple[int, str], tuple[int, str]]:
    """(status, text) of the document and of its signature, read with `token`."""
    headers = {TOKEN_HEADER: token}
    return call(imds.url, "GET", DOCUMENT_PATH, headers), call(
        imds.url, "GET", SIGNATURE_PATH, headers
    )


def in_crowd(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """`work(n)` on `count` threads released together by a Barrier; what they raised."""
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def one(number: int) -> None:
        start.wait()
        try:
            work(number)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return errors


def test_a_crowd_gets_its_own_tokens_and_the_same_signed_document(
    imds: ImdsEmulator, eager_switching: None
) -> None:
    """32 workloads each open 3 sessions (PUT a token, read the document and its
    signature) at once, while a 1 s token lives and dies: each read is 200 with the texts
    a lone caller reads; the dead token is 401 and the pruning that forgot it kept every
    live one. Many live tokens (as after a loop of PUTs) make each PUT's pruning long: an
    unlocked prune overlapping another PUT would drop that PUT's token."""
    for _ in range(MAX_SESSION_TOKENS - SESSIONS * CROWD - 8):  # short of the cap
        imds.new_session_token(3600)
    expected = ((200, imds.document), (200, imds.rsa2048))
    assert identity(imds, new_token(imds, 60)) == expected
    short_lived = new_token(imds, 1)
    issued = time.monotonic()
    assert identity(imds, short_lived) == expected

    tokens: dict[int, list[str]] = {}
    reads: dict[int, list[tuple[tuple[int, str], tuple[int, str]]]] = {}

    def workload(number: int) -> None:
        tokens[number] = [new_token(imds, 60) for _ in range(SESSIONS)]
        reads[number] = [identity(imds, token) for token in tokens[number]]

    assert in_crowd(CROWD, workload) == []
    handed_out = [token for own in tokens.values() for token in own]
    assert len(set(handed_out)) == SESSIONS * CROWD
    assert reads == {number: [expected] * SESSIONS for number in range(CROWD)}

    time.sleep(max(0.0, issued + 1.2 - time.monotonic()))
    latest = new_token(imds, 60)  # its PUT prunes the expired token
    assert identity(imds, short_lived) == ((401, ""), (401, ""))
    for token in [*handed_out, latest]:
        assert identity(imds, token) == expected


def test_a_crowd_beyond_the_cap_drops_only_the_oldest_tokens(
    imds: ImdsEmulator, eager_switching: None
) -> None:
    """The set is kept to MAX_SESSION_TOKENS by forgetting the oldest: when 32 PUTs at once
    push it over, the tokens that go are the oldest ones, never a token just handed out."""
    oldest = [imds.new_session_token(3600) for _ in range(CROWD // 2)]
    for _ in range(MAX_SESSION_TOKENS - 1 - CROWD):
        imds.new_session_token(3600)
    # The set is 16 short of full: the crowd's last 16 PUTs each push out one token.
    survivor = new_token(imds, 3600)  # newer than every one the crowd pushes out
    tokens: dict[int, str] = {}
    assert in_crowd(CROWD, lambda number: tokens.__setitem__(number, new_token(imds, 60))) == []

    expected = ((200, imds.document), (200, imds.rsa2048))
    for token in [survivor, *tokens.values()]:
        assert identity(imds, token) == expected
    assert not any(imds.is_session_token(token) for token in oldest)
