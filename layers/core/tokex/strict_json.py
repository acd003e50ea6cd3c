"""JSON parsing that refuses what parsers disagree on.

Python's `json` keeps the last of repeated keys and accepts `NaN`/`Infinity`; other parsers
keep the first key or refuse. For evidence, policies and tokens we refuse both, so that no
two readers of one document can see different values.
"""

from __future__ import annotations

import json
from typing import Any

# How deep a JWT's header or payload may nest (tokex's own tokens and the JWTs it takes as
# evidence): AWS's and Kubernetes' claims nest three levels, tokex's own at most 17 (a
# policy's claims nest 16, docs/policies.md).
MAX_TOKEN_JSON_DEPTH = 32


class StrictJsonError(ValueError):
    """Not JSON, or JSON with a repeated key or a non-standard constant."""


class NestedTooDeep(StrictJsonError):
    """Arrays and objects nested deeper than `max_depth`, however deep the parser went."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"nested deeper than {max_depth} levels")
        self.max_depth = max_depth


class DuplicateKeyError(StrictJsonError):
    def __init__(self, key: str) -> None:
        # The key is caller data: quote it, and only a short prefix of it.
        super().__init__(f"repeats the key {json.dumps(key[:64])}")
        self.key = key


def loads_strict(text: str | bytes, *, max_depth: int | None = None) -> Any:
    """`json.loads` without repeated keys or NaN/Infinity; every failure a StrictJsonError.

    `max_depth`: arrays and objects nested deeper than this are refused. Without it the
    only limit is the parser's own, which is no rule: Python 3.11 refuses about 1,000
    levels, 3.12 about 1,500, while 3.13 (Lambda's runtime) parses thousands: past the
    parser's limit, too, the refusal is NestedTooDeep, so every runtime gives one reason."""
    try:
        value = json.loads(text, object_pairs_hook=_refuse_repeated, parse_constant=_refuse)
    except StrictJsonError:
        raise
    except json.JSONDecodeError as err:
        raise StrictJsonError(
            f"not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:  # nested past the parser's own limit
        if max_depth is not None:
            raise NestedTooDeep(max_depth) from None
        raise StrictJsonError("not valid JSON") from None
    except ValueError:  # UnicodeDecodeError
        raise StrictJsonError("not valid JSON") from None
    if max_depth is not None and json_depth(value) > max_depth:
        raise NestedTooDeep(max_depth)
    return value


def json_depth(value: object) -> int:
    """How deeply a JSON value nests (a scalar: 0, `[]`: 1), counted without recursion, so
    that no depth the parser took can overflow the stack here."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
            deepest = max(deepest, depth + 1)
    return deepest


def _refuse_repeated(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse(name: str) -> Any:
    raise StrictJsonError(f"non-standard JSON constant {name}")
