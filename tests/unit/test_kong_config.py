"""`tokex kong-config`: the generated decK file, value by value (docs/kong.md), rotation,
`--existing` stability and the audience design against Kong's rules
(tests/support/kong_jwt.py). `deck validate`: test_kong_deck.py."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tests.support.kong_jwt import Kong
from tests.support.loopback import TcpServer
from tokex import base64url, kong
from tokex.cli.kong import parse_document, render
from tokex.kong import KongConfigError, Placement, Route
from tokex.tokens.jwks import build_jwks, jwk_from_public_key

ISSUER = "https://auth.example.com"
EXAMPLES = Path(__file__).parents[2] / "examples" / "kong"


def new_key(alg: str) -> tuple[Any, dict[str, Any]]:
    private = (
        ec.generate_private_key(ec.SECP256R1())
        if alg == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    return private, jwk_from_public_key(private.public_key(), alg)


# What a JWKS from elsewhere may hold, and kong-config must refuse.
_RSA_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
_RSA_1024_N = base64url.encode(_RSA_1024.public_key().public_numbers().n.to_bytes(128, "big"))


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Any, dict[str, Any]]]:
    return {alg: new_key(alg) for alg in ("RS256", "ES256")}


def jwks_of(*jwks: dict[str, Any]) -> dict[str, Any]:
    return build_jwks(jwks)


def token(key: tuple[Any, dict[str, Any]], audience: str, **claims: Any) -> str:
    private, jwk = key
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": audience, "iat": now, "nbf": now, "exp": now + 900}
    payload["aud_kid"] = kong.audience_key(audience, jwk["kid"])
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    headers = {"typ": "at+jwt", "kid": jwk["kid"]}
    return jwt.encode(payload, private, algorithm=jwk["alg"], headers=headers)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


SERVICE = Placement(service="demo", service_url="http://demo.internal:8080")
AUDIENCE_ROUTES = Placement(
    service="demo",
    service_url="http://demo.internal:8080",
    routes=(Route("orders", ("orders-api",)), Route("billing", ("billing-api",), "/bill")),
)


def test_jwt_plugin_and_credentials_carry_every_value_kong_needs(keys):
    document = kong.jwt_config(jwks_of(keys["RS256"][1], keys["ES256"][1]), SERVICE, max_ttl=900)
    assert document["_format_version"] == "3.0"
    [service] = document["services"]
    assert (service["name"], service["url"]) == ("demo", "http://demo.internal:8080")
    [plugin] = service["plugins"]
    assert plugin["name"] == "jwt"
    assert plugin["config"] == {
        "key_claim_name": "kid",
        "claims_to_verify": ["exp", "nbf"],
        "maximum_expiration": 900,
        "run_on_preflight": True,
        "header_names": ["authorization"],
        "uri_param_names": [],
        "cookie_names": [],
        "secret_is_base64": False,
    }
    [consumer] = document["consumers"]
    credentials = {c["key"]: c for c in consumer["jwt_secrets"]}
    assert set(credentials) == {keys["RS256"][1]["kid"], keys["ES256"][1]["kid"]}
    for alg in ("RS256", "ES256"):
        private, jwk = keys[alg]
        credential = credentials[jwk["kid"]]
        assert credential["algorithm"] == alg
        assert credential["rsa_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
        loaded = load_pem_public_key(credential["rsa_public_key"].encode())
        assert loaded.public_numbers() == private.public_key().public_numbers()
        assert len(credential["secret"]) >= 40
    assert len({c["secret"] for c in credentials.values()}) == 2


def test_rotation_keeps_every_published_key_and_existing_keeps_secrets_stable(keys):
    old, new = keys["RS256"][1], keys["ES256"][1]

    def secrets_of(document: dict[str, Any]) -> dict[str, str]:
        return {c["key"]: c["secret"] for c in document["consumers"][0]["jwt_secrets"]}

    before = kong.jwt_config(jwks_of(old), SERVICE, max_ttl=3600)
    # The next key is published before it signs: both keys are in the JWKS, both in Kong.
    during = kong.jwt_config(jwks_of(new, old), SERVICE, max_ttl=3600, existing=before)
    assert secrets_of(during)[old["kid"]] == secrets_of(before)[old["kid"]]
    assert set(secrets_of(during)) == {old["kid"], new["kid"]}
    # Re-running on the same JWKS changes nothing at all (a minimal `deck diff`)...
    rerun = kong.jwt_config(jwks_of(old, new), SERVICE, max_ttl=3600, existing=during)
    assert rerun == during
    # ...without --existing only the dummy secrets differ.
    fresh = kong.jwt_config(jwks_of(old, new), SERVICE, max_ttl=3600)
    assert secrets_of(fresh).keys() == secrets_of(during).keys() != secrets_of(fresh).values()
    # Once the old key's tokens have expired it leaves the JWKS, and Kong with it.
    after = kong.jwt_config(jwks_of(new), SERVICE, max_ttl=3600, existing=rerun)
    assert secrets_of(after) == {new["kid"]: secrets_of(during)[new["kid"]]}


def test_existing_secret_is_not_reused_for_other_key_material(keys):
    before = kong.jwt_config(jwks_of(keys["RS256"][1]), SERVICE, max_ttl=3600)
    credential = before["consumers"][0]["jwt_secrets"][0]
    credential["rsa_public_key"] = kong.public_key_pem(new_key("RS256")[1])
    after = kong.jwt_config(jwks_of(keys["RS256"][1]), SERVICE, max_ttl=3600, existing=before)
    assert after["consumers"][0]["jwt_secrets"][0]["secret"] != credential["secret"]


def test_audience_design_one_consumer_per_audience_with_every_key(keys):
    published = [keys["RS256"][1], keys["ES256"][1]]
    document = kong.jwt_config(jwks_of(*published), AUDIENCE_ROUTES, max_ttl=3600)
    consumers = {c["username"]: c for c in document["consumers"]}
    assert set(consumers) == {"tokex-aud-orders-api", "tokex-aud-billing-api"}
    all_keys = [s["key"] for c in consumers.values() for s in c["jwt_secrets"]]
    assert len(all_keys) == len(set(all_keys)) == 4  # jwt_secrets.key is unique in Kong
    for audience in ("orders-api", "billing-api"):
        consumer = consumers[f"tokex-aud-{audience}"]
        assert consumer["acls"] == [{"group": f"tokex-aud-{audience}", "tags": ["tokex"]}]
        assert {s["key"] for s in consumer["jwt_secrets"]} == {
            f"{audience}.{jwk['kid']}" for jwk in published
        }
    [service] = document["services"]
    assert "plugins" not in service  # no audience-blind jwt on the service
    routes = {r["name"]: r for r in service["routes"]}
    assert routes["orders"]["paths"] == ["/orders"] and routes["billing"]["paths"] == ["/bill"]
    jwt_plugin, acl_plugin = routes["billing"]["plugins"]
    assert jwt_plugin["config"]["key_claim_name"] == "aud_kid"
    assert acl_plugin["config"] == {"allow": ["tokex-aud-billing-api"], "hide_groups_header": True}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_token_for_another_audience_is_refused_by_kong_rules(keys, alg):
    published = jwks_of(keys["RS256"][1], keys["ES256"][1])
    gateway = Kong(kong.jwt_config(published, AUDIENCE_ROUTES, max_ttl=3600))
    orders = token(keys[alg], "orders-api")
    accepted = gateway.request("orders", headers=bearer(orders))
    assert (accepted.status, accepted.consumer) == (200, "tokex-aud-orders-api")
    refused = gateway.request("billing", headers=bearer(orders))
    assert (refused.status, refused.body) == (403, {"message": "You cannot consume this service"})
    assert gateway.request("billing", headers=bearer(token(keys[alg], "billing-api"))).status == 200
    # A token whose aud_kid names another audience than its aud is not one tokex mints;
    # and without aud_kid Kong finds no credential at all.
    no_claim = token(keys[alg], "orders-api", aud_kid=None)
    assert gateway.request("orders", headers=bearer(no_claim)).body == {
        "message": "No mandatory 'aud_kid' in claims"
    }


def test_the_same_kid_cannot_serve_two_consumers(keys):
    document = kong.jwt_config(jwks_of(keys["RS256"][1]), SERVICE, max_ttl=3600)
    twin = {**document["consumers"][0], "username": "another-audience"}
    with pytest.raises(ValueError, match="already exists"):
        Kong({**document, "consumers": [document["consumers"][0], twin]})


@pytest.mark.parametrize(
    "change,message",
    [
        ({"keys": []}, "no keys"),
        ({"keys": [{"kty": "oct", "kid": "k", "alg": "HS256", "k": "c2VjcmV0"}]}, "not one"),
        ({"kid": "has.dot"}, "thumbprint"),
        ({"alg": "ES256"}, "cannot sign"),
    ],
)
def test_unusable_jwks_is_refused(keys, change, message):
    jwks = change if "keys" in change else jwks_of({**keys["RS256"][1], **change})
    with pytest.raises(KongConfigError, match=message):
        kong.jwt_config(jwks, SERVICE, max_ttl=3600)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"alg": ["RS256"]}, "not one tokex signs with"),  # was a TypeError: a tokex bug
        ({"alg": {"RS256": 1}}, "not one tokex signs with"),
        ({"use": "enc"}, "use 'enc' is not sig"),  # was told its alg was wrong
        ({"use": ["sig"]}, "use \\['sig'\\] is not sig"),
        ({"kid": "A" * 43}, "not the key's RFC 7638 thumbprint"),
    ],
)
def test_a_foreign_jwks_entry_tokex_would_not_publish_is_refused(keys, change, message):
    """A JWKS from elsewhere than tokex's publisher (a hand edit, a proxy's answer)."""
    jwks = {"keys": [{**keys["RS256"][1], **change}]}
    with pytest.raises(KongConfigError, match=message):
        kong.jwt_config(jwks, SERVICE, max_ttl=3600)


def test_two_keys_under_one_kid_are_refused_not_one_dropped(keys):
    """Kong looks a credential up by kid alone: the second key used to vanish silently."""
    rsa_jwk, ec_jwk = keys["RS256"][1], keys["ES256"][1]
    jwks = {"keys": [rsa_jwk, {**ec_jwk, "kid": rsa_jwk["kid"]}]}
    with pytest.raises(KongConfigError, match="not the key's RFC 7638 thumbprint"):
        kong.published_keys(jwks)
    assert [key.kid for key in kong.published_keys({"keys": [rsa_jwk, rsa_jwk]})] == [
        rsa_jwk["kid"]
    ]  # the same key twice is one key


def test_a_ps256_key_is_refused_as_not_one_tokex_signs_with(keys):
    # tokex signs RS256 and ES256 only (identifiers.py); build_jwks would refuse it too.
    jwks = {"keys": [{**keys["RS256"][1], "alg": "PS256"}]}
    with pytest.raises(KongConfigError, match="alg 'PS256' is not one tokex signs with"):
        kong.published_keys(jwks)


@pytest.mark.parametrize(
    "placement,max_ttl",
    [
        (Placement(), 3600),
        (Placement(service_url="http://x"), 3600),
        (Placement(service="demo", routes=(Route("r", ("bad audience!",)),)), 3600),
        (Placement(service="demo", routes=(Route("r", ("a",)),), audiences=("b",)), 3600),
        (Placement(service="demo", global_scope=True), 3600),
        (SERVICE, 0),
        (SERVICE, kong.MAX_EXPIRATION_LIMIT + 1),
    ],
)
def test_unsound_placement_or_ttl_is_refused(keys, placement, max_ttl):
    with pytest.raises(KongConfigError):
        kong.jwt_config(jwks_of(keys["RS256"][1]), placement, max_ttl=max_ttl)


def test_openid_connect_snippet():
    document = kong.openid_connect_config(ISSUER, AUDIENCE_ROUTES)
    routes = {r["name"]: r for r in document["services"][0]["routes"]}
    [plugin] = routes["orders"]["plugins"]
    assert plugin["name"] == "openid-connect"
    assert plugin["config"] == {
        "issuer": f"{ISSUER}/.well-known/openid-configuration",
        "issuers_allowed": [ISSUER],
        "auth_methods": ["bearer"],
        "bearer_token_param_type": ["header"],
        "audience_claim": ["aud"],
        "audience_required": ["orders-api"],
    }
    assert "consumers" not in document


def test_introspection_snippet():
    document = kong.introspection_config(
        ISSUER, Placement(service="demo"), client_id="kong", client_secret="s3cret", ttl=15
    )
    [plugin] = document["plugins"]
    assert plugin["service"] == "demo" and plugin["name"] == "oauth2-introspection"
    config = plugin["config"]
    assert config["introspection_url"] == f"{ISSUER}/introspect"
    assert config["authorization_value"] == "Basic " + base64.b64encode(b"kong:s3cret").decode()
    assert (config["ttl"], config["consumer_by"]) == (15, "client_id")
    # tokex enforces the client's registered audiences; the plugin takes none of its own.
    with pytest.raises(KongConfigError, match="registered on the introspection client"):
        kong.introspection_config(ISSUER, AUDIENCE_ROUTES, client_id="kong", client_secret="s3cret")
    with pytest.raises(KongConfigError, match="client id"):
        kong.introspection_config(ISSUER, SERVICE, client_id="a:b", client_secret="s")


def test_render_round_trips_as_yaml_and_json_even_without_pyyaml(keys, monkeypatch):
    document = kong.jwt_config(jwks_of(keys["ES256"][1]), AUDIENCE_ROUTES, max_ttl=3600)
    text = render(document, "yaml", source="jwks.json")
    assert "rsa_public_key: |" in text and text.startswith("# Generated by `tokex kong-config`")
    assert parse_document(text) == document
    assert parse_document(render(document, "json", source="x")) == document
    monkeypatch.setitem(__import__("sys").modules, "yaml", None)
    assert parse_document(render(document, "yaml", source="x")) == document


def run_cli(*argv: str) -> int:
    from tokex.cli.main import main

    return main(["kong-config", *argv])


def test_cli_rerun_with_existing_is_byte_identical_and_private(keys, tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1], keys["ES256"][1])))
    out = tmp_path / "kong.yaml"
    argv = ["--jwks", str(tmp_path / "jwks.json")]
    argv += [
        "--service-name",
        "demo",
        "--service-url",
        "http://x:1",
        "--audience",
        "a",
        "--route",
        "r=/p",
    ]
    assert run_cli(*argv, "--output", str(out)) == 0
    first = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert run_cli(*argv, "--existing", str(out), "--output", str(out)) == 0
    assert out.read_text() == first
    assert parse_document(first)["services"][0]["routes"][0]["paths"] == ["/p"]


def test_cli_missing_existing_file_is_a_first_run(keys, tmp_path, capsys):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    out = tmp_path / "kong" / "tokex.yaml"  # docs/kong.md's command line, on a first run
    argv = ["--jwks", str(tmp_path / "jwks.json"), "--service-name", "orders", "--any-audience"]
    assert run_cli(*argv, "--existing", str(out), "--output", str(out)) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no earlier file" in err and str(out) in err
    first = out.read_text()
    assert run_cli(*argv, "--existing", str(out), "--output", str(out)) == 0
    assert capsys.readouterr().err == ""
    assert out.read_text() == first  # the second run did read the first file


def test_cli_output_creates_missing_directories_privately(keys, tmp_path):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    out = tmp_path / "new" / "deeper" / "tokex.yaml"
    assert (
        run_cli(
            "--jwks",
            str(tmp_path / "jwks.json"),
            "--global",
            "--any-audience",
            "--output",
            str(out),
        )
        == 0
    )
    assert parse_document(out.read_text())["plugins"][0]["name"] == "jwt"
    assert out.stat().st_mode & 0o777 == 0o600
    for directory in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert directory.stat().st_mode & 0o777 == 0o700


def test_cli_unwritable_output_fails_with_one_line(keys, tmp_path, capsys):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "tokex.yaml"  # its "directory" is a file
    assert (
        run_cli(
            "--jwks",
            str(tmp_path / "jwks.json"),
            "--global",
            "--any-audience",
            "--output",
            str(out),
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("tokex kong-config: cannot write ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--jwks", "http://jwks.example.com/jwks.json", "--global", "--any-audience"], "https"),
        (["--jwks", "j.json", "--global"], "--any-audience"),
        (["--enterprise", "openid-connect", "--global"], "--any-audience"),
        (["--jwks", "j.json", "--audience", "a", "--route", "r", "--route", "s"], "--audience"),
        (["--enterprise", "openid-connect", "--global", "--any-audience"], "--issuer"),
        (["--global", "--any-audience"], "--jwks"),
    ],
)
def test_cli_refusals(argv, message, capsys):
    assert run_cli(*argv) != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (
            ["--jwks", "https://\u043f\u0440\u0438\u043c\u0435\u0440.test/.well-known/jwks.json"],
            "--jwks",
        ),
        (["--enterprise", "openid-connect", "--issuer", "https://b\u00fccher.example"], "--issuer"),
        (["--service-url", "https://b\u00fccher.example"], "--service-url"),
    ],
)
def test_cli_a_host_that_is_not_ascii_is_a_usage_error_naming_its_flag(
    argv, flag, keys, tmp_path, capsys
):
    """The fetch raised UnicodeEncodeError (an internal error); Kong would have been given
    the Unicode name, which each library on its way encodes its own way, if at all."""
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    if "--jwks" not in argv and "--enterprise" not in argv:
        argv = ["--jwks", str(tmp_path / "jwks.json"), *argv]
    placement = ["--service-name", "s"] if "--service-url" in argv else ["--global"]
    assert run_cli(*argv, *placement, "--any-audience") == 2
    err = capsys.readouterr().err
    assert f"{flag} " in err and "its IDNA A-label (xn--...)" in err


INTROSPECTION = ["--enterprise", "oauth2-introspection", "--issuer", ISSUER, "--service-name", "s"]


def test_cli_introspection_enforces_the_clients_audiences_without_any_audience(capsys, monkeypatch):
    """The introspection client's registered audiences are the audience rule: no
    --any-audience needed, and the output says whose audiences apply."""
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    client = "tc_0123456789abcdef0123"
    assert run_cli(*INTROSPECTION, "--client-id", client, "--format", "json") == 0
    out, err = capsys.readouterr()
    [plugin] = json.loads(out)["plugins"]
    assert plugin["name"] == "oauth2-introspection"
    assert "audience_required" not in plugin["config"]
    assert err == (
        "tokex kong-config: Kong will accept tokens of the audiences registered on client "
        f"{client} (`tokex clients list`)\n"
    )


def test_cli_takes_a_client_secret_that_starts_with_a_dash(capsys):
    """Secrets are base64url: one in 64 starts with "-", pasted as printed."""
    client = "tc_0123456789abcdef0123"
    for secret in ("-s3cret", "--s3cret"):
        argv = [*INTROSPECTION, "--client-id", client, "--client-secret", secret]
        assert run_cli(*argv, "--format", "json") == 0
        [plugin] = json.loads(capsys.readouterr().out)["plugins"]
        expected = base64.b64encode(f"{client}:{secret}".encode()).decode()
        assert plugin["config"]["authorization_value"] == f"Basic {expected}"


@pytest.mark.parametrize(
    "extra,flag",
    [
        (["--audience", "orders-api"], "--audience"),
        (["--audience", "orders-api", "--route", "orders"], "--audience"),
        (["--route", "orders"], "--route"),
    ],
)
def test_cli_introspection_refuses_audiences_of_its_own(capsys, monkeypatch, extra, flag):
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    argv = [*INTROSPECTION, "--client-id", "tc_0123456789abcdef0123", *extra, "--json"]
    assert run_cli(*argv) == 2
    out, err = capsys.readouterr()
    failure = json.loads(out)
    assert (failure["error"], failure["input"], err) == ("invalid_value", flag, "")
    assert failure["error_description"] == (
        f"{flag}: oauth2-introspection enforces the audiences registered on the introspection "
        "client, not audiences given here: register them with `tokex clients add|update "
        "--audience AUD` and drop --audience/--route"
    )


@pytest.mark.parametrize(
    ("placement", "flag", "why"),
    [
        (["--global"], "--global", "every route of this Kong would accept a token of any"),
        (["--service-name", "s", "--any-audience"], "--any-audience", "goes with --global only"),
    ],
)
def test_cli_introspection_on_every_route_must_be_asked_for_by_name(
    capsys, monkeypatch, placement: list[str], flag: str, why: str
) -> None:
    """The plugin never checks `aud`: global, a client registered for several APIs let
    each route take the others' tokens, with only a note on stderr."""
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    base = ["--enterprise", "oauth2-introspection", "--issuer", ISSUER]
    argv = [*base, *placement, "--client-id", "tc_0123456789abcdef0123", "--json"]
    assert run_cli(*argv) == 2
    failure = json.loads(capsys.readouterr().out)
    assert failure["input"] == flag and why in failure["error_description"]
    argv = [*base, "--global", "--any-audience", "--client-id", "tc_0123456789abcdef0123"]
    assert run_cli(*argv, "--format", "json") == 0


