"""tokex/proxy/config.py: the configuration file (TOML or strict JSON) and the command
line's one route; every refusal names the key (or the flag) at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokex.client.evidence import DEFAULT_TOKEN_FILE
from tokex.proxy.config import Address, ProxyConfig, ProxyConfigError

ENDPOINT = "https://auth.example.com"
EXAMPLE = """
endpoint = "https://auth.example.com"
listen = "127.0.0.1:8080"
evidence = "sigv4"
secret_file = "run/proxy-secret"

[[routes]]
prefix = "/orders/"
upstream = "https://orders.internal.example.com/"
audience = "orders-api"
scopes = ["orders:read", "orders:write", "orders:read"]
evidence = "oif"

[[routes]]
listen = "[::1]:8081"
upstream = "https://billing.example.com:8443/api"
audience = "billing-api"
ca_file = "ca.pem"
"""


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    from tests.support.tls import make_pki

    return make_pki(tmp_path).ca_file


def document(**top: object) -> dict:
    route = {"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders-api"}
    return {"endpoint": ENDPOINT, "listen": "127.0.0.1:8080", "routes": [route], **top}


def with_route(**route: object) -> dict:
    base = {"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders-api"}
    return document(routes=[{**base, **route}])


def parse(doc: dict, base: Path = Path("/etc/tokex")) -> ProxyConfig:
    return ProxyConfig.from_document(doc, base_dir=base, environ={})


def refusal(doc: dict, base: Path = Path("/etc/tokex")) -> ProxyConfigError:
    with pytest.raises(ProxyConfigError) as raised:
        parse(doc, base)
    return raised.value


def test_the_documented_example_parses(tmp_path: Path, ca_file: Path) -> None:
    (tmp_path / "proxy.toml").write_text(EXAMPLE)
    config = ProxyConfig.from_file(tmp_path / "proxy.toml", environ={})
    assert config.endpoint == ENDPOINT
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.secret_file == tmp_path / "run" / "proxy-secret"  # relative to the file
    orders, billing = config.routes
    assert (orders.name, orders.prefix, orders.listen) == ("routes[0]", "/orders", None)
    assert orders.upstream == "https://orders.internal.example.com"
    assert orders.authority == "orders.internal.example.com"
    assert orders.scopes == ("orders:read", "orders:write")
    assert (orders.evidence, orders.token_file, orders.ca_file) == ("aws-oif", None, None)
    assert (billing.prefix, billing.listen) == (None, Address("::1", 8081))
    assert billing.upstream == "https://billing.example.com:8443/api"
    assert billing.authority == "billing.example.com:8443"
    assert (billing.evidence, billing.scopes) == ("sigv4", ())
    assert billing.ca_file == str(ca_file)
    assert config.listeners == {
        "listen": Address("127.0.0.1", 8080),
        "routes[1].listen": Address("::1", 8081),
    }
    assert str(config.listeners["routes[1].listen"]) == "[::1]:8081"


@pytest.mark.parametrize(
    "text", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b = " * 5000 + "1" + "}" * 5000]
)
def test_a_toml_file_nested_too_deeply_is_refused_not_a_crash(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(ProxyConfigError, match=r"deep.toml: is nested too deeply"):
        ProxyConfig.from_file(path, environ={})


def test_a_toml_integer_too_long_for_python_is_not_valid_toml(tmp_path: Path) -> None:
    """tomllib's int() raises a plain ValueError over 4,300 digits: an internal error."""
    path = tmp_path / "long.toml"
    path.write_text("a = " + "1" * 4301)
    with pytest.raises(ProxyConfigError, match=r"long.toml: not valid TOML: an integer too long"):
        ProxyConfig.from_file(path, environ={})


@pytest.mark.parametrize(
    "listen",
    ["a\x00b:8080", "\u00e4.example..com:8080", "a b:8080", f"{'x' * 64}.example.com:80"],
)
def test_a_listen_host_no_connection_could_use_is_refused(listen: str) -> None:
    with pytest.raises(ProxyConfigError, match=r"listen: .*its host"):
        ProxyConfig.from_document(
            {**document(), "listen": listen, "allow_non_loopback": True},
            base_dir=Path("/"),
            environ={},
        )


