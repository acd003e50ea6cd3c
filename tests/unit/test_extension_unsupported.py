"""tokex.extension.unsupported: a Python too old for the layer's code is reported to Lambda
as an init error (the launcher run on a real Python 3.10: tests/infra/test_extension_layer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.lambda_extensions_api import ExtensionsApiEmulator
from tokex.extension import unsupported


@pytest.mark.parametrize(
    ("version", "supported"),
    [((3, 8, 20), False), ((3, 10, 13), False), ((3, 11, 0), True), ((3, 13, 1), True)],
)
def test_python_3_11_is_the_minimum(version: tuple[int, ...], supported: bool) -> None:
    assert unsupported.is_supported(version) is supported


def test_it_registers_and_reports_init_error(capsys: pytest.CaptureFixture) -> None:
    with ExtensionsApiEmulator() as platform:
        environ = {"AWS_LAMBDA_RUNTIME_API": platform.runtime_api}
        assert unsupported.refuse(environ, (3, 10, 13, "final", 0)) == 1
        [registered] = platform.calls_to("register")
        assert registered.headers["lambda-extension-name"] == "tokex-proxy"
        [report] = platform.calls_to("init/error")
        assert report.headers["lambda-extension-function-error-type"] == (
            "Extension.UnsupportedRuntime"
        )
        assert report.body["errorMessage"] == (
            "the tokex proxy extension needs Python 3.11 or later (python3.11-3.13 runtimes);"
            " this function's python3 is 3.10.13"
        )
        assert platform.calls_to("event/next") == []
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["event"], record["error_type"]) == (
        "extension_failed",
        "Extension.UnsupportedRuntime",
    )


def test_outside_lambda_it_only_logs(capsys: pytest.CaptureFixture) -> None:
    assert unsupported.refuse({}, (3, 9, 18)) == 1
    assert "3.9.18" in json.loads(capsys.readouterr().err)["error"]


def test_a_python_without_botocore_is_reported_not_a_traceback() -> None:
    """A container image with the layer's folders but no botocore: the extension died on
    its import before registering, and Init failed with a traceback alone."""
    script = (
        "import sys; sys.modules['botocore'] = None; import runpy; "
        "runpy.run_module('tokex.extension', run_name='__main__')"
    )
    with ExtensionsApiEmulator() as platform:
        env = {**os.environ, "AWS_LAMBDA_RUNTIME_API": platform.runtime_api}
        finished = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        [report] = platform.calls_to("init/error")
    assert finished.returncode == 1 and "Traceback" not in finished.stderr
    assert report.headers["lambda-extension-function-error-type"] == ("Extension.MissingDependency")
    assert report.body["errorMessage"].startswith(
        "the tokex proxy extension cannot import botocore"
    )
