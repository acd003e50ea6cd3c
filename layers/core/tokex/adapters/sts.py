"""The STS forwarder: send a verified GetCallerIdentity and trust only what STS answers.

docs/security.md "The STS answer": redirects off, no proxy from the environment
(urllib3's PoolManager never reads one, unlike `requests`), short timeouts, a response
size cap, `Accept` and `Host` set by us. Only HTTP 200 with an XML body in the STS
namespace holding exactly one `GetCallerIdentityResult` is believed. Upstream bodies never
reach an error description.

The call ends by the request's deadline (deadline.py) however STS answers: the transport
bounds every read by the time left (bounded_http.py), so an endpoint that trickles one
byte at a time cannot hold the exchange past it.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError  # parsing is defusedxml

import urllib3
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from urllib3 import HTTPHeaderDict

from tokex import bounded_http, deadline, identifiers
from tokex.adapters import errors
from tokex.adapters.tracing import Traced, untraced
from tokex.errors import DeadlineExceeded, InvalidGrant, TemporarilyUnavailable
from tokex.evidence.identity import CallerIdentity
from tokex.evidence.sigv4_request import StsRequest
from tokex.evidence.sts_endpoints import THROTTLING_CODES

STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
DEFAULT_RETRY_AFTER_SECONDS = 5
MAX_RETRY_AFTER_SECONDS = 60
# STS error codes that mean "your signed request was refused" and that are safe and
# useful to repeat to the caller (AWS STS API reference, "Common Errors").
REFUSAL_CODES = frozenset(
    {
        "AccessDenied",
        "ExpiredToken",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "RegionDisabledException",
        "RequestExpired",
        "SignatureDoesNotMatch",
    }
)
_XML_TYPES = ("text/xml", "application/xml")
_UNVERIFIABLE = "STS response could not be verified"

_USER_ID = re.compile(r"[\w+=,.@:-]{1,256}", re.ASCII)
# What an AWS error code looks like (`Throttling`, `ServiceUnavailable`): only such a code
# of an error answer reaches the log, never other text of its body.
_LOGGED_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,63}", re.ASCII)


class StsForwarder:
    """Sends a verified `StsRequest` to STS and returns who STS says signed it (the
    `CallerIdentityVerifier` of exchange.py). Its 503 reasons follow errors.py's format,
    `sts GetCallerIdentity: <why> (<STS host>)`: why is STS's error code (`Throttling`),
    else `HTTP <status>`, `timeout` or `unreachable`; the host names the Region.

    `traced`: what each call to STS runs in (adapters/tracing.py), an X-Ray subsegment
    `sts GetCallerIdentity` when the function traces."""

    def __init__(
        self,
        connect_override: str | None = None,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 5.0,
        max_response_bytes: int = 64 * 1024,
        traced: Traced = untraced,
    ) -> None:
        # Local mode and tests: the TCP destination only; Host stays the signed STS host.
        self._connect_override = connect_override.rstrip("/") if connect_override else None
        self._max_response_bytes = max_response_bytes
        self._traced = traced
        self._http = bounded_http.pool_manager(
            connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    def get_caller_identity(self, req: StsRequest) -> CallerIdentity:
        with self._traced("sts GetCallerIdentity", req.host):
            status, headers, data = self._post(req)
        if status == 429 or 500 <= status <= 599:
            raise _retry_later(req.host, status, headers, data)
        if len(data) > self._max_response_bytes:
            raise InvalidGrant(_UNVERIFIABLE, reason=f"sts_response_too_large:{status}")
        if headers.get("Content-Encoding", "identity").lower() != "identity":
            raise InvalidGrant(_UNVERIFIABLE, reason="sts_response_encoded")
        if status in (400, 401, 403):
            code = _error_code(data)
            if code in THROTTLING_CODES:
                raise _retry_later(req.host, status, headers, data)
            shown = f": {code}" if code in REFUSAL_CODES else ""
            raise InvalidGrant(
                f"STS refused the signature{shown}", reason=f"sts_refused:{status}{shown}"
            )
        # Anything else but 200 (a redirect above all) is not an answer from STS.
        if status != 200:
            raise InvalidGrant(_UNVERIFIABLE, reason=f"sts_status:{status}")
        if not _is_xml(headers.get("Content-Type", "")):
            raise InvalidGrant(_UNVERIFIABLE, reason="sts_content_type")
        return _caller_identity(_parse_result(data), req.partition)

    def _post(self, req: StsRequest) -> tuple[int, HTTPHeaderDict, bytes]:
        """Send the rebuilt request; read at most max_response_bytes + 1 of the answer."""
        headers = dict(req.headers)
        headers["Host"] = req.host  # the validated, signed host, also with connect_override
        headers["Accept"] = "text/xml"  # set by us: a caller's Accept is CVE-2020-16250
        current = deadline.current()
        if current is not None:
            current.check("sts")
        try:
            response = self._http.request(
                "POST",
                (self._connect_override or f"https://{req.host}") + "/",
                body=req.body.encode("ascii"),
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
            )
            try:
                data = response.read(self._max_response_bytes + 1, decode_content=False)
            except BaseException:
                response.close()
                raise
            if len(data) > self._max_response_bytes:
                response.close()  # never drain an oversized body to reuse the connection
            else:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired():
                raise DeadlineExceeded("sts") from None
            raise _unreachable(req.host, exc) from None
        return response.status, response.headers, data


def _reason(host: str, detail: str) -> str:
    # The host (validated and signed: sts.<region>.amazonaws.com) names the Region whose
    # STS failed; the audit line's access key id, the account whose STS quota it spends.
    return errors.reason("sts", "GetCallerIdentity", f"{detail} ({host})")


def _unreachable(host: str, exc: Exception) -> TemporarilyUnavailable:
    # NewConnectionError is a ConnectTimeoutError (a urllib3 TimeoutError) that is no timeout.
    if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError) and not isinstance(
        exc, urllib3.exceptions.NewConnectionError
    ):
        return TemporarilyUnavailable(
            "STS did not answer in time; retry later", reason=_reason(host, "timeout")
        )
    return TemporarilyUnavailable(
        "STS could not be reached; retry later", reason=_reason(host, "unreachable")
    )


def _retry_later(
    host: str, status: int, headers: HTTPHeaderDict, data: bytes
) -> TemporarilyUnavailable:
    """STS is unavailable or throttles: the reason keeps its error code (for the log
    only: the description is the same whatever STS said), else the HTTP status."""
    seconds = DEFAULT_RETRY_AFTER_SECONDS
    retry_after = headers.get("Retry-After")
    # Delta-seconds (RFC 9110 §10.2.3), capped: a longer one asks for the cap, not the
    # default (the digits bounded only so that no huge number is parsed).
    if retry_after and re.fullmatch(r"[0-9]{1,18}", retry_after):
        seconds = min(max(int(retry_after), 1), MAX_RETRY_AFTER_SECONDS)
    code = _error_code(data)
    detail = code if code and _LOGGED_CODE.fullmatch(code) else f"HTTP {status}"
    return TemporarilyUnavailable(
        "STS is unavailable or throttling; retry later",
        reason=_reason(host, detail),
        retry_after=seconds,
    )


def _is_xml(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() in _XML_TYPES


def _parse_xml(data: bytes) -> Element | None:
    """defusedxml with DTDs forbidden: no entity expansion, no external references."""
    try:
        root: Element = fromstring(data, forbid_dtd=True)
        return root
    except (DefusedXmlException, ParseError, ValueError):
        return None


def _error_code(data: bytes) -> str | None:
    """The `<Code>` of an STS `ErrorResponse`, if the body is one (whatever its type:
    moto labels its XML errors text/html). Only allowlisted codes are ever shown to the
    caller; the log has the code of a 503 (`_retry_later`)."""
    root = _parse_xml(data)
    if root is None:
        return None
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "Code":
            return (element.text or "").strip() or None
    return None


def _parse_result(data: bytes) -> dict[str, str]:
    root = _parse_xml(data)
    if root is None or root.tag != f"{{{STS_NAMESPACE}}}GetCallerIdentityResponse":
        raise InvalidGrant(_UNVERIFIABLE, reason="sts_response_malformed")
    results = list(root.iter(f"{{{STS_NAMESPACE}}}GetCallerIdentityResult"))
    if len(results) != 1 or results[0] not in list(root):
        raise InvalidGrant(_UNVERIFIABLE, reason="sts_result_count")
    fields: dict[str, str] = {}
    for name in ("Arn", "UserId", "Account"):
        found = results[0].findall(f"{{{STS_NAMESPACE}}}{name}")
        if len(found) != 1 or not found[0].text or len(found[0]) != 0:
            raise InvalidGrant(_UNVERIFIABLE, reason=f"sts_result_{name.lower()}")
        fields[name] = found[0].text
    return fields


def _caller_identity(fields: dict[str, str], partition: str) -> CallerIdentity:
    """Map STS's answer to our principal; refuse callers we do not issue tokens to."""
    arn, user_id, account = fields["Arn"], fields["UserId"], fields["Account"]
    if not identifiers.is_account_id(account) or not _USER_ID.fullmatch(user_id):
        raise InvalidGrant(_UNVERIFIABLE, reason="sts_result_values")
    principal_id, _, session_in_user_id = user_id.partition(":")

    role = identifiers.ASSUMED_ROLE_ARN.fullmatch(arn)
    user = identifiers.USER_ARN.fullmatch(arn)
    if role:
        arn_partition, arn_account, role_name, session_name = role.groups()
        # STS never reveals the role's path, so the principal is path-less
        # (`role/Name`); mapping it to `role/path/Name` would need iam:GetRole.
        principal_arn = f"arn:{arn_partition}:iam::{arn_account}:role/{role_name}"
        if session_in_user_id != session_name:
            raise InvalidGrant(_UNVERIFIABLE, reason="sts_user_id_session")
    elif user:
        arn_partition, arn_account = user.groups()
        principal_arn, session_name = arn, None
        if ":" in user_id:
            raise InvalidGrant(_UNVERIFIABLE, reason="sts_user_id_user")
    else:
        # Root and federated-user callers (and anything unknown) are not accepted.
        raise InvalidGrant(
            "only IAM roles and IAM users can exchange tokens (not root or federated users)",
            reason="sts_principal_type",
        )
    if arn_account != account:
        raise InvalidGrant(_UNVERIFIABLE, reason="sts_arn_account")
    if arn_partition != partition:
        raise InvalidGrant(_UNVERIFIABLE, reason="sts_arn_partition")
    return CallerIdentity(
        principal_arn=principal_arn,
        arn=arn,
        account=account,
        user_id=user_id,
        principal_id=principal_id,
        partition=partition,
        session_name=session_name,
    )
