"""Starts and stops the whole local system (what `tokex local` runs in the foreground)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokex.adapters.state_table.introspection_clients import ClientStore
from tokex.introspection_clients import basic_authorization
from tokex.local.emulator import MotoServer, ThreadMotoServer
from tokex.local.federation import LocalFederation, start_federation
from tokex.local.front import (
    HANDLER_LOCK,
    FrontServer,
    LambdaHandler,
    PortUnavailable,
    bind_front,
    s3_documents,
)
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.imds import ImdsEmulator
from tokex.local.oidc_issuers import local_trusted_issuers
from tokex.local.provision import (
    DEMO_AUDIENCE,
    DEMO_INSTANCE_AUDIENCE,
    DEMO_LAMBDA_ROLE_NAME,
    REGION,
    Credentials,
    LocalDeployment,
    provision,
)
from tokex.local.replication import Replicator, Replicators
from tokex.private_files import open_private_dir, write_private
from tokex.regions import INTROSPECT_PATH, SERVING_REGION_ENV, TOKEN_PATH, regional_path

# The demo Lambda functions' env files in the state directory, by function name.
LAMBDA_ENV_FILES = {"tokex-demo-a": "lambda-a.env", "tokex-demo-b": "lambda-b.env"}
# `tokex local --regions`: how long a write waits before it reaches the other Regions, and
# how often replication looks for writes (each look scans every table in every Region).
DEFAULT_REPLICATION_DELAY_SECONDS = 1.0
REPLICATION_INTERVAL_SECONDS = 0.5


@dataclass
class LocalSystem:
    issuer: str
    imds: ImdsEmulator
    deployment: LocalDeployment
    state_dir: Path
    workload_env: Path
    stop: Callable[[], None]
    serve_forever: Callable[[], None]
    # The demo introspection client (what a gateway would be given) and its env file.
    introspection_client: tuple[str, str] = ("", "")
    introspection_env: Path | None = None
    # The front's functions by path, as it calls them (benchmarks call them directly).
    functions: Mapping[str, LambdaHandler] = field(default_factory=dict)
    # JWT evidence: the local issuers, the STS-compatible endpoint, the EKS token file.
    federation: LocalFederation | None = None
    # The demo Lambda functions' env files, by function name.
    lambda_envs: Mapping[str, Path] = field(default_factory=dict)
    # Several Regions: the replication of the policy and state tables, by table name
    # (pause, resume, flush); empty with one Region.
    replication: Replicators = field(default_factory=Replicators)
    front: FrontServer | None = None

    @property
    def regions(self) -> tuple[str, ...]:
        """Its Regions, home first."""
        return self.deployment.regions

    def handler_env(self, **overrides: str) -> dict[str, str]:
        """What the home Region's handlers read at cold start: the deployment's settings
        plus the local-only trust in the demo instance's certificate and the local JWT
        issuers."""
        return function_env(self.deployment, self.issuer, self.imds, self.regions[0], **overrides)

    def region_paths(self, region: str) -> frozenset[str]:
        """The front's paths that Region `region`'s functions answer: `/regions/<region>/token`
        and `.../introspect` with several Regions, and `/token` and `/introspect` for the
        home Region."""
        if region not in self.regions:
            raise ValueError(f"{region!r} is not one of this system's Regions {self.regions}")
        paths = {regional_path(region, path) for path in (TOKEN_PATH, INTROSPECT_PATH)}
        if region == self.regions[0]:
            paths |= {TOKEN_PATH, INTROSPECT_PATH}
        return frozenset(paths & self.functions.keys())

    def stop_region(self, region: str) -> None:
        """An outage of one Region, for tests and demos of failover: until `start_region`,
        its paths answer 503 `temporarily_unavailable` with `Retry-After`. Only its API
        stops: its functions stay warm and its tables keep replicating."""
        front = self._front()
        front.stopped_paths = front.stopped_paths | self.region_paths(region)

    def start_region(self, region: str) -> None:
        """Ends `stop_region`: the Region's paths reach its functions again."""
        front = self._front()
        front.stopped_paths = front.stopped_paths - self.region_paths(region)

    def _front(self) -> FrontServer:
        if self.front is None:
            raise RuntimeError("this system has no HTTP front")
        return self.front


