"""`tokex proxy` end to end, with a relying party tokex does not control: an application
(curl, else http.client) calls an upstream through the real `tokex proxy` CLI, started with
a copy of examples/proxy/local-proxy.toml and the demo workload's `workload.env`, against
`tokex local` (the in-process `local_system`).

The upstream is Debian's apache2 with mod_ssl (a certificate from a throwaway CA,
tests/support/tls.py) and mod_auth_openidc as an OAuth 2.0 resource server, with the
directives of docs/injection.md "Try it with tokex local": `AuthType oauth20` verifies the
bearer JWT against `OIDCOAuthVerifyJwksUri`, which the module fetches over https only, so
Apache relays tokex local's JWKS to itself (mod_proxy_http) and trusts the test CA for it
(`OIDCCABundlePath`); like tests/interop/test_mod_auth_openidc.py it also requires the
audience and the issuer (`Require claim`). The protected location echoes the claims it
validated (mod_headers, `OIDC_CLAIM_*`). Here only, the access log also records the
`Authorization` header Apache received (tokens in a log: fine for a test's throwaway
ServerRoot, not for the documented set-up), so the tests assert on what the upstream
itself saw. Apache runs from a temporary ServerRoot in its own process group, as in
test_mod_auth_openidc.py (whose start and stop helpers this reuses), on a free port.

Without apache2 or one of its modules the tests skip; under CI=true they fail
(tests/interop/conftest.py `verifier_missing`).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.local_process import TOKEX, load_env_file, without_aws_settings
from tests.interop.conftest import AUDIENCE, verifier_missing
from tests.interop.test_mod_auth_openidc import (  # the same apache2, started the same way
    MODULES,
    MODULES_DIR,
    RUN_AS,
    _stop_group,
    apache2,  # noqa: F401  (session fixture)
    start_apache,
)
from tests.support.ports import free_port
from tests.support.tls import make_pki
from tests.system.endpoints import verify
from tokex.local.provision import DEMO_ROLE_ARN
from tokex.local.runner import LocalSystem
from tokex.proxy import ProxyConfig, ProxyConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "proxy" / "local-proxy.toml"
# What the example names, and the test replaces with its own (free) ports.
EXAMPLE_LISTEN = "127.0.0.1:8080"
EXAMPLE_UPSTREAM = "https://127.0.0.1:8443"
DENIED_AUDIENCE = "nobody-api"  # no demo policy grants it
SCOPE = "demo:read"
# Beside those of test_mod_auth_openidc.py: TLS, the echo and the JWKS relay.
MORE_MODULES = {
    "ssl_module": "mod_ssl.so",
    "headers_module": "mod_headers.so",
    "proxy_module": "mod_proxy.so",
    "proxy_http_module": "mod_proxy_http.so",
}
PROTECTED = "/api/hello.txt"
CONTENT = b"hello from the protected upstream\n"
JWKS_RELAY = "/tokex-jwks.json"
WAIT_SECONDS = 30
# The access log line: method, path and query, status, the user mod_auth_openidc set (the
# token's `sub`) and the Authorization header as Apache received it.
ACCESS_LINE = re.compile(
    r"(?P<method>\S+) (?P<target>\S+) (?P<status>\d{3}) user=(?P<user>\S+) "
    r'authorization="(?P<authorization>[^"]*)"'
)


# --- the application's side: curl if present, else http.client ---------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def get(url: str, *, headers: dict[str, str] | None = None, cacert: Path | None = None) -> Answer:
    """GET `url` as an application would: curl (no ~/.curlrc, no proxy from the
    environment) where installed, else http.client."""
    headers = headers or {}
    curl = shutil.which("curl")
    if curl is None:
        return _get_with_http_client(url, headers, cacert)
    with tempfile.TemporaryDirectory() as scratch:
        head, body = Path(scratch) / "head", Path(scratch) / "body"
        argv = [curl, "-q", "-sS", "--noproxy", "*", "--max-time", str(WAIT_SECONDS)]
        argv += ["-D", str(head), "-o", str(body), "-w", "%{http_code}"]
        argv += ["--cacert", str(cacert)] if cacert is not None else []
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        done = subprocess.run([*argv, url], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"curl {url}: {done.stderr}"
        fields: dict[str, str] = {}
        for line in head.read_text(encoding="latin-1").splitlines()[1:]:
            name, _, value = line.partition(":")
            if value:
                fields[name.strip().lower()] = value.strip()
        return Answer(int(done.stdout), fields, body.read_bytes())


def _get_with_http_client(url: str, headers: dict[str, str], cacert: Path | None) -> Answer:
    scheme, _, rest = url.partition("://")
    authority, _, path = rest.partition("/")
    host, _, port = authority.rpartition(":")
    connection: http.client.HTTPConnection
    if scheme == "https":
        context = ssl.create_default_context(cafile=str(cacert) if cacert else None)
        connection = http.client.HTTPSConnection(
            host, int(port), timeout=WAIT_SECONDS, context=context
        )
    else:
        connection = http.client.HTTPConnection(host, int(port), timeout=WAIT_SECONDS)
    try:
        connection.request("GET", "/" + path, headers=headers)
        response = connection.getresponse()
        fields = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, fields, response.read())
    finally:
        connection.close()


def waited_for(what: str, find: Callable[[], list[str]]) -> list[str]:
    """`find()` once it finds something (a log line is written after its answer is sent,
    so it may come a moment after the client has the answer)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not (found := find()):
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {WAIT_SECONDS} s")
        time.sleep(0.05)
    return found


