"""Hypothesis profiles and fixtures shared by every ring.

`suite` (loaded here, the default) keeps each property to a few hundred inputs: the whole
suite has to finish in minutes on two cores. `fuzz` is the same properties with 10,000
inputs each, for a deliberate fuzzing run:

    python -m benchmarks.fuzz                                   # counts per target
    pytest tests/unit/test_fuzz.py --hypothesis-profile fuzz    # pass/fail only

Hypothesis' pytest plugin applies `--hypothesis-profile` after this module is imported, so
the option overrides the default loaded here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.support.loopback import refusing_port

SUITE_PROFILE = "suite"
FUZZ_PROFILE = "fuzz"
FUZZ_EXAMPLES = 10_000

# No deadline: the suite runs beside other work on shared cores, where one slow input is
# the machine's doing, not the code's. Timing belongs in benchmarks/, never in a property.
settings.register_profile(
    SUITE_PROFILE,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    FUZZ_PROFILE, settings.get_profile(SUITE_PROFILE), max_examples=FUZZ_EXAMPLES
)
settings.load_profile(SUITE_PROFILE)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test (an upstream that is
    down), and that nothing else can bind meanwhile."""
    with refusing_port() as port:
        yield port


@pytest.fixture(autouse=True)
def no_discovery_kept_from_another_test() -> Iterator[None]:
    """Each test starts with no last good discovery document (a process's store,
    tokex.client.token_client): a loopback port reused by a later test would otherwise
    offer it the Regions of an earlier one."""
    yield
    client = sys.modules.get("tokex.client.token_client")
    if client is not None:
        client.LAST_GOOD_DISCOVERIES.clear()
