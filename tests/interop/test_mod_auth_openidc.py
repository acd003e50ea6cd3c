"""Debian apache2 + libapache2-mod-auth-openidc as an OAuth 2.0 resource server.

`AuthType oauth20` verifies the bearer JWT locally against `OIDCOAuthVerifyJwksUri`, which
the module only accepts over https. A TLS server made here (certificate from a CA made
here, trusted through `OIDCCABundlePath`) proxies every JWKS request live to the system
under test, so what apache verifies with is the JWKS the system serves, fetched when
apache asks. Apache runs in the foreground in its own process group, from its own
ServerRoot in a temporary directory, workers as www-data (not root), on a free loopback
port; teardown kills the whole group.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.interop.conftest import AUDIENCE, TOKEN_CASES, TokenCase, verifier_missing
from tests.support.ports import free_port
from tokex.local.runner import LocalSystem

MODULES_DIR = Path("/usr/lib/apache2/modules")
# mpm_event with one child keeps the process count (and startup time) small; authn_core
# and authz_core carry `AuthType` and `Require`, authz_user `Require valid-user`.
MODULES = {
    "mpm_event_module": "mod_mpm_event.so",
    "authn_core_module": "mod_authn_core.so",
    "authz_core_module": "mod_authz_core.so",
    "authz_user_module": "mod_authz_user.so",
    "auth_openidc_module": "mod_auth_openidc.so",
}
RUN_AS = "www-data"
PROTECTED = "/api/resource.txt"
STARTUP_SECONDS = 15


# --- a test-made CA and the TLS JWKS proxy --------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(CA bundle, server cert, server key) for 127.0.0.1, all PEM files in `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("tokex interop test CA"))
        .issuer_name(_name("tokex interop test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (directory / n for n in ("ca.pem", "server.pem", "key.pem"))
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class JwksProxy:
    """https://127.0.0.1:<port>/jwks.json -> GET {issuer}/.well-known/jwks.json, live."""

    def __init__(self, upstream: str, cert: Path, key: Path) -> None:
        self.fetches = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                with urllib.request.urlopen(upstream, timeout=10) as response:
                    body = response.read()
                    content_type = response.headers["Content-Type"]
                proxy.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --- apache2 -----------------------------------------------------------------------------


