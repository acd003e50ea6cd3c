"""The exact STS host table (docs/security.md "Known attacks", group 1, the host part)."""

from __future__ import annotations

import botocore.loaders
import pytest

from tokex.errors import ConfigurationError
from tokex.evidence.sts_endpoints import (
    AWS_CN_REGIONS,
    AWS_REGIONS,
    AWS_US_GOV_REGIONS,
    Endpoint,
    StsEndpoints,
)
from tokex.settings import Settings

ALL = StsEndpoints(["aws", "aws-cn", "aws-us-gov"])


def test_every_commercial_region_has_its_regional_host() -> None:
    for region in AWS_REGIONS:
        assert ALL.lookup(f"sts.{region}.amazonaws.com") == Endpoint(
            f"sts.{region}.amazonaws.com", region, "aws"
        )


def test_global_host_is_aws_partition_and_scoped_to_us_east_1() -> None:
    assert ALL.lookup("sts.amazonaws.com") == Endpoint("sts.amazonaws.com", "us-east-1", "aws")
    assert StsEndpoints(["aws-cn", "aws-us-gov"]).lookup("sts.amazonaws.com") is None


def test_china_and_govcloud_hosts() -> None:
    for region in AWS_CN_REGIONS:
        host = f"sts.{region}.amazonaws.com.cn"
        assert ALL.lookup(host) == Endpoint(host, region, "aws-cn")
        assert ALL.lookup(f"sts.{region}.amazonaws.com") is None
    for region in AWS_US_GOV_REGIONS:
        host = f"sts.{region}.amazonaws.com"
        assert ALL.lookup(host) == Endpoint(host, region, "aws-us-gov")


def test_partitions_not_configured_are_refused() -> None:
    aws_only = StsEndpoints(["aws"])
    assert aws_only.lookup("sts.cn-north-1.amazonaws.com.cn") is None
    assert aws_only.lookup("sts.us-gov-west-1.amazonaws.com") is None
    assert aws_only.lookup("sts.eu-west-1.amazonaws.com") is not None


@pytest.mark.parametrize(
    "region",
    ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "ca-west-1"],
)
def test_fips_hosts_only_when_allowed(region: str) -> None:
    host = f"sts-fips.{region}.amazonaws.com"
    assert ALL.lookup(host) == Endpoint(host, region, "aws")
    assert StsEndpoints(["aws"], allow_fips=False).lookup(host) is None


def test_fips_hosts_for_govcloud_and_none_elsewhere() -> None:
    assert ALL.lookup("sts-fips.us-gov-west-1.amazonaws.com") == Endpoint(
        "sts-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", "aws-us-gov"
    )
    assert ALL.lookup("sts-fips.eu-west-1.amazonaws.com") is None
    assert ALL.lookup("sts-fips.cn-north-1.amazonaws.com.cn") is None


def test_region_allowlist() -> None:
    endpoints = StsEndpoints(["aws"], ["eu-west-1", "us-west-2"])
    assert endpoints.hosts == {
        "sts.eu-west-1.amazonaws.com",
        "sts.us-west-2.amazonaws.com",
        "sts-fips.us-west-2.amazonaws.com",
    }
    # The global host signs for us-east-1, so it follows that region's allowlisting.
    assert StsEndpoints(["aws"], ["us-east-1"]).lookup("sts.amazonaws.com") is not None


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",
        "sts.amazonaws.com.attacker.example",
        "xsts.amazonaws.com",
        "sts.amazonaws.com.",
        "sts.us-east-1.amazonaws.com.",
        "STS.amazonaws.com",
        "sts.US-EAST-1.amazonaws.com",
        "sts.amazonaws.com:443",
        "sts.us-east-1.amazonaws.com:443",
        "user@sts.amazonaws.com",
        "sts%2eamazonaws.com",
        "sts.amazonaws.com%00",
        " sts.amazonaws.com",
        "sts-fips.amazonaws.com",
        "sts.api.aws",
        "sts.eusc-de-east-1.amazonaws.eu",  # a partition tokex does not know
        "sts.cn-north-1.amazonaws.com",  # a known Region under another partition's suffix
        "sts.us-east-1.amazonaws.com.cn",
        "sts.us-east-1.amazonaws.com.attacker.example",
        "sts-fips.us-east-1.api.aws.attacker.example",
        "52.94.0.1",
        "[::1]",
        "",
    ],
)
def test_near_misses_are_not_endpoints(host: str) -> None:
    assert ALL.lookup(host) is None
    assert ALL.refusal(host) == "url host is not an STS endpoint this deployment accepts"
    assert StsEndpoints(["aws"], ["eu-west-1"]).refusal(host) == ALL.refusal(host)


