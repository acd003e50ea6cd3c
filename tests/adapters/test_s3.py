"""publish_documents through the S3 adapter against moto's S3 (in process), fed from
moto's KMS."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest
from botocore.config import Config
from moto import mock_aws

from tokex.adapters.kms import public_jwk_for_key
from tokex.adapters.s3 import MAX_WRITE_ATTEMPTS, S3Documents, writes_conditionally
from tokex.errors import TemporarilyUnavailable
from tokex.publish import (
    CACHE_CONTROL,
    CONTENT_TYPE,
    DISCOVERY_KEY,
    JWKS_KEY,
    Write,
    publish_documents,
    serialize_document,
)
from tokex.tokens.jwks import build_jwks, discovery_document

REGION = "us-east-1"
ISSUER = "https://auth.example.com"
DISCOVERY = discovery_document(issuer=ISSUER, token_endpoint=ISSUER + "/token", algs=["ES256"])
RUN = 1_700_000_000_000  # when a publisher run's configuration was read, epoch ms
LATER_RUN = RUN + 1


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket="issuer")
        yield s3, boto3.client("kms", region_name=REGION)


def new_jwk(kms: Any) -> dict[str, Any]:
    key = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    return public_jwk_for_key(kms, key["Arn"])


def publish(
    s3: Any,
    jwks: dict[str, Any],
    *,
    discovery: dict[str, Any] = DISCOVERY,
    configured_at: int = RUN,
    bucket: str = "issuer",
) -> list[str]:
    """One publisher run, configured at `configured_at`, through the S3 adapter."""
    return publish_documents(
        S3Documents(s3, bucket), jwks=jwks, discovery=discovery, configured_at=configured_at
    )


def stored_kids(s3: Any) -> list[str]:
    stored = json.loads(s3.get_object(Bucket="issuer", Key=JWKS_KEY)["Body"].read())
    return [jwk["kid"] for jwk in stored["keys"]]


def run_mark(s3: Any, key: str) -> str | None:
    return s3.head_object(Bucket="issuer", Key=key)["Metadata"].get("tokex-configured-at")


def test_documents_are_published_with_their_headers(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    written = publish(s3, jwks)
    assert written == [JWKS_KEY, DISCOVERY_KEY]
    for key, document in ((JWKS_KEY, jwks), (DISCOVERY_KEY, DISCOVERY)):
        stored = s3.get_object(Bucket="issuer", Key=key)
        assert stored["ContentType"] == "application/json"
        assert stored["CacheControl"] == "public, max-age=300"
        assert stored["Metadata"] == {"tokex-configured-at": str(RUN)}
        body = stored["Body"].read()
        assert json.loads(body) == document
        assert b" " not in body and b"\n" not in body  # compact, deterministic


def test_second_run_writes_nothing(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    publish(s3, jwks)
    # Same content, other key order: same bytes, nothing written.
    reordered = {"keys": [dict(reversed(list(jwk.items()))) for jwk in jwks["keys"]]}
    assert publish(s3, reordered, discovery=dict(DISCOVERY)) == []


def test_a_later_run_with_the_same_content_writes_nothing(aws: tuple[Any, Any]) -> None:
    """The run mark alone never causes a write: the hourly run leaves the objects (and
    CloudFront) alone while nothing changed."""
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    publish(s3, jwks)
    assert publish(s3, jwks, configured_at=LATER_RUN) == []
    assert run_mark(s3, JWKS_KEY) == run_mark(s3, DISCOVERY_KEY) == str(RUN)


def test_changed_jwks_is_rewritten(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current]))
    rotated = build_jwks([current, following])
    assert publish(s3, rotated) == [JWKS_KEY]
    assert stored_kids(s3) == [current["kid"], following["kid"]]


def test_a_run_configured_later_rewrites_what_an_earlier_one_wrote(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current]))
    assert publish(s3, build_jwks([current, following]), configured_at=LATER_RUN) == [JWKS_KEY]
    assert stored_kids(s3) == [current["kid"], following["kid"]]
    assert run_mark(s3, JWKS_KEY) == str(LATER_RUN)


def test_a_run_configured_before_the_last_writer_writes_nothing(
    aws: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An hourly run still in flight (the old configuration: `current` and `removed`)
    while a deploy's run, configured after it, publishes an emergency rotation (`removed`
    taken out, an ES256+RS256 discovery document) finishes last: it puts back neither the
    removed key nor its own discovery document, and says so in its log."""
    s3, kms = aws
    current, removed = new_jwk(kms), new_jwk(kms)
    newer_discovery = dict(DISCOVERY, id_token_signing_alg_values_supported=["ES256", "RS256"])
    deployed = publish(
        s3, build_jwks([current]), discovery=newer_discovery, configured_at=LATER_RUN
    )
    assert deployed == [JWKS_KEY, DISCOVERY_KEY]
    with caplog.at_level(logging.WARNING, logger="tokex.publish"):
        assert publish(s3, build_jwks([current, removed]), configured_at=RUN) == []
    assert stored_kids(s3) == [current["kid"]]
    stored = s3.get_object(Bucket="issuer", Key=DISCOVERY_KEY)["Body"].read()
    assert json.loads(stored) == newer_discovery
    [yielded] = [r for r in caplog.records if r.name == "tokex.publish"]
    assert yielded.levelno == logging.WARNING
    assert JWKS_KEY in yielded.getMessage() and "read after this run's" in yielded.getMessage()


