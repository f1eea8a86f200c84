"""Telling this device that a device was linked to, or revoked from, its own account,
even when it was offline at the time.

The server pushes ``sottovoce.device.added`` only to connected devices. So every
verified lookup of our own account (client/directory.py: certificates checked against
the account key and, with key transparency, the log) is compared with the devices this
device last knew; a difference becomes a lasting notice, kept sealed in the store until a
command has shown it (``pending`` then ``mark_seen``):

    lookup(own account) ──► note(contact) ──► pending notices ──► every command shows them
                                  │                                  once, then mark_seen
                                  └──► DeviceLinked / DeviceRevoked events (listen)

On the first lookup a device ever makes, the devices certified before its own
certificate are taken as known (a new device is not told of the account's existing
devices; one linked while it had not looked yet is). A device this device linked itself
is expected (``expect``), so only the others are told.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.client.store import Contact, Store
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.errors import DecodeError

LINKED = 1
REVOKED = 2
#: Gone from the directory without a revocation (its certificate lapsed, say).
REMOVED = 3
#: Notices kept at most (the oldest are dropped past this).
MAX_PENDING = 64
#: Device ids remembered at most (an account has a handful).
MAX_KNOWN = 1024
_RECORD = "device_notices"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class DeviceNotice:
    """One change of the account's devices this device has not shown yet."""

    kind: int  # LINKED, REVOKED or REMOVED
    device_id: str
    #: When the device was certified (LINKED), or when this device noticed it was gone.
    at_ms: int


def active_devices(contact: Contact) -> set[str]:
    """The devices of an account that are certified and not revoked."""
    return set(contact.certificates) - contact.revoked


@dataclass(slots=True)
class _Record:
    known: set[str] | None  # None: no lookup of our own account yet
    pending: list[DeviceNotice]
    #: Added by this device before its first lookup (``expect``).
    expected: set[str]

    def encode(self) -> bytes:
        w = Writer()
        w.u8(_VERSION)
        w.boolean(self.known is not None)
        w.vector_v(sorted(self.known or ()), lambda w2, d: w2.opaque8(d.encode("ascii")))
        w.vector_v(self.pending, _write_notice)
        w.vector_v(sorted(self.expected), lambda w2, d: w2.opaque8(d.encode("ascii")))
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> _Record:
        if r.u8() != _VERSION:
            raise DecodeError("unknown device notice record")
        has_known = r.boolean()
        known = set(r.vector_v(lambda r2: r2.opaque8().decode("ascii")))
        pending = r.vector_v(_read_notice)
        expected = set(r.vector_v(lambda r2: r2.opaque8().decode("ascii")))
        return cls(known if has_known else None, pending, expected)


def _write_notice(w: Writer, n: DeviceNotice) -> None:
    w.u8(n.kind)
    w.opaque8(n.device_id.encode("ascii"))
    w.u64(n.at_ms)


def _read_notice(r: Reader) -> DeviceNotice:
    kind = r.u8()
    if kind not in (LINKED, REVOKED, REMOVED):
        raise DecodeError("unknown device notice")
    return DeviceNotice(kind, r.opaque8().decode("ascii"), r.u64())


class DeviceNotices:
    """The devices this device knows of its account, and the notices not shown yet."""

    def __init__(self, store: Store, device_id: str) -> None:
        self._store, self._me = store, device_id

    def _load(self) -> _Record:
        raw = self._store.get_secret(_RECORD)
        if raw is None:
            return _Record(None, [], set())
        try:
            return decode(_Record.read, raw)
        except (DecodeError, UnicodeDecodeError):
            return _Record(None, [], set())  # damaged: start again from the next lookup

    def _save(self, record: _Record) -> None:
        record.pending = record.pending[-MAX_PENDING:]
        if record.known is not None and len(record.known) > MAX_KNOWN:
            record.known = set(sorted(record.known)[:MAX_KNOWN])
        with self._store.transaction():
            self._store.put_secret(_RECORD, record.encode())

    def note(self, contact: Contact, now_ms: int) -> list[DeviceNotice]:
        """Compare a verified lookup of our own account with the devices known before;
        store and return the notices it makes (call inside the lookup's transaction)."""
        record = self._load()
        now = active_devices(contact)
        had_known = record.known is not None
        if record.known is None:
            # The first lookup of this device: the devices certified after this one.
            mine = contact.certificates.get(self._me)
            since = mine.created_at_ms if mine is not None else None
            record.known = {d for d in now if since is None or
                            contact.certificates[d].created_at_ms <= since} | record.expected
            record.expected = set()
        new: list[DeviceNotice] = []
        for device in sorted(now - record.known - {self._me}):
            created = contact.certificates[device].created_at_ms
            new.append(DeviceNotice(LINKED, device, created))
        for device in sorted(record.known - now - {self._me}):
            gone = REVOKED if device in contact.revoked else REMOVED
            new.append(DeviceNotice(gone, device, now_ms))
        if new or record.known != now | {self._me} or not had_known:
            record.known = now | {self._me}
            record.pending += new
            self._save(record)
        return new

    def expect(self, device_id: str) -> None:
        """This device linked ``device_id`` itself: do not tell it."""
        record = self._load()
        if record.known is not None:
            record.known.add(device_id)
        elif len(record.expected) < MAX_KNOWN:
            record.expected.add(device_id)
        record.pending = [n for n in record.pending
                          if not (n.kind == LINKED and n.device_id == device_id)]
        self._save(record)

    def forget(self, device_id: str) -> None:
        """This device revoked ``device_id`` itself: do not tell it."""
        record = self._load()
        if record.known is not None:
            record.known.discard(device_id)
        record.pending = [n for n in record.pending if n.device_id != device_id]
        self._save(record)

    def pending(self) -> list[DeviceNotice]:
        return list(self._load().pending)

    def mark_seen(self, device_id: str | None = None) -> int:
        """The notices (about ``device_id`` only, if given) were shown: drop them.
        Returns how many."""
        record = self._load()
        kept = [n for n in record.pending if device_id is not None and n.device_id != device_id]
        shown = len(record.pending) - len(kept)
        if shown:
            record.pending = kept
            self._save(record)
        return shown
