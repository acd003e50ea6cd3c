"""TokenExchange's order of checks (docs/contract.md "Order of checks, and what each
refusal costs"), driven with fakes of its interfaces: no AWS, no emulator.

Every fake writes to one log, so each test asserts the whole sequence of upstream calls:
offline checks before STS, the policy decision right after it, then the admission write
started in the background before KMS signs (a deferred executor runs it only when the
exchange waits for it, so the log shows what happened while it was in flight), and every
outcome of the two: a refused write discards the signature, a failed Sign after a
written admission releases it, a refused policy writes without signing. One test runs
them on real threads and proves they overlap.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import rsa

from tokex import deadline
from tokex.deadline import CLEANUP_GRACE_SECONDS
from tokex.errors import (
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    Misconfigured,
    RateLimited,
    TemporarilyUnavailable,
    TokexError,
)
from tokex.evidence.identity import CallerIdentity
from tokex.evidence.instance_identity import CertificateStore
from tokex.evidence.jwt_claims import STS_NAMESPACE
from tokex.evidence.replay import RECORD_MARGIN_SECONDS, UsedEvidence, replay_refusal
from tokex.evidence.sigv4_request import STS_BODY, StsRequest
from tokex.evidence.trusted_issuers import TrustedIssuer, TrustedIssuers
from tokex.exchange import ExchangeAudit, IssuedToken, TokenExchange
from tokex.policy.model import Policy
from tokex.settings import MAX_DEADLINE_SECONDS, Settings
from tokex.token_request import TokenRequest

ISSUER = "https://auth.example.com"
HOST = "sts.us-east-1.amazonaws.com"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/app"
AUDIENCE = "orders-api"
FORM = "application/x-www-form-urlencoded; charset=utf-8"


def signed_request(
    issuer: str = ISSUER, session_token: str = "session-token", **more_headers: str
) -> dict[str, Any]:
    """A GetCallerIdentity request signed now, as a workload signs it."""
    headers = {"Content-Type": FORM, "X-Tokex-Issuer": issuer, **more_headers}
    request = AWSRequest(method="POST", url=f"https://{HOST}/", data=STS_BODY, headers=headers)
    credentials = Credentials("ASIAIOSFODNN7EXAMPLE", "secret", session_token)
    SigV4Auth(credentials, "sts", "us-east-1").add_auth(request)
    return {
        "method": "POST",
        "url": f"https://{HOST}/",
        "headers": dict(request.headers.items()),
        "body": STS_BODY,
    }


def token_request(**changes: Any) -> TokenRequest:
    fields: dict[str, Any] = {
        "signed_request": signed_request(),
        "audience": AUDIENCE,
        "scopes": None,
        "instance_evidence": None,
    }
    fields.update(changes)
    return TokenRequest(**fields)


CALLER = CallerIdentity(
    principal_arn=ROLE,
    arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session",
    account=ACCOUNT,
    user_id="AROAEXAMPLEEXAMPLE:session",
    principal_id="AROAEXAMPLEEXAMPLE",
    partition="aws",
    session_name="session",
)
ALLOW = Policy.from_document(
    {
        "id": "orders",
        "effect": "allow",
        "principals": [ROLE],
        "audiences": [AUDIENCE],
        "scopes": ["orders:read"],
    }
)


class _Deferred(Future[Any]):
    def __init__(self, work: Any, args: tuple[Any, ...]) -> None:
        super().__init__()
        self._work, self._args = work, args

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            try:
                self.set_result(self._work(*self._args))
            except Exception as exc:
                self.set_exception(exc)
        return super().result(timeout)


class DeferredExecutor(Executor):
    """Runs a submitted call only when the exchange waits for its result: whatever the
    log shows between "background" and the call happened while it was in flight."""

    def __init__(self, log: list[str]) -> None:
        self._log = log

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self._log.append("background")
        return _Deferred(fn, args)


class World:
    """The fakes of every interface TokenExchange uses, logging to one list."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sts_error: Exception | None = None
        self.admit_error: Exception | None = None
        self.policies_error: Exception | None = None
        self.sign_error: Exception | None = None
        self.policies_list = [ALLOW]
        self.admitted: list[tuple[UsedEvidence | None, str]] = []
        self.released: list[object] = []

    # CallerIdentityVerifier
    def get_caller_identity(self, request: StsRequest) -> CallerIdentity:
        self.log.append("sts")
        if self.sts_error is not None:
            raise self.sts_error
        return CALLER

    # PolicySource
    def policies(self) -> list[Policy]:
        self.log.append("policies")
        if self.policies_error is not None:
            raise self.policies_error
        return list(self.policies_list)

    invalid_ids: tuple[str, ...] = ()

    # AdmissionStore
    def admit(self, used: UsedEvidence | None, principal: str) -> object:
        self.log.append("admit")
        if self.admit_error is not None:
            raise self.admit_error
        self.admitted.append((used, principal))
        return ("admission", principal)

    def release(self, admission: object) -> bool:
        self.log.append("release")
        self.released.append(admission)
        return True

    # Signer (and the factory TokenExchange calls on first use)
    def signer(self) -> World:
        self.log.append("signer")
        return self

    alg = "ES256"
    kid = "kid-1"

    def public_jwk(self) -> dict[str, Any]:
        return {"kty": "EC", "kid": self.kid, "alg": self.alg}

    def sign(self, signing_input: bytes) -> bytes:
        self.log.append("sign")
        if self.sign_error is not None:
            raise self.sign_error
        return b"\x01" * 64

    def certificates(self) -> CertificateStore:
        self.log.append("certificates")
        return CertificateStore.default()

    def exchange(
        self,
        *,
        admission: bool = True,
        background: Executor | None = None,
        audit: ExchangeAudit | None = None,
        **changes: Any,
    ) -> IssuedToken:
        exchange = _one_environment(
            self, background or DeferredExecutor(self.log), admission=self if admission else None
        )
        return exchange.exchange(token_request(**changes), audit or ExchangeAudit())