def test_json_is_strict_and_other_extensions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(document()))
    assert ProxyConfig.from_file(path, environ={}).routes[0].audience == "orders-api"
    path.write_text('{"endpoint": "https://a.example", "endpoint": "https://b.example"}')
    with pytest.raises(ProxyConfigError, match=r"proxy.json: not valid JSON: repeats the key"):
        ProxyConfig.from_file(path, environ={})
    (tmp_path / "proxy.yaml").write_text("endpoint: x")
    with pytest.raises(ProxyConfigError, match=r"must be a \.toml or a \.json file"):
        ProxyConfig.from_file(tmp_path / "proxy.yaml", environ={})
    (tmp_path / "bad.toml").write_text("endpoint = ")
    with pytest.raises(ProxyConfigError, match=r"bad.toml: not valid TOML"):
        ProxyConfig.from_file(tmp_path / "bad.toml", environ={})
    with pytest.raises(ProxyConfigError) as missing:
        ProxyConfig.from_file(tmp_path / "none.toml", environ={})
    assert missing.value.file_not_found


def test_the_endpoint_may_come_from_the_environment() -> None:
    doc = document()
    del doc["endpoint"]
    config = ProxyConfig.from_document(
        doc, base_dir=Path("/"), environ={"TOKEX_ENDPOINT": "http://127.0.0.1:8787"}
    )
    assert config.endpoint == "http://127.0.0.1:8787"
    assert str(refusal(doc)) == "endpoint: missing: the tokex issuer URL (or set $TOKEX_ENDPOINT)"
    bad = ProxyConfig.from_document
    with pytest.raises(ProxyConfigError, match=r"^\$TOKEX_ENDPOINT: endpoint 'http://a.example'"):
        bad(doc, base_dir=Path("/"), environ={"TOKEX_ENDPOINT": "http://a.example"})


