"""The emulator's subprocess binds a port of the OS's choosing itself and names its URL
(local/emulator.py): emulators started side by side never share a port, and each URL
leads to its own process's state."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3

from tokex.local.emulator import SubprocessMotoServer


def test_emulators_started_at_once_each_serve_their_own_state() -> None:
    with ThreadPoolExecutor(2) as pool:
        servers = list(pool.map(lambda _: SubprocessMotoServer(), range(2)))
    try:
        assert len({server.url for server in servers}) == 2
        for number, server in enumerate(servers):
            s3 = boto3.client(
                "s3",
                endpoint_url=server.url,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            s3.create_bucket(Bucket=f"bucket-{number}")
            assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [f"bucket-{number}"]
    finally:
        for server in servers:
            server.stop()
    assert all(server._process.returncode is not None for server in servers)
