"""The benchmark's emulator: moto with tokex's fixes (tokex.local.moto_fixes) that can
copy itself into a second process, so DynamoDB and KMS are served side by side as a
Region's separate fleets serve them (docs/performance.md "Method").

    python -m benchmarks.split_emulator 127.0.0.1   # prints the emulator's URL

moto is one Python process: two calls that reach it at once (an exchange's `Sign` and its
admission write, which tokex overlaps) are served one after the other, so the pair costs
the sum of the two where AWS takes the slower one. A second moto would need the first
one's IAM users, access keys and role sessions to check SigV4, and moto makes those at
random: so the copy is a `fork` of the set-up emulator, which holds all of them.

Control (not moto's): `POST /__emulator/fork` forks; the copy serves on a port of its own
(the answer's body is its URL) everything the emulator held at that moment. Call it only
while no other request is in flight: only the forking thread lives on in the copy, so a
lock another thread held then (moto's backend lock, say) would stay held there for good,
and a write half done would be copied half done. The two do not share what changes
afterwards, so a caller sends each service to one of them only (the benchmark's proxy
sends DynamoDB to the copy, everything else to the original). The copy ends with its
parent: SIGTERM to the original ends both, and a copy whose parent has gone exits within
a second.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
import time
import urllib.request
from typing import Any

from tokex.local import moto_fixes
from tokex.local.emulator import first_line

FORK_PATH = "/__emulator/fork"
FORK_TIMEOUT_SECONDS = 30
COPY_START_SECONDS = 20  # the copy names its URL within this, or the fork failed


def fork_copy(url: str) -> str:
    """Ask the emulator at `url` for a copy of itself; the copy's URL."""
    request = urllib.request.Request(url + FORK_PATH, data=b"", method="POST")  # noqa: S310 - loopback
    with urllib.request.urlopen(request, timeout=FORK_TIMEOUT_SECONDS) as answer:  # noqa: S310
        return str(answer.read().decode())


class Forking:
    """WSGI middleware: answers `POST /__emulator/fork`, passes everything else to moto."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.app: moto_fixes.WsgiApp | None = None
        self.children: list[int] = []

    def wrap(self, app: moto_fixes.WsgiApp) -> Forking:
        self.app = app
        return self

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        assert self.app is not None
        if environ.get("PATH_INFO") != FORK_PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("Content-Length", "0")])
            return [b""]
        url = self.fork().encode()
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(url)))]
        start_response("200 OK", headers)
        return [url]

    def fork(self) -> str:
        """The URL of a copy of this emulator, serving in a child process."""
        read_end, write_end = os.pipe()
        original = os.getpid()  # read here: in the copy, getppid() is late if it died
        pid = os.fork()
        if pid == 0:  # the copy: only this thread exists here
            try:
                os.close(read_end)
                _serve_copy(self.host, write_end, original)
            finally:
                os._exit(0)
        os.close(write_end)
        self.children.append(pid)
        with os.fdopen(read_end) as pipe:
            url = first_line(pipe, time.monotonic() + COPY_START_SECONDS)
        if not url:
            # A copy that hangs would serve nobody until the original ends: end it now.
            self.children.remove(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError("the emulator's copy did not start")
        return url

    def stop(self, *_: Any) -> None:
        """SIGTERM: end the copies, then this process."""
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ChildProcessError, ProcessLookupError):
                pass  # already gone
        os._exit(0)


def _serve_copy(host: str, url_pipe: int, parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The original's sockets came along (its listening one, its kept-alive connections):
    # the original alone answers on them.
    _close_inherited_sockets()
    copy = moto_fixes.emulator_server(host)
    os.write(url_pipe, f"http://{copy.host}:{copy.port}\n".encode())
    os.close(url_pipe)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    copy.serve_forever()


def _close_inherited_sockets() -> None:
    for fd in _open_descriptors():
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            continue  # the directory's own descriptor, closed by now


def _open_descriptors() -> list[int]:
    for listing in ("/proc/self/fd", "/dev/fd"):  # Linux, then macOS and the BSDs
        try:
            return [int(name) for name in os.listdir(listing)]
        except OSError:
            continue
    return list(range(3, 1024))


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)


def main() -> None:
    forking = Forking(sys.argv[1])
    server = moto_fixes.emulator_server(forking.host, wrap=forking.wrap)
    signal.signal(signal.SIGTERM, forking.stop)
    moto_fixes.announce_and_serve(server)


if __name__ == "__main__":
    main()
