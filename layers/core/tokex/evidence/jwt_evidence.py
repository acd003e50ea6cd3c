"""The rules of JWT evidence (docs/contract.md "JWT evidence"): a JWT from a trusted issuer.

`verify_jwt_evidence` reads top to bottom as the list of rules, the cheap offline ones
first so that no refused token costs a key fetch: size, compact JWS, the header (RFC 8725
§2: the algorithm and the key never come from the token), the issuer (configuration only),
the claims (audience, times, `jti`), then the issuer's key by `kid` (the only upstream
call, behind `IssuerKeys`), the signature (pyjwt, with a key bound to one algorithm), and
last the kind's own claims (evidence/jwt_claims.py).

Pure: the standard library, pyjwt and cryptography. Every refusal is `invalid_grant` with
an audit reason `jwt_…`, except a token over the length cap or no compact JWS at all
(`invalid_request`, reason `subject_token`, like the form's other shape errors).
Descriptions never echo more than a short prefix of what the caller sent.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from tokex import base64url
from tokex.errors import InvalidGrant, InvalidRequest
from tokex.evidence.identity import CallerIdentity
from tokex.evidence.jwt_claims import caller_from_claims
from tokex.evidence.trusted_issuers import AWS_OIF, TrustedIssuer, TrustedIssuers
from tokex.strict_json import MAX_TOKEN_JSON_DEPTH, StrictJsonError, loads_strict

# The whole form is at most 16 KiB (forms.py): a JWT this long leaves 4 KiB for the other
# parameters. Real ones are far smaller (an EKS or OIF token is 1-2 KiB).
MAX_SUBJECT_JWT_CHARS = 12 * 1024
CLOCK_SKEW_SECONDS = 60  # for iat / nbf / exp
# exp - iat (and exp - nbf): sts:GetWebIdentityToken issues 60-3600 s; a pod's projected
# service-account token is refused if it claims to live longer than a day.
MAX_LIFETIME_SECONDS = {"aws-oif": 3600, "eks": 86400}
# What each kind's issuer signs with: never `none`, never HMAC (RFC 8725 §3.1, §3.2).
ALGORITHMS = {"aws-oif": ("RS256", "ES384"), "eks": ("RS256",)}
MAX_KID_LENGTH = 256
MAX_JTI_LENGTH = 256

_ANY_KIND_ALGORITHMS = frozenset(alg for algs in ALGORITHMS.values() for alg in algs)
# RFC 7515 §7.1: header.payload.signature; an unsecured JWS has an empty signature
# (RFC 7519 §6.1), left to the `alg` rule to refuse by name.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Header members that would let the token choose its own verification key (RFC 7515
# §4.1.2-4.1.6; RFC 8725 §3.10 on following `jku`/`x5u`): keys come from the issuer.
_KEY_HEADERS = ("jku", "x5u", "jwk", "x5c")
# Members that change how the token is read: `crit` extensions (RFC 7515 §4.1.11; none is
# understood here), `b64` (RFC 7797, only valid with `crit`), `zip`/`enc` (JWE only).
_REFUSED_HEADERS = ("crit", "b64", "zip", "enc")
# pyjwt reads the wall clock; here `now` is given (one clock per request), so the time
# rules are this module's and pyjwt checks signature, issuer and audience.
_DECODER = jwt.PyJWT(
    options={
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "require": ["exp", "iat", "iss", "aud"],
        # pyjwt 2.11 and later; below it, oidc_keys refuses short RSA keys alone (and no
        # HMAC algorithm is ever accepted).
        "enforce_minimum_key_length": True,
    }
)


class IssuerKeys(Protocol):
    def key(self, issuer: TrustedIssuer, kid: str) -> jwt.PyJWK | None:
        """The issuer's verification key `kid`, or None if the issuer does not publish it
        (after at most one refetch per interval). Raises TemporarilyUnavailable when the
        issuer's discovery document or JWKS cannot be had."""
        ...


@dataclass(frozen=True)
class VerifiedJwt:
    issuer: TrustedIssuer
    caller: CallerIdentity  # from jwt_claims.caller_from_claims
    jti: str | None  # required (non-empty, <= 256 chars) for aws-oif tokens
    expires_at: int  # the token's exp (rounded up)

    def single_use_digest(self) -> str | None:
        """aws-oif: sha256 hex of f"{issuer}\\n{jti}" (what single use records); eks: None
        (a pod reuses its token)."""
        if self.issuer.kind != AWS_OIF or self.jti is None:
            return None
        return hashlib.sha256(f"{self.issuer.issuer}\n{self.jti}".encode()).hexdigest()


