"""Fixes to the emulator, applied wherever tokex runs moto (docs/local.md "What it starts").

Speed: moto 5 backs up each table a `TransactWriteItems` touches with `copy.deepcopy`, once per
item, so a transaction costs time and memory in proportion to the whole table. Every
exchange adds a single-use record to the state table in one transaction, and moto never
expires items: under the load command `tokex local` grew past 1 GiB and slowed from 28 to
67 ms per exchange within about 1,200 exchanges. `install` keeps moto's transaction
semantics (all or nothing, the same errors) but backs up only the items the transaction
names, which is all a rollback has to restore.

Dispatch: moto's server picks the service of every request under one lock, and on the way
lists its own package directory (`moto.backends.list_of_moto_modules`: a `listdir` and an
`isdir` per entry, some 170 system calls). That was an eighth of the emulator's CPU in
an exchange, and it held concurrent requests (an exchange's `Sign` beside its
`TransactWriteItems`) in single file. The installed package does not change while the
process runs, so `install` lists it once.

Expressions: moto parses a request's condition and update expressions from scratch, two or
three times each (validating the request, then applying it), on every request: two fifths
of the CPU it spent on an exchange's admission write. tokex sends the same few expressions
again and again, so `install` keeps the parse of each (a bounded cache): a condition's by
its text, names and values together (the parsed form holds the values, so it is parsed
from a copy of them that nothing else can change), an update's by its text (moto
validates and applies a deep copy of it, never the parse itself). What is found invalid is
never kept and is refused every time, with moto's own error.

Regions: moto finds a KMS key by the key id inside an ARN, whatever Region the ARN names,
so a Region's client could use another Region's key ARN (a multi-Region key's primary from
a replica's Region, say) where AWS answers `NotFoundException` "Invalid arn <region>".
`tokex local --regions` gives each Region's functions its own Region's replica; with the
fix, the emulator proves it.

Key states: moto signs with, and gives out the public key of, a KMS key that is disabled or
scheduled for deletion, where AWS answers `DisabledException` or
`KMSInvalidStateException`: what tokex meets when an operator disables its signing key
(503 `temporarily_unavailable`). `install` makes moto refuse them as AWS does.

Idempotency: moto ignores `TransactWriteItems`' `ClientRequestToken`, so the SDK's retry of
a transaction whose answer was lost applies it twice, where AWS applies it once and answers
success for the same token and request within ten minutes (`IdempotentParameterMismatch`
for the same token with another request, `TransactionInProgress` while the first is still
running). tokex relies on that to count an exchange once; `install` makes moto do it.

Conflicts: DynamoDB cancels a transaction that touches an item another transaction is
writing (cancellation reason `TransactionConflict`) and refuses a single write to such an
item (`TransactionConflictException`). moto checks for neither, and its backend does not
guard one request against another, so two transactions on one item could interleave, and
a burst of one principal's exchanges never met the retries tokex needs against AWS.
`install` holds a transaction's items while moto applies it, and `transaction_seconds`
longer (from TRANSACTION_SECONDS_ENV, default 0: tests lengthen it so that a burst
collides as it does in AWS, where a transaction takes milliseconds of its own).

Crashes: moto splits a request's `Authorization` header before anything checks it, and an
exception that escapes it became a 500 and a traceback of 20 to 60 lines on `tokex local`'s
console, quoting the request (its `X-Amz-Target` byte for byte): any local process could
flood the console or write terminal escape sequences to it. `admin_gate` refuses a header
that is not SigV4's as AWS does (400 `IncompleteSignature`), an operation the service does
not have (400 `InvalidAction`, `UnknownOperationException` in JSON), and answers anything
else that escapes moto 500 `InternalFailure`, with one line, escaped, on the console.

Run as a module (`python -m tokex.local.moto_fixes HOST`), it is moto's server with the
fixes installed, on a port the OS picks when it binds, announced as the server's URL on
the first line of stdout: what `SubprocessMotoServer` starts. (A port chosen by the parent
and bound later by the child could be taken in between by any other process.)
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tokex.printable import escaped

if TYPE_CHECKING:
    from werkzeug.serving import BaseWSGIServer

WsgiApp = Callable[..., Any]

_installed = threading.Lock()
_done = False


def install() -> None:
    """Idempotent; affects this process's moto only."""
    global _done, transaction_seconds
    with _installed:
        if _done:
            return
        transaction_seconds = transaction_seconds_from_environment()
        import moto.dynamodb.models as dynamodb_models

        dynamodb_models.copy = _CopyWithoutTableBackups()  # type: ignore[assignment]
        backend = dynamodb_models.DynamoDBBackend
        all_or_nothing = backend.transact_write_items

        def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
            held = _hold_items(self, transact_items)
            try:
                if transaction_seconds > 0:
                    time.sleep(transaction_seconds)
                backups = _item_backups(self, transact_items)
                try:
                    all_or_nothing(self, transact_items)
                except Exception:
                    # moto's own rollback restored the (uncopied) tables: a no-op now.
                    _restore(self, backups)
                    raise
            finally:
                _let_go(self, held)

        backend.transact_write_items = transact_write_items  # type: ignore[method-assign]
        _moto_modules_listed_once()
        _expressions_parsed_once()
        _kms_key_arns_of_this_region_only()
        _kms_keys_used_only_when_enabled()
        _unsigned_requests_refused()
        _json_protocol_denials_in_json()
        _transactions_idempotent_by_token()
        _single_writes_refused_during_transactions()
        _done = True


