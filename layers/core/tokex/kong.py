"""Kong declarative configuration (decK `_format_version: "3.0"`) from tokex's JWKS.

Pure functions: no AWS, no network. `tokex kong-config` (cli/kong.py) fetches the JWKS and
writes the file. Why each value is what it is: docs/kong.md, and Kong's own plugin code
(`kong/plugins/jwt/{schema,daos,handler,jwt_parser}.lua`, `kong/plugins/acl/handler.lua`).

Open-source Kong never fetches a JWKS: every published key becomes a `jwt_secrets`
credential. The `jwt` plugin never checks `aud`, so audiences are enforced with one
consumer per audience plus the `acl` plugin, the credential being found by the
`aud_kid` claim (`<aud>.<kid>`), unique per (audience, key) as `jwt_secrets.key` must be.

Enterprise `oauth2-introspection` never checks `aud` either; there tokex does: the
introspection client answers `active: true` only for tokens of the audiences it is
registered for (`tokex clients add|update --audience`), so those are the audiences the
plugin enforces, and the generator takes none of its own.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tokex import base64url, identifiers
from tokex.regions import INTROSPECT_PATH, regional_path
from tokex.tokens.jwks import DISCOVERY_PATH, MIN_RSA_BITS, rfc7638_thumbprint

FORMAT_VERSION = "3.0"
TAGS = ("tokex",)
KID_CLAIM = "kid"
# The token claim Kong looks credentials up by on audience-bound routes (docs/kong.md).
AUDIENCE_KEY_CLAIM = "aud_kid"
CONSUMER = "tokex"
AUDIENCE_CONSUMER_PREFIX = "tokex-aud-"
# jwt schema.lua: maximum_expiration is between 0 and 31536000 (0 = unchecked).
MAX_EXPIRATION_LIMIT = 31_536_000
# Key types of the algorithms tokex signs with (identifiers.py); Kong's jwt plugin
# verifies both.
_KEY_TYPES = identifiers.KEY_TYPES
# Kong's `name` typedef for services and routes (utf8 letters, digits, . - _ ~).
_NAME = re.compile(r"[A-Za-z0-9._~-]{1,128}")
# RFC 7638 thumbprints are base64url: never a ".", so `<aud>.<kid>` splits unambiguously.
_KID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class KongConfigError(ValueError):
    """The JWKS or the requested placement cannot make a sound Kong configuration.
    `field` names the Placement field at fault (None: the JWKS or the plugin options)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Route:
    """A Kong route and the audiences whose tokens it accepts."""

    name: str
    audiences: tuple[str, ...]
    path: str | None = None  # used only when the service is emitted too (default /<name>)


@dataclass(frozen=True)
class Placement:
    """Where the plugins go: on each route when routes are given, else on the service
    (accepting `audiences`, or any audience when empty), else on every route (global)."""

    service: str | None = None
    service_url: str | None = None  # emit the service itself (else defined elsewhere)
    routes: tuple[Route, ...] = ()
    audiences: tuple[str, ...] = ()
    global_scope: bool = False

    def check(self) -> None:
        if self.service is not None and not _NAME.fullmatch(self.service):
            raise KongConfigError(
                f"invalid Kong service name {self.service!r} (1-128 of A-Za-z0-9._~-)", "service"
            )
        if self.service_url is not None and self.service is None:
            raise KongConfigError("a service URL needs a service name", "service_url")
        if self.global_scope and (self.service or self.routes):
            raise KongConfigError("global plugins exclude a service or routes", "global_scope")
        if not (self.service or self.routes or self.global_scope):
            raise KongConfigError(
                "say where the plugins go: a service, routes or global", "placement"
            )
        if self.routes and self.audiences:
            raise KongConfigError(
                "audiences belong to the routes when routes are given", "audiences"
            )
        for route in self.routes:
            if not _NAME.fullmatch(route.name):
                raise KongConfigError(
                    f"invalid Kong route name {route.name!r} (1-128 of A-Za-z0-9._~-)", "routes"
                )
            if not route.audiences:
                raise KongConfigError(f"route {route.name} serves no audience", "routes")
            if route.path is not None and not route.path.startswith("/"):
                raise KongConfigError(f"route path {route.path!r} must start with /", "routes")
        for audience in self.all_audiences():
            if not identifiers.is_audience(audience):
                raise KongConfigError(
                    f"invalid audience {audience!r}: {identifiers.AUDIENCE_RULE}"
                    " (docs/contract.md)",
                    "audiences",
                )

    def all_audiences(self) -> list[str]:
        found = [a for route in self.routes for a in route.audiences] + list(self.audiences)
        return sorted(set(found))


