"""The exchange against the AWS floor (issue 11, item 4), on the proxied local system.

The floor is what any SigV4 exchange must do: STS `GetCallerIdentity` and KMS `Sign`
(plus, for CPU, one conditional DynamoDB write: single use must be recorded somewhere).
Each comparison runs tokex and the floor interleaved, in the same process, through the
same proxy, so machine load hits both alike.
"""

from __future__ import annotations

import functools
import gc
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3

from benchmarks.figures import Figure, at_most, exactly, interval, p50, ratio, reported, within
from benchmarks.proxied_local import BenchSystem
from tokex.adapters import aws_clients
from tokex.adapters.state_table.admission import DynamoDbAdmission
from tokex.adapters.state_table.schema import KEY_ATTRIBUTE
from tokex.adapters.sts import StsForwarder
from tokex.client.token_client import request_token
from tokex.deadline import request_deadline
from tokex.evidence.replay import UsedEvidence
from tokex.evidence.sigv4_request import StsRequest, verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints
from tokex.local.provision import DEMO_AUDIENCE, REGION
from tokex.local.runner import handler_environment
from tokex.settings import Settings

FLOOR_MESSAGE = b"\0" * 32  # a SHA-256 digest's size: what tokex asks KMS to sign
DYNAMODB_READS = ("GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems")
DYNAMODB_WRITES = (
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
)


@dataclass(frozen=True)
class Profile:
    calls_exchanges: int  # counted on the wire
    latency_samples: int  # per delay, per side
    end_to_end_samples: int
    cpu_samples: int
    cold_runs: int
    delay_ms: float = 10.0


class Floor:
    """The floor's calls, made with tokex's own clients (its client factory's hot-path
    config, the bounded transport inside a request deadline) against the same proxied
    emulator. For CPU, STS is reached as tokex reaches it: a request the workload signed
    (outside the timing) forwarded by tokex's STS forwarder, not a botocore call that
    builds, signs and parses it."""

    def __init__(self, system: BenchSystem) -> None:
        self._system = system
        with handler_environment(system.local.handler_env()):
            settings = Settings.from_env()
        self._settings = settings
        self._endpoints = StsEndpoints.from_settings(settings)
        self.forwarder = StsForwarder(settings.sts_connect_override)
        deployment = system.local.deployment
        endpoint = deployment.endpoint_url
        session = aws_clients.new_session()
        service: dict[str, str | None] = {"endpoint_url": endpoint, "region_name": REGION}
        service.update(_keys(deployment.service.session(REGION)))
        self.sts = aws_clients.client(
            "sts",
            session=session,
            endpoint_url=endpoint,
            region_name=REGION,
            **_keys(system.workload),
        )
        self.kms = aws_clients.client("kms", session=session, **service)
        self.dynamodb = aws_clients.client("dynamodb", session=session, **service)
        self.key = deployment.signing_key_arn
        self.table = deployment.state_table
        # tokex's own admission adapter on the same table, with a budget no sample reaches.
        self.admission = DynamoDbAdmission(
            self.dynamodb, self.table, single_use=True, rate_limit_per_minute=10**9
        )

    def sts_and_sign(self) -> None:
        with request_deadline(10.0):
            self.sts.get_caller_identity()
            self._sign()

    def signed_sts_request(self) -> StsRequest:
        """A freshly signed GetCallerIdentity, checked as the exchange checks it: what
        tokex forwards (built outside the timing, as the workload signs it)."""
        return verify_sts_request(
            self._system.signed_request(),
            issuer=self._settings.issuer,
            endpoints=self._endpoints,
            now=datetime.now(UTC),
            audience=DEMO_AUDIENCE,
        )

    def sts_sign_and_write(self, sts_request: StsRequest) -> None:
        with request_deadline(10.0):
            self.forwarder.get_caller_identity(sts_request)
            self._sign()
            self.dynamodb.put_item(
                TableName=self.table,
                Item={KEY_ATTRIBUTE: {"S": f"bench#{uuid.uuid4()}"}},
                ConditionExpression="attribute_not_exists(#k)",
                ExpressionAttributeNames={"#k": KEY_ATTRIBUTE},
            )

    def sign_alone(self) -> None:
        with request_deadline(10.0):
            self._sign()

    def admission_write_alone(self) -> None:
        """The write a warm exchange makes while KMS signs: one TransactWriteItems of a
        single-use record and a rate-limit counter."""
        used = UsedEvidence(secrets.token_hex(32), int(time.time()) + 900)
        with request_deadline(10.0):
            self.admission.admit(used, "arn:aws:iam::123456789012:role/bench")

    def _sign(self) -> None:
        self.kms.sign(
            KeyId=self.key,
            Message=FLOOR_MESSAGE,
            MessageType="DIGEST",
            SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256",
        )