def _moto_modules_listed_once() -> None:
    import moto.backends as backends

    listed = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: listed  # type: ignore[assignment]


# Distinct expressions kept; tokex sends a handful, a test suite a few hundred.
PARSED_EXPRESSIONS_KEPT = 1024
_forget_parsed: list[Callable[[], None]] = []


def forget_parsed_expressions() -> None:
    """Empty the kept parses. A test hook (tests/adapters/test_moto_fixes.py): for a test
    that must start with none; tokex itself never calls it."""
    for forget in _forget_parsed:
        forget()


def _expressions_parsed_once() -> None:
    from moto.dynamodb.comparisons import ConditionExpressionParser
    from moto.dynamodb.parsing.expressions import (  # type: ignore[attr-defined]
        UpdateExpressionParser,
    )

    update_parser: Any = UpdateExpressionParser  # moto's parsing package is untyped
    parse_update = functools.lru_cache(PARSED_EXPRESSIONS_KEPT)(update_parser.make.__func__)
    update_parser.make = classmethod(parse_update)  # type: ignore[arg-type]
    _forget_parsed.append(parse_update.cache_clear)

    parse_condition = ConditionExpressionParser.parse

    @functools.lru_cache(PARSED_EXPRESSIONS_KEPT)
    def parsed(key: str) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
        # Parsed from a copy of the request's values (the key): the parse holds them, and
        # moto may later change a request's lists in place (an item's set an ADD grows).
        expression, names, values = json.loads(key)
        own = ConditionExpressionParser(expression, names, values)
        op = parse_condition(own)  # raises on an invalid one: never kept
        return op, tuple(own.expr_attr_names_found), tuple(own.expr_attr_values_found)

    _forget_parsed.append(parsed.cache_clear)

    def parse(self: Any) -> Any:
        if not self.condition_expression:
            return parse_condition(self)  # nothing to parse
        try:
            # Key order kept: moto reads a value's type off its first key.
            key = json.dumps(
                [
                    self.condition_expression,
                    self.expression_attribute_names or {},
                    self.expression_attribute_values or {},
                ]
            )
        except (TypeError, ValueError):
            return parse_condition(self)  # binary values (moto decodes them to bytes): not kept
        op, names_found, values_found = parsed(key)
        # What the request's validation reads off the parser: the placeholders it used.
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return op

    ConditionExpressionParser.parse = parse  # type: ignore[method-assign]


