"""The rules of Kong's open-source `jwt` and `acl` plugins, re-implemented for tests.

An emulator of a third party, so our generated decK files can be checked against the
rules Kong applies, without a Kong. It follows the source of **Kong 3.9.3** (the
examples' `kong:3.9`, github.com/Kong/kong at tag 3.9.3), not its documentation; each
step cites the Lua it follows:

- `kong/plugins/jwt/handler.lua`: `retrieve_tokens` (query, cookies, then headers,
  `\\s*[Bb]earer\\s+(.+)`; more than one distinct token is refused), `do_authentication`
  (credential looked up by `claims[key_claim_name] or header[key_claim_name]`, `alg`
  must equal the credential's algorithm, `secret_is_base64` for HS credentials only,
  signature, `claims_to_verify`, `maximum_expiration`), `access` (`run_on_preflight`,
  `anonymous`).
- `kong/plugins/jwt/jwt_parser.lua`: `decode_token` (three dot-separated parts,
  `base64_decode`, JSON, a known `alg`), `alg_verify` (ES256 asserts a 64-byte raw R||S
  signature and PS* a 256-byte one: a failed assert is a Lua error, so Kong answers 500),
  `verify_registered_claims` (`nbf > now` / `exp <= now`, no leeway),
  `check_maximum_expiration` (`exp - now > maximum_expiration`).
- `base64_decode` is `ngx.base64.decode_base64url` (lua-resty-core), that is nginx's
  `ngx_decode_base64url` (`src/core/ngx_string.c`); the JSON decoder is lua-cjson's
  `json_decode` (`lua_cjson.c`).
- `kong/db/dao/init.lua`: `DAO:cache_key` and `select_by_key` raise for a key claim
  that is not a string (500).
- `kong/plugins/jwt/daos.lua`: `jwt_secrets.key` is unique across all consumers.
- `kong/plugins/jwt/schema.lua`: configuration defaults.
- `kong/plugins/acl/handler.lua` + `groups.lua`: allow/deny on the consumer's groups;
  no consumer → 401, a consumer outside the allow list → 403.

Approximations: a header or payload that is a JSON string indexes to nil (Lua would
find the string library's functions under their names, `sub` or `len`, say: no
`key_claim_name` tokex writes); Kong's credential cache is cold (an object key claim
whose `key` names a credential already cached would be looked up, not a 500); cjson's
number syntax beyond JSON's and its refusal of an unpaired `\\u` surrogate escape are not
modelled, nor Lua's coercion of a numeric string `exp` in `check_maximum_expiration`
(here a 500); plugins scoped to consumers and `authenticated_groups` (set by other
plugins) are not modelled; numbers are Python numbers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_pem_public_key

# schema.lua defaults.
JWT_DEFAULTS: dict[str, Any] = {
    "uri_param_names": ["jwt"],
    "cookie_names": [],
    "header_names": ["authorization"],
    "key_claim_name": "iss",
    "secret_is_base64": False,
    "claims_to_verify": [],
    "anonymous": None,
    "run_on_preflight": True,
    "maximum_expiration": 0,
}
# Handler PRIORITY: higher runs first (jwt authenticates before acl authorizes).
PRIORITIES = {"jwt": 1450, "acl": 950}
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
ALGORITHMS = frozenset(
    [f"{family}{bits}" for family in ("HS", "RS", "ES", "PS") for bits in _HASHES] + ["EdDSA"]
)
# PCRE's \s without Unicode properties: ASCII whitespace only (Python's \s matches more).
_BEARER = re.compile(r"[ \t\n\v\f\r]*[Bb]earer[ \t\n\v\f\r]+(.+)")
# ngx_decode_base64url's alphabet (nginx src/core/ngx_string.c): "+" and "/" are not in it.
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_INVALID_TOKEN = 'Bearer error="invalid_token"'
_ABSENT = object()


class KongInternalError(Exception):
    """A Lua error inside the plugin: Kong answers 500 "An unexpected error occurred"."""


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    consumer: str | None = None
    credential: str | None = None


class _Refused(Exception):
    def __init__(self, body: dict[str, Any], status: int = 401, www: str | None = None) -> None:
        super().__init__(body)
        self.response = Response(status, body, {"WWW-Authenticate": www} if www else {})


def _b64decode(text: str) -> bytes | None:
    """jwt_parser.lua:210-219 base64_decode: pad with "=" to a multiple of 4, then
    ngx.base64.decode_base64url, i.e. nginx's ngx_decode_base64_internal: the input ends
    at its first "=" (whatever follows is ignored), a character outside the URL alphabet
    or a length of 4n+1 is an error (nil). So the padding never changes the result."""
    text = text.partition("=")[0]
    if len(text) % 4 == 1 or not _BASE64URL.issuperset(text):
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _cjson_decode(data: bytes | None) -> Any:
    """lua-cjson's json_decode, raising ValueError where it raises a Lua error. It reads
    bytes, not text: no UTF-8 check (a stray byte inside a string is kept), a BOM is no
    whitespace, raw control characters are allowed in strings, and a NUL byte ends the
    input; a NUL among the first two bytes is refused as UTF-16/32."""
    if data is None:  # cjson.decode(nil): "string expected, got nil"
        raise ValueError("not a string")
    if len(data) >= 2 and 0 in data[:2]:
        raise ValueError("JSON parser does not support UTF-16 or UTF-32")
    text = data.partition(b"\0")[0].decode("utf-8", "surrogateescape")
    return json.loads(text, strict=False)


def _verify_signature(alg: str, signing_input: bytes, signature: bytes, key: bytes) -> bool:
    """jwt_parser.lua alg_verify[alg]; failed asserts raise KongInternalError."""
    digest = _HASHES.get(alg[2:], hashes.SHA256)()
    if alg.startswith("HS"):
        mac = hmac.new(key, signing_input, getattr(hashlib, digest.name)).digest()
        return hmac.compare_digest(mac, signature)
    try:
        public_key = load_pem_public_key(key)
    except ValueError:
        raise KongInternalError("Consumer Public Key is Invalid") from None
    try:
        if alg.startswith("ES"):
            if len(signature) != _EC_SIGNATURE_BYTES[alg]:
                raise KongInternalError(f"Signature must be {_EC_SIGNATURE_BYTES[alg]} bytes.")
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                return False
            half = len(signature) // 2
            r, s = (int.from_bytes(part, "big") for part in (signature[:half], signature[half:]))
            public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        elif alg.startswith(("RS", "PS")):
            if alg.startswith("PS") and len(signature) != 256:
                raise KongInternalError("Signature must be 256 bytes")
            if not isinstance(public_key, rsa.RSAPublicKey):
                return False
            pad: padding.AsymmetricPadding = padding.PKCS1v15()
            if alg.startswith("PS"):
                pad = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.AUTO)
            public_key.verify(signature, signing_input, pad, digest)
        elif isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, signing_input)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _as_table(value: Any) -> dict[str, Any]:
    """A decoded JSON value as the plugin indexes it: arrays and strings index to nil;
    numbers, booleans and null raise a Lua error (500)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list | str):
        return {}
    raise KongInternalError("attempt to index a non-table value")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Kong:
    """The consumers, credentials, routes and jwt/acl plugins of one decK document."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.credentials: dict[str, tuple[dict[str, Any], str]] = {}
        self.groups: dict[str, set[str]] = {}
        self.route_service: dict[str, str | None] = {}
        self.services: set[str] = set()
        self.plugins: list[tuple[str, str | None, dict[str, Any]]] = []  # (scope, name, plugin)
        for consumer in document.get("consumers") or []:
            name = consumer["username"]
            self.groups[name] = {acl["group"] for acl in consumer.get("acls") or []}
            for credential in consumer.get("jwt_secrets") or []:
                if credential["key"] in self.credentials:  # daos.lua: key is unique
                    raise ValueError(f"jwt_secrets key {credential['key']!r} already exists")
                self.credentials[credential["key"]] = (credential, name)
        for service in document.get("services") or []:
            self.services.add(service["name"])
            self._add_plugins(service.get("plugins"), "service", service["name"])
            for route in service.get("routes") or []:
                self.route_service[route["name"]] = service["name"]
                self._add_plugins(route.get("plugins"), "route", route["name"])
        for route in document.get("routes") or []:
            self.route_service[route["name"]] = route.get("service")
            self._add_plugins(route.get("plugins"), "route", route["name"])
        for plugin in document.get("plugins") or []:
            if plugin.get("route"):
                self._add_plugins([plugin], "route", plugin["route"])
            elif plugin.get("service"):
                self._add_plugins([plugin], "service", plugin["service"])
            else:
                self._add_plugins([plugin], "global", None)

    def _add_plugins(self, plugins: Any, scope: str, name: str | None) -> None:
        for plugin in plugins or []:
            if plugin.get("enabled", True) and plugin["name"] in PRIORITIES:
                self.plugins.append((scope, name, plugin))

    def plugins_for(self, route: str | None, service: str | None) -> dict[str, dict[str, Any]]:
        """Per plugin name, the most specific configuration: route, then service, global."""
        chosen: dict[str, dict[str, Any]] = {}
        for scope, name in (("route", route), ("service", service), ("global", None)):
            for plugin_scope, plugin_name, plugin in self.plugins:
                if (plugin_scope, plugin_name) == (scope, name):
                    chosen.setdefault(plugin["name"], plugin.get("config") or {})
        return chosen

    def request(
        self,
        route: str | None = None,
        *,
        service: str | None = None,
        headers: Mapping[str, str | list[str]] | None = None,
        query: Mapping[str, str | list[str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        method: str = "GET",
        now: int | None = None,
    ) -> Response:
        """What Kong answers on `route`, or on a route of `service` without plugins of its
        own (200 when every plugin lets the request through)."""
        if route is not None:
            if route not in self.route_service:
                return Response(404, {"message": "no Route matched with those values"})
            service = self.route_service[route]
        elif service is not None and service not in self.services:
            return Response(404, {"message": "no Route matched with those values"})
        plugins = self.plugins_for(route, service)
        context: dict[str, Any] = {"consumer": None, "credential": None}
        request = {
            "headers": {k.lower(): v for k, v in (headers or {}).items()},
            "query": query or {},
            "cookies": cookies or {},
            "method": method,
            "now": int(time.time()) if now is None else now,
        }
        try:
            for name in sorted(plugins, key=PRIORITIES.__getitem__, reverse=True):
                config = plugins[name]
                if name == "jwt":
                    self._jwt_access({**JWT_DEFAULTS, **config}, request, context)
                else:
                    self._acl_access(config, context)
        except _Refused as refused:
            return refused.response
        except KongInternalError:
            return Response(500, {"message": "An unexpected error occurred"})
        return Response(200, {}, {}, context["consumer"], context["credential"])

    def _jwt_access(self, conf: dict[str, Any], request: dict[str, Any], context: dict) -> None:
        """handler.lua JwtHandler:access."""
        if not conf["run_on_preflight"] and request["method"] == "OPTIONS":
            return
        try:
            credential, consumer = self._authenticate(conf, request)
        except _Refused:
            if not conf["anonymous"]:
                raise
            context["consumer"] = conf["anonymous"]  # logical OR: anonymous, no credential
            return
        context["consumer"], context["credential"] = consumer, credential["key"]

    def _retrieve_tokens(self, conf: dict[str, Any], request: dict[str, Any]) -> list[str]:
        found: dict[str, None] = {}
        for name in conf["uri_param_names"]:
            values = request["query"].get(name)
            for value in values if isinstance(values, list) else [values]:
                if value:
                    found[value] = None
        for name in conf["cookie_names"]:
            if request["cookies"].get(name):
                found[request["cookies"][name]] = None
        for name in conf["header_names"]:
            value = request["headers"].get(name.lower())
            value = value[0] if isinstance(value, list) else value
            match = _BEARER.search(value) if value else None
            if match and match.group(1):
                found[match.group(1)] = None
        return list(found)

    def _authenticate(self, conf: dict[str, Any], request: dict[str, Any]) -> tuple[dict, str]:
        """handler.lua do_authentication, in its order."""
        tokens = self._retrieve_tokens(conf, request)
        if not tokens:
            raise _Refused({"message": "Unauthorized"}, www="Bearer")
        if len(tokens) > 1:
            raise _Refused({"message": "Multiple tokens provided"}, www=_INVALID_TOKEN)
        parts = tokens[0].split(".", 2)  # jwt_parser.lua tokenize(token, ".", 3)
        try:  # decode_token, inside its pcall: a missing part is a decode error too
            if len(parts) < 3:
                raise ValueError("missing part")
            header = _cjson_decode(_b64decode(parts[0]))
            claims = _cjson_decode(_b64decode(parts[1]))
        except ValueError:
            raise _Refused({"message": "Bad token; invalid JSON"}, www=_INVALID_TOKEN) from None
        signature = _b64decode(parts[2])
        header = _as_table(header)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise _Refused({"message": "Bad token; invalid alg"}, www=_INVALID_TOKEN)
        if claims is False:  # jwt_parser.lua:272; JSON null is cjson.null, a truthy value
            raise _Refused({"message": "Bad token; invalid claims"}, www=_INVALID_TOKEN)
        if signature is None:
            raise _Refused({"message": "Bad token; invalid signature"}, www=_INVALID_TOKEN)
        claims = _as_table(claims)
        claim = conf["key_claim_name"]
        # Lua `claims[name] or header[name]`: absent (nil) and false fall through to the
        # header; JSON null is cjson.null, a truthy value.
        key = claims.get(claim, _ABSENT)
        if key is _ABSENT or key is False:
            key = header.get(claim, _ABSENT)
        if key is _ABSENT or key is False:
            raise _Refused({"message": f"No mandatory '{claim}' in claims"}, www=_INVALID_TOKEN)
        if key == "":
            raise _Refused({"message": f"Invalid '{claim}' in claims"}, www=_INVALID_TOKEN)
        if not isinstance(key, str):
            # null, a number or true: DAO:cache_key raises, outside any pcall
            # (kong/db/dao/init.lua:1565-1566); an object or array passes it, then
            # select_by_key raises in the cache callback and the handler calls error(err)
            # (handler.lua:193-195). Before any signature check.
            raise KongInternalError("key must be a string")
        found = self.credentials.get(key)
        if found is None:
            message = f"No credentials found for given '{claim}'"
            raise _Refused({"message": message}, www=_INVALID_TOKEN)
        credential, consumer = found
        algorithm = credential.get("algorithm") or "HS256"
        if alg != algorithm:
            raise _Refused({"message": "Invalid algorithm"}, www=_INVALID_TOKEN)
        # Since 3.9.0 (handler.lua:208-219) secret_is_base64 decodes an HS secret only;
        # rsa_public_key is always plain PEM.
        if algorithm.startswith("HS"):
            value = credential.get("secret")
            if conf["secret_is_base64"]:
                if value is None:
                    raise KongInternalError("base64_decode(nil)")
                value = _b64decode(value)
        else:
            value = credential.get("rsa_public_key")
        if isinstance(value, str):
            value = value.encode()
        if value is None:
            raise _Refused({"message": "Invalid key/secret"}, www=_INVALID_TOKEN)
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        if not _verify_signature(alg, signing_input, signature, value):
            raise _Refused({"message": "Invalid signature"}, www=_INVALID_TOKEN)
        now = request["now"]
        errors: dict[str, Any] = {}
        for name in conf["claims_to_verify"] or []:  # verify_registered_claims
            value = claims.get(name)
            if not _is_number(value):
                errors[name] = "must be a number"
            elif name == "nbf" and value > now:
                errors[name] = "token not valid yet"
            elif name == "exp" and value <= now:
                errors[name] = "token expired"
        if errors:
            raise _Refused(errors, www=_INVALID_TOKEN)
        maximum = conf["maximum_expiration"]
        if maximum and maximum > 0:  # check_maximum_expiration
            exp = claims.get("exp", _ABSENT)  # null is cjson.null: not nil, no number
            if exp is not _ABSENT and not _is_number(exp):
                raise KongInternalError("arithmetic on a non-number exp")
            if exp is _ABSENT or exp - now > maximum:
                errors = {"exp": "exceeds maximum allowed expiration"}
                raise _Refused(errors, www=_INVALID_TOKEN)
        return credential, consumer

    def _acl_access(self, conf: Mapping[str, Any], context: dict[str, Any]) -> None:
        """acl/handler.lua ACLHandler:access (consumer groups from the consumer's acls)."""
        consumer = context["consumer"]
        if consumer is None:
            raise _Refused({"message": "Unauthorized"}, status=401)
        groups = self.groups.get(consumer, set())
        deny = conf.get("deny") or []
        in_group = bool(groups & set(deny if deny else conf.get("allow") or []))
        if in_group if deny else not in_group:
            raise _Refused({"message": "You cannot consume this service"}, status=403)
