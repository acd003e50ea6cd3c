"""The local IMDS emulator's certificate file: the only certificate `tokex local`'s exchange
trusts for instance identity, read at the first instance evidence, so no other user may
swap it meanwhile."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokex.local.imds import ImdsEmulator


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)  # a umask that leaves what a file is made with as it is
    try:
        yield
    finally:
        os.umask(previous)


def test_the_certificate_is_the_owners_alone_whatever_the_umask(
    tmp_path: Path, permissive_umask: None
) -> None:
    emulator = ImdsEmulator(tmp_path)
    try:
        path = emulator.certificate_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # was 0666 under this umask
        assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    finally:
        emulator.stop()


def test_a_link_left_in_its_place_is_replaced_not_written_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.pem"
    elsewhere.write_text("someone else's file\n")
    (tmp_path / "imds-local-ca.pem").symlink_to(elsewhere)
    emulator = ImdsEmulator(tmp_path)
    try:
        assert not emulator.certificate_path.is_symlink()
        assert elsewhere.read_text() == "someone else's file\n"
    finally:
        emulator.stop()