def _unsigned_requests_refused() -> None:
    """With signature checks on, moto reads `Authorization` without looking for it: an
    unsigned request crashed its server (500, and a traceback on `tokex local`'s console for
    any local process to print). AWS answers 403 `MissingAuthenticationToken`: in XML for
    the query protocol (STS, IAM), in JSON for the JSON protocol (X-Amz-Target: KMS,
    DynamoDB)."""
    from moto.core.exceptions import JsonRESTError, SignatureDoesNotMatchError
    from moto.iam.access_control import IAMRequestBase

    # The XML error moto's own signature errors are (its name changed across releases).
    xml_error: Any = SignatureDoesNotMatchError.__bases__[0]

    class MissingAuthenticationToken(xml_error):  # type: ignore[misc]
        code = 403

    class MissingAuthenticationTokenJson(JsonRESTError):
        code = 403

    checked = IAMRequestBase.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        headers = kwargs["headers"] if "headers" in kwargs else args[5]
        if "Authorization" not in headers:
            if "X-Amz-Target" in headers:
                raise MissingAuthenticationTokenJson(
                    "MissingAuthenticationTokenException", "Missing Authentication Token"
                )
            raise MissingAuthenticationToken(
                "MissingAuthenticationToken", "Request is missing Authentication Token"
            )
        checked(self, *args, **kwargs)

    IAMRequestBase.__init__ = __init__  # type: ignore[method-assign]


# How a JSON-protocol service (X-Amz-Target) names its errors: the service, as the
# request is signed for -> (the `__type` prefix, the message's key). KMS's (and the
# default) is the plain name.
_JSON_ERROR_SHAPES = {"dynamodb": ("com.amazon.coral.service#", "Message")}
_JSON_ERROR_SHAPE_DEFAULT = ("", "message")
# What such a service answers a request signed with a key it does not know, or with the
# wrong secret: botocore reads these codes (tokex's operator commands hint "credentials
# not valid for this endpoint"), where moto's query-protocol XML was a bare "403".
_UNKNOWN_KEY = (
    "UnrecognizedClientException",
    "The security token included in the request is invalid.",
)
_WRONG_SIGNATURE = (
    "InvalidSignatureException",
    "The request signature we calculated does not match the signature you provided. Check "
    "your AWS Secret Access Key and signing method. Consult the service documentation for "
    "details.",
)


def _json_protocol_denials_in_json() -> None:
    """A signed request refused: moto answers 403 in the query protocol's XML whatever
    the service (`AccessDenied`, `InvalidClientTokenId`, `SignatureDoesNotMatch`), which
    the SDK cannot read from a JSON-protocol service (an operator command with the wrong
    env file printed "dynamodb Scan: 403"). AWS answers each 400 in JSON:
    `AccessDeniedException` for a request its identity may not make,
    `UnrecognizedClientException` for an unknown key, `InvalidSignatureException` for the
    wrong secret."""
    from moto.core.exceptions import AccessDeniedError, JsonRESTError
    from moto.iam.access_control import IAMRequest

    class JsonProtocolError(JsonRESTError):
        code = 400

        def __init__(self, service: str, code: str, message: str) -> None:
            prefix, message_key = _JSON_ERROR_SHAPES.get(service, _JSON_ERROR_SHAPE_DEFAULT)
            super().__init__(code, message)
            self.description = json.dumps({"__type": prefix + code, message_key: message})

    refuse = IAMRequest._raise_access_denied
    unknown_key = IAMRequest._raise_invalid_access_key
    wrong_signature = IAMRequest._raise_signature_does_not_match

    def _json_protocol(request: Any) -> bool:
        return "X-Amz-Target" in request._headers  # else the query protocol's (STS, IAM)

    def _raise_access_denied(self: Any) -> None:
        try:
            refuse(self)
        except AccessDeniedError as denied:
            if not _json_protocol(self):
                raise  # moto's XML is AWS's
            raise JsonProtocolError(
                self._service, "AccessDeniedException", denied.message
            ) from None

    def _raise_invalid_access_key(self: Any, reason: str) -> None:
        if _json_protocol(self):
            raise JsonProtocolError(self._service, *_UNKNOWN_KEY)
        unknown_key(self, reason)

    def _raise_signature_does_not_match(self: Any) -> None:
        if _json_protocol(self):
            raise JsonProtocolError(self._service, *_WRONG_SIGNATURE)
        wrong_signature(self)

    IAMRequest._raise_access_denied = _raise_access_denied  # type: ignore[method-assign]
    IAMRequest._raise_invalid_access_key = _raise_invalid_access_key  # type: ignore[method-assign,assignment]
    IAMRequest._raise_signature_does_not_match = _raise_signature_does_not_match  # type: ignore[method-assign]