def calls_per_exchange(system: BenchSystem, exchanges: int) -> list[Figure]:
    system.proxy.set_delay(0)
    system.exchange(system.token_event())  # warm
    events = [system.token_event() for _ in range(exchanges)]
    system.proxy.take()
    for event in events:
        system.exchange(event)
    calls = system.proxy.take()

    def per_exchange(*operations: str) -> float:
        return sum(calls.get(op, 0) for op in operations) / exchanges

    reads = per_exchange(*(f"dynamodb:{op}" for op in DYNAMODB_READS))
    writes = per_exchange(*(f"dynamodb:{op}" for op in DYNAMODB_WRITES))
    known = {"sts:GetCallerIdentity", "kms:Sign"} | {
        f"dynamodb:{op}" for op in DYNAMODB_READS + DYNAMODB_WRITES
    }
    other = sum(n for op, n in calls.items() if op not in known) / exchanges
    by_operation = [
        reported(f"AWS calls per warm exchange, on the wire: {op}", n / exchanges, "calls")
        for op, n in sorted(calls.items())
    ]
    return [
        exactly(
            "AWS calls per warm exchange: STS GetCallerIdentity",
            per_exchange("sts:GetCallerIdentity"),
            "calls",
            1,
        ),
        exactly("AWS calls per warm exchange: KMS Sign", per_exchange("kms:Sign"), "calls", 1),
        exactly("AWS calls per warm exchange: DynamoDB reads", reads, "calls", 0),
        exactly("AWS calls per warm exchange: DynamoDB writes", writes, "calls", 1),
        exactly("AWS calls per warm exchange: anything else", other, "calls", 0),
        *by_operation,
    ]


def jwt_calls_per_exchange(system: BenchSystem, exchanges: int) -> list[Figure]:
    """JWT evidence is verified offline: no STS call (docs/contract.md "JWT evidence").
    The issuer's keys are fetched once, then cached; neither that fetch nor minting the
    AWS OIF tokens goes through the proxy, which counts AWS calls only."""
    system.proxy.set_delay(0)
    figures: list[Figure] = []
    for kind, make_token in (("aws-oif", system.oif_token), ("eks", system.eks_token)):
        system.exchange(system.jwt_event(make_token()))  # warm: the issuer's keys cached
        events = [system.jwt_event(make_token()) for _ in range(exchanges)]
        system.proxy.take()
        for event in events:
            system.exchange(event)
        calls = system.proxy.take()
        sts = sum(n for op, n in calls.items() if op.startswith("sts:")) / exchanges
        figures.append(exactly(f"STS calls per warm JWT exchange ({kind})", sts, "calls", 0))
        signs = calls.get("kms:Sign", 0) / exchanges
        figures.append(exactly(f"KMS Sign per warm JWT exchange ({kind})", signs, "calls", 1))
    return figures