def audience_key(audience: str, kid: str) -> str:
    """The `aud_kid` claim value and `jwt_secrets.key` of (audience, signing key)."""
    return f"{audience}.{kid}"


def audience_consumer(audience: str) -> str:
    """Consumer username and ACL group of an audience."""
    return AUDIENCE_CONSUMER_PREFIX + audience


def public_key_pem(jwk: Mapping[str, Any]) -> str:
    """SubjectPublicKeyInfo PEM of an RSA or P-256 JWK (Kong wants PEM, ES keys too)."""

    def uint(name: str) -> int:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise KongConfigError(f"JWK {jwk.get('kid')!r} lacks {name!r}")
        try:
            return int.from_bytes(base64url.decode(value), "big")
        except ValueError:
            raise KongConfigError(f"JWK {jwk.get('kid')!r}: {name!r} is not base64url") from None

    numbers: rsa.RSAPublicNumbers | ec.EllipticCurvePublicNumbers
    if jwk.get("kty") == "RSA":
        numbers = rsa.RSAPublicNumbers(uint("e"), uint("n"))
    elif jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        numbers = ec.EllipticCurvePublicNumbers(uint("x"), uint("y"), ec.SECP256R1())
    else:
        raise KongConfigError(f"JWK {jwk.get('kid')!r}: unsupported key type")
    try:
        key = numbers.public_key()
    except ValueError as err:  # cryptography: a modulus too small, a point off the curve
        raise KongConfigError(f"JWK {jwk.get('kid')!r}: not a valid public key ({err})") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        # What tokex publishes and signs with (tokens/jwks.py): a shorter key is no tokex
        # key, and Kong would accept tokens anyone who factors it could forge.
        raise KongConfigError(
            f"JWK {jwk.get('kid')!r}: a {key.key_size}-bit RSA key (tokex's have at least"
            f" {MIN_RSA_BITS})"
        )
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode("ascii")


@dataclass(frozen=True)
class PublishedKey:
    kid: str
    alg: str
    pem: str


def published_keys(jwks: Mapping[str, Any]) -> list[PublishedKey]:
    """Every key of the JWKS as Kong needs it, sorted by kid (stable output).

    Refuses what Kong could not verify rather than dropping it silently: a missing key
    means refused tokens, found only in production.
    """
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise KongConfigError("the JWKS has no keys")
    found: dict[str, PublishedKey] = {}
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise KongConfigError("every JWKS entry must be a JSON object")
        kid, alg = jwk.get("kid"), jwk.get("alg")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise KongConfigError(f"JWK kid {kid!r} is not a base64url thumbprint")
        if jwk.get("use", "sig") != "sig":
            raise KongConfigError(f"JWK {kid}: use {jwk.get('use')!r} is not sig")
        if not isinstance(alg, str) or alg not in _KEY_TYPES:
            raise KongConfigError(f"JWK {kid}: alg {alg!r} is not one tokex signs with")
        if jwk.get("kty") != _KEY_TYPES[alg]:
            raise KongConfigError(f"JWK {kid}: a {jwk.get('kty')} key cannot sign {alg}")
        pem = public_key_pem(jwk)
        # Kong looks a credential up by kid alone: a kid that is not the key's own
        # thumbprint (docs/contract.md) could name two keys, one of them silently dropped.
        if rfc7638_thumbprint(jwk) != kid:
            raise KongConfigError(f"JWK {kid}: the kid is not the key's RFC 7638 thumbprint")
        found.setdefault(kid, PublishedKey(kid, alg, pem))
    return [found[kid] for kid in sorted(found)]


