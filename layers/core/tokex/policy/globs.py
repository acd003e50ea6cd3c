"""Glob patterns of policies: `*` and `?` are wildcards, every other character is literal.

Not `fnmatch`: it also understands `[...]` classes (and `[!...]`), which would turn
characters an operator meant literally into syntax. Not a translated regular expression
either: a pattern such as `*a*a*a*a*b` makes a backtracking regex take seconds on a
256-character audience (measured: 0.13 s at 120 characters, growing as n^4), and
audiences come from callers. The matcher below is the classic greedy wildcard match with
a single backtrack point: O(len(pattern) * len(value)) in the worst case, no recursion.

Only *policy* text is ever a pattern; caller values (ARNs, audiences, instance attributes,
tag values) are data and are only matched, so a caller sending `*` gets a literal `*`
(it can only be matched by a wildcard of the pattern, never act as one).

Two flavours:
- principal patterns, over the canonical principal ARN (the token's `sub`, see
  docs/policies.md "Globs"): the pattern
  must be `arn:<partition>:iam::<12-digit account>:(role|user)/<path/name>`, with
  wildcards only in `<path/name>`. There a wildcard never crosses a `/` (IAM path
  separator) or a `:` — `*` behaves as `[^:/]*`, `?` as `[^:/]` — so `role/orders-*`
  matches `role/orders-api` but not `role/team/orders-api`, and `role/*` matches only
  roles at the root path; "any path" must be spelled per level (`role/*/orders-*`).
  Matching is case-sensitive, like the ARN STS returns.
- attribute globs (audiences, instance attributes, tag values): `*` matches any run of
  characters (including none), `?` exactly one.
"""

from __future__ import annotations

import re

from tokex import identifiers

WILDCARDS = frozenset("*?")
# IAM ARNs are at most 2048 characters; a role/user pattern needs far less.
MAX_PRINCIPAL_PATTERN_LENGTH = 1024
# IAM names and paths: letters, digits and `+=,.@_-`; `/` separates path levels.
_IAM_NAME_PART = re.compile(r"[A-Za-z0-9+=,.@_*?-]+")
_SEPARATORS = re.compile(r"([:/])")


class GlobError(ValueError):
    """A pattern that policy validation refuses (the message says why)."""


def has_wildcard(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern  # WILDCARDS, each searched in C


def literal_prefix_length(pattern: str) -> int:
    """Characters before the first wildcard (the whole length for a literal pattern)."""
    return len(_literal_prefix(pattern))


def _literal_prefix(pattern: str) -> str:
    return pattern.partition("*")[0].partition("?")[0]


def check_principal_pattern(pattern: str) -> None:
    """Raise GlobError unless `pattern` is an acceptable principal pattern.

    docs/policies.md "Globs": a bare `*`, or a wildcard in the partition or account field,
    is refused — a
    policy always names its accounts. We also refuse wildcards in `arn`, the service and
    the resource type, so a pattern can only ever reach IAM roles or users.
    """
    if not pattern or len(pattern) > MAX_PRINCIPAL_PATTERN_LENGTH:
        raise GlobError(f"must be 1-{MAX_PRINCIPAL_PATTERN_LENGTH} characters")
    if set(pattern) <= WILDCARDS:
        raise GlobError("a bare wildcard would match every principal; name the account")
    fields = pattern.split(":", 5)
    if len(fields) != 6:
        raise GlobError("must be arn:<partition>:iam::<account>:role/<name> or user/<name>")
    arn, partition, service, region, account, resource = fields
    for name, value in (("arn", arn), ("partition", partition), ("service", service)):
        if has_wildcard(value):
            raise GlobError(f"wildcard in the {name} field is not allowed")
    if has_wildcard(region):
        raise GlobError("wildcard in the region field is not allowed (IAM has none)")
    if has_wildcard(account):
        raise GlobError("wildcard in the account field is not allowed: name the account")
    if arn != "arn":
        raise GlobError("must start with 'arn:'")
    if not identifiers.is_partition(partition):
        raise GlobError(f"partition must be one of {', '.join(identifiers.PARTITIONS)}")
    if service != "iam" or region != "":
        raise GlobError("must be an IAM ARN (arn:<partition>:iam::<account>:...)")
    if not identifiers.is_account_id(account):
        raise GlobError("account must be 12 digits")
    kind, _, path_name = resource.partition("/")
    if has_wildcard(kind) or kind not in ("role", "user"):
        raise GlobError("resource must be role/<name> or user/<name> (no wildcard in the type)")
    # Empty levels (`role//x`, trailing `/`) never occur in an ARN, so they could only be
    # a typo that silently matches nothing.
    if not all(_IAM_NAME_PART.fullmatch(part) for part in path_name.split("/")):
        raise GlobError("path and name may use A-Za-z0-9+=,.@_- and * ?, no empty level")
    # STS names an assumed role `assumed-role/<name>/<session>` without the role's path, so
    # the canonical principal of a role never has one: a pathed role pattern would silently
    # match nothing. (IAM users' ARNs do carry their path.)
    if kind == "role" and "/" in path_name:
        raise GlobError("role patterns are role/<name>: STS never reveals a role's path")


def principal_matches(pattern: str, principal_arn: str) -> bool:
    """Does a (validated) principal pattern match the canonical principal ARN?

    Wildcards never match a separator, so the pattern's `:` and `/` must line up one for
    one with the value's; each level between them is then an attribute glob.
    """
    # Every match starts with the pattern's literal prefix, and most policies name another
    # account or role: refuse those before splitting (evaluation runs every policy).
    if not principal_arn.startswith(_literal_prefix(pattern)):
        return False
    pattern_parts = _SEPARATORS.split(pattern)
    value_parts = _SEPARATORS.split(principal_arn)
    if len(pattern_parts) != len(value_parts):
        return False
    # split() with a capturing group alternates level, separator, level, ...
    return all(
        (p == v) if index % 2 else glob_matches(p, v)
        for index, (p, v) in enumerate(zip(pattern_parts, value_parts, strict=True))
    )


def glob_matches(pattern: str, value: str) -> bool:
    """Attribute glob: `*` any run of characters, `?` one character, the rest literal."""
    if not has_wildcard(pattern):
        return pattern == value  # most patterns and levels are literal: compare in C
    p = v = 0
    star = -1  # index in pattern of the last `*` seen
    resume = 0  # index in value where that `*` currently stops
    while v < len(value):
        if p < len(pattern) and pattern[p] == "*":
            star, resume = p, v
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == value[v]):
            p += 1
            v += 1
        elif star >= 0:
            # Let the last `*` swallow one more character and retry from there.
            resume += 1
            p, v = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)
