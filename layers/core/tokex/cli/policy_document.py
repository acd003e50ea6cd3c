"""A policy document file as `tokex policy` reads it, with every error it has.

`Policy.from_document` (policy/model.py) is the only judge of a document, and it stops at
the first flaw. To report them all, each part of the document (a key, a list item, a claim,
an instance condition, a tag) is judged on its own, set into a valid stand-in document, by
that same function: every error listed is the model's verdict on the author's own value.
The stand-in takes the author's effect and evidence, which decide what the other keys may
be (`principals` on an EKS-only policy, `workload` on a deny, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tokex import identifiers
from tokex.cli.errors import INVALID_POLICY, CommandError
from tokex.cli.inputs import read_text
from tokex.policy.model import IAM_EVIDENCE, Policy, PolicyValidationError
from tokex.strict_json import StrictJsonError, loads_strict

# DynamoDB's item size limit: no valid policy document is larger.
MAX_DOCUMENT_FILE_BYTES = 400 * 1024
# Parts nested deeper than this are judged whole: no valid document goes deeper (claims
# stop at 16 levels), and each level costs stack frames (a file may nest ~990 levels).
MAX_PART_DEPTH = 24
# A valid document that each part of the author's is set into, one part at a time.
_STAND_IN = {
    "id": "stand-in",
    "principals": ["arn:aws:iam::123456789012:role/stand-in"],
    "audiences": ["stand-in"],
}
_STAND_IN_EKS = {
    "clusters": ["123456789012:us-east-1:stand-in"],
    "namespaces": ["stand-in"],
    "service_accounts": ["stand-in"],
}
# Objects whose keys are required: each key of the author's is judged among stand-ins.
_FILLERS: dict[str, Mapping[str, Any]] = {"eks": _STAND_IN_EKS}
# Judged as a whole: whether one kind may be listed depends on the others.
_WHOLE = frozenset({"evidence"})
_REQUIRED = ("id", "effect", "principals", "eks", "audiences")

Placed = Callable[[Any], Any]  # a part -> the whole document to judge


def load_policy_file(path: str, *, ttl_cap: int) -> Policy:
    """Read and validate one policy document; a CommandError (exit 1) lists every error."""
    text = read_text(path, label="policy document", limit=MAX_DOCUMENT_FILE_BYTES)
    try:
        document = loads_strict(text)
    except StrictJsonError as exc:
        raise invalid_policy(path, [PolicyValidationError("document", str(exc))]) from None
    try:
        return Policy.from_document(document, ttl_cap=ttl_cap)
    except PolicyValidationError as first:
        raise invalid_policy(path, document_errors(document, ttl_cap=ttl_cap) or [first]) from None


def invalid_policy(path: str, errors: list[PolicyValidationError]) -> CommandError:
    lines = [f"{error.field}: {error.message}" for error in errors]
    text = lines[0] if len(lines) == 1 else f"{len(lines)} errors:\n  " + "\n  ".join(lines)
    listed = [{"field": error.field, "message": error.message} for error in errors]
    details = {"valid": False, "errors": listed, **listed[0]}  # field, message: the first
    return CommandError(
        f"invalid policy {path}: {text}", error=INVALID_POLICY, input=path, details=details
    )


def document_errors(document: object, *, ttl_cap: int) -> list[PolicyValidationError]:
    """Every error of `document`, in document order (empty when it is valid)."""
    first = _judge(document, ttl_cap)
    if first is None or not isinstance(document, Mapping):
        return [] if first is None else [first]
    base = _base(document, ttl_cap)
    found: list[PolicyValidationError] = []
    for key in _REQUIRED:
        if key not in document:  # the model's own "is required"
            missing = _judge({k: v for k, v in base.items() if k != key}, ttl_cap)
            found += [missing] if missing else []

    def in_base(part: Any) -> Any:
        return {**base, **part}

    for key, value in document.items():
        found += _errors(str(key), value, _under_key(in_base, key), ttl_cap)
    unique = {(error.field, error.message): error for error in found}
    return list(unique.values()) or [first]


def _base(document: Mapping[str, Any], ttl_cap: int) -> dict[str, Any]:
    """The stand-in with the author's effect and, when it can hold them, the kinds of
    evidence the author lists (a typo or a repeat left out)."""
    effect = document.get("effect")
    base = {**_STAND_IN, "effect": effect if effect in ("allow", "deny") else "allow"}
    evidence = document.get("evidence")
    if not isinstance(evidence, list):
        return base
    kinds = [k for k in identifiers.EVIDENCE_KINDS if k in evidence]
    fitted: dict[str, Any] = {**base, "evidence": kinds}
    if "eks" in kinds:
        fitted["eks"] = _STAND_IN_EKS
    if not IAM_EVIDENCE & set(kinds):
        del fitted["principals"]
    return fitted if _judge(fitted, ttl_cap) is None else base


def _errors(
    path: str, value: Any, place: Placed, ttl_cap: int, depth: int = 1
) -> list[PolicyValidationError]:
    """The errors of `value` (the model names it `path`) in the document `place` makes."""
    whole = _judge(place(value), ttl_cap)
    if whole is None:
        return []
    entries: list[tuple[str, Any, Placed]]
    filler = _FILLERS.get(path, {})
    if path in _WHOLE or depth >= MAX_PART_DEPTH:
        return [whole]
    if isinstance(value, list):
        entries = [(f"{path}[{i}]", item, _in_list(place)) for i, item in enumerate(value)]
    elif isinstance(value, Mapping) and not path.startswith("claims."):  # a claim's value
        # is judged whole
        entries = [
            (f"{path}.{key}", item, _under_key(place, key, filler)) for key, item in value.items()
        ]
    else:
        return [whole]
    found: list[PolicyValidationError] = []
    for key in filler:
        if key not in value:  # the model's own "is required"
            missing = _judge(place({k: v for k, v in filler.items() if k != key}), ttl_cap)
            found += [missing] if missing else []
    faulty: set[int] = set()
    for position, (entry_path, item, placed) in enumerate(entries):
        # A list item is judged as the only item: the model names it `path[0]`.
        errors = [
            _renamed(e, f"{path}[0]", entry_path)
            for e in _errors(entry_path, item, placed, ttl_cap, depth + 1)
        ]
        found += errors
        if errors:
            faulty.add(position)
    if not found:
        return [whole]  # only the whole is wrong: duplicates, too many entries, total size
    if len(faulty) < len(entries):  # and the entries without errors, together?
        kept = [entry for position, entry in enumerate(_items(value)) if position not in faulty]
        rest = _judge(place(kept if isinstance(value, list) else {**filler, **dict(kept)}), ttl_cap)
        found += [rest] if rest else []
    return found


def _in_list(place: Placed) -> Placed:
    return lambda part: place([part])


def _under_key(place: Placed, key: Any, filler: Mapping[str, Any] | None = None) -> Placed:
    return lambda part: place({**(filler or {}), key: part})


def _items(value: list[Any] | Mapping[str, Any]) -> list[Any]:
    return list(value) if isinstance(value, list) else list(value.items())


def _renamed(error: PolicyValidationError, old: str, new: str) -> PolicyValidationError:
    if error.field == old or error.field.startswith((f"{old}.", f"{old}[")):
        return PolicyValidationError(new + error.field[len(old) :], error.message)
    return error


def _judge(document: object, ttl_cap: int) -> PolicyValidationError | None:
    try:
        Policy.from_document(document, ttl_cap=ttl_cap)  # type: ignore[arg-type]
    except PolicyValidationError as error:
        return error
    return None