def test_a_refused_regions_sts_is_named_with_the_regions_accepted() -> None:
    """What an old client signing for its own Region hears from a Regional exchange."""
    endpoints = StsEndpoints(["aws"], ["eu-west-1", "us-west-2"])
    for host, region in [
        ("sts.us-east-1.amazonaws.com", "us-east-1"),
        ("sts.amazonaws.com", "us-east-1"),  # the global host signs for us-east-1
        ("sts-fips.us-east-2.amazonaws.com", "us-east-2"),
    ]:
        assert endpoints.lookup(host) is None
        assert endpoints.refusal(host) == (
            f"the request is signed for the STS of {region}, which this endpoint does not "
            "accept: sign for eu-west-1, us-west-2"
        )


@pytest.mark.parametrize(
    ("endpoints", "host", "said"),
    [
        (
            StsEndpoints(["aws-cn"]),
            "sts.us-east-1.amazonaws.com",
            "the request is signed for the STS of us-east-1 (partition aws); this deployment"
            " accepts the STS of aws-cn: sign for a Region of aws-cn (set AWS_REGION)",
        ),
        (
            StsEndpoints(["aws-cn", "aws-us-gov"]),
            "sts.amazonaws.com",  # the global host signs for us-east-1
            "the request is signed for the STS of us-east-1 (partition aws); this deployment"
            " accepts the STS of aws-cn or aws-us-gov: sign for a Region of aws-cn or"
            " aws-us-gov (set AWS_REGION)",
        ),
        (
            StsEndpoints(["aws-us-gov"], ["us-gov-west-1"]),
            "sts-fips.us-east-2.amazonaws.com",
            "the request is signed for the STS of us-east-2 (partition aws); this deployment"
            " accepts the STS of aws-us-gov: sign for us-gov-west-1 (set AWS_REGION)",
        ),
        (
            StsEndpoints(["aws"]),
            "sts.cn-north-1.amazonaws.com.cn",
            "the request is signed for the STS of cn-north-1 (partition aws-cn); this"
            " deployment accepts the STS of aws: sign for a Region of aws (set AWS_REGION)",
        ),
    ],
)
def test_the_sts_of_a_partition_not_served_is_named_with_the_partitions_served(
    endpoints, host, said
) -> None:
    """What a workload with no Region configured (an EC2 instance, an EKS pod: signed for
    us-east-1) hears from a deployment that serves aws-cn or aws-us-gov only: not that its
    host is no STS endpoint."""
    assert endpoints.lookup(host) is None
    assert endpoints.refusal(host) == said


def test_a_partition_not_served_names_only_hosts_of_the_table() -> None:
    """Nothing the request says is echoed: a look-alike of another partition's host is no
    STS endpoint."""
    cn_only = StsEndpoints(["aws-cn"])
    for host in ("sts.us-east-1.amazonaws.com.", "x.amazonaws.com", "sts.us-east-1.amazonaws.co"):
        assert cn_only.refusal(host) == "url host is not an STS endpoint this deployment accepts"


# --- hosts of an STS shape the table lacks: refused saying why (docs/contract.md "The
# signed request"), quoting only a Region name that matched the strict pattern.


