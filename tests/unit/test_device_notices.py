"""The notices of devices linked to or removed from one's own account
(client/device_notices.py), against a real store and real certificates."""

from __future__ import annotations

import secrets
from pathlib import Path

from sottovoce.client.device_notices import LINKED, REMOVED, REVOKED, DeviceNotices
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.store import TEST_KDF, Contact, Store
from sottovoce.identity import DeviceCertificate


def _cert(first: LocalIdentity | None, at_ms: int) -> tuple[LocalIdentity, DeviceCertificate]:
    ident, _ = LocalIdentity.new(
        username="alice", server_url="ws://127.0.0.1:1", now_ms=at_ms, rng=secrets.token_bytes,
        account_key=first.account_key if first is not None else None)
    return ident, ident.certificate


def _contact(first: LocalIdentity, certs: list[DeviceCertificate],
             revoked: set[str] | None = None) -> Contact:
    return Contact(username="alice", account_key=first.account_key.public, pinned_at_ms=1,
                   certificates={c.device_id: c for c in certs}, revoked=revoked or set())


def test_first_lookup_knows_older_devices_then_changes_become_notices_once(
    tmp_path: Path,
) -> None:
    a, a_cert = _cert(None, 1_000)
    b, b_cert = _cert(a, 2_000)
    _, c_cert = _cert(a, 3_000)
    _, d_cert = _cert(a, 4_000)
    store = Store.create(tmp_path, "pass phrase", kdf=TEST_KDF)
    try:
        notices = DeviceNotices(store, b.device_id)
        # B's first lookup: A is older (known), C was certified after B (told).
        told = notices.note(_contact(a, [a_cert, b_cert, c_cert]), 10)
        assert [(n.kind, n.device_id, n.at_ms) for n in told] == [
            (LINKED, c_cert.device_id, 3_000)]
        assert notices.note(_contact(a, [a_cert, b_cert, c_cert]), 11) == []  # once
        assert [n.device_id for n in notices.pending()] == [c_cert.device_id]
        assert notices.mark_seen() == 1 and notices.pending() == []
        # C revoked, D linked by B itself (not told), A's certificate gone.
        notices.expect(d_cert.device_id)
        told = notices.note(_contact(a, [b_cert, c_cert, d_cert], {c_cert.device_id}), 12)
        assert sorted((n.kind, n.device_id) for n in told) == sorted(
            [(REVOKED, c_cert.device_id), (REMOVED, a_cert.device_id)])
        assert notices.mark_seen(c_cert.device_id) == 1
        assert [n.device_id for n in notices.pending()] == [a_cert.device_id]
    finally:
        store.close()


def test_a_device_added_here_before_the_first_lookup_is_not_told(tmp_path: Path) -> None:
    a, a_cert = _cert(None, 1_000)
    _, b_cert = _cert(a, 2_000)
    store = Store.create(tmp_path, "pass phrase", kdf=TEST_KDF)
    try:
        notices = DeviceNotices(store, a.device_id)
        notices.expect(b_cert.device_id)
        assert notices.note(_contact(a, [a_cert, b_cert]), 10) == []
        store.put_secret("device_notices", b"\xff damaged")
        assert notices.pending() == []  # a damaged record starts again, no traceback
    finally:
        store.close()
