"""tokex.strict_json: JSON that two parsers cannot read differently, nested no deeper than
the caller allows, whatever Python's own parser would take."""

from __future__ import annotations

import json

import pytest

from tokex.strict_json import MAX_TOKEN_JSON_DEPTH, StrictJsonError, loads_strict


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": 1, "a": 2}', 'repeats the key "a"'),
        ('{"a": NaN}', "non-standard JSON constant NaN"),
        ("[1,", "not valid JSON"),
    ],
)
def test_what_parsers_disagree_on_is_refused(text: str, why: str) -> None:
    with pytest.raises(StrictJsonError, match=why):
        loads_strict(text)


@pytest.mark.parametrize("levels", [MAX_TOKEN_JSON_DEPTH + 1, 100, 900])
def test_a_nesting_limit_holds_below_any_python_parsers_own(levels: int) -> None:
    """Python 3.11 refuses about 1,000 levels, 3.13 (Lambda's runtime) parses thousands:
    the limit must be tokex's, so that a token is refused alike on every runtime."""
    text = "[" * levels + "]" * levels
    assert json.loads(text) is not None  # the parser takes it
    with pytest.raises(StrictJsonError, match=f"nested deeper than {MAX_TOKEN_JSON_DEPTH}"):
        loads_strict(text, max_depth=MAX_TOKEN_JSON_DEPTH)
    assert loads_strict(text) == json.loads(text)  # no limit asked for: none added


def test_the_limit_counts_arrays_and_objects_alike_and_allows_its_own_depth() -> None:
    exactly = '{"a":' * (MAX_TOKEN_JSON_DEPTH - 1) + "[1]" + "}" * (MAX_TOKEN_JSON_DEPTH - 1)
    assert loads_strict(exactly, max_depth=MAX_TOKEN_JSON_DEPTH) is not None
    deeper = '{"a":' * MAX_TOKEN_JSON_DEPTH + "[1]" + "}" * MAX_TOKEN_JSON_DEPTH
    with pytest.raises(StrictJsonError):
        loads_strict(deeper, max_depth=MAX_TOKEN_JSON_DEPTH)
    # Scalars and strings that look like brackets are no nesting.
    wide = json.dumps({"k": ["[[[[" * 50] * 50, "n": 1})
    assert loads_strict(wide, max_depth=2)["n"] == 1


def test_a_policy_claims_deepest_value_fits_in_a_token() -> None:
    """docs/policies.md: claims nest at most 16 levels; in a payload that is 17."""
    payload = json.dumps({"claim": json.loads("[" * 16 + "]" * 16)})
    assert loads_strict(payload, max_depth=MAX_TOKEN_JSON_DEPTH)["claim"] is not None