def test_a_stale_run_between_a_later_runs_two_writes_is_overwritten_by_it(
    aws: tuple[Any, Any],
) -> None:
    """A later run has written its JWKS and not yet its discovery document; a stale run
    with the same key set (its JWKS is current, so it cannot tell itself stale from it)
    writes its older discovery document, and the later run's write, marked later,
    replaces it: what stays is the later run's."""
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current]), configured_at=RUN - 1)  # an earlier run's documents
    rotated = build_jwks([current, following])
    later = S3Documents(s3, "issuer")
    later.write_if_changed(
        JWKS_KEY,
        serialize_document(rotated),
        content_type=CONTENT_TYPE,
        cache_control=CACHE_CONTROL,
        configured_at=LATER_RUN,
    )
    stale_discovery = dict(DISCOVERY, introspection_endpoint=ISSUER + "/introspect")
    assert publish(s3, rotated, discovery=stale_discovery, configured_at=RUN) == [DISCOVERY_KEY]
    finished = later.write_if_changed(
        DISCOVERY_KEY,
        serialize_document(DISCOVERY),
        content_type=CONTENT_TYPE,
        cache_control=CACHE_CONTROL,
        configured_at=LATER_RUN,
    )
    assert finished is Write.WRITTEN
    stored = s3.get_object(Bucket="issuer", Key=DISCOVERY_KEY)
    assert json.loads(stored["Body"].read()) == DISCOVERY
    assert stored["Metadata"] == {"tokex-configured-at": str(LATER_RUN)}
    # ... and the stale run, run again, now yields to it.
    assert publish(s3, rotated, discovery=stale_discovery, configured_at=RUN) == []


def test_an_unmarked_object_is_rewritten_only_when_changed(aws: tuple[Any, Any]) -> None:
    """An object without the run mark (written before runs were marked, or by hand, or
    with a mark that is no number) is left alone when current and rewritten when changed."""
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current]))
    for key in (JWKS_KEY, DISCOVERY_KEY):
        body = s3.get_object(Bucket="issuer", Key=key)["Body"].read()
        s3.put_object(
            Bucket="issuer",
            Key=key,
            Body=body,
            ContentType="application/json",
            CacheControl="public, max-age=300",
            Metadata={} if key == JWKS_KEY else {"tokex-configured-at": "tomorrow"},
        )
    assert publish(s3, build_jwks([current])) == []
    assert run_mark(s3, JWKS_KEY) is None
    changed = dict(DISCOVERY, id_token_signing_alg_values_supported=["ES256", "RS256"])
    written = publish(s3, build_jwks([current, following]), discovery=changed)
    assert written == [JWKS_KEY, DISCOVERY_KEY]  # "tomorrow" is no later run's mark
    assert stored_kids(s3) == [current["kid"], following["kid"]]
    assert run_mark(s3, JWKS_KEY) == run_mark(s3, DISCOVERY_KEY) == str(RUN)


