"""The SDK's FIPS setting (AWS_USE_FIPS_ENDPOINT, the profile's `use_fips_endpoint`) is
honoured by the SigV4 evidence as botocore honours it for the aws-oif evidence: the
request is signed for the Region's FIPS STS endpoint of tokex's own table, and a Region
without one is a client-side error, never a request silently signed for a non-FIPS one.

Each signed request is checked by tokex's own verifier, with the STS host table a
deployment has by default (FIPS endpoints accepted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.support.cli import tokex
from tests.support.fake_issuer import FakeIssuer, fake_issuer, use_static_credentials
from tests.unit.test_client_failover import deployment_running
from tokex import base64url
from tokex.client import TokenClient, TokenError, request_token, signing
from tokex.client.token_client import LAST_GOOD_DISCOVERIES
from tokex.evidence.sigv4_request import verify_sts_request
from tokex.evidence.sts_endpoints import StsEndpoints

DEFAULT_HOSTS = StsEndpoints(["aws", "aws-cn", "aws-us-gov"])  # TOKEX_STS_ALLOW_FIPS on


@pytest.fixture
def issuer(monkeypatch) -> Iterator[FakeIssuer]:
    use_static_credentials(monkeypatch)  # AWS_REGION=us-east-1, no config file
    with fake_issuer() as running:
        yield running


def signed(form: dict[str, list[str]]) -> dict[str, Any]:
    return json.loads(base64url.decode(form["subject_token"][0]))


def assert_accepted(request: dict[str, Any], issuer: str, *, host: str, region: str) -> None:
    """Signed for `host` with the credential scope of `region`, as tokex verifies it."""
    assert request["url"] == f"https://{host}/"
    assert f"/{region}/sts/aws4_request, " in request["headers"]["Authorization"]
    verified = verify_sts_request(
        request, issuer=issuer, endpoints=DEFAULT_HOSTS, now=datetime.now(UTC), audience="a"
    )
    assert (verified.host, verified.region) == (host, region)


def fips_profile(tmp_path: Path, monkeypatch, value: str = "true") -> None:
    config = tmp_path / "config"
    config.write_text(f"[default]\nuse_fips_endpoint = {value}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))


def test_aws_use_fips_endpoint_signs_for_the_fips_host(issuer, monkeypatch) -> None:
    """The reviewer's case: AWS_USE_FIPS_ENDPOINT=true, AWS_REGION=us-east-1 was signed for
    https://sts.us-east-1.amazonaws.com/ (non-FIPS), silently."""
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    request_token(issuer.url, "a")
    [form] = issuer.forms
    assert_accepted(
        signed(form), issuer.url, host="sts-fips.us-east-1.amazonaws.com", region="us-east-1"
    )


def test_the_profiles_use_fips_endpoint_signs_for_the_fips_host(
    issuer, monkeypatch, tmp_path
) -> None:
    fips_profile(tmp_path, monkeypatch)
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    TokenClient(issuer.url).token("a")
    [form] = issuer.forms
    assert_accepted(
        signed(form), issuer.url, host="sts-fips.us-west-2.amazonaws.com", region="us-west-2"
    )


def test_the_environment_wins_over_the_profile_as_in_botocore(
    issuer, monkeypatch, tmp_path
) -> None:
    fips_profile(tmp_path, monkeypatch)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "false")
    request_token(issuer.url, "a")
    [form] = issuer.forms
    assert signed(form)["url"] == "https://sts.us-east-1.amazonaws.com/"


def test_a_session_given_is_the_one_read(issuer, monkeypatch, tmp_path) -> None:
    """`session=`: its profile's setting, as its clients would read it."""
    config = tmp_path / "config"
    config.write_text(
        "[profile fips]\nuse_fips_endpoint = true\nregion = ca-central-1\n"
        "aws_access_key_id = AKIAEXAMPLEPROFILE01\naws_secret_access_key = not-real\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_REGION")
    session = boto3.session.Session(profile_name="fips")
    request_token(issuer.url, "a", session=session)
    request_token(issuer.url, "a", session=boto3.session.Session())
    fips, plain = (signed(form)["url"] for form in issuer.forms)
    assert (fips, plain) == (
        "https://sts-fips.ca-central-1.amazonaws.com/",
        "https://sts.us-east-1.amazonaws.com/",
    )


