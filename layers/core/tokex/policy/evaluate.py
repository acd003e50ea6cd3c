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

Workload selectors and conditions are judged one by one, each with a verdict: `ok`, `no`
(the caller's value does not match) or `no signal` (the evidence does not carry it). A
selector or condition without a signal never holds (docs/policies.md "Conditions").

A policy's instance tags are judged last, after everything that needs no AWS call: their
lookup (AssumeRole and DescribeInstances in the caller's account) can fail, and its failure
(EC2 throttling, the instance not running) refuses the whole exchange, so it is made only
for a policy that would otherwise apply: one that cannot apply must not refuse an exchange
another policy grants.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tokex import identifiers
from tokex.errors import InvalidScope, InvalidTarget
from tokex.evidence.identity import (
    SIGV4,
    CallerIdentity,
    EksWorkload,
    InstanceIdentity,
    WorkloadAttributes,
)
from tokex.policy.globs import (
    glob_matches,
    has_wildcard,
    literal_prefix_length,
    principal_matches,
)
from tokex.policy.model import InstanceConditions, Policy
from tokex.policy.selectors import DAYS, Conditions, EksSelectors, WorkloadSelectors

TagLookup = Callable[[InstanceIdentity], Mapping[str, str]]

# Requested scopes are the caller's own input, but an error description stays small.
_MAX_SCOPES_SHOWN = 5
_MAX_SCOPE_SHOWN_LENGTH = 64
# How many near misses the audit reason lists.
_MAX_REASONS = 3
# Caller values shown in an explanation as they are; any other is quoted, and cut short.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:/@+=,-]{1,128}")
_MAX_VALUE_SHOWN = 64
# Workload selectors -> the WorkloadAttributes field each one is matched against.
_WORKLOAD_FIELDS = {
    "lambda_function_arns": "lambda_function_arn",
    "ec2_instance_arns": "ec2_instance_arn",
    "source_identities": "source_identity",
    "source_vpcs": "source_vpc",
    "org_ids": "org_id",
}
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
    """One policy's part in a decision: does it apply, and if not, the first reason.

    `detail` is short and names no caller value (the audit reason is made of it);
    `workload` and `conditions` hold each selector's and condition's verdict, for an
    operator, once the policy got that far."""

    policy_id: str
    effect: str
    applies: bool
    detail: str
    # Longest literal prefix among the principal patterns that matched (0 if none); for
    # an EKS caller, of `eks:<cluster>:<namespace>:<service account>` patterns.
    specificity: int = 0
    # How far the policy got: disabled < evidence < principal < principal_ids < audience
    # < instance (its evidence and attributes) < workload < conditions < instance tags
    # < applies.
    stage: int = 0
    workload: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    # Whether that pattern has no wildcard: an exact name beats a pattern of the same
    # literal prefix (`role/orders-api` over `role/orders-api*`).
    exact: bool = False

    def render_detail(self) -> str:
        parts = [self.detail]
        for name, verdicts in (("workload", self.workload), ("conditions", self.conditions)):
            if verdicts:
                parts.append(f"{name}: {', '.join(verdicts)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Explanation:
    lines: tuple[PolicyLine, ...]
    decision: Decision | None
    error: InvalidTarget | InvalidScope | None

    def render(self, shown: Callable[[str], str] = str) -> str:
        """Text for an operator (it names policies: never for the HTTP response). `shown`
        writes what came from the table: a stand-in deny keeps the stored item's key,
        which a write by other means may fill with control characters."""
        ids = [shown(line.policy_id) for line in self.lines]
        width = max(map(len, ids), default=0)
        out = [
            f"{policy_id:<{width}}  {line.effect:<5}  "
            f"{'applies' if line.applies else 'skipped'}: {line.render_detail()}"
            for policy_id, line in zip(ids, self.lines, strict=True)
        ]
        if self.decision is not None:
            d = self.decision
            out.append(
                f"=> allowed by {shown(d.policy.id)}: scopes [{' '.join(d.scopes)}],"
                f" ttl {d.ttl_seconds} s"
            )
        elif self.error is not None:
            out.append(f"=> refused ({self.error.error}): {shown(self.error.reason)}")
        return "\n".join(out)


(
    _DISABLED, _EVIDENCE, _PRINCIPAL, _PRINCIPAL_ID, _AUDIENCE_STAGE, _INSTANCE, _WORKLOAD,
    _CONDITIONS, _INSTANCE_TAGS, _APPLIES,
) = range(10)  # fmt: skip


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
    now: float | None = None,
) -> Decision:
    """The decision for this exchange; raises InvalidTarget or InvalidScope. `now`
    (epoch seconds, default the clock) is the time time windows are judged at."""
    result = explain(
        policies,
        caller,
        audience,
        requested_scopes,
        instance,
        default_ttl=default_ttl,
        ttl_cap=ttl_cap,
        tag_lookup=tag_lookup,
        now=now,
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
    now: float | None = None,
) -> Explanation:
    """Assess every policy and reach the decision (docs/policies.md "Evaluation", 1-4)."""
    at = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    ordered = sorted(policies, key=lambda p: p.id)
    # Denies first, and never with instance tags (a deny has no instance conditions): a
    # denied caller is refused invalid_target before any tag lookup, whose failure (the
    # instance not running, EC2 throttling) would answer it otherwise, telling it that an
    # allow names it (docs/security.md "IMDS evidence").
    no_tags = _TagMemo(None)
    deny_lines = {
        index: _assess(p, caller, audience, instance, no_tags, at)
        for index, p in enumerate(ordered)
        if p.effect == "deny"
    }
    denied = any(line.applies for line in deny_lines.values())
    tags = _TagMemo(None, absent=_TAGS_WITHHELD) if denied else _TagMemo(tag_lookup)
    lines = tuple(
        deny_lines.get(index) or _assess(p, caller, audience, instance, tags, at)
        for index, p in enumerate(ordered)
    )
    by_line = list(zip(ordered, lines, strict=True))

    denies = [p for p, line in by_line if line.applies and p.effect == "deny"]
    if denies:
        reason = f"denied by policy {denies[0].id}"
        return Explanation(lines, None, _invalid_target(audience, reason))

    allows = [(p, line) for p, line in by_line if line.applies and p.effect == "allow"]
    if not allows:
        return Explanation(lines, None, _invalid_target(audience, _no_allow_reason(by_line)))
    # Most specific: longest literal prefix of the matching principal pattern; then an
    # exact name over a pattern; then id.
    chosen = min(allows, key=lambda pair: (-pair[1].specificity, not pair[1].exact, pair[0].id))[0]

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
    at: datetime,
) -> PolicyLine:
    def skipped(stage: int, detail: str, specificity: int = 0) -> PolicyLine:
        return PolicyLine(policy.id, policy.effect, False, detail, specificity, stage)

    if not policy.enabled:
        return skipped(_DISABLED, "disabled")
    if caller.evidence not in policy.evidence_kinds:
        return skipped(_EVIDENCE, f"does not accept {caller.evidence} evidence")
    matched = _principal_match(policy, caller)
    if matched is None:
        what = "the EKS workload" if caller.eks is not None else "the principal"
        return skipped(_PRINCIPAL, f"does not match {what}")
    label, pattern = matched
    specificity = literal_prefix_length(pattern)
    if policy.principal_ids:
        if caller.evidence != SIGV4:  # only STS's answer carries the unique id
            detail = f"has principal_ids, which {caller.evidence} evidence cannot show"
            return skipped(_PRINCIPAL_ID, detail, specificity)
        if caller.principal_id not in policy.principal_ids:
            # None at all is `tokex policy explain` without --principal-id: STS names one.
            detail = (
                "principal id differs (principal re-created?)"
                if caller.principal_id
                else "principal id not given"
            )
            return skipped(_PRINCIPAL_ID, detail, specificity)
    if not any(glob_matches(a, audience) for a in policy.audiences):
        return skipped(_AUDIENCE_STAGE, "does not cover the audience", specificity)
    if policy.instance is not None:
        why_not = _instance_mismatch(policy.instance, instance, caller)
        if why_not is not None:
            return skipped(_INSTANCE, why_not, specificity)
    workload = _workload_verdicts(policy.workload, caller.workload)
    conditions = _condition_verdicts(policy.conditions, caller.workload, at)

    def judged(applies: bool, detail: str, stage: int) -> PolicyLine:
        return PolicyLine(
            policy.id,
            policy.effect,
            applies,
            detail,
            specificity,
            stage,
            workload=tuple(verdict.text() for verdict in workload),
            conditions=tuple(verdict.text() for verdict in conditions),
            exact=not has_wildcard(pattern),
        )

    for stage, kind, verdicts in (
        (_WORKLOAD, "workload", workload),
        (_CONDITIONS, "condition", conditions),
    ):
        failed = next((v for v in verdicts if not v.holds), None)
        if failed is not None:
            detail = f"{kind} {failed.name} {'not met' if failed.signal else 'has no signal'}"
            return judged(False, detail, stage)
    # Last, once nothing else can rule the policy out: the one check that calls AWS.
    if policy.instance is not None and policy.instance.tags:
        assert instance is not None  # tags need evidence: _instance_mismatch saw it
        why_not = _tag_mismatch(policy.instance, instance, tags)
        if why_not is not None:
            return judged(False, why_not, _INSTANCE_TAGS)
    return judged(True, f"{label} {pattern!r} (literal prefix {specificity})", _APPLIES)


def _principal_match(policy: Policy, caller: CallerIdentity) -> tuple[str, str] | None:
    """("principal" or "eks", the most specific pattern that matched), or None. An EKS
    caller is matched by the `eks` selectors only, an IAM caller by `principals` only."""
    if caller.eks is not None:
        if policy.eks is None:
            return None
        pattern = _eks_match(policy.eks, caller.eks)
        return None if pattern is None else ("eks", pattern)
    # IAM names are unique whatever their case, and a user's whatever its path, so a deny
    # spelled in another case, or a user's without the path, can only mean this principal:
    # it must not fail open for a typo or for a user moved to another path. Allows stay
    # exact.
    if policy.effect == "deny":
        principal = caller.principal_arn.casefold()
        pathless = _without_user_path(principal)
        matching = [
            p
            for p in policy.principals
            if principal_matches(p.casefold(), principal)
            or (_without_user_path(p) == p and principal_matches(p.casefold(), pathless))
        ]
    else:
        matching = [p for p in policy.principals if principal_matches(p, caller.principal_arn)]
    if not matching:
        return None
    return "principal", max(matching, key=_specificity)


def _without_user_path(arn: str) -> str:
    """A user's ARN (or pattern) without its path: `user/ops/bob` is `user/bob`."""
    head, user, path_name = arn.partition(":user/")
    return head + user + path_name.rpartition("/")[2] if user else arn


def _eks_match(selectors: EksSelectors, workload: EksWorkload) -> str | None:
    """The matching `eks:<cluster>:<namespace>:<service account>` pattern with the
    longest literal prefix (the principal form of EksWorkload.principal), or None.

    Choosing the best of each part in turn is the best of the whole: the literal prefix
    runs into the next part only through a literal pattern of this one, and a literal
    pattern that matches equals the value, so no matching pattern's prefix is longer."""
    chosen = []
    for globs, value in (
        (selectors.clusters, f"{workload.account}:{workload.region}:{workload.cluster}"),
        (selectors.namespaces, workload.namespace),
        (selectors.service_accounts, workload.service_account),
    ):
        matching = [g for g in globs if _parts_match(g, value)]
        if not matching:
            return None
        # On a tie (`prod` and `prod*` for "prod") the literal one: only it lets the
        # literal prefix run on.
        chosen.append(max(matching, key=_specificity))
    return ":".join(("eks", *chosen))


def _specificity(pattern: str) -> tuple[int, bool]:
    """How specific a matching pattern is: its literal prefix, then whether it is exact
    (on a tie, `prod` over `prod*`: only the literal one lets an EKS prefix run on)."""
    return literal_prefix_length(pattern), not has_wildcard(pattern)


def _parts_match(pattern: str, value: str) -> bool:
    """Glob match part by part between `:` (a wildcard never crosses into the next)."""
    patterns, values = pattern.split(":"), value.split(":")
    return len(patterns) == len(values) and all(
        glob_matches(p, v) for p, v in zip(patterns, values, strict=True)
    )


@dataclass(frozen=True)
class _Verdict:
    name: str
    holds: bool
    signal: bool  # False: the evidence does not carry what it needs
    shown: str = ""  # the caller's value, when it does not hold

    def text(self) -> str:
        if self.holds:
            return f"{self.name} ok"
        return f"{self.name} no ({self.shown})" if self.signal else f"{self.name} no signal"


def _workload_verdicts(
    selectors: WorkloadSelectors | None, attributes: WorkloadAttributes | None
) -> list[_Verdict]:
    """One verdict per selector (per key of a tag map). Without an AWS OIF token there
    are no workload attributes at all: every selector is without a signal. So is a tag
    selector when the token carries no tags of its kind (the claim absent or empty, which
    the token's attributes do not tell apart), as `ou_paths` without paths."""
    if selectors is None:
        return []
    verdicts = []
    for name, wanted in selectors.selectors().items():
        if isinstance(wanted, dict):
            found = None if attributes is None else getattr(attributes, name)
            for key, globs in wanted.items():
                value = None if found is None else found.get(key)
                verdicts.append(_glob_verdict(f"{name}.{key}", globs, value, bool(found)))
        else:
            value = None if attributes is None else getattr(attributes, _WORKLOAD_FIELDS[name])
            verdicts.append(_glob_verdict(name, wanted, value, value is not None))
    return verdicts


def _condition_verdicts(
    conditions: Conditions | None, attributes: WorkloadAttributes | None, at: datetime
) -> list[_Verdict]:
    if conditions is None:
        return []
    verdicts = []
    if conditions.time_window is not None:
        window = conditions.time_window
        minute = at.hour * 60 + at.minute
        holds = (not window.days or DAYS[at.weekday()] in window.days) and (
            not window.hours or any(a <= minute < b for a, b in window.minute_ranges())
        )
        shown = f"{DAYS[at.weekday()]} {at:%H:%M} UTC"
        verdicts.append(_Verdict("time_window", holds, True, shown))
    if conditions.imds_v2:
        version = None if attributes is None else attributes.imds_version
        verdicts.append(
            _Verdict("imds_v2", version == "2.0", version is not None, _shown(version or ""))
        )
    for name in ("source_vpcs", "org_ids"):
        globs = getattr(conditions, name)
        if globs:
            value = None if attributes is None else getattr(attributes, _WORKLOAD_FIELDS[name])
            verdicts.append(_glob_verdict(name, globs, value, value is not None))
    if conditions.ou_paths:
        paths = () if attributes is None else attributes.ou_paths
        holds = any(glob_matches(g, path) for g in conditions.ou_paths for path in paths)
        shown = " ".join(_shown(path) for path in paths[:3]) + (" …" if len(paths) > 3 else "")
        verdicts.append(_Verdict("ou_paths", holds, bool(paths), shown))
    return verdicts


def _glob_verdict(name: str, globs: Iterable[str], value: str | None, signal: bool) -> _Verdict:
    """A selector over one value; with a signal, an absent value (a tag key the caller
    does not have) does not hold."""
    if value is None:
        return _Verdict(name, False, signal, "absent")
    return _Verdict(name, any(glob_matches(g, value) for g in globs), True, _shown(value))


def _shown(value: str) -> str:
    """A caller's value for an operator's eyes: plain, or quoted and cut short (tag values
    are free text, request tags the caller's own)."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    return repr(value[:_MAX_VALUE_SHOWN] + ("…" if len(value) > _MAX_VALUE_SHOWN else ""))


def _instance_mismatch(
    conditions: InstanceConditions,
    instance: InstanceIdentity | None,
    caller: CallerIdentity,
) -> str | None:
    """None when the conditions other than tags hold (the evidence, its binding, its
    attributes: nothing that calls AWS); otherwise the first one that does not."""
    if not conditions.needs_evidence:
        return None
    if caller.evidence != SIGV4:  # IMDS evidence comes only with a signed request
        return f"requires instance evidence, which {caller.evidence} evidence cannot bring"
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
    return None


def _tag_mismatch(
    conditions: InstanceConditions, instance: InstanceIdentity, tags: _TagMemo
) -> str | None:
    """None when the tag conditions hold; otherwise the first one that does not. Looks
    the tags up (once per evaluation): a lookup that fails raises, unchanged."""
    found = tags.get(instance)
    if found is None:
        return tags.absent
    for key, globs in conditions.tags.items():
        value = found.get(key)
        if value is None or not any(glob_matches(g, value) for g in globs):
            return f"instance tag {key!r} does not match"
    return None


_NO_TAG_LOOKUP = "has tag conditions but no tag lookup is configured"
_TAGS_WITHHELD = "has tag conditions, not looked up: a deny applies"


class _TagMemo:
    """At most one tag lookup (a DescribeInstances call) per evaluation, and only when a
    policy that otherwise applies has tag conditions (docs/performance.md "Hot path budget")."""

    def __init__(self, lookup: TagLookup | None, *, absent: str = _NO_TAG_LOOKUP) -> None:
        self._lookup = lookup
        self._tags: Mapping[str, str] | None = None
        self.absent = absent  # why an allow's tag conditions were not judged, without tags

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
