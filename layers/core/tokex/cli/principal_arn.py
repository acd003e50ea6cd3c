"""The `--principal` of `tokex policy explain`: an IAM or STS ARN, mapped to the
CallerIdentity a real exchange would get from STS for it.

The mapping is the STS forwarder's own (adapters/sts.py `_caller_identity`), so an
assumed-role session maps to its path-less role exactly as in a real exchange. An ARN the
exchange never sees is a usage error that says which part is wrong.
"""

from __future__ import annotations

from tokex import identifiers
from tokex.cli.errors import UsageError
from tokex.evidence.identity import CallerIdentity

# The shapes STS's answer can have (adapters/sts.py), plus a role ARN as IAM writes it:
# all from identifiers.py.
FORMS = (
    "arn:PARTITION:iam::ACCOUNT:role/NAME, arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION "
    "or arn:PARTITION:iam::ACCOUNT:user/NAME"
)
# Session name used for a plain role ARN: any role session of that role maps the same way.
EXPLAIN_SESSION = "tokex-explain"
# Stands in for an unknown principal id: valid in an STS UserId, never in a policy.
_UNKNOWN_ID = "-"


def caller_from_principal(
    principal: str, account: str | None, principal_id: str | None
) -> tuple[CallerIdentity, list[str]]:
    """The CallerIdentity a real exchange would get from STS for this principal, and notes
    on what the mapping changed."""
    from tokex.adapters.sts import _caller_identity

    notes: list[str] = []
    if account is not None and not identifiers.is_account_id(account):
        raise UsageError(f"--account {account!r}: must be 12 digits", input="--account")
    if principal.startswith(("role/", "user/")):
        if account is None:
            raise UsageError(
                f"--principal {principal} needs --account ACCOUNT (or give the whole ARN)",
                input="--account",
            )
        principal = f"arn:aws:iam::{account}:{principal}"
        notes.append(
            f"{principal.split(':', 5)[5]} read as {principal} (partition aws: give the whole"
            " ARN for another)"
        )
    if principal_id is not None and not identifiers.PRINCIPAL_ID.fullmatch(principal_id):
        raise UsageError(
            f"--principal-id {principal_id!r}: must be 1-128 of A-Za-z0-9 (AROA…/AIDA…)",
            input="--principal-id",
        )
    unique_id = principal_id or _UNKNOWN_ID
    if role := identifiers.ROLE_ARN.fullmatch(principal):
        partition, acct, path, name = role.groups()
        if path:
            notes.append(
                f"role path /{path} dropped: STS does not reveal it, the exchange sees role/{name}"
            )
        arn = f"arn:{partition}:sts::{acct}:assumed-role/{name}/{EXPLAIN_SESSION}"
        fields = {"Arn": arn, "UserId": f"{unique_id}:{EXPLAIN_SESSION}", "Account": acct}
    elif assumed := identifiers.ASSUMED_ROLE_ARN.fullmatch(principal):
        partition, acct, _, session = assumed.groups()
        fields = {"Arn": principal, "UserId": f"{unique_id}:{session}", "Account": acct}
    elif user := identifiers.USER_ARN.fullmatch(principal):
        partition, acct = user.groups()
        fields = {"Arn": principal, "UserId": unique_id, "Account": acct}
    else:
        raise UsageError(
            f"--principal {principal}: {principal_problem(principal)}; expected {FORMS} "
            "(the exchange serves nothing else)",
            input="--principal",
        )
    if account is not None and account != acct:
        raise UsageError(
            f"--account {account} differs from the principal's account {acct}", input="--account"
        )
    # The forwarder's own mapping of GetCallerIdentity's answer (Arn, UserId, Account).
    return _caller_identity(fields, partition), notes


def principal_problem(principal: str) -> str:
    """Which part of an ARN that matches none of the served forms is wrong."""
    parts = principal.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        return "not an ARN"
    _, partition, service, region, account, resource = parts
    if not identifiers.is_partition(partition):
        return f"partition {partition!r} is not one of {', '.join(identifiers.PARTITIONS)}"
    if region:
        return f"IAM and STS ARNs have no region (found {region!r})"
    if not identifiers.is_account_id(account):
        return f"account {account!r} is not 12 digits"
    kind, _, rest = resource.partition("/")
    if (service, kind) == ("sts", "assumed-role"):
        role, _, session = rest.partition("/")
        if not identifiers.IAM_NAME.fullmatch(role):
            return f"role name {role!r} is not 1-64 characters of A-Za-z0-9+=,.@_-"
        if not identifiers.ROLE_SESSION_NAME.fullmatch(session):
            return (
                f"session name {session!r} is not 2-64 characters of A-Za-z0-9+=,.@_- "
                "(an STS RoleSessionName has at least 2)"
            )
    elif (service, kind) in (("iam", "role"), ("iam", "user")):
        name = rest.rsplit("/", 1)[-1]
        if not identifiers.IAM_NAME.fullmatch(name):
            return f"{kind} name {name!r} is not 1-64 characters of A-Za-z0-9+=,.@_-"
        return f"{kind} path {rest!r} is not /-separated printable ASCII"
    return f"{service} {kind or resource!r} is not a role, role session or IAM user"
