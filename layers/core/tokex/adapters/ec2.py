"""EC2 instance tags for policy `instance.tags` conditions: the only module that calls EC2.

A lookup that policy evaluation calls (policy/evaluate.py `TagLookup`), not evidence: the
instance it asks about was already proven by the IMDS evidence (evidence/).

`InstanceTagLookup` is the `TagLookup` evaluation calls (at most once per exchange, and
only when a policy that otherwise applies has tag conditions). For verified, bound IMDS
evidence it assumes `arn:<partition>:iam::<account>:role/<role name>` in the instance's
own account (session `tokex-tags`, 900 s, credentials reused until shortly before they
expire) and calls `ec2:DescribeInstances` for that one instance in its region.

What each outcome means (fail closed throughout):
- Instance found and `pending`/`running` → its tags, `{Key: Value}`.
- Unknown to EC2 (`InvalidInstanceID.NotFound`, or missing from the answer) while the
  document's signed `pendingTime` is less than `LAUNCH_CONSISTENCY_SECONDS` old (or in the
  future) → `TemporarilyUnavailable` (503, Retry-After 2 s) "instance <id> is not yet
  known to EC2, retry shortly", never cached: EC2 is eventually consistent and does not
  know every instance right after its launch (see LAUNCH_CONSISTENCY_SECONDS).
- Any other state, or unknown to EC2 otherwise → `InvalidGrant` "instance <id> is not
  running".
  The identity document is static for an instance's life (docs/security.md
  "IMDS evidence"): evidence of a stopped or terminated instance is evidence that
  outlived its instance, as stolen evidence does. Raising, rather than returning no tags,
  refuses the exchange even where a policy without tags would also apply, and tells an
  honest caller why.
- Tags unreadable because the target account is not set up for it (AssumeRole refused:
  role missing, trust policy; DescribeInstances denied; region not enabled) → `{}` and a
  warning naming the account and error code. No tag condition holds on `{}`: tag
  policies do not apply (`invalid_target`) while policies without tags still do. Deny
  policies cannot have instance conditions (model.py), so `{}` never switches a deny off.
- Instance in another partition than the exchange's own (its STS client's Region's: an
  `aws` deployment serving `aws-cn` or `aws-us-gov` callers through `stsPartitions`) →
  `{}` and a warning naming the two partitions, without an AssumeRole: the exchange's STS
  cannot give credentials for a role of another partition, and the stack grants
  `sts:AssumeRole` on its own partition's roles only (cdk/tokex_stack.py), so the call
  could only be refused. Tags read as empty, as when a role refuses: tag conditions do not
  hold there.
- Throttling, 5xx, timeouts, malformed answers → `TemporarilyUnavailable` (503), never
  cached, so the next request tries again.

Definitive outcomes (tags, not running, unreadable) are cached per (account, region,
instance id) for `ttl_seconds` (≤ 60): a tag change or a stop takes effect within a
minute, and one instance costs at most one DescribeInstances a minute.

Only accounts a policy names are ever contacted: the lookup runs after the principal
pattern (which names its account) has matched, and bound evidence has the caller's
account. Tags are only as trustworthy as `ec2:CreateTags` in that account: a workload
allowed to tag its own instance can satisfy any tag condition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokex import identifiers
from tokex.adapters import aws_clients, errors
from tokex.clock import SuspendAwareClock
from tokex.errors import ConfigurationError, InvalidGrant, TemporarilyUnavailable
from tokex.evidence.identity import InstanceIdentity

log = logging.getLogger(__name__)

SESSION_NAME = "tokex-tags"
# The AssumeRole minimum: each credential set serves a few DescribeInstances calls.
ASSUMED_ROLE_SECONDS = 900
# Re-assume this long before expiry, more than one call's worst case
# (aws_clients.HOT_PATH_CONFIG).
CREDENTIALS_REFRESH_MARGIN_SECONDS = 120
MAX_TTL_SECONDS = 60
# EC2 is eventually consistent: right after RunInstances, DescribeInstances "might return
# an InvalidInstanceID.NotFound error. This does not mean the instance does not exist."
# (https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html). For this
# long after the document's pendingTime, not found is "not yet", never a grant.
LAUNCH_CONSISTENCY_SECONDS = 300
NOT_YET_KNOWN_RETRY_AFTER_SECONDS = 2
# Bounds the memory a warm container spends on instances it has seen.
MAX_CACHED_INSTANCES = 10_000
_LOCK_STRIPES = 64
# EC2 instance-state-name values that may still be granted.
_RUNNING_STATES = frozenset({"pending", "running"})
# AssumeRole errors that mean "the target account does not let tokex read tags".
_ASSUME_ROLE_REFUSALS = frozenset(
    {"AccessDenied", "ValidationError", "InvalidParameterValue", "RegionDisabledException"}
)
_EC2_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
# DescribeInstances errors of the same kind; the credential ones also drop the credentials.
_EC2_CREDENTIAL_ERRORS = frozenset({"AuthFailure", "ExpiredToken", "RequestExpired"})
_EC2_REFUSALS = frozenset({"UnauthorizedOperation", "OptInRequired", "Blocked"})
_UNAVAILABLE = "instance tags cannot be read right now, retry later"
_UNREADABLE = "unreadable"
_NOT_FOUND = "not-found"


@dataclass(frozen=True)
class AssumedCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)


Ec2ClientFactory = Callable[[str, AssumedCredentials], Any]


def default_ec2_client_factory() -> Ec2ClientFactory:
    """EC2 clients from one shared botocore session, with explicit credentials.

    Sharing the session shares botocore's loaded EC2 model (a new session loads it again
    for every client). The endpoint still comes from `AWS_ENDPOINT_URL[_EC2]` or the region.
    """
    session = aws_clients.new_session()
    # Sessions are not thread-safe (boto3's guide, "Multithreading"; botocore's alike).
    lock = threading.Lock()

    def create(region: str, credentials: AssumedCredentials) -> Any:
        with lock:
            return aws_clients.client(
                "ec2",
                session=session,
                region_name=region,
                aws_access_key_id=credentials.access_key_id,
                aws_secret_access_key=credentials.secret_access_key,
                aws_session_token=credentials.session_token,
            )

    return create


@dataclass(frozen=True)
class _Outcome:
    """A cacheable answer: an EC2 state name, `not-found` or `unreadable`, and tags."""

    state: str
    tags: Mapping[str, str] = field(default_factory=dict)
    expires_at: float = 0.0

    def result(self, instance_id: str) -> dict[str, str]:
        if self.state in _RUNNING_STATES or self.state == _UNREADABLE:
            return dict(self.tags)  # a copy: callers cannot change the cache
        raise InvalidGrant(
            f"instance {instance_id} is not running",
            reason=f"instance_not_running: {instance_id} {self.state}",
        )


@dataclass
class _AccountAccess:
    credentials: AssumedCredentials
    refresh_at: float
    clients: dict[str, Any] = field(default_factory=dict)


class InstanceTagLookup:
    """A `TagLookup` (policy/evaluate.py) backed by DescribeInstances in the instance's
    account. Thread-safe; one lookup per instance at a time, none across instances."""

    def __init__(
        self,
        sts_client: Any,
        *,
        role_name: str,
        partition_of: Callable[[str], str | None] = identifiers.partition_of_region,
        ttl_seconds: float = MAX_TTL_SECONDS,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] = time.time,
        ec2_client_factory: Ec2ClientFactory | None = None,
    ) -> None:
        if not identifiers.ROLE_NAME_WITH_PATH.fullmatch(role_name):
            raise ConfigurationError("TOKEX_INSTANCE_TAGS_ROLE_NAME is not a valid IAM role name")
        if not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be 0..{MAX_TTL_SECONDS}")
        self._sts = sts_client
        self._role_name = role_name
        self._partition_of = partition_of
        # The partition of the exchange's own STS (its Region's); None when that is not
        # known (no Region of a served partition), and then every served one is tried.
        own_region = getattr(getattr(sts_client, "meta", None), "region_name", None)
        self._own_partition = partition_of(own_region) if isinstance(own_region, str) else None
        self._ttl = ttl_seconds
        self._clock = clock or SuspendAwareClock()  # a frozen environment's sleep counts
        # Seconds since the epoch, as the document's pendingTime: the cache's clock is not.
        self._wall_clock = wall_clock
        self._ec2_client = ec2_client_factory or default_ec2_client_factory()
        self._lock = threading.Lock()  # guards the two dicts below
        self._outcomes: dict[tuple[str, str, str], _Outcome] = {}
        self._accounts: dict[str, _AccountAccess] = {}
        # Striped locks: concurrent misses for one instance make one call, and a slow
        # region never holds up lookups elsewhere. Order: instance lock, then account.
        self._instance_locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
        self._account_locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))

    def role_arn(self, account: str, region: str) -> str:
        partition = self._partition_of(region)
        if partition is None:
            raise ValueError(f"region {region!r} is in no partition tokex serves")
        return f"arn:{partition}:iam::{account}:role/{self._role_name}"

    def __call__(self, instance: InstanceIdentity) -> Mapping[str, str]:
        key = (instance.account, instance.region, instance.instance_id)
        # evaluate only asks for bound evidence; the formats guard the EC2 endpoint host,
        # and the role to assume must be in a partition tokex serves.
        account, region, instance_id = key
        if not (
            instance.bound
            and identifiers.is_account_id(account)
            and identifiers.is_region(region)
            and identifiers.INSTANCE_ID.fullmatch(instance_id)
        ):
            log.warning("instance tags not looked up: unbound or unexpected evidence %r", key)
            return {}
        partition = self._partition_of(region)
        if partition is None:
            log.warning("instance tags not looked up: region %s is in no served partition", region)
            return {}
        if self._own_partition is not None and partition != self._own_partition:
            log.warning(
                "instance tags not looked up: instance %s (%s %s) is in the %s partition, and"
                " tags are read only in the exchange's own (%s): tag conditions do not hold",
                instance_id, account, region, partition, self._own_partition,
            )  # fmt: skip
            return {}
        outcome = self._cached(key)
        if outcome is None:
            with self._instance_locks[hash(key) % _LOCK_STRIPES]:
                outcome = self._cached(key)  # another thread may have just looked it up
                if outcome is None:
                    outcome = self._describe(*key)
                    if outcome.state == _NOT_FOUND and self._just_launched(instance):
                        raise TemporarilyUnavailable(
                            f"instance {instance_id} is not yet known to EC2, retry shortly",
                            reason=f"instance_not_yet_known: {instance_id} not-found",
                            retry_after=NOT_YET_KNOWN_RETRY_AFTER_SECONDS,
                        )
                    self._store(key, outcome)
        return outcome.result(instance.instance_id)

    def _just_launched(self, instance: InstanceIdentity) -> bool:
        """Whether the instance entered `pending` less than LAUNCH_CONSISTENCY_SECONDS ago
        by its signed document; a pendingTime in the future (clock skew) counts."""
        if instance.pending_time is None:
            return False
        age = self._wall_clock() - instance.pending_time.timestamp()
        return age < LAUNCH_CONSISTENCY_SECONDS

    def _cached(self, key: tuple[str, str, str]) -> _Outcome | None:
        with self._lock:
            outcome = self._outcomes.get(key)
            if outcome is not None and self._clock() < outcome.expires_at:
                return outcome
            return None

    def _store(self, key: tuple[str, str, str], outcome: _Outcome) -> None:
        expiring = _Outcome(outcome.state, outcome.tags, self._clock() + self._ttl)
        with self._lock:
            self._outcomes.pop(key, None)
            if len(self._outcomes) >= MAX_CACHED_INSTANCES:
                now = self._clock()
                for stale in [k for k, o in self._outcomes.items() if o.expires_at <= now]:
                    del self._outcomes[stale]
            while len(self._outcomes) >= MAX_CACHED_INSTANCES:
                del self._outcomes[next(iter(self._outcomes))]  # the oldest entry
            self._outcomes[key] = expiring

    def _describe(self, account: str, region: str, instance_id: str) -> _Outcome:
        client = self._client(account, region)
        if client is None:
            return _Outcome(_UNREADABLE)
        try:
            response = client.describe_instances(InstanceIds=[instance_id])
        except errors.SDK_ERRORS as exc:
            if not errors.is_client_error(exc):
                raise _unavailable("ec2", "DescribeInstances", exc) from exc
            code = errors.error_code(exc)
            if code in _EC2_NOT_FOUND:
                return _Outcome(_NOT_FOUND)
            if code in _EC2_CREDENTIAL_ERRORS:
                with self._lock:
                    self._accounts.pop(account, None)  # assume the role again next time
            if code in _EC2_CREDENTIAL_ERRORS | _EC2_REFUSALS:
                log.warning("instance tags unreadable: %s %s %s", account, region, code)
                return _Outcome(_UNREADABLE)
            raise _unavailable("ec2", "DescribeInstances", exc) from exc
        return _outcome_from(response, instance_id)

    def _client(self, account: str, region: str) -> Any | None:
        """The EC2 client for (account, region), assuming the role when needed; None
        when the account does not let tokex assume it."""
        with self._account_locks[hash(account) % _LOCK_STRIPES]:
            with self._lock:
                access = self._accounts.get(account)
            # Measured before the call: the credentials live 900 s from after it.
            now = self._clock()
            if access is None or now >= access.refresh_at:
                credentials = self._assume_role(account, region)
                if credentials is None:
                    return None
                refresh_at = now + ASSUMED_ROLE_SECONDS - CREDENTIALS_REFRESH_MARGIN_SECONDS
                access = _AccountAccess(credentials, refresh_at)
                with self._lock:
                    self._accounts[account] = access
            client = access.clients.get(region)
            if client is None:
                client = access.clients[region] = self._ec2_client(region, access.credentials)
            return client

    def _assume_role(self, account: str, region: str) -> AssumedCredentials | None:
        role_arn = self.role_arn(account, region)
        try:
            response = self._sts.assume_role(
                RoleArn=role_arn,
                RoleSessionName=SESSION_NAME,
                DurationSeconds=ASSUMED_ROLE_SECONDS,
            )
            credentials = response["Credentials"]
            return AssumedCredentials(
                credentials["AccessKeyId"],
                credentials["SecretAccessKey"],
                credentials["SessionToken"],
            )
        except errors.SDK_ERRORS as exc:
            if errors.is_client_error(exc, *_ASSUME_ROLE_REFUSALS):
                code = errors.error_code(exc)
                log.warning("instance tags unreadable: AssumeRole %s refused (%s)", role_arn, code)
                return None
            raise _unavailable("sts", "AssumeRole", exc) from exc
        except (KeyError, TypeError) as exc:
            raise _unavailable("sts", "AssumeRole", "malformed response") from exc


def _outcome_from(response: Any, instance_id: str) -> _Outcome:
    """The one instance asked for, its state and tags; anything unexpected is a 503."""
    try:
        found = [
            item
            for reservation in response.get("Reservations", [])
            for item in reservation.get("Instances", [])
            if item.get("InstanceId") == instance_id
        ]
        if not found:
            return _Outcome(_NOT_FOUND)
        if len(found) > 1:
            raise _unavailable("ec2", "DescribeInstances", "instance listed twice")
        state = found[0].get("State", {}).get("Name")
        tags = {
            tag["Key"]: tag["Value"]
            for tag in found[0].get("Tags", [])
            if isinstance(tag.get("Key"), str) and isinstance(tag.get("Value"), str)
        }
    except (AttributeError, KeyError, TypeError) as exc:
        raise _unavailable("ec2", "DescribeInstances", "malformed response") from exc
    # A missing or unknown state is not a running instance.
    return _Outcome(state if isinstance(state, str) else "unknown", tags)


def _unavailable(
    service: str, operation: str, exc_or_detail: Exception | str
) -> TemporarilyUnavailable:
    # Generic description on purpose: never an account, a role ARN or an upstream message.
    return errors.unavailable(_UNAVAILABLE, service, operation, exc_or_detail)
