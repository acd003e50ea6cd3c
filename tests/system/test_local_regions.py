"""`tokex local --regions us-east-1,eu-west-1` (docs/local.md "Several Regions"): one
emulator, per Region its own tables, KMS replica of the multi-Region signing key and
functions behind `/regions/<region>/...`, one JWKS, and the tables replicated between
the Regions after a delay (paused where a test must prove a rule, not a shared table)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
from botocore.exceptions import ClientError

from benchmarks.local_process import load_env_file
from tests.system.conftest import as_operator, serving
from tests.system.endpoints import Answer, assert_refused, exchange, get, post, sign, verify
from tokex.adapters.policy_table import PolicyStore
from tokex.adapters.state_table.schema import USED_EVIDENCE_PREFIX, used_evidence_key
from tokex.cli.main import main
from tokex.client import TokenClient, TokenError
from tokex.client.signing import encode_subject_token
from tokex.introspection_clients import basic_authorization
from tokex.local.provision import ACCOUNT_ID, DEMO_USER_NAME
from tokex.local.runner import LocalSystem, function_env
from tokex.policy.model import Policy
from tokex.regions import INTROSPECT_PATH, TOKEN_PATH, regional_path
from tokex.settings import Settings
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

HOME, OTHER = REGIONS = ("us-east-1", "eu-west-1")
CLIENT_LOGGER = "tokex.client.token_client"  # its failover warnings
USER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"
NOT_THIS_REGION = (
    f"the request is signed for the STS of {HOME}, which this endpoint does not accept: "
    f"sign for {OTHER}"
)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    """Started as the `local_system` fixture starts one Region, with the Regions and the
    replication delay (1 s) that `tokex local --regions us-east-1,eu-west-1` uses."""
    with serving(tmp_path_factory.mktemp("tokex-regions"), regions=REGIONS) as system:
        yield system


@contextlib.contextmanager
def replication_paused(system: LocalSystem) -> Iterator[None]:
    system.replication.pause()
    try:
        yield
    finally:
        system.replication.resume()


Operator = Callable[..., tuple[int, str, str]]


@pytest.fixture
def operator(
    system: LocalSystem, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> Operator:
    """`tokex ...` in process with operator.env's identity, against the home Region's
    tables, as an operator runs `tokex policy put` or `tokex revoke`: (exit, out, err)."""
    deployment = system.deployment
    as_operator(deployment, monkeypatch)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # the in-process handlers' log lines, not the CLI's output
        where = ["--region", HOME, "--endpoint-url", deployment.endpoint_url]
        code = main([*argv, *where])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run


def exchange_in(
    system: LocalSystem,
    region: str,
    *,
    signed: dict[str, Any] | None = None,
    credentials: Any = None,
    audience: str = "demo-api",
) -> Answer:
    """POST /regions/<region>/token with a GetCallerIdentity signed for that Region's STS
    (or `signed`)."""
    if signed is None:
        signed = sign(system, credentials=credentials, region=region)
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(signed),
        "audience": audience,
    }
    url = system.issuer + regional_path(region, TOKEN_PATH)
    return post(url, urllib.parse.urlencode(form).encode())


def token_in(system: LocalSystem, region: str, **kwargs: Any) -> str:
    status, _, body = exchange_in(system, region, **kwargs)
    assert status == 200, body
    return str(body["access_token"])


def introspect_in(system: LocalSystem, region: str, token: str) -> Answer:
    """POST /regions/<region>/introspect as the demo introspection client."""
    request = urllib.request.Request(
        system.issuer + regional_path(region, INTROSPECT_PATH),
        data=urllib.parse.urlencode({"token": token}).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": basic_authorization(*system.introspection_client),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def active_in(system: LocalSystem, region: str, token: str) -> bool:
    status, _, body = introspect_in(system, region, token)
    assert status == 200, body
    return bool(body["active"])


def items(system: LocalSystem, region: str, table: str) -> dict[str, dict[str, Any]]:
    dynamodb = system.deployment.in_region(region).client("dynamodb")
    found = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["id"]["S"]: item for item in found}


def test_a_policy_put_in_the_home_region_reaches_the_other_by_replication(
    system: LocalSystem, operator: Operator, tmp_path: Path
) -> None:
    document = {
        "id": "regions-demo",
        "effect": "allow",
        "principals": [USER_ARN],
        "audiences": ["regions-api"],
        "scopes": ["regions:read"],
    }
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(document))
    table = system.deployment.policy_table
    with replication_paused(system):
        assert operator("policy", "put", str(path), "--table", table)[0] == 0
        assert "regions-demo" in items(system, HOME, table)
        assert "regions-demo" not in items(system, OTHER, table)  # not yet replicated
        assert system.replication.flush() >= 1
    assert "regions-demo" in items(system, OTHER, table)
    # eu-west-1's exchange reads it on its next policy load: at once when its copy is
    # cold, within the policy cache's lifetime when an earlier test warmed it (waited for
    # generously: a busy machine must not fail it).
    deadline = time.monotonic() + Settings.policy_cache_seconds + 30
    while True:
        status, _, body = exchange_in(
            system, OTHER, credentials=system.deployment.user, audience="regions-api"
        )
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, body
    assert verify(system, body["access_token"], audience="regions-api")["sub"] == USER_ARN
    # A delete replicates too, as in a global table.
    assert operator("policy", "delete", "regions-demo", "--table", table)[0] == 0
    system.replication.flush()
    assert "regions-demo" not in items(system, OTHER, table)


def test_one_jwks_verifies_the_tokens_of_every_region(system: LocalSystem) -> None:
    status, _, discovery = get(system.issuer + "/.well-known/openid-configuration")
    assert status == 200
    assert discovery["token_endpoint"] == system.issuer + "/token"  # the home Region's
    assert discovery["tokex_regions"] == [
        {
            "region": region,
            "token_endpoint": f"{system.issuer}/regions/{region}/token",
            "introspection_endpoint": f"{system.issuer}/regions/{region}/introspect",
        }
        for region in REGIONS
    ]
    tokens = {region: token_in(system, region) for region in REGIONS}
    tokens["home /token"] = token_in_home(system)
    kids = {jwt.get_unverified_header(token)["kid"] for token in tokens.values()}
    assert len(kids) == 1  # one multi-Region key: one kid, published once
    _, _, jwks = get(system.issuer + "/.well-known/jwks.json")
    assert [key["kid"] for key in jwks["keys"]].count(kids.pop()) == 1
    for token in tokens.values():
        assert verify(system, token)["sub"].endswith(":role/demo-workload")


def token_in_home(system: LocalSystem) -> str:
    """Through `/token`, as the env files' TOKEX_ENDPOINT does: the home Region's."""
    status, _, body = exchange(system, signed=sign(system, region=HOME))
    assert status == 200, body
    return str(body["access_token"])


def test_each_region_signs_with_its_own_replica_of_the_key(system: LocalSystem) -> None:
    home_arn = system.deployment.signing_key_arn
    other = system.deployment.in_region(OTHER)
    env = function_env(system.deployment, system.issuer, system.imds, OTHER)
    assert env["TOKEX_SIGNING_KEY_ID"] == other.signing_key_arn
    assert other.signing_key_arn == home_arn.replace(f":{HOME}:", f":{OTHER}:")
    assert env["TOKEX_SERVING_REGION"] == OTHER and env["AWS_REGION"] == OTHER
    # As in AWS, a Region's KMS does not know another Region's key ARN: eu-west-1's
    # exchange, which issues, can only be signing with eu-west-1's replica.
    with pytest.raises(ClientError, match="NotFoundException"):
        other.client("kms").get_public_key(KeyId=home_arn)
    home_key = system.deployment.client("kms").get_public_key(KeyId=home_arn)
    replica = other.client("kms").get_public_key(KeyId=other.signing_key_arn)
    assert replica["PublicKey"] == home_key["PublicKey"]


def test_a_signed_request_is_used_in_its_own_region_only(system: LocalSystem) -> None:
    state = system.deployment.state_table
    with replication_paused(system):
        signed = sign(system, region=HOME)
        before = set(items(system, HOME, state))
        status, _, body = exchange_in(system, HOME, signed=signed)
        assert status == 200, body
        records = {
            k
            for k in set(items(system, HOME, state)) - before
            if k.startswith(USED_EVIDENCE_PREFIX)
        }
        assert len(records) == 1
        assert not records & set(items(system, OTHER, state))  # eu-west-1 has not heard of it
        # ...and refuses it all the same: it was not signed for eu-west-1's STS.
        assert_refused(
            lambda: exchange_in(system, OTHER, signed=signed), 400, "invalid_grant", NOT_THIS_REGION
        )
        # A request signed for us-east-1 and never used is refused there just the same.
        unused = sign(system, region=HOME)
        assert_refused(
            lambda: exchange_in(system, OTHER, signed=unused), 400, "invalid_grant", NOT_THIS_REGION
        )


def test_a_revocation_in_the_home_region_reaches_the_other(
    system: LocalSystem, operator: Operator
) -> None:
    token = token_in(system, OTHER)
    assert active_in(system, OTHER, token) and active_in(system, HOME, token)
    jti = verify(system, token)["jti"]
    with replication_paused(system):
        code, _, _ = operator("revoke", "--jti", jti, "--table", system.deployment.state_table)
        assert code == 0
        assert not active_in(system, HOME, token)
        assert active_in(system, OTHER, token)  # the record has not reached eu-west-1 yet
        system.replication.flush()
    assert not active_in(system, OTHER, token)


def test_an_update_in_the_home_region_is_not_undone_by_the_older_copy(
    system: LocalSystem,
) -> None:
    """The home Region's newer write wins, though the other Region's copy is older than
    the replication delay (the last writer wins, as in a global table)."""
    home = system.deployment
    table = home.policy_table
    store = PolicyStore(home.client("dynamodb"), table)
    document = {
        "id": "regions-update",
        "effect": "allow",
        "principals": [USER_ARN],
        "audiences": ["regions-update-api"],
        "scopes": ["v1"],
    }
    store.put(Policy.from_document(document))
    system.replication.flush()
    delay = system.replication[table].delay
    time.sleep(delay + 1)  # the other Region's copy is now older than the delay
    store.put(Policy.from_document({**document, "scopes": ["v2"]}))

    def stored(region: str) -> str:
        return str(items(system, region, table)["regions-update"]["document"]["S"])

    deadline = time.monotonic() + 10 * delay + 10  # generous: a busy machine replicates late
    while '"v2"' not in stored(OTHER) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert '"v2"' in stored(OTHER)
    assert '"v2"' in stored(HOME)


def test_a_stopped_region_answers_503_until_started(system: LocalSystem) -> None:
    paths = [regional_path(OTHER, TOKEN_PATH), regional_path(OTHER, INTROSPECT_PATH)]
    system.stop_region(OTHER)
    try:
        for path in paths:
            status, headers, body = post(system.issuer + path, b"")
            assert (status, body["error"]) == (503, "temporarily_unavailable"), body
            assert headers["Retry-After"] == "5"
            assert headers["Cache-Control"] == "no-store"
        assert token_in(system, HOME)  # the other Region still serves
    finally:
        system.start_region(OTHER)
    assert token_in(system, OTHER)

    system.stop_region(HOME)
    try:
        for path in (TOKEN_PATH, INTROSPECT_PATH, regional_path(HOME, TOKEN_PATH)):
            status, headers, _ = post(system.issuer + path, b"")
            assert (status, headers["Retry-After"]) == (503, "5")
        assert token_in(system, OTHER)
    finally:
        system.start_region(HOME)
    assert token_in_home(system)


def test_a_region_that_is_not_served_is_no_endpoint(system: LocalSystem) -> None:
    status, _, body = post(system.issuer + regional_path("ap-south-1", TOKEN_PATH), b"")
    assert (status, body["error"]) == (404, "invalid_request")
    with pytest.raises(ValueError, match="not one of this system's Regions"):
        system.stop_region("ap-south-1")


def test_parallel_exchanges_in_both_regions_are_each_served_by_their_own_region(
    system: LocalSystem,
) -> None:
    """12 exchanges released at once, 6 per Region: each is answered, and each was served
    by the Region it was sent to, which its tokens alone do not show (one key, one
    issuer): its signed request's single-use record is in that Region's state table and
    not the other's. Replication is paused, so a record is only where it was written."""
    regions = [region for region in REGIONS for _ in range(6)]
    signed = [sign(system, region=region) for region in regions]
    release = threading.Barrier(len(regions), timeout=60)

    def send(i: int) -> Answer:
        release.wait()
        return exchange_in(system, regions[i], signed=signed[i])

    with replication_paused(system):
        with ThreadPoolExecutor(max_workers=len(regions)) as pool:
            answers = list(pool.map(send, range(len(regions))))
        records = {region: signature_records(system, region) for region in REGIONS}
    assert [status for status, _, _ in answers] == [200] * len(regions), answers
    jtis = {verify(system, body["access_token"])["jti"] for _, _, body in answers}
    assert len(jtis) == len(regions)
    served_by = [
        [region for region in REGIONS if single_use_record(request) in records[region]]
        for request in signed
    ]
    assert served_by == [[region] for region in regions]


