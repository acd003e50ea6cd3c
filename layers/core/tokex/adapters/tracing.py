"""How the function layer traces the upstream calls that botocore does not make.

STS's GetCallerIdentity (sts.py) and the trusted JWT issuers' documents (oidc_keys.py)
go over urllib3, which Powertools' tracer does not patch: each such call runs inside
`traced(name, host)`. With the stack's `tracing` "sdk" that is an X-Ray subsegment,
named for the call and annotated with the host it went to, never anything of the request
(tokex_functions/tracing.py); otherwise, and wherever the library is used without the
function layer, nothing at all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

# traced(name, host): what one upstream call runs in ("sts GetCallerIdentity", its host).
Traced = Callable[[str, str], AbstractContextManager[object]]


def untraced(name: str, host: str) -> AbstractContextManager[object]:
    """No tracing: the default of every adapter that takes a `Traced`."""
    return nullcontext()
