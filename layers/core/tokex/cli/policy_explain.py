"""`tokex policy explain`: the exchange's decision for a principal and audience, issuing
nothing.

The decision is reached by the exchange's own code: the principal goes through the mapping
the STS forwarder applies to GetCallerIdentity's answer (so an assumed-role session maps to
its path-less role, exactly as in a real exchange), an instance document through the
exchange's parser, verifier and caller binding, a JWT's claims (`--evidence aws-oif|eks
--claims FILE`) through the exchange's `evidence.jwt_claims.caller_from_claims`, and the
policies through `policy.evaluate.explain`, of which the exchange's `evaluate` is a thin
wrapper.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tokex import identifiers
from tokex.cli.deployment import Deployment, check_ttl_seconds, resolve_deployment
from tokex.cli.errors import (
    INVALID_INPUT,
    USAGE,
    CommandError,
    UsageError,
    escaped,
    printable_json,
)
from tokex.cli.inputs import read_text, require_file, whole_number
from tokex.cli.policy_document import load_policy_file
from tokex.cli.policy_table import policy_table
from tokex.cli.principal_arn import caller_from_principal
from tokex.cli.request_arguments import check_audience, requested_scopes
from tokex.errors import InvalidGrant, InvalidRequest, TokexError
from tokex.evidence.identity import AWS_OIF, EKS, SIGV4, CallerIdentity, InstanceIdentity
from tokex.policy.globs import principal_matches
from tokex.policy.model import MAX_TTL_CAP_SECONDS, Policy
from tokex.settings import DEFAULT_TTL_CAP_SECONDS, DEFAULT_TTL_SECONDS
from tokex.strict_json import StrictJsonError, loads_strict

if TYPE_CHECKING:
    from tokex.policy.evaluate import Explanation

# Instance identity signature variants (evidence/instance_identity.py VARIANTS).
SIGNATURE_VARIANTS = ("rsa2048", "pkcs7", "signature")
# The flags that describe a SigV4 caller; a JWT's caller comes from --claims alone.
SIGV4_FLAGS = ("principal", "account", "principal_id", "instance_document", "instance_tag")
# A decoded JWT payload is small; this bounds what is read.
MAX_CLAIMS_BYTES = 64 * 1024


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evidence",
        choices=identifiers.EVIDENCE_KINDS,
        default=SIGV4,
        help="the caller's kind of evidence (default sigv4: --principal; aws-oif and eks: "
        "--claims)",
    )
    parser.add_argument(
        "--principal",
        metavar="ARN",
        help="arn:aws:iam::ACCOUNT:role/NAME, arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION "
        "or arn:aws:iam::ACCOUNT:user/NAME (or role/NAME, user/NAME with --account)",
    )
    parser.add_argument(
        "--claims",
        metavar="FILE",
        help="the decoded JSON payload of the caller's JWT (--evidence aws-oif or eks); "
        "treated as verified",
    )
    parser.add_argument(
        "--cluster",
        metavar="ACCOUNT:REGION:CLUSTER",
        help="the EKS cluster the token's issuer is configured for (--evidence eks)",
    )
    parser.add_argument(
        "--at",
        metavar="TIME",
        help="when the exchange happens, for time windows: ISO 8601 with a zone, "
        "2026-11-30T12:00:00Z (default: now)",
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
        type=whole_number,
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
    cluster = _check_evidence_flags(args)
    at = _at(args.at)
    caller: CallerIdentity | None = None
    notes: list[str] = []
    if args.evidence == SIGV4:
        caller, notes = caller_from_principal(args.principal, args.account, args.principal_id)
        if args.principal_id is None:
            # The mapping needed a stand-in id for STS's UserId; evaluation is to know
            # there is none, and say so of a policy restricted by principal_ids.
            caller = dataclasses.replace(caller, principal_id="")
    tags = _tags(args.instance_tag)
    _check_files(args)
    claims = None if args.claims is None else _read_claims(args.claims)
    # One DescribeStacks with --stack, for the table and the TTLs.
    deployment = None if args.policy_file else resolve_deployment(args)
    _ttls_from_stack(args, deployment)
    if args.default_ttl > args.ttl_cap:
        raise UsageError(
            f"--default-ttl {args.default_ttl} exceeds the TTL cap {args.ttl_cap} (--ttl-cap)",
            input="--default-ttl",
        )
    policies, source, invalid = _policies(args, deployment)
    if (
        caller is not None
        and args.principal_id is None
        and any(
            p.principal_ids
            and any(principal_matches(g, caller.principal_arn) for g in p.principals)
            for p in policies
        )
    ):
        notes.append("no --principal-id: policies restricted by principal_ids do not apply")
    if not tags and any(p.instance and p.instance.tags for p in policies):
        notes.append("tag conditions need the instance's tags: give --instance-tag KEY=VALUE")
    if args.at is None and any(p.conditions and p.conditions.time_window for p in policies):
        notes.append("time windows judged at the current time: give --at TIME for another")
    instance = None
    try:
        if claims is not None:
            caller = _caller_from_claims(args.evidence, claims, cluster, notes)
        assert caller is not None
        instance = _instance(args, caller, notes)
    except (InvalidGrant, InvalidRequest) as refusal:  # the exchange refuses before policies
        result = None
        error: TokexError | None = refusal
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
            now=at.timestamp(),
        )
        error = result.error
    decision = result.decision if result else None
    issued_claims = None
    if decision is not None:
        # As the token carries them: a stored policy's reserved names are left out of it
        # (tokens/claims.py build_claims), so they are left out here too, and said so.
        from tokex.tokens.claims import reserved_claim

        left_out = [name for name in decision.claims if reserved_claim(name) is not None]
        issued_claims = {n: v for n, v in decision.claims.items() if n not in left_out}
        if left_out:
            notes.append(
                f"claims left out of the token (reserved names, stored before they were "
                f"reserved): {', '.join(map(repr, left_out))}; `tokex policy put` the policy "
                "without them"
            )
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
        "claims": issued_claims,
        "caller": _caller_report(caller, args),
        "audience": args.audience,
        "requested_scopes": None if scopes is None else list(scopes),
        "instance": None if instance is None else instance.claims(),
        "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": source,
        "invalid_policies": invalid,
        "policies": [dataclasses.asdict(line) for line in (result.lines if result else ())],
        "notes": notes,
    }
    if args.json:
        print(printable_json(report, indent=2))
    else:
        show_time = args.at is not None or any(
            p.conditions and p.conditions.time_window for p in policies
        )
        print(_render(report, result, error, show_time=show_time))
    return 0


def _check_evidence_flags(args: argparse.Namespace) -> tuple[str, str, str] | None:
    """Each kind of evidence with its own flags; the --cluster of --evidence eks, parsed."""
    if args.evidence == SIGV4:
        if args.principal is None:
            raise UsageError(
                "--principal is required with --evidence sigv4 (a JWT caller: --evidence "
                "aws-oif or eks, with --claims FILE)",
                error=USAGE,
                input="--principal",
            )
        for flag in ("claims", "cluster"):
            if getattr(args, flag) is not None:
                raise UsageError(
                    f"--{flag} describes a JWT caller: give --evidence aws-oif or eks",
                    error=USAGE,
                    input=f"--{flag}",
                )
        return None
    for flag in (*SIGV4_FLAGS, *SIGNATURE_VARIANTS):
        if getattr(args, flag) not in (None, []):
            name = "--" + flag.replace("_", "-")
            raise UsageError(
                f"{name} describes a SigV4 caller; with --evidence {args.evidence} the caller "
                "comes from --claims",
                error=USAGE,
                input=name,
            )
    if args.claims is None:
        raise UsageError(
            f"--evidence {args.evidence} needs --claims FILE (the token's decoded payload)",
            error=USAGE,
            input="--claims",
        )
    if args.evidence == AWS_OIF:
        if args.cluster is not None:
            raise UsageError("--cluster is for --evidence eks", error=USAGE, input="--cluster")
        return None
    if args.cluster is None:
        raise UsageError(
            "--evidence eks needs --cluster ACCOUNT:REGION:CLUSTER (the token names none of "
            "them: the issuer's configuration does)",
            error=USAGE,
            input="--cluster",
        )
    parts = args.cluster.split(":")
    account, region, name = parts if len(parts) == 3 else ("", "", "")
    if (
        not identifiers.is_account_id(account)
        or not identifiers.is_region(region)
        or not identifiers.EKS_CLUSTER_NAME.fullmatch(name)
    ):
        raise UsageError(
            f"--cluster {args.cluster!r}: expected ACCOUNT:REGION:CLUSTER "
            "(123456789012:us-east-1:prod)",
            input="--cluster",
        )
    return account, region, name


def _at(value: str | None) -> datetime:
    """--at: an ISO 8601 time with its zone (Z or an offset), as UTC; default now."""
    if value is None:
        return datetime.fromtimestamp(time.time(), UTC)
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            utc = parsed.astimezone(UTC)  # OverflowError: outside years 1..9999 in UTC
            # Evaluation reads it back from a timestamp, whose float rounding can carry
            # the last microsecond of 9999 into year 10000.
            datetime.fromtimestamp(utc.timestamp(), UTC)
            return utc
    except (ValueError, OverflowError, OSError):
        pass
    raise UsageError(
        f"--at {value!r}: expected an ISO 8601 time with a zone between years 1 and "
        "9999, e.g. 2026-11-30T12:00:00Z",
        input="--at",
    )


def _read_claims(path: str) -> Mapping[str, Any]:
    """A decoded JWT payload: one JSON object (not the compact token)."""
    text = read_text(path, label="--claims", limit=MAX_CLAIMS_BYTES)
    try:
        claims = loads_strict(text)
    except StrictJsonError as exc:
        hint = ""
        if text.strip().count(".") == 2 and text.lstrip().startswith("eyJ"):
            hint = " (it looks like the compact token: give its decoded payload)"
        raise CommandError(
            f"--claims {path}: {exc}{hint}", error=INVALID_INPUT, input=path
        ) from None
    if not isinstance(claims, dict):
        raise CommandError(
            f"--claims {path}: must be a JSON object (the token's payload)",
            error=INVALID_INPUT,
            input=path,
        )
    return claims


def _caller_from_claims(
    evidence: str,
    claims: Mapping[str, Any],
    cluster: tuple[str, str, str] | None,
    notes: list[str],
) -> CallerIdentity:
    """The exchange's mapping of a verified token's claims; the trusted issuer stands in
    for the configuration: the payload's own `iss` and `aws_account` (AWS OIF), or --cluster
    (EKS). Raises InvalidGrant as the exchange would."""
    from tokex.evidence.jwt_claims import STS_NAMESPACE, caller_from_claims
    from tokex.evidence.jwt_evidence import token_jti
    from tokex.evidence.trusted_issuers import TrustedIssuer

    issuer = claims.get("iss")
    shown = issuer if isinstance(issuer, str) else "(none)"
    if evidence == AWS_OIF:
        sts = claims.get(STS_NAMESPACE)
        account = sts.get("aws_account") if isinstance(sts, Mapping) else None
        if not (isinstance(account, str) and identifiers.is_account_id(account)):
            raise InvalidGrant(
                f"the token has no {STS_NAMESPACE} aws_account (12 digits): no trusted "
                "issuer could be configured for it",
                reason="oif_account",
            )
        trusted = TrustedIssuer(AWS_OIF, issuer if isinstance(issuer, str) else "", account)
        where = f"account {account}"
    else:
        assert cluster is not None
        account, region, name = cluster
        trusted = TrustedIssuer(EKS, issuer if isinstance(issuer, str) else "", *cluster)
        where = f"cluster {account}:{region}:{name}"
    notes.append(
        f"claims NOT verified: treated as a token whose signature, audience and lifetime "
        f"were verified, from issuer {shown} trusted for {where}"
    )
    token_jti(claims, evidence)  # checked before the claims are read, as the exchange does
    return caller_from_claims(trusted, claims)


def _caller_report(
    caller: CallerIdentity | None, args: argparse.Namespace
) -> dict[str, Any] | None:
    if caller is None:  # the token's claims were refused
        return None
    return {
        "principal": caller.principal_arn,
        "arn": caller.arn,
        "account": caller.account,
        "principal_id": args.principal_id,
        "session_name": caller.session_name,
        "evidence": caller.evidence,
        "workload": None if caller.workload is None else _present(caller.workload),
        "eks": None if caller.eks is None else dataclasses.asdict(caller.eks),
    }


def _present(attributes: Any) -> dict[str, Any]:
    """The attributes a token carried (absent and empty ones left out)."""
    return {
        name: dict(value) if isinstance(value, Mapping) else value
        for name, value in dataclasses.asdict(attributes).items()
        if value not in (None, (), {}, [])
    }


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
    require_file(args.claims, label="--claims")
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
            value = deployment.stack_seconds(output)
        setattr(args, attribute, value)


def _policies(
    args: argparse.Namespace, deployment: Deployment | None
) -> tuple[list[Policy], str, list[str]]:
    """(policies, where they came from, ids of stored documents the exchange skips)."""
    if deployment is None:
        # Judged as the exchange judges stored documents (against the largest cap; the
        # deployment's --ttl-cap only caps the TTL granted), not refused for a TTL it caps.
        policies = [
            load_policy_file(path, ttl_cap=MAX_TTL_CAP_SECONDS) for path in args.policy_file
        ]
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


def _render(
    report: dict[str, Any],
    result: Explanation | None,
    error: TokexError | None,
    *,
    show_time: bool,
) -> str:
    caller = report["caller"]
    scopes = report["requested_scopes"]
    if caller is None:
        out = ["principal  (none: the exchange refuses the token's claims)"]
    elif caller["evidence"] == SIGV4:
        shown_id = caller["principal_id"] or "not given"
        out = [f"principal  {caller['principal']}  (principal id: {shown_id})"]
    else:
        pod = caller["eks"] and caller["eks"].get("pod")
        more = f", pod {pod}" if pod else ""
        out = [f"principal  {caller['principal']}  (evidence: {caller['evidence']}{more})"]
        if caller["workload"]:
            out.append(f"workload   {json.dumps(caller['workload'], ensure_ascii=True)}")
    out += [
        f"audience   {report['audience']}",
        f"scopes     {' '.join(scopes) if scopes else '(none requested: all the policy grants)'}",
    ]
    if show_time:
        out.append(f"time       {report['at']}")
    if report["instance"]:
        i = report["instance"]
        out.append(
            f"instance   {i['id']} in {i['availability_zone']}, account {i['account']}, "
            f"{i['image_id']}, {i['instance_type']}"
        )
    invalid = report["invalid_policies"]
    skipped = f" ({len(invalid)} invalid: {', '.join(map(escaped, invalid))})" if invalid else ""
    out += [f"policies   {report['source']}{skipped}", ""]
    if result is not None:
        out.append(result.render(shown=escaped))
    elif error is not None:
        out.append(f"=> refused ({error.error}) before any policy: {escaped(error.description)}")
    if report.get("claims"):
        out.append(f"   claims {json.dumps(report['claims'], sort_keys=True)}")
    # A note may quote the claims (the issuer): text an untrusted token chose.
    out += [f"note: {escaped(note)}" for note in report["notes"]]
    out.append("(nothing was issued)")
    return "\n".join(out)
