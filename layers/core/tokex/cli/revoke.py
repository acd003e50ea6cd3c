"""`tokex revoke` (placeholder until its issue lands: registers nothing)."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    return None
