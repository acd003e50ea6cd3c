"""The proxy extension layer (cdk/extension_layer.py): its asset, its resource and output,
and the construct that adds it to a user's function."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cdk.extension_layer import (
    RUNTIME_MODULES,
    SITE,
    ExtensionLayerBundling,
    import_closure,
)
from tests.infra import checks
from tests.infra.conftest import Synthesized
from tests.support.lambda_extensions_api import ExtensionsApiEmulator
from tests.support.ports import free_port
from tokex.extension.main import (
    ENDPOINT_VARIABLE,
    LISTEN_VARIABLE,
    ROUTES_VARIABLE,
    URL_VARIABLE,
)

pytestmark = pytest.mark.infra

LAYER = "ProxyExtensionLayer/Layer"
ISSUER = "https://auth.example.com"
ROUTE = {"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders"}
RUNTIMES = ["python3.11", "python3.12", "python3.13"]
# Stated here independently of the recipe: what the extension never ships.
NEVER_SHIPPED = ("cli", "local", "kong.py", "adapters", "wiring.py", "exchange.py", "policy")


@pytest.fixture(scope="module")
def asset(default_synth: Synthesized) -> Path:
    return default_synth.layer_dir(LAYER)


def test_the_launcher_is_an_executable_named_like_the_extension(asset: Path) -> None:
    launcher = asset / "extensions" / "tokex-proxy"
    assert launcher.is_file()
    mode = launcher.stat().st_mode
    assert mode & stat.S_IXUSR and mode & stat.S_IXGRP and mode & stat.S_IXOTH
    text = launcher.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    assert "/var/lang/bin/python3" in text
    assert text.rstrip().endswith('exec "$python" -m tokex.extension')
    # Only these two folders: nothing lands on the function's /opt/python import path.
    assert sorted(p.name for p in asset.iterdir()) == ["extensions", SITE]


def test_the_extension_package_is_in_its_own_site(asset: Path) -> None:
    site = asset / SITE
    assert (site / "tokex" / "extension" / "__main__.py").is_file()
    assert (site / "tokex" / "extension" / "main.py").is_file()
    assert (site / "tokex" / "proxy" / "server.py").is_file()
    for name in NEVER_SHIPPED:
        assert not (site / "tokex" / name).exists(), name
    shipped = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert shipped and not shipped & {"boto3", "botocore", "s3transfer", "cryptography"}


def test_the_layer_is_pure_python(asset: Path) -> None:
    """One build for x86_64 and arm64: no native code, every wheel `py3-none-any`."""
    native = [p for p in asset.rglob("*") if p.suffix in (".so", ".pyd") or ".so." in p.name]
    assert native == []
    for wheel in (asset / SITE).glob("*.dist-info/WHEEL"):
        lines = wheel.read_text(encoding="utf-8").splitlines()
        assert "Root-Is-Purelib: true" in lines, wheel
        tags = [line.split(": ", 1)[1] for line in lines if line.startswith("Tag: ")]
        assert tags and all(t.endswith("-none-any") for t in tags), (wheel, tags)


def test_the_layer_ships_bytecode_for_each_runtime_found_here(asset: Path) -> None:
    compilers = ExtensionLayerBundling().compilers
    cache = asset / SITE / "tokex" / "extension" / "__pycache__"
    for compiler in compilers:
        assert (cache / f"main.{compiler.cache_tag}.pyc").is_file(), compiler


def test_the_layer_resource_and_output(default_synth: Synthesized) -> None:
    template = default_synth.template
    layer = checks.resource(template, LAYER)["Properties"]
    assert sorted(layer["CompatibleArchitectures"]) == ["arm64", "x86_64"]
    assert layer["CompatibleRuntimes"] == RUNTIMES
    template.has_output("ProxyExtensionLayerArn", {"Value": checks.ref(template, LAYER)})
    # Workloads pin that version: a new one leaves it in place.
    retained = checks.resource(template, LAYER)
    assert (retained["DeletionPolicy"], retained["UpdateReplacePolicy"]) == ("Retain", "Retain")
    # The core layer is unchanged: arm64, the functions' runtime.
    core = checks.resource(template, "CoreLayer/Layer")["Properties"]
    assert core["CompatibleArchitectures"] == ["arm64"]
    assert core["CompatibleRuntimes"] == [checks.RUNTIME]


def test_the_import_closure_is_the_proxy_and_the_client() -> None:
    modules, third_party = import_closure()
    assert "tokex.extension.main" in modules and "tokex.proxy.server" in modules
    packages = {".".join(m.split(".")[:2]) for m in modules}
    assert not packages & {"tokex.cli", "tokex.local", "tokex.adapters", "tokex.wiring"}
    # requests/httpx are the client's optional, lazily imported auth classes.
    assert not third_party & {"requests", "httpx", "anyio", "aws_lambda_powertools"}


def runtime_stand_in(tmp_path: Path) -> Path:
    """A folder with only what a Python runtime's site-packages has (the AWS SDK and its
    dependencies), linked from this venv."""
    import botocore

    venv_site = Path(botocore.__file__).parent.parent
    folder = tmp_path / "runtime-site-packages"
    folder.mkdir()
    for name in [*RUNTIME_MODULES, "urllib3"]:
        for source in (venv_site / name, venv_site / f"{name}.py"):
            if source.exists():
                (folder / source.name).symlink_to(source)
    return folder


def python_shim(tmp_path: Path) -> Path:
    """A `python3` on PATH that is this interpreter without its site-packages (-S)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python3"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    return bin_dir


