"""Policy evaluation (docs/policies.md "Evaluation"): which policy, if any, lets this caller have a
token for this audience, and with which scopes, TTL and claims.

`explain` is the one implementation: it assesses every policy, records one line per policy
(applies, or the first reason it does not) and reaches the decision or the refusal.
`evaluate` returns that decision or raises that refusal, so the operator's explanation and
the exchange's answer cannot disagree.

Refusals carry two texts (errors.py): the `description` goes to the caller and is the same
whatever the cause — an unknown caller and a denied one cannot be told apart
(docs/contract.md "Errors (RFC 6749 §5.2, RFC 8693 §2.2.2)", `invalid_target`) — while
`reason` goes to the audit log and says which policy denied or why none applied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokex import identifiers
from tokex.errors import InvalidScope, InvalidTarget
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.policy.globs import glob_matches, literal_prefix_length, principal_matches
from tokex.policy.model import InstanceConditions, Policy

TagLookup = Callable[[InstanceIdentity], Mapping[str, str]]

# Requested scopes are the caller's own input, but an error description stays small.
_MAX_SCOPES_SHOWN = 5
_MAX_SCOPE_SHOWN_LENGTH = 64
# How many near misses the audit reason lists.
_MAX_REASONS = 3
# Instance conditions -> the InstanceIdentity field each one is matched against.
_INSTANCE_FIELDS = {
    "regions": "region",
    "availability_zones": "availability_zone",
    "image_ids": "image_id",
    "instance_types": "instance_type",
    "accounts": "account",
}


@dataclass(frozen=True)
class Decision:
    """The chosen allow and what it grants. `claims` is a copy, safe to extend."""

    policy: Policy
    scopes: tuple[str, ...]
    ttl_seconds: int
    claims: dict[str, Any]


@dataclass(frozen=True)
class PolicyLine:
    """One policy's part in a decision: does it apply, and if not, the first reason."""

    policy_id: str
    effect: str
    applies: bool
    detail: str
    # Longest literal prefix among the principal patterns that matched (0 if none).
    specificity: int = 0
    # How far the policy got: disabled < principal < principal_ids < audience < instance.
    stage: int = 0


@dataclass(frozen=True)
class Explanation:
    lines: tuple[PolicyLine, ...]
    decision: Decision | None
    error: InvalidTarget | InvalidScope | None

    def render(self) -> str:
        """Text for an operator (it names policies: never for the HTTP response)."""
        width = max((len(line.policy_id) for line in self.lines), default=0)
        out = [
            f"{line.policy_id:<{width}}  {line.effect:<5}  "
            f"{'applies' if line.applies else 'skipped'}: {line.detail}"
            for line in self.lines
        ]
        if self.decision is not None:
            d = self.decision
            out.append(
                f"=> allowed by {d.policy.id}: scopes [{' '.join(d.scopes)}], ttl {d.ttl_seconds} s"
            )
        elif self.error is not None:
            out.append(f"=> refused ({self.error.error}): {self.error.reason}")
        return "\n".join(out)


_DISABLED, _PRINCIPAL, _PRINCIPAL_ID, _AUDIENCE_STAGE, _INSTANCE, _APPLIES = range(6)


def evaluate(
    policies: Iterable[Policy],
    caller: CallerIdentity,
    audience: str,
    requested_scopes: tuple[str, ...] | None,
    instance: InstanceIdentity | None,
    *,
    default_ttl: int,
    ttl_cap: int,
    tag_lookup: TagLookup | None = None,
) -> Decision:
    """The decision for this exchange; raises InvalidTarget or InvalidScope."""
    result = explain(
        policies,
        caller,
        audience,
        requested_scopes,
        instance,
        default_ttl=default_ttl,
        ttl_cap=ttl_cap,
        tag_lookup=tag_lookup,
    )
    if result.error is not None:
        raise result.error
    assert result.decision is not None  # explain sets exactly one of them
    return result.decision


def explain(
    policies: Iterable[Policy],
    caller: CallerIdentity,
    audience: str,
    requested_scopes: tuple[str, ...] | None,
    instance: InstanceIdentity | None,
    *,
    default_ttl: int,
    ttl_cap: int,
    tag_lookup: TagLookup | None = None,
) -> Explanation:
    """Assess every policy and reach the decision (docs/policies.md "Evaluation", 1-4)."""
    tags = _TagMemo(tag_lookup)
    ordered = sorted(policies, key=lambda p: p.id)
    lines = tuple(_assess(p, caller, audience, instance, tags) for p in ordered)
    by_line = list(zip(ordered, lines, strict=True))

    denies = [p for p, line in by_line if line.applies and p.effect == "deny"]
    if denies:
        reason = f"denied by policy {denies[0].id}"
        return Explanation(lines, None, _invalid_target(audience, reason))

    allows = [(p, line) for p, line in by_line if line.applies and p.effect == "allow"]
    if not allows:
        return Explanation(lines, None, _invalid_target(audience, _no_allow_reason(by_line)))
    # Most specific: longest literal prefix of the matching principal pattern; then id.
    chosen = min(allows, key=lambda pair: (-pair[1].specificity, pair[0].id))[0]

    if requested_scopes:
        missing = [s for s in dict.fromkeys(requested_scopes) if s not in chosen.scopes]
        if missing:
            return Explanation(lines, None, _invalid_scope(chosen, missing))
        granted = tuple(s for s in chosen.scopes if s in requested_scopes)
    else:  # no scope requested: everything the policy grants (docs/policies.md "Evaluation")
        granted = chosen.scopes
    ttl = min(chosen.max_ttl_seconds or default_ttl, ttl_cap)
    decision = Decision(chosen, granted, ttl, copy.deepcopy(chosen.claims))
    return Explanation(lines, decision, None)


