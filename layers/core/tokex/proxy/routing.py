"""Which route a request goes to, and which requests go nowhere.

A request target must be origin-form (`/path?query`, RFC 9112 §3.2.1): an absolute URI
(`GET http://elsewhere/`) or CONNECT's authority would make this an open proxy, so both are
refused; the upstream comes from the configuration only. On its listener the longest prefix
wins, matched by whole path segments (`/orders` takes `/orders` and `/orders/1`, not
`/ordersx`); a route with a listener of its own takes every path of it. `/.tokex/` is the
proxy's own and is never forwarded (docs/injection.md "Threat model").

"In any case" is read as widely as any server reads it: besides ASCII's cases, a non-ASCII
letter that a case mapping turns into ASCII letters is those letters (`_in_any_case`).
Python's lower() alone keeps the long s (U+017F) and the dotless i (U+0131), which Java's
equalsIgnoreCase reads as `s` and `i` (Go's EqualFold the long s as `s`, Python's casefold
the sharp s as `ss`): `/order%C5%BF/1` went on the `/` route to an upstream that served it
as `/orders/1`.

The other readings (`_readings`) are what servers are known to do to a path before they
route or serve it; where a reading cannot be made, the path is refused instead: escapes
that are not UTF-8 (`%C0%AE` is `.` to a lax decoder, U+FFFD to Python's) and `%00` (where
a server written in C cuts the path).
"""

from __future__ import annotations

import functools
import re
import unicodedata
import urllib.parse
from collections.abc import Callable, Sequence

from tokex.proxy.config import RESERVED_PREFIX, Route

_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REPEATED_SLASHES = re.compile(r"//+")
# What some reading changes in an ASCII path: without it, the path is its only reading.
_READ_OTHERWISE = re.compile(r"[%\\; ]|//|\.(?:/|$)")


class BadTarget(ValueError):
    """A request target the proxy does not forward (answered 400)."""


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form target, `?` kept with the query so that the two
    joined are the target unchanged. A path with a `.` or `..` segment (also
    percent-encoded, or in another reading, `_readings`) is refused: the upstream could
    resolve it to a path that another route (another audience's token) serves."""
    if not target.startswith("/"):
        raise BadTarget("the request target must be a path (origin-form), not a URL")
    if target.startswith("//"):  # read as a network-path reference (`//host/...`) by some
        raise BadTarget("the path must not start with //")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in target):
        raise BadTarget("the request target has spaces, control or non-ASCII characters")
    # A fragment is never part of a request target (RFC 9112 §3.2), and the way on drops
    # it: `/a#/b` would be routed by one path and reach the upstream as another.
    if "#" in target:
        raise BadTarget("the request target has a fragment (#)")
    # urllib3 encodes every `%` of a target again when one starts no escape: `a%2Fb%zz`
    # would reach the upstream as `a%252Fb%25zz`, another path.
    if _LONE_PERCENT.search(target):
        raise BadTarget("the request target has a % that starts no %XX escape")
    path, mark, query = target.partition("?")
    # Python decodes an escape that is not UTF-8 to U+FFFD, so no reading below sees what a
    # lax decoder does: `%C0%AE` (an overlong `.`) is `.` to some, `/public/%C0%AE%C0%AE/x`
    # a `..` segment.
    try:
        decoded = urllib.parse.unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise BadTarget(
            "the path's percent-escapes are not UTF-8 (an overlong or invalid sequence),"
            " which decoders read differently"
        ) from None
    if "\0" in decoded:  # a server in C reads the path up to it: `/a%00/../b` as `/a`
        raise BadTarget("the path has %00 (an encoded NUL), where some servers cut it")
    readings = _readings(path)
    # An upstream that decodes twice reads `%252e` as `.` and `%252F` as `/`, and one that
    # normalises first the fullwidth `%EF%BC%85` (U+FF05) as `%`. Without a `%` in any
    # reading, decoding once leaves none to decode again: every reading is final.
    if any("%" in reading for reading in readings):
        raise BadTarget(
            "the path has %25 (an encoded %) or a character read as %, which may be decoded twice"
        )
    if any(_is_dot_segment(s) for reading in readings for s in reading.split("/")):
        raise BadTarget("the path has a . or .. segment (or one of dots and spaces only)")
    return path, mark + query


def _is_dot_segment(segment: str) -> bool:
    """`.` or `..`, and to Windows (which trims a segment's trailing dots and spaces) also
    `...` or `.. `: dots and spaces only, a dot first."""
    return segment.startswith(".") and not segment.rstrip(". ")