def single_use_record(signed: dict[str, Any]) -> str:
    """The state table key single use writes for a signed request: `sig#` and the SHA-256
    of its signature (docs/security.md "Single use and the rate limit")."""
    signature = signed["headers"]["Authorization"].rsplit("Signature=", 1)[1]
    return used_evidence_key(hashlib.sha256(signature.encode("ascii")).hexdigest())


def test_parallel_introspections_in_both_regions_each_get_their_own_tokens_claims(
    system: LocalSystem,
) -> None:
    """Each Region's introspection (its own published keys and client store) under a
    crowd of different tokens: every answer is active and names its own token's jti."""
    tokens = [token_in(system, region) for region in REGIONS for _ in range(3)]
    jobs = [(region, token) for region in REGIONS for token in tokens]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: introspect_in(system, *job), jobs))
    assert [status for status, _, _ in answers] == [200] * len(jobs), answers
    assert [body.get("active") for _, _, body in answers] == [True] * len(jobs)
    expected = [verify(system, token)["jti"] for _, token in jobs]
    assert [body["jti"] for _, _, body in answers] == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--regions", "us-east-1,mars-1"], "'mars-1' is not a Region name"),
        (["--regions", "us-east-1,,eu-west-1"], "'' is not a Region name"),
        (["--regions", "us-east-1,us-east-1"], "a Region is listed twice"),
        (["--regions", "us-east-1,eu-west-1", "--replication-delay", "-1"], "use 0-3600"),
        (["--replication-delay", "2"], "needs two or more --regions"),
    ],
)
def test_a_wrong_regions_option_is_a_usage_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    code = main(["local", "--port", "0", "--state-dir", str(state_dir), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and ("--regions" in err or "--replication-delay" in err)
    assert not state_dir.exists()  # refused before anything was started or written


# --- client failover, end to end (docs/multi-region.md "Clients and failover") ----------


def signature_records(system: LocalSystem, region: str) -> set[str]:
    dynamodb = system.deployment.in_region(region).client("dynamodb")
    items = dynamodb.scan(TableName="tokex-state", ConsistentRead=True)["Items"]
    return {item["id"]["S"] for item in items if item["id"]["S"].startswith(USED_EVIDENCE_PREFIX)}


@pytest.fixture
def workload_env(system: LocalSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workload's environment as workload.env gives it (its Region: home)."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "TOKEX_"))]:
        monkeypatch.delenv(name)
    for name, value in load_env_file(system.workload_env).items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("workload_env")
def test_a_client_fails_over_to_the_next_region_when_its_own_stops(
    system: LocalSystem, caplog: pytest.LogCaptureFixture
) -> None:
    """TokenClient reads the Regions from discovery, tries its own Region first, signs for
    each Region's STS, and moves on when a Region answers 503: one token, from home,
    verified against the one JWKS. Replication is paused, so each Region's single-use
    records show which Region served each exchange; the client's failover warning shows
    why it moved on."""
    with replication_paused(system):
        before = {region: signature_records(system, region) for region in REGIONS}
        # Up: the client's own Region (eu-west-1) serves it.
        token = TokenClient(system.issuer, region=OTHER, timeout=10).token("demo-api")
        assert verify(system, token)["aud"] == "demo-api"
        served = {r: signature_records(system, r) - before[r] for r in REGIONS}
        assert (len(served[OTHER]), len(served[HOME])) == (1, 0)

        system.stop_region(OTHER)
        try:
            client = TokenClient(system.issuer, region=OTHER, timeout=10)
            with caplog.at_level(logging.WARNING, logger=CLIENT_LOGGER):
                token = client.token("demo-api")
            claims = verify(system, token)
            # The same cache: the next call does not exchange again.
            assert client.token("demo-api") == token
        finally:
            system.start_region(OTHER)
        after = {r: signature_records(system, r) - before[r] - served[r] for r in REGIONS}
        # eu-west-1 answered 503 without using its request; home issued the token.
        assert (len(after[OTHER]), len(after[HOME])) == (0, 1)
        assert claims["iss"] == system.issuer
        # It moved on for eu-west-1's 503, not for eu-west-1's share of the timeout running
        # out ("timed out"). The whole call was within the client's own timeout: the client
        # bounds it, and gives no token once it has run out.
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        [failover] = [r.getMessage() for r in warnings if r.name == CLIENT_LOGGER]
        assert failover.startswith(f"Region {OTHER} failed: temporarily_unavailable: ")
        assert failover.endswith(f"; trying {HOME}")


@pytest.mark.usefixtures("workload_env")
def test_every_region_stopped_is_one_clear_error_naming_them(system: LocalSystem) -> None:
    for region in REGIONS:
        system.stop_region(region)
    try:
        with pytest.raises(TokenError) as refused:
            TokenClient(system.issuer, region=OTHER, timeout=5).token("demo-api")
    finally:
        for region in REGIONS:
            system.start_region(region)
    assert refused.value.status == 503
    assert f"tried {OTHER}, {HOME}" in str(refused.value)


@pytest.mark.usefixtures("workload_env")
def test_the_cli_fails_over_too(system: LocalSystem, capsys: pytest.CaptureFixture) -> None:
    system.stop_region(HOME)
    try:
        capsys.readouterr()
        code = main(["token", "--endpoint", system.issuer, "--audience", "demo-api",
                     "--region", HOME, "--timeout", "10"])  # fmt: skip
        out, err = capsys.readouterr()
    finally:
        system.start_region(HOME)
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    assert verify(system, token)["iss"] == system.issuer


def test_local_helps_default_replication_delay_is_the_runners() -> None:
    """`tokex local --help` names the default without loading the runner."""
    from tokex.cli import local as local_command
    from tokex.local import runner

    assert local_command.DEFAULT_REPLICATION_DELAY == runner.DEFAULT_REPLICATION_DELAY_SECONDS
