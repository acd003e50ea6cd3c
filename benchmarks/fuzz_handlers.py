"""Fuzz targets through the real Lambda handlers: hostile `POST /token` and
`POST /introspect` as API Gateway HTTP API events, handled by `functions/exchange` and
`functions/introspect` against the emulated AWS of `tokex local` (SigV4 checks on).

No input can earn a token by construction: the only signed requests in the mix name
another issuer, or are bound to an audience no policy grants. So any token, any
`"active": true`, and any 5xx is a finding.
"""

from __future__ import annotations

import base64
import contextlib
import json
import string
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import strategies as st

from tests.support.exchange_handler import cold_exchange_handler
from tests.unit.test_fuzz import (
    FORM,
    PARAMETERS,
    FuzzTarget,
    Outcome,
    ServerError,
    TokenIssued,
    content_types,
    printable,
)
from tests.unit.test_jws import LocalSigner
from tokex.client.signing import encode_subject_token, signed_get_caller_identity
from tokex.introspection_clients import basic_authorization
from tokex.local.emulator import SubprocessMotoServer
from tokex.local.front import http_api_event
from tokex.local.functions import LambdaContext, load_handler
from tokex.local.provision import DEMO_AUDIENCE, DEMO_SCOPES
from tokex.local.runner import LocalSystem, handler_environment, start_local
from tokex.token_request import SIGV4_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from tokex.tokens.jws import encode_jwt

# Granted by no policy: a request bound to it gets past STS and stops at the policy.
UNGRANTED_AUDIENCE = "fuzz-ungranted-api"
ERROR_CODES = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "invalid_scope",
    "invalid_target",
    "unsupported_grant_type",
    "temporarily_unavailable",  # only as 429 here: a 503 is counted as a 5xx first
}
other_methods = st.sampled_from(
    ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "post", "TRACE"]
)
extra_headers = st.dictionaries(
    st.sampled_from(["content-length", "content-encoding", "x-forwarded-for", "cookie"])
    | st.text(alphabet=string.ascii_lowercase + "-", min_size=1, max_size=12),
    printable,
    max_size=3,
)