def function_env(
    deployment: LocalDeployment, issuer: str, imds: ImdsEmulator, region: str, **overrides: str
) -> dict[str, str]:
    """The settings of Region `region`'s functions: that Region's clients, tables and key
    replica and, with several Regions, its TOKEX_SERVING_REGION
    (docs/security.md "Regional exchanges"). With one Region: nothing Regional."""
    regional = {SERVING_REGION_ENV: region} if len(deployment.regions) > 1 else {}
    return local_handler_env(deployment.in_region(region), issuer, imds, **regional, **overrides)


def local_handler_env(
    deployment: LocalDeployment, issuer: str, imds: ImdsEmulator, **overrides: str
) -> dict[str, str]:
    local_only = {
        "TOKEX_LOCAL_INSTANCE_CERTIFICATE": str(imds.certificate_path),
        "TOKEX_LOCAL_INSTANCE_REGIONS": REGION,
        # Plain-http loopback issuers: trusted by local mode only, as the certificate is.
        "TOKEX_TRUSTED_ISSUERS": local_trusted_issuers(issuer).to_json(),
    }
    return deployment.handler_env(issuer, **{**local_only, **overrides})


def start_local(
    *,
    port: int,
    state_dir: Path,
    signing_key_spec: str = "RSA_2048",
    moto: MotoServer | None = None,
    regions: Sequence[str] = (REGION,),
    replication_delay: float = DEFAULT_REPLICATION_DELAY_SECONDS,
) -> LocalSystem:
    """Bind the HTTP front, provision the emulator, publish the issuer documents.

    `regions`, home first: with several, each Region has its tables, key replicas and
    functions, and the tables replicate after `replication_delay` seconds
    (docs/local.md "Several Regions").

    The port is bound before anything else is started or written: a start that fails on
    a busy port (`PortUnavailable`) leaves the state directory as it found it, so an
    instance already running there keeps its files (its instance certificate above all).
    The front is bound but not yet serving: call `serve_forever` (in a thread, for tests).
    """
    try:
        server = bind_front(port)
    except PortUnavailable:
        if moto is not None:  # the caller's emulator: stopped on failure, as below
            moto.stop()
        raise
    undo = contextlib.ExitStack()  # what a failed start stops again, last started first
    undo.callback(server.server_close)
    if moto is not None:  # the caller's emulator: stopped on any failure from here on
        undo.callback(moto.stop)
    try:
        # It holds credentials that workload.env hands to a shell: this user's alone.
        open_private_dir(state_dir)
        # One system per directory: a second would replace the first's instance
        # certificate and env files under it.
        release_state_dir = _lock_state_dir(state_dir)
        undo.callback(release_state_dir)
        emulator = moto or ThreadMotoServer()
        if moto is None:
            undo.callback(emulator.stop)
        imds = ImdsEmulator(state_dir)
        undo.callback(imds.stop)
        deployment = provision(
            emulator.url,
            admin_token=emulator.admin_token,
            signing_key_spec=signing_key_spec,
            regions=regions,
        )
        issuer = f"http://127.0.0.1:{server.server_address[1]}"
        federation = start_federation(issuer, deployment, state_dir)
        undo.callback(federation.stop)
        server.local_documents = federation.documents(issuer)
        _load_functions(server, deployment, issuer, imds)
        workload_env, introspection_env, client = _write_state(
            state_dir, deployment, issuer, imds, federation.sts_url
        )
        lambda_envs = _write_lambda_envs(state_dir, deployment, issuer, federation.sts_url)
        replication = _replication(deployment, replication_delay)
        undo.callback(replication.stop)
        # The demo policies and introspection client, in every Region before any request.
        replication.flush()
        replication.start()
    except BaseException:
        undo.close()
        raise

    stopped, serving = threading.Event(), threading.Event()

    def serve_forever() -> None:
        serving.set()
        server.serve_forever()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            # shutdown() waits for a serving loop to end: one never started never would.
            # A shutdown asked just before the loop starts still ends it at once.
            if serving.is_set():
                server.shutdown()
            server.server_close()
            replication.stop()
            federation.stop()
            imds.stop()
            emulator.stop()
            release_state_dir()

    return LocalSystem(
        issuer,
        imds,
        deployment,
        state_dir,
        workload_env,
        stop,
        serve_forever,
        introspection_client=client,
        introspection_env=introspection_env,
        functions=server.functions,
        federation=federation,
        lambda_envs=lambda_envs,
        replication=replication,
        front=server,
    )