def test_the_layer_alone_imports_the_extension(asset: Path, tmp_path: Path) -> None:
    """With the runtime's site-packages and nothing else, every module the extension
    imports comes from the layer or the runtime."""
    probe = (
        "import sys, tokex.extension.main, tokex.proxy.server\n"
        "for module in list(sys.modules.values()):\n"
        "    print(getattr(module, '__file__', None) or '')\n"
    )
    runtime = runtime_stand_in(tmp_path)
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": f"{asset / SITE}:{runtime}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    stdlib = Path(os.__file__).parent
    files = [Path(f) for f in result.stdout.splitlines() if f]
    outside = [
        f for f in files if not f.is_relative_to(stdlib) and not f.is_relative_to(asset / SITE)
        and not f.is_relative_to(runtime)
    ]  # fmt: skip
    assert outside == []


def function_package(tmp_path: Path) -> Path:
    """A function's /var/task that bundles its own `tokex` and `urllib3`, each of which
    fails loudly if it is imported."""
    task = tmp_path / "task"
    for package in ("tokex", "urllib3"):
        (task / package).mkdir(parents=True)
        (task / package / "__init__.py").write_text(
            f"raise SystemExit('the function package's {package} was imported')\n"
        )
    return task


def extension_environment(tmp_path: Path, python_bin: Path, refused_port: int) -> dict[str, str]:
    return {
        "PATH": f"{python_bin}:/usr/bin:/bin",
        "PYTHONPATH": str(runtime_stand_in(tmp_path)),
        "AWS_SESSION_TOKEN": "session-token",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
        ENDPOINT_VARIABLE: f"http://127.0.0.1:{refused_port}",
        ROUTES_VARIABLE: json.dumps(
            [{"prefix": "/", "upstream": "https://orders.example.com", "audience": "orders"}]
        ),
        LISTEN_VARIABLE: f"127.0.0.1:{free_port()}",
    }


