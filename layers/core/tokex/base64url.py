"""Unpadded base64url (RFC 4648 §5; RFC 7515 §2), the encoding of every token and
parameter tokex reads or writes. Decoding is strict: one value has exactly one spelling."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_json(value: Any) -> str:
    """Compact JSON, then base64url: the form of `subject_token` and
    `aws_instance_identity` (docs/contract.md)."""
    return encode(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def decode(value: str) -> bytes:
    """The bytes of `value`; ValueError (saying why) for padding, another alphabet, an
    impossible length, or non-zero unused trailing bits (RFC 4648 §3.5)."""
    if "=" in value:
        raise ValueError("must be base64url without padding")
    if not _ALPHABET.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError("is not valid base64url")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if encode(data) != value:
        raise ValueError("is not canonical base64url")
    return data