def _kms_key_arns_of_this_region_only() -> None:
    """Every KMS operation that names a key checks it through `_validate_cmk_id` (directly
    or through `_validate_key_id`): an ARN of another Region is not found, as in AWS."""
    from moto.kms.exceptions import NotFoundException
    from moto.kms.responses import KmsResponse

    validate = KmsResponse._validate_cmk_id

    def validate_cmk_id(self: Any, key_id: str) -> None:
        if key_id.startswith("arn:") and ":key/" in key_id:
            arn_region = key_id.split(":")[3]
            if arn_region != self.region:
                raise NotFoundException(f"Invalid arn {arn_region}")
        validate(self, key_id)

    KmsResponse._validate_cmk_id = validate_cmk_id  # type: ignore[method-assign]


def _kms_keys_used_only_when_enabled() -> None:
    """Sign, Verify and GetPublicKey of a key that is not enabled are refused with AWS's
    codes and messages (KMS API reference, Sign: `DisabledException`,
    `KMSInvalidStateException`)."""
    from moto.core.exceptions import JsonRESTError
    from moto.kms.models import KmsBackend

    def enabled_only(operation: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(operation)
        def checked(self: Any, key_id: str, *args: Any, **kwargs: Any) -> Any:
            key = self.describe_key(key_id)
            if key.key_state == "Disabled":
                raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
            if key.key_state != "Enabled":
                raise JsonRESTError(
                    "KMSInvalidStateException",
                    f"{key.arn} is {_KEY_STATE_WORDS.get(key.key_state, key.key_state)}.",
                )
            return operation(self, key_id, *args, **kwargs)

        return checked

    for operation in ("sign", "verify", "get_public_key"):
        setattr(KmsBackend, operation, enabled_only(getattr(KmsBackend, operation)))


_KEY_STATE_WORDS = {"PendingDeletion": "pending deletion", "PendingImport": "pending import"}


# DynamoDB API reference, TransactWriteItems `ClientRequestToken`.
IDEMPOTENCY_WINDOW_SECONDS = 600


def _clock() -> float:
    return time.monotonic()  # a module function, for a test to move


class _RequestTokens:
    """The `ClientRequestToken`s one DynamoDB backend (an account's Region) has seen. Kept
    on the backend, so that moto's reset forgets them with the tables."""

    def __init__(self) -> None:
        self.running: dict[str, bytes] = {}  # token -> digest of the request without it
        # token -> (digest, when it completed, moto's answer if it says more than that it
        # succeeded), oldest first.
        self.completed: collections.OrderedDict[str, tuple[bytes, float, Any]] = (
            collections.OrderedDict()
        )
        # The answer of a transaction that asked for nothing back: they are all alike, so
        # one is kept, not one per token (a load run sends thousands in ten minutes).
        self.plain_answer: Any = None

    def forget_expired(self) -> None:
        now = _clock()
        while self.completed:
            completed_at = next(iter(self.completed.values()))[1]
            if now - completed_at <= IDEMPOTENCY_WINDOW_SECONDS:
                return
            self.completed.popitem(last=False)


def _transactions_idempotent_by_token() -> None:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
    from moto.dynamodb.responses import DynamoHandler

    transact = DynamoHandler.transact_write_items
    lock = threading.Lock()

    def refusal(code: str, message: str) -> Exception:
        return DynamodbException(ERROR_TYPE_PREFIX + code, message)

    def transact_write_items(self: Any) -> Any:
        token = self.body.get("ClientRequestToken")
        if not isinstance(token, str):
            return transact(self)
        request = {k: v for k, v in self.body.items() if k != "ClientRequestToken"}
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).digest()
        backend = self.dynamodb_backend
        with lock:
            tokens = backend.__dict__.setdefault("_tokex_request_tokens", _RequestTokens())
            tokens.forget_expired()
            earlier = tokens.running.get(token) or tokens.completed.get(token, (None,))[0]
            if earlier is not None and earlier != digest:
                raise refusal(
                    "IdempotentParameterMismatchException",
                    "The request uses the same client token as a previous, "
                    "but non-identical request.",
                )
            if token in tokens.running:
                raise refusal(
                    "TransactionInProgressException",
                    "The transaction with the given request token is already in progress.",
                )
            if token in tokens.completed:  # applied once already: no second effect
                return tokens.completed[token][2] or tokens.plain_answer
            tokens.running[token] = digest
        try:
            result = transact(self)
        except BaseException:
            with lock:
                del tokens.running[token]  # nothing was applied: a retry is a new request
            raise
        asked = any(
            request.get(option, "NONE") != "NONE"
            for option in ("ReturnConsumedCapacity", "ReturnItemCollectionMetrics")
        )
        with lock:
            del tokens.running[token]
            if not asked:
                tokens.plain_answer = result
            tokens.completed[token] = (digest, _clock(), result if asked else None)
        return result

    DynamoHandler.transact_write_items = transact_write_items  # type: ignore[method-assign]


