"""The policy document the `tokex policy` command tests put, get and validate, and the
file they write it to: one definition for the tests against a moto server
(tests/system/test_policy_commands.py) and in process (tests/adapters)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokex.local.provision import ACCOUNT_ID, DEMO_USER_NAME

USER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{DEMO_USER_NAME}"
CLI_POLICY = {
    "id": "cli-test",
    "effect": "allow",
    "principals": [USER_ARN],
    "audiences": ["cli-test-api"],
    "scopes": ["cli:read"],
    "claims": {"owner": "cli ✓"},
}


def write(path: Path, document: dict[str, Any]) -> str:
    """`document` as JSON at `path`; the path, as the command takes it."""
    path.write_text(json.dumps(document))
    return str(path)
