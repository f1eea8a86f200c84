"""The blindness kit (docs/threat-model.md): prove the server never sees content or keys.

Client-side tooling, not server code: ``sottovoce audit blindness`` registers
canary accounts on a running server, sends random canary plaintexts through
it, and then searches what the operator points it at — database files or a
PostgreSQL database, logs, captured push payloads, ``/metrics`` — for the
canaries and the canary devices' private keys.

    needles.py       encodings of a secret and the byte search (pure)
    keys.py          private keys of the canary devices (opens Olm pickles)
    canaries.py      the canary run through the SDK
    push_capture.py  a webhook that records push payloads
    sources.py       files, SQLite and PostgreSQL tables, blobs
    report.py        PASS / FAIL / INCOMPLETE and its rendering
    kit.py           run_audit: all of the above in order
"""

from sottovoce.audit_kit.kit import AuditOptions, run_audit
from sottovoce.audit_kit.needles import Hit, Needle, Scanner, needles_for
from sottovoce.audit_kit.report import FAIL, INCOMPLETE, PASS, Report

__all__ = [
    "FAIL",
    "INCOMPLETE",
    "PASS",
    "AuditOptions",
    "Hit",
    "Needle",
    "Report",
    "Scanner",
    "needles_for",
    "run_audit",
]