# --- the upstream: Apache with mod_ssl and mod_auth_openidc --------------------------------


@dataclass
class Upstream:
    url: str  # https://127.0.0.1:<port>
    ca_file: Path  # the test CA that issued its certificate
    access_log: Path
    error_log: Path

    def access_lines(self) -> list[dict[str, str]]:
        text = self.access_log.read_text() if self.access_log.exists() else ""
        lines = []
        for line in text.splitlines():
            match = ACCESS_LINE.fullmatch(line)
            assert match is not None, f"unexpected access log line: {line}"
            lines.append(match.groupdict())
        return lines

    def line_of(self, marker: str) -> dict[str, str]:
        """The one access log line of the request whose query carried `marker`."""
        found = waited_for(
            f"access log line for {marker}",
            lambda: [line for line in self.access_lines() if marker in line["target"]],
        )
        assert len(found) == 1, found
        return found[0]


def apache_upstream_config(root: Path, port: int, issuer: str, pki_dir: Path) -> str:
    modules = {**MODULES, **MORE_MODULES}
    loads = "\n".join(f"LoadModule {name} {MODULES_DIR / so}" for name, so in modules.items())
    # As in test_mod_auth_openidc.py: workers drop to www-data only when started as root.
    user = f"User {RUN_AS}\nGroup {RUN_AS}" if os.geteuid() == 0 else ""
    return f"""\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port} https
PidFile "{root}/apache2.pid"
DefaultRuntimeDir "{root}/run"
ErrorLog "{root}/error.log"
LogLevel warn auth_openidc:info
LogFormat "%m %U%q %>s user=%u authorization=\\"%{{Authorization}}i\\"" seen
CustomLog "{root}/access.log" seen
{loads}
{user}
StartServers 1
ServerLimit 1
ThreadsPerChild 8
MaxRequestWorkers 8
DocumentRoot "{root}/htdocs"

SSLEngine on
SSLCertificateFile "{pki_dir}/server.pem"
SSLCertificateKeyFile "{pki_dir}/server.key"

# mod_auth_openidc fetches a JWKS over https only: Apache relays tokex local's to itself.
ProxyPass {JWKS_RELAY} {issuer}/.well-known/jwks.json
OIDCCryptoPassphrase {secrets.token_hex(16)}
OIDCOAuthVerifyJwksUri https://127.0.0.1:{port}{JWKS_RELAY}
OIDCCABundlePath "{pki_dir}/ca.pem"
OIDCOAuthRemoteUserClaim sub

<Location "/api">
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim aud:{AUDIENCE}
        Require claim iss:{issuer}
    </RequireAll>
    Header set X-Token-Sub "%{{OIDC_CLAIM_sub}}e"
    Header set X-Token-Aud "%{{OIDC_CLAIM_aud}}e"
    Header set X-Token-Scope "%{{OIDC_CLAIM_scope}}e"
</Location>
"""


@pytest.fixture(scope="module")
def apache_with_ssl(apache2: str) -> str:  # noqa: F811
    """apache2 (checked by test_mod_auth_openidc.py's fixture) and the modules added here."""
    for so in MORE_MODULES.values():
        if not (MODULES_DIR / so).is_file():
            verifier_missing(f"{so} is not installed ({MODULES_DIR})")
    return apache2


