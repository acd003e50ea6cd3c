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
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tokex.cli.deployment import aws_client, resolve_deployment, stack_output
from tokex.cli.main import CommandError
from tokex.cli.policy import load_policy_file, policy_table, read_text
from tokex.errors import InvalidGrant, InvalidRequest, TokexError
from tokex.evidence.identity import CallerIdentity, InstanceIdentity
from tokex.policy.globs import principal_matches
from tokex.policy.model import MAX_TTL_CAP_SECONDS, MIN_TTL_SECONDS, Policy
from tokex.settings import DEFAULT_TTL_CAP_SECONDS, DEFAULT_TTL_SECONDS, KNOWN_PARTITIONS

if TYPE_CHECKING:
    from tokex.policy.evaluate import Explanation

# Instance identity signature variants (evidence/instance_identity.py VARIANTS).
SIGNATURE_VARIANTS = ("rsa2048", "pkcs7", "signature")
_PARTITION = "|".join(KNOWN_PARTITIONS)
# The shapes STS's answer can have (evidence/sts.py), plus a role ARN as IAM writes it.
_NAME = r"[\w+=,.@-]"
_PATH = r"(?:[\x21-\x2e\x30-\x7e]+/)*"
_ROLE = re.compile(rf"arn:({_PARTITION}):iam::([0-9]{{12}}):role/({_PATH})({_NAME}{{1,64}})", re.A)
_ASSUMED_ROLE = re.compile(
    rf"arn:({_PARTITION}):sts::([0-9]{{12}}):assumed-role/({_NAME}{{1,64}})/({_NAME}{{2,64}})", re.A
)
_USER = re.compile(rf"arn:({_PARTITION}):iam::([0-9]{{12}}):user/{_PATH}{_NAME}{{1,64}}", re.A)
_PRINCIPAL_ID = re.compile(r"[A-Za-z0-9]{1,128}")
_ACCOUNT = re.compile(r"[0-9]{12}")
# token_request.py's rules for what a caller may request.
_AUDIENCE = re.compile(r"[A-Za-z0-9._:/-]{1,256}")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
# Session name used for a plain role ARN: any role session of that role maps the same way.
EXPLAIN_SESSION = "tokex-explain"
# Stands in for an unknown principal id: valid in an STS UserId, never in a policy.
_UNKNOWN_ID = "-"


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

    _ttls_from_stack(args)
    for name, value in (("--default-ttl", args.default_ttl), ("--ttl-cap", args.ttl_cap)):
        if not MIN_TTL_SECONDS <= value <= MAX_TTL_CAP_SECONDS:
            raise CommandError(f"{name} must be {MIN_TTL_SECONDS}..{MAX_TTL_CAP_SECONDS}", 2)
    if args.default_ttl > args.ttl_cap:
        raise CommandError("--default-ttl must not exceed --ttl-cap", exit_code=2)
    if not _AUDIENCE.fullmatch(args.audience):
        raise CommandError("--audience must be 1-256 characters of A-Za-z0-9._:/-", 2)
    scopes = requested_scopes(args.scope)
    caller, notes = caller_from_principal(args.principal, args.account, args.principal_id)
    tags = _tags(args.instance_tag)
    policies, source, invalid = _policies(args)
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
    report: dict[str, Any] = {
        "decision": "refuse" if error else "allow",
        "policy": decision.policy.id if decision else None,
        "error": error.error if error else None,
        "error_description": error.description if error else None,
        "reason": error.reason if error else None,
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


def caller_from_principal(
    principal: str, account: str | None, principal_id: str | None
) -> tuple[CallerIdentity, list[str]]:
    """The CallerIdentity a real exchange would get from STS for this principal."""
    from tokex.evidence.sts import _caller_identity

    notes: list[str] = []
    if account is not None and not _ACCOUNT.fullmatch(account):
        raise CommandError("--account must be 12 digits", exit_code=2)
    if principal.startswith(("role/", "user/")):
        if account is None:
            raise CommandError(f"--principal {principal} needs --account", exit_code=2)
        principal = f"arn:aws:iam::{account}:{principal}"
    if principal_id is not None and not _PRINCIPAL_ID.fullmatch(principal_id):
        raise CommandError("--principal-id must be 1-128 of A-Za-z0-9 (AROA…/AIDA…)", 2)
    unique_id = principal_id or _UNKNOWN_ID
    if role := _ROLE.fullmatch(principal):
        partition, acct, path, name = role.groups()
        if path:
            notes.append(
                f"role path /{path} dropped: STS does not reveal it, the exchange sees role/{name}"
            )
        arn = f"arn:{partition}:sts::{acct}:assumed-role/{name}/{EXPLAIN_SESSION}"
        fields = {"Arn": arn, "UserId": f"{unique_id}:{EXPLAIN_SESSION}", "Account": acct}
    elif assumed := _ASSUMED_ROLE.fullmatch(principal):
        partition, acct, _, session = assumed.groups()
        fields = {"Arn": principal, "UserId": f"{unique_id}:{session}", "Account": acct}
    elif user := _USER.fullmatch(principal):
        partition, acct = user.groups()
        fields = {"Arn": principal, "UserId": unique_id, "Account": acct}
    else:
        raise CommandError(
            "--principal must be arn:<partition>:iam::<account>:role/<name>, "
            "arn:<partition>:sts::<account>:assumed-role/<role>/<session> or "
            "arn:<partition>:iam::<account>:user/<name> (the exchange serves nothing else)",
            exit_code=2,
        )
    if account is not None and account != acct:
        raise CommandError(f"--account {account} differs from the principal's account", 2)
    # The forwarder's own mapping of GetCallerIdentity's answer (Arn, UserId, Account).
    return _caller_identity(fields, partition), notes


def requested_scopes(values: list[str]) -> tuple[str, ...] | None:
    """As the exchange parses `scope`: None when absent, distinct tokens in order."""
    from tokex.token_request import MAX_SCOPES

    tokens = [token for value in values for token in value.split()]
    if not tokens:
        return None
    if len(tokens) > MAX_SCOPES or not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        raise CommandError(f"--scope: at most {MAX_SCOPES} RFC 6749 scope tokens", 2)
    return tuple(dict.fromkeys(tokens))


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
        if variant is not None:
            raise CommandError(f"--{variant} needs --instance-document", exit_code=2)
        return None
    document = read_text(args.instance_document, "instance document", 4 * MAX_DOCUMENT_BYTES)
    if variant is not None:
        blob = read_text(getattr(args, variant), f"--{variant}", 4 * MAX_SIGNATURE_CHARS)
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


def _ttls_from_stack(args: argparse.Namespace) -> None:
    """TTLs not given on the command line: the stack's outputs (what its exchange uses),
    else the defaults of a deployment that sets none."""
    outputs = {"default_ttl": "DefaultTtlSeconds", "ttl_cap": "TtlCapSeconds"}
    fallback = {"default_ttl": DEFAULT_TTL_SECONDS, "ttl_cap": DEFAULT_TTL_CAP_SECONDS}
    for attribute, output in outputs.items():
        if getattr(args, attribute) is not None:
            continue
        value = fallback[attribute]
        if args.stack and not args.policy_file:
            cloudformation = aws_client("cloudformation", args.region, args.endpoint_url)
            text = stack_output(cloudformation, args.stack, output=output)
            if not text.isdigit():
                raise CommandError(f"stack output {output} is not a number of seconds")
            value = int(text)
        setattr(args, attribute, value)


def _policies(args: argparse.Namespace) -> tuple[list[Policy], str, list[str]]:
    """(policies, where they came from, ids of stored documents the exchange skips)."""
    if args.policy_file:
        if args.table or args.stack:
            raise CommandError("--policy-file replaces --table/--stack", exit_code=2)
        policies = []
        for path in args.policy_file:
            try:
                policies.append(load_policy_file(path, ttl_cap=args.ttl_cap))
            except ValueError as exc:  # PolicyValidationError
                raise CommandError(f"invalid policy {path}: {exc}", exit_code=2) from None
        ids = [p.id for p in policies]
        if len(set(ids)) != len(ids):
            raise CommandError("--policy-file: two documents share an id", exit_code=2)
        return policies, f"{len(policies)} file(s)", []
    deployment = resolve_deployment(args)
    with policy_table(deployment) as store:
        policies, invalid = store.load_all()
    return policies, f"table {deployment.table}", invalid


def _tags(values: list[str]) -> Mapping[str, str]:
    tags = {}
    for value in values:
        key, sep, tag_value = value.partition("=")
        if not sep or not key:
            raise CommandError(f"--instance-tag {value!r}: expected KEY=VALUE", exit_code=2)
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
