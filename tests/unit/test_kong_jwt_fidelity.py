"""tests/support/kong_jwt.py answers as Kong 3.9.3 does (its source, not its docs), on
tokens built by hand. Each case cites the line that decides it: `kong/plugins/jwt/
handler.lua`, `jwt_parser.lua`, `kong/db/dao/init.lua` (Kong 3.9.3), nginx's
`src/core/ngx_string.c` (behind `ngx.base64.decode_base64url`) and lua-cjson's
`lua_cjson.c`. A stand-in that is kinder than Kong lets a tokex regression pass every test
and fail at every real Kong."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.support.kong_jwt import Kong, _b64decode

NOW = 1_700_000_000
HS_SECRET = b"an HS256 secret"
_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_PEM = (
    _RSA.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
INTERNAL_ERROR = (500, {"message": "An unexpected error occurred"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def gateway(**config: Any) -> Kong:
    """One service, one consumer with an RS256 and an HS256 credential (`secret` as
    `secret_is_base64` wants it)."""
    secret = b64url(HS_SECRET) if config.get("secret_is_base64") else HS_SECRET.decode()
    credentials = [
        {"key": "rs", "algorithm": "RS256", "rsa_public_key": _PEM, "secret": "unused"},
        {"key": "hs", "algorithm": "HS256", "secret": secret},
    ]
    plugin = {"name": "jwt", "config": {"key_claim_name": "kid", **config}}
    return Kong(
        {
            "_format_version": "3.0",
            "consumers": [{"username": "client", "jwt_secrets": credentials}],
            "services": [{"name": "api", "url": "http://api.internal", "plugins": [plugin]}],
        }
    )


def encode(header: dict[str, Any], payload: bytes | dict[str, Any]) -> str:
    """header.payload signed by the key of header["kid"] (or junk when there is none)."""
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    kid = header.get("kid")
    if kid == "rs":
        signature = _RSA.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif kid == "hs":
        signature = hmac.new(HS_SECRET, signing_input.encode(), hashlib.sha256).digest()
    else:
        signature = b"junk"
    return f"{signing_input}.{b64url(signature)}"


def answer(kong: Kong, authorization: str) -> tuple[int, Any]:
    response = kong.request(service="api", headers={"Authorization": authorization}, now=NOW)
    return response.status, response.consumer if response.status == 200 else response.body


RS = {"alg": "RS256", "typ": "JWT", "kid": "rs"}
HS = {"alg": "HS256", "typ": "JWT", "kid": "hs"}
CLAIMS = {"sub": "s", "exp": NOW + 60}
_BODY = json.dumps(CLAIMS).encode()


def test_a_signed_token_passes():
    for header in (RS, HS):
        assert answer(gateway(), "Bearer " + encode(header, CLAIMS)) == (200, "client")


# --- Finding 1: base64url as nginx decodes it (jwt_parser.lua:210-219 base64_decode pads
# with "=" and calls decode_base64url, i.e. ngx_string.c:1278-1347).


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("-_8", b"\xfb\xff"),  # the URL alphabet (ngx_string.c:1280-1298)
        ("+/8", None),  # "+" and "/" map to 77, an error (ngx_string.c:1315-1316)
        ("QQ", b"A"),
        ("QQ==", b"A"),
        ("QQ=junk!", b"A"),  # the input ends at the first "=" (ngx_string.c:1311-1312)
        ("QUJDR", None),  # 4n+1 characters (ngx_string.c:1320-1321)
        ("QUJDRA=", b"ABCD"),
        ("QR", b"A"),  # bits left over are dropped (ngx_string.c:1336-1338)
        ("", b""),
        ("Q\u00e9", None),  # a non-ASCII byte maps to 77 too
    ],
)
def test_base64_decode_is_nginx_decode_base64url(text, decoded):
    assert _b64decode(text) == decoded


def test_a_token_in_standard_base64_is_refused():
    """What a regression from base64url to base64.b64encode would emit."""
    token = next(
        t
        for t in (encode(HS, {**CLAIMS, "jti": str(n)}) for n in range(1_000))
        if {"-", "_"} & set(t.rsplit(".", 1)[1])
    )
    header_64, payload_64, signature_64 = token.split(".")
    standard = signature_64.replace("-", "+").replace("_", "/")
    # jwt_parser.lua:276-277: the signature decodes to nil.
    assert answer(gateway(), f"Bearer {header_64}.{payload_64}.{standard}") == (
        401,
        {"message": "Bad token; invalid signature"},
    )
    # A payload in the standard alphabet: nil, then cjson.decode(nil) raises inside the
    # pcall of jwt_parser.lua:259-266.
    payload = b64url(b'{"kid":"hs","x":"\xfb\xff"}').replace("-", "+").replace("_", "/")
    assert "+" in payload or "/" in payload
    assert answer(gateway(), f"Bearer {header_64}.{payload}.{signature_64}") == (
        401,
        {"message": "Bad token; invalid JSON"},
    )


def test_whatever_follows_an_equals_sign_is_ignored():
    token = encode(RS, CLAIMS)
    # ngx_string.c:1311-1312: "=junk!" and "==" end the signature; tokenize keeps at
    # most three parts (jwt_parser.lua:228-247), so ".more" is part of the signature.
    for tail in ("=junk!", "==", "==.more"):
        assert answer(gateway(), f"Bearer {token}{tail}") == (200, "client")


# --- Finding 2: a key claim that is no string is a 500, before any signature check.


@pytest.mark.parametrize(
    "kid",
    [1, None, True, {"key": "rs"}, [1]],
    ids=["number", "null", "true", "object", "array"],
)
def test_a_key_claim_that_is_not_a_string_is_a_kong_500(kid):
    # null is cjson.null, truthy (handler.lua:182-183); a number, true or null makes
    # DAO:cache_key raise outside any pcall (kong/db/dao/init.lua:1565-1566); an object or
    # array passes it, select_by_key raises in the cache callback (init.lua:124, via
    # validate_unique_type) and the handler calls error(err) (handler.lua:193-195). The
    # signature is junk: Kong never gets to it.
    unsigned = encode({"alg": "RS256"}, {"kid": kid, "exp": NOW + 60})
    assert answer(gateway(), "Bearer " + unsigned) == INTERNAL_ERROR
    # The header's kid, when the payload has none (handler.lua:182).
    unsigned = encode({"alg": "RS256", "kid": kid}, {"exp": NOW + 60})
    assert answer(gateway(), "Bearer " + unsigned) == INTERNAL_ERROR


def test_an_empty_or_false_key_claim_is_a_401():
    unsigned = encode({"alg": "RS256"}, {"kid": "", "exp": NOW + 60})
    assert answer(gateway(), "Bearer " + unsigned) == (401, {"message": "Invalid 'kid' in claims"})
    # false falls through to the header (Lua `or`, handler.lua:182-184).
    unsigned = encode({"alg": "RS256", "kid": False}, {"kid": False})
    assert answer(gateway(), "Bearer " + unsigned) == (
        401,
        {"message": "No mandatory 'kid' in claims"},
    )
    assert answer(gateway(), "Bearer " + encode(RS, {**CLAIMS, "kid": False})) == (200, "client")


# --- Finding 3: since 3.9.0 secret_is_base64 decodes HS secrets only (handler.lua:208-219).


def test_secret_is_base64_never_decodes_an_rsa_public_key():
    kong = gateway(secret_is_base64=True)
    assert answer(kong, "Bearer " + encode(RS, CLAIMS)) == (200, "client")
    # The HS credential's secret is base64url of the HMAC key (handler.lua:211-212).
    assert answer(kong, "Bearer " + encode(HS, CLAIMS)) == (200, "client")


# --- Finding 4: the payload as cjson decodes it, and the Bearer pattern.


def test_a_payload_of_false_is_invalid_claims():
    # cjson decodes `false` to false; `not claims` (jwt_parser.lua:272-273).
    assert answer(gateway(), "Bearer " + encode(RS, b"false")) == (
        401,
        {"message": "Bad token; invalid claims"},
    )
    # null is cjson.null, truthy: it passes decode_token, then indexing it is a Lua error
    # (handler.lua:182).
    assert answer(gateway(), "Bearer " + encode(RS, b"null")) == INTERNAL_ERROR


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # A UTF-8 BOM is no JSON whitespace to cjson (lua_cjson.c: ch2token[0xEF] is
        # T_ERROR): the decode raises inside the pcall (jwt_parser.lua:259-266).
        (b"\xef\xbb\xbf" + _BODY, (401, {"message": "Bad token; invalid JSON"})),
        # cjson never checks UTF-8 (lua_cjson.c json_next_string_token copies bytes): a
        # stray byte inside a string of a signed payload passes...
        (_BODY[:-1] + b', "name": "\xff"}', (200, "client")),
        # ...and so do raw control characters,
        (_BODY[:-1] + b', "name": "\t\x01"}', (200, "client")),
        # and a NUL byte ends the input (lua_cjson.c: ch2token['\0'] is T_END).
        (_BODY + b"\0 not JSON", (200, "client")),
    ],
    ids=["bom", "invalid-utf8", "control-characters", "nul"],
)
def test_payload_bytes_are_decoded_as_cjson_does(payload, expected):
    assert answer(gateway(), "Bearer " + encode(RS, payload)) == expected


def test_a_null_exp_under_maximum_expiration_is_a_kong_500():
    # exp == nil is false for cjson.null, then `exp - time()` raises (jwt_parser.lua:460).
    kong = gateway(maximum_expiration=3600)
    assert answer(kong, "Bearer " + encode(RS, {"exp": None})) == INTERNAL_ERROR
    assert answer(kong, "Bearer " + encode(RS, {"sub": "s"})) == (
        401,
        {"exp": "exceeds maximum allowed expiration"},
    )


@pytest.mark.parametrize(
    ("separator", "found"),
    [(" ", True), ("\t", True), ("\x0b", True), ("\xa0", False), ("\x85", False), ("\x1f", False)],
    ids=["space", "tab", "vt", "nbsp", "nel", "unit-separator"],
)
def test_bearer_is_followed_by_ascii_whitespace_only(separator, found):
    # handler.lua:62: ngx.re.gmatch(token_header, "\\s*[Bb]earer\\s+(.+)", "jo"): PCRE
    # without UCP, whose \s is ASCII whitespace; no token found is "Unauthorized".
    expected = (200, "client") if found else (401, {"message": "Unauthorized"})
    assert answer(gateway(), f"Bearer{separator}{encode(RS, CLAIMS)}") == expected
