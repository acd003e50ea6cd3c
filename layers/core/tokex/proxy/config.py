"""The proxy's configuration: listeners and routes, from a TOML or JSON file or from the
command line's one route (docs/injection.md "Configuration").

Every refusal is a ProxyConfigError naming the key at fault (`routes[1].upstream: must be
an https URL ...`); nothing is guessed: an unknown key, a value of the wrong type, a route
with both or neither of `prefix` and `listen` are refused, not ignored.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import ssl
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tokex import identifiers
from tokex.client.endpoint import check_endpoint, host_problem, is_loopback, redacted
from tokex.client.evidence import DEFAULT_TOKEN_FILE, EKS, SIGV4, evidence_kind
from tokex.client.token_error import TokenError
from tokex.strict_json import StrictJsonError, loads_strict
from tokex.token_request import MAX_SCOPES

ENDPOINT_VARIABLE = "TOKEX_ENDPOINT"
# The proxy's own endpoints live under this prefix, on every listener; it is never
# forwarded, and no route may claim it (docs/injection.md "Threat model").
RESERVED_PREFIX = "/.tokex"
DEFAULT_LISTENER = "listen"  # the name of the top-level listener, as the key is spelled
MAX_CONFIG_BYTES = 1024 * 1024
# The wildcard addresses a listener may bind (allow_non_loopback): every local address of
# its family; `::` both families, as the proxy binds it (dual-stack).
IPV4_ANY = "0.0.0.0"  # noqa: S104 - compared with, never bound here
IPV6_ANY = "::"

_TOP_KEYS = frozenset(
    {"endpoint", "listen", "evidence", "token_file", "secret_file", "allow_non_loopback", "routes"}
)
_ROUTE_KEYS = frozenset(
    {"prefix", "listen", "upstream", "audience", "scopes", "evidence", "token_file", "ca_file"}
)
# The command line's flag for each key (ProxyConfig.from_args).
_FLAGS = {
    **{key: f"--{key.replace('_', '-')}" for key in (*_TOP_KEYS, *_ROUTE_KEYS)},
    "scopes": "--scope",
}


class ProxyConfigError(ValueError):
    """A configuration the proxy refuses: `key` names where (`routes[1].upstream`, or the
    flag on the command line), `file_not_found` when it names a file that is not there,
    `not_loopback` the host of a listener that `allow_non_loopback` would have allowed."""

    def __init__(
        self,
        key: str,
        message: str,
        *,
        file_not_found: bool = False,
        not_loopback: str | None = None,
    ) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.file_not_found = file_not_found
        self.not_loopback = not_loopback


class Address(NamedTuple):
    host: str
    port: int  # 0: any free port (tests); ProxyServer.addresses has the bound one

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Route:
    name: str  # "routes[0]": what the logs and the errors call it
    upstream: str  # scheme://authority[/base path], no trailing slash
    audience: str
    scopes: tuple[str, ...]
    evidence: str  # sigv4 | aws-oif | eks (an alias resolved)
    token_file: str | None  # eks only
    ca_file: str | None  # replaces system trust for this upstream
    prefix: str | None  # a path prefix on the top-level listener, or
    listen: Address | None  # a listener of its own

    @property
    def listener(self) -> str:
        """The name of the listener the route is served on."""
        return DEFAULT_LISTENER if self.listen is None else f"{self.name}.listen"

    @property
    def authority(self) -> str:
        """The upstream's host[:port], as the `Host` header names it."""
        return urllib.parse.urlsplit(self.upstream).netloc