def test_a_mark_ahead_of_the_clock_counts_as_none(aws: tuple[Any, Any]) -> None:
    """An object copied in with its metadata, or marked by hand, a day ahead: it would
    have stopped every run, the deploy's included, from ever writing it again."""
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    now_ms = 1_800_000_000_000
    store = S3Documents(s3, "issuer", clock=lambda: now_ms / 1000)
    ahead = str(now_ms + 24 * 3600 * 1000)
    s3.put_object(
        Bucket="issuer",
        Key=JWKS_KEY,
        Body=serialize_document(build_jwks([current])),
        Metadata={"tokex-configured-at": ahead},
    )
    jwks = build_jwks([current, following])
    assert publish_documents(store, jwks=jwks, discovery=DISCOVERY, configured_at=RUN) == [
        JWKS_KEY,
        DISCOVERY_KEY,
    ]
    assert stored_kids(s3) == [current["kid"], following["kid"]]
    # Within a minute ahead (clocks differ that much): a later writer's, still yielded to.
    s3.put_object(
        Bucket="issuer",
        Key=JWKS_KEY,
        Body=serialize_document(build_jwks([current])),
        Metadata={"tokex-configured-at": str(now_ms + 59_000)},
    )
    assert publish_documents(store, jwks=jwks, discovery=DISCOVERY, configured_at=RUN) == []


def test_a_removed_document_is_put_back_by_a_run_of_the_same_keys_configured_earlier(
    aws: tuple[Any, Any],
) -> None:
    """Two environments of one configuration: the one that read it earlier still puts
    back a document removed from the bucket (the JWKS it finds, marked later, is the one
    it would write)."""
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    assert publish(s3, jwks, configured_at=LATER_RUN) == [JWKS_KEY, DISCOVERY_KEY]
    s3.delete_object(Bucket="issuer", Key=DISCOVERY_KEY)
    assert publish(s3, jwks, configured_at=RUN) == [DISCOVERY_KEY]


def write_jwks(documents: S3Documents, jwks: dict[str, Any], configured_at: int) -> Write:
    return documents.write_if_changed(
        JWKS_KEY,
        serialize_document(jwks),
        content_type=CONTENT_TYPE,
        cache_control=CACHE_CONTROL,
        configured_at=configured_at,
    )


def another_run_writes_before_each_put(
    s3: Any, jwks: dict[str, Any], configured_at: int, times: int = 1
) -> list[str]:
    """Registers, on `s3`, another run writing `jwks` (marked `configured_at`, through
    its own client) just before each of this client's next `times` PutObject calls: a
    write between a run's HeadObject and its PutObject. Returns the PutObject calls'
    conditions, as sent."""
    other = S3Documents(boto3.client("s3", region_name=REGION), "issuer")
    conditions: list[str] = []

    def intervene(params: dict[str, Any], **_: Any) -> None:
        headers = params["headers"]
        conditions.append(headers.get("If-Match") or headers.get("If-None-Match") or "none")
        if len(conditions) <= times:
            assert write_jwks(other, jwks, configured_at) is Write.WRITTEN

    s3.meta.events.register("before-call.s3.PutObject", intervene)
    return conditions


def test_a_later_run_writing_between_the_read_and_the_write_is_not_overwritten(
    aws: tuple[Any, Any],
) -> None:
    """The stale hourly run read the old object; the deploy's run (configured later)
    writes the emergency rotation before the stale run's PutObject: the conditional write
    fails, the stale run reads again and yields, so the rotation stays."""
    s3, kms = aws
    current, removed = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current, removed]), configured_at=RUN - 1)
    conditions = another_run_writes_before_each_put(s3, build_jwks([current]), LATER_RUN)
    stale = build_jwks([current, removed, new_jwk(kms)])
    assert write_jwks(S3Documents(s3, "issuer"), stale, RUN) is Write.YIELDED
    assert stored_kids(s3) == [current["kid"]]
    assert run_mark(s3, JWKS_KEY) == str(LATER_RUN)
    assert len(conditions) == 1 and conditions[0].strip('"')  # an ETag: If-Match


def test_an_earlier_run_writing_between_the_read_and_the_write_is_overwritten_after_a_read(
    aws: tuple[Any, Any],
) -> None:
    s3, kms = aws
    current, following = new_jwk(kms), new_jwk(kms)
    publish(s3, build_jwks([current]), configured_at=RUN - 2)
    conditions = another_run_writes_before_each_put(s3, build_jwks([following]), RUN - 1)
    rotated = build_jwks([current, following])
    assert write_jwks(S3Documents(s3, "issuer"), rotated, RUN) is Write.WRITTEN
    assert stored_kids(s3) == [current["kid"], following["kid"]]
    assert run_mark(s3, JWKS_KEY) == str(RUN)
    assert len(conditions) == 2 and conditions[0] != conditions[1]  # each read's ETag


def test_a_document_created_between_the_read_and_the_write_is_not_overwritten(
    aws: tuple[Any, Any],
) -> None:
    s3, kms = aws
    created = build_jwks([new_jwk(kms)])
    conditions = another_run_writes_before_each_put(s3, created, LATER_RUN)
    assert write_jwks(S3Documents(s3, "issuer"), build_jwks([new_jwk(kms)]), RUN) is Write.YIELDED
    assert stored_kids(s3) == [created["keys"][0]["kid"]]
    assert conditions == ["*"]  # If-None-Match: there was no object