@pytest.mark.parametrize(
    "doc,key,why",
    [
        (document(lisen="127.0.0.1:1"), "lisen", "unknown key"),
        (with_route(scope=["a"]), "routes[0].scope", "unknown key"),
        (document(endpoint="http://auth.example.com"), "endpoint", "plain http"),
        (document(listen="192.0.2.10:8080"), "listen", "not a loopback address"),
        (document(listen="127.0.0.1"), "listen", "is not HOST:PORT"),
        # Read as host `[:` port 1, then "not a loopback address" or, allowed, a bind error.
        (document(listen="[::1"), "listen", "is not HOST:PORT"),
        (document(listen="::1:8080"), "listen", "is not HOST:PORT"),
        (document(listen="[::1]]:8080"), "listen", "is not HOST:PORT"),
        (document(listen="127.0.0.1:70000"), "listen", "is not HOST:PORT"),
        # int() raised ValueError over 4,300 digits: an internal error.
        (document(listen="127.0.0.1:" + "1" * 4301), "listen", "is not HOST:PORT"),
        (document(listen=8080), "listen", "must be a string HOST:PORT"),
        (document(allow_non_loopback="yes"), "allow_non_loopback", "true or false"),
        (document(evidence="kerberos"), "evidence", "must be one of sigv4, aws-oif, eks"),
        (document(routes=[]), "routes", "non-empty list"),
        (document(routes=["/"]), "routes[0]", "must be a table"),
        (with_route(listen="127.0.0.1:1"), "routes[0]", "exactly one of prefix and listen"),
        (with_route(upstream="http://orders.example.com"), "routes[0].upstream", "plain http"),
        (with_route(upstream="orders.example.com"), "routes[0].upstream", "an https URL"),
        (with_route(upstream="ftp://orders.example.com"), "routes[0].upstream", "https URL"),
        (with_route(upstream="https://u:p@orders.example.com"), "routes[0].upstream", "no user"),
        (with_route(upstream="https://o.example.com/?a=1"), "routes[0].upstream", "no user"),
        (with_route(upstream="https://o.example.com:99999"), "routes[0].upstream", "Port out of"),
        (with_route(upstream="https://[::1"), "routes[0].upstream", "not a valid URL"),
        # A Unicode host went out as Latin-1 bytes in Host, or failed at start or per request.
        (with_route(upstream="https://b\u00fccher.example"), "routes[0].upstream", "xn--"),
        (with_route(upstream="https://e\u0301.example"), "routes[0].upstream", "A-label"),
        (document(endpoint="https://\u043f\u0440.test"), "endpoint", "A-label"),
        (with_route(audience="orders api"), "routes[0].audience", "1-256 characters"),
        (with_route(scopes="orders:read"), "routes[0].scopes", "a list of strings"),
        (with_route(scopes=['a"b']), "routes[0].scopes", "RFC 6749 section 3.3"),
        (with_route(prefix="orders"), "routes[0].prefix", "starting with /"),
        (with_route(prefix="/orders?x"), "routes[0].prefix", "a plain path"),
        (with_route(prefix="/a/../b"), "routes[0].prefix", ". or .. segments"),
        (with_route(prefix="/a//b"), "routes[0].prefix", ". or .. segments"),
        # No request could match these: a target is ASCII, and `;` parameters are dropped.
        (with_route(prefix="/caf\u00e9"), "routes[0].prefix", "printable ASCII"),
        (with_route(prefix="/a;v=1"), "routes[0].prefix", "no ?, #, %, ;"),
        (with_route(prefix="/.tokex"), "routes[0].prefix", "/.tokex/ is the proxy's own"),
        (with_route(prefix="/.tokex/x"), "routes[0].prefix", "/.tokex/ is the proxy's own"),
        (with_route(token_file="t"), "routes[0].token_file", "goes with evidence eks only"),
        (document(token_file="t"), "token_file", "no route uses it"),
        (with_route(evidence="eks", token_file="/nope"), "routes[0].token_file", "no such file"),
        (with_route(ca_file="/nope.pem"), "routes[0].ca_file", "no such file"),
        (with_route(ca_file="/dev/null"), "routes[0].ca_file", "not a regular file"),
        (with_route(ca_file="/dev/null/ca.pem"), "routes[0].ca_file", "no such file"),
        # A path that cannot be looked up (pathlib's is_file() raised: an internal error).
        (with_route(ca_file="/" + "a" * 300), "routes[0].ca_file", "File name too long"),
        (with_route(evidence="eks", token_file="/tmp"), "routes[0].token_file", "not a regular"),
        # What no file name can hold: system calls raised ValueError, an internal error.
        (with_route(ca_file="ca\x00.pem"), "routes[0].ca_file", "no file name can hold"),
        (with_route(ca_file="ca\ud800.pem"), "routes[0].ca_file", "no file name can hold"),
        (with_route(evidence="eks", token_file="t\x00"), "routes[0].token_file", "no file name"),
        (document(secret_file="s\x00"), "secret_file", "no file name can hold"),
        (document(secret_file="s\ud800"), "secret_file", "no file name can hold"),
        (with_route(upstream="http://127.0.0.1:8080"), "routes[0].upstream", "a loop"),
    ],
)
def test_each_refusal_names_its_key(doc: dict, key: str, why: str) -> None:
    error = refusal(doc)
    assert error.key == key
    assert why in error.message
    assert str(error).startswith(f"{key}: ")


def test_routes_and_listeners_must_not_collide() -> None:
    two = [
        {"prefix": "/orders", "upstream": "https://a.example", "audience": "a"},
        {"prefix": "/orders/", "upstream": "https://b.example", "audience": "b"},
    ]
    error = refusal(document(routes=two))
    assert (error.key, error.message) == (
        "routes[1].prefix",
        "/orders is already routes[0]'s (prefixes match in any case)",
    )
    own = {"listen": "127.0.0.1:8080", "upstream": "https://b.example", "audience": "b"}
    error = refusal(document(routes=[two[0], own]))
    assert (error.key, error.message) == ("routes[1].listen", "127.0.0.1:8080 is already listen's")
    # Paths are also read in any case (routing.py): one of the two would take no request.
    cased = [two[0], {**two[1], "prefix": "/Orders"}]
    error = refusal(document(routes=cased))
    assert (error.key, error.message) == (
        "routes[1].prefix",
        "/Orders is already routes[0]'s (prefixes match in any case)",
    )
    doc = document()
    del doc["listen"]
    assert refusal(doc).message == "missing: routes[0] has a prefix on it"
    zero = {**own, "listen": "127.0.0.1:0"}  # any free port, each its own
    assert len(parse(document(listen="127.0.0.1:0", routes=[two[0], zero])).listeners) == 2


