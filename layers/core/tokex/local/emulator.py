"""The embedded AWS emulation: a moto server on loopback, in a thread or a subprocess.

`tokex local` runs it in a thread of its own process. Test suites run it as a subprocess,
because moto's "check signatures" switch is process-wide and must not leak into tests that
use moto in process.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import IO, Protocol

from tokex.local.moto_fixes import (
    ADMIN_HEADER,
    ADMIN_TOKEN_ENV,
    emulator_server,
    new_admin_token,
)

LOOPBACK = "127.0.0.1"


class MotoServer(Protocol):
    url: str
    # What moto's own API (`/moto-api/...`) asks for (moto_fixes.ADMIN_HEADER).
    admin_token: str

    def stop(self) -> None: ...


class ThreadMotoServer:
    def __init__(self) -> None:
        # The emulator's per-request access log would drown tokex's own audit lines.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.admin_token = new_admin_token()
        self._server = emulator_server(LOOPBACK, admin_token=self.admin_token)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://{LOOPBACK}:{self._server.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class SubprocessMotoServer:
    # The module run as the server: moto_fixes, or one that builds on it (the benchmark's).
    SERVER_MODULE = "tokex.local.moto_fixes"

    def __init__(self, *, startup_timeout: float = 30.0, module: str = SERVER_MODULE) -> None:
        self.admin_token = new_admin_token()
        env = {**os.environ, "MOTO_CALL_RESET_API": "false", ADMIN_TOKEN_ENV: self.admin_token}
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
            # moto's server with tokex's fixes (local/moto_fixes.py). It binds a port of
            # the OS's choosing itself and names its URL on stdout's first line.
            [sys.executable, "-m", module, LOOPBACK],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        deadline = time.monotonic() + startup_timeout
        announced = first_line(self._process.stdout, deadline)
        if not announced.startswith(f"http://{LOOPBACK}:"):
            self.stop()
            raise RuntimeError("the moto server did not start")
        self.url = announced
        while not _answers(self.url, self.admin_token):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the moto server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def first_line(stream: IO[str] | None, deadline: float) -> str:
    """The first line a child writes to `stream` (its stdout, a pipe), or "" if it exits
    or the deadline (`time.monotonic()`) passes first."""
    if stream is None:
        return ""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            return ""
    return stream.readline().strip()


def set_signature_checking(url: str, on: bool, *, admin_token: str) -> None:
    """Switch moto's SigV4 + IAM checks on (after set-up) or off (docs/local.md "What it
    starts"): moto's own API, which only the emulator's admin token opens."""
    request = urllib.request.Request(  # noqa: S310 - loopback emulator URL
        f"{url}/moto-api/reset-auth",
        data=b"0" if on else b"inf",
        # Not a form: Flask would swallow a form body and moto would read an empty one.
        headers={"Content-Type": "text/plain", ADMIN_HEADER: admin_token},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        response.read()


def _answers(url: str, admin_token: str) -> bool:
    request = urllib.request.Request(f"{url}/moto-api/", headers={ADMIN_HEADER: admin_token})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
