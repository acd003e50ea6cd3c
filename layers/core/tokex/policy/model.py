"""The policy document (docs/policies.md "The document"), validated when it is written.

`Policy.from_document` is the gate: every document that reaches evaluation went through it,
so evaluation never meets a malformed pattern or an oversized TTL. Each refusal names the
field (`principals[0]`, `instance.regions[1]`, `claims.sub`). A reserved claim name is
refused when a document is written; one read back from the table may still have it (stored
before its name was reserved): build_claims leaves it out of the token.

A selector that could never match the evidence a policy accepts (principals on an
EKS-only policy, workload attributes without `aws-oif`) is refused here, as a pathed role
pattern is: it would read as a condition and silently match nothing
(docs/policies.md "JWT evidence"). The selectors themselves are selectors.py; the field
rules both use are fields.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tokex import identifiers
from tokex.evidence.identity import AWS_OIF, EKS, SIGV4
from tokex.policy import fields
from tokex.policy.fields import PolicyValidationError
from tokex.policy.globs import GlobError, check_principal_pattern
from tokex.policy.selectors import DAYS, Conditions, EksSelectors, TimeWindow, WorkloadSelectors
from tokex.strict_json import json_depth
from tokex.tokens.claims import reserved_claim_reason

# The public names, the selectors' among them: evaluation, the adapters, the CLI and the
# tests import them from here, where they were before selectors.py and fields.py.
__all__ = [
    "DAYS", "DEFAULT_EVIDENCE", "IAM_EVIDENCE", "MAX_CLAIMS_BYTES", "MAX_DESCRIPTION_LENGTH",
    "MAX_TTL_CAP_SECONDS", "MIN_TTL_SECONDS", "Conditions", "Effect", "EksSelectors",
    "InstanceConditions", "Policy", "PolicyValidationError", "TimeWindow", "WorkloadSelectors",
    "canonical_json",
]  # fmt: skip

# The largest TTL cap a deployment may configure (settings.py). Documents read back from
# the table are validated against it, not against today's cap: lowering the cap must not
# make stored policies invalid (evaluation applies the cap to every TTL anyway).
MAX_TTL_CAP_SECONDS = 43200
MIN_TTL_SECONDS = 60
MAX_CLAIMS_BYTES = 2048
# Nesting of a claim's value: far above any real claim, far below what would exhaust the
# stack of whatever copies or parses the token's claims (2 KiB of `[` is 1,000 levels).
MAX_CLAIM_DEPTH = 16
# I-JSON (RFC 7493 §2.2): an integer beyond ±(2^53 - 1) is read differently by different
# readers (JavaScript's JSON.parse rounds 12345678901234567890 to 12345678901234567000,
# and reads 400 digits as Infinity).
MAX_SAFE_INTEGER = 2**53 - 1
MAX_DESCRIPTION_LENGTH = 1024

POLICY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
POLICY_ID_RULE = "must be 1-128 characters of A-Za-z0-9._:-"
# Instance attributes (region, AZ, AMI id, instance type, account) and their globs.
_ATTRIBUTE_GLOB = re.compile(r"[A-Za-z0-9._:/*?-]{1,128}")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_EVIDENCE_KIND = re.compile("|".join(re.escape(kind) for kind in identifiers.EVIDENCE_KINDS))
# The evidence a policy accepts when it names none: an EKS token only ever matches a
# policy that names "eks" (its principal is a service account, never an IAM principal).
DEFAULT_EVIDENCE = (SIGV4, AWS_OIF)
# The kinds whose caller is an IAM principal (matched by `principals`).
IAM_EVIDENCE = frozenset({SIGV4, AWS_OIF})

_INSTANCE_ATTRIBUTES = ("regions", "availability_zones", "image_ids", "instance_types", "accounts")
_INSTANCE_KEYS = frozenset({"required", "session_binding", "tags", *_INSTANCE_ATTRIBUTES})
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
        doc = fields.mapping(doc, path)
        fields.no_unknown_keys(doc, _INSTANCE_KEYS, path)
        required = fields.boolean(doc.get("required", False), f"{path}.required")
        session_binding = fields.boolean(
            doc.get("session_binding", False), f"{path}.session_binding"
        )
        # A condition that lists nothing is refused, not read as "any": a template that
        # renders an empty list must not drop the need for evidence.
        attributes = {
            name: fields.globs(doc[name], f"{path}.{name}", _ATTRIBUTE_GLOB, "a glob")
            for name in _INSTANCE_ATTRIBUTES
            if name in doc
        }
        tags = fields.tag_globs(doc["tags"], f"{path}.tags") if "tags" in doc else {}
        conditions = cls(
            required=required, session_binding=session_binding, tags=tags, **attributes
        )
        if not conditions.needs_evidence:
            # `instance` makes a policy apply only with instance evidence: a block that
            # asks for none would quietly be one that asks for nothing.
            raise PolicyValidationError(
                path,
                'names no condition: set "required": true to need instance evidence alone, '
                "or leave instance out to need none",
            )
        return conditions

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"required": self.required}
        if self.session_binding:
            doc["session_binding"] = True
        doc.update({k: list(v) for k, v in self.attribute_conditions().items() if v})
        if self.tags:
            doc["tags"] = {k: list(v) for k, v in self.tags.items()}
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
    def from_document(
        cls, doc: Mapping[str, Any], *, ttl_cap: int = 3600, stored: bool = False
    ) -> Policy:
        """Validate a submitted document, or with `stored` one read back from the table;
        raise PolicyValidationError on any flaw."""
        doc = fields.mapping(doc, "document")
        fields.no_unknown_keys(doc, _POLICY_KEYS, "document")
        for key, value in doc.items():
            if value is None:
                # Read below as "not given" (`"conditions": null` as no conditions), a
                # null that a template rendered would turn a conditioned allow into a
                # plain one, silently.
                raise PolicyValidationError(str(key), "must not be null: leave the key out")
        policy_id = fields.required(doc, "id")
        if not isinstance(policy_id, str) or not POLICY_ID.fullmatch(policy_id):
            raise PolicyValidationError("id", POLICY_ID_RULE)
        effect = fields.required(doc, "effect")
        if effect not in ("allow", "deny"):
            raise PolicyValidationError("effect", "must be 'allow' or 'deny'")
        description = doc.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LENGTH:
            raise PolicyValidationError(
                "description", f"must be a string of at most {MAX_DESCRIPTION_LENGTH} characters"
            )
        if not _is_unicode_text(description):
            raise PolicyValidationError("description", UNICODE_RULE)
        evidence = _evidence(doc.get("evidence"))
        kinds = DEFAULT_EVIDENCE if evidence is None else evidence
        if effect == "deny":
            _check_deny(doc, kinds)
        principals = _principals(doc, kinds)
        eks = None
        if EKS in kinds:
            eks = EksSelectors.from_document(
                fields.required(doc, "eks", message="is required when evidence includes eks")
            )
        elif doc.get("eks") is not None:
            raise PolicyValidationError("eks", "only for a policy whose evidence includes eks")
        audiences = fields.str_list(
            fields.required(doc, "audiences"),
            "audiences",
            identifiers.AUDIENCE_PATTERN,
            "1-256 of A-Za-z0-9._:/-*",
        )
        for name, values in (("principals", principals), ("audiences", audiences)):
            if not values and (name == "audiences" or IAM_EVIDENCE & set(kinds)):
                raise PolicyValidationError(name, "must not be empty")
        principal_ids = fields.str_list(
            doc.get("principal_ids", []),
            "principal_ids",
            identifiers.PRINCIPAL_ID,
            "1-128 A-Za-z0-9",
        )
        if effect == "allow" and "principal_ids" in doc and not principal_ids and not stored:
            # Meaning "any id", an empty list written as a pin that found no id (a role
            # deleted meanwhile) would let a re-created role in. Stored allows of earlier
            # versions have one: theirs still reads as "any id".
            raise PolicyValidationError(
                "principal_ids", "must not be empty: leave it out to allow any principal id"
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
            scopes=fields.str_list(
                doc.get("scopes", []),
                "scopes",
                identifiers.SCOPE_TOKEN,
                "an RFC 6749 §3.3 scope-token",
            ),
            max_ttl_seconds=_max_ttl(doc.get("max_ttl_seconds"), ttl_cap),
            instance=None if instance is None else InstanceConditions.from_document(instance),
            claims=_claims(doc.get("claims", {}), stored=stored),
            enabled=fields.boolean(doc.get("enabled", True), "enabled"),
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
            if self.principal_ids:
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
    kinds = fields.str_list(
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
    principals = fields.str_list(fields.required(doc, "principals"), "principals", None, "")
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


def _claims(value: object, *, stored: bool = False) -> dict[str, Any]:
    """Static extra claims: never a reserved name (docs/policies.md "The document"), JSON
    with no integer beyond I-JSON's range, at most 2 KiB.

    A stored document (`stored`) is read back with reserved names and unsafe integers as
    they are: refused, an allow an earlier version accepted would deny the callers it
    names after an upgrade that reserves a name (a document that may be a deny: 503 for
    everyone). build_claims leaves reserved names out of the token; such an integer is
    issued as before."""
    claims = fields.mapping(value, "claims")
    for name in claims:
        where = f"claims.{str(name)[:64]}"
        if not isinstance(name, str) or not _CLAIM_NAME.fullmatch(name):
            raise PolicyValidationError(where, "claim name must be 1-64 of A-Za-z0-9._:-")
        reserved = reserved_claim_reason(name)
        if reserved is not None and not stored:
            raise PolicyValidationError(where, f"reserved claim ({reserved})")
        try:
            text = json.dumps(claims[name], allow_nan=False, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            raise PolicyValidationError(where, "value must be plain JSON") from None
        if json_depth(claims[name]) > MAX_CLAIM_DEPTH:
            raise PolicyValidationError(where, f"at most {MAX_CLAIM_DEPTH} levels of nesting")
        if not _is_unicode_text(text):
            raise PolicyValidationError(where, UNICODE_RULE)
        if not stored and _has_unsafe_integer(claims[name]):
            raise PolicyValidationError(
                where,
                f"an integer beyond ±{MAX_SAFE_INTEGER} (2^53-1, RFC 7493 §2.2): readers "
                "disagree on its value (JavaScript rounds it); write it as a string",
            )
    encoded = canonical_json(dict(claims))
    if len(encoded.encode()) > MAX_CLAIMS_BYTES:
        raise PolicyValidationError(
            "claims",
            f"at most {MAX_CLAIMS_BYTES} bytes of JSON as the token carries them"
            " (a character outside ASCII counts as its 6-byte \\uXXXX escape)",
        )
    # A deep copy, detached from the caller's objects (tuples become lists, as in JSON).
    copied: dict[str, Any] = json.loads(encoded)
    return copied


def _has_unsafe_integer(value: object) -> bool:
    """An integer (not a boolean) beyond ±MAX_SAFE_INTEGER anywhere in a claim's value,
    whose nesting is already known to be at most MAX_CLAIM_DEPTH."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_SAFE_INTEGER
    if isinstance(value, Mapping):
        return any(_has_unsafe_integer(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_unsafe_integer(item) for item in value)
    return False


UNICODE_RULE = "must be Unicode text (no lone surrogates: UTF-8 cannot carry them)"


def _is_unicode_text(text: str) -> bool:
    """Encodable as UTF-8: JSON's `\\ud800` escape decodes to a lone surrogate, which a
    token's claims or a log line could then not be written with."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces: the stored form, and the form whose size is capped."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
