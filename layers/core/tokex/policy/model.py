"""The policy document (docs/policies.md "The document"), validated when it is written.

`Policy.from_document` is the gate: every document that reaches evaluation went through it,
so evaluation never meets a malformed pattern, a reserved claim or an oversized TTL. Each
refusal names the field (`principals[0]`, `instance.regions[1]`, `claims.sub`).

A selector that could never match the evidence a policy accepts (principals on an
EKS-only policy, workload attributes without `aws-oif`) is refused here, as a pathed role
pattern is: it would read as a condition and silently match nothing
(docs/policies.md "JWT evidence").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tokex import identifiers
from tokex.evidence.identity import AWS_OIF, EKS, SIGV4
from tokex.policy.globs import GlobError, check_principal_pattern, has_wildcard
from tokex.tokens.claims import RESERVED_CLAIMS

# The largest TTL cap a deployment may configure (settings.py). Documents read back from
# the table are validated against it, not against today's cap: lowering the cap must not
# make stored policies invalid (evaluation applies the cap to every TTL anyway).
MAX_TTL_CAP_SECONDS = 43200
MIN_TTL_SECONDS = 60
MAX_CLAIMS_BYTES = 2048
MAX_DESCRIPTION_LENGTH = 1024
MAX_LIST_ITEMS = 100

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Instance attributes (region, AZ, AMI id, instance type, account) and their globs.
_ATTRIBUTE_GLOB = re.compile(r"[A-Za-z0-9._:/*?-]{1,128}")
# EC2 tag keys/values: letters, digits, spaces and + - = . _ : / @ (values may be empty).
_TAG_KEY = re.compile(r"[A-Za-z0-9 +=._:/@-]{1,128}")
_TAG_VALUE_GLOB = re.compile(r"[A-Za-z0-9 +=._:/@*?-]{0,256}")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# JWT evidence selectors: the identifier rules of identifiers.py, with `*` and `?` added.
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

_EVIDENCE_KIND = re.compile("|".join(re.escape(kind) for kind in identifiers.EVIDENCE_KINDS))
# The evidence a policy accepts when it names none: an EKS token only ever matches a
# policy that names "eks" (its principal is a service account, never an IAM principal).
DEFAULT_EVIDENCE = (SIGV4, AWS_OIF)
# The kinds whose caller is an IAM principal (matched by `principals`).
IAM_EVIDENCE = frozenset({SIGV4, AWS_OIF})

_INSTANCE_ATTRIBUTES = ("regions", "availability_zones", "image_ids", "instance_types", "accounts")
_INSTANCE_KEYS = frozenset({"required", "session_binding", "tags", *_INSTANCE_ATTRIBUTES})
_EKS_KEYS = frozenset({"clusters", "namespaces", "service_accounts"})
# The keys of `workload` and `conditions`, in the order explanations list them.
WORKLOAD_SELECTORS = (
    "lambda_function_arns", "ec2_instance_arns", "principal_tags", "session_tags",
    "request_tags", "source_identities",
)  # fmt: skip
_WORKLOAD_TAGS = ("principal_tags", "session_tags", "request_tags")
# All but time_window are matched against an AWS OIF token's attributes.
CONDITIONS = ("time_window", "imds_v2", "source_vpcs", "org_ids", "ou_paths")
_POLICY_KEYS = frozenset(
    {
        "id", "description", "effect", "evidence", "principals", "principal_ids", "eks",
        "audiences", "scopes", "max_ttl_seconds", "instance", "workload", "conditions",
        "claims", "enabled",
    }
)  # fmt: skip
# Keys that only make sense on an allow (see _check_deny).
_ALLOW_ONLY_KEYS = (
    "scopes", "max_ttl_seconds", "claims", "principal_ids", "instance", "workload", "conditions",
)  # fmt: skip

Effect = Literal["allow", "deny"]


class PolicyValidationError(ValueError):
    """A policy document was refused; `field` says where, `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class InstanceConditions:
    """IMDS evidence conditions. Empty tuples mean "any"; `tags` maps key -> value globs."""

    required: bool = False
    regions: tuple[str, ...] = ()
    availability_zones: tuple[str, ...] = ()
    image_ids: tuple[str, ...] = ()
    instance_types: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
    tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The caller must be the instance-profile role session of the very instance whose
    # document it sent (session name = instanceId), not just any identity of the account.
    session_binding: bool = False

    @property
    def needs_evidence(self) -> bool:
        """`required`, or any condition at all, needs bound IMDS evidence to match."""
        return (
            self.required
            or self.session_binding
            or bool(self.tags)
            or any(self.attribute_conditions().values())
        )

    def attribute_conditions(self) -> dict[str, tuple[str, ...]]:
        return {name: getattr(self, name) for name in _INSTANCE_ATTRIBUTES}

    @classmethod
    def from_document(cls, doc: object, path: str = "instance") -> InstanceConditions:
        doc = _mapping(doc, path)
        _no_unknown_keys(doc, _INSTANCE_KEYS, path)
        required = _bool(doc.get("required", False), f"{path}.required")
        session_binding = _bool(doc.get("session_binding", False), f"{path}.session_binding")
        attributes = {
            name: _str_list(doc.get(name, []), f"{path}.{name}", _ATTRIBUTE_GLOB, "a glob")
            for name in _INSTANCE_ATTRIBUTES
        }
        tags: dict[str, tuple[str, ...]] = {}
        for key, values in _mapping(doc.get("tags", {}), f"{path}.tags").items():
            where = f"{path}.tags.{str(key)[:128]}"
            if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
                raise PolicyValidationError(where, "tag key must be 1-128 tag characters")
            tags[key] = _str_list(values, where, _TAG_VALUE_GLOB, "a tag value glob")
            if not tags[key]:
                raise PolicyValidationError(where, "must list at least one value glob")
        return cls(required=required, session_binding=session_binding, tags=tags, **attributes)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"required": self.required}
        if self.session_binding:
            doc["session_binding"] = True
        doc.update({k: list(v) for k, v in self.attribute_conditions().items() if v})
        if self.tags:
            doc["tags"] = {k: list(v) for k, v in self.tags.items()}
        return doc


@dataclass(frozen=True)
class EksSelectors:
    """Which EKS service accounts a policy names: every one of the three must match.
    `clusters` are `<account>:<region>:<cluster>` globs, the account literal."""

    clusters: tuple[str, ...]
    namespaces: tuple[str, ...]
    service_accounts: tuple[str, ...]

    @classmethod
    def from_document(cls, doc: object, path: str = "eks") -> EksSelectors:
        doc = _mapping(doc, path)
        _no_unknown_keys(doc, _EKS_KEYS, path)
        clusters = _globs(_required(doc, "clusters", path), f"{path}.clusters", None, "")
        for index, cluster in enumerate(clusters):
            _check_cluster_pattern(cluster, f"{path}.clusters[{index}]")
        return cls(
            clusters=clusters,
            namespaces=_globs(
                _required(doc, "namespaces", path),
                f"{path}.namespaces",
                _K8S_NAMESPACE_GLOB,
                "a namespace glob (1-63 of a-z0-9- and * ?)",
            ),
            service_accounts=_globs(
                _required(doc, "service_accounts", path),
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
    principal_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    session_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Chosen by the caller when it asks for its token: they select, they prove nothing.
    request_tags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source_identities: tuple[str, ...] = ()

    @classmethod
    def from_document(cls, doc: object, path: str = "workload") -> WorkloadSelectors:
        doc = _mapping(doc, path)
        _no_unknown_keys(doc, frozenset(WORKLOAD_SELECTORS), path)
        if not doc:
            raise PolicyValidationError(path, "must name at least one selector")
        found: dict[str, Any] = {
            name: _tag_globs(doc[name], f"{path}.{name}") for name in _WORKLOAD_TAGS if name in doc
        }
        for name, pattern, what in (
            ("lambda_function_arns", _LAMBDA_ARN_GLOB, "a Lambda function ARN glob"),
            ("ec2_instance_arns", _EC2_INSTANCE_ARN_GLOB, "an EC2 instance ARN glob"),
            ("source_identities", _SOURCE_IDENTITY_GLOB, "1-64 of A-Za-z0-9_+=,.@- and * ?"),
        ):
            if name in doc:
                found[name] = _globs(doc[name], f"{path}.{name}", pattern, what)
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
        doc = _mapping(doc, path)
        _no_unknown_keys(doc, frozenset({"days", "hours"}), path)
        if not doc:
            raise PolicyValidationError(path, "must set days, hours or both")
        days = _globs(doc["days"], f"{path}.days", None, "") if "days" in doc else ()
        for index, day in enumerate(days):
            if day not in DAYS:
                raise PolicyValidationError(
                    f"{path}.days[{index}]", f"must be one of {' '.join(DAYS)}"
                )
        hours = _globs(doc["hours"], f"{path}.hours", None, "") if "hours" in doc else ()
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
        doc = _mapping(doc, path)
        _no_unknown_keys(doc, frozenset(CONDITIONS), path)
        if not doc:
            raise PolicyValidationError(path, "must name at least one condition")
        found: dict[str, Any] = {}
        if "time_window" in doc:
            found["time_window"] = TimeWindow.from_document(
                doc["time_window"], f"{path}.time_window"
            )
        if "imds_v2" in doc:
            if not _bool(doc["imds_v2"], f"{path}.imds_v2"):
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
                found[name] = _globs(doc[name], f"{path}.{name}", pattern, what)
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


@dataclass(frozen=True)
class Policy:
    id: str
    description: str
    effect: Effect
    principals: tuple[str, ...]
    principal_ids: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    max_ttl_seconds: int | None = None
    instance: InstanceConditions | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    # None: the document names none, and DEFAULT_EVIDENCE applies (`evidence_kinds`).
    evidence: tuple[str, ...] | None = None
    eks: EksSelectors | None = None
    workload: WorkloadSelectors | None = None
    conditions: Conditions | None = None

    @property
    def evidence_kinds(self) -> tuple[str, ...]:
        """The kinds of evidence whose callers this policy may apply to."""
        return DEFAULT_EVIDENCE if self.evidence is None else self.evidence

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], *, ttl_cap: int = 3600) -> Policy:
        """Validate a stored/submitted document; raise PolicyValidationError on any flaw."""
        doc = _mapping(doc, "document")
        _no_unknown_keys(doc, _POLICY_KEYS, "document")
        policy_id = _required(doc, "id")
        if not isinstance(policy_id, str) or not _ID.fullmatch(policy_id):
            raise PolicyValidationError("id", "must be 1-128 characters of A-Za-z0-9._:-")
        effect = _required(doc, "effect")
        if effect not in ("allow", "deny"):
            raise PolicyValidationError("effect", "must be 'allow' or 'deny'")
        description = doc.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
            raise PolicyValidationError(
                "description", f"must be a string of at most {MAX_DESCRIPTION_LENGTH} characters"
            )
        evidence = _evidence(doc.get("evidence"))
        kinds = DEFAULT_EVIDENCE if evidence is None else evidence
        if effect == "deny":
            _check_deny(doc, kinds)
        principals = _principals(doc, kinds)
        eks = None
        if EKS in kinds:
            eks = EksSelectors.from_document(
                _required(doc, "eks", message="is required when evidence includes eks")
            )
        elif doc.get("eks") is not None:
            raise PolicyValidationError("eks", "only for a policy whose evidence includes eks")
        audiences = _str_list(
            _required(doc, "audiences"),
            "audiences",
            identifiers.AUDIENCE_PATTERN,
            "1-256 of A-Za-z0-9._:/-*",
        )
        for name, values in (("principals", principals), ("audiences", audiences)):
            if not values and (name == "audiences" or IAM_EVIDENCE & set(kinds)):
                raise PolicyValidationError(name, "must not be empty")
        principal_ids = _str_list(
            doc.get("principal_ids", []),
            "principal_ids",
            identifiers.PRINCIPAL_ID,
            "1-128 A-Za-z0-9",
        )
        instance = doc.get("instance")
        workload = doc.get("workload")
        conditions = doc.get("conditions")
        policy = cls(
            id=policy_id,
            description=description,
            effect=effect,
            principals=principals,
            principal_ids=principal_ids,
            audiences=audiences,
            scopes=_str_list(
                doc.get("scopes", []),
                "scopes",
                identifiers.SCOPE_TOKEN,
                "an RFC 6749 §3.3 scope-token",
            ),
            max_ttl_seconds=_max_ttl(doc.get("max_ttl_seconds"), ttl_cap),
            instance=None if instance is None else InstanceConditions.from_document(instance),
            claims=_claims(doc.get("claims", {})),
            enabled=_bool(doc.get("enabled", True), "enabled"),
            evidence=evidence,
            eks=eks,
            workload=None if workload is None else WorkloadSelectors.from_document(workload),
            conditions=None if conditions is None else Conditions.from_document(conditions),
        )
        _check_signals(policy)
        return policy

    def to_document(self) -> dict[str, Any]:
        """The stored form; `from_document(p.to_document()) == p`. Keys a document did not
        set are left out, so a document written before they existed reads back as it was."""
        doc: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "effect": self.effect,
        }
        if self.evidence is not None:
            doc["evidence"] = list(self.evidence)
        if self.principals or self.eks is None:
            doc["principals"] = list(self.principals)
        if self.eks is not None:
            doc["eks"] = self.eks.to_document()
        doc.update(audiences=list(self.audiences), enabled=self.enabled)
        if self.effect == "allow":
            doc["principal_ids"] = list(self.principal_ids)
            doc["scopes"] = list(self.scopes)
            doc["claims"] = json.loads(json.dumps(self.claims))
            if self.max_ttl_seconds is not None:
                doc["max_ttl_seconds"] = self.max_ttl_seconds
            if self.instance is not None:
                doc["instance"] = self.instance.to_document()
            if self.workload is not None:
                doc["workload"] = self.workload.to_document()
            if self.conditions is not None:
                doc["conditions"] = self.conditions.to_document()
        return doc


def _evidence(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    kinds = _str_list(
        value, "evidence", _EVIDENCE_KIND, f"one of {', '.join(identifiers.EVIDENCE_KINDS)}"
    )
    if not kinds:
        raise PolicyValidationError("evidence", "must not be empty")
    return kinds


def _principals(doc: Mapping[str, Any], kinds: tuple[str, ...]) -> tuple[str, ...]:
    """IAM principal patterns: required when the policy accepts an IAM caller, refused
    when it accepts only EKS callers (no EKS principal is an IAM ARN)."""
    if not IAM_EVIDENCE & set(kinds):
        if doc.get("principals") not in (None, []):
            raise PolicyValidationError(
                "principals", "not allowed when evidence is only eks: name the workload in eks"
            )
        return ()
    principals = _str_list(_required(doc, "principals"), "principals", None, "")
    for index, pattern in enumerate(principals):
        try:
            check_principal_pattern(pattern)
        except GlobError as exc:
            raise PolicyValidationError(f"principals[{index}]", str(exc)) from None
    return principals


def _check_signals(policy: Policy) -> None:
    """Refuse a selector no accepted kind of evidence carries: it could never hold."""
    kinds = policy.evidence_kinds
    if SIGV4 not in kinds:
        if policy.principal_ids:
            raise PolicyValidationError(
                "principal_ids", "only sigv4 evidence carries principal ids: add sigv4 to evidence"
            )
        if policy.instance is not None:
            raise PolicyValidationError(
                "instance", "only sigv4 evidence comes with IMDS evidence: add sigv4 to evidence"
            )
    if AWS_OIF not in kinds:
        if policy.workload is not None:
            raise PolicyValidationError(
                "workload", "only aws-oif evidence carries workload attributes: add aws-oif"
            )
        for name in policy.conditions.oif_conditions() if policy.conditions else []:
            raise PolicyValidationError(
                f"conditions.{name}", "only aws-oif evidence carries it: add aws-oif to evidence"
            )


def _check_deny(doc: Mapping[str, Any], kinds: tuple[str, ...]) -> None:
    """A deny matches on evidence kind, principal (ARN or EKS workload) and audience only.

    Scopes, TTL and claims are what an allow grants. Instance conditions would make a deny
    apply only when the caller *sends* IMDS evidence — a caller escapes it by leaving the
    evidence out. principal_ids would let a deleted and re-created role escape it.
    Workload selectors and conditions would make it apply only to callers that carry their
    signal: a caller escapes by choosing evidence without it (a SigV4 request carries no
    workload attributes). A deny naming one of sigv4 and aws-oif but not the other is
    escaped by the other: both prove the same IAM principal. All are refused rather than
    honoured in a way that is weaker than it reads.
    """
    for key in _ALLOW_ONLY_KEYS:
        if doc.get(key) not in (None, [], {}):
            raise PolicyValidationError(key, "not allowed on a deny policy")
    if len(IAM_EVIDENCE & set(kinds)) == 1:
        raise PolicyValidationError(
            "evidence",
            "a deny that names sigv4 or aws-oif must name both: the same IAM principal "
            "would escape it with the other",
        )


def _required(
    doc: Mapping[str, Any], key: str, where: str = "", *, message: str = "is required"
) -> Any:
    if key not in doc:
        raise PolicyValidationError(f"{where}.{key}" if where else key, message)
    return doc[key]


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyValidationError(where, "must be an object")
    return value


def _no_unknown_keys(doc: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in doc:
        if key not in known:
            name = str(key)[:64]
            raise PolicyValidationError(
                name if where == "document" else f"{where}.{name}", "unknown key"
            )


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyValidationError(where, "must be true or false")
    return value


def _str_list(
    value: object, where: str, pattern: re.Pattern[str] | None, what: str
) -> tuple[str, ...]:
    """A JSON array of distinct strings, each matching `pattern` (when given)."""
    if not isinstance(value, list | tuple):
        raise PolicyValidationError(where, "must be a list of strings")
    if len(value) > MAX_LIST_ITEMS:
        raise PolicyValidationError(where, f"at most {MAX_LIST_ITEMS} entries")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PolicyValidationError(f"{where}[{index}]", "must be a string")
        if pattern is not None and not pattern.fullmatch(item):
            raise PolicyValidationError(f"{where}[{index}]", f"must be {what}")
    if len(set(value)) != len(value):
        raise PolicyValidationError(where, "duplicate entries")
    return tuple(value)


def _globs(
    value: object, where: str, pattern: re.Pattern[str] | None, what: str
) -> tuple[str, ...]:
    """A `_str_list` that is not empty: a selector that lists nothing is left out."""
    globs = _str_list(value, where, pattern, what)
    if not globs:
        raise PolicyValidationError(where, "must not be empty")
    return globs


def _tag_globs(value: object, where: str) -> dict[str, tuple[str, ...]]:
    """`{"key": ["value glob", …]}`, not empty; keys and values as for instance tags."""
    tags: dict[str, tuple[str, ...]] = {}
    for key, values in _mapping(value, where).items():
        at = f"{where}.{str(key)[:128]}"
        if not isinstance(key, str) or not _TAG_KEY.fullmatch(key):
            raise PolicyValidationError(at, "tag key must be 1-128 tag characters")
        tags[key] = _str_list(values, at, _TAG_VALUE_GLOB, "a tag value glob")
        if not tags[key]:
            raise PolicyValidationError(at, "must list at least one value glob")
    if not tags:
        raise PolicyValidationError(where, "must not be empty")
    return tags


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


def _max_ttl(value: object, ttl_cap: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyValidationError("max_ttl_seconds", "must be an integer number of seconds")
    if not MIN_TTL_SECONDS <= value <= ttl_cap:
        raise PolicyValidationError(
            "max_ttl_seconds", f"must be between {MIN_TTL_SECONDS} and {ttl_cap}"
        )
    return value


def _claims(value: object) -> dict[str, Any]:
    """Static extra claims: never a reserved name (docs/policies.md "The document"), JSON,
    at most 2 KiB."""
    claims = _mapping(value, "claims")
    for name in claims:
        where = f"claims.{str(name)[:64]}"
        if not isinstance(name, str) or not _CLAIM_NAME.fullmatch(name):
            raise PolicyValidationError(where, "claim name must be 1-64 of A-Za-z0-9._:-")
        if name in RESERVED_CLAIMS:
            raise PolicyValidationError(where, "reserved claim: tokex sets it itself")
        try:
            json.dumps(claims[name], allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            raise PolicyValidationError(where, "value must be plain JSON") from None
    encoded = canonical_json(dict(claims))
    if len(encoded.encode()) > MAX_CLAIMS_BYTES:
        raise PolicyValidationError("claims", f"at most {MAX_CLAIMS_BYTES} bytes of JSON")
    # A deep copy, detached from the caller's objects (tuples become lists, as in JSON).
    copied: dict[str, Any] = json.loads(encoded)
    return copied


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces: the stored form, and the form whose size is capped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