@pytest.mark.parametrize(
    ("ttl", "accepted"), [("0", False), ("1", True), ("300", True), ("301", False)]
)
def test_cli_introspection_ttl_is_short_and_never_for_ever(capsys, monkeypatch, ttl, accepted):
    """Kong keeps a verdict for `ttl` past the token's exp and any revocation; 0 is for
    ever in Kong's cache."""
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    argv = [*INTROSPECTION, "--client-id", "tc_0123456789abcdef0123", "--introspection-ttl", ttl]
    assert (run_cli(*argv, "--format", "json") == 0) is accepted
    out = capsys.readouterr().out
    if accepted:
        [plugin] = json.loads(out)["plugins"]
        assert plugin["config"]["ttl"] == int(ttl)


def test_cli_introspection_can_ask_a_regional_endpoint(capsys, monkeypatch):
    """Multi-Region: home's `/introspect` stops while home is down, so a gateway may ask
    the Region nearest it (docs/multi-region.md)."""
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    argv = [*INTROSPECTION, "--client-id", "tc_0123456789abcdef0123", "--format", "json"]
    assert run_cli(*argv, "--introspection-region", "eu-west-1") == 0
    [plugin] = json.loads(capsys.readouterr().out)["plugins"]
    assert plugin["config"]["introspection_url"] == f"{ISSUER}/regions/eu-west-1/introspect"
    assert run_cli(*argv) == 0  # home's by default
    [plugin] = json.loads(capsys.readouterr().out)["plugins"]
    assert plugin["config"]["introspection_url"] == f"{ISSUER}/introspect"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--introspection-region", "EU-WEST-1"], "is not a Region name"),
        (["--introspection-region", "eu-west-1/../x"], "is not a Region name"),
        (
            ["--enterprise", "openid-connect", "--introspection-region", "eu-west-1"],
            "goes with --enterprise oauth2-introspection",
        ),
    ],
)
def test_cli_introspection_region_is_checked(capsys, monkeypatch, extra, why):
    monkeypatch.setenv("TOKEX_KONG_CLIENT_SECRET", "s3cret")
    base = ["--issuer", ISSUER, "--service-name", "s"]
    if "--enterprise" in extra:
        base += ["--any-audience"]
    else:
        base += ["--enterprise", "oauth2-introspection", "--client-id", "tc_0123456789abcdef0123"]
    assert run_cli(*base, *extra, "--json") == 2
    failure = json.loads(capsys.readouterr().out)
    assert failure["input"] == "--introspection-region" and why in failure["error_description"]


