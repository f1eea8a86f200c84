"""KeyPackages: ours, uploaded so that members can add this device, and theirs,
claimed to add them (RFC 9420 §10). A stock per suite of ROOM_SUITES: a room in the
hybrid X-Wing suite can add only devices with X-Wing KeyPackages.

    ensure / keypackages.low ──► generate (private halves sealed in the store first)
                             ──► keypackages.upload {suite} (a batch + one last resort),
                                 for each suite (low: the suite it names)
    ensure / keypackages.low, stock made before a capability our leaves now list
                             ──► keypackages.withdraw ──► upload a fresh batch + last
                                 resort of each suite
    claim(user, suite) ──► directory lookup ──► keypackages.claim {suite} ──► every
                    KeyPackage checked (§10.1, that suite) and its leaf bound to that
                    device's certificate; none at all ──► NoKeyPackageForSuite
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from sottovoce.client.errors import ServerError
from sottovoce.client.events import ErrorEvent
from sottovoce.client.ids import now_ms
from sottovoce.client.ports import Contacts, Link
from sottovoce.client.rooms.book import RoomBook
from sottovoce.client.rooms.model import (
    ROOM_REQUEST_TIMEOUT_S,
    ROOM_SUITES,
    SUITE,
    identity_of,
    key_matches,
    mls_suite,
)
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES
from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.crypto.mls_suites import describe_suite
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.limits import CLIENT_KEY_PACKAGE_BATCH, MAX_KEY_PACKAGE_BYTES
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import KeyPackagePrivate, generate_key_package
from sottovoce.mls.messages import Capabilities, Credential, KeyPackage, Welcome
from sottovoce.mls.proposals import validate_key_package
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError, req_b64, req_id
from sottovoce.secret import Secret


def decode_key_package(data: bytes) -> KeyPackage:
    """A KeyPackage as MLSMessage(KeyPackage) (RFC 9420 §6) or bare."""
    try:
        body = MLSMessage.decode(data).body
        if isinstance(body, KeyPackage):
            return body
    except DecodeError:
        pass
    return KeyPackage.decode(data)


class NoKeyPackageForSuite(RemoteError):
    """The user has no device with a KeyPackage of the room's suite (say a client from
    before the hybrid suite, which uploads suite 1 only): it cannot be added to the room."""

    code = "no_key_package_for_suite"

    def __init__(self, username: str, suite: int) -> None:
        super().__init__(
            f"'{username}' has no device with a KeyPackage for this room's MLS cipher suite,"
            f" {describe_suite(suite)}: each of its devices needs a client that supports"
            " that suite, online once to upload KeyPackages for it"
        )
        self.username, self.suite = username, suite


@dataclass(frozen=True, slots=True)
class KeyPackageRecord(WireStruct):
    """Our KeyPackage and its private keys, as sealed in the store."""

    key_package: KeyPackage
    private: KeyPackagePrivate

    def write(self, w: Writer) -> None:
        w.u8(1)
        w.opaque_v(self.key_package.encode())
        w.opaque8(self.private.init_private.expose())
        w.opaque8(self.private.encryption_private.expose())

    @classmethod
    def read(cls, r: Reader) -> KeyPackageRecord:
        r.version(1, "KeyPackage record")
        kp = KeyPackage.decode(r.opaque_v())
        init, enc = r.opaque8(), r.opaque8()
        private = KeyPackagePrivate(init_private=Secret(init), encryption_private=Secret(enc))
        return cls(kp, private)


class KeyPackages:
    """This device's KeyPackage stock, and the checks on everyone else's."""

    def __init__(self, book: RoomBook, link: Link, contacts: Contacts) -> None:
        self._book, self._store = book, book.store
        self._link, self._contacts = link, contacts
        self._lock = asyncio.Lock()
        self._no_rooms = False
        #: keypackages.low notices received, and how many had come before an upload was
        #: sent that then succeeded (as for prekeys, client/prekeys.py).
        self._notices = 0
        self._notices_answered = 0
        #: What our KeyPackages' leaves support (tests make an older stock by changing it).
        self.capabilities: Capabilities = ROOM_CAPABILITIES
        #: The suites we keep a stock of (tests make a client of suite 1 only by changing it).
        self.suites: tuple[int, ...] = ROOM_SUITES

    # --- ours -----------------------------------------------------------------------

    @staticmethod
    def _uploaded_flag(suite: int) -> str:
        """Set once a suite's first batch and last resort are on the server (suite 1 keeps
        the flag it had before suites were named)."""
        return "keypackages_uploaded" + ("" if suite == SUITE else f":{suite}")

    async def ensure(self) -> None:
        """Upload the first batch and a last-resort KeyPackage of each suite, once per
        device (a suite added by an update gets its own the first time)."""
        if not self._book.has_signing_key or self._no_rooms:
            return
        async with self._lock:
            missing = [s for s in self.suites if not self._store.flag(self._uploaded_flag(s))]
            for suite in missing:
                try:
                    await self._upload(suite, CLIENT_KEY_PACKAGE_BATCH, last_resort=True)
                except ServerError as exc:
                    if exc.code == "unknown_event":
                        self._no_rooms = True  # a relay without rooms: 1:1 still works
                        return
                    raise
                self._store.set_flag(self._uploaded_flag(suite))
            if len(missing) == len(self.suites):
                self._store.set_flag(self._current_flag())
            elif self._stale():
                await self._renew()

    async def replenish(self, suite: int = SUITE) -> None:
        """``sottovoce.keypackages.low`` for ``suite``: top up at once, unless the notice
        came before an upload that has succeeded since (it spoke of the stock before it)."""
        self._notices += 1
        notice = self._notices
        if suite not in self.suites:
            return  # a stock we no longer keep: nothing to top up
        try:
            async with self._lock:
                if self._notices_answered >= notice:
                    return
                first = not self._store.flag(self._uploaded_flag(suite))
                if not first and self._stale():
                    await self._renew()
                    return
                await self._upload(suite, CLIENT_KEY_PACKAGE_BATCH, last_resort=first)
                self._store.set_flag(self._uploaded_flag(suite))
        except (SottovoceError, UsageError) as exc:
            self._book.emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    def _current_flag(self) -> str:
        """Set once the server's stock is all KeyPackages with today's extensions."""
        return "keypackages_ext:" + ",".join(str(e) for e in sorted(self.capabilities.extensions))

    def _stale(self) -> bool:
        """Some KeyPackage we hold lacks an extension our leaves now support (one made
        before it existed): a group that uses it could not add this device with it."""
        if self._store.flag(self._current_flag()):
            return False
        wanted = set(self.capabilities.extensions)
        for _, record, _ in self._store.key_package_records():
            leaf = KeyPackageRecord.decode(record).key_package.leaf_node
            if not wanted <= set(leaf.capabilities.extensions):
                return True
        self._store.set_flag(self._current_flag())  # nothing old left: no need to look again
        return False

    async def _renew(self) -> None:
        """Withdraw the server's one-time stock and upload a fresh batch and last resort
        of each suite.

        The private halves of the old ones stay in the store: one claimed before the
        withdrawal may still arrive in a Welcome."""
        try:
            await self._link.request(
                pr.KeyPackagesWithdraw(),
                frozenset({pr.KEYPACKAGES_WITHDRAWN}),
                timeout=ROOM_REQUEST_TIMEOUT_S,
            )
        except ServerError as exc:
            if exc.code != "unknown_event":
                raise
            # A relay without withdrawal: the fresh batch is claimed once the old is gone.
        for suite in self.suites:
            await self._upload(suite, CLIENT_KEY_PACKAGE_BATCH, last_resort=True)
            self._store.set_flag(self._uploaded_flag(suite))
        self._store.set_flag(self._current_flag())

    def _generate(self, suite: int, now: int) -> tuple[KeyPackage, KeyPackagePrivate]:
        return generate_key_package(
            suite, self._book.credential(), self._book.signing_key, secrets.token_bytes, now,
            capabilities=self.capabilities,
        )

    async def _upload(self, suite_id: int, count: int, *, last_resort: bool) -> None:
        now = now_ms()
        made: list[tuple[KeyPackage, KeyPackagePrivate, bool]] = []
        for i in range(count + (1 if last_resort else 0)):
            kp, priv = self._generate(suite_id, now)
            made.append((kp, priv, last_resort and i == count))
        suite = mls_suite(suite_id)
        # The private halves are durable before anyone can claim the public ones.
        with self._store.transaction():
            for kp, priv, lr in made:
                self._store.add_key_package(
                    kp.ref(suite), KeyPackageRecord(kp, priv).encode(), last_resort=lr, now=now,
                    suite=suite_id,
                )
        one_time = [MLSMessage(body=kp).encode() for kp, _, lr in made if not lr]
        lr_kp = next((kp for kp, _, lr in made if lr), None)
        notices = self._notices
        await self._link.request(
            pr.KeyPackagesUpload(
                keyPackages=tuple(one_time),
                lastResort=None if lr_kp is None else MLSMessage(body=lr_kp).encode(),
                suite=suite_id,
            ),
            frozenset({pr.KEYPACKAGES_STORED}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        self._notices_answered = max(self._notices_answered, notices)

    def make_one(self, suite: int = SUITE) -> KeyPackage:
        """One KeyPackage of ``suite`` for a join request, its private half stored first (a
        Welcome needs it)."""
        kp, priv = self._generate(suite, now_ms())
        with self._store.transaction():
            self._store.add_key_package(
                kp.ref(mls_suite(suite)),
                KeyPackageRecord(kp, priv).encode(),
                last_resort=False,
                now=now_ms(),
            )
        return kp

    def find(self, welcome: Welcome) -> tuple[bytes, KeyPackageRecord] | None:
        """Our KeyPackage (its ref and record) that ``welcome`` is for, if any."""
        for entry in welcome.secrets:
            found = self._store.get_key_package(entry.new_member)
            if found is not None:
                return entry.new_member, KeyPackageRecord.decode(found[0])
        return None

    # --- theirs ---------------------------------------------------------------------

    async def claim(self, username: str, suite: int = SUITE) -> list[tuple[str, KeyPackage]]:
        """One validated KeyPackage of ``suite`` per device of ``username`` (checked against
        its certificate); raises :class:`NoKeyPackageForSuite` if it has none."""
        await self._contacts.lookup(username)
        contact = self._contacts.contact(username)
        if contact is None:  # pragma: no cover - lookup stores it or raises
            raise RemoteError("the directory did not return this user")
        _, data = await self._link.request(
            pr.KeyPackagesClaim(username=username, suite=suite),
            frozenset({pr.KEYPACKAGE_BUNDLES}),
            timeout=ROOM_REQUEST_TIMEOUT_S,
        )
        if data.get("username") != username or data.get("suite", SUITE) != suite:
            raise RemoteError("the server answered a claim for another user or suite")
        raw = data.get("keyPackages")
        out: list[tuple[str, KeyPackage]] = []
        now = now_ms()
        for item in raw if isinstance(raw, list) else []:
            try:
                if not isinstance(item, dict):
                    raise RemoteError("bundle is not an object")
                device = req_id(item, "deviceId")
                kp = decode_key_package(
                    req_b64(item, "keyPackage", max_bytes=MAX_KEY_PACKAGE_BYTES)
                )
                self.check(contact.username, device, kp, now, suite)
            except (SottovoceError, ProtocolError) as exc:
                self._book.emit(
                    ErrorEvent(code="bad_key_package", message=f"KeyPackage refused: {exc}")
                )
                continue
            out.append((device, kp))
        if not out:
            raise NoKeyPackageForSuite(username, suite)
        return out

    def check(
        self, user: str, device: str, kp: KeyPackage, now: int, suite: int = SUITE
    ) -> None:
        """RFC 9420 §10.1 in the room's ``suite``, plus ours: the leaf is that device's,
        by its certificate."""
        validate_key_package(kp, cipher_suite_id=suite, now_ms=now)
        if kp.leaf_node.credential != Credential.basic(identity_of(user, device)):
            raise RemoteError("KeyPackage credential names another device")
        if not self.key_matches(user, device, kp.leaf_node.signature_key):
            raise RemoteError("KeyPackage signature key is not the device certificate's")

    def key_matches(self, user: str, device: str, signature_key: bytes) -> bool:
        """``signature_key`` is the MLS key of that device's certificate, by the directory."""
        return key_matches(self._contacts.contact(user), device, signature_key)