def existing_secrets(document: Mapping[str, Any] | None) -> dict[tuple[str, str, str], str]:
    """(key, algorithm, PEM) -> dummy secret of every credential of a previous file, so a
    re-run changes nothing for keys that did not change (a minimal `deck diff`)."""
    reused: dict[tuple[str, str, str], str] = {}
    for consumer in (document or {}).get("consumers") or []:
        for credential in consumer.get("jwt_secrets") or []:
            fields = [credential.get(n) for n in ("key", "algorithm", "rsa_public_key", "secret")]
            if all(isinstance(value, str) and value for value in fields):
                key, alg, pem, secret = fields
                reused[(key, alg, pem.strip())] = secret
    return reused


def _dummy_secret() -> str:
    # decK and Kong require a `secret` on every credential; RS/ES never use it.
    return secrets.token_urlsafe(32)


def jwt_plugin(key_claim_name: str, max_ttl: int) -> dict[str, Any]:
    """The open-source `jwt` plugin as tokex tokens need it (docs/kong.md)."""
    if not 0 < max_ttl <= MAX_EXPIRATION_LIMIT:
        raise KongConfigError(f"maximum expiration must be 1..{MAX_EXPIRATION_LIMIT} seconds")
    config = {
        "key_claim_name": key_claim_name,
        # Without these an expired token passes; Kong allows no clock leeway.
        "claims_to_verify": ["exp", "nbf"],
        "maximum_expiration": max_ttl,
        "run_on_preflight": True,
        # Bearer tokens only from the Authorization header: never from URLs (logged) or
        # cookies (CSRF). The schema's default would read `?jwt=`.
        "header_names": ["authorization"],
        "uri_param_names": [],
        "cookie_names": [],
        "secret_is_base64": False,
    }
    return {"name": "jwt", "tags": list(TAGS), "config": config}


def acl_plugin(audiences: Iterable[str]) -> dict[str, Any]:
    groups = [audience_consumer(a) for a in audiences]
    config = {"allow": groups, "hide_groups_header": True}
    return {"name": "acl", "tags": list(TAGS), "config": config}


def jwt_config(
    jwks: Mapping[str, Any],
    placement: Placement,
    *,
    max_ttl: int,
    existing: Mapping[str, Any] | None = None,
    new_secret: Callable[[], str] = _dummy_secret,
) -> dict[str, Any]:
    """The open-source configuration: `jwt` (+ `acl` when audiences are given) plugins
    and one credential per published key (per audience and key with audiences)."""
    placement.check()
    keys = published_keys(jwks)
    reused = existing_secrets(existing)

    def credentials(audience: str | None) -> list[dict[str, Any]]:
        made = []
        for key in keys:
            name = key.kid if audience is None else audience_key(audience, key.kid)
            secret = reused.get((name, key.alg, key.pem.strip())) or new_secret()
            made.append(
                {
                    "key": name,
                    "algorithm": key.alg,
                    "rsa_public_key": key.pem,
                    "secret": secret,
                    "tags": list(TAGS),
                }
            )
        return made

    audiences = placement.all_audiences()
    if not audiences:
        consumers = [_consumer(CONSUMER, credentials(None), acl=False)]
        return _assemble(placement, lambda _: [jwt_plugin(KID_CLAIM, max_ttl)], consumers)
    consumers = [_consumer(audience_consumer(a), credentials(a)) for a in audiences]

    def plugins(served: Sequence[str]) -> list[dict[str, Any]]:
        return [jwt_plugin(AUDIENCE_KEY_CLAIM, max_ttl), acl_plugin(served)]

    return _assemble(placement, plugins, consumers)