class _CopyWithoutTableBackups:
    """The `copy` module as moto.dynamodb.models sees it: a table is not copied (the
    transaction's only use of `deepcopy` on one); everything else is."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        from moto.dynamodb.models.table import Table

        if isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


Backup = tuple[str, dict[str, Any], dict[str, Any] | None]


def _item_backups(backend: Any, transact_items: list[dict[str, Any]]) -> list[Backup]:
    """(table, key, attributes or None) of each item named, before the transaction."""
    backups: list[Backup] = []
    for entry in transact_items:
        if len(entry) != 1:
            continue  # moto refuses it before writing anything
        (op,) = entry.values()
        named = _named_item(backend, op)
        if named is None:
            continue
        table, key = named
        try:
            item = backend.get_item(table.name, key)
        except Exception:  # noqa: S112 - a malformed key: moto refuses it before writing
            continue
        attributes = copy.deepcopy(item.to_json()["Attributes"]) if item is not None else None
        backups.append((table.name, key, attributes))
    return backups


def _restore(backend: Any, backups: list[Backup]) -> None:
    for table_name, key, attributes in reversed(backups):
        if attributes is None:
            backend.delete_item(table_name, key)
        else:
            backend.put_item(table_name, attributes)


def _named_item(backend: Any, op: Any) -> tuple[Any, dict[str, Any]] | None:
    """(table, key) of the item a transaction entry or a single write names (`Key`, or
    the key attributes of its `Item`), or None when moto will refuse it anyway."""
    if not isinstance(op, dict):
        return None
    table = backend.tables.get(op.get("TableName"))
    if table is None:
        return None
    key = op.get("Key") or _key_of(table, op.get("Item") or {})
    return (table, key) if isinstance(key, dict) else None


def _key_of(table: Any, attributes: dict[str, Any]) -> dict[str, Any] | None:
    names = [table.hash_key_attr, *([table.range_key_attr] if table.range_key_attr else [])]
    if not all(name in attributes for name in names):
        return None
    return {name: attributes[name] for name in names}


# How long a transaction holds its items beyond moto's own time applying it (seconds).
TRANSACTION_SECONDS_ENV = "TOKEX_EMULATOR_TRANSACTION_SECONDS"
MAX_TRANSACTION_SECONDS = 5.0
transaction_seconds = 0.0  # install() reads TRANSACTION_SECONDS_ENV


def transaction_seconds_from_environment() -> float:
    text = os.environ.get(TRANSACTION_SECONDS_ENV, "").strip() or "0"
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_TRANSACTION_SECONDS:  # NaN fails too
        raise ValueError(
            f"{TRANSACTION_SECONDS_ENV} must be a number of seconds from 0 to "
            f"{MAX_TRANSACTION_SECONDS:g}, not {text!r}"
        )
    return seconds


_CONFLICT = "Transaction is ongoing for the item"
_holding = threading.Lock()


def _held_items(backend: Any) -> set[tuple[str, str]]:
    """The items (table, key) transactions of one backend are writing; call with _holding."""
    held: set[tuple[str, str]] = backend.__dict__.setdefault("_tokex_held_items", set())
    return held


def _item_id(backend: Any, op: Any) -> tuple[str, str] | None:
    """An item a transaction entry or single write names, as (table, key) text, or None."""
    named = _named_item(backend, op)
    if named is None:
        return None
    table, key = named
    return table.name, json.dumps(key, sort_keys=True)


def _hold_items(backend: Any, transact_items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Hold every item the transaction names, or cancel it (TransactionConflict on each
    item another transaction holds) holding nothing."""
    from moto.dynamodb.exceptions import TransactionCanceledException

    ids = [
        _item_id(backend, next(iter(entry.values()), None)) if isinstance(entry, dict) else None
        for entry in transact_items
    ]
    with _holding:
        held = _held_items(backend)
        if any(item in held for item in ids if item is not None):
            raise TransactionCanceledException(
                [
                    ("TransactionConflict", _CONFLICT, None)
                    if item is not None and item in held
                    else (None, None, None)
                    for item in ids
                ]
            )
        mine = [item for item in dict.fromkeys(ids) if item is not None]
        held.update(mine)
    return mine