# The target check, the reserved check and the route match each read a path: kept for the
# last few paths, so a request's path is read once (few: a path may be 64 KiB, its readings 17).
@functools.lru_cache(maxsize=8)
def _readings(path: str) -> frozenset[str]:
    """The path as some upstream may read it: percent-decoded with `\\` a separator (to
    some servers), then, each or not and each with the others, NFKC-normalised (the
    fullwidth solidus, full stop and a, U+FF0F, U+FF0E and U+FF41, are `/`, `.` and `a`
    to servers that normalise, IIS's best fit), each
    segment without its `;` parameters (to Tomcat `..;` is `..` and `/.tokex;x/` is
    `/.tokex/`), without its trailing dots and spaces (to Windows `/admin./` and
    `/admin%20/` are `/admin/`), with repeated slashes merged (nginx, Apache)."""
    if path.isascii() and not _READ_OTHERWISE.search(path):
        return frozenset((path,))
    readings = {urllib.parse.unquote(path).replace("\\", "/")}
    for read in _READS:
        readings |= {read(reading) for reading in readings}
    return frozenset(readings)


def _normalised(text: str) -> str:
    if text.isascii():  # NFKC keeps ASCII as it is
        return text
    # NFKC makes the fullwidth reverse solidus (U+FF3C) a `\`, a separator as before.
    return unicodedata.normalize("NFKC", text).replace("\\", "/")


def _without_parameters(text: str) -> str:
    return "/".join(segment.split(";", 1)[0] for segment in text.split("/"))


def _trimmed(text: str) -> str:
    return "/".join(segment.rstrip(". ") for segment in text.split("/"))


def _slashes_merged(text: str) -> str:
    return _REPEATED_SLASHES.sub("/", text)


_READS: tuple[Callable[[str], str], ...] = (
    _normalised,
    _without_parameters,
    _trimmed,
    _slashes_merged,
)


def is_reserved(path: str) -> bool:
    """Under `/.tokex` in any reading an upstream may give the path (`_readings`, in any
    case, slashes repeated): the proxy's own, never forwarded."""
    reserved = RESERVED_PREFIX.removeprefix("/")
    return any(
        _in_any_case(next((s for s in reading.split("/") if s), "")) == reserved
        for reading in _readings(path)
    )


def _in_any_case(text: str) -> str:
    """`text` lower-cased, each non-ASCII character whose upper, lower or case-folded form
    holds ASCII letters read as those letters (the long s as `s`, the dotless i and the
    dotted capital I as `i`, the Kelvin sign as `k`, the sharp s as `ss`, the ligature fi
    as `fi`): every reading in any case that could make a path another route's (route
    prefixes are ASCII)."""
    if text.isascii():
        return text.lower()
    return "".join(_char_in_any_case(c) for c in text)


def _char_in_any_case(c: str) -> str:
    if c.isascii():
        return c.lower()
    for form in (c.upper(), c.lower(), c.casefold()):
        letters = "".join(x for x in form if x.isascii())
        if letters:
            return letters.lower()
    return c.lower()


def prefix_matches(prefix: str, path: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


class RouteTable:
    """The routes by listener, longest prefix first."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._by_listener: dict[str, list[Route]] = {}
        for route in routes:
            self._by_listener.setdefault(route.listener, []).append(route)
        for candidates in self._by_listener.values():
            candidates.sort(key=lambda r: len(r.prefix or "/"), reverse=True)

    def match(self, listener: str, path: str) -> Route | None:
        """The route of `path` (a checked path, without its query) on `listener`. Raises
        BadTarget for a path that an upstream reading it in another usual way would take
        for another route's, whose token it is not: percent-decoded (nginx's locations,
        `%2F` included) with `\\` as `/`, NFKC-normalised, without each segment's `;`
        parameters (Tomcat, Spring) or trailing dots and spaces (Windows), with repeated
        slashes merged (nginx, Apache), in any case (servers that match paths so,
        `_in_any_case`), and each of these with the others (`_readings`). The request is
        forwarded as sent; the readings only decide whether every one routes alike."""
        route = self._match(listener, path)
        readings = {(reading, fold) for reading in _readings(path) for fold in (False, True)}
        # Each distinct reading once: the path as sent is matched above.
        for reading, fold in readings - {(path, False)}:
            if self._match(listener, reading, fold=fold) is not route:
                raise BadTarget(
                    "the path reads as another route's once percent-decoded, normalised"
                    " (NFKC), without its ; parameters or trailing dots and spaces, with"
                    " repeated slashes merged or in another case: send it as the route"
                    " spells it"
                )
        return route

    def _match(self, listener: str, path: str, *, fold: bool = False) -> Route | None:
        """The longest prefix that takes `path`; `fold`: in any case."""
        for route in self._by_listener.get(listener, ()):
            prefix = route.prefix
            if prefix is None:
                return route
            if (
                prefix_matches(prefix.lower(), _in_any_case(path))
                if fold
                else prefix_matches(prefix, path)
            ):
                return route
        return None
