"""The hot path's botocore session (adapters/aws_clients.py): its model files decoded into
plain dicts give botocore exactly the data its own loader gives, it makes clients of the
services tokex calls and of no other, `AWS_DATA_PATH` still comes first, and no function
handler imports boto3 at a cold start."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path

import pytest
from botocore import loaders
from botocore.exceptions import UnknownServiceError

from tests.support.fresh_handler import HANDLERS, run_probe
from tokex.adapters import aws_clients

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "data", ["endpoints", "partitions", "kms/2014-11-01/service-2", "dynamodb/2012-08-10/service-2"]
)
def test_plain_dicts_hold_what_botocores_loader_reads(data: str) -> None:
    path = os.path.join(loaders.Loader.BUILTIN_DATA_PATH, data)
    ours, botocores = aws_clients.PlainJsonFiles(), loaders.JSONFileLoader()
    assert ours.exists(path) and botocores.exists(path)
    assert ours.load_file(path) == botocores.load_file(path)  # order included below
    assert list(ours.load_file(path)) == list(botocores.load_file(path))


def test_plain_json_first_then_gzip_as_botocore_reads_them(tmp_path: Path) -> None:
    (tmp_path / "both.json").write_text('{"from": "json"}')
    (tmp_path / "both.json.gz").write_bytes(gzip.compress(b'{"from": "gzip"}'))
    (tmp_path / "gz.json.gz").write_bytes(gzip.compress(b'{"from": "gzip"}'))
    files = aws_clients.PlainJsonFiles()
    assert files.load_file(str(tmp_path / "both")) == {"from": "json"}
    assert files.load_file(str(tmp_path / "gz")) == {"from": "gzip"}
    assert files.load_file(str(tmp_path / "none")) is None
    assert not files.exists(str(tmp_path / "none"))


KEYS = {"region_name": "us-east-1", "aws_access_key_id": "a", "aws_secret_access_key": "b"}


@pytest.mark.parametrize("service", aws_clients.SERVICES)
def test_a_client_of_each_service_tokex_calls(service: str) -> None:
    client = aws_clients.client(service, **KEYS)
    assert client.meta.service_model.service_name == service
    assert client.meta.region_name == "us-east-1"


def test_no_client_of_another_service() -> None:
    with pytest.raises(UnknownServiceError, match="lambda") as refused:
        aws_clients.client("lambda", **KEYS)
    assert "dynamodb, ec2, kms, s3, sts" in str(refused.value)


def test_every_client_the_runtime_makes_is_of_a_known_service() -> None:
    """`aws_clients.client("<service>", ...)` anywhere in the runtime names one of
    `SERVICES` (a client of another would fail only when first built)."""
    called = set()
    for source in (ROOT / "layers" / "core" / "tokex").rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        called |= set(re.findall(r'aws_clients\.client\(\s*"([a-z0-9-]+)"', text))
    assert called and called <= set(aws_clients.SERVICES)


def test_aws_data_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model in `AWS_DATA_PATH` wins over botocore's own, as with botocore's loader."""
    builtin = os.path.join(loaders.Loader.BUILTIN_DATA_PATH, "sts", "2011-06-15", "service-2")
    model = loaders.JSONFileLoader().load_file(builtin)
    model["metadata"]["serviceFullName"] = "STS as AWS_DATA_PATH has it"
    folder = tmp_path / "sts" / "2011-06-15"
    folder.mkdir(parents=True)
    (folder / "service-2.json").write_text(json.dumps(model))
    monkeypatch.setenv("AWS_DATA_PATH", str(tmp_path))
    client = aws_clients.client("sts", **KEYS)
    assert client.meta.service_model.service_name == "sts"
    assert client.meta.service_model.metadata["serviceFullName"] == "STS as AWS_DATA_PATH has it"


COLD_IMPORT = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("handler", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted({n.split(".")[0] for n in sys.modules} & {"boto3", "s3transfer"})))
"""


@pytest.mark.parametrize("handler", HANDLERS, ids=lambda path: path.parent.name)
def test_no_handler_imports_boto3_at_cold_start(handler: Path) -> None:
    """botocore's clients are all a handler uses: boto3 and s3transfer would only add to
    every cold start. A fresh interpreter loads the handler as Lambda does."""
    assert run_probe(COLD_IMPORT, handler) == []