def _let_go(backend: Any, items: list[tuple[str, str]]) -> None:
    with _holding:
        _held_items(backend).difference_update(items)


def _single_writes_refused_during_transactions() -> None:
    from moto.dynamodb.exceptions import ERROR_TYPE_PREFIX, DynamodbException
    from moto.dynamodb.responses import DynamoHandler

    def refused_while_held(write: Callable[[Any], Any]) -> Callable[[Any], Any]:
        @functools.wraps(write)
        def checked(self: Any) -> Any:
            backend = self.dynamodb_backend
            item = _item_id(backend, self.body)
            with _holding:
                conflict = item is not None and item in _held_items(backend)
            if conflict:
                raise DynamodbException(
                    ERROR_TYPE_PREFIX + "TransactionConflictException", _CONFLICT
                )
            return write(self)

        return checked

    for operation in ("put_item", "update_item", "delete_item"):
        setattr(DynamoHandler, operation, refused_while_held(getattr(DynamoHandler, operation)))


# moto's own API (`/moto-api/...`: switch signature checks off, reset, dump every backend's
# state with its keys) answers only requests that carry this header with the emulator's
# admin token: any local process can reach a loopback port.
ADMIN_HEADER = "X-Tokex-Emulator-Admin"
# How the parent hands the admin token to an emulator it starts as a process.
ADMIN_TOKEN_ENV = "TOKEX_EMULATOR_ADMIN_TOKEN"
_MOTO_API = "/moto-api"


def new_admin_token() -> str:
    return secrets.token_urlsafe(32)


# What moto reads off `Authorization` without checking it (the credential scope, split on
# "/"): anything else is refused before moto sees it. SigV4's header (AWS General Reference,
# "Signature Version 4 signing process"): an access key id as IAM spells one, a Region and a
# service as AWS names them; whether moto knows them is moto's to judge.
_SIGV4_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=[A-Za-z0-9_]{1,128}/[0-9]{8}/[a-z0-9-]{1,64}/"
    r"(?P<service>[a-z0-9-]{1,64})/aws4_request,\s*"
    r"SignedHeaders=[a-z0-9-]+(?:;[a-z0-9-]+)*,\s*"
    r"Signature=[0-9a-f]{64}"
)
_INCOMPLETE_SIGNATURE = "The request signature does not conform to AWS standards."
_UNKNOWN_OPERATION = (
    "The action or operation requested is invalid. Verify that the action is typed correctly."
)
_INTERNAL_FAILURE = (
    "The request processing has failed because of an unknown error, exception or failure."
)
# Of an exception's text, what the console line shows (escaped): it may quote the request.
CONSOLE_TEXT_CHARS = 200