@pytest.fixture
def world() -> World:
    return World()


_DEFERRED = object()


def _one_environment(world: World, background: Any = _DEFERRED, **changes: Any) -> TokenExchange:
    """One TokenExchange (one execution environment) over the fakes, with `changes` to
    its arguments; by default its background executor is the deferred one, `None` for
    none."""
    arguments: dict[str, Any] = {
        "settings": Settings(issuer=ISSUER),
        "sts": world,
        "policies": world,
        "signer": world.signer,
        "instance_certificates": world.certificates,
        "admission": world,
        "background": DeferredExecutor(world.log) if background is _DEFERRED else background,
    }
    return TokenExchange(**{**arguments, **changes})


def test_with_single_use_off_a_signed_request_may_be_exchanged_again(world: World) -> None:
    """TOKEX_SINGLE_USE=false: each exchange charges the budget and uses nothing up, so
    the environment that saw a request does not refuse it either."""
    exchange = _one_environment(world, settings=Settings(issuer=ISSUER, single_use=False))
    request = token_request()
    for _ in range(2):
        assert exchange.exchange(request, ExchangeAudit()).access_token
    assert world.admitted == [(None, ROLE), (None, ROLE)]
    world.admit_error = RateLimited("over budget", retry_after=30)
    with pytest.raises(RateLimited):  # not remembered as used: a 429 again, not a replay
        exchange.exchange(request, ExchangeAudit())
    with pytest.raises(RateLimited):
        exchange.exchange(request, ExchangeAudit())


def refused(world: World, error: type[TokexError], **changes: Any) -> TokexError:
    with pytest.raises(error) as caught:
        world.exchange(**changes)
    return caught.value


def test_an_exchange_decides_then_signs_while_the_write_is_in_flight(world: World) -> None:
    audit = ExchangeAudit()
    issued = world.exchange(audit=audit)
    assert world.log == ["sts", "policies", "background", "signer", "sign", "admit"]
    assert world.admitted[0][1] == ROLE  # charged to the principal STS named
    assert issued.scopes == ("orders:read",) and not world.released
    assert audit.jti is not None


def test_expires_in_counts_from_the_answer_not_from_the_request(world: World) -> None:
    """RFC 6749 §5.1: a client that adds `expires_in` to when it got the answer must not
    outlive `exp`, though the token is dated to the second before the request began and
    the exchange took time since (here 1.8 s of it)."""
    began = float(int(time.time()))
    readings = iter([began + 0.5])
    exchange = _one_environment(world, clock=lambda: next(readings, began + 2.3))
    issued = exchange.exchange(token_request(), ExchangeAudit())
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["iat"] == began and claims["exp"] == began + 900
    assert issued.expires_in == 900 - 3  # to the whole second after the answer
    assert began + 2.3 + issued.expires_in <= claims["exp"]


