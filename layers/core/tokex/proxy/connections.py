"""The application's open connections, for a graceful shutdown: which are between two
requests (closed at once), which are in the middle of one (let finish, up to a time)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Connections:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._idle: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self.stopping = False

    def opened(self, connection: socket.socket) -> None:
        with self._changed:
            if self.stopping:
                _close(connection)
            self._idle.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._changed:
            self._idle.discard(connection)
            self._busy.discard(connection)
            self._changed.notify_all()

    def busy(self, connection: socket.socket) -> None:
        """A request has begun on it (its request line arrived)."""
        with self._changed:
            self._idle.discard(connection)
            self._busy.add(connection)

    def idle(self, connection: socket.socket) -> None:
        """Its request is answered; while stopping, the connection is closed instead."""
        with self._changed:
            self._busy.discard(connection)
            if self.stopping:
                _close(connection)
            else:
                self._idle.add(connection)
            self._changed.notify_all()

    def in_flight(self) -> int:
        with self._changed:
            return len(self._busy)

    def drain(self, timeout: float) -> bool:
        """Stop: close every idle connection, wait up to `timeout` seconds for the requests
        in flight, then close what is left. True if every request finished in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            self.stopping = True
            for connection in self._idle:
                _close(connection)
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            finished = not self._busy
            for connection in self._busy | self._idle:
                _close(connection)
            return finished


def _close(connection: socket.socket) -> None:
    """Wake the thread blocked reading it (the thread closes the socket itself)."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
