"""The AWS region of a command line, resolved as the AWS CLI resolves it.

The order (AWS CLI User Guide, "Configuration and credential file settings", precedence):
the --region option, then AWS_REGION, then AWS_DEFAULT_REGION, then the profile's `region`
in the config file. boto3 alone reads only the last two, so AWS_REGION (which `tokex
local`'s env files and the Lambda runtime set) would be ignored without this. An empty
variable counts as unset: `AWS_DEFAULT_REGION=` would otherwise make an endpoint of
`https://cloudformation..amazonaws.com`.
"""

from __future__ import annotations

import os
from typing import Any

from tokex.cli.errors import NO_REGION, UsageError
from tokex.regions import REGION_VARIABLES


def resolve_region(flag: str | None) -> str:
    """The region; a UsageError (exit 2) that lists what was tried when none is named."""
    region = configured_region(flag)
    if region is None:
        raise UsageError(
            f"no AWS region: tried {', '.join(_tried())}; pass --region REGION or set AWS_REGION",
            error=NO_REGION,
            input="--region",
        )
    return region


def configured_region(flag: str | None) -> str | None:
    """The region of the first source that names one, or None; a UsageError for a value
    that is not a region name, naming where it came from."""
    if flag is not None:
        return _region_name(flag, "--region")
    for variable in REGION_VARIABLES:
        if value := os.environ.get(variable):
            return _region_name(value, variable)
    profile, config_file, region = _profile_region()
    return _region_name(region, f"profile {profile!r} in {config_file}") if region else None


def _region_name(value: str, source: str) -> str:
    from botocore.exceptions import InvalidRegionError
    from botocore.utils import validate_region_name

    if not value:
        raise UsageError(f"{source} is empty: name a region, e.g. eu-west-1", input=source)
    try:
        validate_region_name(value)  # botocore's own rule: a DNS label
        if value.endswith("\n"):  # which its `$` lets through, to break a request later
            raise InvalidRegionError(region_name=value)
    except InvalidRegionError:
        raise UsageError(
            f"{source} {value!r} is not a region name, e.g. eu-west-1", input=source
        ) from None
    return value


def _profile_region() -> tuple[str, str, str | None]:
    """(profile, config file, its `region`), found as botocore finds them (AWS_PROFILE,
    AWS_CONFIG_FILE)."""
    import botocore.session
    from botocore.exceptions import ProfileNotFound

    session = botocore.session.Session()
    profile = session.profile or "default"
    config_file = str(session.get_config_variable("config_file"))
    try:
        region = session.get_scoped_config().get("region")
    except ProfileNotFound:
        raise missing_profile() from None
    return profile, config_file, region or None


def aws_session(region: str | None = None) -> Any:
    """A boto3 session; a profile AWS_PROFILE names but the config file lacks is a usage
    error (exit 2), whether or not a region is set."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        return boto3.session.Session(region_name=region)
    except ProfileNotFound:
        raise missing_profile() from None


def missing_profile() -> UsageError:
    """AWS_PROFILE names a profile the config file does not have (exit 2)."""
    import botocore.session

    session = botocore.session.Session()
    config_file = session.get_config_variable("config_file")
    return UsageError(
        f"AWS_PROFILE names profile {session.profile!r}, which is not in {config_file}",
        input="AWS_PROFILE",
    )


def _tried() -> list[str]:
    tried = ["--region (not given)"]
    for variable in REGION_VARIABLES:
        tried.append(f"{variable} ({'empty' if os.environ.get(variable) == '' else 'unset'})")
    profile, config_file, _ = _profile_region()
    tried.append(f"the region of profile {profile!r} in {config_file} (none)")
    return tried