def test_the_audit_names_the_sts_host_and_access_key_even_when_sts_fails(world: World) -> None:
    """STS throttles per account and Region: an audit line without them could not tell a
    noisy caller from an outage of STS."""
    world.sts_error = TemporarilyUnavailable("STS throttling", reason="sts")
    audit = ExchangeAudit()
    with pytest.raises(TemporarilyUnavailable):
        world.exchange(audit=audit)
    assert (audit.sts_host, audit.access_key_id, audit.principal) == (
        "sts.us-east-1.amazonaws.com",
        "ASIAIOSFODNN7EXAMPLE",
        None,
    )


def test_the_audit_names_the_stored_policies_that_do_not_validate(world: World) -> None:
    world.invalid_ids = ("broken-allow",)
    audit = ExchangeAudit()
    world.exchange(audit=audit)
    assert audit.invalid_policies == ("broken-allow",)


def test_a_load_that_invalid_policies_block_still_names_them(world: World) -> None:
    """An invalid item that may be a deny makes the load fail (503 misconfigured): the
    audit line names every invalid item all the same, for the `InvalidPolicies` alarm."""
    world.invalid_ids = ("broken-allow", "broken-deny")
    world.policies_error = Misconfigured("policies are being updated; retry later")
    audit = ExchangeAudit()
    with pytest.raises(Misconfigured):
        world.exchange(audit=audit)
    assert audit.invalid_policies == ("broken-allow", "broken-deny")


def test_without_an_admission_store_the_policies_follow_sts(world: World) -> None:
    world.exchange(admission=False)
    assert world.log == ["sts", "policies", "signer", "sign"]


def test_without_an_executor_the_write_runs_before_the_sign(world: World) -> None:
    _one_environment(world, background=None).exchange(token_request(), ExchangeAudit())
    assert world.log == ["sts", "policies", "admit", "signer", "sign"]


def test_the_write_and_the_sign_overlap_on_real_threads(world: World) -> None:
    """Each waits until the other has started: sequential calls would break the barrier."""
    both_started = threading.Barrier(2, timeout=10)
    seen: list[object] = []
    admit, sign = world.admit, world.sign

    def admit_when_signing(used: UsedEvidence | None, principal: str) -> object:
        seen.append(deadline.current())  # the request's deadline reached the worker
        both_started.wait()
        return admit(used, principal)

    def sign_when_admitting(signing_input: bytes) -> bytes:
        both_started.wait()
        return sign(signing_input)

    world.admit, world.sign = admit_when_signing, sign_when_admitting  # type: ignore[method-assign]
    with ThreadPoolExecutor(1) as pool, deadline.request_deadline(5) as budget:
        issued = world.exchange(background=pool)
    assert issued.access_token and seen == [budget]
    assert sorted(world.log) == sorted(["sts", "policies", "signer", "sign", "admit"])


