"""The JWT issuers an exchange trusts (docs/contract.md "JWT evidence"): configuration
only (CDK context `trustedIssuers`, the exchange's TOKEX_TRUSTED_ISSUERS), never the token.

Each issuer is bound by configuration to what its tokens cannot be trusted to say alone:
an `aws-oif` issuer to its account (the token's `aws_account` must match), an `eks`
issuer to its cluster, Region and account (the token names none of them).

Pure: the standard library only, so the CDK app validates the same way at synth.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokex import identifiers
from tokex.issuer_url import issuer_url_problem
from tokex.strict_json import StrictJsonError, loads_strict

AWS_OIF = "aws-oif"
EKS = "eks"
MAX_TRUSTED_ISSUERS = 50
_KEYS = {
    AWS_OIF: frozenset({"kind", "issuer", "account"}),
    EKS: frozenset({"kind", "issuer", "account", "region", "cluster"}),
}


class TrustedIssuerError(ValueError):
    """The trusted-issuer configuration is invalid; the message names the entry and field."""


@dataclass(frozen=True)
class TrustedIssuer:
    kind: str  # AWS_OIF or EKS
    issuer: str  # the exact `iss` of its tokens
    account: str
    region: str | None = None  # EKS only
    cluster: str | None = None  # EKS only

    def to_document(self) -> dict[str, str]:
        doc = {"kind": self.kind, "issuer": self.issuer, "account": self.account}
        if self.kind == EKS:
            assert self.region is not None and self.cluster is not None
            doc.update(region=self.region, cluster=self.cluster)
        return doc


@dataclass(frozen=True)
class TrustedIssuers:
    """The configured issuers, looked up by exact `iss`."""

    issuers: tuple[TrustedIssuer, ...] = ()

    def get(self, issuer: object) -> TrustedIssuer | None:
        if not isinstance(issuer, str):
            return None
        for trusted in self.issuers:
            if trusted.issuer == issuer:
                return trusted
        return None

    def __bool__(self) -> bool:
        return bool(self.issuers)

    def to_json(self) -> str:
        """The TOKEX_TRUSTED_ISSUERS value (compact, stable)."""
        return json.dumps([issuer.to_document() for issuer in self.issuers], separators=(",", ":"))


def parse_trusted_issuers(
    value: str | Iterable[Any], *, allow_http_loopback: bool = False, own_issuer: str = ""
) -> TrustedIssuers:
    """A JSON list (or the list itself) of `{"kind", "issuer", "account"[, "region",
    "cluster"]}` objects. Issuer URLs are https (plain http on loopback only in local mode,
    `allow_http_loopback`), distinct, and never tokex's own issuer (`own_issuer`): its
    access tokens are not evidence."""
    if isinstance(value, str):
        if not value.strip():
            return TrustedIssuers()
        try:
            value = loads_strict(value)
        except StrictJsonError:  # nested too deep, or a key given twice, included
            raise TrustedIssuerError("trustedIssuers is not valid JSON") from None
    if not isinstance(value, list | tuple):
        raise TrustedIssuerError("trustedIssuers must be a list of objects")
    if len(value) > MAX_TRUSTED_ISSUERS:
        raise TrustedIssuerError(f"trustedIssuers: at most {MAX_TRUSTED_ISSUERS} issuers")
    issuers = tuple(
        _issuer(entry, f"trustedIssuers[{index}]", allow_http_loopback)
        for index, entry in enumerate(value)
    )
    seen: set[str] = set()
    for index, issuer in enumerate(issuers):
        if issuer.issuer in seen:
            raise TrustedIssuerError(f"trustedIssuers[{index}].issuer: listed twice")
        if own_issuer and issuer.issuer == own_issuer:
            raise TrustedIssuerError(
                f"trustedIssuers[{index}].issuer: tokex's own issuer; its access tokens are"
                " never evidence"
            )
        seen.add(issuer.issuer)
    return TrustedIssuers(issuers)


def _issuer(entry: object, where: str, allow_http_loopback: bool) -> TrustedIssuer:
    if not isinstance(entry, Mapping):
        raise TrustedIssuerError(f"{where} must be an object")
    kind = entry.get("kind")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise TrustedIssuerError(f"{where}.kind must be one of {', '.join(_KEYS)}")
    for key in entry:
        if key not in _KEYS[kind]:
            raise TrustedIssuerError(f"{where}.{str(key)[:64]}: unknown key for kind {kind}")
    issuer = _text(entry, "issuer", where)
    _check_issuer_url(issuer, f"{where}.issuer", allow_http_loopback)
    account = _text(entry, "account", where)
    if not identifiers.is_account_id(account):
        raise TrustedIssuerError(f"{where}.account must be a 12-digit account id")
    if kind == AWS_OIF:
        return TrustedIssuer(AWS_OIF, issuer, account)
    region = _text(entry, "region", where)
    if not identifiers.is_region(region):
        raise TrustedIssuerError(f"{where}.region {region[:64]!r} is not a region name")
    cluster = _text(entry, "cluster", where)
    if not identifiers.EKS_CLUSTER_NAME.fullmatch(cluster):
        raise TrustedIssuerError(f"{where}.cluster {cluster[:128]!r} is not an EKS cluster name")
    return TrustedIssuer(EKS, issuer, account, region, cluster)


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise TrustedIssuerError(f"{where}.{key} is required (a string)")
    return value


def _check_issuer_url(issuer: str, where: str, allow_http_loopback: bool) -> None:
    problem = issuer_url_problem(issuer, allow_http_loopback=allow_http_loopback)
    if problem is not None:
        raise TrustedIssuerError(f"{where} {problem}")
