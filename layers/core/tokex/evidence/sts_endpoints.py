"""The STS endpoints a signed request may name, as an exact host table.

docs/security.md "The signed STS request": the host must be exactly one of the STS
endpoints of the configured partitions. Lookup is a dictionary hit on the whole host
string, never a suffix, prefix or pattern match, so `sts.amazonaws.com.attacker.example`,
`xsts.amazonaws.com`, a trailing dot, an upper-case host or an IP literal can never match.

Hostnames follow botocore's endpoint data and the "AWS STS Regions and endpoints" table
(https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials_temp_region-endpoints.html).
A region AWS adds later is refused until it is added here: the safe default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokex import identifiers
from tokex.errors import ConfigurationError

if TYPE_CHECKING:
    from tokex.settings import Settings

# The error codes STS answers an account it throttles (HTTP 400 `Throttling`, "Rate
# exceeded"): retry rather than re-sign; another Region's STS may still answer. One list for
# the exchange's forwarded call (adapters/sts.py) and the client's own (client/evidence.py).
THROTTLING_CODES = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded"})

AWS_REGIONS = (
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
)
AWS_CN_REGIONS = ("cn-north-1", "cn-northwest-1")
AWS_US_GOV_REGIONS = ("us-gov-east-1", "us-gov-west-1")

# One list per partition of identifiers.PARTITIONS (tests/unit/test_identifiers.py).
PARTITION_REGIONS: dict[str, tuple[str, ...]] = {
    "aws": AWS_REGIONS,
    "aws-cn": AWS_CN_REGIONS,
    "aws-us-gov": AWS_US_GOV_REGIONS,
}
PARTITION_DNS_SUFFIX = identifiers.PARTITION_DNS_SUFFIX
_PARTITION_OF_KNOWN_REGION = {r: p for p, regions in PARTITION_REGIONS.items() for r in regions}
# Regions with an `sts-fips.<region>` host (AWS FIPS endpoints page). In GovCloud the
# plain regional host is itself the FIPS endpoint (botocore's STS rule set resolves FIPS
# there to `sts.<region>`); `sts-fips.us-gov-*` is accepted as well, as the issue asks.
FIPS_REGIONS = frozenset(
    {
        "us-east-1",
        "us-east-2",
        "us-west-1",
        "us-west-2",
        "ca-central-1",
        "ca-west-1",
        "us-gov-east-1",
        "us-gov-west-1",
    }
)
# The legacy global endpoint exists in the aws partition only; SigV4 scopes it to
# us-east-1 (botocore endpoints.json, `aws-global` credentialScope).
GLOBAL_HOST = "sts.amazonaws.com"
GLOBAL_REGION = "us-east-1"
# The dual-stack (IPv4 and IPv6) endpoints' suffix of each partition (botocore
# endpoints.json `dualStackDnsSuffix`): `sts.<region>.api.aws`, not accepted.
DUALSTACK_DNS_SUFFIX = {
    "api.aws": "amazonaws.com",
    "api.amazonwebservices.com.cn": "amazonaws.com.cn",
}
# Longer than any Region name (none has 20 characters): a refusal quotes a Region the
# host names only within this bound.
_MAX_QUOTED_REGION_CHARS = 32
# The shapes of the STS hosts of a Region this table lacks, for refusal() to say why:
# `sts[-fips].<label>.<suffix>` of the partitions' suffixes, regular or dual-stack. The
# label is a DNS label; only one that is a Region name (identifiers.REGION) is quoted.
_STS_HOST_SHAPE = re.compile(
    r"(sts|sts-fips)\.([a-z0-9-]{1,63})\.("
    + "|".join(
        re.escape(suffix)
        for suffix in sorted({*PARTITION_DNS_SUFFIX.values(), *DUALSTACK_DNS_SUFFIX})
    )
    + ")"
)
_UNKNOWN_HOST = "url host is not an STS endpoint this deployment accepts"


@dataclass(frozen=True)
class Endpoint:
    """One accepted STS host and the region/partition a request to it must be signed for."""

    host: str
    region: str
    partition: str


class StsEndpoints:
    """The exact set of STS hosts this deployment forwards to."""

    def __init__(
        self,
        partitions: Iterable[str],
        regions: Iterable[str] = (),
        *,
        allow_fips: bool = True,
    ) -> None:
        partitions = tuple(partitions)
        regions = frozenset(regions)
        for partition in partitions:
            if partition not in PARTITION_REGIONS:
                raise ConfigurationError(f"unknown STS partition {partition!r}")
        malformed = sorted(region for region in regions if not identifiers.is_region(region))
        if malformed:
            raise ConfigurationError(f"not region names: {malformed}")
        known = {r for p in partitions for r in PARTITION_REGIONS[p]}
        # A typo in the allowlist would silently refuse every caller of that region.
        unknown = sorted(regions - known)
        if unknown:
            raise ConfigurationError(f"unknown STS region(s) for the partitions: {unknown}")

        table: dict[str, Endpoint] = {}
        elsewhere: dict[str, Endpoint] = {}  # known STS hosts of Regions not accepted
        for partition in PARTITION_REGIONS:  # those not served: known hosts, all elsewhere
            suffix = PARTITION_DNS_SUFFIX[partition]
            for region in PARTITION_REGIONS[partition]:
                accepted = partition in partitions and (not regions or region in regions)
                into = table if accepted else elsewhere
                _add(into, f"sts.{region}.{suffix}", region, partition)
                if allow_fips and region in FIPS_REGIONS:
                    _add(into, f"sts-fips.{region}.{suffix}", region, partition)
            if partition == "aws":
                accepted = partition in partitions and (not regions or GLOBAL_REGION in regions)
                _add(table if accepted else elsewhere, GLOBAL_HOST, GLOBAL_REGION, partition)
        if not table:
            raise ConfigurationError("no STS endpoint is allowed by the configuration")
        self._by_host = table
        self._elsewhere = elsewhere
        self._partitions = partitions
        self._accepted = sorted(regions)
        self._allow_fips = allow_fips

    @classmethod
    def from_settings(cls, settings: Settings) -> StsEndpoints:
        return cls(settings.partitions, settings.regions, allow_fips=settings.allow_fips)

    def lookup(self, host: str) -> Endpoint | None:
        """The endpoint for exactly this host, or None. No normalisation of any kind."""
        return self._by_host.get(host)

    def refusal(self, host: str) -> str:
        """Why `host` (which `lookup` did not find) is refused: a Region's STS this
        deployment (or this Region's exchange) does not accept is named, with the Regions
        it does; one of a partition it does not serve (a workload with no Region configured
        signs for us-east-1) with the partitions it does and what to set. A host of an STS
        shape the table lacks says why: a dual-stack endpoint, a FIPS one with FIPS turned
        off (TOKEX_STS_ALLOW_FIPS) or of a Region without one, a Region this version does
        not know, a Region part that is no Region name; any other host is not an STS
        endpoint it accepts. Nothing the request says is echoed but a Region name that
        matched the strict pattern (identifiers.REGION, at most 32 characters)."""
        other = self._elsewhere.get(host)
        if other is None:
            return self._shape_refusal(host)
        if other.partition not in self._partitions:
            served = " or ".join(self._partitions)
            return (
                f"the request is signed for the STS of {other.region} (partition"
                f" {other.partition}); this deployment accepts the STS of {served}: sign for"
                f" {self._sign_for()} (set AWS_REGION)"
            )
        return (
            f"the request is signed for the STS of {other.region}, which this endpoint does "
            f"not accept: sign for {', '.join(self._accepted)}"
        )

    def _sign_for(self) -> str:
        """The Regions to sign for, in words."""
        return ", ".join(self._accepted) or f"a Region of {' or '.join(self._partitions)}"

    def _shape_refusal(self, host: str) -> str:
        shape = _STS_HOST_SHAPE.fullmatch(host)
        if shape is None:
            return _UNKNOWN_HOST  # as any host that is no STS endpoint's shape
        prefix, region, suffix = shape.groups()
        if suffix in DUALSTACK_DNS_SUFFIX:
            return (
                f"url host is a dual-stack STS endpoint ({suffix}), which tokex does not"
                f" accept: sign for sts.<region>.{DUALSTACK_DNS_SUFFIX[suffix]}"
            )
        if len(region) > _MAX_QUOTED_REGION_CHARS or not identifiers.is_region(region):
            return f"{_UNKNOWN_HOST}: its Region part is not an AWS Region name (such as us-east-1)"
        partition = _PARTITION_OF_KNOWN_REGION.get(region)
        known = partition is not None
        if partition is not None and PARTITION_DNS_SUFFIX[partition] != suffix:
            return _UNKNOWN_HOST  # a known Region under another partition's suffix
        regular = f"sts.{region}.{suffix}"
        if prefix == "sts-fips" and (not self._allow_fips or known):
            why = (
                "FIPS endpoints are turned off in this deployment (TOKEX_STS_ALLOW_FIPS)"
                if not self._allow_fips
                else f"{region} has no FIPS STS endpoint this tokex version knows"
            )
            if regular in self._by_host:  # a host of the table, not the request's
                return f"{why}: sign for {regular}"
            return f"{why}; {self.refusal(regular)}"
        return (
            f"the request is signed for the STS of {region}, a Region this tokex version"
            f" does not know: sign for {self._sign_for()}"
        )

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._by_host)


def _add(table: dict[str, Endpoint], host: str, region: str, partition: str) -> None:
    table[host] = Endpoint(host=host, region=region, partition=partition)