@pytest.mark.parametrize(
    ("listen", "own", "same"),
    [
        ("127.0.0.1:8080", "localhost:8080", "127.0.0.1:8080"),  # bound as IPv4: 127.0.0.1
        ("localhost:8080", "127.0.0.1:8080", "localhost:8080"),
        ("[::1]:8080", "[0:0::1]:8080", "[::1]:8080"),
    ],
)
def test_two_listeners_on_one_address_spelled_two_ways_are_refused(
    tmp_path: Path, listen: str, own: str, same: str
) -> None:
    """Compared as strings they passed, and the second failed to bind at start (the
    extension's Init as Extension.ListenFailed, after the construct's synth check)."""
    path = tmp_path / "proxy.toml"
    path.write_text(
        f'endpoint = "{ENDPOINT}"\nlisten = "{listen}"\n'
        '[[routes]]\nprefix = "/"\nupstream = "https://a.example"\naudience = "a"\n'
        f'[[routes]]\nlisten = "{own}"\nupstream = "https://b.example"\naudience = "b"\n',
        encoding="utf-8",
    )
    with pytest.raises(ProxyConfigError) as refused:
        ProxyConfig.from_file(path, environ={})
    assert (refused.value.key, refused.value.message) == (
        "routes[1].listen",
        f"{own} is already listen's ({same}: the same address)",
    )
    # Two loopback addresses, each its own: both bind.
    other = {"listen": "127.0.0.2:8080", "upstream": "https://b.example", "audience": "b"}
    assert len(parse(document(routes=[with_route()["routes"][0], other])).listeners) == 2


def test_non_loopback_only_when_allowed(tmp_path: Path) -> None:
    config = parse(document(listen="192.0.2.10:8080", allow_non_loopback=True))
    assert config.allow_non_loopback and config.listen == Address("192.0.2.10", 8080)
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(document(listen="192.0.2.10:8080")))
    with pytest.raises(ProxyConfigError, match="not a loopback address"):
        ProxyConfig.from_file(path, environ={})
    allowed = ProxyConfig.from_file(path, environ={}, allow_non_loopback=True)
    assert allowed.listen == Address("192.0.2.10", 8080)


def test_eks_routes_take_the_token_file(tmp_path: Path) -> None:
    (tmp_path / "eks-token").write_text("x.y.z")
    config = parse({**with_route(evidence="eks"), "token_file": "eks-token"}, base=tmp_path)
    assert config.routes[0].token_file == str(tmp_path / "eks-token")
    refused = refusal(with_route(evidence="eks"), base=tmp_path)  # the default path
    assert (refused.key, refused.file_not_found) == ("token_file", True)
    assert "/var/run/secrets/tokex/serviceaccount/token: no such file" in refused.message


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    error = refusal(with_route(ca_file="ca.pem"), base=tmp_path)
    assert error.key == "routes[0].ca_file" and "is not a PEM CA bundle" in error.message


