"""This device's view of the directory (docs/architecture.md §Identity).

    lookup ──► sottovoce.directory.result ──► SessionManager.read_directory
               (every certificate verified against the account key; the first
                lookup pins that key; a different one later is followed from it by
                its chain of successions and recoveries, else IdentityChanged)
           ──► checked against the transparency log ──► SessionManager.keep_contact
    claim  ──► prekey bundles (each verified) ──► outbound Olm sessions
    targets ──► every device a 1:1 message goes to, each with a session
"""

from __future__ import annotations

import base64
from typing import Any

from sottovoce.client.device_notices import LINKED, REVOKED, DeviceNotices
from sottovoce.client.events import DeviceLinked, DeviceRevoked, ErrorEvent, KeysChanged
from sottovoce.client.ids import now_ms
from sottovoce.client.kt import KeyTransparency
from sottovoce.client.ports import Emit, Link
from sottovoce.client.sessions import Device, SessionManager
from sottovoce.client.store import Contact, Store
from sottovoce.errors import DecodeError, RemoteError
from sottovoce.pairwise import PrekeyBundle
from sottovoce.protocol import events as ev


class Directory:
    """Lookups, prekey claims and message targets (satisfies :class:`~.ports.Contacts`)."""

    def __init__(
        self, link: Link, store: Store, sessions: SessionManager, *, username: str, emit: Emit,
        kt: KeyTransparency | None = None,
    ) -> None:
        self._link, self._store, self._sessions = link, store, sessions
        self._kt = kt
        self._username, self._emit = username, emit
        #: Users looked up on this run (a pinned contact may still have new devices).
        self._looked_up: set[str] = set()

    def contact(self, username: str) -> Contact | None:
        return self._sessions.contact(username)

    def looked_up(self, username: str) -> bool:
        return username in self._looked_up

    def forget(self, username: str) -> None:
        """Look ``username`` up again before the next message (its devices changed)."""
        self._looked_up.discard(username)

    async def lookup(self, username: str) -> None:
        _, data = await self._link.request(
            ev.DirectoryLookup(username=username), frozenset({ev.DIRECTORY_RESULT})
        )
        if data.get("username") != username:
            raise RemoteError("directory answered for another username")
        contact = self._sessions.read_directory(data)
        if self._kt is not None and self._kt.required:
            await self._kt.verify_contact(contact)
        with self._store.transaction():
            self._sessions.keep_contact(contact, self._keys_changed)
            told = (self.notices().note(contact, now_ms()) if username == self._username
                    else [])
        self._looked_up.add(username)
        for notice in told:  # stored first: a command shows them even without listening
            self._emit(DeviceLinked(device_id=notice.device_id, linked_at_ms=notice.at_ms)
                       if notice.kind == LINKED else
                       DeviceRevoked(device_id=notice.device_id,
                                     revoked=notice.kind == REVOKED))

    def notices(self) -> DeviceNotices:
        """The changes of our own account's devices this device has not shown yet."""
        return DeviceNotices(self._store, self._sessions.device_id)

    def _keys_changed(self, old: Contact, new: Contact) -> None:
        dropped = tuple(sorted(set(old.certificates) - set(new.certificates)))
        gone = f" (devices dropped: {', '.join(dropped)})" if dropped else ""
        self._emit(KeysChanged(
            code="keys_changed", username=new.username, dropped=dropped,
            message=f"{new.username}'s keys changed by succession{gone}; the safety number "
                    f"changed: compare it again (sottovoce verify {new.username})",
        ))

    async def claim(self, username: str) -> None:
        """Open an outbound session to every device of ``username`` that has none yet."""
        _, data = await self._link.request(
            ev.PrekeysClaim(username=username), frozenset({ev.PREKEY_BUNDLES})
        )
        bundles = data.get("bundles")
        wanted = set(self._sessions.devices_of(username))
        for raw in bundles if isinstance(bundles, list) else []:
            try:
                bundle = PrekeyBundle.decode(_b64decode(raw))
            except (DecodeError, ValueError):
                continue
            cert = bundle.certificate
            if cert.username != username or cert.device_id not in wanted:
                continue
            known = self._sessions.contact(username)
            kept = known.certificates.get(cert.device_id) if known else None
            if kept is None or kept.keys != cert.keys:
                continue  # only the keys the lookup verified (and the log holds)
            if self._sessions.has_session(username, cert.device_id):
                continue
            try:
                self._sessions.add_outbound(bundle)
            except RemoteError as exc:
                self._emit(ErrorEvent(code=exc.code, message=str(exc)))

    async def targets(self, username: str, *, refresh: bool = False) -> list[Device]:
        """Every device a message to ``username`` goes to, each with a session."""
        for user in (username, self._username):
            cached = self._sessions.contact(user) is not None
            if not cached or refresh or (user not in self._looked_up and self._link.is_up):
                # Offline with a pinned contact: use it; device_mismatch corrects it later.
                await self.lookup(user)
        targets = [(username, d) for d in self._sessions.devices_of(username)]
        if not targets:
            raise RemoteError(f"'{username}' has no device we can encrypt to")
        if username != self._username:  # to ourselves: our other devices, once
            targets += [(self._username, d) for d in self._sessions.devices_of(self._username)]
        for user in sorted({u for u, d in targets if not self._sessions.has_session(u, d)}):
            await self.claim(user)
        return [t for t in targets if self._sessions.has_session(*t)]

    def can_encrypt_offline(self, username: str) -> bool:
        """Every device of ``username`` and of our own account is known and has a session."""
        for user in (username, self._username):
            if self._sessions.contact(user) is None:
                return False
            devices = self._sessions.devices_of(user)
            if not all(self._sessions.has_session(user, d) for d in devices):
                return False
        return bool(self._sessions.devices_of(username))


def _b64decode(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not base64")
    return base64.b64decode(value, validate=True)  # binascii.Error is a ValueError