def is_compact_jws(token: str) -> bool:
    """Exactly three base64url segments (no padding), nothing else (RFC 7515 §7.1)."""
    return isinstance(token, str) and _COMPACT_JWS.fullmatch(token) is not None


def verify_jwt_evidence(
    token: str, *, issuers: TrustedIssuers, keys: IssuerKeys, audience: str, now: float
) -> VerifiedJwt:
    """The caller a JWT from a trusted issuer proves, or the refusal of the first rule it
    breaks. `audience` is the exchange's own issuer URL: the token must be minted for
    tokex alone."""
    if len(token) > MAX_SUBJECT_JWT_CHARS:
        raise InvalidRequest(
            f"subject_token is longer than {MAX_SUBJECT_JWT_CHARS} characters",
            reason="subject_token",
        )
    if not is_compact_jws(token):
        raise _not_a_jws(token)
    header_segment, payload_segment, _ = token.split(".")

    header = _json_object(header_segment, "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ANY_KIND_ALGORITHMS:
        raise _refused(f"the token's alg {_short(alg)} is not accepted", "jwt_alg")
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
        raise _refused(f"the token's header needs a kid (1-{MAX_KID_LENGTH} characters)", "jwt_kid")
    for name in _KEY_HEADERS:
        if name in header:
            raise _refused(
                f"the header member {name} is refused: keys come from the issuer, never the token",
                f"jwt_header:{name}",
            )
    for name in _REFUSED_HEADERS:
        if name in header:
            raise _refused(f"the header member {name} is not supported", f"jwt_header:{name}")
    if "cty" in header:
        raise _refused("nested tokens (a cty header) are not accepted", "jwt_header:cty")
    typ = header.get("typ")
    if typ is not None and not (isinstance(typ, str) and typ.isascii() and typ.upper() == "JWT"):
        # tokex's own access tokens are `at+jwt` (RFC 9068 §2.1): never evidence.
        raise _refused(f"the token's typ {_short(typ)} is not JWT", "jwt_header:typ")

    claims = _json_object(payload_segment, "payload")
    issuer = issuers.get(claims.get("iss"))
    if issuer is None:
        raise _refused("untrusted issuer: the token's iss is not a trusted issuer", "jwt_issuer")
    if alg not in ALGORITHMS[issuer.kind]:
        raise _refused(f"{issuer.kind} tokens are not signed with {alg}", "jwt_alg")
    _check_audience(claims.get("aud"), audience)
    expires_at = _check_times(claims, MAX_LIFETIME_SECONDS[issuer.kind], now)
    jti = token_jti(claims, issuer.kind)

    key = keys.key(issuer, kid)
    if key is None:
        raise _refused("the issuer publishes no key with the token's kid", "jwt_kid")
    if key.algorithm_name != alg:
        # An RSA key presented with ES384, or any key with another algorithm (RFC 8725
        # §3.1: one key, one algorithm).
        raise _refused(f"the issuer's key {_short(kid)} does not sign {alg}", "jwt_alg")
    _verify_signature(token, key, alg, issuer.issuer, audience)
    return VerifiedJwt(
        issuer=issuer,
        caller=caller_from_claims(issuer, claims),
        jti=jti,
        expires_at=expires_at,
    )


def _not_a_jws(token: str) -> InvalidRequest:
    if token.count(".") == 4:
        return InvalidRequest(
            "subject_token is an encrypted JWT (JWE); send the signed JWT (a compact JWS)",
            reason="subject_token",
        )
    return InvalidRequest(
        "subject_token must be a compact JWS (three base64url parts)", reason="subject_token"
    )


def _json_object(segment: str, part: str) -> dict[str, Any]:
    """The JSON object one segment holds: canonical base64url, UTF-8, no repeated key."""
    try:
        document = loads_strict(
            base64url.decode(segment).decode("utf-8"), max_depth=MAX_TOKEN_JSON_DEPTH
        )
    except (ValueError, StrictJsonError):  # UnicodeDecodeError is a ValueError
        raise _refused(f"the token's {part} is not base64url JSON", f"jwt_{part}") from None
    if not isinstance(document, dict):
        raise _refused(f"the token's {part} is not a JSON object", f"jwt_{part}")
    return document


def _check_audience(aud: object, audience: str) -> None:
    """Exactly ours: a string, or a list of that one string. A token for several audiences
    is refused even when one is ours: any of them could replay it here (RFC 8725 §3.9)."""
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud is None or aud == []:
        raise _refused("the token has no aud", "jwt_audience")
    if isinstance(aud, list):
        raise _refused("the token must have exactly one audience", "jwt_audience")
    if aud != audience:
        raise _refused("the token's aud is not this exchange", "jwt_audience")


def _check_times(claims: Mapping[str, Any], max_lifetime: int, now: float) -> int:
    """exp, iat and nbf (RFC 7519 §4.1.4-4.1.6) against `now`, with CLOCK_SKEW_SECONDS
    either way; the lifetime is bounded so that a stolen long-lived token is no key.
    Returns exp, rounded up."""
    exp = _numeric_date(claims, "exp", required=True)
    iat = _numeric_date(claims, "iat", required=True)
    nbf = _numeric_date(claims, "nbf", required=False)
    assert exp is not None and iat is not None
    if exp <= now - CLOCK_SKEW_SECONDS:
        raise _refused("the token has expired", "jwt_expired")
    if iat > now + CLOCK_SKEW_SECONDS:
        raise _refused("the token's iat is in the future", "jwt_iat")
    if nbf is not None and nbf > now + CLOCK_SKEW_SECONDS:
        raise _refused("the token is not valid yet (nbf)", "jwt_not_yet_valid")
    for start in (iat, nbf):
        if start is not None and not 0 < exp - start <= max_lifetime:
            raise _refused(
                f"the token's lifetime must be at most {max_lifetime} seconds", "jwt_lifetime"
            )
    return math.ceil(exp)


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    """A NumericDate (RFC 7519 §2): a finite JSON number, not a boolean or a string."""
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(f"the token's {name} must be a number", f"jwt_claims:{name}")
    if not 0 <= value < 2**53:  # refuses inf (1e400 in JSON) and absurd magnitudes
        raise _refused(f"the token's {name} is out of range", f"jwt_claims:{name}")
    return value


def token_jti(claims: Mapping[str, Any], kind: str) -> str | None:
    """aws-oif tokens are single use by `jti`, so it must be there; others may carry one.
    (`tokex policy explain` refuses claims as the exchange does with this too.)"""
    jti = claims.get("jti")
    if jti is None and kind != AWS_OIF:
        return None
    if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
        raise _refused(f"the token needs a jti (1-{MAX_JTI_LENGTH} characters)", "jwt_jti")
    return jti


def _verify_signature(token: str, key: jwt.PyJWK, alg: str, issuer: str, audience: str) -> None:
    """pyjwt checks the signature with the issuer's key, bound to `alg`, and again the
    claims it knows (required, iss, aud, sub and jti types)."""
    try:
        _DECODER.decode(token, key, algorithms=[alg], issuer=issuer, audience=audience)
    except jwt.InvalidSignatureError:
        raise _refused("the token's signature does not verify", "jwt_signature") from None
    except jwt.InvalidAlgorithmError:
        raise _refused(f"the issuer's key does not sign {alg}", "jwt_alg") from None
    except jwt.InvalidKeyError:
        raise _refused("the issuer's key is not acceptable", "jwt_key") from None
    except jwt.InvalidAudienceError:
        raise _refused("the token's aud is not this exchange", "jwt_audience") from None
    except jwt.MissingRequiredClaimError as exc:
        reason = "jwt_audience" if exc.claim == "aud" else f"jwt_claims:{exc.claim}"
        raise _refused(f"the token has no {exc.claim}", reason) from None
    except jwt.InvalidIssuerError:
        raise _refused("the token's iss is not its issuer", "jwt_issuer") from None
    except InvalidJTIError:
        raise _refused("the token's jti is not a string", "jwt_jti") from None
    except InvalidSubjectError:
        raise _refused("the token's sub is not a string", "jwt_claims:sub") from None
    # RecursionError: a header nested just deep enough to pass our parse and not pyjwt's,
    # which parses it again a few frames deeper (older pyjwt releases let it escape).
    except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
        raise _refused("the token could not be verified", "jwt_malformed") from None


def _short(value: object) -> str:
    """A caller's value for a description: at most 32 characters of it, quoted."""
    if isinstance(value, str):
        return json.dumps(value[:32])
    return "(missing)" if value is None else "(not a string)"


def _refused(description: str, reason: str) -> InvalidGrant:
    return InvalidGrant(description, reason=reason)
