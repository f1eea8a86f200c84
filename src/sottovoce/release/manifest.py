"""``MANIFEST.sha256``: the signed list of every file of a release's source tree.

The format is exactly ``sha256sum``'s (``HEX  PATH``, sorted by path), so that
``sha256sum -c MANIFEST.sha256`` checks a checkout with standard tools; paths
sha256sum would have to escape (newline, backslash) are refused rather than
written in a form only one tool reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sottovoce.release.minisign import MinisignError

MANIFEST_NAME = "MANIFEST.sha256"
SIGNATURE_SUFFIX = ".minisig"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ManifestError(MinisignError):
    """The manifest is malformed."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def render(digests: Mapping[str, str]) -> str:
    """The manifest text for path -> sha256 hex, sorted by path (bytewise)."""
    for path in digests:
        if "\n" in path or "\\" in path or "\r" in path:
            raise ManifestError(f"a path sha256sum would escape: {path!r}")
    ordered = sorted(digests, key=lambda p: p.encode())
    return "".join(f"{digests[p]}  {p}\n" for p in ordered)


def parse(text: str) -> dict[str, str]:
    """path -> sha256 hex from a manifest; every line must be well formed."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.match(line)
        if match is None:
            raise ManifestError(f"{MANIFEST_NAME} line {number} is not `SHA256  PATH`")
        digest, path = match.groups()
        if path in out:
            raise ManifestError(f"{MANIFEST_NAME} lists {path} twice")
        if path.startswith("/") or ".." in path.split("/"):
            raise ManifestError(f"{MANIFEST_NAME} line {number} names a path outside the tree")
        out[path] = digest
    if not out:
        raise ManifestError(f"{MANIFEST_NAME} is empty")
    return out


@dataclass(frozen=True, slots=True)
class Difference:
    """How a tree differs from the manifest (paths as the manifest names them)."""

    changed: tuple[str, ...]
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    checked: int

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.extra)


def compare(expected: Mapping[str, str], actual: Mapping[str, str],
            scope: Iterable[str] | None = None) -> Difference:
    """Compare hashes; ``scope`` limits which manifest entries must be present.

    An installed copy holds only the package, so the caller passes the manifest
    paths it should contain; a file present but outside ``expected`` is extra.
    """
    wanted = set(expected if scope is None else scope)
    changed = sorted(p for p in wanted & actual.keys() if actual[p] != expected[p])
    missing = sorted(wanted - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    return Difference(tuple(changed), tuple(missing), tuple(extra), len(wanted))
