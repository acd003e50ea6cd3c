"""The JWT evidence selectors of a policy (docs/policies.md "JWT evidence"): which EKS
service accounts it names (`eks`), which AWS OIF workload attributes it requires
(`workload`) and which request conditions must hold (`conditions`).

Each is validated when its policy is (`Policy.from_document`, model.py), and each refusal
names the field (`eks.clusters[0]`, `conditions.time_window.hours[1]`). Which evidence
carries which selector is the policy's rule (model.py); how they are matched is
evaluate.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tokex import identifiers
from tokex.policy import fields
from tokex.policy.fields import PolicyValidationError
from tokex.policy.globs import has_wildcard

# The identifier rules of identifiers.py, with `*` and `?` added.
_REGION_GLOB = re.compile(r"[a-z0-9*?-]{1,32}")
_EKS_CLUSTER_GLOB = re.compile(r"[A-Za-z0-9_*?-]{1,100}")
_K8S_NAMESPACE_GLOB = re.compile(r"[a-z0-9*?-]{1,63}")
_K8S_NAME_GLOB = re.compile(r"[a-z0-9.*?-]{1,253}")
_ARN_GLOB = rf"arn:(?:{identifiers.PARTITION.pattern}):%s:[a-z0-9*?-]{{1,32}}:[0-9*?]{{1,12}}:"
_LAMBDA_ARN_GLOB = re.compile(_ARN_GLOB % "lambda" + r"function:[A-Za-z0-9_*?-]{1,64}")
_EC2_INSTANCE_ARN_GLOB = re.compile(_ARN_GLOB % "ec2" + r"instance/[a-z0-9*?-]{1,19}")
# STS SourceIdentity: 2-64 of [\w+=,.@-] (STS API reference, AssumeRole).
_SOURCE_IDENTITY_GLOB = re.compile(r"[A-Za-z0-9_+=,.@*?-]{1,64}")
_VPC_GLOB = re.compile(r"vpc-[0-9a-f*?]{1,17}")
_ORG_ID_GLOB = re.compile(r"o-[a-z0-9*?]{1,32}")
_OU_PATH_GLOB = re.compile(r"o-[a-z0-9/*?-]{1,254}")
# "HH:MM-HH:MM", UTC, end exclusive; 24:00 ends a window at midnight.
_HOURS = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
MINUTES_PER_DAY = 24 * 60

_EKS_KEYS = frozenset({"clusters", "namespaces", "service_accounts"})
# The keys of `workload` and `conditions`, in the order explanations list them.
WORKLOAD_SELECTORS = (
    "lambda_function_arns", "ec2_instance_arns", "principal_tags", "request_tags",
    "source_identities",
)  # fmt: skip
_WORKLOAD_TAGS = ("principal_tags", "request_tags")
# AWS documents no `session_tags` claim: a tagged session's tags are its `principal_tags`
# (IAM User Guide, "Understanding token claims"), so a selector over it could never hold.
_NO_SESSION_TAGS = (
    "AWS OIF tokens carry no session_tags claim: a session's tags are in principal_tags "
    "(aws:PrincipalTag)"
)
# All but time_window are matched against an AWS OIF token's attributes.
CONDITIONS = ("time_window", "imds_v2", "source_vpcs", "org_ids", "ou_paths")


@dataclass(frozen=True)
class EksSelectors:
    """Which EKS service accounts a policy names: every one of the three must match.
    `clusters` are `<account>:<region>:<cluster>` globs, the account literal."""

    clusters: tuple[str, ...]
    namespaces: tuple[str, ...]
    service_accounts: tuple[str, ...]

    @classmethod
    def from_document(cls, doc: object, path: str = "eks") -> EksSelectors:
        doc = fields.mapping(doc, path)
        fields.no_unknown_keys(doc, _EKS_KEYS, path)
        clusters = fields.globs(
            fields.required(doc, "clusters", path), f"{path}.clusters", None, ""
        )
        for index, cluster in enumerate(clusters):
            _check_cluster_pattern(cluster, f"{path}.clusters[{index}]")
        return cls(
            clusters=clusters,
            namespaces=fields.globs(
                fields.required(doc, "namespaces", path),
                f"{path}.namespaces",
                _K8S_NAMESPACE_GLOB,
                "a namespace glob (1-63 of a-z0-9- and * ?)",
            ),
            service_accounts=fields.globs(
                fields.required(doc, "service_accounts", path),
                f"{path}.service_accounts",
                _K8S_NAME_GLOB,
                "a service account glob (1-253 of a-z0-9.- and * ?)",
            ),
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "clusters": list(self.clusters),
            "namespaces": list(self.namespaces),
            "service_accounts": list(self.service_accounts),
        }


@dataclass(frozen=True)
class WorkloadSelectors:
    """AWS OIF workload attributes a policy requires (allow only); empty = not required.
    Tag maps: key -> value globs; the key must be present with a matching value."""

    lambda_function_arns: tuple[str, ...] = ()
    ec2_instance_arns: tuple[str, ...] = ()
    # IAM's aws:PrincipalTag: a tagged session's tags take precedence over its role's.
    principal_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Chosen by the caller when it asks for its token: they select, they prove nothing.
    request_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source_identities: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: object, path: str = "workload") -> WorkloadSelectors:
        doc = fields.mapping(doc, path)
        if "session_tags" in doc:
            raise PolicyValidationError(f"{path}.session_tags", _NO_SESSION_TAGS)
        fields.no_unknown_keys(doc, frozenset(WORKLOAD_SELECTORS), path)
        if not doc:
            raise PolicyValidationError(path, "must name at least one selector")
        found: dict[str, Any] = {
            name: fields.tag_globs(doc[name], f"{path}.{name}")
            for name in _WORKLOAD_TAGS
            if name in doc
        }
        for name, pattern, what in (
            ("lambda_function_arns", _LAMBDA_ARN_GLOB, "a Lambda function ARN glob"),
            ("ec2_instance_arns", _EC2_INSTANCE_ARN_GLOB, "an EC2 instance ARN glob"),
            ("source_identities", _SOURCE_IDENTITY_GLOB, "1-64 of A-Za-z0-9_+=,.@- and * ?"),
        ):
            if name in doc:
                found[name] = fields.globs(doc[name], f"{path}.{name}", pattern, what)
        return cls(**found)

    def selectors(self) -> dict[str, Any]:
        """The selectors set (name -> globs; for a tag map, key -> globs), in order."""
        named = {name: getattr(self, name) for name in WORKLOAD_SELECTORS}
        return {name: value for name, value in named.items() if value}

    def to_document(self) -> dict[str, Any]:
        return {
            name: {k: list(v) for k, v in value.items()} if isinstance(value, dict) else list(value)
            for name, value in self.selectors().items()
        }


@dataclass(frozen=True)
class TimeWindow:
    """UTC days and hours; each part given must hold. `hours` are "HH:MM-HH:MM"."""

    days: tuple[str, ...] = ()
    hours: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: object, path: str) -> TimeWindow:
        doc = fields.mapping(doc, path)
        fields.no_unknown_keys(doc, frozenset({"days", "hours"}), path)
        if not doc:
            raise PolicyValidationError(path, "must set days, hours or both")
        days = fields.globs(doc["days"], f"{path}.days", None, "") if "days" in doc else ()
        for index, day in enumerate(days):
            if day not in DAYS:
                raise PolicyValidationError(
                    f"{path}.days[{index}]", f"must be one of {' '.join(DAYS)}"
                )
        hours = fields.globs(doc["hours"], f"{path}.hours", None, "") if "hours" in doc else ()
        for index, window in enumerate(hours):
            _minutes(window, f"{path}.hours[{index}]")
        return cls(days=days, hours=hours)

    def minute_ranges(self) -> tuple[tuple[int, int], ...]:
        """Each of `hours` as [start, end) in minutes of the UTC day."""
        return tuple(_minutes(window, "hours") for window in self.hours)

    def to_document(self) -> dict[str, Any]:
        parts = {"days": self.days, "hours": self.hours}
        return {name: list(value) for name, value in parts.items() if value}


@dataclass(frozen=True)
class Conditions:
    """Request conditions (allow only): each one set must hold, and one that cannot be
    evaluated for a request (no signal) does not hold."""

    time_window: TimeWindow | None = None
    # The caller is an EC2 role session whose credentials came from IMDSv2.
    imds_v2: bool = False
    source_vpcs: tuple[str, ...] = ()
    org_ids: tuple[str, ...] = ()
    ou_paths: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: object, path: str = "conditions") -> Conditions:
        doc = fields.mapping(doc, path)
        fields.no_unknown_keys(doc, frozenset(CONDITIONS), path)
        if not doc:
            raise PolicyValidationError(path, "must name at least one condition")
        found: dict[str, Any] = {}
        if "time_window" in doc:
            found["time_window"] = TimeWindow.from_document(
                doc["time_window"], f"{path}.time_window"
            )
        if "imds_v2" in doc:
            if not fields.boolean(doc["imds_v2"], f"{path}.imds_v2"):
                raise PolicyValidationError(
                    f"{path}.imds_v2", "false is not a condition: leave the key out"
                )
            found["imds_v2"] = True
        for name, pattern, what in (
            ("source_vpcs", _VPC_GLOB, "a VPC id glob (vpc-…)"),
            ("org_ids", _ORG_ID_GLOB, "an organization id glob (o-…)"),
            ("ou_paths", _OU_PATH_GLOB, "an OU path glob (o-…/r-…/ou-…/)"),
        ):
            if name in doc:
                found[name] = fields.globs(doc[name], f"{path}.{name}", pattern, what)
        for index, ou_path in enumerate(found.get("ou_paths", ())):
            if not ou_path.endswith(("/", "*")):
                raise PolicyValidationError(
                    f"{path}.ou_paths[{index}]", "must end with / or * (OU paths end with /)"
                )
        return cls(**found)

    def oif_conditions(self) -> list[str]:
        """The conditions set that only an AWS OIF token's attributes can satisfy."""
        return [name for name in CONDITIONS[1:] if getattr(self, name)]

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.time_window is not None:
            doc["time_window"] = self.time_window.to_document()
        if self.imds_v2:
            doc["imds_v2"] = True
        for name in ("source_vpcs", "org_ids", "ou_paths"):
            if getattr(self, name):
                doc[name] = list(getattr(self, name))
        return doc