def _event(method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    return http_api_event(method, path, "", headers, body, "127.0.0.1")


def _answer(result: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status = int(result["statusCode"])
    raw = result.get("body") or ""
    if result.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode("utf-8")
    if status >= 500:
        raise ServerError(f"{status} {raw[:300]}")
    body = json.loads(raw)
    assert isinstance(body, dict), f"not a JSON object: {raw[:300]}"
    return status, body


def _typed_refusal(status: int, body: dict[str, Any]) -> Outcome:
    assert 400 <= status < 500, f"{status} {body}"
    assert body.get("error") in ERROR_CODES and body.get("error_description"), body
    return Outcome.REFUSED


def exchange_target(system: LocalSystem, handler: ModuleType) -> FuzzTarget:
    credentials = system.deployment.workload.session().get_credentials().get_frozen_credentials()
    foreign = signed_get_caller_identity(
        credentials, region="us-east-1", issuer="https://elsewhere.example", audience=DEMO_AUDIENCE
    )
    ungranted = signed_get_caller_identity(
        credentials, region="us-east-1", issuer=system.issuer, audience=UNGRANTED_AUDIENCE
    )
    values = (
        st.sampled_from(
            [
                TOKEN_EXCHANGE_GRANT,
                SIGV4_TOKEN_TYPE,
                encode_subject_token(foreign),
                encode_subject_token(ungranted),
                UNGRANTED_AUDIENCE,
                DEMO_AUDIENCE,
                " ".join(DEMO_SCOPES),
                "",
            ]
        )
        | printable
    )
    almost_valid = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token_type": SIGV4_TOKEN_TYPE,
        "subject_token": encode_subject_token(ungranted),
        "audience": UNGRANTED_AUDIENCE,
    }
    forms = st.one_of(
        st.lists(st.tuples(st.sampled_from(PARAMETERS) | st.text(max_size=12), values)).map(_form),
        st.dictionaries(st.sampled_from(PARAMETERS), values, max_size=3).map(
            lambda changes: _form({**almost_valid, **changes}.items())
        ),
    )

    def probe(case: tuple[str, str | None, dict[str, str], bytes]) -> Outcome:
        method, content_type, headers, body = case
        if content_type is not None:
            headers = {**headers, "content-type": content_type}
        result = handler.lambda_handler(
            _event(method, "/token", headers, body), LambdaContext("tokex-exchange")
        )
        status, answer = _answer(result)
        if "access_token" in answer or status == 200:
            raise TokenIssued(f"{status} {sorted(answer)} for {method} {body[:200]!r}")
        return _typed_refusal(status, answer)

    return FuzzTarget("handler-token", _envelopes(extra_headers, forms), probe)


def introspection_target(system: LocalSystem, handler: ModuleType) -> FuzzTarget:
    client_id, secret = system.introspection_client
    # Claims a real token would have, signed by a key the issuer never published but
    # naming the published key's id: the signature check must be what refuses it.
    published_kid = json.loads(
        system.deployment.client("s3")
        .get_object(Bucket=system.deployment.jwks_bucket, Key=".well-known/jwks.json")["Body"]
        .read()
    )["keys"][0]["kid"]
    forger = LocalSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
    forger.kid = published_kid
    forged = encode_jwt(
        {
            "iss": system.issuer,
            "sub": "arn:aws:iam::123456789012:role/demo-workload",
            "aud": DEMO_AUDIENCE,
            "jti": "forged",
            "iat": 1_800_000_000,
            "nbf": 1_800_000_000,
            "exp": 4_000_000_000,
        },
        forger,
    )
    authorizations = st.one_of(
        st.none(),
        st.just(basic_authorization(client_id, secret)),
        st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=40).map(
            lambda wrong: basic_authorization(client_id, wrong) if wrong.isalnum() else wrong
        ),
        printable.map(lambda text: "Basic " + base64.b64encode(text.encode()).decode()),
        printable,
    )
    tokens = st.sampled_from([forged, forged[:-2] + "AA", forged.replace(".", "..", 1)]) | printable
    names = st.sampled_from(["token", "token_type_hint", "x"])
    forms = st.one_of(
        st.dictionaries(names, tokens).map(lambda fields: _form(fields.items())),
        st.lists(st.tuples(names, tokens), max_size=4).map(_form),  # repeats too
    )
    # Half the well-formed requests come from the demo client: past authentication.
    client = st.just(basic_authorization(client_id, secret)) | authorizations

    def probe(case: tuple[str, str | None, str | None, bytes]) -> Outcome:
        method, content_type, authorization, body = case
        headers = {}
        if content_type is not None:
            headers["content-type"] = content_type
        if authorization is not None:
            headers["authorization"] = authorization
        result = handler.lambda_handler(
            _event(method, "/introspect", headers, body), LambdaContext("tokex-introspect")
        )
        status, answer = _answer(result)
        if status == 200:
            if answer != {"active": False}:
                raise TokenIssued(f"introspection answered {answer} for {body[:200]!r}")
            return Outcome.REFUSED
        return _typed_refusal(status, answer)

    return FuzzTarget("handler-introspect", _envelopes(client, forms), probe)


def _envelopes(
    headers: st.SearchStrategy[Any], forms: st.SearchStrategy[bytes]
) -> st.SearchStrategy[tuple[str, str | None, Any, bytes]]:
    """(method, content type, `headers`, body): half are a well-formed POST of a form, so
    that they reach the form, the evidence and the upstreams; the other half have any
    method, media type and body."""
    return st.one_of(
        st.tuples(st.just("POST"), st.just(FORM), headers, forms),
        st.tuples(
            st.just("POST") | other_methods,
            content_types,
            headers,
            st.binary(max_size=4096) | forms,
        ),
    )


def _form(pairs: Any) -> bytes:
    return urlencode(list(pairs)).encode()


@contextlib.contextmanager
def handler_targets() -> Iterator[list[FuzzTarget]]:
    """The two handler targets, with a provisioned emulator for as long as they run.

    Handlers log one audit line per request to stdout: redirect it before entering."""
    with tempfile.TemporaryDirectory() as state:
        system = start_local(port=0, state_dir=Path(state), moto=SubprocessMotoServer())
        # Served only so that `stop` (which waits for the serving loop) returns.
        threading.Thread(target=system.serve_forever, daemon=True).start()
        try:
            exchange = cold_exchange_handler(system)
            with handler_environment(system.handler_env()):
                introspect = load_handler("introspect")
            yield [exchange_target(system, exchange), introspection_target(system, introspect)]
        finally:
            system.stop()