@pytest.mark.parametrize(
    "route",
    [
        {"ca_file": "/nope/ca.pem"},
        {"ca_file": "certs/ca.pem"},  # relative: the function's package, at synth not there
        {"ca_file": "/dev/null"},  # no PEM read either
        {"evidence": "eks", "token_file": "/nope/token"},
        {"evidence": "eks"},  # the default token file
    ],
)
def test_check_files_false_skips_only_the_files_being_there(route: dict) -> None:
    """The CDK construct's check at synth, before the function's package exists."""
    doc = with_route(**route)
    assert refusal(doc).key.endswith("_file")  # by default: refused, as the extension does
    config = ProxyConfig.from_document(
        doc, base_dir=Path("/var/task"), environ={}, check_files=False
    )
    [parsed] = config.routes
    if "ca_file" in route:
        assert parsed.ca_file == str(Path("/var/task") / route["ca_file"])
    else:
        assert parsed.token_file == route.get("token_file", DEFAULT_TOKEN_FILE)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        (with_route(ca_file="ca\x00.pem"), "routes[0].ca_file"),
        (with_route(ca_file=""), "routes[0].ca_file"),
        (with_route(token_file="/nope/token"), "routes[0].token_file"),  # not eks evidence
        (document(token_file="/nope/token"), "token_file"),
        (with_route(upstrem="https://orders.example.com"), "routes[0].upstrem"),
        (with_route(upstream="http://orders.example.com"), "routes[0].upstream"),
        (with_route(evidence="iam"), "routes[0].evidence"),
        (document(listen="0.0.0.0:8080"), "listen"),
    ],
)
def test_check_files_false_still_checks_everything_else(doc: dict, key: str) -> None:
    with pytest.raises(ProxyConfigError) as refused:
        ProxyConfig.from_document(doc, base_dir=Path("/var/task"), environ={}, check_files=False)
    assert refused.value.key == key and not refused.value.file_not_found


def test_from_args_is_one_route_for_every_path_and_names_the_flags(ca_file: Path) -> None:
    config = ProxyConfig.from_args(
        endpoint=ENDPOINT,
        listen="127.0.0.1:9000",
        upstream="https://orders.example.com",
        audience="orders-api",
        scopes=["orders:read"],
        evidence="oif",
        ca_file=str(ca_file),
        environ={},
    )
    (route,) = config.routes
    assert (route.prefix, route.scopes, route.evidence) == ("/", ("orders:read",), "aws-oif")
    assert route.ca_file == str(ca_file)
    assert config.listen == Address("127.0.0.1", 9000)
    cases = {
        "--upstream": {"upstream": "http://orders.example.com"},
        "--listen": {"listen": "10.0.0.1:80"},
        "--scope": {"scopes": ["a b"]},
        "--token-file": {"token_file": "t"},
        "--ca-file": {"ca_file": "/nope.pem"},
        "--audience": {"audience": ""},
        "--evidence": {"evidence": "x"},
    }
    for flag, change in cases.items():
        arguments = {
            "endpoint": ENDPOINT,
            "listen": "127.0.0.1:9000",
            "upstream": "https://orders.example.com",
            "audience": "orders-api",
            "environ": {},
            **change,
        }
        with pytest.raises(ProxyConfigError) as raised:
            ProxyConfig.from_args(**arguments)  # type: ignore[arg-type]
        assert raised.value.key == flag, change


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("127.0.0.1:80", "http://127.0.0.1"),
        ("127.0.0.1:8080", "http://localhost:8080"),
        ("[::1]:8080", "http://localhost:8080"),
        ("localhost:8080", "http://127.0.0.1:8080"),
        ("[::ffff:127.0.0.1]:8080", "http://127.0.0.1:8080"),
        ("0.0.0.0:8080", "http://127.0.0.2:8080"),
        ("[::]:8080", "http://[::1]:8080"),
        ("[::]:8080", "http://127.0.0.1:8080"),  # `::` binds both families
    ],
)
def test_an_upstream_that_reaches_a_listener_is_a_loop(listen: str, upstream: str) -> None:
    error = refusal({**with_route(upstream=upstream), "listen": listen, "allow_non_loopback": True})
    assert (error.key, error.message) == (
        "routes[0].upstream",
        f"{upstream} is this proxy itself (a loop)",
    )


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("127.0.0.1:8080", "http://127.0.0.2:8080"),
        ("127.0.0.1:8080", "http://[::1]:8080"),
        ("[::1]:8080", "http://127.0.0.1:8080"),
        ("0.0.0.0:8080", "http://[::1]:8080"),
        ("127.0.0.1:8080", "http://127.0.0.1:8081"),
    ],
)
def test_a_service_on_another_loopback_address_and_the_same_port_is_no_loop(
    listen: str, upstream: str
) -> None:
    """Compared by port alone, each of these was refused: another service there is fine."""
    config = parse({**with_route(upstream=upstream), "listen": listen, "allow_non_loopback": True})
    assert config.routes[0].upstream == upstream
