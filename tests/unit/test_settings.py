"""Settings parsed once from the environment; local-mode trust never in a deployment."""

from __future__ import annotations

import json

import pytest

from tokex.errors import ConfigurationError
from tokex.settings import Settings

LOCAL = {
    "TOKEX_ISSUER": "http://127.0.0.1:8787",
    "TOKEX_STS_CONNECT_OVERRIDE": "http://127.0.0.1:5000",
}


def test_defaults() -> None:
    settings = Settings.from_env({"TOKEX_ISSUER": "https://auth.example.com"})
    assert settings.token_endpoint == "https://auth.example.com/token"
    assert (settings.default_ttl_seconds, settings.ttl_cap_seconds) == (900, 3600)
    assert settings.single_use and settings.rate_limit_per_minute == 60
    assert settings.deadline_seconds == 6.0  # below the functions' 10 s timeout
    assert not settings.is_local


@pytest.mark.parametrize(("raw", "seconds"), [("1.5", 1.5), ("9", 9.0), ("0.5", 0.5)])
def test_deadline_seconds(raw: str, seconds: float) -> None:
    env = {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEADLINE_SECONDS": raw}
    assert Settings.from_env(env).deadline_seconds == seconds


def test_local_mode() -> None:
    settings = Settings.from_env({**LOCAL, "TOKEX_LOCAL_INSTANCE_CERTIFICATE": "/x.pem"})
    assert settings.is_local


@pytest.mark.parametrize(
    "env",
    [
        {"TOKEX_ISSUER": ""},
        {"TOKEX_ISSUER": "http://auth.example.com"},  # plain http off loopback
        {"TOKEX_ISSUER": "https://auth.example.com/"},  # trailing slash
        {"TOKEX_ISSUER": "http://127.0.0.1:8787"},  # http without local mode
        # the STS override with a deployed (https) issuer
        {
            "TOKEX_ISSUER": "https://auth.example.com",
            "TOKEX_STS_CONNECT_OVERRIDE": "http://127.0.0.1:9001",
        },
        {**LOCAL, "TOKEX_STS_CONNECT_OVERRIDE": "http://10.0.0.1:5000"},  # off this machine
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_LOCAL_INSTANCE_CERTIFICATE": "/x.pem"},
        {**LOCAL, "AWS_LAMBDA_FUNCTION_NAME": "tokex-exchange"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_TTL_CAP_SECONDS": "99999"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEFAULT_TTL_SECONDS": "7200"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_POLICY_CACHE_SECONDS": "61"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_STS_PARTITIONS": "aws-iso"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_RATE_LIMIT_PER_MINUTE": "-1"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEADLINE_SECONDS": "10"},  # ≥ Lambda's
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEADLINE_SECONDS": "0.1"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEADLINE_SECONDS": "1e3"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_DEADLINE_SECONDS": "nan"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_INSTANCE_TAGS_ROLE_NAME": "no way"},
        {"TOKEX_ISSUER": "https://a.example", "TOKEX_INSTANCE_TAGS_ROLE_NAME": "a" * 65},
    ],
)
def test_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env(env)


ISSUER_URLS = [
    "https://auth.example.com",
    "https://auth.example.com:8443/tenant",
    "https://:pw@auth.example.com",  # credentials, even with no user name
    "https://user@auth.example.com",
    "https://[::1",  # an unclosed IPv6 bracket: urlsplit raises ValueError
    "https://auth.example.com/",
    "https://auth.example.com?x=1",
    "https://auth.example.com#f",
    "https://auth.example.com/a b",
    "https://auth.exämple.com",
    "https://" + "a" * 600 + ".example",
    "https:///no-host",
    "http://auth.example.com",
]


@pytest.mark.parametrize("url", ISSUER_URLS)
def test_tokex_and_a_trusted_issuer_are_held_to_one_issuer_rule(url: str) -> None:
    """TOKEX_ISSUER and each trusted issuer are issuer identifiers alike: one rule
    (tokex/issuer_url.py), and a bad one is a ConfigurationError naming the setting, never
    a bare ValueError from the URL parser."""
    trusted = json.dumps([{"kind": "aws-oif", "issuer": url, "account": "123456789012"}])
    own_ok = trusted_ok = True
    try:
        Settings.from_env({"TOKEX_ISSUER": url})
    except ConfigurationError as err:
        own_ok = False
        assert str(err).startswith("TOKEX_ISSUER ")
    try:
        Settings.from_env(
            {"TOKEX_ISSUER": "https://tokex.example", "TOKEX_TRUSTED_ISSUERS": trusted}
        )
    except ConfigurationError as err:
        trusted_ok = False
        assert "TOKEX_TRUSTED_ISSUERS" in str(err)
    assert own_ok == trusted_ok
    assert own_ok == (url in ISSUER_URLS[:2])


