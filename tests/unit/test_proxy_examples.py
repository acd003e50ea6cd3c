"""The tokex proxy as a sidecar in an ECS task, an EKS pod and an EC2 systemd unit
(examples/proxy/README.md says what each file is), checked without those platforms.

- the task definition: botocore's parameter validation of `ecs.register_task_definition`
  (what the AWS CLI and SDKs check before they send it; no network), the enumerated
  values against botocore's ECS model (which that validation leaves out), and the wiring;
- the pod: `kubernetes-validate` (the Kubernetes JSON schemas it bundles, strict: an
  unknown field is an error), for 1.29 (native sidecars) and the latest it bundles;
- the unit: `systemd-analyze verify` and `security --offline` where systemd is installed
  (Debian's `systemd`, which the python machine image has); skipped elsewhere;
- the TOML files and the flags against the configuration format of `tokex proxy`, the
  Dockerfile's paths and user, the README's policies, and the health check command run
  against a loopback stand-in for the proxy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator

from tests.support.loopback import LoopbackServer, QuietHandler, serving
from tests.support.tls import make_pki
from tokex.cli.policy_document import document_errors
from tokex.proxy.config import ProxyConfig
from tokex.proxy.connections import descriptors_needed

try:
    import kubernetes_validate
except ImportError:  # the dev extra not yet reinstalled
    kubernetes_validate = None

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "proxy"
CI = os.environ.get("CI", "").lower() == "true"

# The configuration file of `tokex proxy --config` (TOML or JSON).
TOP_KEYS = frozenset({"endpoint", "listen", "evidence", "token_file", "secret_file", "routes"})
ROUTE_KEYS = frozenset({"prefix", "upstream", "audience", "scopes", "evidence", "ca_file"})
EVIDENCE = frozenset({"sigv4", "aws-oif", "eks"})
LOOPBACK_LISTEN = re.compile(r"127\.0\.0\.1:(?P<port>[1-9][0-9]{0,4})")
HEALTH_PATH = "/.tokex/health"
JSON = "application/json"

# The single-route flags of `tokex proxy`: each takes a value; --scope may repeat.
TOP_FLAGS = {
    "--endpoint": "endpoint",
    "--listen": "listen",
    "--evidence": "evidence",
    "--token-file": "token_file",
}
ROUTE_FLAGS = {"--upstream": "upstream", "--audience": "audience", "--ca-file": "ca_file"}

requires_kubernetes_validate = pytest.mark.skipif(
    kubernetes_validate is None and not CI,
    reason="kubernetes-validate is not installed (the dev extra: pip install -e '.[dev]')",
)
SYSTEM_UNITS = Path("/usr/lib/systemd/system")
UNIT = "tokex-proxy.service"
# Skipped without systemd, under CI=true too: the unit is checked where systemd exists.
requires_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
    reason="systemd-analyze is not installed (Debian package systemd)",
)


def config_problems(config: dict[str, Any]) -> list[str]:
    """What does not fit the proxy's configuration format, or these examples' rules: only
    known keys, an https endpoint and upstreams, a loopback listen address."""
    found = [f"unknown key {key!r}" for key in config if key not in TOP_KEYS]
    found += [f"missing {key!r}" for key in ("endpoint", "listen", "routes") if key not in config]
    if not str(config.get("endpoint", "")).startswith("https://"):
        found.append("endpoint is not an https URL")
    if not LOOPBACK_LISTEN.fullmatch(str(config.get("listen", ""))):
        found.append("listen is not a 127.0.0.1 address")
    routes = config.get("routes")
    if not isinstance(routes, list) or not routes:
        return [*found, "routes is not a non-empty list"]
    kinds = {config.get("evidence", "sigv4")}
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        found += [f"{where}: unknown key {key!r}" for key in route if key not in ROUTE_KEYS]
        found += [
            f"{where}: missing {key!r}"
            for key in ("prefix", "upstream", "audience")
            if key not in route
        ]
        if not str(route.get("prefix", "")).startswith("/"):
            found.append(f"{where}: prefix does not start with /")
        if not str(route.get("upstream", "")).startswith("https://"):
            found.append(f"{where}: upstream is not an https URL")
        scopes = route.get("scopes", [])
        if not (isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)):
            found.append(f"{where}: scopes is not a list of strings")
        kinds.add(route.get("evidence", config.get("evidence", "sigv4")))
    found += [f"unknown evidence {kind!r}" for kind in sorted(kinds - EVIDENCE)]
    if "token_file" in config and "eks" not in kinds:
        found.append("token_file without eks evidence")
    return found


def config_from_flags(arguments: list[str]) -> dict[str, Any]:
    """The configuration that the single-route flags say, in the file's form (the route's
    prefix is "/"). A flag that is not one of them (--config, --allow-non-loopback) fails."""
    config: dict[str, Any] = {}
    route: dict[str, Any] = {"prefix": "/"}
    assert len(arguments) % 2 == 0, f"a flag without its value: {arguments}"
    for flag, value in zip(arguments[::2], arguments[1::2], strict=True):
        if flag in TOP_FLAGS:
            config[TOP_FLAGS[flag]] = value
        elif flag in ROUTE_FLAGS:
            route[ROUTE_FLAGS[flag]] = value
        elif flag == "--scope":
            route.setdefault("scopes", []).append(value)
        else:
            raise AssertionError(f"not a single-route flag of tokex proxy: {flag} {value}")
    return {**config, "routes": [route]}


def toml(name: str) -> dict[str, Any]:
    return tomllib.loads((EXAMPLES / name).read_text(encoding="utf-8"))


def task_definition() -> dict[str, Any]:
    return json.loads((EXAMPLES / "ecs-task-definition.json").read_text(encoding="utf-8"))


def containers(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {container["name"]: container for container in task["containerDefinitions"]}


def pod() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "eks-pod.yaml").read_text(encoding="utf-8"))


def pod_containers(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = manifest["spec"]
    return {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}


def health_snippet(command: list[str]) -> str:
    """The Python program of a health check command (`python3 -c PROGRAM`)."""
    assert command[:2] == ["python3", "-c"] and len(command) == 3, command
    return command[2]


# -- The configuration files -------------------------------------------------------------


def test_the_toml_files_name_only_keys_of_the_config_format() -> None:
    for name in ("ecs-proxy.toml", "ec2-proxy.toml"):
        assert config_problems(toml(name)) == [], name


def test_the_config_check_finds_what_it_looks_for() -> None:
    """Not vacuous: a typo of a key, a missing one, a public listen address."""
    config = toml("ec2-proxy.toml")
    config["listen"] = "0.0.0.0:8080"
    config["token_file"] = "/var/run/secrets/tokex/serviceaccount/token"
    route = config["routes"][0]
    route["scope"] = route.pop("scopes")
    del route["audience"]
    assert config_problems(config) == [
        "listen is not a 127.0.0.1 address",
        "routes[0]: unknown key 'scope'",
        "routes[0]: missing 'audience'",
        "token_file without eks evidence",
    ]


def test_the_proxy_itself_loads_every_example_configuration(tmp_path: Path) -> None:
    """With `tokex proxy`'s own parser: both files and the flags of the task and the pod
    (the files they name made here: a CA bundle, an EKS token)."""
    assert ProxyConfig.from_file(EXAMPLES / "ecs-proxy.toml", environ={}).endpoint
    ec2 = (EXAMPLES / "ec2-proxy.toml").read_text(encoding="utf-8")
    ca_file = str(make_pki(tmp_path).ca_file)
    assert toml("ec2-proxy.toml")["routes"][0]["ca_file"] in ec2
    ec2 = ec2.replace(toml("ec2-proxy.toml")["routes"][0]["ca_file"], ca_file)
    (tmp_path / "proxy.toml").write_text(ec2, encoding="utf-8")
    assert ProxyConfig.from_file(tmp_path / "proxy.toml", environ={}).routes[0].ca_file == ca_file
    token_file = tmp_path / "token"
    token_file.write_text("eyJ.e30.c2ln", encoding="utf-8")
    arguments = {
        "ecs": containers(task_definition())["tokex-proxy"]["command"],
        "eks": pod_containers(pod())["tokex-proxy"]["args"],
    }
    for platform, flags in arguments.items():
        config = config_from_flags(flags)
        (route,) = config.pop("routes")
        del route["prefix"]  # the flags' one route is "/"
        if "token_file" in config:
            config["token_file"] = str(token_file)
        loaded = ProxyConfig.from_args(**config, **route, environ={})
        assert loaded.routes[0].prefix == "/", platform


# -- ECS -------------------------------------------------------------------------------


def enum_problems(value: Any, shape: Any, where: str = "") -> Iterator[str]:
    """Each string of `value` that is not one of its shape's enumerated values."""
    if shape.type_name == "structure" and isinstance(value, dict):
        for key, member in value.items():
            if key in shape.members:
                yield from enum_problems(member, shape.members[key], f"{where}.{key}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from enum_problems(item, shape.member, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            yield from enum_problems(item, shape.value, f"{where}[{key}]")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        yield f"{where.lstrip('.')}: {value!r} is not one of {shape.enum}"


def register_task_definition_problems(task: dict[str, Any]) -> list[str]:
    """What botocore would refuse before sending `ecs.register_task_definition`, and the
    enumerated values of its model that the parameter validation does not check."""
    operation = botocore.session.get_session().get_service_model("ecs")
    shape = operation.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(task, shape)
    found = report.generate_report().splitlines() if report.has_errors() else []
    return found + list(enum_problems(task, shape))


def test_the_task_definition_passes_botocore_validation() -> None:
    assert register_task_definition_problems(task_definition()) == []


def test_botocore_validation_finds_what_it_looks_for() -> None:
    task = task_definition()
    proxy = containers(task)["tokex-proxy"]
    proxy["essentail"] = True
    proxy["healthCheck"]["interval"] = "10"
    containers(task)["app"]["dependsOn"][0]["condition"] = "HEALTHY_"
    problems = register_task_definition_problems(task)
    assert len(problems) == 3, problems
    assert 'Unknown parameter in containerDefinitions[1]: "essentail"' in problems[0]
    assert "containerDefinitions[1].healthCheck.interval" in problems[1]
    assert problems[2].startswith("containerDefinitions[0].dependsOn[0].condition: 'HEALTHY_'")


def test_the_task_runs_the_proxy_as_an_essential_healthy_sidecar() -> None:
    task = task_definition()
    by_name = containers(task)
    app, proxy = by_name["app"], by_name["tokex-proxy"]
    config = config_from_flags(proxy["command"])
    assert task["networkMode"] == "awsvpc"  # one loopback for the task's containers
    assert task["taskRoleArn"].startswith("arn:aws:iam::")  # the proxy's credentials
    assert config["evidence"] in {"sigv4", "aws-oif"}  # what a task role can sign for
    assert app["essential"] is True and proxy["essential"] is True
    assert app["dependsOn"] == [{"containerName": "tokex-proxy", "condition": "HEALTHY"}]
    assert app["environment"] == [{"name": "ORDERS_URL", "value": f"http://{config['listen']}"}]
    check = proxy["healthCheck"]["command"]
    assert check[0] == "CMD"
    assert f"http://{config['listen']}{HEALTH_PATH}" in health_snippet(check[1:])
    assert "portMappings" not in proxy  # reachable from the task only
    assert proxy["user"].split(":")[0] != "0" and proxy["readonlyRootFilesystem"] is True
    assert proxy["linuxParameters"]["capabilities"]["drop"] == ["ALL"]


def _dockerfile_env(name: str) -> str:
    for line in (EXAMPLES / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith(f"ENV {name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"the Dockerfile sets no {name}")


def test_the_proxy_starts_on_the_examples_read_only_root(tmp_path: Path) -> None:
    """Both containers run it on a read-only root filesystem, and it writes its secret file
    on start: with nowhere to write it exited, so the ECS task never became healthy and
    the pod's sidecar crash-looped. The image's XDG_RUNTIME_DIR is the one volume each
    mounts; here / is remounted read-only, that directory a tmpfs, and the task's flags
    started."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to remount / read-only in a namespace")
    runtime_dir = _dockerfile_env("XDG_RUNTIME_DIR")
    proxy = containers(task_definition())["tokex-proxy"]
    assert proxy["mountPoints"] == [{"sourceVolume": "tokex-run", "containerPath": runtime_dir}]
    scratch = tmp_path / "run-tokex"  # stands for the task's volume at runtime_dir
    scratch.mkdir()
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    flags = [f"127.0.0.1:{port}" if v == config_from_flags(proxy["command"])["listen"] else v
             for v in proxy["command"]]  # fmt: skip
    tokex = str(Path(sys.executable).with_name("tokex"))
    script = (
        f"mount -o remount,bind,ro / && mount -t tmpfs tmpfs {scratch} && exec env -i "
        f"PATH=/usr/bin:/bin XDG_RUNTIME_DIR={scratch} PYTHONDONTWRITEBYTECODE=1 "
        f"AWS_REGION=eu-west-1 {tokex} proxy " + " ".join(flags)
    )
    started = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        health = None
        for _ in range(200):
            if started.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTH_PATH}", timeout=2):
                    health = "up"
                    break
            except OSError:
                time.sleep(0.05)
    finally:
        started.terminate()
        output, _ = started.communicate(timeout=30)
    assert health == "up", output


def test_the_task_definition_holds_no_secret() -> None:
    """The task role is the proxy's only credential: no secrets, no environment files, no
    registry credentials, and no variable that names or holds a key or token."""
    task = task_definition()
    for container in task["containerDefinitions"]:
        for key in ("secrets", "environmentFiles", "repositoryCredentials"):
            assert key not in container, (container["name"], key)
        for variable in container.get("environment", []):
            assert not re.search(r"SECRET|TOKEN|PASSWORD|KEY|CREDENTIAL", variable["name"])
            assert not re.match(r"(AKIA|ASIA)[A-Z0-9]{16}$|eyJ", variable["value"]), variable


def test_the_task_definition_flags_say_what_ecs_proxy_toml_says() -> None:
    proxy = containers(task_definition())["tokex-proxy"]
    assert config_from_flags(proxy["command"]) == toml("ecs-proxy.toml")


# -- EKS -------------------------------------------------------------------------------


def kubernetes_problems(manifest: dict[str, Any], version: str) -> list[str]:
    assert kubernetes_validate is not None, "kubernetes-validate is not installed"
    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


@requires_kubernetes_validate
def test_the_pod_passes_the_kubernetes_schemas() -> None:
    """1.29, the first release with native sidecars on by default, and the latest."""
    assert kubernetes_validate is not None, "kubernetes-validate is not installed"
    for version in ("1.29.0", kubernetes_validate.latest_version()):
        assert kubernetes_problems(pod(), version) == [], version


@requires_kubernetes_validate
def test_the_kubernetes_schemas_find_what_they_look_for() -> None:
    manifest = pod()
    proxy = pod_containers(manifest)["tokex-proxy"]
    proxy["readinesProbe"] = proxy.pop("readinessProbe")
    assert "Additional properties are not allowed" in kubernetes_problems(manifest, "1.29.0")[0]
    manifest = pod()
    manifest["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"][
        "expirationSeconds"
    ] = "3600"
    assert "is not of type 'integer'" in kubernetes_problems(manifest, "1.29.0")[0]


def test_the_proxy_is_a_native_sidecar_with_the_projected_token() -> None:
    manifest = pod()
    spec = manifest["spec"]
    by_name = pod_containers(manifest)
    app, proxy = by_name["app"], by_name["tokex-proxy"]
    assert [c["name"] for c in spec["initContainers"]] == ["tokex-proxy"]
    assert proxy["restartPolicy"] == "Always"
    config = config_from_flags(proxy["args"])
    assert config_problems(config) == []
    assert config["evidence"] == "eks"
    assert config["routes"] == toml("ecs-proxy.toml")["routes"]  # the same API as the task
    volume, scratch = spec["volumes"]
    (source,) = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["audience"] == config["endpoint"]  # the tokex issuer, exactly
    assert token["expirationSeconds"] == 3600
    mount, scratch_mount = proxy["volumeMounts"]
    assert mount == {
        "name": volume["name"],
        "mountPath": "/var/run/secrets/tokex/serviceaccount",
        "readOnly": True,
    }
    # The one place it writes under the read-only root: the image's XDG_RUNTIME_DIR.
    assert scratch == {"name": "tokex-run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}
    assert scratch_mount == {"name": "tokex-run", "mountPath": "/run/tokex"}
    assert config["token_file"] == f"{mount['mountPath']}/{token['path']}"
    assert "volumeMounts" not in app  # the app never sees the token
    assert spec["automountServiceAccountToken"] is False
    assert app["env"] == [{"name": "ORDERS_URL", "value": f"http://{config['listen']}"}]
    for probe in ("startupProbe", "readinessProbe"):
        snippet = health_snippet(proxy[probe]["exec"]["command"])
        assert f"http://{config['listen']}{HEALTH_PATH}" in snippet, probe


def test_the_pod_is_hardened() -> None:
    manifest = pod()
    pod_context = manifest["spec"]["securityContext"]
    assert pod_context["runAsNonRoot"] is True and pod_context["runAsUser"] != 0
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    for name, container in pod_containers(manifest).items():
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"] == {"drop": ["ALL"]}, name
        assert "privileged" not in context and "runAsUser" not in context, name


# -- The health check --------------------------------------------------------------------


def test_the_health_check_command_tells_the_proxys_health() -> None:
    """The ECS health check and the pod's probes run one program: against a loopback
    stand-in for the proxy, it asks /.tokex/health and exits 0 on 200 only."""
    ecs = containers(task_definition())["tokex-proxy"]["healthCheck"]["command"][1:]
    proxy = pod_containers(pod())["tokex-proxy"]
    snippets = {
        health_snippet(ecs),
        *(health_snippet(proxy[p]["exec"]["command"]) for p in ("startupProbe", "readinessProbe")),
    }
    assert len(snippets) == 1
    (snippet,) = snippets
    status = [200]
    asked: list[str] = []

    class StandIn(QuietHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_document(status[0], b'{"status": "ok"}', {"Content-Type": JSON})

    def check(program: str) -> int:
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
        return run.returncode

    with serving(LoopbackServer(StandIn)) as server:
        program = snippet.replace("http://127.0.0.1:8080", server.url)
        assert program != snippet
        healthy = check(program)
        status[0] = 503
        unhealthy = check(program)
    assert (healthy, unhealthy) == (0, 1)
    assert asked == [HEALTH_PATH, HEALTH_PATH]


# -- EC2: the systemd unit -----------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Each section's settings, every value of a key that repeats (Environment=) kept."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and not line.endswith("\\"), line
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_text() -> str:
    return (EXAMPLES / UNIT).read_text(encoding="utf-8")


def test_the_unit_runs_the_proxy_hardened() -> None:
    service = unit_settings(unit_text())["Service"]
    assert service["ExecStart"] == ["/usr/local/bin/tokex proxy --config /etc/tokex/proxy.toml"]
    assert service["Restart"] == ["on-failure"]
    for key, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RuntimeDirectory": "tokex",
    }.items():
        assert service.get(key) == [value], key
    config = toml("ec2-proxy.toml")
    # The secret file is in the one directory the unit lets the proxy write.
    assert Path(config["secret_file"]).parent == Path("/run") / service["RuntimeDirectory"][0]
    assert config.get("evidence", "sigv4") == "sigv4"  # the instance profile signs


def test_the_unit_allows_the_descriptors_of_every_connection() -> None:
    """systemd's default soft limit (1024) would leave room for fewer connections than the
    proxy's 1,024 (tokex/proxy/connections.py)."""
    [limit] = unit_settings(unit_text())["Service"]["LimitNOFILE"]
    assert int(limit) >= descriptors_needed(len(toml("ec2-proxy.toml")["routes"]))


def systemd_root(tmp_path: Path, unit: str) -> Path:
    """A root for `systemd-analyze --root`: the system's own units, `unit` installed, and
    /usr/local/bin/tokex (where the README installs it) as a stand-in executable."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "etc" / "systemd" / "system" / UNIT).write_text(unit, encoding="utf-8")
    tokex = root / "usr" / "local" / "bin" / "tokex"
    tokex.parent.mkdir(parents=True)
    tokex.write_text("#!/bin/sh\n", encoding="utf-8")
    tokex.chmod(0o755)
    return root


def systemd_analyze(root: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *arguments, f"--root={root}", UNIT],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@requires_systemd_analyze
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """No error and no warning: an unknown key or a bad value is only a warning."""
    result = systemd_analyze(systemd_root(tmp_path, unit_text()), "verify")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@requires_systemd_analyze
def test_systemd_analyze_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = unit_text().replace("ProtectSystem=strict", "ProtectSystem=strickt")
    bad = bad.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    result = systemd_analyze(systemd_root(tmp_path / "bad", bad), "verify")
    assert "Unknown key 'NoNewPrivilege'" in result.stderr
    assert "strickt" in result.stderr
    root = systemd_root(tmp_path / "no-tokex", unit_text())
    (root / "usr" / "local" / "bin" / "tokex").unlink()
    result = systemd_analyze(root, "verify")
    assert result.returncode != 0 and "/usr/local/bin/tokex" in result.stderr


@requires_systemd_analyze
def test_the_unit_sandbox_keeps_the_exposure_low(tmp_path: Path) -> None:
    """`systemd-analyze security`: exposure at most 2.5 of 10 (systemd 252 scores the unit
    1.7, "OK"; without the sandbox options a service scores 9.6, "UNSAFE")."""
    root = systemd_root(tmp_path, unit_text())
    result = systemd_analyze(root, "security", "--offline=true", "--threshold=25", "--no-pager")
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, overall or result.stderr


# -- The Dockerfile and the README ---------------------------------------------------------


def test_the_dockerfile_installs_this_repository_into_python_slim() -> None:
    lines = [
        line.strip()
        for line in (EXAMPLES / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    instructions = [line.split(None, 1) for line in lines]
    assert {rest.split()[0] for op, rest in instructions if op == "FROM"} == {"python:3.13-slim"}
    sources = [
        source
        for op, rest in instructions
        if op == "COPY" and not rest.startswith("--from=")
        for source in rest.split()[:-1]
    ]
    assert {"pyproject.toml", "setup.py", "layers/core", "functions"} <= set(sources)
    assert all((ROOT / source).exists() for source in sources), sources
    # The context is the repository root: everything else stays out of it.
    rules = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert rules[0] == "*"
    assert {rule[1:] for rule in rules if rule.startswith("!")} == set(sources)
    (user,) = [rest for op, rest in instructions if op == "USER"]
    uid = int(user.split(":")[0])
    assert uid != 0
    assert pod()["spec"]["securityContext"]["runAsUser"] == uid
    assert containers(task_definition())["tokex-proxy"]["user"] == user
    (entrypoint,) = [rest for op, rest in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tokex", "proxy"]  # exec form: flags are appended


def readme() -> str:
    return (EXAMPLES / "README.md").read_text(encoding="utf-8")


def test_the_readme_explains_every_file() -> None:
    text = readme()
    for path in sorted(EXAMPLES.iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}`" in text, path.name


def test_the_readme_policies_are_valid_and_name_the_examples_callers() -> None:
    blocks = re.findall(r"^```json\n(.*?)^```", readme(), re.MULTILINE | re.DOTALL)
    policies = {policy["id"]: policy for policy in map(json.loads, blocks)}
    assert set(policies) == {"orders-client-ecs", "orders-client-eks", "orders-client-ec2"}
    for policy in policies.values():
        assert document_errors(policy, ttl_cap=3600) == [], policy["id"]
        assert policy["audiences"] == [toml("ecs-proxy.toml")["routes"][0]["audience"]]
    assert policies["orders-client-ecs"]["principals"] == [task_definition()["taskRoleArn"]]
    manifest = pod()
    eks = policies["orders-client-eks"]["eks"]
    assert eks["namespaces"] == [manifest["metadata"]["namespace"]]
    assert eks["service_accounts"] == [manifest["spec"]["serviceAccountName"]]
