"""The async client SDK: one account on one device (docs/architecture.md §Data path).

The :class:`Client` is the composition root: it builds each part and hands it only
what it uses, so the arrows run one way::

    Client ──► Connection (frames)      Directory (lookups, claims)
           ──► Outbox (durable sends)   DirectMessages (the 1:1 path)
           ──► RoomManager (rooms: given the connection, directory, outbox, store)

    server event ──► the handler table (one entry per event name)
                 ──► processing queue ──► batch ──► ONE transaction: sessions +
                     messages + room state + lastGlobalInboxSeq
                 ──► ksmpv3.ack.read / room.ack ──► events to the application

The application reads messages back from the local store only; the events
tell it when to look. Every inbound message is decrypted once: a replayed
frame whose messageId is stored is skipped before decryption.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sottovoce.client.account_keys import (
    Rotation,
    recertify,
    recover,
    revoke_by_succession,
    to_wire,
)
from sottovoce.client.call_surface import CallSurface
from sottovoce.client.connection import (
    ConnectedInfo,
    Connection,
    Connector,
    TransportClosed,
    websocket_connector,
    ws_url,
)
from sottovoce.client.contact_list import ContactList
from sottovoce.client.conversation import Controls
from sottovoce.client.conversations import Conversations
from sottovoce.client.direct import DirectMessages
from sottovoce.client.directory import Directory
from sottovoce.client.discovery import Discovery
from sottovoce.client.ephemeral import EphemeralChats
from sottovoce.client.ephemeral_group import RoomMembers
from sottovoce.client.errors import KTAlertRaised, NotConnected, ServerError, StoreError
from sottovoce.client.events import (
    ClientEvent,
    ConnectionChanged,
    EphemeralReceived,
    ErrorEvent,
    EventHub,
    EventStream,
    MessageReceived,
)
from sottovoce.client.files import Files
from sottovoce.client.fvc import FriendCodes
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.ids import now_ms
from sottovoce.client.key_handover import KeyHandover
from sottovoce.client.kt import KeyTransparency, LinkSource, Pins, expect_log
from sottovoce.client.media.notes import VoiceNotes
from sottovoce.client.outbox import Outbox
from sottovoce.client.ports import LinkPort
from sottovoce.client.prekeys import Prekeys
from sottovoce.client.presence import Presence
from sottovoce.client.registration import register_device
from sottovoce.client.rooms import ROOM_PREFIX, RoomManager, SyncedMark
from sottovoce.client.sessions import SessionManager
from sottovoce.client.store import (
    LOCK_FILE,
    STORE_FILE,
    Contact,
    KdfParams,
    Store,
    StoredMessage,
)
from sottovoce.client.timers import Timers
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.identity import (
    AccountDeletion,
    SafetyNumber,
    safety_number,
    validate_device_id,
    validate_username,
)
from sottovoce.identity.succession import Recovery, new_recovery_code, recovery_key_from_code
from sottovoce.limits import CERT_RENEW_BEFORE_MS, CLIENT_INBOX_BATCH, KT_MONITOR_INTERVAL_S
from sottovoce.pairwise import OlmAccount
from sottovoce.protocol import events as ev
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import ProtocolError
from sottovoce.secret import Secret

CONNECT_TIMEOUT_S = 15.0

log = logging.getLogger(__name__)


#: Store flag set once the server confirmed (or told us of) this account's deletion.
ACCOUNT_DELETED_FLAG = "account_deleted"


# Items of the processing queue (inbound frames, send acks, replay markers).
@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Ack:
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _ReplayDone:
    generation: int


@dataclass(frozen=True, slots=True)
class _RoomFrame:
    data: dict[str, Any]


_Item = _Frame | _Ack | _ReplayDone | _RoomFrame | SyncedMark

#: What the client does with one unsolicited server event: (requestId, data).
_Handler = Callable[[str | None, dict[str, Any]], None]


class Client(CallSurface):
    """One account on one device. Create with :meth:`create_account` or :meth:`open`."""

    def __init__(
        self,
        store: Store,
        identity: LocalIdentity,
        olm: OlmAccount,
        *,
        connector: Connector = websocket_connector,
    ) -> None:
        self._store = store
        self.identity = identity
        #: The printed recovery code of a new account: set by :meth:`create_account` only,
        #: to be shown once; never stored.
        self.recovery_code: Secret | None = None
        self.username = identity.username
        self.device_id = identity.device_id
        self._connector = connector
        self._hub = EventHub()
        self._emit = self._hub.emit
        self._sessions = SessionManager(
            store, olm, username=identity.username, device_id=identity.device_id, clock_ms=now_ms
        )
        self._sessions.pin_self(identity.certificate)
        self._conn = Connection(
            ws_url(identity.server_url), username=identity.username,
            device_id=identity.device_id, device_key=identity.device_key,
            on_frame=self._on_frame, on_open=self._opened, on_down=self._on_down,
            connector=connector,
        )
        #: Key transparency (client/kt.py): pins, the kept head, the monitor, alerts.
        self.kt = KeyTransparency(
            store, LinkSource(self._conn), username=self.username, clock_ms=now_ms,
            own_devices=lambda: self._sessions.contact(self.username),
        )
        #: Seconds between two checks of our own account in the log while connected.
        self.kt_poll_interval_s: float = KT_MONITOR_INTERVAL_S
        self._pin_lock = asyncio.Lock()
        self._directory = Directory(
            self._conn, store, self._sessions, username=self.username, emit=self._emit,
            kt=self.kt,
        )
        self._outbox = Outbox(store, self._conn, self._emit)
        self._prekeys = Prekeys(store, self._conn, self._sessions, identity.device_key, self._emit)
        #: Contacts, message requests and blocks (contact_list.py).
        self.contacts = ContactList(store, self._conn, self.username)
        #: Friend verification codes (fvc.py); discovery mode, search, strict (discovery.py).
        self.fvc = FriendCodes(store, self._conn, self.username)
        self.discovery = Discovery(self._conn, store, self.fvc, self.contacts,
                                   self._directory.lookup)
        self._direct = DirectMessages(
            store=store, link=self._conn, sessions=self._sessions, directory=self._directory,
            outbox=self._outbox, username=self.username, device_id=self.device_id,
            on_call=self._on_call_signals, log_head=self.kt.checkpoint_ref,
            on_log_head=self._on_log_head, contacts=self.contacts,
        )
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._processor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._synced = asyncio.Event()
        self._generation = 0
        self._closed = False
        #: Rooms (MLS groups) of this device: ``client.rooms.create_room(...)`` etc.
        self.rooms = RoomManager(
            store=store, link=self._conn, contacts=self._directory, sends=self._outbox,
            username=self.username, device_id=self.device_id, signing_key=identity.mls_key,
            emit=self._emit, spawn=self._spawn, queue_marker=self._queue.put_nowait,
        )
        self.rooms.carry_log_head(self.kt.checkpoint_ref, self._on_log_head)
        self.files = Files(store, self._conn, (self.username, self.device_id),  # files.py
                           self._directory.targets, self._direct.send_record, self.rooms,
                           self._direct.expiries)
        self.voice = VoiceNotes(self.files)  #: voice notes: made, sent, played (client/media)
        self.timers = Timers(store, self._direct, self.rooms, self._emit, self._spawn)  #: expiry
        #: The list with unread counts, read marks, search, export, forget (local only).
        self.conversations = Conversations(store, self.username, self.contacts.hidden)
        self.contacts.attach(self._direct.send_to_own_devices, self.conversations)
        #: Receipts, typing, replies, edits, deletes, reactions (client/conversation.py).
        self.controls = Controls(store, self._direct, self.rooms, self.username, self._spawn,
                                 self.contacts.may_signal)
        #: Online/away/offline between contacts (client/presence.py); ``start()`` shares it.
        self.presence = Presence(store, self.contacts, self._direct, self._emit, self._spawn)
        #: Ephemeral chats (client/ephemeral.py): keys in memory only, nothing stored.
        self.ephemeral = EphemeralChats(
            link=self._conn, contacts=self._directory, username=self.username,
            device_id=self.device_id, device_key=identity.device_key, emit=self._emit,
            spawn=self._spawn, rooms=RoomMembers(self.rooms))  # groups: room members
        self._direct.ephemeral_frames = self.ephemeral.on_envelope
        self._direct.key_handover = self.key_handover = KeyHandover(  # after device revoke
            store, username=self.username, send_own=self._direct.send_to_own_devices,
            refresh_own=self.refresh_own_devices, own=self.own_contact,
            identity=lambda: self.identity, adopt=self._adopt, spawn=self._spawn)
        # Calls (1:1 and room calls) are built on first use: see CallSurface.

        #: What each unsolicited server event does (replies to requests never come here).
        self._handlers: dict[str, _Handler] = {
            ev.INBOX_FRAME: self._on_inbox_frame,
            ev.SEND_ACK: lambda _, data: self._queue.put_nowait(_Ack(data)),
            ev.REPLAY_DONE: lambda _, __: self._queue.put_nowait(_ReplayDone(self._generation)),
            ev.ERROR: self._on_error,
            ev.PREKEYS_LOW: lambda _, __: self._spawn(self._prekeys.low()),
            ev.DEVICE_ADDED: self._on_own_devices_changed,  # the lookup tells (DeviceLinked)
            ev.DEVICE_REVOKED: self._on_own_devices_changed,
            ev.ACCOUNT_DELETED: self._on_account_deleted,
            ev.KEYS_CHANGED: self._on_keys_changed,
            pr.ROOM_FRAME: lambda _, data: self._queue.put_nowait(_RoomFrame(data)),
            pr.KEYPACKAGES_LOW: lambda _, data: self._spawn(self.rooms.replenish(data)),
        }
        self._handlers.update(self.discovery.handlers(self._spawn))
        self._account_deleted = store.flag(ACCOUNT_DELETED_FLAG)

    def __repr__(self) -> str:
        return f"Client({self.username}/{self.device_id})"

    # =========================================================================
    # Making and opening accounts
    # =========================================================================

    @classmethod
    async def create_account(
        cls,
        server_url: str,
        username: str,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        kdf: KdfParams | None = None,
        connector: Connector = websocket_connector,
        connect: bool = True,
        device_id: str | None = None,
        kt_key: str | None = None,
        kt_witnesses: tuple[str, ...] = (),
        kt_min_cosignatures: int = 1,
        on_pow: Callable[[int], None] | None = None,
    ) -> Client:
        """Claim ``username`` on the server and keep the new keys in ``data_dir``.

        The keys are sealed in the store before registration, so a crash never
        leaves a claimed username whose keys are lost. If the server refuses
        (name taken, unreachable), the new store is removed again. With
        ``connect`` (the default) the client comes back connected, with its
        prekeys uploaded and the server's transparency log pinned: its log key
        and witness keys, or ``kt_key`` / ``kt_witnesses`` (verifier keys) given
        from elsewhere, in which case a server with another log key is refused
        (:class:`~sottovoce.client.errors.KTAlertRaised`; the account stays, and
        its lookups are refused until the right log is pinned). ``kt_min_cosignatures``:
        the witness cosignatures required (0 opts out of witnesses). ``device_id``: the
        device's id (default: random; the recorder device is named ``recorder``).
        ``on_pow(bits)``: called before the registration's proof of work is solved.
        """
        validate_username(username)
        url = ws_url(server_url)
        identity, olm = LocalIdentity.new(
            username=username, server_url=server_url, now_ms=now_ms(), rng=secrets.token_bytes,
            device_id=device_id,
        )
        code = new_recovery_code(secrets.token_bytes)
        rk = recovery_key_from_code(code.expose().decode(), username=username)
        try:
            client = await cls._enroll(
                url, identity, olm, data_dir, passphrase, kdf, connector, connect, add=False,
                recovery_key=rk.public, kt_expect=(kt_key, kt_witnesses, kt_min_cosignatures),
                on_pow=on_pow,
            )
        except KTAlertRaised as exc:
            exc.recovery_code = code  # registered: the code must still reach its owner
            raise
        client.recovery_code = code  # shown once by the caller, never stored
        return client

    @classmethod
    async def recover_on_new_device(
        cls,
        server_url: str,
        username: str,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        code: str,
        *,
        kdf: KdfParams | None = None,
        connector: Connector = websocket_connector,
    ) -> tuple[Client, Secret]:
        """Take ``username`` back on a new device with its printed recovery code: a new
        account key (certifying this device) and a new recovery key, signed by the code's
        key. Returns the connected client and the new recovery code."""
        validate_username(username)
        rk = recovery_key_from_code(code, username=username)
        identity, olm = LocalIdentity.new(
            username=username, server_url=server_url, now_ms=now_ms(), rng=secrets.token_bytes
        )
        new_code = new_recovery_code(secrets.token_bytes)
        new_rk = recovery_key_from_code(new_code.expose().decode(), username=username)
        recovery = Recovery.issue(rk, identity.account_key, new_rk, username=username,
                                  now_ms=now_ms())
        client = await cls._enroll(
            ws_url(server_url), identity, olm, data_dir, passphrase, kdf, connector, True,
            add=True, statements=to_wire([recovery, identity.certificate]),
        )
        return client, new_code

    async def add_device(
        self,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        device_id: str | None = None,
        kdf: KdfParams | None = None,
        connect: bool = True,
    ) -> Client:
        """Make another device of this account in ``data_dir`` and register it.

        Simple linking for now: this device certifies the new device with the
        account key and copies the account key into the new store (the QR/PAKE
        linking planned in docs/architecture.md replaces this later).
        """
        identity, olm = LocalIdentity.new(
            username=self.username,
            server_url=self.identity.server_url,
            now_ms=now_ms(),
            rng=secrets.token_bytes,
            account_key=self.identity.account_key,
            device_id=device_id,
        )
        client = await Client._enroll(
            ws_url(self.identity.server_url),
            identity,
            olm,
            data_dir,
            passphrase,
            kdf,
            self._connector,
            connect,
            add=True,
            kt_expect=self.kt.expected_by_new_device(),
        )
        if client.kt.pins is not None:
            self.kt.remember_own_device(identity.device_id, identity.certificate.keys.signing_key)
        self._directory.notices().expect(identity.device_id)  # added here: not a notice here
        self._directory.forget(self.username)
        return client

    @classmethod
    async def _enroll(
        cls,
        url: str,
        identity: LocalIdentity,
        olm: OlmAccount,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        kdf: KdfParams | None,
        connector: Connector,
        connect: bool,
        *,
        add: bool,
        recovery_key: bytes | None = None,
        statements: tuple[ev.SignedStatement, ...] = (),
        kt_expect: tuple[str | None, tuple[str, ...], int] = (None, (), 1),
        on_pow: Callable[[int], None] | None = None,
    ) -> Client:
        root = Path(data_dir)
        created_dir = not root.exists()
        store = Store.create(root, passphrase, kdf=kdf)
        try:
            with store.transaction():
                store.put_secret("identity", identity.encode())
                store.put_secret_sealed(
                    "olm_account", olm.seal(store.storage_key, secrets.token_bytes)
                )
            expect_log(store, *kt_expect)
            await register_device(url, identity, add=add, connector=connector,
                                  recovery_key=recovery_key, statements=statements,
                                  on_pow=on_pow)
            store.set_flag("registered")
        except BaseException:
            store.close()
            _remove_store(root, created_dir)
            raise
        client = cls(store, identity, olm, connector=connector)
        if connect:
            try:
                await client.connect()
                await client.ensure_prekeys()  # others can open sessions from now on
                await client.rooms.ensure_key_packages()  # and add us to rooms
                await client.pin_log()
            except BaseException:
                await client.close()
                raise
        return client

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        connector: Connector = websocket_connector,
    ) -> Client:
        """Open an existing account; a wrong passphrase raises ``WrongPassphrase``."""
        return cls.load(data_dir, passphrase, connector=connector)

    @classmethod
    def load(
        cls,
        data_dir: str | os.PathLike[str],
        passphrase: str | bytes,
        *,
        connector: Connector = websocket_connector,
    ) -> Client:
        """:meth:`open` without an event loop (e.g. before a TUI starts its own)."""
        store = Store.open(data_dir, passphrase)
        try:
            raw = store.get_secret("identity")
            sealed_olm = store.get_secret_sealed("olm_account")
            if raw is None or sealed_olm is None or not store.flag("registered"):
                raise StoreError("the account in this directory was never registered")
            if store.flag(ACCOUNT_DELETED_FLAG):
                raise StoreError(
                    "the account in this directory was deleted from its server; "
                    "its name cannot be used again (create a new account in another directory)"
                )
            try:
                identity = LocalIdentity.decode(raw)
            except DecodeError:
                raise StoreError("the identity record of this account is damaged") from None
            olm = OlmAccount.restore(store.storage_key, identity.device_id, sealed_olm)
        except BaseException:
            store.close()
            raise
        return cls(store, identity, olm, connector=connector)

    # =========================================================================
    # Connecting
    # =========================================================================

    async def connect(
        self, *, timeout: float = CONNECT_TIMEOUT_S, wait: bool = True, fail_fast: bool = False
    ) -> None:
        """Start the connection (it reconnects by itself) and wait until caught up.

        "Caught up" means authenticated, resumed from ``lastGlobalInboxSeq``
        and every replayed frame stored. Raises :class:`NotConnected` after
        ``timeout``, or with ``fail_fast`` as soon as the first attempt fails
        (saying why); the connection keeps trying in the background.
        """
        if self._closed:
            raise UsageError("client is closed")
        if self._processor is None:
            self._processor = asyncio.get_running_loop().create_task(self._process_loop())
        self.timers.start()  # the sweep task (a task of the client's: close cancels it)
        self._conn.start()
        if wait:
            await self.sync(timeout=timeout, fail_fast=fail_fast)

    async def sync(self, *, timeout: float = CONNECT_TIMEOUT_S, fail_fast: bool = False) -> None:
        """Wait until connected and the replay after resume is stored."""
        deadline = time.monotonic() + timeout
        await self._conn.wait_up(timeout, fail_fast=fail_fast)
        try:
            await asyncio.wait_for(self._synced.wait(), max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise NotConnected("the server did not finish replaying the inbox") from None

    def configure_reconnect(self, *, base_s: float, cap_s: float) -> None:
        """Reconnect backoff: first delay and ceiling (default 0.2 s and 15 s, jittered)."""
        if not 0 < base_s <= cap_s:
            raise UsageError("need 0 < base_s <= cap_s")
        self._conn.backoff_base_s = base_s
        self._conn.backoff_cap_s = cap_s

    @property
    def connected(self) -> bool:
        return self._conn.is_up

    @property
    def connection_problem(self) -> str | None:
        """Why the last connection attempt failed, while it stays down (``None`` once up)."""
        return None if self._conn.is_up else self._conn.last_failure

    def known_contact(self, username: str) -> bool:
        """``username`` was looked up before: its account key is pinned on this device."""
        return self._directory.contact(username) is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Disconnect, store whatever is already received, and close the store."""
        if self._closed:
            return
        await self._close_calls()  # hang up while the hang-up can still reach the peer
        await self.presence.close()  # "offline" to the contacts that hear us
        self.ephemeral.panic()  # ends every ephemeral chat, telling the peer
        self._closed = True
        self._outbox.close()
        await self._conn.close()
        if self._processor is not None:
            # Frames already received are stored (their ack goes out on the next resume).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), 5)
            self._processor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._processor
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._direct.forget_ephemeral()
        self.files.wipe_views()
        self._store.close()

    async def _drain(self) -> None:
        while not self._queue.empty():
            await asyncio.sleep(0.01)

    async def drop_connection(self) -> None:
        """Drop the socket (it reconnects with backoff); for tests of resume."""
        await self._conn.drop()

    async def _opened(self, info: ConnectedInfo) -> None:
        # Order on the wire: resume, then the unacked sends in outbox order (up to
        # the window), then new sends, which also go through the outbox pump. No
        # await between the pump and mark_up: a send committed meanwhile cannot
        # overtake older outbox rows.
        self._generation += 1
        self._synced.clear()
        self._conn.send_frame_opening(
            ev.Resume(lastGlobalInboxSeq=self._store.last_inbox_seq).to_frame()
        )
        self._outbox.reopen(self._conn.send_frame_opening)
        self._conn.mark_up()
        self._spawn(self._send_unsent())
        self._spawn(self.discovery.send_pending())  # grants withdrawn while offline
        self._spawn(self._maintenance())
        self._spawn(self.key_handover.settle())
        self.presence.connected()

    def _on_down(self, error: BaseException | None) -> None:
        self._synced.clear()
        self.presence.disconnected()
        # docs/protocol.md §Ephemeral: the ring dies with the connection
        self._direct.forget_ephemeral()
        self.ephemeral.connection_lost()
        self._emit(ConnectionChanged(connected=False))
        if self._conn.fatal is not None:
            err = self._conn.fatal
            self._emit(ErrorEvent(code=err.code, message=str(err)))
            self._synced.set()  # wake waiters; sync() then raises the fatal error

    async def _maintenance(self) -> None:
        try:
            await self._renew_if_due()
            await self.ensure_prekeys()
            await self.rooms.ensure_key_packages()
            if not self._directory.looked_up(self.username):
                await self._directory.lookup(self.username)
        except (SottovoceError, TransportClosed) as exc:
            self._emit_error(exc)
        await self._watch_log(self._generation)

    # =========================================================================
    # Key transparency (client/kt.py)
    # =========================================================================

    async def pin_log(self) -> Pins | None:
        """Pin the server's transparency log if nothing is pinned yet (on first use, or
        with the keys given at account creation); ``None`` if the server has no log."""
        async with self._pin_lock:  # the first connection's monitor may be pinning too
            if self.kt.pins is not None:
                return self.kt.pins
            try:
                return await self.kt.pin_from_server()
            except ServerError as exc:
                if exc.code != "unknown_event" or self.kt.required:
                    raise
                return None  # a server without key transparency: lookups stay unverified

    async def check_log(self) -> int:
        """Check the log's newest head and our own account's versions in it now
        (:meth:`KeyTransparency.refresh`, :meth:`KeyTransparency.poll_own`); returns how
        many versions of our account were new."""
        if await self.pin_log() is None:
            return 0
        await self.kt.refresh()
        if not self._directory.looked_up(self.username):
            await self._directory.lookup(self.username)  # our devices' certificates
        return await self.kt.poll_own(lambda: self._directory.lookup(self.username))

    async def _watch_log(self, generation: int) -> None:
        """On each connection: check our own account now and every kt_poll_interval_s."""
        while generation == self._generation and self._conn.is_up and not self._closed:
            try:
                await self.check_log()
            except (NotConnected, TransportClosed):
                return
            except (SottovoceError, ProtocolError) as exc:
                self._emit_error(exc)  # KT alerts are stored too: kt status shows them
            await asyncio.sleep(self.kt_poll_interval_s)

    def _on_log_head(self, sender: str, size: int, root: bytes) -> None:
        """A peer's message carried its log head: compare it with ours (once per head)."""

        async def compare() -> None:
            try:
                await self.kt.compare(sender, size, root)
            except (SottovoceError, ProtocolError, TransportClosed) as exc:
                self._emit_error(exc)

        if self.kt.pins is not None:
            self._spawn(compare())

    def _emit_error(self, exc: BaseException) -> None:
        """An operation of the client's own failed: tell the application, do not raise."""
        self._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    async def _send_unsent(self) -> None:
        """After a connection comes up: the messages queued offline go out."""
        try:
            await self._direct.send_unsent()
        except (SottovoceError, ProtocolError) as exc:
            self._emit_error(exc)

    async def ensure_prekeys(self) -> None:
        """Upload the first batch of one-time keys and a fallback key, once per device."""
        await self._prekeys.ensure()

    async def revoke_device(self, device_id: str) -> None:
        """Revoke another device of this account, which may hold the account key: the
        account key is succeeded by a new one (signed by both), every other device is
        certified again under it and the device is revoked, in one upload.

        The server closes the device's connections at once, asks every room it is in to
        remove it, and from then on refuses anything signed by the old key; contacts
        follow the succession on their next lookup (``KeysChanged``).
        """
        validate_device_id(device_id)
        if device_id == self.device_id:
            raise UsageError("revoke this device from another device of the account")
        self._directory.forget(self.username)
        await self._directory.lookup(self.username)
        own = self._sessions.contact(self.username)
        if own is not None and own.account_key != self.identity.account_key.public:
            # A succession from a key that no longer rules would fork the account.
            raise UsageError(
                "another device of this account replaced the account key: revoke from that "
                "device (or, if that was not you, use the recovery code: account recover)"
            )
        if own is None or device_id not in own.certificates:
            raise UsageError(f"this account has no active device '{device_id}'")
        rotation = revoke_by_succession(
            self.identity.account_key, self.identity.certificate, own.certificates.values(),
            device_id, now_ms=now_ms(), rng=secrets.token_bytes,
        )
        await self._conn.request(
            ev.AccountStatements(statements=to_wire(rotation.statements)),
            frozenset({ev.ACCOUNT_HEAD}),
        )
        await self._adopt(rotation)
        await self.key_handover.send(rotation)  # the survivors hold the new key too

    async def recover_account(self, code: str) -> Secret:
        """Take the account back with its printed recovery code (from this device, even a
        revoked one): a new account key and recovery key, signed by the code's key, which
        cancel every statement made with an account key alone since the last recovery.
        Returns the new recovery code (the old one is used up). Other devices of the
        account must be linked again."""
        rotation, new_code = recover(code, self.identity.certificate, now_ms=now_ms(),
                                     rng=secrets.token_bytes)
        await self._relogin(rotation)
        return new_code

    async def renew_certificate(self) -> None:
        """A fresh certificate for this device under the current account key (the same
        device keys); works after expiry too, through a login of its own."""
        await self._relogin(self._renewal())

    def _renewal(self) -> Rotation:
        cert = recertify(self.identity.account_key, [self.identity.certificate],
                         now_ms=now_ms())[0]
        return Rotation(account_key=self.identity.account_key, statements=(cert,),
                        certificate=cert)

    async def _relogin(self, rotation: Rotation) -> None:
        """Send ``rotation`` on a login of its own (``device.add`` with statements), which
        works for a revoked or expired device too, and adopt it; the connection (started
        after, or reconnecting) logs in under the new certificate."""
        renewed = dataclasses.replace(self.identity, account_key=rotation.account_key,
                                      certificate=rotation.certificate)
        await register_device(ws_url(self.identity.server_url), renewed, add=True,
                              connector=self._connector, statements=to_wire(rotation.statements))
        await self._adopt(rotation)

    async def _renew_if_due(self) -> None:
        """Renew this device's certificate while it is still valid, once it is close to
        expiry (checked on every connect)."""
        if self.identity.certificate.expires_at_ms - now_ms() > CERT_RENEW_BEFORE_MS:
            return
        rotation = self._renewal()
        await self._conn.request(ev.AccountStatements(statements=to_wire(rotation.statements)),
                                 frozenset({ev.ACCOUNT_HEAD}))
        await self._adopt(rotation)

    async def _adopt(self, rotation: Rotation) -> None:
        """Keep the new account key and certificate, and look our own account up again."""
        self.identity = dataclasses.replace(
            self.identity, account_key=rotation.account_key, certificate=rotation.certificate
        )
        with self._store.transaction():
            self._store.put_secret("identity", self.identity.encode())
        self._directory.forget(self.username)
        if self._conn.is_up:
            await self._directory.lookup(self.username)

    async def delete_account(self) -> None:
        """Delete this account on the server, for every device (signed by the account key).

        The server revokes every device of it, drops their prekeys, KeyPackages
        and queued messages, keeps the username as a tombstone (nobody can
        register it again) and asks every room of its devices to remove them.
        This store is then marked deleted (:meth:`open` refuses it; the local
        history stays on disk until the directory is removed) and the client
        closes. Irreversible.
        """
        statement = AccountDeletion.issue(
            self.identity.account_key, username=self.username, now_ms=now_ms()
        )
        await self._conn.request(
            ev.DeleteAccount(statement=statement.encode()), frozenset({ev.ACCOUNT_DELETED})
        )
        self._mark_deleted()
        await self.close()

    def _mark_deleted(self) -> None:
        self._account_deleted = True
        if not self._closed and not self._store.flag(ACCOUNT_DELETED_FLAG):
            with self._store.transaction():
                self._store.set_flag(ACCOUNT_DELETED_FLAG)

    @property
    def account_deleted(self) -> bool:
        """The server deleted this account (here or from another of its devices)."""
        return self._account_deleted

    async def register_push(self, endpoint: str) -> None:
        """Ask the server to wake this device with tickles at ``endpoint`` (an http(s) URL).

        A tickle carries no content (docs/protocol.md §Push); on one, connect and resume.
        """
        await self._conn.request(
            ev.PushRegister(endpoint=endpoint), frozenset({ev.PUSH_REGISTERED})
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # =========================================================================
    # Events
    # =========================================================================

    def events(self) -> EventStream:
        """Typed events from now on (``async for event in client.events(): ...``)."""
        return EventStream(self._hub)


    # =========================================================================
    # Sending (the 1:1 path is DirectMessages; rooms are ``client.rooms``)
    # =========================================================================

    async def send_text(self, username: str, text: str, *, ephemeral: bool = False) -> str:
        """Encrypt ``text`` for every device of ``username`` (and our other devices).

        Returns the messageId once the message is durably in the outbox (it is
        resent on every reconnect until the server acks it). Offline, a message
        to someone whose devices this device cannot encrypt to yet (never looked
        up, or a device without a session) is stored as sending with its
        messageId and idempotencyKey fixed, and encrypted on the next
        connection (:meth:`pending_sends` counts it). ``ephemeral``: nothing is
        written to the store or on the server; the peer must be online (else an
        ``ErrorEvent`` with ``recipient_offline``).
        """
        return await self._direct.send_text(username, text, ephemeral=ephemeral)

    async def drain_outbox(self, timeout: float) -> int:
        """Wait (at most ``timeout`` s) until every queued message is acknowledged.

        Returns how many are still waiting (0: all sent).
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self.pending_sends()
            if not left or time.monotonic() >= deadline or not self._conn.is_up:
                return left
            await asyncio.sleep(0.05)

    async def wait_sent(self, message_id: str, *, timeout: float = CONNECT_TIMEOUT_S) -> int:
        """Wait for the server's ack of ``message_id``; returns its serverSeq."""
        return await self._outbox.wait_sent(message_id, timeout=timeout)

    def pending_sends(self) -> int:
        """Messages not acknowledged yet: in the outbox, or waiting to be encrypted."""
        return self._outbox.pending()

    def _on_send_error(self, message_id: str, data: dict[str, Any]) -> None:
        err = ev.WireError.from_data(data) if "code" in data else None
        code = err.code if err else "error"
        if code == "stale_epoch" and err is not None:
            stored = self._store.get_message(message_id)
            if stored is not None and stored.peer.startswith(ROOM_PREFIX):
                self.rooms.on_stale_send(message_id, stored.peer, err.details)
                return
        if code == "device_mismatch" or (  # a strict contact's devices changed: look up
                code == "unknown_recipient" and self.discovery.holds_cap(message_id)):
            self._spawn(self._direct.resend_after_mismatch(message_id))
            return
        if err is not None and err.retryable:
            delay = max(err.retryAfterMs, 200) / 1000
            asyncio.get_running_loop().call_later(delay, self._outbox.resend, message_id)
            return
        self._outbox.fail(message_id, code, err.message if err else "send refused")

    # =========================================================================
    # Receiving: the handler table, then one batch per transaction
    # =========================================================================

    def _on_frame(self, event: str, request_id: str | None, data: dict[str, Any]) -> None:
        """Called by the connection for every frame that is not a request's reply."""
        handler = self._handlers.get(event)
        if handler is not None:
            handler(request_id, data)

    def _on_inbox_frame(self, _: str | None, data: dict[str, Any]) -> None:
        seq = data.get("globalInboxSeq", 0)
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            self._queue.put_nowait(_Frame(seq, data))

    def _on_error(self, request_id: str | None, data: dict[str, Any]) -> None:
        message_id = data.get("messageId") or request_id
        if isinstance(message_id, str) and self._outbox.holds(message_id):
            self._on_send_error(message_id, data)
            return
        err = data.get("code")
        self._emit(
            ErrorEvent(
                code=err if isinstance(err, str) else "error",
                message=str(data.get("message", ""))[:200],
                message_id=message_id if isinstance(message_id, str) else None,
                retryable=bool(data.get("retryable")),
            )
        )

    def linking(self) -> LinkPort:
        """What linking a new device to this account uses of this device (client/linking.py)."""

        def route(name: str, handler: Callable[[dict[str, Any]], None]) -> None:
            self._handlers[name] = lambda _, data: handler(data)

        return LinkPort(link=self._conn, store=self._store, forget=self._directory.forget,
                        contacts=self._directory, route=route)

    @classmethod
    async def enroll_linked(
        cls, identity: LocalIdentity, olm: OlmAccount, data_dir: str | os.PathLike[str],
        passphrase: str | bytes, *, kdf: KdfParams | None = None,
        connector: Connector = websocket_connector,
    ) -> Client:
        """Register a device that linking made (its certificate from another device of the
        account) and come back connected, with prekeys and KeyPackages uploaded."""
        return await cls._enroll(ws_url(identity.server_url), identity, olm, data_dir,
                                 passphrase, kdf, connector, True, add=True)

    def _on_own_devices_changed(self, _: str | None, __: dict[str, Any]) -> None:
        self._directory.forget(self.username)
        self._spawn(self._refresh_self())

    def _on_account_deleted(self, _: str | None, __: dict[str, Any]) -> None:
        # Another device of ours deleted the account; the server closes us next (4002).
        self._mark_deleted()
        self._emit(ErrorEvent(code="account_deleted", message="this account was deleted"))

    def own_contact(self) -> Contact | None:
        """This account as this device knows it: its devices' certificates, the revoked."""
        return self._directory.contact(self.username)

    async def refresh_own_devices(self, *, again: bool = True) -> None:
        """Ask the directory for this account's devices again (one was linked or revoked;
        ``again=False``: only if not yet on this run). Changes become notices."""
        if again or not self._directory.looked_up(self.username):
            self._directory.forget(self.username)
            await self._directory.lookup(self.username)

    def _on_keys_changed(self, _: str | None, data: dict[str, Any]) -> None:
        """A correspondent's account key changed: follow its chain now (``KeysChanged``,
        or the fork's error), not at the next send."""
        username = data.get("username")
        if isinstance(username, str) and self._sessions.contact(username) is not None:
            self._directory.forget(username)
            self._spawn(self._follow(username))

    async def _follow(self, username: str) -> None:
        try:
            await self._directory.lookup(username)
        except SottovoceError as exc:
            self._emit_error(exc)

    async def _refresh_self(self) -> None:
        with contextlib.suppress(SottovoceError):
            await self._directory.lookup(self.username)

    async def _process_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < CLIENT_INBOX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad batch stop the loop
                self._emit(ErrorEvent(code="internal_error", message=type(exc).__name__))
                # Nothing of the batch was acked: a resume brings its frames back.
                self._spawn(self._conn.drop())

    async def _process(self, batch: list[_Item]) -> None:
        frames: list[tuple[int, ev.Envelope | None]] = []
        for item in batch:
            if isinstance(item, _Frame):
                try:
                    _, envelope = ev.parse_inbox_frame(item.data)
                except ProtocolError:
                    envelope = None
                frames.append((item.seq, envelope))
        envelopes = iter(frames)
        await self.rooms.prepare(
            [i.data for i in batch if isinstance(i, _RoomFrame)],
            [e for _, e in frames if e is not None and e.conversationId.startswith(ROOM_PREFIX)],
        )
        # Every await happens before the transaction (see DirectMessages.prepare).
        failed_lookup = await self._direct.prepare([e for _, e in frames if e is not None])
        events: list[ClientEvent] = []
        received: list[str] = []
        replay_done = False
        last_seq = self._store.last_inbox_seq
        top = 0
        try:
            with self._store.transaction():
                for item in batch:
                    if isinstance(item, _Ack):
                        self._outbox.acked(item.data, events)
                    elif isinstance(item, _ReplayDone):
                        replay_done = replay_done or item.generation == self._generation
                    elif isinstance(item, _RoomFrame):
                        self.rooms.accept_frame(item.data, events)
                    elif isinstance(item, SyncedMark):
                        self.rooms.accept_synced(item, events)
                    else:
                        _, envelope = next(envelopes)
                        top = max(top, item.seq)
                        if item.seq and item.seq <= last_seq:
                            continue
                        if envelope is not None and envelope.conversationId.startswith(
                            ROOM_PREFIX
                        ):
                            self.rooms.accept_inbox(item.seq, envelope, item.data, events)
                            continue
                        self._direct.accept(item.seq, envelope, failed_lookup, events, received)
                self._sessions.flush()
                self.rooms.flush()
                self._store.set_last_inbox_seq(top)
        except BaseException:
            self._sessions.discard_unflushed()
            self.rooms.discard_unflushed()
            raise
        self.rooms.after_batch()
        self.controls.after_batch(events, received)
        if self._room_calls is not None:
            self._room_calls.rooms_changed()
        if any(isinstance(item, _Ack) for item in batch):
            self._outbox.pump()  # acks opened the window
        if top:
            # Only now is it durable here: the server may delete up to ``top``.
            self._conn.send_frame(ev.AckRead(upToGlobalInboxSeq=top).to_frame())
        for event in events:
            self._emit(event)
        for message_id in received:
            stored = self._store.get_message(message_id)
            if stored is not None:
                self._emit(MessageReceived(message=stored))
        if replay_done and self._conn.is_up:
            self._synced.set()
            self._emit(ConnectionChanged(connected=True))

    # =========================================================================
    # Reading (the UI reads the store only)
    # =========================================================================

    def history(
        self, username: str, limit: int = 50, before: int | None = None
    ) -> list[StoredMessage]:
        """Messages with ``username``, oldest first; ``before`` is a ``local_id`` cursor."""
        return self._store.history(username, limit=limit, before=before)

    def message(self, message_id: str) -> StoredMessage | None:
        return self._store.get_message(message_id)

    def messages_after(self, local_id: int, limit: int = 1000) -> list[StoredMessage]:
        return self._store.messages_after(local_id, limit=limit)

    def last_local_id(self) -> int:
        return self._store.last_local_id()

    def ephemeral_messages(self, username: str | None = None) -> list[EphemeralReceived]:
        return self._direct.ephemeral_messages(username)

    def panic(self) -> None:
        """Forget every ephemeral message now and end every ephemeral chat."""
        self._direct.forget_ephemeral()
        self.ephemeral.panic()

    @property
    def last_inbox_seq(self) -> int:
        return self._store.last_inbox_seq

    async def safety_number(self, username: str) -> SafetyNumber:
        """The 60-digit safety number with ``username`` (looked up if not pinned yet)."""
        contact = self._directory.contact(username)
        if contact is None:
            await self._directory.lookup(username)
            contact = self._directory.contact(username)
        if contact is None:  # pragma: no cover - lookup stores it or raises
            raise RemoteError("the directory did not return this user")
        return safety_number(self.identity.certificate.account_key, contact.account_key)

    def known_safety_number(self, username: str) -> SafetyNumber | None:
        """The safety number from the pinned key only (no network)."""
        contact = self._directory.contact(username)
        if contact is None:
            return None
        return safety_number(self.identity.certificate.account_key, contact.account_key)

    def mark_verified(self, username: str, verified: bool = True) -> bool:
        """Mark (or unmark) ``username``'s pinned key as compared in person; False: not pinned."""
        return self._sessions.mark_verified(username, verified)

    def is_verified(self, username: str) -> bool:
        contact = self._directory.contact(username)
        return bool(contact is not None and contact.verified)

    # =========================================================================
    # Audit only
    # =========================================================================

    def audit_only_private_material(self) -> list[tuple[str, Secret]]:
        """FOR THE BLINDNESS AUDIT ONLY (``sottovoce audit blindness``); never for apps.

        This device's private key material, labelled, so the audit kit can prove
        none of it reached the server; the Olm and MLS parts come from their owners.
        """
        out = [
            ("account key", self.identity.account_key.private_bytes()),
            ("device signing key", self.identity.device_key.private_bytes()),
            ("store key", self._store.storage_key),
        ]
        mls_key = getattr(self.identity, "mls_key", None)
        if mls_key is not None:
            out.append(("mls signature key", mls_key.private_bytes()))
        out += self._sessions.audit_only_private_material()
        rooms = getattr(self, "rooms", None)
        if rooms is not None:
            out += rooms.audit_only_private_material()
        return out


def _remove_store(root: Path, created_dir: bool) -> None:
    for name in (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", LOCK_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    if created_dir:
        with contextlib.suppress(OSError):
            root.rmdir()  # only if we made it and it is empty again
