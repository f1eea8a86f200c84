"""The verdict of a blindness audit: PASS, FAIL or INCOMPLETE, and why.

    FAIL        a canary plaintext or a canary device's private key was found
                (exit 1) — the findings say where, never the secret
    INCOMPLETE  nothing was found, but something the audit needs did not work:
                the canaries did not all arrive, a source could not be read,
                the push capture got nothing, or --data does not even contain
                the canary usernames (wrong database?) (exit 1)
    PASS        everything ran, every source was read, nothing was found (exit 0)
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sottovoce.audit_kit.sources import Finding, Scanned

PASS, FAIL, INCOMPLETE = "PASS", "FAIL", "INCOMPLETE"
#: At most this many findings are printed in text form (all are in --json).
MAX_PRINTED_FINDINGS = 50

_ADVICE = {
    PASS: "nothing of the canary run reached the places scanned, in any encoding searched.",
    FAIL: "the server side holds content or keys it must never see: treat every place "
    "listed as a leak (fix what wrote it, then purge those files/rows) and run the audit again.",
    INCOMPLETE: "this is not a pass: the audit could not check everything. Fix the problems "
    "listed and run it again.",
}


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


@dataclass(slots=True, kw_only=True)
class Report:
    server: str
    canaries: list[str]  # labels only
    keys: int
    usernames: list[str]
    scanned: list[Scanned] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)  # canary and key hits
    control: Counter[str] = field(default_factory=Counter)  # source -> username hits
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.findings:
            return FAIL
        if self.problems:
            return INCOMPLETE
        return PASS

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == PASS else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "advice": _ADVICE[self.verdict],
            "server": self.server,
            "canaries": self.canaries,
            "privateKeys": self.keys,
            "canaryUsernames": self.usernames,
            "scanned": [
                {"kind": s.kind, "name": s.name, "bytes": s.bytes, "detail": s.detail,
                 "tables": s.tables}
                for s in self.scanned
            ],
            "findings": [
                {"secret": f.label, "kind": f.kind, "preview": f.preview,
                 "encoding": f.encoding, "source": f.source, "where": f.where}
                for f in self.findings
            ],
            "control": dict(self.control),
            "problems": self.problems,
            "notes": self.notes,
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def render(self) -> str:
        lines = [f"sottovoce blindness audit: {self.verdict}", f"  server: {self.server}"]
        sent = f"({', '.join(self.canaries)})" if self.canaries else "(none was sent)"
        lines.append(
            f"  canaries: {len(self.canaries)} plaintexts {sent}; "
            f"{self.keys} private keys of the canary devices; searched raw, hex, HEX, "
            "base64 and base64url at every alignment"
        )
        lines.append("scanned:")
        if not self.scanned:
            lines.append("  (nothing)")
        for s in self.scanned:
            extra = f"  {s.detail}" if s.detail else ""
            lines.append(f"  {s.kind:<8} {s.name}  {human_size(s.bytes)}{extra}")
            if s.tables:
                tables = ", ".join(f"{t} {n}" for t, n in sorted(s.tables.items()))
                lines.append(f"           rows: {tables}")
        if self.control:
            total = sum(self.control.values())
            lines.append(
                f"control: the public canary usernames were found {total} times "
                f"(in {len(self.control)} sources): the scan reads this server's data"
            )
        if self.findings:
            lines.append(f"findings ({len(self.findings)}):")
            for f in self.findings[:MAX_PRINTED_FINDINGS]:
                lines.append(
                    f"  FOUND {f.kind} \"{f.label}\" ({f.preview}) as {f.encoding} "
                    f"in {f.source}, {f.where}"
                )
            if len(self.findings) > MAX_PRINTED_FINDINGS:
                lines.append(f"  … {len(self.findings) - MAX_PRINTED_FINDINGS} more (see --json)")
        if self.problems:
            lines.append("problems (the audit could not check everything):")
            lines += [f"  - {p}" for p in self.problems]
        if self.notes:
            lines.append("notes:")
            lines += [f"  - {n}" for n in self.notes]
        lines.append(f"verdict: {self.verdict}: {_ADVICE[self.verdict]}")
        return "\n".join(lines)
