"""tokex/proxy/routing.py: which route takes a request, and which requests go nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokex.proxy.config import ProxyConfig
from tokex.proxy.routing import BadTarget, RouteTable, is_reserved, split_target


def table() -> RouteTable:
    routes = [
        {"prefix": "/", "upstream": "https://default.example", "audience": "default-api"},
        {"prefix": "/orders", "upstream": "https://orders.example", "audience": "orders-api"},
        {"prefix": "/orders/admin", "upstream": "https://admin.example", "audience": "admin-api"},
        {"listen": "127.0.0.1:0", "upstream": "https://own.example", "audience": "own-api"},
    ]
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": routes}
    config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
    return RouteTable(config.routes)


@pytest.mark.parametrize(
    "path,audience",
    [
        ("/orders", "orders-api"),
        ("/orders/", "orders-api"),
        ("/orders/1", "orders-api"),
        ("/ordersx", "default-api"),  # whole segments only
        ("/orders/admin", "admin-api"),  # the longest prefix wins
        ("/orders/admin/users/1", "admin-api"),
        ("/orders/administrator", "orders-api"),
        ("/", "default-api"),
        ("/billing/1", "default-api"),
    ],
)
def test_the_longest_prefix_of_whole_segments_wins(path: str, audience: str) -> None:
    route = table().match("listen", path)
    assert route is not None and route.audience == audience


@pytest.mark.parametrize(
    "path",
    [
        "/%6Frders/1",  # nginx decodes a location's path: /orders/1
        "/%6frders",
        "/orders%2Fadmin/users",  # the admin route's once %2F is a /
        "/orders%5Cadmin",  # a \ is a / to some servers
        "/orders;v=2/admin/1",  # Tomcat drops a segment's ;parameters
        "/orders;v=2/1",  # the route of / as sent, of /orders to Tomcat
        "/Orders/1",  # a server that matches paths in any case
        "/ORDERS/ADMIN",
        # Letters lower() keeps that other servers read in any case as ASCII ones: the long
        # s is `s` to Java's equalsIgnoreCase and Go's EqualFold, the dotless i `i` to
        # Java's, the dotted capital I `i` to Go's ToLower, the sharp s `ss` to casefold.
        "/order%C5%BF/1",
        "/orders/adm%C4%B1n",
        "/orders/adm%C4%B0n",
        # nginx and Apache merge repeated slashes: `//orders/1` is `/orders/1` to them.
        "/%2Forders/1",
        "/%2F%2Forders/1",
        "/%5C/orders/1",
        "/orders/%2Fadmin/users",
        "/orders/%2F%2Fadmin",
        # Servers that normalise (NFKC, IIS's best fit) read fullwidth letters and
        # slashes as ASCII ones: U+FF0F is `/`, U+FF4F `o`, U+FF41 `a`.
        "/%EF%BD%8Frders/1",
        "/orders%EF%BC%8Fadmin",
        "/orders/%EF%BD%81dmin",
        # Windows trims a segment's trailing dots and spaces: `/orders./1` is `/orders/1`.
        "/orders./1",
        "/orders%20/1",
        "/orders.%20./1",
        "/orders/%20/admin",  # an empty segment once trimmed, merged away
        "/orders.;v=2/1",
    ],
)
def test_a_path_another_reading_routes_elsewhere_is_refused(path: str) -> None:
    """Matched as sent, each went to the route of `/` (or `/orders`) with its token, and an
    upstream that normalises paths served it as another route's path: a token of one
    audience reached another audience's service."""
    with pytest.raises(BadTarget, match="reads as another route's"):
        table().match("listen", path)


@pytest.mark.parametrize("path", ["/cla%C3%9F/1", "/%EF%AC%81les", "/%E2%84%AA8s"])
def test_a_letter_that_is_others_in_another_case_is_read_as_them(path: str) -> None:
    """The sharp s is `ss` and the ligature fi `fi` to Python's casefold, the Kelvin sign
    `k` to lower(): routed by `/` as sent, by `/class`, `/files` or `/k8s` so read."""
    routes = [
        {"prefix": prefix, "upstream": "https://u.example", "audience": f"aud-{n}"}
        for n, prefix in enumerate(["/", "/class", "/files", "/k8s"])
    ]
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": routes}
    config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
    with pytest.raises(BadTarget, match="reads as another route's"):
        RouteTable(config.routes).match("listen", path)


