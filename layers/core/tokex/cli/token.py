"""`tokex token`: the workload side. Prints an access token for an audience.

The evidence (`--evidence`): a GetCallerIdentity signed with the default AWS credential
chain (`sigv4`, the default, optionally with IMDS evidence), a JWT from
sts:GetWebIdentityToken (`aws-oif`, or `oif`), or the pod's projected service-account
token (`eks`): docs/contract.md "JWT evidence", tokex/client/evidence.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokex import identifiers
from tokex.cli.errors import (
    AWS_ERROR,
    UNREACHABLE,
    USAGE,
    WRITE_FAILED,
    CommandError,
    UsageError,
    escaped,
)
from tokex.cli.inputs import require_file
from tokex.cli.region import configured_region
from tokex.cli.request_arguments import check_audience, requested_scopes
from tokex.evidence.jwt_evidence import ALGORITHMS
from tokex.evidence.trusted_issuers import AWS_OIF, EKS
from tokex.printable import printable_json

if TYPE_CHECKING:
    from tokex.client.token_error import TokenError

ENDPOINT_VARIABLE = "TOKEX_ENDPOINT"
# The region to sign for when none is configured and no instance identity document names
# one: a workload of the aws partition then needs nothing but its credentials. A
# deployment that serves only aws-cn or aws-us-gov refuses its STS (as one whose stsRegions
# leave out us-east-1 does): there a workload sets AWS_REGION or sends instance evidence.
FALLBACK_REGION = "us-east-1"
SIGV4 = "sigv4"
# `oif` is short for `aws-oif` (tokex/client/evidence.py ALIASES).
EVIDENCE_CHOICES = (*identifiers.EVIDENCE_KINDS, "oif")
# For --help only, which loads no client: tokex/client/token_client.py DEFAULT_TIMEOUT
# (tests/unit/test_client_failover.py checks they agree).
DEFAULT_TIMEOUT = 10.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "token",
        help="exchange this workload's AWS identity for an access token",
        description="Signs sts:GetCallerIdentity with the default AWS credential chain and "
        "exchanges it at a tokex issuer. Prints the access token.",
    )
    parser.add_argument(
        "--endpoint",
        help=f"the tokex issuer's base URL, e.g. https://auth.example.com or "
        f"http://127.0.0.1:8787 (default: ${ENDPOINT_VARIABLE})",
    )
    parser.add_argument("--audience", required=True, help="the API the token is for")
    parser.add_argument("--scope", action="append", default=[], help="scope(s) to request")
    parser.add_argument(
        "--region",
        help="STS region to sign for, and the Region asked first when the issuer lists "
        "several (default: AWS_REGION, AWS_DEFAULT_REGION, the profile's region, the "
        f"instance identity document's with --instance-identity, else {FALLBACK_REGION})",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        help="the seconds the whole exchange may take: discovery and every Region tried "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--issuer", help="issuer to bind to (default: from discovery)")
    parser.add_argument(
        "--evidence",
        choices=EVIDENCE_CHOICES,
        default=SIGV4,
        help="what proves who this workload is: sigv4 = a GetCallerIdentity signed with its "
        "AWS credentials (the default); aws-oif (or oif) = a 60-second JWT from "
        "sts:GetWebIdentityToken on the region's STS endpoint, for this issuer only; eks = "
        "the pod's projected service-account token (--token-file)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="with --evidence eks: the projected service-account token, whose audience is "
        "the issuer URL (default: /var/run/secrets/tokex/serviceaccount/token)",
    )
    parser.add_argument(
        "--signing-algorithm",
        choices=ALGORITHMS[AWS_OIF],
        help="with --evidence aws-oif: what STS signs the JWT with (default: RS256, the "
        "cheapest for the exchange to verify)",
    )
    parser.add_argument(
        "--instance-identity",
        choices=("auto", "on", "off"),
        default="off",
        help="with --evidence sigv4: send EC2 instance identity evidence read from IMDSv2",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="reuse a token kept in DIR while it has more than 20%% of its lifetime left and the "
        "issuer's JWKS still lists its key (a JWKS that cannot be read does not stop it), and keep"
        " new ones there (files of mode 0600 per endpoint, audience, scopes, evidence and AWS "
        "access key, or service account and token file; DIR is made 0700 and refused if others may"
        " write to it); with --instance-identity auto, a token obtained without instance evidence "
        "is reused only once a later run's IMDS read gave none either; also a multi-Region "
        "issuer's discovery document, to fail over with while discovery is down. Default: no "
        "cache, nothing written",
    )
    parser.add_argument("--json", action="store_true", help="print the whole JSON response")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr what evidence is sent"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tokex.client.token_client import TokenError, check_endpoint
    from tokex.client.token_error import AWS_ERROR, NO_CREDENTIALS

    # The command line first (exit 2), before any network call.
    given, source = args.endpoint, "--endpoint"
    if not given:
        given, source = os.environ.get(ENDPOINT_VARIABLE), ENDPOINT_VARIABLE
    if not given:
        raise UsageError(
            f"no endpoint: pass --endpoint URL (the issuer URL) or set {ENDPOINT_VARIABLE}",
            error=USAGE,
            input="--endpoint",
        )
    try:
        endpoint = check_endpoint(given)
    except TokenError as err:
        # The library says "endpoint 'URL' ..."; here the flag or variable is named.
        raise UsageError(f"{source} {str(err).removeprefix('endpoint ')}", input=source) from None
    _check_issuer(args.issuer)
    check_audience(args.audience)
    scopes = requested_scopes(args.scope) or ()
    timeout = _timeout(args.timeout)
    evidence = _evidence(args)
    # An eks pod needs no AWS configuration at all (an explicit --region still orders the
    # Regions of a multi-Region issuer; else the client reads AWS_REGION if it is set).
    # None: the client signs for the session's region, else the instance identity
    # document's, else FALLBACK_REGION, as --help says.
    if evidence == EKS:
        region = configured_region(args.region) if args.region is not None else None
    else:
        region = configured_region(args.region)
    cache_dir = _cache_dir(args.cache_dir) if args.cache_dir else None
    try:
        response = _token_response(args, endpoint, scopes, evidence, region, cache_dir, timeout)
    except TokenError as err:
        message = str(err)
        if err.error == UNREACHABLE and _is_plain_loopback(endpoint):
            message += _local_hint(endpoint, err)
        # What failed on this machine, before any request (the credentials), names no input.
        local = err.url is None and err.error in (NO_CREDENTIALS, AWS_ERROR)
        raise CommandError(
            message, error=err.error, input=None if local else err.url or "--endpoint"
        ) from None
    print(printable_json(response, indent=2) if args.json else response["access_token"])
    return 0


def _check_issuer(issuer: str | None) -> None:
    """--issuer: an issuer identifier (tokex/issuer_url.py), which the exchange compares
    byte for byte with its own: any other value could never be bound to (and one that is
    not ASCII text cannot even go into the signed request's header)."""
    from tokex.client.endpoint import redacted
    from tokex.issuer_url import issuer_url_problem

    if issuer is not None and (problem := issuer_url_problem(issuer, allow_http_loopback=True)):
        raise UsageError(
            f"--issuer {redacted(issuer)!r} {problem}: give the issuer URL as the "
            "deployment's discovery document names it, e.g. https://auth.example.com",
            input="--issuer",
        )


def _local_hint(endpoint: str, err: TokenError) -> str:
    """Why a `tokex local` endpoint's exchange could not reach something: the endpoint
    itself is down, or the shell's AWS settings are not this run's demo ones (STS of an
    earlier run, or AWS's own: workload.env not sourced, or sourced before a restart).
    Down only when its connection was refused: a timeout is an endpoint that is there but
    slow, and a budget spent before any request (loading credentials) says nothing of it."""
    import errno
    import urllib.parse

    if err.url is None or (
        urllib.parse.urlsplit(err.url).netloc == urllib.parse.urlsplit(endpoint).netloc
    ):
        # The client's words for a refused connection: its socket error's strerror.
        refused = str(err).endswith(f": {os.strerror(errno.ECONNREFUSED)}")
        return " (is `tokex local` running? it prints the endpoint it serves)" if refused else ""
    return (
        " (the endpoint is a `tokex local`: source the workload.env of its current run;"
        " each start writes new ones)"
    )


def _is_plain_loopback(endpoint: str) -> bool:
    """An http endpoint on this machine: only `tokex local` serves one."""
    import urllib.parse

    from tokex.client.endpoint import is_loopback

    parts = urllib.parse.urlsplit(endpoint)
    return parts.scheme == "http" and is_loopback(parts.hostname or "")


def _timeout(value: str | None) -> float:
    """--timeout: a positive number of seconds up to an hour (exit 2 otherwise), the
    client's rule."""
    from tokex.client.token_client import DEFAULT_TIMEOUT as default
    from tokex.client.token_client import MAX_TIMEOUT, check_timeout

    if value is None:
        return default
    try:
        return check_timeout(float(value))
    except ValueError:
        raise UsageError(
            f"--timeout {value!r}: must be a positive number of seconds, at most "
            f"{MAX_TIMEOUT:g}, e.g. 10 or 2.5",
            input="--timeout",
        ) from None


def _evidence(args: argparse.Namespace) -> str:
    """The kind of evidence; the flags that go with another kind are refused, not ignored
    (exit 2). Sets `args.token_file` for eks (a missing file is exit 2 too)."""
    from tokex.client.evidence import ALIASES, DEFAULT_TOKEN_FILE

    evidence = ALIASES.get(args.evidence, args.evidence)
    only_with = (
        # IMDS evidence is bound to the signed request's caller (docs/contract.md).
        ("--instance-identity", args.instance_identity != "off", SIGV4),
        ("--token-file", args.token_file is not None, EKS),
        ("--signing-algorithm", args.signing_algorithm is not None, AWS_OIF),
    )
    for flag, given, kind in only_with:
        if given and evidence != kind:
            raise UsageError(
                f"{flag} goes with --evidence {kind} only, not --evidence {args.evidence}",
                error=USAGE,
                input=flag,
            )
    if evidence == EKS:
        args.token_file = args.token_file or DEFAULT_TOKEN_FILE
        require_file(
            args.token_file,
            label="--token-file",
            missing_hint=" (mount the pod's projected service-account token there: "
            'docs/deploy.md "JWT evidence: trusted issuers")',
        )
    return evidence


def _token_response(
    args: argparse.Namespace,
    endpoint: str,
    scopes: Sequence[str],
    evidence: str,
    region: str | None,
    cache_dir: Path | None,
    timeout: float,
) -> dict[str, Any]:
    """From the cache directory when it holds a fresh token for this request, else from
    the token endpoint (kept in the cache directory when there is one)."""
    from tokex.cli.region import aws_session
    from tokex.client import disk_cache
    from tokex.client.evidence import read_token_file, token_subject
    from tokex.client.token_client import aws_credentials, request_token

    session = None if evidence == EKS else aws_session()
    # The cache keys of this request: one (None), or with `auto` one per what the IMDS read
    # gave (disk_cache.INSTANCE_EVIDENCE_STATES).
    keys: dict[str | None, dict[str, Any]] = {}
    if cache_dir is not None:
        if session is not None:
            keep_role_sessions(session, cache_dir / ROLE_SESSIONS_DIR)
        if session is None:  # eks: the service account the token names
            principal = token_subject(read_token_file(args.token_file))
        else:
            principal = aws_credentials(session).access_key
        fields: dict[str, Any] = {
            "endpoint": endpoint,
            "issuer": args.issuer,
            "audience": args.audience,
            "scopes": scopes,
            "evidence": evidence,
            "instance_identity": args.instance_identity,
            "principal": principal,
            "token_file": args.token_file,
        }
        # With `auto`, a token obtained while IMDS gave no evidence (off EC2; on EC2, an
        # IMDS timeout or refusal) may lack what an instance policy grants. Kept under the
        # same key as one with evidence, and served without reading IMDS, one IMDS timeout
        # kept the workload on the lesser token for up to 80 % of its lifetime after IMDS
        # answered again. Not kept at all, it would cost every run off EC2 (where IMDS
        # never answers) an IMDS timeout and an exchange; and only an IMDS read can tell
        # the two apart. So such a token is kept as `missed` and served only by a run
        # whose own IMDS read gives nothing either, which keeps it as `missed again`: that
        # key, as the one with evidence, is served without reading IMDS. One IMDS failure
        # costs the next run an IMDS read (on EC2: the evidence, and a token with it); off
        # EC2 each token costs two IMDS reads (the run that gets it and the next), not one
        # per run, and no extra exchange.
        if args.instance_identity == "auto":
            for state in disk_cache.INSTANCE_EVIDENCE_STATES:
                keys[state] = disk_cache.cache_key(**fields, instance_evidence=state)
        else:
            keys[None] = disk_cache.cache_key(**fields)
    # --timeout bounds the check of a cached token's key, the IMDS reads and the exchange
    # together; the check and the reads each get at most half of what is left, so that a
    # dropped token, or `auto` without IMDS, still has time for the exchange.
    ends = time.monotonic() + timeout
    published = _PublishedKeys(args.issuer or endpoint, timeout / 2, args.verbose)
    if cache_dir is not None:
        served = (None, disk_cache.EVIDENCE_SENT, disk_cache.EVIDENCE_MISSED_AGAIN)
        for served_state in served:  # without reading IMDS
            if served_state in keys:
                cached = _cached(cache_dir, keys[served_state], args.verbose, published)
                if cached is not None:
                    return cached
    sent = time.time()  # the cached lifetime counts from before it was asked for
    sent_boot = disk_cache.boot_clock() if keys else None
    instance_evidence = _instance_evidence(args, _left(ends) / 2, session)
    if cache_dir is not None and keys and instance_evidence is None:
        missed = keys.get(disk_cache.EVIDENCE_MISSED)
        if missed is not None and (cached := _cached(cache_dir, missed, args.verbose, published)):
            # IMDS gave nothing in two runs: off EC2, most likely (see above).
            again = keys[disk_cache.EVIDENCE_MISSED_AGAIN]
            try:
                missed_file = cache_dir / disk_cache.cache_file_name(missed)
                again_file = cache_dir / disk_cache.cache_file_name(again)
                disk_cache.copy_cached(missed_file, again_file, key=again)
            except OSError as err:  # the token is good: serve it, say why it was not kept
                print(f"tokex token: --cache-dir: not cached: {err}", file=sys.stderr)
            return cached
    left = _left(ends)
    kept_in = None if args.issuer else cache_dir  # --issuer: no discovery at all
    with _attempts_told(args.verbose), _discovery_kept(kept_in, endpoint):
        response = request_token(
            endpoint,
            args.audience,
            scopes=scopes,
            region=region,
            issuer=args.issuer,
            instance_evidence=instance_evidence,
            session=session,
            evidence=evidence,
            token_file=args.token_file,
            signing_algorithm=args.signing_algorithm,
            timeout=left,
        )
    if cache_dir is not None and keys:
        if None in keys:
            key = keys[None]
        elif instance_evidence is not None:
            key = keys[disk_cache.EVIDENCE_SENT]
        else:
            key = keys[disk_cache.EVIDENCE_MISSED]
        cache_file = cache_dir / disk_cache.cache_file_name(key)
        try:
            disk_cache.write_cached(cache_file, response, key=key, now=sent, boot=sent_boot)
        except OSError as err:  # the token is good: print it, say why it was not kept
            print(f"tokex token: --cache-dir: not cached: {err}", file=sys.stderr)
        # Expired tokens of earlier role sessions (docs/contract.md "Command line").
        with contextlib.suppress(OSError):
            disk_cache.prune_expired(cache_file.parent)
    return response


def _left(ends: float) -> float:
    """The seconds left until `ends` (monotonic clock); a spent budget still starts nothing
    that would not fail at once."""
    return max(ends - time.monotonic(), 0.001)


def _cached(
    cache_dir: Path, key: dict[str, Any], verbose: bool, published: _PublishedKeys
) -> dict[str, Any] | None:
    """The fresh token `cache_dir` keeps for `key`, if any (-v says which file), unless the
    issuer no longer publishes the key that signed it: then the file is removed, and the
    run gets a new token."""
    from tokex.client import disk_cache

    cache_file = cache_dir / disk_cache.cache_file_name(key)
    cached = disk_cache.read_cached(cache_file)
    if cached is None:
        return None
    if not published.signed(cached["access_token"]):
        if verbose:
            print(
                f"tokex token: cached token in {cache_file} is signed by a key the issuer no "
                "longer publishes: getting a new one",
                file=sys.stderr,
            )
        with contextlib.suppress(OSError):  # the exchange's write replaces it anyway
            cache_file.unlink()
        return None
    if verbose:
        print(f"tokex token: cached token from {cache_file}", file=sys.stderr)
    return cached


class _PublishedKeys:
    """Whether a cached token is signed by a key the issuer publishes now. The cache key
    (endpoint, audience, principal...) stays the same when the issuer's keys change: each
    start of `tokex local` makes new ones, an emergency rotation removes one from the JWKS;
    a token of the old key, served for up to 80 % of its lifetime, would be refused by
    every verifier. So the issuer's JWKS is read once per run that finds a cached token
    (one small GET: `{iss}/.well-known/jwks.json`, which docs/contract.md fixes for every
    tokex issuer, so `--issuer` runs, which read no discovery, are checked too), within
    `timeout`, and a token whose `kid` it does not list is a miss.

    A JWKS that cannot be read (no answer, an error status, no JWKS) serves the cached
    token as before: the cache must not turn a JWKS outage into an exchange per run (the
    issuer that cannot serve its JWKS most likely cannot exchange either, and its
    verifiers, that fetch the same JWKS, keep the keys they have), nor stop serving the
    tokens it keeps while the workload is cut off from the issuer. A key is published
    before it signs (docs/deploy.md "Key rotation"), so a fresh token's `kid` is listed;
    one signing before it is published (a forced rotation) costs an exchange per run
    until the JWKS lists it, and its tokens verify nowhere until then either."""

    def __init__(self, issuer: str, timeout: float, verbose: bool) -> None:
        self._issuer = issuer
        self._timeout = timeout
        self._verbose = verbose
        self._kids: frozenset[str] | None = None
        self._read = False

    def signed(self, token: str) -> bool:
        """False when the JWKS was read and does not list the `kid` of `token` (a token
        that names none included: tokex's always do); True otherwise."""
        from tokex.client import disk_cache
        from tokex.client.token_client import TokenError

        if not self._read:  # at most once per run
            self._read = True
            try:
                self._kids = disk_cache.published_kids(self._issuer, timeout=self._timeout)
            except TokenError as err:
                if self._verbose:
                    print(
                        f"tokex token: cannot check the cached token's key: {err}",
                        file=sys.stderr,
                    )
        return self._kids is None or disk_cache.token_kid(token) in self._kids


@contextlib.contextmanager
def _discovery_kept(cache_dir: Path | None, endpoint: str) -> Iterator[None]:
    """With --cache-dir, the endpoint's discovery document kept between runs: an earlier
    run's is what this one, a fresh process, falls back on if discovery gets no usable
    answer (token_client.current_discovery; kept as older than anything this run reads);
    the one this run read is kept for the next, even when no Region gave a token, as long
    as it lists Regions (nothing to fail over between otherwise: no file)."""
    from tokex.client import disk_cache
    from tokex.client.token_client import LAST_GOOD_DISCOVERIES

    if cache_dir is None:
        yield
        return
    kept = disk_cache.read_discovery(cache_dir, endpoint)
    if kept is not None:
        LAST_GOOD_DISCOVERIES.keep(endpoint, kept, fetched_at=-math.inf)
    try:
        yield
    finally:
        read = LAST_GOOD_DISCOVERIES.last(endpoint)
        try:
            if read is not None and read.regions and read != kept:
                disk_cache.write_discovery(cache_dir, endpoint, read)
            elif read is not None and not read.regions and kept is not None:
                disk_cache.discovery_file(cache_dir, endpoint).unlink(missing_ok=True)
        except OSError as err:  # the run's outcome stands: say why it was not kept
            print(f"tokex token: --cache-dir: discovery not kept: {err}", file=sys.stderr)


# Where `--cache-dir` keeps the role credentials of assume-role, web-identity and SSO
# profiles, as the AWS CLI keeps them in ~/.aws/cli/cache.
ROLE_SESSIONS_DIR = "aws-role-sessions"
# A role session's JSON is about 2 KB (credentials, the assumed role, the expiry).
MAX_ROLE_SESSION_BYTES = 64 * 1024


def keep_role_sessions(session: Any, directory: Path) -> None:
    """Role credentials a profile gets by AssumeRole (or web identity, or SSO) kept in
    `directory` until they expire, as the AWS CLI keeps them: the same role session, so the
    same access key id and the same token file, serves every run. Each run had made a new
    role session: an STS call per run, and a token cache that never hit."""
    resolver = session._session.get_component("credential_provider")
    cache = _role_session_cache(directory)
    for name in ("assume-role", "assume-role-with-web-identity", "sso"):
        try:
            provider = resolver.get_provider(name)
        except ValueError:  # not in this botocore's chain
            continue
        if hasattr(provider, "cache"):
            provider.cache = cache


def _role_session_cache(directory: Path) -> Any:
    """botocore's JSONFileCache (what the AWS CLI uses) in a private directory, made a
    cache that never fails the command and never reads credentials another user could
    have put there: an entry that is not this user's own 0600 regular file (a planted
    file, a symlink), one it cannot read, or one without the credentials' shape (a file
    edited since, a directory where one should be), is a miss; a write it cannot make (a
    full disk, a file where the folder should be) keeps nothing and says so."""
    from botocore.utils import JSONFileCache, parse_timestamp

    from tokex.private_files import (
        UnsafeDirectory,
        open_private_dir,
        read_own_private,
        write_private,
    )

    def private_directory(*, make: bool) -> None:
        """Raises unless `directory` is this user's and no one else may write to it;
        made 0700 if missing and `make` (botocore made it with the umask's mode, maybe
        one others could write to)."""
        if not make and not directory.exists():
            raise FileNotFoundError(directory)
        open_private_dir(directory)

    class RoleSessionCache(JSONFileCache):  # type: ignore[misc]
        def __contains__(self, key: object) -> bool:
            try:
                self[key]
            except KeyError:
                return False
            return True

        def __getitem__(self, key: Any) -> Any:
            try:
                private_directory(make=False)
            except (UnsafeDirectory, OSError):
                raise KeyError(key) from None
            data = read_own_private(Path(self._convert_cache_key(key)), MAX_ROLE_SESSION_BYTES)
            try:
                entry = json.loads(data) if data is not None else None
            except (ValueError, RecursionError):
                raise KeyError(key) from None
            credentials = entry.get("Credentials") if isinstance(entry, dict) else None
            fields = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
            if not isinstance(credentials, dict) or not all(
                isinstance(credentials.get(name), str) for name in fields
            ):
                raise KeyError(key)
            try:  # as botocore reads it next, to compare with an aware "now"
                expires = parse_timestamp(credentials["Expiration"])
            except (ValueError, TypeError, OverflowError):
                raise KeyError(key) from None
            if expires.tzinfo is None:
                raise KeyError(key)
            return entry

        def __setitem__(self, key: Any, value: Any) -> None:
            try:  # mode 0600, atomically, never through a symlink
                private_directory(make=True)
                write_private(Path(self._convert_cache_key(key)), self._dumps(value))
            except (UnsafeDirectory, OSError) as err:
                print(f"tokex token: --cache-dir: role session not kept: {err}", file=sys.stderr)

    return RoleSessionCache(str(directory))


@contextlib.contextmanager
def _attempts_told(verbose: bool) -> Iterator[None]:
    """With -v, the client's account of the exchange on stderr, as the other -v lines:
    what evidence each attempt sends, for the Region it was made for (each Region tried
    and each failover, in a multi-Region deployment)."""
    if not verbose:
        yield
        return
    logger = logging.getLogger("tokex.client.token_client")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("tokex token: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # each attempt's lines are DEBUG (token_client.log)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _cache_dir(path: Path) -> Path:
    from tokex.private_files import UnsafeDirectory, open_private_dir

    try:
        return open_private_dir(path)
    except UnsafeDirectory as err:
        raise UsageError(f"--cache-dir {err}", input="--cache-dir") from None
    except OSError as err:
        raise CommandError(
            f"--cache-dir {path}: cannot create it: {err.strerror or err}",
            error=WRITE_FAILED,
            input="--cache-dir",
        ) from None


def _instance_evidence(args: argparse.Namespace, timeout: float, session: Any) -> str | None:
    """IMDS evidence per --instance-identity: `auto` proceeds without it (off EC2, or IMDS
    refused: -v says why), `on` requires it. Read within the IMDS timeout or `timeout`
    (half of --timeout), the shorter, from the IMDS the session's credentials come from."""
    if args.instance_identity == "off":
        return None
    from tokex.client.imds import (
        TIMEOUT_SECONDS,
        ImdsUnavailable,
        encode_instance_evidence,
        read_instance_identity,
    )

    try:
        evidence = read_instance_identity(timeout=min(TIMEOUT_SECONDS, timeout), session=session)
    except ImdsUnavailable as err:
        if args.instance_identity == "on":
            hint = ""
            if err.unreachable:  # nothing answered: not on EC2, or not reachable from here
                hop_limit = (
                    "; in a container on EC2, IMDSv2 answers only with the instance's"
                    " metadata hop limit at 2 or more: aws ec2 modify-instance-metadata-options"
                    " --http-put-response-hop-limit 2"
                    if err.timed_out
                    else ""
                )
                hint = f" (off EC2, use --instance-identity auto or off{hop_limit})"
            raise CommandError(
                f"--instance-identity on: {err}{hint}",
                # IMDS that answered with a refusal is no network error
                error=AWS_ERROR if err.status is not None else UNREACHABLE,
                input="--instance-identity",
            ) from None
        if args.verbose:
            why = escaped(str(err))  # it quotes IMDS's reason phrase: any text may come
            print(f"tokex token: no instance identity evidence ({why})", file=sys.stderr)
        return None
    if args.verbose:
        print("tokex token: sending instance identity evidence from IMDSv2", file=sys.stderr)
    return encode_instance_evidence(evidence)