@pytest.mark.parametrize("region", ["us-gov-west-1", "us-gov-east-1"])
def test_in_govcloud_the_regional_endpoint_is_the_fips_one(issuer, monkeypatch, region) -> None:
    """As botocore resolves FIPS there (sts.<region>.amazonaws.com), and as a deployment
    accepts it whether or not its FIPS hosts are turned on."""
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_REGION", region)
    request_token(issuer.url, "a")
    [form] = issuer.forms
    host = f"sts.{region}.amazonaws.com"
    assert_accepted(signed(form), issuer.url, host=host, region=region)
    assert StsEndpoints(["aws-us-gov"], allow_fips=False).lookup(host) is not None
    assert boto3.client("sts", region_name=region).meta.endpoint_url == f"https://{host}"


@pytest.mark.parametrize("region", ["eu-west-1", "cn-north-1", "ap-southeast-5"])
def test_a_region_without_a_fips_endpoint_is_refused_before_anything_is_sent(
    issuer, monkeypatch, region
) -> None:
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_REGION", region)
    with pytest.raises(TokenError) as refused:
        request_token(issuer.url, "a")
    assert refused.value.error == "aws_error"
    said = str(refused.value)
    assert f"Region {region} has no FIPS STS endpoint" in said
    assert "AWS_USE_FIPS_ENDPOINT" in said and "use_fips_endpoint" in said
    assert issuer.forms == []


def test_the_cli_signs_for_the_fips_host_and_names_a_region_without_one(
    issuer, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    code, out, _ = tokex(capsys, "token", "--endpoint", issuer.url, "--audience", "a")
    assert code == 0 and out.strip() == "token-1"
    [form] = issuer.forms
    assert signed(form)["url"] == "https://sts-fips.us-east-1.amazonaws.com/"
    argv = ("token", "--endpoint", issuer.url, "--audience", "a", "--region", "eu-west-1")
    code, out, _ = tokex(capsys, *argv, "--json")
    answer = json.loads(out)
    assert (code, answer["error"]) == (1, "aws_error")
    assert "Region eu-west-1 has no FIPS STS endpoint" in answer["error_description"]
    assert len(issuer.forms) == 1


def test_without_the_setting_nothing_changes(issuer, monkeypatch, tmp_path) -> None:
    fips_profile(tmp_path, monkeypatch, "false")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    request_token(issuer.url, "a")
    [form] = issuer.forms
    assert signed(form)["url"] == "https://sts.eu-west-1.amazonaws.com/"
    assert signing.use_fips_endpoint(boto3.session.Session()) is False


def test_no_region_with_fips_signs_for_us_east_1s_fips_endpoint() -> None:
    """The global endpoint has no FIPS variant (botocore's `sts-fips.aws-global` does not
    exist); it is us-east-1's STS, whose FIPS endpoint is signed for."""
    assert signing.sts_endpoint(None) == ("sts.amazonaws.com", "us-east-1")
    assert signing.sts_endpoint(None, fips=True) == (
        "sts-fips.us-east-1.amazonaws.com",
        "us-east-1",
    )
    request = signing.signed_get_caller_identity(
        boto3.session.Session(aws_access_key_id="AKIAEXAMPLEWORKLOAD1", aws_secret_access_key="x")
        .get_credentials()
        .get_frozen_credentials(),
        region="",
        issuer="https://auth.example.com",
        audience="a",
        fips=True,
    )
    assert_accepted(
        request,
        "https://auth.example.com",
        host="sts-fips.us-east-1.amazonaws.com",
        region="us-east-1",
    )


# --- a multi-Region deployment ----------------------------------------------------------


@pytest.fixture
def regional(monkeypatch) -> Iterator[Any]:
    use_static_credentials(monkeypatch)
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    LAST_GOOD_DISCOVERIES.clear()
    with deployment_running() as deployment:
        yield deployment
    LAST_GOOD_DISCOVERIES.clear()


def test_only_regions_with_a_fips_endpoint_are_asked(regional) -> None:
    """Each Regional exchange accepts its own Region's STS only: a Region with no FIPS
    endpoint cannot take FIPS evidence, and is not asked (nor does it mask the failure
    of one that can)."""
    regional.order = ["us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"]
    regional.modes = {"us-east-1": 503}
    response = request_token(regional.url, "orders-api", region="eu-west-1")
    assert response["access_token"] == "us-west-2-token-1"
    assert regional.contacts == ["us-east-1", "us-west-2"]
    for region in regional.contacts:
        [form] = regional.forms[region]
        request = json.loads(base64url.decode(form["subject_token"]))
        assert request["url"] == f"https://sts-fips.{region}.amazonaws.com/"


def test_with_no_listed_region_having_one_the_first_is_refused(regional) -> None:
    regional.order = ["eu-west-1", "ap-southeast-2"]
    with pytest.raises(TokenError, match="Region eu-west-1 has no FIPS STS endpoint"):
        request_token(regional.url, "orders-api")
    assert regional.contacts == []