@pytest.mark.parametrize(
    ("path", "audience"),
    [
        ("/orders/a%2Fb", "orders-api"),  # an encoded / inside the route: the same route
        ("/orders/%41", "orders-api"),
        ("/orders/1;v=2", "orders-api"),  # ;parameters past the route's own segments
        ("/billing/Item%20One", "default-api"),
        ("/Billing/1", "default-api"),  # another case, but no other route reads it
        ("/orders//1", "orders-api"),  # slashes merged, still the same route
        ("/billing/%2Fx", "default-api"),
        ("/orders/caf%C3%A9", "orders-api"),  # a letter no case makes an ASCII one
        ("/billing/%C5%BF", "default-api"),  # a long s, `s` in any case: still no other route
        ("/orders/1.", "orders-api"),  # trimmed, still the same route
        ("/orders/%EF%BC%8Fx", "orders-api"),  # a fullwidth / inside the route
    ],
)
def test_a_path_every_reading_routes_alike_is_served(path: str, audience: str) -> None:
    route = table().match("listen", path)
    assert route is not None and route.audience == audience


@pytest.mark.parametrize(
    ("path", "audience"),
    [
        ("/orders/caf%C3%A9", "default-api"),  # é is é in every reading
        ("/admin/caf%C3%A9", "admin-api"),
        ("/%E6%97%A5%E6%9C%AC/%E2%82%AC", "default-api"),  # 日本/€
        ("/admin/%C3%85ngstr%C3%B6m", "admin-api"),
        ("/admin/A%CC%8A", "admin-api"),  # decomposed: NFKC composes it, no other route
        ("/files/report.v2.pdf", "default-api"),
        ("/admin/users/1", "admin-api"),
    ],
)
def test_non_ascii_paths_that_read_alike_are_served(path: str, audience: str) -> None:
    """The readings refuse only what could reach another route: a non-ASCII path whose
    every reading routes alike goes through, to its route."""
    routes = [
        {"prefix": "/", "upstream": "https://default.example", "audience": "default-api"},
        {"prefix": "/admin", "upstream": "https://admin.example", "audience": "admin-api"},
    ]
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": routes}
    config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
    assert split_target(path) == (path, "")
    assert not is_reserved(path)
    route = RouteTable(config.routes).match("listen", path)
    assert route is not None and route.audience == audience


def test_a_route_with_its_own_listener_takes_every_path_of_it() -> None:
    routes = table()
    for path in ("/", "/orders/1", "/anything"):
        route = routes.match("routes[3].listen", path)
        assert route is not None and route.audience == "own-api"
    assert routes.match("elsewhere", "/") is None


def test_no_route_is_none() -> None:
    routes = [{"prefix": "/orders", "upstream": "https://o.example", "audience": "o"}]
    document = {"endpoint": "https://auth.example.com", "listen": "127.0.0.1:0", "routes": routes}
    config = ProxyConfig.from_document(document, base_dir=Path("/"), environ={})
    assert RouteTable(config.routes).match("listen", "/billing") is None


def test_origin_form_targets_are_split_unchanged() -> None:
    assert split_target("/orders/1") == ("/orders/1", "")
    assert split_target("/orders/1?expand=a%2Cb&x") == ("/orders/1", "?expand=a%2Cb&x")
    assert split_target("/a?") == ("/a", "?")
    assert split_target("/a/%2F/b") == ("/a/%2F/b", "")
    assert split_target("/a;v=1/..x/b%5Cc") == ("/a;v=1/..x/b%5Cc", "")
    assert split_target("/search?q=100%25") == ("/search", "?q=100%25")  # not routed