@pytest.mark.parametrize(
    ("endpoints", "host", "said"),
    [
        # A Region AWS has (or may add) that this version's table lacks.
        (
            ALL,
            "sts.me-west-1.amazonaws.com",
            "the request is signed for the STS of me-west-1, a Region this tokex version"
            " does not know: sign for a Region of aws or aws-cn or aws-us-gov",
        ),
        (
            StsEndpoints(["aws"], ["eu-west-1", "us-west-2"]),
            "sts.us-east-9.amazonaws.com",
            "the request is signed for the STS of us-east-9, a Region this tokex version"
            " does not know: sign for eu-west-1, us-west-2",
        ),
        (
            StsEndpoints(["aws"]),
            "sts-fips.me-west-1.amazonaws.com",
            "the request is signed for the STS of me-west-1, a Region this tokex version"
            " does not know: sign for a Region of aws",
        ),
        (
            StsEndpoints(["aws-cn"]),
            "sts.cn-south-1.amazonaws.com.cn",
            "the request is signed for the STS of cn-south-1, a Region this tokex version"
            " does not know: sign for a Region of aws-cn",
        ),
        # A mistyped Region: not quoted.
        (
            ALL,
            "sts.us-east-1a.amazonaws.com",
            "url host is not an STS endpoint this deployment accepts: its Region part is not"
            " an AWS Region name (such as us-east-1)",
        ),
        (
            ALL,
            "sts.useast1.amazonaws.com",
            "url host is not an STS endpoint this deployment accepts: its Region part is not"
            " an AWS Region name (such as us-east-1)",
        ),
        (
            ALL,
            "sts." + "ab-" * 10 + "east-1.amazonaws.com",  # a Region's shape, but 36 long
            "url host is not an STS endpoint this deployment accepts: its Region part is not"
            " an AWS Region name (such as us-east-1)",
        ),
        # FIPS endpoints turned off (TOKEX_STS_ALLOW_FIPS=false).
        (
            StsEndpoints(["aws"], allow_fips=False),
            "sts-fips.us-east-1.amazonaws.com",
            "FIPS endpoints are turned off in this deployment (TOKEX_STS_ALLOW_FIPS): sign"
            " for sts.us-east-1.amazonaws.com",
        ),
        (
            StsEndpoints(["aws-us-gov"], allow_fips=False),
            "sts-fips.us-gov-west-1.amazonaws.com",
            "FIPS endpoints are turned off in this deployment (TOKEX_STS_ALLOW_FIPS): sign"
            " for sts.us-gov-west-1.amazonaws.com",
        ),
        (
            StsEndpoints(["aws"], ["eu-west-1"], allow_fips=False),
            "sts-fips.us-east-2.amazonaws.com",
            "FIPS endpoints are turned off in this deployment (TOKEX_STS_ALLOW_FIPS); the"
            " request is signed for the STS of us-east-2, which this endpoint does not"
            " accept: sign for eu-west-1",
        ),
        (
            StsEndpoints(["aws"], allow_fips=False),
            "sts-fips.me-west-1.amazonaws.com",
            "FIPS endpoints are turned off in this deployment (TOKEX_STS_ALLOW_FIPS); the"
            " request is signed for the STS of me-west-1, a Region this tokex version does"
            " not know: sign for a Region of aws",
        ),
        # A known Region without a FIPS endpoint.
        (
            ALL,
            "sts-fips.eu-west-1.amazonaws.com",
            "eu-west-1 has no FIPS STS endpoint this tokex version knows: sign for"
            " sts.eu-west-1.amazonaws.com",
        ),
        (
            StsEndpoints(["aws"], ["us-east-1"]),
            "sts-fips.eu-west-1.amazonaws.com",
            "eu-west-1 has no FIPS STS endpoint this tokex version knows; the request is"
            " signed for the STS of eu-west-1, which this endpoint does not accept: sign for"
            " us-east-1",
        ),
        # Dual-stack endpoints.
        (
            ALL,
            "sts.us-east-1.api.aws",
            "url host is a dual-stack STS endpoint (api.aws), which tokex does not accept:"
            " sign for sts.<region>.amazonaws.com",
        ),
        (
            ALL,
            "sts-fips.us-gov-west-1.api.aws",
            "url host is a dual-stack STS endpoint (api.aws), which tokex does not accept:"
            " sign for sts.<region>.amazonaws.com",
        ),
        (
            ALL,
            "sts.cn-north-1.api.amazonwebservices.com.cn",
            "url host is a dual-stack STS endpoint (api.amazonwebservices.com.cn), which"
            " tokex does not accept: sign for sts.<region>.amazonaws.com.cn",
        ),
    ],
)
def test_an_sts_host_the_table_lacks_is_refused_saying_why(endpoints, host, said) -> None:
    """A Region newer than the table, a mistyped Region, FIPS turned off, dual-stack: each
    was answered "url host is not an STS endpoint this deployment accepts", which named
    neither the Region nor the cause."""
    assert endpoints.lookup(host) is None
    assert endpoints.refusal(host) == said


@pytest.mark.parametrize(
    "label",
    [
        "us-east-1\x1b[2j",
        "us-east-1\n",
        "us-east-1 ",
        "us-east-1%0a",
        "evil.us-east-1",
        "US-EAST-1",
        "us-east-" + "1" * 60,
    ],
)
def test_a_region_part_that_is_no_region_name_is_never_quoted(label: str) -> None:
    """Only a Region name that matched the strict pattern is echoed."""
    for prefix, suffix in (("sts", "amazonaws.com"), ("sts-fips", "amazonaws.com.cn")):
        said = ALL.refusal(f"{prefix}.{label}.{suffix}")
        assert label not in said and "us-east-1 " not in said
        assert said.startswith("url host is not an STS endpoint this deployment accepts")


def test_unknown_partition_or_region_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        StsEndpoints(["aws-iso"])
    with pytest.raises(ConfigurationError):
        StsEndpoints(["aws"], ["us-east-9"])
    with pytest.raises(ConfigurationError):
        StsEndpoints(["aws"], ["cn-north-1"])  # a China region needs the aws-cn partition
    with pytest.raises(ConfigurationError):
        StsEndpoints([])


def test_from_settings() -> None:
    settings = Settings(
        issuer="https://auth.example.com",
        partitions=("aws", "aws-us-gov"),
        regions=("us-east-1", "us-gov-west-1"),
        allow_fips=False,
    )
    assert StsEndpoints.from_settings(settings).hosts == {
        "sts.amazonaws.com",
        "sts.us-east-1.amazonaws.com",
        "sts.us-gov-west-1.amazonaws.com",
    }


def test_our_regions_are_regions_botocore_knows() -> None:
    """Never accept a region name the SDK would not sign for (catches typos in the lists)."""
    data = botocore.loaders.create_loader().load_data("endpoints")
    known = {p["partition"]: set(p["regions"]) for p in data["partitions"]}
    assert set(AWS_REGIONS) <= known["aws"]
    assert set(AWS_CN_REGIONS) <= known["aws-cn"]
    assert set(AWS_US_GOV_REGIONS) <= known["aws-us-gov"]
