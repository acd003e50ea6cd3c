"""Which pinned AWS instance identity certificates expire within five years: a reminder
to refresh the copies from the AWS page (layers/core/tokex/evidence/certs/PROVENANCE.md),
never a failure, since validity is not enforced (the pinned key is the trust).

    python -m tests.support.iid_cert_report
"""

from __future__ import annotations

import datetime
import json
from importlib import resources

from cryptography import x509

CERTS = resources.files("tokex.evidence") / "certs"
REPORT_WITHIN = datetime.timedelta(days=5 * 365)


def main() -> int:
    index = json.loads((CERTS / "index.json").read_text(encoding="utf-8"))
    files = sorted(entry["file"] for variant in index.values() for entry in variant.values())
    now = datetime.datetime.now(datetime.UTC)
    report = []
    for file in files:
        # index.json names files as "certs/<dir>/<region>.pem".
        pem = (CERTS / file.removeprefix("certs/")).read_bytes()
        not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc
        if not_after - now < REPORT_WITHIN:
            state = "EXPIRED" if not_after < now else "expires"
            report.append(f"{file}: {state} {not_after:%Y-%m-%d}")
    print(f"{len(report)} of {len(files)} AWS IID certificates expire within five years:")
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
