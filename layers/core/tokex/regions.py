"""The Regional endpoints of a multi-Region deployment (docs/multi-region.md).

One issuer, N Regions: `{iss}/token` and `{iss}/introspect` are the home Region's, and
each Region is also reachable at `{iss}/regions/<region>/token` and `.../introspect`,
listed in the discovery document as `tokex_regions` (home first, then in the
deployment's order: the order clients fail over in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokex import identifiers

# Where a workload's Region is configured, in the AWS CLI's order, before the profile's
# `region` (the client's preferred Region, the command line's --region default).
REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")
# A Regional exchange or introspect function names its Region here (settings.py).
SERVING_REGION_ENV = "TOKEX_SERVING_REGION"
REGIONS_PREFIX = "/regions/"
TOKEN_PATH = "/token"
INTROSPECT_PATH = "/introspect"
# The discovery document's member (RFC 8414 §2 allows additional members).
DISCOVERY_MEMBER = "tokex_regions"


def regional_path(region: str, path: str) -> str:
    """`/regions/<region><path>`, e.g. `/regions/eu-west-1/token`."""
    if not identifiers.is_region(region):
        raise ValueError(f"{region!r} is not a region name")
    return f"{REGIONS_PREFIX}{region}{path}"


def regional_endpoints(issuer: str, regions: Sequence[str]) -> list[dict[str, Any]]:
    """The discovery document's `tokex_regions`: one entry per Region, in order."""
    if len(set(regions)) != len(regions):
        raise ValueError(f"a Region is listed twice: {list(regions)}")
    return [
        {
            "region": region,
            "token_endpoint": issuer + regional_path(region, TOKEN_PATH),
            "introspection_endpoint": issuer + regional_path(region, INTROSPECT_PATH),
        }
        for region in regions
    ]
