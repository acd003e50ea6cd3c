"""The policy document (docs/policies.md "The document"), validated when it is written.

`Policy.from_document` is the gate: every document that reaches evaluation went through it,
so evaluation never meets a malformed pattern, a reserved claim or an oversized TTL. Each
refusal names the field (`principals[0]`, `instance.regions[1]`, `claims.sub`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tokex import identifiers
from tokex.policy.globs import GlobError, check_principal_pattern
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

_INSTANCE_ATTRIBUTES = ("regions", "availability_zones", "image_ids", "instance_types", "accounts")
_INSTANCE_KEYS = frozenset({"required", "session_binding", "tags", *_INSTANCE_ATTRIBUTES})
_POLICY_KEYS = frozenset(
    {
        "id", "description", "effect", "principals", "principal_ids", "audiences", "scopes",
        "max_ttl_seconds", "instance", "claims", "enabled",
    }
)  # fmt: skip
# Keys that only make sense on an allow (see _check_deny).
_ALLOW_ONLY_KEYS = ("scopes", "max_ttl_seconds", "claims", "principal_ids", "instance")

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
        if effect == "deny":
            _check_deny(doc)
        principals = _str_list(_required(doc, "principals"), "principals", None, "")
        for index, pattern in enumerate(principals):
            try:
                check_principal_pattern(pattern)
            except GlobError as exc:
                raise PolicyValidationError(f"principals[{index}]", str(exc)) from None
        audiences = _str_list(
            _required(doc, "audiences"),
            "audiences",
            identifiers.AUDIENCE_PATTERN,
            "1-256 of A-Za-z0-9._:/-*",
        )
        for name, values in (("principals", principals), ("audiences", audiences)):
            if not values:
                raise PolicyValidationError(name, "must not be empty")
        instance = doc.get("instance")
        return cls(
            id=policy_id,
            description=description,
            effect=effect,
            principals=principals,
            principal_ids=_str_list(
                doc.get("principal_ids", []),
                "principal_ids",
                identifiers.PRINCIPAL_ID,
                "1-128 A-Za-z0-9",
            ),
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
        )

    def to_document(self) -> dict[str, Any]:
        """The stored form; `from_document(p.to_document()) == p`."""
        doc: dict[str, Any] = {
            "id": self.id,
            "description": self.description,
            "effect": self.effect,
            "principals": list(self.principals),
            "audiences": list(self.audiences),
            "enabled": self.enabled,
        }
        if self.effect == "allow":
            doc["principal_ids"] = list(self.principal_ids)
            doc["scopes"] = list(self.scopes)
            doc["claims"] = json.loads(json.dumps(self.claims))
            if self.max_ttl_seconds is not None:
                doc["max_ttl_seconds"] = self.max_ttl_seconds
            if self.instance is not None:
                doc["instance"] = self.instance.to_document()
        return doc


def _check_deny(doc: Mapping[str, Any]) -> None:
    """A deny matches on principal ARN and audience only.

    Scopes, TTL and claims are what an allow grants. Instance conditions would make a deny
    apply only when the caller *sends* IMDS evidence — a caller escapes it by leaving the
    evidence out. principal_ids would let a deleted and re-created role escape it. Both
    are refused rather than honoured in a way that is weaker than it reads.
    """
    for key in _ALLOW_ONLY_KEYS:
        if doc.get(key) not in (None, [], {}):
            raise PolicyValidationError(key, "not allowed on a deny policy")


def _required(doc: Mapping[str, Any], key: str) -> Any:
    if key not in doc:
        raise PolicyValidationError(key, "is required")
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
