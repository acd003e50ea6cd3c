"""`tokex policy explain`: the exchange's decision for a principal and audience, issuing
nothing.

The decision is reached by the exchange's own code: the principal goes through the mapping
the STS forwarder applies to GetCallerIdentity's answer (so an assumed-role session maps to
its path-less role, exactly as in a real exchange), an instance document through the
exchange's parser, verifier and caller binding, and the policies through
`policy.evaluate.explain`, of which the exchange's `evaluate` is a thin wrapper.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokex.cli.deployment import Deployment, check_ttl_seconds, resolve_deployment
from tokex.cli.errors import INVALID_INPUT, USAGE, CommandError, UsageError
from tokex.cli.inputs import read_text, require_file
from tokex.cli.policy_document import load_policy_file
from tokex.cli.policy_table import policy_table
from tokex.cli.principal_arn import caller_from_principal
from tokex.cli.request_arguments import check_audience, requested_scopes
from tokex.errors import InvalidGrant, InvalidRequest, TokexError
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.policy.globs import principal_matches
from tokex.policy.model import Policy
from tokex.settings import DEFAULT_TTL_CAP_SECONDS, DEFAULT_TTL_SECONDS

if TYPE_CHECKING:
    from tokex.policy.evaluate import Explanation

# Instance identity signature variants (evidence/instance_identity.py VARIANTS).
SIGNATURE_VARIANTS = ("rsa2048", "pkcs7", "signature")


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--principal",
        required=True,
        metavar="ARN",
        help="arn:aws:iam::ACCOUNT:role/NAME, arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION "
        "or arn:aws:iam::ACCOUNT:user/NAME (or role/NAME, user/NAME with --account)",
    )
    parser.add_argument("--account", help="the account of a short role/NAME or user/NAME")
    parser.add_argument(
        "--principal-id", metavar="ID", help="the role's or user's unique id (AROA…/AIDA…)"
    )
    parser.add_argument("--audience", required=True, help="the audience requested")
    parser.add_argument(
        "--scope", action="append", default=[], help="scope(s) requested (repeat or quote)"
    )
    parser.add_argument(
        "--instance-document",
        metavar="FILE",
        help="an EC2 instance identity document (text as IMDS served it); treated as verified "
        "unless its signature is given",
    )
    signatures = parser.add_mutually_exclusive_group()
    for variant in SIGNATURE_VARIANTS:
        signatures.add_argument(
            f"--{variant}", metavar="FILE", help=f"its /{variant} text: verify the document"
        )
    parser.add_argument(
        "--instance-tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the instance, for policies with tag conditions",
    )
    parser.add_argument(
        "--policy-file",
        action="append",
        default=[],
        metavar="FILE",
        help="evaluate these documents instead of the table (offline; repeatable)",
    )
    parser.add_argument(
        "--default-ttl",
        type=int,
        default=None,
        metavar="S",
        help="the deployment's default TTL (default: the --stack's DefaultTtlSeconds "
        f"output, else {DEFAULT_TTL_SECONDS})",
    )


def explain_command(args: argparse.Namespace) -> int:
    from tokex.policy.evaluate import explain

    # The command line first (exit 2), before any file is read or AWS is called.
    for name, value in (("--default-ttl", args.default_ttl), ("--ttl-cap", args.ttl_cap)):
        if value is not None:
            check_ttl_seconds(value, name)
    check_audience(args.audience)
    scopes = requested_scopes(args.scope)
    caller, notes = caller_from_principal(args.principal, args.account, args.principal_id)
    tags = _tags(args.instance_tag)
    _check_files(args)
    # One DescribeStacks with --stack, for the table and the TTLs.
    deployment = None if args.policy_file else resolve_deployment(args)
    _ttls_from_stack(args, deployment)
    if args.default_ttl > args.ttl_cap:
        raise UsageError(
            f"--default-ttl {args.default_ttl} exceeds the TTL cap {args.ttl_cap} (--ttl-cap)",
            input="--default-ttl",
        )
    policies, source, invalid = _policies(args, deployment)
    if args.principal_id is None and any(
        p.principal_ids and any(principal_matches(g, caller.principal_arn) for g in p.principals)
        for p in policies
    ):
        notes.append("no --principal-id: policies restricted by principal_ids do not apply")
    if not tags and any(p.instance and p.instance.tags for p in policies):
        notes.append("tag conditions need the instance's tags: give --instance-tag KEY=VALUE")
    try:
        instance = _instance(args, caller, notes)
    except (InvalidGrant, InvalidRequest) as refusal:  # the exchange refuses before policies
        result = None
        error: TokexError | None = refusal
        instance = None
    else:
        result = explain(
            policies,
            caller,
            args.audience,
            scopes,
            instance,
            default_ttl=args.default_ttl,
            ttl_cap=args.ttl_cap,
            tag_lookup=(lambda _instance: tags) if tags else None,
        )
        error = result.error
    decision = result.decision if result else None
    # The verdict is data: a top-level "error" would mean that the command failed.
    refused = None
    if error:
        refused = {"error": error.error, "error_description": error.description}
        refused["reason"] = error.reason
    report: dict[str, Any] = {
        "decision": "refuse" if error else "allow",
        "policy": decision.policy.id if decision else None,
        "refusal": refused,
        "scopes": list(decision.scopes) if decision else None,
        "ttl_seconds": decision.ttl_seconds if decision else None,
        "claims": decision.claims if decision else None,
        "caller": {
            "principal": caller.principal_arn,
            "arn": caller.arn,
            "account": caller.account,
            "principal_id": args.principal_id,
            "session_name": caller.session_name,
        },
        "audience": args.audience,
        "requested_scopes": None if scopes is None else list(scopes),
        "instance": None if instance is None else instance.claims(),
        "source": source,
        "invalid_policies": invalid,
        "policies": [dataclasses.asdict(line) for line in (result.lines if result else ())],
        "notes": notes,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(_render(report, result, error))
    return 0


def _check_files(args: argparse.Namespace) -> None:
    variant = next((v for v in SIGNATURE_VARIANTS if getattr(args, v) is not None), None)
    if variant is not None and args.instance_document is None:
        raise UsageError(
            f"--{variant} is the signature of an instance document: give --instance-document",
            error=USAGE,
            input="--instance-document",
        )
    if args.policy_file and (args.table or args.stack):
        flag = "--table" if args.table else "--stack"
        raise UsageError(
            "--policy-file replaces --table/--stack: give one or the other", input=flag
        )
    require_file(args.instance_document, label="--instance-document")
    if variant is not None:
        require_file(getattr(args, variant), label=f"--{variant}")
    for path in args.policy_file:
        require_file(path, label="--policy-file")


def _instance(
    args: argparse.Namespace, caller: CallerIdentity, notes: list[str]
) -> InstanceIdentity | None:
    """The document as the exchange would hold it after verification and binding."""
    from tokex.evidence.instance_identity import (
        MAX_DOCUMENT_BYTES,
        MAX_SIGNATURE_CHARS,
        CertificateStore,
        _parse_document,
        bind_instance_to_caller,
        verify_instance_identity,
    )

    variant = next((v for v in SIGNATURE_VARIANTS if getattr(args, v) is not None), None)
    if args.instance_document is None:
        return None
    document = read_text(
        args.instance_document, label="instance document", limit=4 * MAX_DOCUMENT_BYTES
    )
    if variant is not None:
        blob = read_text(
            getattr(args, variant), label=f"--{variant}", limit=4 * MAX_SIGNATURE_CHARS
        )
        evidence = {"document": document, variant: blob}
        instance = verify_instance_identity(evidence, CertificateStore.default())
        notes.append(f"instance document verified (pinned certificate {instance.certificate})")
    else:
        if len(document.encode("utf-8")) > MAX_DOCUMENT_BYTES:  # as _read_evidence refuses it
            raise InvalidRequest(f"instance document exceeds {MAX_DOCUMENT_BYTES} bytes")
        fields = _parse_document(document)
        instance = InstanceIdentity(
            instance_id=fields["instanceId"],
            account=fields["accountId"],
            region=fields["region"],
            availability_zone=fields["availabilityZone"],
            image_id=fields["imageId"],
            instance_type=fields["instanceType"],
            variant="unverified",
            certificate="",
        )
        notes.append(
            "instance document NOT verified: treated as verified by AWS "
            "(give --rsa2048, --pkcs7 or --signature to verify it)"
        )
    bound = bind_instance_to_caller(instance, caller)
    notes.append("instance document bound to the caller (the exchange's binding checks pass)")
    return bound


def _ttls_from_stack(args: argparse.Namespace, deployment: Deployment | None) -> None:
    """TTLs not given on the command line: the stack's outputs (what its exchange uses),
    else the defaults of a deployment that sets none."""
    outputs = {"default_ttl": "DefaultTtlSeconds", "ttl_cap": "TtlCapSeconds"}
    fallback = {"default_ttl": DEFAULT_TTL_SECONDS, "ttl_cap": DEFAULT_TTL_CAP_SECONDS}
    for attribute, output in outputs.items():
        if getattr(args, attribute) is not None:
            continue
        value = fallback[attribute]
        if deployment is not None and deployment.stack:
            text = deployment.stack_output(output)
            if not text.isdigit():
                raise CommandError(
                    f"stack output {output} is not a number of seconds",
                    error=INVALID_INPUT,
                    input="--stack",
                )
            value = int(text)
        setattr(args, attribute, value)


def _policies(
    args: argparse.Namespace, deployment: Deployment | None
) -> tuple[list[Policy], str, list[str]]:
    """(policies, where they came from, ids of stored documents the exchange skips)."""
    if deployment is None:
        policies = [load_policy_file(path, ttl_cap=args.ttl_cap) for path in args.policy_file]
        ids = [p.id for p in policies]
        if len(set(ids)) != len(ids):
            shared = sorted({i for i in ids if ids.count(i) > 1})
            raise CommandError(
                f"--policy-file: two documents share the id {shared[0]!r}",
                error=INVALID_INPUT,
                input="--policy-file",
            )
        return policies, f"{len(policies)} file(s)", []
    with policy_table(deployment) as store:
        policies, invalid = store.load_all()
    return policies, f"table {deployment.table}", invalid


def _tags(values: list[str]) -> Mapping[str, str]:
    tags = {}
    for value in values:
        key, sep, tag_value = value.partition("=")
        if not sep or not key:
            raise UsageError(
                f"--instance-tag {value!r}: expected KEY=VALUE", input="--instance-tag"
            )
        tags[key] = tag_value
    return tags


def _render(report: dict[str, Any], result: Explanation | None, error: TokexError | None) -> str:
    caller = report["caller"]
    shown_id = caller["principal_id"] or "not given"
    scopes = report["requested_scopes"]
    out = [
        f"principal  {caller['principal']}  (principal id: {shown_id})",
        f"audience   {report['audience']}",
        f"scopes     {' '.join(scopes) if scopes else '(none requested: all the policy grants)'}",
    ]
    if report["instance"]:
        i = report["instance"]
        out.append(
            f"instance   {i['id']} in {i['availability_zone']}, account {i['account']}, "
            f"{i['image_id']}, {i['instance_type']}"
        )
    invalid = report["invalid_policies"]
    skipped = f" ({len(invalid)} invalid, skipped: {', '.join(invalid)})" if invalid else ""
    out += [f"policies   {report['source']}{skipped}", ""]
    if result is not None:
        out.append(result.render())
    elif error is not None:
        out.append(f"=> refused ({error.error}) before any policy: {error.description}")
    if report.get("claims"):
        out.append(f"   claims {json.dumps(report['claims'], sort_keys=True)}")
    out += [f"note: {note}" for note in report["notes"]]
    out.append("(nothing was issued)")
    return "\n".join(out)
