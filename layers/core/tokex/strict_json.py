"""JSON parsing that refuses what parsers disagree on.

Python's `json` keeps the last of repeated keys and accepts `NaN`/`Infinity`; other parsers
keep the first key or refuse. For evidence, policies and tokens we refuse both, so that no
two readers of one document can see different values.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJsonError(ValueError):
    """Not JSON, or JSON with a repeated key or a non-standard constant."""


class DuplicateKeyError(StrictJsonError):
    def __init__(self, key: str) -> None:
        # The key is caller data: quote it, and only a short prefix of it.
        super().__init__(f"repeats the key {json.dumps(key[:64])}")
        self.key = key


def loads_strict(text: str | bytes) -> Any:
    """`json.loads` without repeated keys or NaN/Infinity; every failure a StrictJsonError."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_repeated, parse_constant=_refuse)
    except StrictJsonError:
        raise
    except json.JSONDecodeError as err:
        raise StrictJsonError(
            f"not valid JSON ({err.msg}, line {err.lineno} column {err.colno})"
        ) from None
    except (ValueError, RecursionError):  # UnicodeDecodeError; nesting too deep
        raise StrictJsonError("not valid JSON") from None


def _refuse_repeated(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _refuse(name: str) -> Any:
    raise StrictJsonError(f"non-standard JSON constant {name}")
