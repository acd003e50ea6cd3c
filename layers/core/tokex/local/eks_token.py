"""The demo EKS pod's service-account token, kept in a file as the kubelet keeps a
projected token: minted by the local EKS issuer (tokex.local.oidc_issuers) for the tokex
issuer's audience, valid one hour, replaced at 80 % of its lifetime while `tokex local`
runs (Kubernetes, "Service account token volume projection": the kubelet refreshes a token
older than 80 % of its TTL).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokex.local.oidc_issuers import LocalIssuer
from tokex.local.provision import (
    DEMO_EKS_NAMESPACE,
    DEMO_EKS_POD,
    DEMO_EKS_SERVICE_ACCOUNT,
)
from tokex.private_files import write_private

TOKEN_LIFETIME_SECONDS = 3600
REFRESH_AT = 0.8  # of the lifetime, as the kubelet does
# How often the wall clock is looked at: within this long of waking from a sleep the token
# is replaced if its time came meanwhile.
CHECK_SECONDS = 15.0
# The node the demo pod runs on: the demo EC2 instance (tokex.local.imds).
DEMO_NODE = "ip-10-0-0-10.ec2.internal"


class EksTokenFile:
    """The token file of one pod's service account: written before the constructor
    returns, then rewritten (atomically: a reader sees the old token or the new one) at
    `REFRESH_AT` of each token's lifetime until `stop`."""

    def __init__(
        self,
        path: Path,
        issuer: LocalIssuer,
        audience: str,
        *,
        lifetime_seconds: int = TOKEN_LIFETIME_SECONDS,
        namespace: str = DEMO_EKS_NAMESPACE,
        service_account: str = DEMO_EKS_SERVICE_ACCOUNT,
        pod: str = DEMO_EKS_POD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._issuer = issuer
        self._audience = audience
        self._lifetime = lifetime_seconds
        self._clock = clock
        self._namespace, self._service_account, self._pod = namespace, service_account, pod
        # Kubernetes object uids: fixed for the pod's life, whichever token it holds.
        self._uids = {name: str(uuid.uuid4()) for name in ("serviceaccount", "pod", "node")}
        self._stopped = threading.Event()
        self.write()
        self._thread = threading.Thread(target=self._refresh, name="eks-token", daemon=True)
        self._thread.start()

    def claims(self, now: int) -> dict[str, Any]:
        """A projected service-account token's claims (what kube-apiserver's TokenRequest
        puts in one bound to a pod)."""
        return {
            "aud": [self._audience],
            "exp": now + self._lifetime,
            "iat": now,
            "nbf": now,
            "iss": self._issuer.url,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": self._namespace,
                "node": {"name": DEMO_NODE, "uid": self._uids["node"]},
                "pod": {"name": self._pod, "uid": self._uids["pod"]},
                "serviceaccount": {
                    "name": self._service_account,
                    "uid": self._uids["serviceaccount"],
                },
            },
            "sub": f"system:serviceaccount:{self._namespace}:{self._service_account}",
        }

    def write(self) -> str:
        """Mint a token and replace the file with it (mode 0600); the token."""
        # Kubernetes service-account tokens carry `alg` and `kid` in their header, no `typ`.
        now = self._clock()
        token = self._issuer.sign(self.claims(int(now)), "RS256", typ=None)
        write_private(self.path, token)
        self._refresh_at = now + self._lifetime * REFRESH_AT
        return token

    def stop(self) -> None:
        self._stopped.set()

    def refresh_if_due(self) -> bool:
        """Replace the token once the wall clock passed 80 % of its lifetime: True if it
        did. Judged by the wall clock, which counts a laptop's sleep: a timer of the
        monotonic clock, which does not, left an expired token in the file after a resume."""
        if self._clock() < self._refresh_at:
            return False
        try:
            self.write()
        except OSError as err:  # the state directory went away: say so, try again later
            print(f"tokex local: cannot refresh {self.path}: {err}", flush=True)
            self._refresh_at = self._clock() + CHECK_SECONDS  # not 20 lines a second
            return False
        return True

    def _refresh(self) -> None:
        while not self._stopped.wait(self._until_next_check()):
            self.refresh_if_due()

    def _until_next_check(self) -> float:
        """Until the token's time, or CHECK_SECONDS if that is sooner (a sleep may pass it)."""
        return min(CHECK_SECONDS, max(0.05, self._refresh_at - self._clock()))