class StateDirectoryInUse(Exception):
    """Another local system is running on this state directory."""


LOCK_FILE = ".lock"


def _lock_state_dir(state_dir: Path) -> Callable[[], None]:
    """Take an exclusive lock on `state_dir` (an advisory `flock`, let go when the process
    ends however it ends); returns the function that lets it go. Refused at once with
    `StateDirectoryInUse` when another process or system holds it."""
    import fcntl

    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip()
        os.close(fd)
        by = f" (process {holder})" if holder.isdigit() else ""
        raise StateDirectoryInUse(
            f"{state_dir} is in use by another tokex local{by}: stop it or pass another --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    released = threading.Lock()

    def release() -> None:
        if released.acquire(blocking=False):
            os.close(fd)  # closing the descriptor lets the lock go

    return release


def _load_functions(
    server: FrontServer, deployment: LocalDeployment, issuer: str, imds: ImdsEmulator
) -> None:
    """Cold-start the handlers behind the front and publish the issuer documents.

    Each Region has its own exchange and introspect functions, at `/regions/<region>/...`
    when there are several; the home Region's also answer `/token` and `/introspect`."""
    home, *others = deployment.regions
    for region in deployment.regions:
        # The handlers read their settings from the environment at cold start, as they do
        # when deployed; everything they need (clients included) is captured then.
        with handler_environment(function_env(deployment, issuer, imds, region)):
            functions = {
                TOKEN_PATH: load_handler("exchange").lambda_handler,
                INTROSPECT_PATH: load_handler("introspect").lambda_handler,
            }
        for path, handler in functions.items():
            if others:
                server.functions[regional_path(region, path)] = handler
            if region == home:
                server.functions[path] = handler
    # One publisher, the home Region's: one JWKS (a multi-Region key's replicas share its
    # material, so one kid) and a discovery document listing every Region's endpoints.
    served = {"TOKEX_SERVED_REGIONS": ",".join(deployment.regions)} if others else {}
    with handler_environment(local_handler_env(deployment, issuer, imds, **served)):
        publisher = load_handler("jwks_publisher")
    with HANDLER_LOCK:  # handler code, while another system's front may be serving
        publisher.lambda_handler({"source": "tokex.local"}, LambdaContext("tokex-jwks-publisher"))
    server.documents = s3_documents(deployment.client("s3"), deployment.jwks_bucket)


def _replication(deployment: LocalDeployment, delay: float) -> Replicators:
    """The policy and state tables replicated between the Regions, both ways, as global
    tables are; nothing with one Region."""
    if len(deployment.regions) < 2:
        return Replicators()
    clients = {r: deployment.in_region(r).client("dynamodb") for r in deployment.regions}
    return Replicators(
        {
            table: Replicator(
                clients,
                dict.fromkeys(deployment.regions, table),
                delay=delay,
                interval=REPLICATION_INTERVAL_SECONDS,
            )
            for table in (deployment.policy_table, deployment.state_table)
        }
    )


def _write_state(
    state_dir: Path, deployment: LocalDeployment, issuer: str, imds: ImdsEmulator, sts_url: str
) -> tuple[Path, Path, tuple[str, str]]:
    """The env files of the state directory: (workload.env, introspection-client.env,
    the demo introspection client's id and secret)."""
    workload_env = state_dir / "workload.env"
    # The SDK's STS calls (GetWebIdentityToken, GetCallerIdentity) go to the local
    # STS-compatible endpoint; tokex's own SigV4 evidence is still signed for STS's host.
    sts_env = {"AWS_ENDPOINT_URL_STS": sts_url}
    workload_extra = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url, **sts_env}
    _write_env(
        workload_env,
        deployment.workload,
        issuer,
        "demo role session",
        workload_extra,
        region=deployment.region,
    )
    _write_env(
        state_dir / "user.env",
        deployment.user,
        issuer,
        "demo IAM user",
        sts_env,
        region=deployment.region,
    )
    # For `tokex policy ... --table tokex-policies` and friends against the emulator.
    operator_env = {"AWS_ENDPOINT_URL": deployment.endpoint_url}
    _write_env(
        state_dir / "operator.env",
        deployment.service,
        issuer,
        "operator",
        operator_env,
        region=deployment.region,
    )
    client_id, secret = _demo_introspection_client(deployment)
    introspection_env = state_dir / "introspection-client.env"
    _write_lines(
        introspection_env,
        [
            "# tokex local: the demo introspection client (emulator only, not real AWS)",
            f"export TOKEX_INTROSPECTION_ENDPOINT={issuer}/introspect",
            f"export TOKEX_INTROSPECTION_CLIENT_ID={client_id}",
            f"export TOKEX_INTROSPECTION_CLIENT_SECRET={secret}",
            f"export TOKEX_INTROSPECTION_AUTHORIZATION='{basic_authorization(client_id, secret)}'",
        ],
    )
    return workload_env, introspection_env, (client_id, secret)