def _timed(run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def sequential_round_trips(p50_at_zero: float, p50_at_delay: float, profile: Profile) -> float:
    """(p50 at L - p50 at 0) / L: how many delayed calls lie on the critical path."""
    return (p50_at_delay - p50_at_zero) / (profile.delay_ms / 1000)


def round_trips(system: BenchSystem, floor: Floor, profile: Profile) -> list[Figure]:
    """(p50 at L - p50 at 0) / L: how many delayed calls lie on the critical path."""
    samples: dict[tuple[str, float], list[float]] = {}
    for delay in (0.0, profile.delay_ms):
        system.proxy.set_delay(delay)
        tokex, bare = [], []
        for _ in range(2):  # warm connections at this delay
            system.exchange(system.token_event())
            floor.sts_and_sign()
        for _ in range(profile.latency_samples):
            tokex.append(_timed(functools.partial(system.exchange, system.token_event())))
            bare.append(_timed(floor.sts_and_sign))
        samples["tokex", delay], samples["floor", delay] = tokex, bare
    system.proxy.set_delay(0)
    p50s = {key: p50(times) for key, times in samples.items()}

    def trips(side: str) -> float:
        return sequential_round_trips(p50s[side, 0.0], p50s[side, profile.delay_ms], profile)

    def difference(t0: list[float], tl: list[float], f0: list[float], fl: list[float]) -> float:
        return sequential_round_trips(p50(t0), p50(tl), profile) - sequential_round_trips(
            p50(f0), p50(fl), profile
        )

    floor_trips = trips("floor")
    label = f"L = {profile.delay_ms:g} ms"
    groups = [
        samples[side, delay] for side in ("tokex", "floor") for delay in (0.0, profile.delay_ms)
    ]
    return [
        reported("warm exchange p50, handler, L = 0", p50s["tokex", 0.0] * 1000, "ms"),
        reported(
            f"warm exchange p50, handler, {label}", p50s["tokex", profile.delay_ms] * 1000, "ms"
        ),
        reported(
            f"sequential round trips: floor (GetCallerIdentity + Sign), {label}",
            floor_trips,
            "round trips",
        ),
        within(
            f"sequential round trips: tokex warm exchange, {label}",
            trips("tokex"),
            "round trips",
            floor_trips,
            0.25,
        ),
        *interval(
            f"sequential round trips: tokex - floor, {label}", groups, difference, "round trips"
        ),
    ]


def first_exchange_round_trips(system: BenchSystem, profile: Profile) -> list[Figure]:
    """The same measure for a new environment's first exchange. Run after the figures
    of warm exchanges: each sample builds a whole exchange (clients, pools), and the
    garbage they leave would weigh on the CPU figures."""
    p50s = {}
    for delay in (0.0, profile.delay_ms):
        system.proxy.set_delay(delay)
        first = [
            _timed(system.new_environment())  # built outside the timing
            for _ in range(profile.latency_samples)
        ]
        p50s[delay] = p50(first)
    system.proxy.set_delay(0)
    gc.collect()
    label = f"L = {profile.delay_ms:g} ms"
    return [
        reported(
            f"sequential round trips: a new environment's first exchange, {label}",
            sequential_round_trips(p50s[0.0], p50s[profile.delay_ms], profile),
            "round trips",
        )
    ]


def end_to_end(system: BenchSystem, profile: Profile) -> list[Figure]:
    """A workload's view: `tokex.client` through the local front (signing included)
    against the same process calling GetCallerIdentity and Sign itself."""
    system.proxy.set_delay(profile.delay_ms)
    deployment = system.local.deployment
    endpoint = deployment.endpoint_url
    sts = boto3.client("sts", endpoint_url=endpoint, region_name=REGION, **_keys(system.workload))
    kms = deployment.client("kms")

    def tokex() -> None:
        issuer = system.local.issuer
        request_token(issuer, DEMO_AUDIENCE, session=system.workload, issuer=issuer)

    def itself() -> None:
        sts.get_caller_identity()
        kms.sign(
            KeyId=deployment.signing_key_arn,
            Message=FLOOR_MESSAGE,
            MessageType="DIGEST",
            SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256",
        )

    def interleaved() -> tuple[list[float], list[float]]:
        """(tokex's times, its own calls' times), sample by sample."""
        tokex_times, own_times = [], []
        for _ in range(2):
            tokex()
            itself()
        for _ in range(profile.end_to_end_samples):
            tokex_times.append(_timed(tokex))
            own_times.append(_timed(itself))
        return tokex_times, own_times

    def ratio_of_p50s(numerator: list[float], denominator: list[float]) -> float:
        return ratio(p50(numerator), p50(denominator))

    with_write_times, own_times = interleaved()
    with_write, own = p50(with_write_times), p50(own_times)
    # A diagnostic, never a configuration to deploy: the same exchange with nothing to
    # write (single use and the rate limit off), to show what the emulator's serving of
    # the write costs (emulator_calls).
    with system.token_function(TOKEX_SINGLE_USE="false", TOKEX_RATE_LIMIT_PER_MINUTE="0"):
        system.proxy.take()
        without_write, own_meanwhile = map(p50, interleaved())
        calls = system.proxy.take()
    written = {op: calls[op] for op in (f"dynamodb:{w}" for w in DYNAMODB_WRITES) if op in calls}
    if written:
        raise RuntimeError(f"the exchange with no admission write wrote: {written}")
    system.proxy.set_delay(0)
    label = f"L = {profile.delay_ms:g} ms"
    return [
        reported(
            f"end to end p50: tokex.client through the front, {label}", with_write * 1000, "ms"
        ),
        reported(
            f"end to end p50: GetCallerIdentity + Sign by the workload, {label}", own * 1000, "ms"
        ),
        at_most(
            f"end to end: tokex / the workload's own calls, {label}",
            ratio(with_write, own),
            "ratio",
            1.15,
        ),
        *interval(
            f"end to end: tokex / the workload's own calls, {label}",
            [with_write_times, own_times],
            ratio_of_p50s,
            "ratio",
        ),
        reported(
            "end to end, diagnostic: the same with no admission write (single use and the "
            "rate limit off)",
            ratio(without_write, own_meanwhile),
            "ratio",
        ),
    ]


def emulator_calls(system: BenchSystem, floor: Floor, profile: Profile) -> list[Figure]:
    """What the emulator takes for the two calls a warm exchange overlaps (L = 0,
    interleaved). They are served side by side (DynamoDB by the emulator's copy,
    benchmarks/split_emulator.py), as AWS's DynamoDB and KMS fleets serve them, so the
    slower of the two is on the critical path."""
    system.proxy.set_delay(0)
    sign, write = [], []
    for _ in range(2):
        floor.sign_alone()
        floor.admission_write_alone()
    for _ in range(profile.end_to_end_samples):
        sign.append(_timed(floor.sign_alone))
        write.append(_timed(floor.admission_write_alone))
    return [
        reported("emulator, L = 0: KMS Sign alone p50", p50(sign) * 1000, "ms"),
        reported(
            "emulator, L = 0: the admission write alone p50 (TransactWriteItems)",
            p50(write) * 1000,
            "ms",
        ),
    ]


def _keys(session: boto3.session.Session) -> dict[str, str | None]:
    frozen = session.get_credentials().get_frozen_credentials()
    return {
        "aws_access_key_id": frozen.access_key,
        "aws_secret_access_key": frozen.secret_key,
        "aws_session_token": frozen.token,
    }


def handler_cpu(system: BenchSystem, floor: Floor, profile: Profile) -> list[Figure]:
    """CPU time of this process (all its threads) while the handler runs; the emulator
    and the proxy are other processes. The floor: STS (a signed request forwarded by
    tokex's forwarder), Sign and one conditional write, with tokex's clients."""
    system.proxy.set_delay(0)
    tokex, bare = [], []

    def cpu(run: Callable[[], Any]) -> float:
        started = time.process_time()
        run()
        return time.process_time() - started

    for _ in range(2):
        system.exchange(system.token_event())
        floor.sts_sign_and_write(floor.signed_sts_request())
    for _ in range(profile.cpu_samples):
        event = system.token_event()
        tokex.append(cpu(functools.partial(system.exchange, event)))
        sts_request = floor.signed_sts_request()
        bare.append(cpu(functools.partial(floor.sts_sign_and_write, sts_request)))
    # process_time ticks coarsely on some kernels: the mean of many, not the median.
    mean_tokex, mean_floor = sum(tokex) / len(tokex), sum(bare) / len(bare)
    return [
        reported("handler CPU per warm exchange", mean_tokex * 1000, "ms"),
        reported(
            "CPU of the floor calls (STS, Sign, one conditional write)", mean_floor * 1000, "ms"
        ),
        at_most("handler CPU / floor CPU", ratio(mean_tokex, mean_floor), "ratio", 1.5),
    ]