def test_a_document_that_keeps_changing_is_temporarily_unavailable(
    aws: tuple[Any, Any],
) -> None:
    s3, kms = aws
    publish(s3, build_jwks([new_jwk(kms)]), configured_at=RUN - 10)
    runs = [build_jwks([new_jwk(kms)]) for _ in range(MAX_WRITE_ATTEMPTS)]
    conditions: list[str] = []
    other = S3Documents(boto3.client("s3", region_name=REGION), "issuer")

    def intervene(params: dict[str, Any], **_: Any) -> None:
        conditions.append(params["headers"]["If-Match"])
        write_jwks(other, runs[len(conditions) - 1], RUN - 10 + len(conditions))

    s3.meta.events.register("before-call.s3.PutObject", intervene)
    with pytest.raises(TemporarilyUnavailable) as caught:
        write_jwks(S3Documents(s3, "issuer"), build_jwks([new_jwk(kms)]), RUN)
    assert len(conditions) == MAX_WRITE_ATTEMPTS
    assert caught.value.reason == "s3 PutObject: the object kept changing under this run"
    assert stored_kids(s3) == [runs[-1]["keys"][0]["kid"]]


def test_an_sdk_without_conditional_writes_writes_unconditionally(
    aws: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Lambda runtime's botocore from before S3's If-Match (its model has no such
    member): the write still happens, unconditionally, as docs/deploy.md says."""
    s3, kms = aws
    model_file = next(Path(botocore.__file__).parent.glob("data/s3/*/service-2.json*"))
    opener = gzip.open if model_file.suffix == ".gz" else open
    with opener(model_file, "rb") as stored:
        model = json.loads(stored.read())
    del model["shapes"]["PutObjectRequest"]["members"]["IfMatch"]
    old_model = tmp_path / "s3" / model_file.parent.name / "service-2.json"
    old_model.parent.mkdir(parents=True)
    old_model.write_text(json.dumps(model))
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    old_sdk = boto3.session.Session().client("s3", region_name=REGION)
    assert not writes_conditionally(old_sdk) and writes_conditionally(s3)
    publish(s3, build_jwks([new_jwk(kms)]), configured_at=RUN - 1)
    conditions = another_run_writes_before_each_put(old_sdk, build_jwks([new_jwk(kms)]), LATER_RUN)
    ours = build_jwks([new_jwk(kms)])
    assert write_jwks(S3Documents(old_sdk, "issuer"), ours, RUN) is Write.WRITTEN
    assert conditions == ["none"]
    assert stored_kids(s3) == [ours["keys"][0]["kid"]]  # the window this SDK leaves open


def test_wrong_headers_are_repaired(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    publish(s3, jwks)
    body = s3.get_object(Bucket="issuer", Key=DISCOVERY_KEY)["Body"].read()
    s3.put_object(Bucket="issuer", Key=DISCOVERY_KEY, Body=body, ContentType="text/plain")
    assert publish(s3, jwks) == [DISCOVERY_KEY]
    assert s3.head_object(Bucket="issuer", Key=DISCOVERY_KEY)["ContentType"] == "application/json"


def test_missing_bucket_is_temporarily_unavailable(aws: tuple[Any, Any]) -> None:
    s3, kms = aws
    jwks = build_jwks([new_jwk(kms)])
    with pytest.raises(TemporarilyUnavailable) as caught:
        publish(s3, jwks, bucket="no-such-bucket")
    assert "no-such-bucket" not in caught.value.description
    assert caught.value.reason == "s3 HeadObject: NoSuchBucket"


def test_unreachable_s3_is_temporarily_unavailable() -> None:
    closed = boto3.client(
        "s3", region_name=REGION, endpoint_url="http://127.0.0.1:1",
        config=Config(connect_timeout=1, retries={"max_attempts": 1}),
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    jwks = {"keys": [{"kty": "EC", "kid": "k", "use": "sig", "alg": "ES256"}]}
    with pytest.raises(TemporarilyUnavailable):
        publish(closed, jwks)


def test_empty_jwks_is_refused(aws: tuple[Any, Any]) -> None:
    s3, _ = aws
    with pytest.raises(ValueError):
        publish(s3, {"keys": []})
    assert s3.list_objects_v2(Bucket="issuer").get("KeyCount") == 0