def admin_gate(app: WsgiApp, admin_token: str) -> WsgiApp:
    """`app`, but `/moto-api...` (where moto routes its own API, whatever the host) is 403
    without the admin header; an `Authorization` header that is not SigV4's is 400
    `IncompleteSignature` before moto sees it; an exception that escapes `app` is answered
    (module docstring, "Crashes"), never left to the server's traceback."""
    from botocore.model import OperationNotFoundError

    expected = admin_token.encode()

    def gated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        if path.startswith(_MOTO_API):
            given = environ.get("HTTP_" + ADMIN_HEADER.upper().replace("-", "_"), "")
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
                body = b'{"message": "the emulator\'s own API needs its admin token"}'
                start_response(
                    "403 Forbidden",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
                )
                return [body]
        authorization = environ.get("HTTP_AUTHORIZATION")
        if authorization is not None and not _SIGV4_AUTHORIZATION.fullmatch(authorization):
            refusal = _aws_error(environ, 400, "IncompleteSignature", _INCOMPLETE_SIGNATURE)
            return refusal(environ, start_response)
        try:
            return app(environ, start_response)
        except OperationNotFoundError:  # the request names an operation moto does not know
            error = _aws_error(
                environ, 400, "InvalidAction", _UNKNOWN_OPERATION, json_code="UnknownOperation"
            )
        except Exception as err:
            text = escaped(f"{type(err).__name__}: {err}")
            if len(text) > CONSOLE_TEXT_CHARS:
                text = text[:CONSOLE_TEXT_CHARS] + "..."
            print(f"tokex local: AWS emulator: 500 for {text}", file=sys.stderr, flush=True)
            error = _aws_error(environ, 500, "InternalFailure", _INTERNAL_FAILURE)
        # exc_info: moto may have started its own answer before it failed (PEP 3333).
        return error(environ, functools.partial(start_response, exc_info=sys.exc_info()))

    return gated


def _aws_error(
    environ: dict[str, Any], status: int, code: str, message: str, *, json_code: str = ""
) -> Any:
    """The error as moto answers its own (a WSGI application), in the request's protocol,
    as `_unsigned_requests_refused` shapes its 403: JSON for the JSON protocol
    (X-Amz-Target; `<json_code or code>Exception`, DynamoDB's names for DynamoDB), else
    the query protocol's XML."""
    from moto.core.exceptions import JsonRESTError

    target = environ.get("HTTP_X_AMZ_TARGET")
    error: Any
    if target is None:
        client_fault, service_fault = _xml_errors()
        error = (service_fault if status >= 500 else client_fault)(code, message)
    else:
        name = (json_code or code) + ("" if status >= 500 else "Exception")
        signed = _SIGV4_AUTHORIZATION.fullmatch(environ.get("HTTP_AUTHORIZATION") or "")
        if signed is not None:
            service = signed["service"]
        else:
            service = "dynamodb" if target.startswith("DynamoDB") else ""
        prefix, message_key = _JSON_ERROR_SHAPES.get(service, _JSON_ERROR_SHAPE_DEFAULT)
        error = JsonRESTError(name, message)
        error.description = json.dumps({"__type": prefix + name, message_key: message})
    error.code = status
    return error


@functools.cache
def _xml_errors() -> tuple[Any, Any]:
    """moto's XML error, as the 403s' (`<Type>Sender</Type>`), and the same without the
    Type Sender, for a fault of the service."""
    from moto.core.exceptions import SignatureDoesNotMatchError

    client_fault: Any = SignatureDoesNotMatchError.__bases__[0]

    class ServiceFault(client_fault):  # type: ignore[misc]
        include_type_sender = False

    return client_fault, ServiceFault


def emulator_server(
    host: str,
    wrap: Callable[[WsgiApp], WsgiApp] | None = None,
    *,
    admin_token: str | None = None,
) -> BaseWSGIServer:
    """moto's server with the fixes, as `moto.server.main` makes it, on a port picked when
    binding; `wrap`, if given, wraps moto's WSGI application. Its own API needs
    `admin_token` (default: the environment's ADMIN_TOKEN_ENV, else a random one nobody
    knows)."""
    install()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.server import MotoRequestHandler
    from werkzeug.serving import make_server

    if admin_token is None:
        admin_token = os.environ.get(ADMIN_TOKEN_ENV) or new_admin_token()
    app = DomainDispatcherApplication(create_backend_app)
    app.debug = True  # type: ignore[attr-defined] # as moto.server.main sets it
    served = admin_gate(wrap(app) if wrap is not None else app, admin_token)
    server = make_server(host, 0, served, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.port)  # moto writes it into URLs it returns
    return server


def announce_and_serve(server: BaseWSGIServer) -> None:
    """Name the server's URL on stdout's first line, then serve until stopped."""
    print(f"http://{server.host}:{server.port}", flush=True)
    # Nothing else goes to the parent, whose pipe nobody reads once the URL is in.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    server.serve_forever()


def serve(host: str) -> None:
    """moto's server, as `moto.server.main` runs it, on a port picked when binding."""
    announce_and_serve(emulator_server(host))


if __name__ == "__main__":
    serve(sys.argv[1])
