"""`tokex iid verify`: check an EC2 instance identity document offline.

Uses the same verifier and pinned AWS certificates as the exchange, so "why was my
instance identity refused?" can be answered on the instance itself:

    curl -s -H "X-aws-ec2-metadata-token: $T" \\
        http://169.254.169.254/latest/dynamic/instance-identity/document > document
    curl -s -H "X-aws-ec2-metadata-token: $T" \\
        http://169.254.169.254/latest/dynamic/instance-identity/rsa2048 > rsa2048
    tokex iid verify document --rsa2048 rsa2048
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from tokex.cli.errors import NOT_VERIFIED, CommandError
from tokex.cli.inputs import read_text, require_file
from tokex.errors import TokexError
from tokex.evidence.instance_identity import (
    MAX_DOCUMENT_BYTES,
    MAX_SIGNATURE_CHARS,
    VARIANTS,
    CertificateStore,
    verify_instance_identity,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "iid",
        help="EC2 instance identity documents",
        description="Work with EC2 instance identity documents (IMDS evidence).",
    )
    commands = parser.add_subparsers(dest="iid_command", required=True, metavar="COMMAND")
    verify = commands.add_parser(
        "verify",
        help="verify a document's AWS signature offline",
        description="Verify an instance identity document against AWS's pinned certificates "
        "(offline) and print its fields and the certificate that verified it. Files hold the "
        "text exactly as IMDS served it.",
    )
    verify.add_argument("document", metavar="DOCUMENT", help="file with the document text")
    signatures = verify.add_mutually_exclusive_group(required=True)
    for variant in VARIANTS:
        signatures.add_argument(
            f"--{variant}",
            metavar="FILE",
            help=f"file with the text of /latest/dynamic/instance-identity/{variant}",
        )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    variant = next(name for name in VARIANTS if getattr(args, name) is not None)
    require_file(args.document, label="DOCUMENT")
    require_file(getattr(args, variant), label=f"--{variant}")
    # Read bytes and decode strictly: the signature covers the exact bytes. The caps are
    # generous for the files; the verifier applies the contract's exact limits.
    document = read_text(args.document, label="DOCUMENT", limit=4 * MAX_DOCUMENT_BYTES)
    blob = read_text(getattr(args, variant), label=f"--{variant}", limit=4 * MAX_SIGNATURE_CHARS)
    store = CertificateStore.default()
    try:
        instance = verify_instance_identity({"document": document, variant: blob}, store)
    except TokexError as exc:
        hint = ""
        if document.endswith("\n"):
            hint = " (note: DOCUMENT ends with a newline; IMDS serves it without one)"
        raise CommandError(
            f"not verified: {exc.description}{hint}", error=NOT_VERIFIED, input=args.document
        ) from None

    pinned = store.certificates(instance.variant, instance.region)
    sources = [entry.source for entry in pinned]
    if args.json:
        result = {
            "verified": True,
            "variant": instance.variant,
            "certificate": instance.certificate,
            "certificate_files": sources,
            "instance": instance.claims(),
        }
        print(json.dumps(result, indent=2))
        return 0
    print(f"verified: {instance.variant} signature, pinned certificate {instance.certificate}")
    print(f"certificate files: {', '.join(sources)}")
    for name, value in instance.claims().items():
        print(f"{name}: {value}")
    return 0
