"""`tokex local`'s JWT issuers (docs/local.md "JWT evidence"): the documents the front
serves for them, the demo EKS service-account token file and its refresh, the trust only
the local exchange gives them, the env files that point the SDK at the local STS, and
the demo policies."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
import jwt
import pytest

from benchmarks.local_process import load_env_file
from tests.system.endpoints import as_the_workload, recorded_signed_requests
from tests.system.local_federation import federation, get_json, verify_issued
from tokex.adapters.policy_table import PolicyStore
from tokex.client.token_client import TokenClient
from tokex.errors import ConfigurationError
from tokex.evidence.jwt_claims import caller_from_eks_claims
from tokex.evidence.trusted_issuers import AWS_OIF, EKS
from tokex.local.eks_token import CHECK_SECONDS, REFRESH_AT, EksTokenFile
from tokex.local.provision import (
    ACCOUNT_ID,
    DEMO_CLUSTER,
    DEMO_JWT_POLICIES,
    DEMO_LAMBDA_FUNCTIONS,
    REGION,
)
from tokex.local.runner import LAMBDA_ENV_FILES, LocalSystem
from tokex.policy.model import Policy
from tokex.settings import Settings
from tokex.tokens.jwks import rfc7638_thumbprint

# --- the issuers' documents -------------------------------------------------------------


def test_both_issuers_publish_discovery_and_their_keys(local_system: LocalSystem) -> None:
    oif_url = f"{local_system.issuer}/_local/oif/{ACCOUNT_ID}"
    eks_url = f"{local_system.issuer}/_local/eks/{DEMO_CLUSTER}"
    oif = get_json(oif_url + "/.well-known/openid-configuration")
    eks = get_json(eks_url + "/.well-known/openid-configuration")
    assert (oif["issuer"], oif["jwks_uri"]) == (oif_url, oif_url + "/.well-known/jwks.json")
    assert (eks["issuer"], eks["jwks_uri"]) == (eks_url, eks_url + "/keys")  # as EKS does
    assert oif["id_token_signing_alg_values_supported"] == ["RS256", "ES384"]
    assert eks["id_token_signing_alg_values_supported"] == ["RS256"]

    oif_keys = get_json(oif["jwks_uri"])["keys"]
    assert [(k["kty"], k.get("crv"), k["alg"]) for k in oif_keys] == [
        ("RSA", None, "RS256"),
        ("EC", "P-384", "ES384"),
    ]
    eks_keys = get_json(eks["jwks_uri"])["keys"]
    assert [(k["kty"], k["alg"]) for k in eks_keys] == [("RSA", "RS256")]
    for key in oif_keys + eks_keys:
        assert key["kid"] == rfc7638_thumbprint(key)
        assert key["use"] == "sig" and "d" not in key  # public keys only
    assert len({key["kid"] for key in oif_keys + eks_keys}) == 3
    rsa = jwt.PyJWK(oif_keys[0]).key
    assert rsa.key_size == 2048


def test_the_documents_are_read_only_and_nothing_else_is_served(
    local_system: LocalSystem,
) -> None:
    url = f"{local_system.issuer}/_local/oif/{ACCOUNT_ID}/.well-known/jwks.json"
    head = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(head, timeout=10) as response:
        assert response.status == 200 and response.read() == b""
        assert response.headers["Content-Type"] == "application/json"
        assert int(response.headers["Content-Length"]) > 0
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET, HEAD"
    for path in ("/_local/oif/210987654321/.well-known/jwks.json", "/_local/eks/other/keys"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(local_system.issuer + path, timeout=10)
        assert missing.value.code == 404


# --- the EKS service-account token --------------------------------------------------------


def test_the_demo_eks_token_file_verifies_with_its_issuer(local_system: LocalSystem) -> None:
    path = local_system.state_dir / "eks-token"
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text()
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and "typ" not in header  # as Kubernetes signs them
    eks_url = federation(local_system).eks_issuer.url
    claims = verify_issued(token, eks_url, local_system.issuer, ["RS256"])
    assert claims["aud"] == [local_system.issuer]
    assert claims["sub"] == "system:serviceaccount:demo:api"
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["nbf"] == claims["iat"]
    k8s = claims["kubernetes.io"]
    assert k8s["namespace"] == "demo"
    assert k8s["serviceaccount"]["name"] == "api" and k8s["pod"]["name"] == "api-0"
    # The claims pass the exchange's own rules for the demo cluster's trusted issuer.
    trusted = Settings.from_env(local_system.handler_env()).trusted_issuers.get(eks_url)
    assert trusted is not None
    caller = caller_from_eks_claims(trusted, claims)
    assert caller.principal_arn == f"eks:{ACCOUNT_ID}:{REGION}:{DEMO_CLUSTER}:demo:api"


def test_the_token_file_is_replaced_at_80_percent_of_its_lifetime(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """As the kubelet does; each token whole (written aside, then renamed), same pod."""
    issuer = federation(local_system).eks_issuer
    path = tmp_path / "eks-token"
    lifetime = 3
    started = time.monotonic()
    token_file = EksTokenFile(path, issuer, audience=local_system.issuer, lifetime_seconds=lifetime)
    try:
        first = path.read_text()
        time.sleep(lifetime * REFRESH_AT / 2)
        assert path.read_text() == first  # not before its time
        deadline = time.monotonic() + 30
        while (second := path.read_text()) == first:
            assert time.monotonic() < deadline, "the token was not refreshed"
            time.sleep(0.05)
        assert time.monotonic() - started >= lifetime * REFRESH_AT - 0.1
    finally:
        token_file.stop()
    claims = [
        # Checked after the fact: the first has expired by now, whatever the load.
        verify_issued(token, issuer.url, local_system.issuer, ["RS256"], leeway=60)
        for token in (first, second)
    ]
    assert claims[0]["jti"] != claims[1]["jti"]
    assert claims[0]["kubernetes.io"] == claims[1]["kubernetes.io"]
    assert claims[1]["exp"] - claims[1]["iat"] == lifetime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eks-token"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_after_a_sleep_the_token_is_replaced_by_the_wall_clock(
    local_system: LocalSystem, tmp_path: Path
) -> None:
    """A laptop asleep for over an hour: the monotonic clock, which a timer waits on, did
    not count the sleep, and the file held an expired token for up to 48 more minutes."""

    class WallClock:
        now = 1_900_000_000.0

        def __call__(self) -> float:
            return self.now

    clock = WallClock()
    issuer = federation(local_system).eks_issuer
    path = tmp_path / "eks-token"
    token_file = EksTokenFile(path, issuer, audience=local_system.issuer, clock=clock)
    try:
        first = path.read_text()
        clock.now += 0.8 * 3600 - 1  # awake or asleep, not yet its time
        assert not token_file.refresh_if_due() and path.read_text() == first
        clock.now += 2 * 3600  # the lid was closed: the wall clock counted it
        assert token_file.refresh_if_due()
        second = path.read_text()
    finally:
        token_file.stop()
    claims = jwt.decode(second, options={"verify_signature": False})
    assert claims["iat"] == int(clock.now) and claims["exp"] == int(clock.now) + 3600


def test_a_refresh_that_cannot_write_waits_before_trying_again(
    local_system: LocalSystem, tmp_path: Path, capsys
) -> None:
    """It tried, and said so on the console, twenty times a second."""
    clock = type("Clock", (), {"now": 1_900_000_000.0, "__call__": lambda self: self.now})()
    issuer = federation(local_system).eks_issuer
    directory = tmp_path / "state"
    directory.mkdir()
    token_file = EksTokenFile(directory / "eks-token", issuer, audience="x", clock=clock)
    try:
        (directory / "eks-token").unlink()
        directory.rmdir()  # the state directory went away
        clock.now += 3600
        capsys.readouterr()
        assert not token_file.refresh_if_due()
        assert not token_file.refresh_if_due()  # not due again yet: no second attempt
        assert capsys.readouterr().out.count("cannot refresh") == 1
        clock.now += CHECK_SECONDS
        assert not token_file.refresh_if_due()
        assert capsys.readouterr().out.count("cannot refresh") == 1
    finally:
        token_file.stop()


# --- trusted by the local exchange only -------------------------------------------------


def test_the_local_exchange_trusts_both_issuers_bound_to_the_demo_account(
    local_system: LocalSystem,
) -> None:
    settings = Settings.from_env(local_system.handler_env())
    assert settings.is_local
    bound = {
        (t.kind, t.issuer, t.account, t.region, t.cluster) for t in settings.trusted_issuers.issuers
    }
    assert bound == {
        (AWS_OIF, federation(local_system).oif_issuer.url, ACCOUNT_ID, None, None),
        (EKS, federation(local_system).eks_issuer.url, ACCOUNT_ID, REGION, DEMO_CLUSTER),
    }


def test_a_deployed_tokex_refuses_the_local_issuers(local_system: LocalSystem) -> None:
    """As it refuses the local instance certificate: an https issuer trusts no http one."""
    env = local_system.handler_env(TOKEX_ISSUER="https://tokex.example.com")
    for local_only in ("TOKEX_STS_CONNECT_OVERRIDE", "TOKEX_LOCAL_INSTANCE_CERTIFICATE"):
        del env[local_only]
    with pytest.raises(ConfigurationError, match="plain-http issuers are for local mode only"):
        Settings.from_env(env)
    del env["TOKEX_TRUSTED_ISSUERS"]
    assert not Settings.from_env(env).trusted_issuers  # the same settings without them


# --- the env files ----------------------------------------------------------------------


def test_every_session_env_file_points_the_sdk_at_the_local_sts(local_system: LocalSystem) -> None:
    state = local_system.state_dir
    sts_url = federation(local_system).sts_url
    for name in ("workload.env", "user.env", *LAMBDA_ENV_FILES.values()):
        env = load_env_file(state / name)
        assert env["AWS_ENDPOINT_URL_STS"] == sts_url, name
        assert (state / name).stat().st_mode & 0o077 == 0, name
    assert "AWS_ENDPOINT_URL_STS" not in load_env_file(state / "operator.env")
    for function in DEMO_LAMBDA_FUNCTIONS:
        env = load_env_file(local_system.lambda_envs[function])
        assert env["AWS_ACCESS_KEY_ID"] == local_system.deployment.lambdas[function].access_key_id
    assert sorted(p.name for p in local_system.lambda_envs.values()) == [
        "lambda-a.env",
        "lambda-b.env",
    ]


def test_with_workload_env_the_sigv4_evidence_still_names_the_public_sts_host(
    local_system: LocalSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SDK client follows AWS_ENDPOINT_URL_STS; the signed GetCallerIdentity that
    tokex sends as evidence is still signed for STS's own host, and is accepted."""
    as_the_workload(local_system, monkeypatch)
    assert boto3.client("sts").meta.endpoint_url == federation(local_system).sts_url

    sent = recorded_signed_requests(monkeypatch)
    assert TokenClient(local_system.issuer).token("demo-api", ["demo:read"])
    assert [request["url"] for request in sent] == ["https://sts.us-east-1.amazonaws.com/"]


# --- the demo policies ----------------------------------------------------------------


def test_the_jwt_evidence_demo_policies_are_stored(local_system: LocalSystem) -> None:
    deployment = local_system.deployment
    store = PolicyStore(deployment.client("dynamodb"), deployment.policy_table)
    for document in DEMO_JWT_POLICIES:
        stored = store.get(str(document["id"]))
        assert stored == Policy.from_document(document)
