"""Pairwise sessions and the directory view of this device (docs/architecture.md §1:1 messages).

    directory.result ──verify every certificate against the account key──► Contact
                     (first contact pins the account key; a different key later
                      raises IdentityChanged, nothing is replaced)
    prekeys.bundles  ──PairwiseSession.outbound (bundle verified)──► session
    inbound prekey message ──PairwiseSession.inbound (sender cert verified)──► session

Sessions live in memory once loaded; every change marks them dirty and
:meth:`SessionManager.flush` writes the dirty ones (and the Olm account when a
one-time key was consumed) inside the caller's transaction, the same one that
stores the message the change produced (check, then commit).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from sottovoce.client.account_keys import check_change, directory_b64, served_genesis
from sottovoce.client.store import Contact, Store
from sottovoce.errors import (
    DecodeError,
    DuplicateMessage,
    IdentityError,
    MessageDecryptionError,
    PairwiseError,
    RemoteError,
    SessionMismatch,
)
from sottovoce.identity import DeviceCertificate
from sottovoce.identity.succession import AccountForked
from sottovoce.pairwise import OlmAccount, OlmEnvelope, PairwiseSession, PrekeyBundle
from sottovoce.pairwise.account import PICKLE_KEY
from sottovoce.protocol.fields import Device as Device
from sottovoce.secret import Secret


@dataclass(eq=False, repr=False)
class SessionManager:
    """Every pairwise session of this device, and the contacts they are bound to."""

    store: Store
    olm: OlmAccount
    _: KW_ONLY
    username: str
    device_id: str
    clock_ms: Callable[[], int]
    _sessions: dict[Device, list[PairwiseSession]] = field(init=False, default_factory=dict)
    _contacts: dict[str, Contact] = field(init=False, default_factory=dict)
    _dirty: dict[tuple[str, str, str], PairwiseSession] = field(init=False, default_factory=dict)
    _olm_dirty: bool = field(init=False, default=False)

    # --- contacts ----------------------------------------------------------------------

    def contact(self, username: str) -> Contact | None:
        if username not in self._contacts:
            found = self.store.get_contact(username)
            if found is None:
                return None
            self._contacts[username] = found
        return self._contacts[username]

    def mark_verified(self, username: str, verified: bool) -> bool:
        """Set or clear the mark that the safety number with ``username`` was compared
        (kept with the pinned key; a new key by succession clears it, read_directory)."""
        contact = self.contact(username)
        if contact is None:
            return False
        contact.verified = verified
        with self.store.transaction():
            self.store.put_contact(contact)
        return True

    def apply_directory(
        self, data: dict[str, Any], on_change: Callable[[Contact, Contact], None] | None = None
    ) -> Contact:
        """:meth:`read_directory`, then :meth:`keep_contact`."""
        return self.keep_contact(self.read_directory(data), on_change)

    def keep_contact(
        self, contact: Contact, on_change: Callable[[Contact, Contact], None] | None = None
    ) -> Contact:
        """Write a contact :meth:`read_directory` made (inside a transaction or alone). If
        its account key replaced the pinned one (a succession), sessions with devices that
        are gone are forgotten and ``on_change(old, new)`` is called."""
        pinned = self.contact(contact.username)
        self.store.put_contact(contact)
        self._contacts[contact.username] = contact
        if pinned is not None and pinned.account_key != contact.account_key:
            for device_id in set(pinned.certificates) - set(contact.certificates):
                self.forget_device(contact.username, device_id)
            if on_change is not None:
                on_change(pinned, contact)
        return contact

    def read_directory(self, data: dict[str, Any]) -> Contact:
        """Verify a ``sottovoce.directory.result`` and merge it into the pinned contact,
        without writing it yet.

        Raises :class:`IdentityChanged` if the account key is not the pinned one and does
        not descend from it by a chain of successions and recoveries; ``AccountForked``
        while the account is forked. A key that does descend replaces the pinned one
        (once kept): the contact is no longer verified.
        Certificates that do not verify against the account key are ignored (the
        server cannot add a device to someone's account).
        """
        username = data.get("username")
        if not isinstance(username, str):
            raise RemoteError("directory result has no username")
        account_key = directory_b64(data.get("accountKey"), "account key")
        if len(account_key) != 32:
            raise RemoteError("directory account key has the wrong length")
        pinned = self.contact(username)
        now = self.clock_ms()
        succeeded = pinned is not None and pinned.account_key != account_key
        if pinned is not None and succeeded:
            check_change(pinned, account_key, data, now_ms=now)
        elif data.get("forked") is True:
            raise AccountForked(f"{username}'s account is forked: nothing is sent to it "
                                "until its owner settles it with the recovery code")
        genesis = served_genesis(username, data)
        revoked_raw = data.get("revokedDeviceIds") or []
        revoked = (
            {d for d in revoked_raw if isinstance(d, str)}
            if isinstance(revoked_raw, list)
            else set()
        )
        certs: dict[str, DeviceCertificate] = {}
        devices = data.get("devices") or []
        for item in devices if isinstance(devices, list) else []:
            if not isinstance(item, dict):
                continue
            try:
                raw = directory_b64(item.get("certificate"), "certificate")
                cert = DeviceCertificate.decode(raw)
                cert.verify(
                    now_ms=now,
                    account_key=account_key,
                    username=username,
                    revoked_device_ids=revoked,
                )
            except (DecodeError, IdentityError, RemoteError):
                continue
            if cert.device_id == item.get("deviceId"):
                certs[cert.device_id] = cert
        keep_genesis = pinned is not None and bool(pinned.genesis_key)
        contact = Contact(
            username=username,
            account_key=account_key,
            pinned_at_ms=now if succeeded or pinned is None else pinned.pinned_at_ms,
            verified=bool(pinned and pinned.verified and not succeeded),
            certificates=certs,
            revoked=revoked | (pinned.revoked if pinned else set()),
            genesis_key=(pinned.genesis_key if pinned and keep_genesis
                         else genesis.account_key if genesis else b""),
            recovery_key=(pinned.recovery_key if pinned and keep_genesis
                          else genesis.recovery_key if genesis else b""),
        )
        return contact

    def forget_device(self, username: str, device_id: str) -> None:
        """Drop every session with a device that is gone (revoked, or not re-certified)."""
        self._sessions.pop((username, device_id), None)
        for key in [k for k in self._dirty if k[:2] == (username, device_id)]:
            del self._dirty[key]
        self.store.delete_sessions(username, device_id)

    def pin_self(self, certificate: DeviceCertificate) -> None:
        """Our own account is pinned by construction (our key signed our certificate)."""
        if self.contact(self.username) is None:
            contact = Contact(
                username=self.username,
                account_key=certificate.account_key,
                pinned_at_ms=self.clock_ms(),
                verified=True,
                certificates={certificate.device_id: certificate},
            )
            self.store.put_contact(contact)
            self._contacts[self.username] = contact

    def devices_of(self, username: str) -> list[str]:
        """Device ids we would encrypt to (ours excluded)."""
        contact = self.contact(username)
        if contact is None:
            return []
        return sorted(
            d
            for d in contact.certificates
            if d not in contact.revoked and not (username == self.username and d == self.device_id)
        )

    # --- sessions -----------------------------------------------------------------------

    def _load(self, device: Device) -> list[PairwiseSession]:
        if device not in self._sessions:
            key: Secret = self.store.storage_key
            self._sessions[device] = [
                PairwiseSession.restore(key, device[0], device[1], sealed)
                for sealed in self.store.load_sessions(*device)
            ]
        return self._sessions[device]

    def has_session(self, username: str, device_id: str) -> bool:
        return bool(self._load((username, device_id)))

    def add_outbound(self, bundle: PrekeyBundle) -> PairwiseSession:
        """Open a session from a claimed bundle, checked against the pinned account key."""
        cert = bundle.certificate
        contact = self.contact(cert.username)
        if contact is None:
            raise PairwiseError("bundle for a user not looked up in the directory")
        session = PairwiseSession.outbound(
            self.olm,
            bundle,
            now_ms=self.clock_ms(),
            account_key=contact.account_key,
            username=contact.username,
            revoked_device_ids=contact.revoked,
        )
        self._remember((cert.username, cert.device_id), session)
        return session

    def _remember(self, device: Device, session: PairwiseSession) -> None:
        sessions = self._load(device)
        sessions.insert(0, session)
        self._dirty[(device[0], device[1], session.session_id)] = session

    def _touch(self, device: Device, session: PairwiseSession) -> None:
        sessions = self._load(device)
        if sessions and sessions[0] is not session:
            sessions.remove(session)
            sessions.insert(0, session)
        self._dirty[(device[0], device[1], session.session_id)] = session

    def encrypt(self, username: str, device_id: str, plaintext: bytes) -> bytes:
        device = (username, device_id)
        sessions = self._load(device)
        if not sessions:
            raise SessionMismatch("no session with this device")
        session = sessions[0]
        ciphertext = session.encrypt(plaintext)
        self._touch(device, session)
        return ciphertext

    def decrypt(self, username: str, device_id: str, ciphertext: bytes) -> bytes:
        """Decrypt with the matching session, or accept a prekey message (new session).

        State changes only on success; the caller must :meth:`flush` in the
        transaction that stores the result.
        """
        device = (username, device_id)
        envelope = OlmEnvelope.decode(ciphertext)
        sessions = self._load(device)
        if envelope.is_prekey:
            for session in sessions:
                if session.matches(ciphertext):
                    plaintext = session.decrypt(ciphertext)
                    self._touch(device, session)
                    return plaintext
            contact = self.contact(username)
            cert = contact.certificates.get(device_id) if contact else None
            if contact is None or cert is None:
                raise PairwiseError("prekey message from a device not in the directory")
            session, plaintext = PairwiseSession.inbound(
                self.olm,
                cert,
                ciphertext,
                now_ms=self.clock_ms(),
                account_key=contact.account_key,
                username=username,
                revoked_device_ids=contact.revoked,
            )
            self._remember(device, session)
            self._olm_dirty = True  # a one-time key was consumed
            return plaintext
        for session in sessions:
            try:
                plaintext = session.decrypt(ciphertext)
            except (MessageDecryptionError, DuplicateMessage):
                continue
            self._touch(device, session)
            return plaintext
        raise MessageDecryptionError("no session could decrypt the message")

    def mark_olm_dirty(self) -> None:
        self._olm_dirty = True

    def flush(self) -> None:
        """Seal and write every changed session (and the Olm account) — in a transaction."""
        now = self.clock_ms()
        for (user, device, session_id), session in self._dirty.items():
            sealed = session.seal(self.store.storage_key, self.store.rng)
            self.store.put_session(user, device, session_id, sealed, now)
        self._dirty.clear()
        if self._olm_dirty:
            self.store.put_secret_sealed(
                "olm_account", self.olm.seal(self.store.storage_key, self.store.rng)
            )
            self._olm_dirty = False

    def discard_unflushed(self) -> None:
        """After a failed transaction: forget in-memory state the store does not hold."""
        self._sessions.clear()
        self._dirty.clear()
        if self._olm_dirty:
            sealed = self.store.get_secret_sealed("olm_account")
            if sealed is not None:
                self.olm = OlmAccount.restore(self.store.storage_key, self.device_id, sealed)
            self._olm_dirty = False

    def audit_only_private_material(self) -> list[tuple[str, Secret]]:
        """FOR THE BLINDNESS AUDIT ONLY: the Olm account and the sessions loaded in
        memory, as vodozemac pickles under the formality pickle key
        (pairwise/account.py); ``sottovoce.audit_kit.keys`` unpacks them."""
        olm = self.olm._vodozemac()
        out = [("olm account", Secret(olm.pickle(PICKLE_KEY).encode("ascii")))]
        for (user, device), sessions in sorted(self._sessions.items()):
            for i, session in enumerate(sessions):
                pickle = session._session.pickle(PICKLE_KEY).encode("ascii")
                out.append((f"olm session {user}/{device}#{i}", Secret(pickle)))
        return out
