"""Why the workload got no token: `TokenError` and its codes, shared by the exchange
(token_client.py) and the evidence it gathers first (evidence.py)."""

from __future__ import annotations

import sys
from collections.abc import Collection

from tokex.printable import escaped

# The AWS SDK and the packages it raises through (dateutil parses credential expiry times).
AWS_SDK = frozenset({"botocore", "boto3", "dateutil", "s3transfer"})

# TokenError.error of failures that are not an answer of the token endpoint. The CLI passes
# them on as its `--json` error codes (cli/errors.py), so the shared ones are spelled alike.
INVALID_ENDPOINT = "invalid_endpoint"  # not a base URL a signed request may go to
UNREACHABLE = "unreachable"  # no HTTP answer (refused, timed out, DNS)
NOT_TOKEX = "not_tokex"  # an answer, but not one a tokex issuer gives
ISSUER_MISMATCH = "issuer_mismatch"  # discovery names another issuer; a JWT for another
NO_CREDENTIALS = "no_credentials"
AWS_ERROR = "aws_error"  # AWS refused or failed a call (sts:GetWebIdentityToken)
INVALID_INPUT = "invalid_input"  # a file's content (the EKS token file)
# RFC 6749's code, tokex's own for its 503s; also a 5xx or 429 that is no OAuth answer
# (a gateway's outage), which says nothing of whether the server is a tokex issuer.
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"


class TokenError(Exception):
    """No token: `error` is the token endpoint's OAuth error code when it refused, else one
    of the codes above; `status` the HTTP status of the answer at fault, when there was
    one; `url` is the URL (or the file) at fault, when there is one; `retry_after` the
    seconds the answer's `Retry-After` asked the caller to wait, when it had one; `oauth`
    whether the answer was an OAuth error response (RFC 6749 §5.2), the token endpoint's
    own, rather than a gateway's (`{"message": "Too Many Requests"}`) or no answer;
    `aws_code` the error code AWS answered when it refused a call of the client's own
    (sts:GetWebIdentityToken's `RegionDisabledException`).

    Its text (the message, `answer`, `error`) quotes what a server answered (an OAuth
    error_description, a reason phrase, a content type), which any endpoint, a look-alike
    or a gateway's error page, may fill with terminal escapes or line breaks: it is kept
    with its control characters shown escaped (`\\x1b`, `\\n`), one printable line, so that
    no consumer (`tokex token`'s stderr and -v, an application's log, the proxy) lets it
    drive a terminal or forge a line."""

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        status: int | None = None,
        url: str | None = None,
        answer: str | None = None,
        retry_after: float | None = None,
        oauth: bool = False,
        aws_code: str | None = None,
    ):
        message = escaped(message)
        super().__init__(message)
        self.error = None if error is None else escaped(error)
        self.status = status
        self.url = url
        self.answer = escaped(answer or message)  # what the server answered, in a few words
        self.retry_after = retry_after
        self.oauth = oauth
        self.aws_code = None if aws_code is None else escaped(aws_code)

    def again(self, message: str | None = None, **changes: object) -> TokenError:
        """A copy (one exception object per raising thread), `message` and `changes`
        (`retry_after=...`) replacing the original's."""
        fields: dict[str, object] = {
            "error": self.error,
            "status": self.status,
            "url": self.url,
            "answer": self.answer,
            "retry_after": self.retry_after,
            "oauth": self.oauth,
            "aws_code": self.aws_code,
        }
        fields.update(changes)
        return TokenError(str(self) if message is None else message, **fields)  # type: ignore[arg-type]


def raised_in(exc: BaseException, packages: Collection[str]) -> bool:
    """Whether the innermost frame outside the standard library that `exc` came through is
    code of one of `packages`: botocore raises the standard library's errors too (a
    credential_process answer that is not JSON is json.decoder's JSONDecodeError), while
    tokex's own code that botocore calls back (its model loader), or a caller's own
    session object, stays theirs."""
    frame, innermost = exc.__traceback__, ""
    while frame is not None:
        package = str(frame.tb_frame.f_globals.get("__name__", "")).split(".")[0]
        if package not in sys.stdlib_module_names:
            innermost = package
        frame = frame.tb_next
    return innermost in packages