def test_kong_defaults_would_read_tokens_from_the_url_which_the_generated_config_does_not(keys):
    document = kong.jwt_config(jwks_of(keys["RS256"][1]), SERVICE, max_ttl=3600)
    value = token(keys["RS256"], "any")
    bare_jwt = {"name": "jwt", "config": {"key_claim_name": "kid"}}  # schema.lua defaults
    defaults = {**document, "services": [{**document["services"][0], "plugins": [bare_jwt]}]}
    assert Kong(defaults).request(service="demo", query={"jwt": value}).status == 200
    gateway = Kong(document)
    assert gateway.request(service="demo", query={"jwt": value}).body == {"message": "Unauthorized"}
    both = gateway.request(service="demo", headers=bearer(value), cookies={"jwt": value + "x"})
    assert both.status == 200  # cookies are not read either
    assert gateway.request("no-such-route", headers=bearer(value)).status == 404


@pytest.mark.parametrize(
    "jwk,why",
    [
        ({"kty": "RSA", "e": "AQAB", "n": "ISE"}, "not a valid public key"),
        ({"kty": "RSA", "e": "AQAB", "n": "!!"}, "'n' is not base64url"),
        ({"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"}, "not a valid public key"),
        # Shorter than any key tokex publishes: it became a Kong credential.
        (
            {"kty": "RSA", "e": "AQAB", "n": _RSA_1024_N},
            "a 1024-bit RSA key (tokex's have at least 2048)",
        ),
    ],
)
def test_cli_a_jwks_with_broken_key_material_is_named_not_a_crash(jwk, why, tmp_path, capsys):
    source = tmp_path / "jwks.json"
    alg = "RS256" if jwk["kty"] == "RSA" else "ES256"
    source.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": alg, "use": "sig"}]}))
    assert run_cli("--jwks", str(source), "--global", "--any-audience", "--json") == 1
    failure = json.loads(capsys.readouterr().out)
    assert failure["error"] == "invalid_input" and failure["input"] == str(source)
    assert f"JWK 'k1': {why}" in failure["error_description"]