def test_a_regional_exchange_accepts_its_own_regions_sts_only() -> None:
    base = {"TOKEX_ISSUER": "https://auth.example.com", "TOKEX_SERVING_REGION": "eu-west-1"}
    assert Settings.from_env(base).regions == ("eu-west-1",)
    assert Settings.from_env({**base, "TOKEX_STS_REGIONS": "eu-west-1"}).regions == ("eu-west-1",)
    with pytest.raises(ConfigurationError, match="serving region alone"):
        Settings.from_env({**base, "TOKEX_STS_REGIONS": "eu-west-1,us-east-1"})
    with pytest.raises(ConfigurationError, match="TOKEX_SERVING_REGION"):
        Settings.from_env({**base, "TOKEX_SERVING_REGION": "Europe"})


def test_the_publisher_lists_the_served_regions() -> None:
    base = {"TOKEX_ISSUER": "https://auth.example.com"}
    assert Settings.from_env(base).served_regions == ()
    served = Settings.from_env({**base, "TOKEX_SERVED_REGIONS": "us-east-1, eu-west-1"})
    assert served.served_regions == ("us-east-1", "eu-west-1")
    with pytest.raises(ConfigurationError, match="TOKEX_SERVED_REGIONS: 'Europe'"):
        Settings.from_env({**base, "TOKEX_SERVED_REGIONS": "us-east-1,Europe"})
    with pytest.raises(ConfigurationError, match="TOKEX_SERVED_REGIONS lists a Region twice"):
        Settings.from_env({**base, "TOKEX_SERVED_REGIONS": "us-east-1,us-east-1"})


# setting -> (its attribute, its default)
FLAGS = {
    "TOKEX_REQUIRE_SIGNED_AUDIENCE": ("require_signed_audience", False),
    "TOKEX_SINGLE_USE": ("single_use", True),
    "TOKEX_STS_ALLOW_FIPS": ("allow_fips", True),
}


@pytest.mark.parametrize("name", list(FLAGS))
@pytest.mark.parametrize(
    ("raw", "value"),
    [(None, None), ("", None), ("true", True), ("TRUE", True), ("false", False), ("False", False)],
)
def test_a_flag_is_true_false_or_its_default(
    name: str, raw: str | None, value: bool | None
) -> None:
    attribute, default = FLAGS[name]
    env = {"TOKEX_ISSUER": "https://a.example"}
    if raw is not None:
        env[name] = raw
    expected = default if value is None else value
    assert getattr(Settings.from_env(env), attribute) is expected


@pytest.mark.parametrize("name", list(FLAGS))
@pytest.mark.parametrize("raw", ["yes", "no", "1", "0", "ture", "flase", "off"])
def test_a_flag_is_true_or_false_and_nothing_else(name: str, raw: str) -> None:
    """A typo must not change a security setting without a word, in either direction
    (`TOKEX_SINGLE_USE=no` had left single use on; `TOKEX_REQUIRE_SIGNED_AUDIENCE=ture`
    would leave the requirement off)."""
    env = {"TOKEX_ISSUER": "https://a.example", name: raw}
    with pytest.raises(ConfigurationError, match=f"{name} must be true or false"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "name",
    [
        "TOKEX_STS_REGIONS",
        "TOKEX_STS_PARTITIONS",
        "TOKEX_SERVED_REGIONS",
        "TOKEX_PUBLISHED_KEY_IDS",
    ],
)
@pytest.mark.parametrize("raw", [",", " , ,"])
def test_a_list_set_to_nothing_is_refused(name: str, raw: str) -> None:
    """`TOKEX_STS_REGIONS=,` (a list emptied by hand) accepted every Region: an empty
    allowlist reads as no allowlist."""
    with pytest.raises(ConfigurationError, match=f"{name} lists nothing"):
        Settings.from_env({"TOKEX_ISSUER": "https://a.example", name: raw})