def _assess(
    policy: Policy,
    caller: CallerIdentity,
    audience: str,
    instance: InstanceIdentity | None,
    tags: _TagMemo,
) -> PolicyLine:
    def skipped(stage: int, detail: str, specificity: int = 0) -> PolicyLine:
        return PolicyLine(policy.id, policy.effect, False, detail, specificity, stage)

    if not policy.enabled:
        return skipped(_DISABLED, "disabled")
    matching = [p for p in policy.principals if principal_matches(p, caller.principal_arn)]
    if not matching:
        return skipped(_PRINCIPAL, "does not match the principal")
    pattern = max(matching, key=literal_prefix_length)
    specificity = literal_prefix_length(pattern)
    if policy.principal_ids and caller.principal_id not in policy.principal_ids:
        return skipped(_PRINCIPAL_ID, "principal id differs (principal re-created?)", specificity)
    if not any(glob_matches(a, audience) for a in policy.audiences):
        return skipped(_AUDIENCE_STAGE, "does not cover the audience", specificity)
    if policy.instance is not None:
        why_not = _instance_mismatch(policy.instance, instance, tags, caller)
        if why_not is not None:
            return skipped(_INSTANCE, why_not, specificity)
    detail = f"principal {pattern!r} (literal prefix {specificity})"
    return PolicyLine(policy.id, policy.effect, True, detail, specificity, _APPLIES)


def _instance_mismatch(
    conditions: InstanceConditions,
    instance: InstanceIdentity | None,
    tags: _TagMemo,
    caller: CallerIdentity,
) -> str | None:
    """None when the conditions hold; otherwise the first one that does not."""
    if not conditions.needs_evidence:
        return None
    if instance is None:
        return "requires instance evidence"
    if not instance.bound:
        # Evidence not bound to the caller proves nothing about the caller
        # (docs/security.md "IMDS evidence").
        return "requires instance evidence bound to the caller"
    # Binding already holds the account, and the instance for a session named like one;
    # session binding makes the instance-profile session itself a requirement.
    if conditions.session_binding and caller.session_name != instance.instance_id:
        return "requires the instance's own instance-profile session"
    for name, globs in conditions.attribute_conditions().items():
        value = getattr(instance, _INSTANCE_FIELDS[name])
        if globs and not any(glob_matches(g, value) for g in globs):
            return f"instance {_INSTANCE_FIELDS[name]} does not match"
    if conditions.tags:
        found = tags.get(instance)
        if found is None:
            return "has tag conditions but no tag lookup is configured"
        for key, globs in conditions.tags.items():
            value = found.get(key)
            if value is None or not any(glob_matches(g, value) for g in globs):
                return f"instance tag {key!r} does not match"
    return None


class _TagMemo:
    """At most one tag lookup (a DescribeInstances call) per evaluation, and only when a
    policy that otherwise applies has tag conditions (docs/performance.md "Hot path budget")."""

    def __init__(self, lookup: TagLookup | None) -> None:
        self._lookup = lookup
        self._tags: Mapping[str, str] | None = None

    def get(self, instance: InstanceIdentity) -> Mapping[str, str] | None:
        if self._lookup is None:
            return None
        if self._tags is None:
            self._tags = self._lookup(instance)
        return self._tags


def _no_allow_reason(by_line: list[tuple[Policy, PolicyLine]]) -> str:
    near = [
        f"policy {p.id} {line.detail}"
        for p, line in by_line
        if p.effect == "allow" and line.stage > _PRINCIPAL
    ]
    if not near:
        return "no policy matches principal"
    more = f" (+{len(near) - _MAX_REASONS} more)" if len(near) > _MAX_REASONS else ""
    return "; ".join(near[:_MAX_REASONS]) + more


def _invalid_target(audience: str, reason: str) -> InvalidTarget:
    # Same description for every cause: no oracle for which principals policies name.
    shown = f"audience {audience!r}" if identifiers.is_audience(audience) else "this audience"
    return InvalidTarget(f"no policy allows this caller a token for {shown}", reason=reason)


def _invalid_scope(policy: Policy, missing: list[str]) -> InvalidScope:
    shown = [
        identifiers.NOT_SCOPE_CHARACTER.sub("?", s[:_MAX_SCOPE_SHOWN_LENGTH])
        for s in missing[:_MAX_SCOPES_SHOWN]
    ]
    more = (
        f" (and {len(missing) - _MAX_SCOPES_SHOWN} more)"
        if len(missing) > _MAX_SCOPES_SHOWN
        else ""
    )
    return InvalidScope(
        f"requested scope not granted: {' '.join(shown)}{more}",
        reason=f"policy {policy.id} does not grant {' '.join(shown)}{more}",
    )
