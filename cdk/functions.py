"""The Lambda functions (exchange, introspect, publisher), each with its own role, and what
triggers the publisher.

Roles are created here with no managed policy: every permission a function has is a
statement added by the construct that owns the resource (signing key, tables, issuer
bucket) or, for instance tag lookups, by the stack; plus writing to its own log group
and X-Ray tracing.

Each function's code is its part of the installed `tokex_functions` package (see
`function_code`), the same files `tokex local` imports, compiled to bytecode as the layer
is (`/var/task` is read-only too); the core library comes from the layer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    CustomResource,
    Duration,
    ILocalBundling,
)
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from cdk.environment_size import check_environment
from cdk.layer_bundling import (
    BytecodeCompiler,
    locally_bundled_code,
    readable_by_lambda,
    runtime_compiler,
)

FUNCTIONS_PACKAGE = "tokex_functions"
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64
PUBLISH_SCHEDULE = events.Schedule.rate(Duration.hours(1))
# Where Lambda puts a function's code: the paths its bytecode names (tracebacks).
TASK_ROOT = "/var/task"


def functions_package_dir() -> Path:
    """functions/ of the checkout this app is synthesized from (deployed as
    `tokex_functions`), as the layers come from its layers/: whatever `tokex_functions` the
    venv has installed (another checkout's, a stale copy) never mixes handlers of one tree
    with a layer of another."""
    return Path(__file__).resolve().parent.parent / "functions"


def handler_name(function: str) -> str:
    """The Lambda handler setting of a function: its module in the package, dotted."""
    return f"{FUNCTIONS_PACKAGE}.{function}.handler.lambda_handler"


def function_asset_files(function: str) -> dict[str, Path]:
    """Asset path -> source file: the package's own modules (its `__init__` and the
    plumbing the handlers share) and the one function's subpackage, nothing of the others.
    """
    package = functions_package_dir()
    if not (package / function / "handler.py").is_file():
        raise FileNotFoundError(f"no handler for the function {function!r} in {package}")
    sources = [*package.glob("*.py"), *(package / function).rglob("*.py")]
    return {
        f"{FUNCTIONS_PACKAGE}/{path.relative_to(package).as_posix()}": path
        for path in sorted(sources)
        if "__pycache__" not in path.parts
    }


@jsii.implements(ILocalBundling)
class _CopyFiles:
    """jsii adapter: CDK calls `try_bundle` with the asset's output directory."""

    def __init__(self, files: Mapping[str, Path], compiler: BytecodeCompiler | None) -> None:
        self._files = dict(files)
        self._compiler = compiler

    def try_bundle(self, output_dir: str, *args: Any, **options: Any) -> bool:
        for name, source in self._files.items():
            target = Path(output_dir) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        if self._compiler is not None:
            self._compiler.compile_tree(Path(output_dir), mounted_at=TASK_ROOT)
        readable_by_lambda(Path(output_dir))
        return True


def function_compiler() -> BytecodeCompiler | None:
    """The runtime's CPython on this machine, the layer's (cdk/layer_bundling.py); None:
    the functions ship sources only."""
    return runtime_compiler(RUNTIME.name.removeprefix("python"))


def build_function_asset(function: str, output_dir: Path) -> None:
    """The function's asset as `function_code` bundles it, written into `output_dir`."""
    _CopyFiles(function_asset_files(function), function_compiler()).try_bundle(str(output_dir))


def function_asset_hash(files: Mapping[str, Path], compiler: BytecodeCompiler | None) -> str:
    """The asset's hash: its files' names and contents and the bytecode compiler (so a
    change to the shared plumbing redeploys every function, a change to one handler only
    its own, and bytecode of another Python version redeploys them all)."""
    bytecode = None if compiler is None else compiler.identity(TASK_ROOT)
    digest = hashlib.sha256(json.dumps({"bytecode": bytecode}, sort_keys=True).encode())
    for name, source in files.items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


def function_code(scope: Construct, function: str) -> lambda_.Code:
    """The function's asset, built on this machine (no Docker) under `function_asset_hash`."""
    files = function_asset_files(function)
    compiler = function_compiler()
    return locally_bundled_code(
        scope,
        placeholder=functions_package_dir() / function,
        asset_hash=function_asset_hash(files, compiler),
        bundler=_CopyFiles(files, compiler),
    )


class TokexFunction(Construct):
    """One function of `tokex_functions` (`directory`: its subpackage) as an arm64 Python
    function with the core layer."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        directory: str,
        description: str,
        layer: lambda_.ILayerVersion,
        environment: Mapping[str, str],
        timeout: Duration,
        log_retention: logs.RetentionDays,
        tracing: str,
    ) -> None:
        super().__init__(scope, construct_id)
        environment = {
            **environment,
            # The tracer in the function (tokex_functions/tracing.py) only for "sdk".
            "POWERTOOLS_TRACE_DISABLED": "false" if tracing == "sdk" else "true",
        }
        self.environment_bytes = check_environment(scope, construct_id, environment)
        self.log_group = logs.LogGroup(self, "Logs", retention=log_retention)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"tokex {directory}: least privilege, see docs/deploy.md",
        )
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler_name(directory),
            code=function_code(self, directory),
            layers=[layer],
            role=self.role,
            memory_size=512,
            timeout=timeout,
            tracing=lambda_.Tracing.DISABLED if tracing == "off" else lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            environment=environment,
        )


class JwksPublication(Construct):
    """Runs the publisher every hour and on every deploy, so the JWKS exists when
    `cdk deploy` returns and heals within the hour if an object is removed."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        publisher: lambda_.IFunction,
        properties: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.schedule = events.Rule(
            self,
            "Schedule",
            description="tokex: republish the JWKS and discovery documents",
            schedule=PUBLISH_SCHEDULE,
            targets=[
                targets.LambdaFunction(
                    publisher, retry_attempts=2, max_event_age=Duration.minutes(30)
                )
            ],
        )
        # The provider framework answers CloudFormation (success or failure) for the
        # publisher, which only returns {"PhysicalResourceId": ...}.
        # Its role is ours, not aws-cdk-lib's default with the AWS managed basic execution
        # policy (CloudWatch Logs on every log group): writing its own log group only; the
        # provider adds the publisher's invocation.
        provider_logs = logs.LogGroup(self, "ProviderLogs", retention=log_retention)
        self.provider_role = provider_role = iam.Role(
            self,
            "ProviderRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="tokex JWKS publication provider: its log group, the publisher",
        )
        provider_logs.grant_write(provider_role)
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=publisher,
            log_group=provider_logs,
            framework_on_event_role=provider_role,
        )
        self.resource = CustomResource(
            self,
            "Publish",
            service_token=self.provider.service_token,
            resource_type="Custom::TokexJwks",
            properties=dict(properties),
        )
