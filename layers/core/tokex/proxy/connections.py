"""The application's open connections: at most MAX_CONNECTIONS at once (each holds a
thread), and for a graceful shutdown, which are between two requests (closed at once) and
which are in the middle of one (let finish, up to a time)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

# Connections of the application served at once, every listener together: one more is
# closed as soon as it is accepted (a sidecar's application needs far fewer; without a
# bound, any local process could hold a thread per connection until none is left).
MAX_CONNECTIONS = 1024


class Connections:
    def __init__(self, limit: int | None = None) -> None:
        self._changed = threading.Condition()
        self._idle: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._admitted: set[socket.socket] = set()
        self._limit = MAX_CONNECTIONS if limit is None else limit
        self.stopping = False

    def admit(self, connection: socket.socket) -> bool:
        """Whether a connection just accepted may be served (below the limit)."""
        with self._changed:
            if len(self._admitted) >= self._limit:
                return False
            self._admitted.add(connection)
            return True

    def released(self, connection: socket.socket) -> None:
        """An admitted connection is done with (whatever became of its thread)."""
        with self._changed:
            self._admitted.discard(connection)

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