def _tagged_nesting(levels: int) -> str:
    """A plugin holding a list of one entity `levels` deep, each tagged as tokex tags it."""
    entity = '{"tags": ["tokex"], "x": ['
    return '{"plugins": [' + entity * levels + '{"tags": ["tokex"]}' + "]}" * levels + "]}"


@pytest.mark.parametrize(
    "existing,why",
    [
        ({"_format_version": "3.0", "consumers": ["x", 3]}, "consumers are not a list of objects"),
        ({"_format_version": "3.0", "consumers": {"a": 1}}, "consumers are not a list of objects"),
        (
            {"_format_version": "3.0", "consumers": [{"username": "a", "jwt_secrets": "k"}]},
            "consumer 'a': jwt_secrets is not a list of objects",
        ),
        (
            {"_format_version": "3.0", "consumers": [{"username": "a", "jwt_secrets": [[]]}]},
            "consumer 'a': jwt_secrets is not a list of objects",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply for a decK document"),
        ("consumers: " + "[" * 5_000 + "]" * 5_000, "nested too deeply for a decK document"),
        # Tagged at every level: well within what a JSON parser takes (Python 3.13 takes
        # the 1,500 levels), and its entities nested deeper than any walk should go.
        (_tagged_nesting(20), "nested too deeply for a decK document"),
        (_tagged_nesting(1_500), "nested too deeply for a decK document"),
        # YAML keys that are no strings, as decK's all are.
        ("1: [x]\nconsumers: []\nplugins: [{name: jwt, tags: [tokex]}]\n", "key 1 is not"),
        ("plugins:\n- name: jwt\n  tags: [tokex]\n  7: [{}]\n", "key 7 is not a string"),
        ("null: [x]\nplugins: [{name: jwt, tags: [tokex]}]\n", "key None is not a string"),
        ("plugins: [{name: jwt, tags: [tokex], true: 1}]\n", "key True is not a string"),
        ("plugins: [{name: jwt, tags: [tokex], 2024-01-01: x}]\n", "key datetime.date(2024, "),
    ],
)
def test_cli_a_malformed_existing_file_is_invalid_input_not_a_bug(
    existing, why, keys, tmp_path, capsys
):
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    previous = tmp_path / "kong.yaml"
    previous.write_text(existing if isinstance(existing, str) else json.dumps(existing))
    argv = ["--jwks", str(tmp_path / "jwks.json"), "--global", "--any-audience"]
    assert run_cli(*argv, "--existing", str(previous), "--json") == 1
    failure = json.loads(capsys.readouterr().out)
    assert failure["error"] == "invalid_input" and failure["input"] == str(previous)
    assert why in failure["error_description"]


# A user's own decK file (docs/kong.md: validate and sync it beside tokex's).
_USERS_SERVICES = """\
_format_version: "3.0"
services:
- name: orders
  url: http://orders.internal:8080
  routes:
  - name: orders
    paths: [/orders]
consumers:
- username: alice
  keyauth_credentials:
  - key: alice-key
"""


@pytest.mark.parametrize(
    "existing,why",
    [
        (_USERS_SERVICES, "service 'orders' is not tagged tokex"),
        ("{}", "it holds no entity"),
        ('_format_version: "3.0"\n', "it holds no entity"),
        ("consumers: [{username: bob}]\n", "consumer 'bob' is not tagged tokex"),
        # Tagged at the top, not below: a re-run would drop the route and the key.
        (
            _USERS_SERVICES.replace("  url:", "  tags: [tokex]\n  url:"),
            "route 'orders' is not tagged tokex",
        ),
        (
            "consumers: [{username: a, tags: [tokex], keyauth_credentials: [{key: k}]}]\n",
            "keyauth_credential 'k' is not tagged tokex",
        ),
        ("plugins: [{name: jwt, tags: tokex}]\n", "plugin 'jwt' is not tagged tokex"),
        ("plugins: [{name: jwt, tags: [[tokex]]}]\n", "plugin 'jwt' is not tagged tokex"),
        ("services: {name: orders}\n", "its services are not a list of entities"),
    ],
)
@pytest.mark.parametrize("enterprise", [[], ["--enterprise", "openid-connect"]])
def test_cli_an_existing_file_this_command_did_not_write_is_refused_and_left_as_it_is(
    existing, why, enterprise, keys, tmp_path, capsys
):
    # docs/kong.md's command line names the same file twice: were the file accepted, the
    # user's services and consumers would be gone.
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    theirs = tmp_path / "services.yaml"
    theirs.write_text(existing)
    argv = ["--jwks", str(tmp_path / "jwks.json"), "--issuer", ISSUER, *enterprise]
    argv += ["--service-name", "orders", "--any-audience", "--existing", str(theirs)]
    assert run_cli(*argv, "--output", str(theirs), "--json") == 1
    failure = json.loads(capsys.readouterr().out)
    assert failure["error"] == "invalid_input" and failure["input"] == str(theirs)
    assert failure["error_description"].startswith(
        f"--existing {theirs} is not a file this command wrote ({why}): "
    )
    assert "Name the file an earlier run wrote" in failure["error_description"]
    assert theirs.read_text() == existing


_INTROSPECTION = ["--enterprise", "oauth2-introspection", "--client-id", "tc_0123456789abcdef0123"]
_INTROSPECTION += ["--client-secret", "s"]


@pytest.mark.parametrize(
    "first",
    [
        ["--audience", "a", "--route", "r"],
        ["--any-audience", "--format", "json"],  # no header comment: the tags are the mark
        ["--any-audience", "--enterprise", "openid-connect"],  # no consumers
        _INTROSPECTION,
        ["--global", "--any-audience", *_INTROSPECTION],
    ],
)
@pytest.mark.parametrize("pyyaml", [True, False])  # without it, YAML is the header and JSON
def test_cli_every_kind_of_file_this_command_writes_is_accepted_as_existing(
    first, pyyaml, keys, tmp_path, monkeypatch
):
    if not pyyaml:
        monkeypatch.setitem(__import__("sys").modules, "yaml", None)
    (tmp_path / "jwks.json").write_text(json.dumps(jwks_of(keys["RS256"][1])))
    out = tmp_path / "tokex.yaml"
    argv = ["--jwks", str(tmp_path / "jwks.json"), "--issuer", ISSUER]
    place = [] if "--global" in first else ["--service-name", "orders"]
    assert run_cli(*argv, *place, *first, "--output", str(out)) == 0
    rerun = [*argv, "--service-name", "orders", "--audience", "a", "--route", "r"]
    assert run_cli(*rerun, "--existing", str(out), "--output", str(out)) == 0
    assert run_cli(*rerun, "--existing", str(out), "--output", str(out)) == 0


def test_cli_the_committed_example_is_accepted_as_existing(tmp_path):
    # examples/kong/README.md's command line, re-run on the file an earlier version wrote.
    example = tmp_path / "kong.yaml"
    example.write_text((EXAMPLES / "kong.yaml").read_text())
    argv = ["--jwks", str(EXAMPLES / "jwks.json"), "--service-name", "demo"]
    argv += ["--service-url", "http://127.0.0.1:8080", "--audience", "demo-api"]
    argv += ["--route", "demo", "--audience", "demo-instance-api", "--route", "demo-instance"]
    assert run_cli(*argv, "--existing", str(example), "--output", str(example)) == 0
    expected = parse_document((EXAMPLES / "kong.yaml").read_text())
    assert parse_document(example.read_text()) == expected  # its secrets kept


def test_cli_a_jwks_nested_too_deeply_is_invalid_input_not_a_bug(tmp_path, capsys):
    source = tmp_path / "jwks.json"
    source.write_text('{"keys": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert run_cli("--jwks", str(source), "--global", "--any-audience", "--json") == 1
    failure = json.loads(capsys.readouterr().out)
    assert failure["error"] == "invalid_input" and failure["input"] == str(source)
    assert "nested too deeply" in failure["error_description"]


class Answering(TcpServer):
    """Answers every request with `answer`, then `drip` (one byte every 0.05 s, for a
    few seconds at most), then closes the connection."""

    def __init__(self, answer: bytes, drip: int = 0) -> None:
        self.answer, self.drip = answer, drip
        super().__init__()

    def serve(self, connection: socket.socket, number: int) -> None:
        request = b""
        with connection:
            try:
                while b"\r\n\r\n" not in request:
                    if not (received := connection.recv(65536)):
                        return
                    request += received
                connection.sendall(self.answer)
                for _ in range(self.drip):
                    time.sleep(0.05)
                    connection.sendall(b" ")
            except OSError:
                pass  # the client gave up


@contextmanager
def answering(answer: bytes, drip: int = 0) -> Iterator[str]:
    server = Answering(answer, drip)
    try:
        yield server.url + "/.well-known/jwks.json"
    finally:
        server.stop()


_HEADERS = "".join(f"X-{n}: a\r\n" for n in range(101))


@pytest.mark.parametrize(
    "answer,why",
    [
        (b"HTTP/1.1 abc OK\r\n\r\n", "BadStatusLine: HTTP/1.1 abc OK\\r\\n"),
        (b"HTTP/1.1 \x1b[31m\r\n\r\n", "BadStatusLine: HTTP/1.1 \\x1b[31m\\r\\n"),
        (f"HTTP/1.1 200 OK\r\n{_HEADERS}\r\n".encode(), "got more than 100 headers"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "IncompleteRead"),
        # urllib parses the Location before any redirect handler sees it.
        (b"HTTP/1.1 302 Found\r\nLocation: http://[::1/x\r\n\r\n", "Invalid IPv6 URL"),
    ],
)
def test_cli_a_broken_jwks_answer_is_unreachable_in_one_line_not_a_bug(answer, why, capsys):
    with answering(answer) as url:
        assert run_cli("--jwks", url, "--global", "--any-audience", "--json") == 1
        failure = json.loads(capsys.readouterr().out)
        assert failure["error"] == "unreachable" and failure["input"] == url
        assert failure["error_description"].startswith(
            f"cannot fetch the JWKS from {url}: a broken answer ("
        )
        assert why in failure["error_description"]
        assert run_cli("--jwks", url, "--global", "--any-audience") == 1
        shown = capsys.readouterr().err  # the server's text escaped: one line
        assert shown.startswith("tokex kong-config: cannot fetch") and shown.count("\n") == 1
        assert "\r" not in shown and "\x1b" not in shown


def test_cli_a_jwks_answer_that_trickles_is_cut_off_at_the_fetchs_bound(capsys, monkeypatch):
    # Each byte comes well within the read timeout: only a bound on the whole fetch ends it.
    monkeypatch.setattr("tokex.cli.kong.FETCH_TIMEOUT_SECONDS", 0.5)
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 999\r\n\r\n"
    with answering(headers, drip=100) as url:
        assert run_cli("--jwks", url, "--global", "--any-audience", "--json") == 1
    failure = json.loads(capsys.readouterr().out)
    assert failure["error"] == "unreachable" and failure["input"] == url
    assert "no whole answer within 0.5 seconds" in failure["error_description"]