def _write_lambda_envs(
    state_dir: Path, deployment: LocalDeployment, issuer: str, sts_url: str
) -> dict[str, Path]:
    """One env file per demo Lambda function: sessions of one role, told apart only by
    the function ARN in their GetWebIdentityToken tokens."""
    paths = {}
    for name, credentials in deployment.lambdas.items():
        path = state_dir / LAMBDA_ENV_FILES[name]
        what = f"demo Lambda function {name} (role {DEMO_LAMBDA_ROLE_NAME})"
        _write_env(
            path,
            credentials,
            issuer,
            what,
            {"AWS_ENDPOINT_URL_STS": sts_url},
            region=deployment.region,
        )
        paths[name] = path
    return paths


def _demo_introspection_client(deployment: LocalDeployment) -> tuple[str, str]:
    """A fresh client (id, secret) in the state table, made with the service's own
    credentials, like `tokex clients add` would; it may introspect the demo audiences'
    tokens (RFC 7662 §4: a client sees only its own audiences)."""
    store = ClientStore(deployment.client("dynamodb"), deployment.state_table)
    client, secret = store.add("demo-gateway", audiences=(DEMO_AUDIENCE, DEMO_INSTANCE_AUDIENCE))
    return client.client_id, secret


def _write_env(
    path: Path,
    credentials: Credentials,
    issuer: str,
    what: str,
    extra: dict[str, str],
    *,
    region: str,
) -> None:
    """The home Region's: `region` is what the SDK signs for, `TOKEX_ENDPOINT` the issuer
    (whose `/token` is the home Region's exchange)."""
    lines = [f"# tokex local: credentials of the {what} (emulator only, not real AWS)"]
    env = {
        **credentials.env(),
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "TOKEX_ENDPOINT": issuer,
        **extra,
    }
    lines += [f"export {name}={value}" for name, value in env.items()]
    if not credentials.session_token:
        lines.append("unset AWS_SESSION_TOKEN")
    # What another of these files sets: sourced one after another in one shell, the
    # Lambda's would keep the EC2 demo's IMDS, the operator's the local STS endpoint.
    lines += [f"unset {name}" for name in _SET_BY_SOME_ENV_FILES if name not in env]
    _write_lines(path, lines)


_SET_BY_SOME_ENV_FILES = (
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL",
)


def _write_lines(path: Path, lines: list[str]) -> None:
    """A file only its owner can read: it holds credentials."""
    write_private(path, "\n".join(lines) + "\n")


@contextlib.contextmanager
def handler_environment(env: Mapping[str, str]) -> Iterator[None]:
    """The process environment a handler sees at its cold start, restored afterwards."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