@dataclass(frozen=True)
class ProxyConfig:
    endpoint: str  # the tokex issuer URL
    routes: tuple[Route, ...]
    listen: Address | None = None  # the listener of the routes with a `prefix`
    secret_file: Path | None = None  # None: a new private file per start
    allow_non_loopback: bool = False

    @property
    def listeners(self) -> dict[str, Address]:
        """Every listener by name: `listen`, and `routes[i].listen` of a route with its own."""
        found = {} if self.listen is None else {DEFAULT_LISTENER: self.listen}
        found.update({r.listener: r.listen for r in self.routes if r.listen is not None})
        return found

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        environ: Mapping[str, str] | None = None,
        allow_non_loopback: bool = False,
    ) -> ProxyConfig:
        """`.toml` (tomllib) or `.json` (strict: no repeated keys); relative paths in it are
        relative to the file's directory. `environ` ($TOKEX_ENDPOINT): os.environ.
        `allow_non_loopback=True` (`--allow-non-loopback`) as if the file said so."""
        path = Path(path)
        kind = path.suffix.lower()
        if kind not in (".toml", ".json"):
            raise ProxyConfigError(str(path), "must be a .toml or a .json file")
        try:
            with path.open("rb") as file:
                data = file.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise ProxyConfigError(str(path), "no such file", file_not_found=True) from None
        except OSError as err:
            raise ProxyConfigError(str(path), f"cannot read it: {err.strerror or err}") from None
        if len(data) > MAX_CONFIG_BYTES:
            raise ProxyConfigError(str(path), f"larger than {MAX_CONFIG_BYTES} bytes")
        try:
            document = tomllib.loads(data.decode()) if kind == ".toml" else loads_strict(data)
        except (tomllib.TOMLDecodeError, StrictJsonError, UnicodeDecodeError) as err:
            raise ProxyConfigError(str(path), f"not valid {kind[1:].upper()}: {err}") from None
        except ValueError:  # tomllib's int() of an integer over Python's 4,300 digits
            why = f"not valid {kind[1:].upper()}: an integer too long"
            raise ProxyConfigError(str(path), why) from None
        except RecursionError:  # tomllib recurses per level of nesting
            why = "is nested too deeply to be a configuration"
            raise ProxyConfigError(str(path), why) from None
        if not isinstance(document, dict):
            raise ProxyConfigError(str(path), "must hold an object (a table) at the top")
        if allow_non_loopback:
            document["allow_non_loopback"] = True
        env = os.environ if environ is None else environ
        return _parse(document, base=path.parent, environ=env)

    @classmethod
    def from_document(
        cls,
        document: Mapping[str, Any],
        *,
        base_dir: Path,
        environ: Mapping[str, str] | None = None,
        check_files: bool = True,
    ) -> ProxyConfig:
        """The configuration a file's content would give (already parsed: e.g. built from
        environment variables); relative paths are relative to `base_dir`.
        `check_files=False` where the files a route names are not there yet (the CDK
        construct, before the function's package exists): every check but that each
        `token_file` and `ca_file` exists and a CA bundle is PEM."""
        if not isinstance(document, Mapping):
            raise ProxyConfigError("configuration", "must be an object (a table)")
        env = os.environ if environ is None else environ
        return _parse(dict(document), base=base_dir, environ=env, check_files=check_files)

    @classmethod
    def from_args(
        cls,
        *,
        endpoint: str | None,
        listen: str,
        upstream: str,
        audience: str,
        scopes: tuple[str, ...] | list[str] = (),
        evidence: str | None = None,
        ca_file: str | None = None,
        token_file: str | None = None,
        secret_file: str | None = None,
        allow_non_loopback: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> ProxyConfig:
        """One route for every path of `listen` (`tokex proxy --upstream ...`); errors name
        the flag (`--upstream: must be an https URL ...`)."""
        route: dict[str, Any] = {"prefix": "/", "upstream": upstream, "audience": audience}
        route |= {"scopes": list(scopes)} if scopes else {}
        route |= {"ca_file": ca_file} if ca_file is not None else {}
        route |= {"token_file": token_file} if token_file is not None else {}
        document: dict[str, Any] = {"listen": listen, "routes": [route]}
        document |= {"endpoint": endpoint} if endpoint is not None else {}
        document |= {"evidence": evidence} if evidence is not None else {}
        document |= {"secret_file": secret_file} if secret_file is not None else {}
        document["allow_non_loopback"] = allow_non_loopback
        env = os.environ if environ is None else environ
        try:
            return _parse(document, base=Path.cwd(), environ=env)
        except ProxyConfigError as err:
            flag = _FLAGS.get(err.key.removeprefix("routes[0]."), err.key)
            raise ProxyConfigError(flag, err.message, file_not_found=err.file_not_found) from None


def _parse(
    document: dict[str, Any], *, base: Path, environ: Mapping[str, str], check_files: bool = True
) -> ProxyConfig:
    _known_keys(document, _TOP_KEYS, "")
    endpoint = _endpoint(document, environ)
    allow_non_loopback = document.get("allow_non_loopback", False)
    if not isinstance(allow_non_loopback, bool):
        raise ProxyConfigError("allow_non_loopback", "must be true or false")
    listen = None
    if "listen" in document:
        listen = _address(document["listen"], "listen", allow_non_loopback)
    evidence = _evidence(document.get("evidence", SIGV4), "evidence")
    token_file = _path(document, "token_file", "token_file", base)
    secret_file = _path(document, "secret_file", "secret_file", base)
    raw_routes = document.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise ProxyConfigError("routes", "must be a non-empty list of routes ([[routes]])")
    routes = tuple(
        _route(raw, f"routes[{i}]", evidence, token_file, base, allow_non_loopback, check_files)
        for i, raw in enumerate(raw_routes)
    )
    if token_file is not None and all(route.evidence != EKS for route in routes):
        raise ProxyConfigError("token_file", "goes with evidence eks only, and no route uses it")
    secret_path = Path(secret_file) if secret_file is not None else None
    config = ProxyConfig(endpoint, routes, listen, secret_path, allow_non_loopback)
    _check_listeners(config)
    return config


def _known_keys(table: dict[str, Any], known: frozenset[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ProxyConfigError(
                f"{where}{key}", f"unknown key (known: {', '.join(sorted(known))})"
            )


def _endpoint(document: dict[str, Any], environ: Mapping[str, str]) -> str:
    key, value = "endpoint", document.get("endpoint")
    if value is None:
        key, value = f"${ENDPOINT_VARIABLE}", environ.get(ENDPOINT_VARIABLE)
    if not value:
        raise ProxyConfigError(
            "endpoint", f"missing: the tokex issuer URL (or set ${ENDPOINT_VARIABLE})"
        )
    if not isinstance(value, str):
        raise ProxyConfigError(key, "must be a string, the tokex issuer URL")
    try:
        return check_endpoint(value)
    except TokenError as err:
        raise ProxyConfigError(key, str(err)) from None


def _address(value: Any, key: str, allow_non_loopback: bool) -> Address:
    """HOST:PORT ([v6]:PORT); loopback only unless allowed: docs/injection.md "Threat model"."""
    if not isinstance(value, str):
        raise ProxyConfigError(key, "must be a string HOST:PORT, e.g. 127.0.0.1:8080")
    host, _, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    # At most 5 digits before int(), which refuses (ValueError) over 4,300.
    is_port = port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535
    # An IPv6 address only in brackets, whole: `[::1` is no host `[:` with port 1.
    half_bracketed = "[" in host or "]" in host or (":" in host and not bracketed)
    if not host or not is_port or half_bracketed:
        raise ProxyConfigError(key, f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:8080")
    if problem := host_problem(host):
        raise ProxyConfigError(key, f"{value!r}: its host {problem}")
    if not allow_non_loopback and not is_loopback(host):
        raise ProxyConfigError(
            key,
            f"{host} is not a loopback address: the proxy hands out tokens to whoever reaches "
            "it; set allow_non_loopback = true (--allow-non-loopback) if only the workload can",
            not_loopback=host,
        )
    return Address(host, int(port))


def _evidence(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ProxyConfigError(key, "must be a string: sigv4, aws-oif (oif) or eks")
    try:
        return evidence_kind(value)
    except ValueError as err:
        raise ProxyConfigError(key, str(err)) from None


def _path(table: dict[str, Any], name: str, key: str, base: Path) -> str | None:
    value = table.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ProxyConfigError(key, "must be a non-empty string, a file path")
    # What every system call would fail on (a ValueError, not an OSError): a NUL (JSON or
    # TOML `\u0000`) or a character file names cannot encode (JSON's lone `\ud800`).
    try:
        os.fsencode(value)
        bad = "\0" if "\0" in value else None
    except UnicodeEncodeError as err:
        bad = err.object[err.start]
    if bad is not None:
        raise ProxyConfigError(key, f"{value!r} has {bad!r}, which no file name can hold")
    return str(base / value)  # an absolute value stays as it is


def _route(
    raw: Any,
    key: str,
    default_evidence: str,
    default_token_file: str | None,
    base: Path,
    allow_non_loopback: bool,
    check_files: bool,
) -> Route:
    if not isinstance(raw, dict):
        raise ProxyConfigError(key, "must be a table (an object) of route keys")
    _known_keys(raw, _ROUTE_KEYS, f"{key}.")
    if ("prefix" in raw) == ("listen" in raw):
        raise ProxyConfigError(key, "needs exactly one of prefix and listen")
    prefix = _prefix(raw["prefix"], f"{key}.prefix") if "prefix" in raw else None
    listen = None
    if "listen" in raw:
        listen = _address(raw["listen"], f"{key}.listen", allow_non_loopback)
    audience = raw.get("audience")
    if not isinstance(audience, str) or not identifiers.is_audience(audience):
        raise ProxyConfigError(
            f"{key}.audience", f"must be {identifiers.AUDIENCE_RULE} (the API's identifier)"
        )
    evidence = _evidence(raw.get("evidence", default_evidence), f"{key}.evidence")
    token_file = _path(raw, "token_file", f"{key}.token_file", base)
    if token_file is not None and evidence != EKS:
        raise ProxyConfigError(f"{key}.token_file", "goes with evidence eks only")
    if evidence == EKS:
        token_file = token_file or default_token_file or DEFAULT_TOKEN_FILE
        if check_files:
            _existing_file(token_file, f"{key}.token_file" if "token_file" in raw else "token_file")
    ca_file = _path(raw, "ca_file", f"{key}.ca_file", base)
    if ca_file is not None and check_files:
        _ca_bundle(ca_file, f"{key}.ca_file")
    return Route(
        name=key,
        upstream=_upstream(raw.get("upstream"), f"{key}.upstream"),
        audience=audience,
        scopes=_scopes(raw.get("scopes", []), f"{key}.scopes"),
        evidence=evidence,
        token_file=token_file,
        ca_file=ca_file,
        prefix=prefix,
        listen=listen,
    )


def _prefix(value: Any, key: str) -> str:
    """A path prefix matched by whole segments (routing.py); `/.tokex` is the proxy's. Only
    what a request path can match: printable ASCII (a request target is ASCII, a
    percent-encoded one reads otherwise decoded), no `;` (a reading without the segment's
    parameters would take another route)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ProxyConfigError(key, "must be a path starting with /, e.g. /orders")
    if any(c in value for c in "?#%;\\") or any(not "!" <= c <= "~" for c in value):
        raise ProxyConfigError(
            key,
            "must be a plain path of printable ASCII: no ?, #, %, ;, \\, whitespace or"
            " non-ASCII characters (a request path could never match them)",
        )
    segments = value.strip("/").split("/")
    if value != "/" and any(s in ("", ".", "..") for s in segments):
        raise ProxyConfigError(key, "must not have empty, . or .. segments")
    prefix = "/" + "/".join(segments) if value != "/" else "/"
    if prefix == RESERVED_PREFIX or prefix.startswith(RESERVED_PREFIX + "/"):
        raise ProxyConfigError(key, f"{RESERVED_PREFIX}/ is the proxy's own, never forwarded")
    return prefix


def _upstream(value: Any, key: str) -> str:
    """https only; http only to a loopback host (tests, `tokex local`): the token must not
    cross a network in the clear."""
    if not isinstance(value, str) or "://" not in value:
        raise ProxyConfigError(key, "must be an https URL, e.g. https://orders.example.com")
    shown = redacted(value)  # quoted in the errors below: never a password it carries
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as err:  # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ProxyConfigError(key, f"{shown!r} is not a valid URL: {err}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ProxyConfigError(key, f"{shown!r} must be an https URL with a host")
    if problem := host_problem(parts.hostname):
        raise ProxyConfigError(key, f"{shown!r}: its host {problem}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ProxyConfigError(
            key, f"{shown!r} is plain http: use https (http only to a loopback host)"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ProxyConfigError(key, f"{shown!r} must be a base URL: no user, query or fragment")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ProxyConfigError(key, f"{shown!r} has whitespace or control characters")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _scopes(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ProxyConfigError(key, 'must be a list of strings, e.g. ["orders:read"]')
    if len(value) > MAX_SCOPES:
        raise ProxyConfigError(key, f"at most {MAX_SCOPES} scopes")
    for scope in value:
        if not identifiers.is_scope_token(scope):
            raise ProxyConfigError(
                key,
                f"{scope!r}: a scope is 1-128 printable ASCII characters without spaces, "
                '" or \\ (RFC 6749 section 3.3)',
            )
    return tuple(dict.fromkeys(value))


def _existing_file(path: str, key: str) -> None:
    # os.stat, not pathlib: Path.is_file() raises (Python 3.11) for a path it cannot look
    # up, a directory on the way this user may not search or a name too long.
    try:
        found = os.stat(path)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ProxyConfigError(key, f"{path}: no such file", file_not_found=True) from None
        raise ProxyConfigError(key, f"{path}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(found.st_mode):  # a directory, a device (/dev/null)
        raise ProxyConfigError(key, f"{path}: not a regular file")


def _ca_bundle(path: str, key: str) -> None:
    _existing_file(path, key)
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as err:
        raise ProxyConfigError(key, f"{path} is not a PEM CA bundle ({err})") from None


def _check_listeners(config: ProxyConfig) -> None:
    """Prefix routes need the top-level listener; no two listeners on one address, no two
    routes on one prefix, in any case (a path read in another case, routing.py, would
    take the other: one of the two could match no request); no upstream that is the proxy
    itself (a loop)."""
    seen: dict[str, str] = {}
    for route in config.routes:
        if route.prefix is None:
            continue
        if config.listen is None:
            raise ProxyConfigError("listen", f"missing: {route.name} has a prefix on it")
        if (folded := route.prefix.lower()) in seen:
            raise ProxyConfigError(
                f"{route.name}.prefix",
                f"{route.prefix} is already {seen[folded]}'s (prefixes match in any case)",
            )
        seen[folded] = route.name
    taken: dict[tuple[str, int], tuple[str, Address]] = {}
    for name, address in config.listeners.items():
        bound = (_bound_host(address.host), address.port)
        if address.port and bound in taken:
            other, spelled = taken[bound]
            same = "" if spelled == address else f" ({spelled}: the same address)"
            raise ProxyConfigError(name, f"{address} is already {other}'s{same}")
        taken[bound] = (name, address)
    addresses = {(_bound_host(address.host), address.port) for address in config.listeners.values()}
    for route in config.routes:
        parts = urllib.parse.urlsplit(route.upstream)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        reached = _reached_hosts(parts.hostname or "")
        if any(port == at and _binds(host, reached) for host, at in addresses):
            raise ProxyConfigError(
                f"{route.name}.upstream", f"{route.upstream} is this proxy itself (a loop)"
            )


def _reached_hosts(host: str) -> frozenset[str]:
    """The local addresses (as `_bound_host` spells them) a connection to `host` may
    reach on this machine: `localhost` either loopback address; none for a host that is
    not loopback, which the proxy cannot tell from a remote one (plain http, the only
    scheme a loop could answer, goes to loopback hosts only)."""
    name = _bound_host(host)
    if name == "127.0.0.1" and host.rstrip(".").lower() == "localhost":
        return frozenset({"127.0.0.1", "::1"})
    return frozenset({name}) if is_loopback(name) else frozenset()


def _binds(listener_host: str, reached: frozenset[str]) -> bool:
    """Whether a listener bound on `listener_host` accepts a connection to one of
    `reached`: its own address, or any IPv4 one for 0.0.0.0, or any for `::` (dual-stack)."""
    if listener_host == IPV6_ANY:
        return bool(reached)
    if listener_host == IPV4_ANY:
        return any(":" not in host for host in reached)
    return listener_host in reached


def _bound_host(host: str) -> str:
    """The address a listener's host binds, however it is spelled: `localhost` is
    127.0.0.1 (a host without `:` is bound as IPv4, server.py), an IP literal in its
    normal form (`::1` for `0:0::1`, an IPv4-mapped IPv6 address as its IPv4 one, which
    it binds on a dual-stack socket), any other name in lower case."""
    name = host.rstrip(".").lower()
    if name == "localhost":
        return "127.0.0.1"
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)