class LoadsAhead:
    """World's signer factory and policies, each also recording the thread that asked and
    setting an event when a load has started."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.signer_started, self.policies_started = threading.Event(), threading.Event()
        self.policies_failed = threading.Event()
        self.callers: list[tuple[str, str]] = []
        self.policies_failures = 0

    def signer(self) -> World:
        self.callers.append(("signer", threading.current_thread().name))
        self.signer_started.set()
        return self.world.signer()

    def policies(self) -> list[Policy]:
        self.callers.append(("policies", threading.current_thread().name))
        self.policies_started.set()
        if self.policies_failures:
            self.policies_failures -= 1
            self.policies_failed.set()
            raise TemporarilyUnavailable("policies unavailable", reason="dynamodb")
        return self.world.policies()

    @property
    def invalid_ids(self) -> tuple[str, ...]:
        return self.world.invalid_ids

    def sts_answers_once_both_loads_started(self) -> None:
        """World's STS answers only once the background has started both loads: a fake
        STS answers at once, so the request could otherwise ask for the key or the
        policies first and load them itself (as it should, when STS is that fast)."""
        get_caller_identity = self.world.get_caller_identity

        def sts_while_loading(request: StsRequest) -> CallerIdentity:
            assert self.signer_started.wait(10) and self.policies_started.wait(10)
            return get_caller_identity(request)

        self.world.get_caller_identity = sts_while_loading  # type: ignore[method-assign]

    def environment(self, pool: Executor, **changes: Any) -> TokenExchange:
        """An environment that loads ahead on `pool`, from these fakes."""
        return _one_environment(
            self.world, pool, policies=self, signer=self.signer, load_ahead=True, **changes
        )


def test_a_cold_environment_loads_the_key_and_the_policies_while_sts_answers(
    world: World,
) -> None:
    """STS answers only once both loads have started: loaded after it, they would time
    it out."""
    ahead = LoadsAhead(world)
    ahead.sts_answers_once_both_loads_started()
    with ThreadPoolExecutor(4, thread_name_prefix="bg") as pool:
        issued = ahead.environment(pool).exchange(token_request(), ExchangeAudit())
    assert issued.access_token
    background = {what for what, thread in ahead.callers if thread.startswith("bg")}
    assert background == {"signer", "policies"}


def test_loading_ahead_is_once_per_environment(world: World) -> None:
    ahead = LoadsAhead(world)
    ahead.sts_answers_once_both_loads_started()
    with ThreadPoolExecutor(4, thread_name_prefix="bg") as pool:
        environment = ahead.environment(pool)
        environment.exchange(token_request(), ExchangeAudit())
        first = len(ahead.callers)
        another = token_request(signed_request=signed_request(session_token="another"))
        environment.exchange(another, ExchangeAudit())
    earlier = [where for _, where in ahead.callers[:first]]
    later = [where for _, where in ahead.callers[first:]]
    assert sum(where.startswith("bg") for where in earlier) == 2  # the key and the policies
    assert later and not any(where.startswith("bg") for where in later)


def test_a_request_refused_before_the_network_loads_nothing_ahead(world: World) -> None:
    """Offline refusals cost nothing upstream; the load ahead waits for a request that
    gets as far as STS."""
    ahead = LoadsAhead(world)
    ahead.sts_answers_once_both_loads_started()
    with ThreadPoolExecutor(4, thread_name_prefix="bg") as pool:
        environment = ahead.environment(pool)
        with pytest.raises(InvalidGrant):
            bad = token_request(signed_request=signed_request("https://other.example"))
            environment.exchange(bad, ExchangeAudit())
        assert ahead.callers == [] and world.log == []
        environment.exchange(token_request(), ExchangeAudit())
    assert {what for what, where in ahead.callers if where.startswith("bg")} == {
        "signer",
        "policies",
    }


@pytest.mark.parametrize("failures", [1, 2])
def test_a_failed_load_ahead_is_asked_again_and_that_answer_stands(
    world: World, failures: int
) -> None:
    """The background load's failure is dropped: the exchange asks again when it needs
    the policies, and only that answer counts (a token, or its 503)."""
    ahead = LoadsAhead(world)
    ahead.policies_failures = failures
    get_caller_identity = world.get_caller_identity

    def sts_after_the_load(request: StsRequest) -> CallerIdentity:
        assert ahead.policies_failed.wait(10)  # the background load has failed
        return get_caller_identity(request)

    world.get_caller_identity = sts_after_the_load  # type: ignore[method-assign]
    with ThreadPoolExecutor(4, thread_name_prefix="bg") as pool:
        environment = ahead.environment(pool)
        if failures == 1:
            assert environment.exchange(token_request(), ExchangeAudit()).access_token
        else:
            with pytest.raises(TemporarilyUnavailable):
                environment.exchange(token_request(), ExchangeAudit())
            assert "sign" not in world.log
    assert [what for what, _ in ahead.callers].count("policies") == 2


def test_a_bad_signed_request_is_refused_before_sts(world: World) -> None:
    error = refused(world, InvalidGrant, signed_request=signed_request("https://other.example"))
    assert (error.status, error.error) == (400, "invalid_grant")
    assert error.reason == "X-Tokex-Issuer does not name this issuer"
    assert world.log == []  # nothing upstream was called


def test_a_deployment_that_requires_a_signed_audience_refuses_a_request_without_one(
    world: World,
) -> None:
    """TOKEX_REQUIRE_SIGNED_AUDIENCE: refused offline, before STS, the KMS Sign and the
    write; a request that signs its audience is exchanged."""
    exchange = _one_environment(
        world, settings=Settings(issuer=ISSUER, require_signed_audience=True)
    )
    with pytest.raises(InvalidGrant, match="requires a signed X-Tokex-Audience") as caught:
        exchange.exchange(token_request(), ExchangeAudit())
    assert caught.value.status == 400 and world.log == []
    bound = signed_request(**{"X-Tokex-Audience": AUDIENCE})
    assert exchange.exchange(token_request(signed_request=bound), ExchangeAudit()).access_token


def test_bad_instance_evidence_is_refused_before_sts(world: World) -> None:
    error = refused(world, InvalidRequest, instance_evidence={"document": "x"})
    assert (error.status, error.error) == (400, "invalid_request")
    assert error.reason == "aws_instance_identity needs exactly one of rsa2048, pkcs7, signature"
    assert world.log == ["certificates"]  # verified offline, before STS


def test_an_sts_refusal_costs_no_admission(world: World) -> None:
    world.sts_error = InvalidGrant("STS refused the signature", reason="sts_refused:403")
    error = refused(world, InvalidGrant)
    assert error.reason == "sts_refused:403"
    assert world.log == ["sts"]


WRITE_REFUSALS = [
    pytest.param(replay_refusal(), InvalidGrant, (400, "replay"), id="replay"),
    pytest.param(
        RateLimited("too many", reason="rate_limited", retry_after=5),
        RateLimited,
        (429, "rate_limited"),
        id="over_budget",
    ),
    pytest.param(
        TemporarilyUnavailable("down", reason="dynamodb TransactWriteItems: timeout"),
        TemporarilyUnavailable,
        (503, "dynamodb TransactWriteItems: timeout"),
        id="write_failed",
    ),
]


@pytest.mark.parametrize(("write_error", "error_type", "answer"), WRITE_REFUSALS)
def test_a_refused_or_failed_write_discards_the_signature(
    world: World, write_error: Exception, error_type: type[TokexError], answer: tuple
) -> None:
    world.admit_error = write_error
    audit = ExchangeAudit()
    error = refused(world, error_type, audit=audit)
    assert (error.status, error.reason) == answer
    # KMS signed while the write was in flight; the token never left, nothing is
    # released (a failed write's outcome is unknown: it stays used up).
    assert world.log == ["sts", "policies", "background", "signer", "sign", "admit"]
    assert audit.jti is None and not world.released


@pytest.mark.parametrize(("write_error", "error_type", "answer"), WRITE_REFUSALS)
def test_the_write_s_answer_wins_over_a_failed_sign(
    world: World, write_error: Exception, error_type: type[TokexError], answer: tuple
) -> None:
    world.admit_error = write_error
    world.sign_error = TemporarilyUnavailable("down", reason="kms Sign: Throttling")
    error = refused(world, error_type)
    assert (error.status, error.reason) == answer
    assert world.log[-1] == "admit" and not world.released


def test_a_failed_sign_after_a_written_admission_releases_it(world: World) -> None:
    world.sign_error = TemporarilyUnavailable("down", reason="kms Sign: Throttling")
    error = refused(world, TemporarilyUnavailable)
    assert (error.status, error.reason) == (503, "kms Sign: Throttling")
    assert world.log == ["sts", "policies", "background", "signer", "sign", "admit", "release"]
    assert world.released == [("admission", ROLE)]  # what admit returned


def test_a_bug_in_signing_after_a_written_admission_releases_it(world: World) -> None:
    world.sign_error = RuntimeError("a bug")
    with pytest.raises(RuntimeError):
        world.exchange()
    assert world.log[-2:] == ["admit", "release"]


@pytest.mark.parametrize(("write_error", "error_type", "answer"), WRITE_REFUSALS)
def test_a_bug_in_signing_masked_by_the_write_s_refusal_is_logged(
    world: World, write_error: Exception, error_type: type[TokexError], answer: tuple, caplog
) -> None:
    """The caller gets the refusal; the bug would otherwise live on only as its context."""
    world.admit_error = write_error
    world.sign_error = RuntimeError("a bug in signing")
    with caplog.at_level("ERROR", logger="tokex.exchange"):
        error = refused(world, error_type)
    assert (error.status, error.reason) == answer
    (record,) = [r for r in caplog.records if r.name == "tokex.exchange"]
    assert record.message == "signing failed unexpectedly"
    assert record.exc_info is not None and str(record.exc_info[1]) == "a bug in signing"


def test_a_policy_table_failure_writes_nothing(world: World) -> None:
    world.policies_error = TemporarilyUnavailable("down", reason="dynamodb Scan: timeout")
    error = refused(world, TemporarilyUnavailable)
    assert (error.status, error.reason) == (503, "dynamodb Scan: timeout")
    assert world.log == ["sts", "policies"]  # the request stays usable: nothing to release


@pytest.mark.parametrize(
    ("changes", "error_type", "reason"),
    [
        ({"audience": "billing-api"}, InvalidTarget, "policy orders does not cover the audience"),
        ({"scopes": ("orders:write",)}, InvalidScope, "policy orders does not grant orders:write"),
    ],
)
def test_a_policy_refusal_uses_the_request_up_without_signing(
    world: World, changes: dict[str, Any], error_type: type[TokexError], reason: str
) -> None:
    error = refused(world, error_type, **changes)
    assert error.reason == reason
    assert world.log == ["sts", "policies", "admit"]  # the write alone, no KMS
    assert world.admitted[0][1] == ROLE and not world.released


@pytest.mark.parametrize(("write_error", "error_type", "answer"), WRITE_REFUSALS)
def test_the_write_s_answer_wins_over_a_policy_refusal(
    world: World, write_error: Exception, error_type: type[TokexError], answer: tuple
) -> None:
    world.admit_error = write_error
    error = refused(world, error_type, audience="billing-api")
    assert (error.status, error.reason) == answer
    assert world.log == ["sts", "policies", "admit"]


# --- replays this environment has seen used up ----------------------------------------


def test_a_replay_of_a_request_this_environment_admitted_costs_nothing(world: World) -> None:
    exchange, request = _one_environment(world), token_request()
    exchange.exchange(request, ExchangeAudit())
    world.log.clear()
    with pytest.raises(InvalidGrant) as caught:
        exchange.exchange(request, ExchangeAudit())
    assert caught.value.reason == "replay"
    assert world.log == []  # no STS call, no write, no Sign
    another = token_request(signed_request=signed_request(session_token="another-session"))
    exchange.exchange(another, ExchangeAudit())  # another signed request still works
    assert "sts" in world.log


@pytest.mark.parametrize(
    "used_up",
    [
        pytest.param(replay_refusal(), id="replay"),
        pytest.param(RateLimited("x", retry_after=5), id="429"),
    ],
)
def test_a_request_the_table_says_is_used_up_is_refused_before_sts_next_time(
    world: World, used_up: TokexError
) -> None:
    exchange, request = _one_environment(world), token_request()
    world.admit_error = used_up
    with pytest.raises(type(used_up)):
        exchange.exchange(request, ExchangeAudit())
    world.admit_error = None
    world.log.clear()
    with pytest.raises(InvalidGrant) as caught:
        exchange.exchange(request, ExchangeAudit())
    assert caught.value.reason == "replay"
    assert world.log == []


def test_a_request_given_back_after_a_kms_failure_is_not_remembered(world: World) -> None:
    exchange, request = _one_environment(world), token_request()
    world.sign_error = TemporarilyUnavailable("kms down", reason="kms Sign: timeout")
    with pytest.raises(TemporarilyUnavailable):
        exchange.exchange(request, ExchangeAudit())
    assert world.released  # the table gave it back
    world.sign_error = None
    world.log.clear()
    issued = exchange.exchange(request, ExchangeAudit())  # the retry reaches STS and issues
    assert issued.access_token and world.log[0] == "sts"


def test_a_write_without_an_answer_is_not_remembered(world: World) -> None:
    exchange, request = _one_environment(world), token_request()
    world.admit_error = TemporarilyUnavailable(
        "no answer", reason="dynamodb TransactWriteItems: timeout"
    )
    with pytest.raises(TemporarilyUnavailable):
        exchange.exchange(request, ExchangeAudit())
    world.admit_error = None
    world.log.clear()
    exchange.exchange(request, ExchangeAudit())  # the table decides: here, admitted
    assert world.log[0] == "sts"


# --- JWT evidence: verified offline, no STS call ---------------------------------------

OIF_ISSUER = TrustedIssuer("aws-oif", "https://abc.tokens.sts.global.api.aws", ACCOUNT)
EKS_ISSUER = TrustedIssuer(
    "eks", "https://oidc.eks.us-east-1.amazonaws.com/id/X", ACCOUNT, "us-east-1", "prod"
)
JWT_SETTINGS = Settings(issuer=ISSUER, trusted_issuers=TrustedIssuers((OIF_ISSUER, EKS_ISSUER)))
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Keys:
    """The trusted issuers' keys (the IssuerKeys interface): one RSA key, kid "k1"."""

    def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
        if kid != "k1":
            return None
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_RSA.public_key()))
        return jwt.PyJWK({**jwk, "kid": "k1", "alg": "RS256"})