@pytest.fixture(scope="module")
def upstream(apache_with_ssl: str, local_system: LocalSystem) -> Iterator[Upstream]:
    # Not under pytest's tmp_path (0700 parents): the workers (www-data) read the document
    # root and the CA bundle.
    root = Path(tempfile.mkdtemp(prefix="tokex-apache-ssl-"))
    process = None
    try:
        root.chmod(0o755)
        (root / "run").mkdir()
        (root / "htdocs" / "api").mkdir(parents=True)
        (root / "htdocs" / PROTECTED.lstrip("/")).write_bytes(CONTENT)
        pki_dir = root / "pki"
        pki_dir.mkdir()
        pki = make_pki(pki_dir)
        (pki_dir / "server.key").chmod(0o600)  # read by the parent, before it drops root
        for path in (pki_dir, root / "htdocs", root / "htdocs" / "api"):
            path.chmod(0o755)
        for path in (pki.ca_file, root / "htdocs" / PROTECTED.lstrip("/")):
            path.chmod(0o644)
        port = free_port()
        config = apache_upstream_config(root, port, local_system.issuer, pki_dir)
        process = start_apache(apache_with_ssl, root, config, port)
        yield Upstream(
            f"https://127.0.0.1:{port}", pki.ca_file, root / "access.log", root / "error.log"
        )
    finally:
        if process is not None:
            _stop_group(process)
        shutil.rmtree(root, ignore_errors=True)


# --- the proxy: `tokex proxy --config <a copy of the example>` ----------------------------


@dataclass
class Proxy:
    url: str  # http://127.0.0.1:<port>
    log: Path  # its stderr: one JSON object per line

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def example_copy(directory: Path, **replace: str) -> Path:
    """examples/proxy/local-proxy.toml copied to `directory`/checkout/examples/proxy/, the
    documented addresses replaced (each must be in the example: a renamed one fails here,
    not silently). Its relative `ca_file` then points into `directory`/checkout/."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert old in text, f"{EXAMPLE.name} no longer names {old}"
        text = text.replace(old, new)
    copy = directory / "checkout" / "examples" / "proxy" / EXAMPLE.name
    copy.parent.mkdir(parents=True)
    copy.write_text(text, encoding="utf-8")
    return copy


def ca_files_of(example: Path) -> set[str]:
    return {route["ca_file"] for route in tomllib.loads(example.read_text())["routes"]}


@pytest.fixture(scope="module")
def proxy(
    upstream: Upstream, local_system: LocalSystem, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    work = tmp_path_factory.mktemp("proxy")
    copy = example_copy(
        work,
        **{
            EXAMPLE_LISTEN: "127.0.0.1:0",
            EXAMPLE_UPSTREAM: upstream.url,
        },
    )
    for relative in ca_files_of(copy):
        target = copy.parent / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upstream.ca_file, target)
    # The example names no endpoint: the proxy takes workload.env's TOKEX_ENDPOINT.
    env = without_aws_settings() | load_env_file(local_system.workload_env)
    assert env["TOKEX_ENDPOINT"] == local_system.issuer
    env["XDG_RUNTIME_DIR"] = str(work)  # the secret file's directory
    out, log = work / "stdout", work / "stderr"
    with out.open("wb") as stdout, log.open("wb") as stderr:
        process = subprocess.Popen(
            [TOKEX, "proxy", "--config", str(copy), "--json"],
            cwd=work,  # not the copy's directory: its relative ca_file is the file's
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        started = waited_for("start line", lambda: _start_line(process, out, log))
        url = json.loads(started[0])["listening"]["listen"]
        yield Proxy(url, log)
    finally:
        process.terminate()
        try:
            code = process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            pytest.fail("tokex proxy did not stop on SIGTERM")
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def _start_line(process: subprocess.Popen[bytes], out: Path, log: Path) -> list[str]:
    if process.poll() is not None:
        pytest.fail(f"tokex proxy exited with {process.returncode}:\n{log.read_text()}")
    text = out.read_text()
    return [text] if text.endswith("\n") else []


def marker() -> str:
    """A query unique to one request, to find its line in Apache's access log."""
    return f"n={uuid.uuid4().hex}"


# --- the example itself (no Apache needed) -------------------------------------------------


def test_the_example_resolves_its_ca_file_relative_to_itself(tmp_path, monkeypatch):
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert "endpoint" not in example  # $TOKEX_ENDPOINT: this run of tokex local, any port
    assert example["listen"] == EXAMPLE_LISTEN
    routes = {route["prefix"]: route for route in example["routes"]}
    assert {prefix: r["audience"] for prefix, r in routes.items()} == {
        "/": AUDIENCE,
        "/denied": DENIED_AUDIENCE,
    }
    assert {route["upstream"] for route in routes.values()} == {EXAMPLE_UPSTREAM}
    copy = example_copy(tmp_path)
    monkeypatch.chdir(tmp_path)  # anywhere but the file's directory
    # Before the Apache of the docs has written its CA: refused, naming the key.
    workload = {"TOKEX_ENDPOINT": "http://127.0.0.1:8787"}  # as workload.env sets it
    with pytest.raises(ProxyConfigError) as missing:
        ProxyConfig.from_file(copy, environ=workload)
    assert missing.value.key == "routes[0].ca_file" and missing.value.file_not_found
    (relative,) = ca_files_of(copy)
    assert not Path(relative).is_absolute()
    expected = (copy.parent / relative).resolve()
    expected.parent.mkdir(parents=True)
    shutil.copyfile(make_pki(tmp_path).ca_file, expected)
    assert expected.is_relative_to(tmp_path / "checkout")  # .tokex-local/ of the checkout
    config = ProxyConfig.from_file(copy, environ=workload)
    assert config.endpoint == workload["TOKEX_ENDPOINT"]
    assert [Path(route.ca_file or "").resolve() for route in config.routes] == [expected] * 2
    assert [route.scopes for route in config.routes] == [(SCOPE,)] * 2