def _consumer(username: str, jwt_secrets: list[dict[str, Any]], acl: bool = True) -> dict[str, Any]:
    consumer: dict[str, Any] = {"username": username, "tags": list(TAGS)}
    if acl:
        consumer["acls"] = [{"group": username, "tags": list(TAGS)}]
    consumer["jwt_secrets"] = jwt_secrets
    return consumer


def openid_connect_config(issuer: str, placement: Placement) -> dict[str, Any]:
    """Kong Enterprise `openid-connect`: discovery and JWKS fetched and cached by Kong."""
    placement.check()

    def plugins(audiences: Sequence[str]) -> list[dict[str, Any]]:
        config: dict[str, Any] = {
            "issuer": issuer.rstrip("/") + DISCOVERY_PATH,
            "issuers_allowed": [issuer],
            "auth_methods": ["bearer"],
            "bearer_token_param_type": ["header"],
        }
        if audiences:
            config |= {"audience_claim": ["aud"], "audience_required": list(audiences)}
        return [{"name": "openid-connect", "tags": list(TAGS), "config": config}]

    return _assemble(placement, plugins, [])


def introspection_config(
    issuer: str,
    placement: Placement,
    *,
    client_id: str,
    client_secret: str,
    ttl: int = 30,
    consumer_by: str = "client_id",
    region: str | None = None,
) -> dict[str, Any]:
    """Kong Enterprise `oauth2-introspection` against tokex's RFC 7662 endpoint. The
    audiences enforced are those registered on the client (`client_id`): tokex answers
    `active: false` for tokens of any other audience. `region`: a multi-Region
    deployment's Region whose endpoint Kong asks (`{issuer}/regions/<region>/introspect`,
    which keeps answering while home is down: docs/multi-region.md); home's otherwise."""
    placement.check()
    if placement.all_audiences():
        raise KongConfigError(
            "oauth2-introspection enforces the audiences registered on the introspection "
            "client: register them with `tokex clients add|update --audience AUD`, not here",
            "audiences",
        )
    if not client_id or ":" in client_id or not client_secret:
        raise KongConfigError("a client id (without ':') and a client secret are required")
    basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
    path = INTROSPECT_PATH if region is None else regional_path(region, INTROSPECT_PATH)
    config = {
        "introspection_url": issuer.rstrip("/") + path,
        "authorization_value": f"Basic {basic}",  # RFC 7617; the header Kong sends
        "token_type_hint": "access_token",
        "ttl": ttl,  # seconds a verdict is cached: a revoked token lives this much longer
        "consumer_by": consumer_by,
        "run_on_preflight": True,
    }
    return _assemble(
        placement,
        lambda _: [{"name": "oauth2-introspection", "tags": list(TAGS), "config": dict(config)}],
        [],
    )


def _assemble(
    placement: Placement,
    plugins_for: Callable[[Sequence[str]], list[dict[str, Any]]],
    consumers: list[dict[str, Any]],
) -> dict[str, Any]:
    document: dict[str, Any] = {"_format_version": FORMAT_VERSION}
    route_plugins = {route.name: plugins_for(route.audiences) for route in placement.routes}
    service_plugins = [] if placement.routes else plugins_for(placement.audiences)
    if placement.service_url is not None:
        service: dict[str, Any] = {"name": placement.service, "url": placement.service_url}
        service["tags"] = list(TAGS)
        if service_plugins:
            service["plugins"] = service_plugins
        if placement.routes:
            service["routes"] = [
                {
                    "name": route.name,
                    "paths": [route.path or f"/{route.name}"],
                    "tags": list(TAGS),
                    "plugins": route_plugins[route.name],
                }
                for route in placement.routes
            ]
        document["services"] = [service]
    else:
        # Plugins on entities defined in another decK file, or global.
        scoped = [{"name": p["name"], "service": placement.service, **p} for p in service_plugins]
        if placement.global_scope:
            scoped = service_plugins
        for name, plugins in route_plugins.items():
            scoped += [{"name": p["name"], "route": name, **p} for p in plugins]
        document["plugins"] = scoped
    if consumers:
        document["consumers"] = consumers
    return document