@pytest.mark.parametrize("working_directory", ["elsewhere", "the function's package"])
def test_the_launcher_starts_the_extension_from_the_layer(
    asset: Path, tmp_path: Path, refused_port: int, working_directory: str
) -> None:
    """The built layer as Lambda runs it: the launcher finds python3, the extension
    registers, initializes (tokex unreachable: it still does), and stops on SHUTDOWN.
    Started in the function's package (the working directory Lambda's container images
    give), the function's own `tokex` and `urllib3` are not the extension's."""
    env = extension_environment(tmp_path, python_shim(tmp_path), refused_port)
    cwd = function_package(tmp_path) if working_directory != "elsewhere" else tmp_path
    with ExtensionsApiEmulator() as emulator:
        env["AWS_LAMBDA_RUNTIME_API"] = emulator.runtime_api
        process = subprocess.Popen(
            [str(asset / "extensions" / "tokex-proxy")],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            extension = emulator.wait_until_waiting(timeout=30)
            assert extension.name == "tokex-proxy"
            # Lambda's deadline with external extensions: past it, the process is killed.
            deadline = emulator.shutdown(deadline_in_ms=2000)
            status = emulator.exit_status_by(process, deadline)
            output = process.stdout.read() if process.stdout else ""
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        assert status == 0, output
        assert emulator.calls_to("init/error") == []


def _runs(python: str | Path) -> bool:
    return subprocess.run([python, "-V"], capture_output=True, check=False).returncode == 0


def test_on_a_python_before_3_11_the_extension_reports_an_init_error(
    asset: Path, tmp_path: Path, refused_port: int
) -> None:
    """Lambda does not hold a layer to its runtimes: a python3.10 function given the layer
    by ARN starts it. The extension registers and says why, rather than die on an import."""
    candidates = [shutil.which("python3.10"), *Path.home().glob(".pyenv/versions/3.10.*/bin/*3.10")]
    # A pyenv shim of a version not selected is on PATH but does not run.
    old_python = next((c for c in candidates if c and _runs(c)), None)
    if old_python is None:
        pytest.skip("no Python 3.10 on this machine")
    bin_dir = tmp_path / "old-bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(old_python)
    env = extension_environment(tmp_path, bin_dir, refused_port)
    with ExtensionsApiEmulator() as emulator:
        env["AWS_LAMBDA_RUNTIME_API"] = emulator.runtime_api
        result = subprocess.run(
            [str(asset / "extensions" / "tokex-proxy")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        [report] = emulator.calls_to("init/error")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert report.headers["lambda-extension-function-error-type"] == "Extension.UnsupportedRuntime"
    assert "needs Python 3.11 or later" in report.body["errorMessage"]
    assert "python3 is 3.10." in report.body["errorMessage"]


# --- the construct on a sample function ---------------------------------------------------


def sample_stack(runtime: Any, *, layer_arn: str | None = None, **options: Any) -> Any:
    """A stack of a user's: one function, with the extension (its layer imported by ARN
    when `layer_arn` is given)."""
    from aws_cdk import App, Stack
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_s3 as s3

    from cdk.extension_layer import TokexProxyExtension

    app = App()
    stack = Stack(app, "Workload")
    function = lambda_.Function(
        stack,
        "Orders",
        runtime=runtime,
        architecture=lambda_.Architecture.X86_64,
        handler="app.handler",
        code=lambda_.Code.from_bucket(
            s3.Bucket.from_bucket_name(stack, "Code", "orders-code"), "orders.zip"
        ),
    )
    options = {"endpoint": ISSUER, "routes": [ROUTE], **options}
    TokexProxyExtension(
        stack,
        "Tokex",
        function=function,
        layer=layer_arn and lambda_.LayerVersion.from_layer_version_arn(stack, "L", layer_arn),
        **options,
    )
    return stack


def test_the_construct_adds_the_layer_and_two_variables() -> None:
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    arn = "arn:aws:lambda:eu-west-1:123456789012:layer:tokex-proxy:3"
    template = Template.from_stack(sample_stack(lambda_.Runtime.PYTHON_3_12)).to_json()
    [function] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    props = function["Properties"]
    [layer_id] = [
        k for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::LayerVersion"
    ]
    assert props["Layers"] == [{"Ref": layer_id}]
    assert props["Environment"]["Variables"] == {
        ENDPOINT_VARIABLE: "https://auth.example.com",
        ROUTES_VARIABLE: '[{"prefix":"/","upstream":"https://orders.example.com","audience":"orders"}]',
        # For the function's code: the proxy's URL, so it never spells the port.
        URL_VARIABLE: "http://127.0.0.1:2780",
    }
    # No IAM: the function's own role signs its evidence.
    roles = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Role"]
    assert len(roles) == 1 and "Policies" not in roles[0]["Properties"]
    assert not [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Policy"]

    imported = Template.from_stack(
        sample_stack(lambda_.Runtime.PYTHON_3_13, layer_arn=arn, listen="127.0.0.1:2999")
    ).to_json()
    [function] = [r for r in imported["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert function["Properties"]["Layers"] == [arn]
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables[LISTEN_VARIABLE] == "127.0.0.1:2999"
    assert variables[URL_VARIABLE] == "http://127.0.0.1:2999"
    assert not [
        r for r in imported["Resources"].values() if r["Type"] == "AWS::Lambda::LayerVersion"
    ]


@pytest.mark.parametrize("evidence", ["aws-oif", "oif"])
def test_a_route_with_oif_evidence_gets_the_role_its_sts_permission(evidence: str) -> None:
    """The one statement docs/deploy.md asks each workload's role for: tokens for the tokex
    issuer alone, short-lived. Without it STS refuses and every proxied call is 403."""
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    routes = [{**ROUTE, "evidence": evidence}, {**ROUTE, "prefix": "/stock"}]
    template = Template.from_stack(
        sample_stack(lambda_.Runtime.PYTHON_3_12, routes=routes, endpoint=f"{ISSUER}/")
    ).to_json()
    [policy] = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Policy"]
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [
        {
            "Action": "sts:GetWebIdentityToken",
            "Effect": "Allow",
            "Resource": "*",
            "Condition": {
                "ForAllValues:StringEquals": {"sts:IdentityTokenAudience": ISSUER},
                "Null": {"sts:IdentityTokenAudience": "false"},
                "NumericLessThanEquals": {"sts:DurationSeconds": 300},
            },
        }
    ]


@pytest.mark.parametrize("runtime", ["NODEJS_22_X", "PYTHON_3_10", "PROVIDED_AL2023"])
def test_the_construct_refuses_a_runtime_without_python_3_11(runtime: str) -> None:
    from aws_cdk import aws_lambda as lambda_

    with pytest.raises(ValueError, match="runs on the function's Python"):
        sample_stack(getattr(lambda_.Runtime, runtime))


# --- the construct refuses at synth what the extension would refuse at every Init --------

LAYER_ARN = "arn:aws:lambda:eu-west-1:123456789012:layer:tokex-proxy:3"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"routes": [{**ROUTE, "upstrem": "https://orders.example.com"}]},
            "TOKEX_PROXY_ROUTES: routes[0].upstrem: unknown key",
        ),
        (
            {"routes": [{**ROUTE, "upstream": "http://orders.example.com"}]},
            "TOKEX_PROXY_ROUTES: routes[0].upstream: 'http://orders.example.com' is plain http",
        ),
        ({"listen": "0.0.0.0:2772"}, "TOKEX_PROXY_LISTEN: 0.0.0.0 is not a loopback address"),
        (
            {"routes": [{**ROUTE, "evidence": "iam"}]},
            "TOKEX_PROXY_ROUTES: routes[0].evidence: evidence must be one of",
        ),
        (
            {"routes": [{**ROUTE, "prefix": "orders"}]},
            "TOKEX_PROXY_ROUTES: routes[0].prefix: must be a path starting with /",
        ),
        (
            {"routes": [ROUTE, {**ROUTE, "prefix": "/"}]},
            "TOKEX_PROXY_ROUTES: routes[1].prefix: / is already routes[0]'s",
        ),
        (
            {"routes": [{**ROUTE, "scopes": "orders:read"}]},
            "TOKEX_PROXY_ROUTES: routes[0].scopes: must be a list of strings",
        ),
        (
            {"routes": [{**ROUTE, "ca_file": ""}]},
            "TOKEX_PROXY_ROUTES: routes[0].ca_file: must be a non-empty string",
        ),
        ({"routes": []}, "TOKEX_PROXY_ROUTES: must be a non-empty list"),
        ({"listen": "127.0.0.1:0"}, "TOKEX_PROXY_LISTEN: name a port"),
        ({"endpoint": "http://auth.example.com"}, "TOKEX_PROXY_ENDPOINT: endpoint "),
    ],
)
def test_the_construct_refuses_at_synth_what_the_extension_refuses_at_init(
    options: dict[str, Any], message: str
) -> None:
    """Not a deploy whose every Init fails with Extension.ConfigInvalid: the same check,
    the same message, at `cdk synth`."""
    from aws_cdk import aws_lambda as lambda_

    from tokex.extension.main import config_from_variables
    from tokex.proxy.config import ProxyConfigError

    variables = {
        ENDPOINT_VARIABLE: options.get("endpoint", ISSUER),
        ROUTES_VARIABLE: json.dumps(options.get("routes", [ROUTE])),
        **({LISTEN_VARIABLE: options["listen"]} if "listen" in options else {}),
    }
    with pytest.raises(ProxyConfigError) as at_init:
        config_from_variables(variables)
    with pytest.raises(ValueError) as at_synth:
        sample_stack(lambda_.Runtime.PYTHON_3_12, layer_arn=LAYER_ARN, **options)
    assert str(at_synth.value) == str(at_init.value)
    assert str(at_synth.value).startswith(message)


def test_a_route_naming_a_file_of_the_functions_package_synthesizes() -> None:
    """The function's package does not exist at synth: its files are checked at Init."""
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    routes = [{**ROUTE, "ca_file": "certs/ca.pem"}, {**ROUTE, "prefix": "/eks", "evidence": "eks"}]
    template = Template.from_stack(
        sample_stack(lambda_.Runtime.PYTHON_3_12, layer_arn=LAYER_ARN, routes=routes)
    ).to_json()
    [function] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    variables = function["Properties"]["Environment"]["Variables"]
    assert json.loads(variables[ROUTES_VARIABLE]) == routes


def test_with_an_endpoint_token_the_rest_is_still_checked_at_synth() -> None:
    """An imported IssuerUrl is known at deploy only; the routes and listen are not."""
    from aws_cdk import Fn
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    issuer = Fn.import_value("TokexIssuerUrl")
    plain = [{**ROUTE, "upstream": "http://orders.example.com"}]
    with pytest.raises(ValueError, match=r"^TOKEX_PROXY_ROUTES: routes\[0\].upstream: .* plain"):
        sample_stack(
            lambda_.Runtime.PYTHON_3_12, layer_arn=LAYER_ARN, endpoint=issuer, routes=plain
        )
    template = Template.from_stack(
        sample_stack(lambda_.Runtime.PYTHON_3_12, layer_arn=LAYER_ARN, endpoint=issuer)
    ).to_json()
    [function] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables[ENDPOINT_VARIABLE] == {"Fn::ImportValue": "TokexIssuerUrl"}


def test_a_route_holding_a_token_is_left_to_the_extension() -> None:
    """An upstream from another construct (an API's URL) is known at deploy only: no
    refusal of the token's placeholder text; the extension checks the value at Init."""
    from aws_cdk import Fn
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk.assertions import Template

    routes = [{**ROUTE, "upstream": Fn.import_value("OrdersApiUrl")}]
    template = Template.from_stack(
        sample_stack(lambda_.Runtime.PYTHON_3_12, layer_arn=LAYER_ARN, routes=routes)
    ).to_json()
    [function] = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]
    assert "Fn::Join" in function["Properties"]["Environment"]["Variables"][ROUTES_VARIABLE]