@dataclass
class Apache:
    url: str
    proxy: JwksProxy
    error_log: Path
    pid: int  # the parent: Apache runs in the foreground

    def status_of(self, token: str) -> tuple[int, str]:
        """(HTTP status, WWW-Authenticate) for a GET with `Authorization: Bearer token`."""
        request = urllib.request.Request(
            self.url + PROTECTED, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers.get("WWW-Authenticate", "")
        except urllib.error.HTTPError as err:
            return err.code, err.headers.get("WWW-Authenticate", "")


def apache_config(root: Path, port: int, issuer: str, jwks_url: str, ca: Path) -> str:
    loads = "\n".join(f"LoadModule {name} {MODULES_DIR / so}" for name, so in MODULES.items())
    # Workers drop to www-data only when apache starts as root; otherwise they run as the
    # invoking user and User/Group are ignored.
    user = f"User {RUN_AS}\nGroup {RUN_AS}" if os.geteuid() == 0 else ""
    return f"""\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile "{root}/apache2.pid"
DefaultRuntimeDir "{root}/run"
ErrorLog "{root}/error.log"
LogLevel warn auth_openidc:info
{loads}
{user}
StartServers 1
ServerLimit 1
ThreadsPerChild 8
MaxRequestWorkers 8
DocumentRoot "{root}/htdocs"

OIDCCryptoPassphrase {secrets.token_hex(16)}
OIDCOAuthVerifyJwksUri {jwks_url}
OIDCCABundlePath "{ca}"
OIDCJWKSRefreshInterval 300
OIDCOAuthRemoteUserClaim sub

<Location "/api">
    AuthType oauth20
    <RequireAll>
        Require valid-user
        Require claim aud:{AUDIENCE}
        Require claim iss:{issuer}
    </RequireAll>
</Location>
"""


@pytest.fixture(scope="session")
def apache2() -> str:
    """The apache2 binary, once mod_auth_openidc is known to be installed (checked before
    the system under test is started, so a skip costs nothing)."""
    binary = shutil.which("apache2") or (
        "/usr/sbin/apache2" if os.access("/usr/sbin/apache2", os.X_OK) else None
    )
    if binary is None:
        verifier_missing("apache2 is not installed")
    if not (MODULES_DIR / MODULES["auth_openidc_module"]).is_file():
        verifier_missing(f"mod_auth_openidc is not installed ({MODULES_DIR})")
    return binary


def start_apache(binary: str, root: Path, config: str, port: int) -> subprocess.Popen[bytes]:
    """`config` checked (`-t`), then Apache in the foreground in a process group of its own
    (stopped as one by `_stop_group`), once it listens on `port`; logs under `root`."""
    conf = root / "apache2.conf"
    conf.write_text(config)
    check = subprocess.run(
        [binary, "-t", "-f", str(conf)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stderr
    with (root / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-f", str(conf), "-DFOREGROUND"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        _wait_listening(process, port, root / "error.log")
    except BaseException:
        _stop_group(process)
        raise
    return process


def _wait_listening(process: subprocess.Popen[bytes], port: int, error_log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = error_log.read_text() if error_log.exists() else ""
            pytest.fail(f"apache2 exited with {process.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"apache2 did not listen on 127.0.0.1:{port} within {STARTUP_SECONDS} s")


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group (parent and workers), SIGKILL what lingers."""
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The parent is gone; wait until no worker of the group is left either.
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def apache(apache2: str, local_system: LocalSystem) -> Iterator[Apache]:
    # Not under pytest's tmp_path: its parents are 0700, and the workers (www-data) must
    # read the document root and the CA bundle.
    root = Path(tempfile.mkdtemp(prefix="tokex-apache-"))
    process = proxy = None
    try:
        root.chmod(0o755)
        (root / "run").mkdir()
        (root / "htdocs" / "api").mkdir(parents=True)
        (root / "htdocs" / PROTECTED.lstrip("/")).write_text("protected\n")
        ca, cert, key = make_ca_and_server_cert(root)
        key.chmod(0o600)  # the proxy (this process) reads it, apache never does
        for readable in (ca, root / "htdocs", root / "htdocs" / "api"):
            readable.chmod(0o755 if readable.is_dir() else 0o644)
        (root / "htdocs" / PROTECTED.lstrip("/")).chmod(0o644)
        proxy = JwksProxy(local_system.issuer + "/.well-known/jwks.json", cert, key)
        port = free_port()
        config = apache_config(root, port, local_system.issuer, proxy.url, ca)
        process = start_apache(apache2, root, config, port)
        yield Apache(f"http://127.0.0.1:{port}", proxy, root / "error.log", process.pid)
    finally:
        if process is not None:
            _stop_group(process)
        if proxy is not None:
            proxy.close()
        shutil.rmtree(root, ignore_errors=True)


def test_workers_do_not_run_as_root(apache2: str, apache: Apache):
    """Apache forks its workers as root and each drops to its `User` at once: a worker
    caught between the two is not one that runs as root, so each gets a moment to drop;
    one still root after it does run as root."""
    if os.geteuid() != 0:
        pytest.skip("not started as root: workers run as the invoking user")
    # Apache listens before it forks (and writes its PidFile after): workers may not
    # exist yet when the fixture sees the port open.
    children_of = Path(f"/proc/{apache.pid}/task/{apache.pid}/children")
    for _ in range(100):
        children = children_of.read_text().split()
        if children:
            break
        time.sleep(0.1)
    assert children, "apache2 has no worker process"
    for child in children:
        for _ in range(50):
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except FileNotFoundError:
                break  # gone: replaced by another worker
            if int(status.split("\nUid:")[1].split()[0]) != 0:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {child} runs as root")


def test_no_token_is_refused(apache2: str, apache: Apache):
    request = urllib.request.Request(apache.url + PROTECTED)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


# Why mod_auth_openidc refused, as its error log says (LogLevel auth_openidc:info). A bad
# signature or `exp` fails authentication: 401 with `WWW-Authenticate: Bearer
# error="invalid_token"`. A `Require claim` mismatch fails authorization of an
# authenticated user: still 401 (authz_core, AH01631), but without a Bearer challenge.
REFUSAL_LOGGED = {
    "signature": "JWT signature verification failed",
    "expired": '"exp" validation failure',
    "audience": f"could not match require claim expression 'aud:{AUDIENCE}'",
    "issuer": "could not match require claim expression 'iss:",
}
# mod_auth_openidc 2.4.12 checks `exp` only when present (an expired one is refused, see
# REFUSAL_LOGGED) and never looks at `nbf`: a validly signed token without `exp`, or one
# whose `nbf` is an hour ahead, is let through. tokex always sets `exp` and `nbf = iat`,
# so its own tokens are unaffected; these cases pin the module's real behaviour so that
# nobody relies on it for either check.
KNOWN_GAPS = {"no-exp", "nbf-future"}


def _ask(apache: Apache, token: str) -> tuple[int, str, str]:
    """(status, WWW-Authenticate, what apache logged meanwhile) for one bearer token."""
    logged_before = apache.error_log.stat().st_size
    status, challenge = apache.status_of(token)
    with apache.error_log.open() as log:
        log.seek(logged_before)
        return status, challenge, log.read()


@pytest.mark.parametrize(
    "case",
    [case for case in TOKEN_CASES if case.flaw not in KNOWN_GAPS],
    ids=lambda case: case.name,
)
def test_mod_auth_openidc_verdict(apache2: str, case: TokenCase, apache: Apache, token_cases):
    status, challenge, logged = _ask(apache, token_cases[case.name])
    if case.accepted:
        assert status == 200, f"refused {case.name}: {challenge}\n{logged}"
        # It can only have checked the signature with keys fetched through the proxy.
        assert apache.proxy.fetches >= 1
        return
    assert case.flaw is not None
    assert status == 401, f"{case.name}: {status}\n{logged}"
    assert REFUSAL_LOGGED[case.flaw] in logged, logged
    if case.flaw in ("signature", "expired"):
        assert challenge.startswith('Bearer error="invalid_token"'), challenge


@pytest.mark.parametrize(
    "case",
    [case for case in TOKEN_CASES if case.flaw in KNOWN_GAPS],
    ids=lambda case: case.name,
)
def test_mod_auth_openidc_known_gap(apache2: str, case: TokenCase, apache: Apache, token_cases):
    """Real behaviour, not a wish: see KNOWN_GAPS. If this starts failing, the module got
    stricter: update KNOWN_GAPS and docs/security.md "Independent verifiers"."""
    status, challenge, logged = _ask(apache, token_cases[case.name])
    assert status == 200, f"{case.name} is now refused ({challenge}):\n{logged}"
