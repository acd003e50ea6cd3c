"""The application's open connections: at most MAX_CONNECTIONS at once (each holds a
thread), fewer if the process may not open the descriptors they need (connection_limit),
and for a graceful shutdown, which are between two requests (closed at once) and which
are in the middle of one (let finish, up to a time)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tokex.proxy.forward import POOL_SIZE

try:
    import resource
except ImportError:  # Windows: no limit on descriptors to follow
    resource = None  # type: ignore[assignment]

# Connections of the application served at once, every listener together: one more is
# closed as soon as it is accepted (a sidecar's application needs far fewer; without a
# bound, any local process could hold a thread per connection until none is left).
MAX_CONNECTIONS = 1024
# The limit must engage before the process runs out of descriptors: past that, `accept`
# fails (EMFILE), the connection waits unserved and nothing says why. An application
# connection holds its own socket and, while a request is forwarded, an upstream
# connection (forward.py: one at a time; a failed one is closed before the next): 2.
DESCRIPTORS_PER_CONNECTION = 2
# Besides, the process holds the upstream connections kept idle in the pools (POOL_SIZE
# per route, counted apart) and a few dozen of its own at most: stdin, stdout, stderr,
# the listeners, tokex's exchanges (one in flight per token client) and the AWS SDK's
# credential fetches, and for a moment a CA file read for a TLS handshake, a DNS lookup,
# a module imported late, a refused connection before it is closed. Room to spare.
RESERVED_DESCRIPTORS = 64


def descriptors_needed(routes: int) -> int:
    """The descriptors a proxy with `routes` routes needs for MAX_CONNECTIONS."""
    return RESERVED_DESCRIPTORS + POOL_SIZE * routes + DESCRIPTORS_PER_CONNECTION * MAX_CONNECTIONS


def connection_limit(descriptors: int | None, routes: int) -> int:
    """The connections served at once by a proxy with `routes` routes in a process that
    may have `descriptors` open (None: no limit): MAX_CONNECTIONS, or as many as the
    descriptors left after the reserve allow (at least one)."""
    if descriptors is None:
        return MAX_CONNECTIONS
    spare = descriptors - RESERVED_DESCRIPTORS - POOL_SIZE * routes
    return max(1, min(MAX_CONNECTIONS, spare // DESCRIPTORS_PER_CONNECTION))


def raise_descriptor_limit(wanted: int) -> int | None:
    """Raise the process's soft limit on open descriptors (RLIMIT_NOFILE) to `wanted`,
    or as far towards it as the hard limit allows, and return the soft limit then (None:
    unlimited, or no such limit here). systemd starts a service with a soft limit of 1024
    (its hard one is far higher) unless LimitNOFILE= says otherwise; Lambda's is 1024."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        # Refused where the hard limit says more than the system allows (macOS: OPEN_MAX).
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return int(soft)


class Connections:
    def __init__(self, limit: int | None = None) -> None:
        self._changed = threading.Condition()
        self._idle: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._admitted: set[socket.socket] = set()
        self.limit = MAX_CONNECTIONS if limit is None else limit  # ProxyServer.start sets it
        self.stopping = False

    def admit(self, connection: socket.socket) -> bool:
        """Whether a connection just accepted may be served (below the limit)."""
        with self._changed:
            if len(self._admitted) >= self.limit:
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