def _check_cluster_pattern(pattern: str, where: str) -> None:
    """`<account>:<region>:<cluster>`: the account literal (a policy always names its
    accounts, docs/policies.md "Globs"), region and cluster globs."""
    parts = pattern.split(":")
    if len(parts) != 3:
        raise PolicyValidationError(where, "must be ACCOUNT:REGION:CLUSTER")
    account, region, cluster = parts
    if has_wildcard(account) or not identifiers.is_account_id(account):
        raise PolicyValidationError(where, "account must be 12 digits, no wildcard")
    if not _REGION_GLOB.fullmatch(region):
        raise PolicyValidationError(where, "region must be a region glob (a-z0-9- and * ?)")
    if not _EKS_CLUSTER_GLOB.fullmatch(cluster):
        raise PolicyValidationError(
            where, "cluster must be a cluster name glob (A-Za-z0-9_- and * ?)"
        )


def _minutes(window: str, where: str) -> tuple[int, int]:
    """`HH:MM-HH:MM` -> [start, end) in minutes of the day; it may not wrap midnight."""
    found = _HOURS.fullmatch(window)
    if found is None:
        raise PolicyValidationError(where, "must be HH:MM-HH:MM (UTC, 00:00 to 24:00)")
    start_h, start_m, end_h, end_m = (int(part) for part in found.groups())
    start, end = start_h * 60 + start_m, end_h * 60 + end_m
    if end > MINUTES_PER_DAY:
        raise PolicyValidationError(where, "must end at 24:00 at the latest")
    if end <= start:
        raise PolicyValidationError(
            where, "must end after it starts: a window may not wrap midnight (split it in two)"
        )
    return start, end
