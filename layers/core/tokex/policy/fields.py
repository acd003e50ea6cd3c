"""The field rules of a policy document, shared by the policy (model.py) and its JWT
evidence selectors (selectors.py).

Each rule reads one field and refuses it with a `PolicyValidationError` that names where
it is (`principals[0]`, `workload.principal_tags.team`) and says why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_LIST_ITEMS = 100

# EC2 tag keys/values: letters, digits, spaces and + - = . _ : / @ (values may be empty).
TAG_KEY = re.compile(r"[A-Za-z0-9 +=._:/@-]{1,128}")
TAG_VALUE_GLOB = re.compile(r"[A-Za-z0-9 +=._:/@*?-]{0,256}")


class PolicyValidationError(ValueError):
    """A policy document was refused; `field` says where, `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        # For a stored document: what the exchange makes of it (adapters/policy_table.py).
        self.consequence: str | None = None


def required(
    doc: Mapping[str, Any], key: str, where: str = "", *, message: str = "is required"
) -> Any:
    if key not in doc:
        raise PolicyValidationError(f"{where}.{key}" if where else key, message)
    return doc[key]


def mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyValidationError(where, "must be an object")
    return value


def no_unknown_keys(doc: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in doc:
        if key not in known:
            name = str(key)[:64]
            raise PolicyValidationError(
                name if where == "document" else f"{where}.{name}", "unknown key"
            )


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyValidationError(where, "must be true or false")
    return value


def str_list(
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


def globs(value: object, where: str, pattern: re.Pattern[str] | None, what: str) -> tuple[str, ...]:
    """A `str_list` that is not empty: a selector that lists nothing is left out."""
    listed = str_list(value, where, pattern, what)
    if not listed:
        raise PolicyValidationError(where, "must not be empty")
    return listed


def tag_globs(value: object, where: str) -> dict[str, tuple[str, ...]]:
    """`{"key": ["value glob", …]}`, not empty; keys and values as for instance tags."""
    tags: dict[str, tuple[str, ...]] = {}
    for key, values in mapping(value, where).items():
        at = f"{where}.{str(key)[:128]}"
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise PolicyValidationError(at, "tag key must be 1-128 tag characters")
        tags[key] = str_list(values, at, TAG_VALUE_GLOB, "a tag value glob")
        if not tags[key]:
            raise PolicyValidationError(at, "must list at least one value glob")
    if not tags:
        raise PolicyValidationError(where, "must not be empty")
    return tags