@pytest.mark.parametrize(
    "target,why",
    [
        ("http://evil.example/", "origin-form"),
        ("https://127.0.0.1:1/x", "origin-form"),
        ("evil.example:443", "origin-form"),
        ("*", "origin-form"),
        ("//evil.example/x", "must not start with //"),
        ("/a/../b", ". or .."),
        ("/a/./b", ". or .."),
        ("/a/%2e%2E/b", ". or .."),
        ("/a/%2E", ". or .."),
        ("/a\x00b", "control"),
        ("/a b", "spaces"),
        ("/caf\xe9", "non-ASCII"),
        ("/admin#/orders", "fragment"),  # dropped on the way: routed as one, sent as another
        ("/a?b#c", "fragment"),
        ("/files/a%2Fb%zz", "starts no %XX escape"),  # urllib3 would encode every % again
        ("/a?x=%", "starts no %XX escape"),
        ("/orders/..\\admin", ". or .."),  # a separator to some servers
        ("/orders/%2e%2e%5Cadmin", ". or .."),
        ("/orders/..;/admin", ". or .."),  # `..` to Tomcat
        ("/orders/.;x=1/admin", ". or .."),
        # An upstream that decodes twice reads `%252e` as `.` and `%252F` as `/`.
        ("/public/%252e%252e/admin/users", "%25"),
        ("/public%252F..%252Fadmin/users", "%25"),
        ("/files/100%25", "%25"),
        # ... and one that normalises first reads the fullwidth percent (U+FF05) as `%`.
        ("/public/%EF%BC%852e%EF%BC%852e/admin", "%25"),
        # Escapes that are not UTF-8: Python decodes them to U+FFFD, a lax decoder reads
        # the overlong `%C0%AE` as `.`.
        ("/public/%C0%AE%C0%AE/admin", "not UTF-8"),
        ("/a/%ED%A0%80", "not UTF-8"),  # a surrogate
        ("/a/%FF", "not UTF-8"),
        ("/a/caf%E9", "not UTF-8"),  # Latin-1
        # A server in C reads the path up to a NUL.
        ("/orders%00/admin", "%00"),
        ("/a%00", "%00"),
        # Servers that normalise (NFKC) read the fullwidth full stop (U+FF0E) as `.`, U+2025
        # (two dot leader) as `..`.
        ("/public/%EF%BC%8E%EF%BC%8E/admin", ". or .."),
        ("/public/%E2%80%A5/admin", ". or .."),
        ("/public/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin", ". or .."),
        # Windows trims trailing dots and spaces: `..%20` and `...` are `..` to it.
        ("/orders/..%20/admin", ". or .."),
        ("/orders/.../admin", ". or .."),
        ("/orders/.%20/admin", ". or .."),
    ],
)
def test_other_targets_are_refused(target: str, why: str) -> None:
    with pytest.raises(BadTarget, match=why):
        split_target(target)


@pytest.mark.parametrize(
    "path,reserved",
    [
        ("/.tokex", True),
        ("/.tokex/", True),
        ("/.tokex/token", True),
        ("/%2Etokex/token", True),
        ("/.TOKEX/health", True),
        ("/.to%E2%84%AAex/health", True),  # the Kelvin sign: `k` in any case
        # As upstreams may read them: `;` parameters dropped, `\` a `/`, `//` one `/`.
        ("/.tokex;x/token", True),
        ("/.tokex;/", True),
        ("/%5C.tokex/token", True),
        ("/\\.tokex/token", True),
        ("//.tokex/token", True),
        # Normalised (NFKC): the fullwidth `.` (U+FF0E), `t` (U+FF54) and `/` (U+FF0F).
        ("/%EF%BC%8Etokex/token", True),
        ("/.%EF%BD%94okex/token", True),
        ("/%EF%BC%8F.tokex/token", True),
        # Trimmed as Windows does: `/.tokex./` and `/.tokex%20/` are `/.tokex/`.
        ("/.tokex./token", True),
        ("/.tokex%20/token", True),
        ("/.tokex.", True),
        ("/.tokexy", False),
        ("/.tokexy;x", False),
        ("/api/.tokex/token", False),
        ("/", False),
    ],
)
def test_the_reserved_prefix(path: str, reserved: bool) -> None:
    assert is_reserved(path) is reserved