# --- Apache, the proxy and tokex local ----------------------------------------------------


def test_apache_itself_refuses_a_request_without_a_valid_token(apache_with_ssl, upstream):
    """The upstream really validates: without a token, or with one tokex never issued."""
    for headers in ({}, {"Authorization": "Bearer forged"}):
        answer = get(upstream.url + PROTECTED, headers=headers, cacert=upstream.ca_file)
        assert answer.status == 401, (headers, answer)
        assert answer.body != CONTENT
        assert "x-token-sub" not in answer.headers


def test_a_request_without_credentials_reaches_apache_with_a_token_it_validated(
    apache_with_ssl, upstream, proxy, local_system
):
    seen = marker()
    answer = get(f"{proxy.url}{PROTECTED}?{seen}")
    assert answer.status == 200, (answer, upstream.error_log.read_text())
    assert answer.body == CONTENT
    # What mod_auth_openidc validated, echoed by Apache.
    assert answer.headers["x-token-sub"] == DEMO_ROLE_ARN
    assert answer.headers["x-token-aud"] == AUDIENCE
    assert answer.headers["x-token-scope"] == SCOPE
    # What Apache logged: the user it set from `sub`, and a token tokex's JWKS verifies.
    line = upstream.line_of(seen)
    assert (line["method"], line["status"], line["user"]) == ("GET", "200", DEMO_ROLE_ARN)
    scheme, _, token = line["authorization"].partition(" ")
    assert scheme == "Bearer"
    claims = verify(local_system, token, audience=AUDIENCE)
    assert (claims["sub"], claims["scope"]) == (DEMO_ROLE_ARN, SCOPE)


def test_the_applications_own_authorization_never_reaches_apache(
    apache_with_ssl, upstream, proxy, local_system
):
    seen, forged = marker(), f"forged-{uuid.uuid4().hex}"
    answer = get(f"{proxy.url}{PROTECTED}?{seen}", headers={"Authorization": f"Bearer {forged}"})
    # Apache refuses a token tokex never issued (above): a 200 means it got another one.
    assert answer.status == 200, answer
    assert answer.headers["x-token-sub"] == DEMO_ROLE_ARN
    line = upstream.line_of(seen)
    assert line["status"] == "200"
    scheme, _, token = line["authorization"].partition(" ")
    assert scheme == "Bearer" and token != forged
    verify(local_system, token, audience=AUDIENCE)  # the proxy's, validated
    assert forged not in upstream.access_log.read_text()  # on no line, in no form
    assert forged not in proxy.log.read_text()  # and the proxy logs no header value


def test_a_refused_exchange_answers_json_and_never_reaches_apache(apache_with_ssl, upstream, proxy):
    denied = get(f"{proxy.url}/denied{PROTECTED}?{marker()}")
    assert denied.status == 403, denied
    assert denied.headers["content-type"] == "application/json"
    assert denied.headers["cache-control"] == "no-store"
    error = json.loads(denied.body)
    assert error["error"] == "invalid_target"
    assert DENIED_AUDIENCE in error["error_description"]
    # A request after it, through the other route: once its line is in the access log,
    # one for /denied would be too (it would have been answered before the 403 was).
    after = marker()
    assert get(f"{proxy.url}{PROTECTED}?{after}").status == 200
    upstream.line_of(after)
    assert [line for line in upstream.access_lines() if "/denied" in line["target"]] == []
    # The proxy's log says the same: the token refused, no upstream status.
    refused = waited_for(
        "the proxy's log line for /denied",
        lambda: [
            line
            for line in proxy.log_lines()
            if line["event"] == "request" and str(line["path"]).startswith("/denied")
        ],
    )
    assert [(line["status"], line["upstream_status"]) for line in refused] == [(403, None)]
    assert any(
        line["event"] == "token_failed" and line["audience"] == DENIED_AUDIENCE
        for line in proxy.log_lines()
    )