def subject_jwt(kind: str = "aws-oif", jti: str = "jti-1", **sts: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"aud": ISSUER, "iat": now, "exp": now + 300, "jti": jti}
    if kind == "aws-oif":
        claims.update(
            iss=OIF_ISSUER.issuer,
            sub=ROLE,
            **{STS_NAMESPACE: {"aws_account": ACCOUNT, "principal_id": ROLE, **sts}},
        )
    else:
        claims.update(
            iss=EKS_ISSUER.issuer,
            sub="system:serviceaccount:payments:api",
            **{"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}},
        )
    return jwt.encode(claims, _RSA, algorithm="RS256", headers={"kid": "k1"})


EKS_ALLOW = Policy.from_document(
    {
        "id": "eks-api",
        "effect": "allow",
        "evidence": ["eks"],
        "eks": {"clusters": [f"{ACCOUNT}:us-east-1:prod"], "namespaces": ["payments"],
                "service_accounts": ["api"]},
        "audiences": [AUDIENCE],
    }
)  # fmt: skip


def jwt_environment(world: World, settings: Settings = JWT_SETTINGS) -> TokenExchange:
    keys = Keys()
    return _one_environment(world, settings=settings, issuer_keys=lambda: keys)


def jwt_request(token: str) -> TokenRequest:
    return token_request(signed_request=None, subject_jwt=token)


def test_an_oif_exchange_makes_no_sts_call_and_is_single_use_by_jti(world: World) -> None:
    exchange, audit = jwt_environment(world), ExchangeAudit()
    token = subject_jwt()
    issued = exchange.exchange(jwt_request(token), audit)
    assert "sts" not in world.log and world.log[-1] == "admit"
    used, principal = world.admitted[0]
    assert principal == ROLE and used is not None and used.what == "token"
    assert (audit.evidence, audit.principal) == ("aws-oif", ROLE)
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["aws"] == {"account": ACCOUNT, "evidence": "aws-oif", "arn": ROLE}
    world.log.clear()
    with pytest.raises(InvalidGrant) as replay:  # this environment saw it used up
        exchange.exchange(jwt_request(token), ExchangeAudit())
    assert replay.value.reason == "replay" and world.log == []


def test_a_used_oif_token_s_record_outlives_its_last_accepted_moment(world: World) -> None:
    """The exchange reads its clock once, as it starts: a copy verified in the token's
    last accepted second writes its record up to a deadline later, and must still find
    the first use's record there (DynamoDB's TTL may delete an expired one at once)."""
    token = subject_jwt()
    jwt_environment(world).exchange(jwt_request(token), ExchangeAudit())
    used, _ = world.admitted[0]
    assert used is not None
    last_accepted = jwt.decode(token, options={"verify_signature": False})["exp"] + 60
    longest_wait = MAX_DEADLINE_SECONDS + CLEANUP_GRACE_SECONDS
    assert used.expires_at == last_accepted + RECORD_MARGIN_SECONDS > last_accepted + longest_wait


def test_a_used_signed_request_s_record_outlives_its_date_window(world: World) -> None:
    request = signed_request()
    _one_environment(world).exchange(token_request(signed_request=request), ExchangeAudit())
    used, _ = world.admitted[0]
    assert used is not None
    date = request["headers"]["X-Amz-Date"]
    signed_at = datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    assert used.expires_at == signed_at + 15 * 60 + RECORD_MARGIN_SECONDS


def test_with_single_use_off_an_oif_token_may_be_exchanged_again(world: World) -> None:
    issuers = JWT_SETTINGS.trusted_issuers
    settings = Settings(issuer=ISSUER, trusted_issuers=issuers, single_use=False)
    exchange, token = jwt_environment(world, settings), subject_jwt()
    for _ in range(2):
        assert exchange.exchange(jwt_request(token), ExchangeAudit()).access_token
    assert world.admitted == [(None, ROLE), (None, ROLE)]


def test_a_cold_environment_loads_ahead_while_a_jwt_issuers_keys_arrive(world: World) -> None:
    """With JWT evidence the first network wait is the issuer's keys (fetched once): the
    signing key and the policies load beside it."""
    ahead = LoadsAhead(world)

    class KeysWhileLoading(Keys):
        def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
            assert ahead.signer_started.wait(10) and ahead.policies_started.wait(10)
            return super().key(issuer, kid)

    with ThreadPoolExecutor(4, thread_name_prefix="bg") as pool:
        keys = KeysWhileLoading()
        exchange = ahead.environment(pool, settings=JWT_SETTINGS, issuer_keys=lambda: keys)
        assert exchange.exchange(jwt_request(subject_jwt()), ExchangeAudit()).access_token
    assert "sts" not in world.log
    assert {what for what, where in ahead.callers if where.startswith("bg")} == {
        "signer",
        "policies",
    }


def test_an_eks_token_is_not_single_use_and_needs_an_eks_policy(world: World) -> None:
    exchange = jwt_environment(world)
    with pytest.raises(InvalidTarget):  # the default policy names no evidence: never eks
        exchange.exchange(jwt_request(subject_jwt("eks")), ExchangeAudit())
    world.policies_list = [ALLOW, EKS_ALLOW]
    token = subject_jwt("eks")
    for _ in range(2):  # the same token twice: a pod reuses it
        issued = exchange.exchange(jwt_request(token), ExchangeAudit())
    assert [used for used, _ in world.admitted] == [None, None, None]
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    assert claims["sub"] == f"eks:{ACCOUNT}:us-east-1:prod:payments:api"
    assert claims["aws"]["eks"]["service_account"] == "api"


def test_a_deployment_without_trusted_issuers_refuses_jwts(world: World) -> None:
    exchange = jwt_environment(world, Settings(issuer=ISSUER))
    with pytest.raises(InvalidRequest) as refused_jwt:
        exchange.exchange(jwt_request(subject_jwt()), ExchangeAudit())
    assert refused_jwt.value.reason == "jwt_not_configured" and world.log == []


def test_a_regional_exchange_takes_oif_tokens_of_its_own_region_only(world: World) -> None:
    """No cross-Region replay (docs/security.md "Regional exchanges"): a token used up in
    one Region's table is never accepted by another Region's exchange, whatever the
    replication lag, because that exchange refuses the token's Region."""
    regional = Settings(
        issuer=ISSUER,
        trusted_issuers=JWT_SETTINGS.trusted_issuers,
        serving_region="eu-west-1",
    )
    exchange = jwt_environment(world, regional)
    for token, why in (
        (subject_jwt(jti="a", source_region="us-east-1"), "another Region's token"),
        (subject_jwt(jti="b"), "a token that names no Region"),
    ):
        with pytest.raises(InvalidGrant) as refused:
            exchange.exchange(jwt_request(token), ExchangeAudit())
        assert refused.value.reason == "oif_region", why
    assert world.admitted == []  # refused before anything was used up or charged
    exchange.exchange(jwt_request(subject_jwt(jti="c", source_region="eu-west-1")), ExchangeAudit())
    assert len(world.admitted) == 1


def test_a_regional_exchange_takes_requests_signed_for_its_own_regions_sts_only(
    world: World,
) -> None:
    exchange = jwt_environment(world, Settings(issuer=ISSUER, serving_region="eu-west-1"))
    with pytest.raises(InvalidGrant):  # signed for sts.us-east-1.amazonaws.com
        exchange.exchange(token_request(), ExchangeAudit())
    assert "sts" not in world.log and world.admitted == []
