"""The async client SDK: one account on one device (docs/architecture.md §Data path).

    send_text ─► directory (TOFU) ─► claim bundles for devices without a session
              ─► encrypt once per device (peer's devices + our other devices)
              ─► ONE transaction: sessions + message (sending) + outbox frame
              ─► socket (or later: the outbox is resent on every reconnect,
                 same messageId and idempotencyKey)
    send.ack  ─► message ✓, outbox row deleted
    inbox     ─► batch ─► ONE transaction: sessions + messages + lastGlobalInboxSeq
              ─► ksmpv3.ack.read ─► events to the application

The application reads messages back from the local store only; the events
tell it when to look. Every inbound message is decrypted once: a replayed
frame whose messageId is stored is skipped before decryption.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sottovoce.client.connection import (
    ConnectedInfo,
    Connection,
    Connector,
    Transport,
    TransportClosed,
    expect_reply,
    read_challenge,
    sign_challenge,
    websocket_connector,
    ws_url,
)
from sottovoce.client.errors import IdentityChanged, NotConnected, ServerError, StoreError
from sottovoce.client.events import (
    ClientEvent,
    ConnectionChanged,
    DeliveryStateChanged,
    EphemeralReceived,
    ErrorEvent,
    MessageReceived,
    MessageSent,
)
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.payload import Payload
from sottovoce.client.rooms import (
    KEYPACKAGES_LOW,
    ROOM_FRAME,
    ROOM_PREFIX,
    RoomManager,
    SyncedMark,
)
from sottovoce.client.sessions import Device, SessionManager
from sottovoce.client.store import (
    LOCK_FILE,
    STORE_FILE,
    DeliveryStatus,
    KdfParams,
    Store,
    StoredMessage,
)
from sottovoce.errors import DecodeError, RemoteError, SottovoceError, UsageError
from sottovoce.identity import (
    AccountDeletion,
    RevocationStatement,
    SafetyNumber,
    safety_number,
    validate_device_id,
    validate_username,
)
from sottovoce.limits import (
    CLIENT_INBOX_BATCH,
    DEVICE_MISMATCH_RETRIES,
    EPHEMERAL_RING_SIZE,
    MAX_FRAME_BYTES,
    MAX_TEXT_BYTES,
    ONE_TIME_KEYS_BATCH,
    OUTBOX_WINDOW,
)
from sottovoce.pairwise import OlmAccount, PrekeyBundle
from sottovoce.pairwise.account import PICKLE_KEY
from sottovoce.protocol import events as ev
from sottovoce.protocol.fields import ProtocolError
from sottovoce.secret import Secret

CONNECT_TIMEOUT_S = 15.0


#: Store flag set once the server confirmed (or told us of) this account's deletion.
ACCOUNT_DELETED_FLAG = "account_deleted"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    """A random messageId / idempotencyKey (22 url-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


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


@dataclass(slots=True, kw_only=True)
class _PendingSend:
    """A prepared send waiting for the group commit."""

    message_id: str
    idempotency_key: str
    peer: str
    text: str
    created_ms: int
    frame: str
    done: asyncio.Future[None]


class EventStream:
    """An async iterator of :mod:`sottovoce.client.events`; subscribed from creation on."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queue: asyncio.Queue[ClientEvent] = asyncio.Queue()
        client._subscribers.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ClientEvent:
        return await self._queue.get()

    async def next(self, timeout: float | None = None) -> ClientEvent:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def pending(self) -> list[ClientEvent]:
        """Everything already queued, without waiting."""
        out: list[ClientEvent] = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        return out

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self._client._subscribers.remove(self._queue)


class Client:
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
        self.username = identity.username
        self.device_id = identity.device_id
        self._connector = connector
        self._sessions = SessionManager(
            store, olm, username=identity.username, device_id=identity.device_id, clock_ms=now_ms
        )
        self._sessions.pin_self(identity.certificate)
        self._conn = Connection(
            ws_url(identity.server_url),
            username=identity.username,
            device_id=identity.device_id,
            device_key=identity.device_key,
            on_frame=self._on_frame,
            on_open=self._opened,
            on_down=self._on_down,
            connector=connector,
        )
        self._subscribers: list[asyncio.Queue[ClientEvent]] = []
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._processor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._send_lock = asyncio.Lock()
        self._synced = asyncio.Event()
        self._generation = 0
        self._ack_waiters: dict[str, asyncio.Future[int]] = {}
        self._mismatch_retries: dict[str, int] = {}
        self._looked_up: set[str] = set()
        self._ephemeral: deque[EphemeralReceived] = deque(maxlen=EPHEMERAL_RING_SIZE)
        self._closed = False
        self._prekey_lock = asyncio.Lock()
        self._pending_sends: list[_PendingSend] = []
        self._cursor = 0  # highest outbox oid written on the current connection
        self._inflight: dict[str, int] = {}  # written, not acked: messageId -> oid
        #: prekeys.low notices received, and how many had come before an upload was sent
        #: that then succeeded (those spoke of the stock before it).
        self._prekey_notices = 0
        self._prekey_notices_answered = 0
        #: Rooms (MLS groups) of this device: ``client.rooms.create_room(...)`` etc.
        self.rooms = RoomManager(self)
        self._account_deleted = store.flag(ACCOUNT_DELETED_FLAG)
        #: Sends stored offline wait for encryption (one process per store: exact).
        self._has_unsent = store.unsent_size() > 0

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
    ) -> Client:
        """Claim ``username`` on the server and keep the new keys in ``data_dir``.

        The keys are sealed in the store before registration, so a crash never
        leaves a claimed username whose keys are lost. If the server refuses
        (name taken, unreachable), the new store is removed again. With
        ``connect`` (the default) the client comes back connected, with its
        prekeys uploaded.
        """
        validate_username(username)
        url = ws_url(server_url)
        identity, olm = LocalIdentity.new(
            username=username, server_url=server_url, now_ms=now_ms(), rng=secrets.token_bytes
        )
        return await cls._enroll(
            url, identity, olm, data_dir, passphrase, kdf, connector, connect, add=False
        )

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
        )
        self._looked_up.discard(self.username)
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
            await register_device(url, identity, add=add, connector=connector)
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
        return self._sessions.contact(username) is not None

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Disconnect, store whatever is already received, and close the store."""
        if self._closed:
            return
        self._closed = True
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
        self._ephemeral.clear()
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
        self._cursor = 0
        self._inflight.clear()
        self._pump(opening=True)
        self._conn.mark_up()
        self._spawn(self._send_unsent())
        self._spawn(self._maintenance())

    def _pump(self, *, opening: bool = False) -> None:
        """Write outbox rows not yet written on this connection, oldest first.

        At most ``OUTBOX_WINDOW`` sends are unacknowledged at a time, so a long
        outbox after a reconnect never trips the server's per-device rate limit.
        """
        if not opening and not self._conn.is_up:
            return
        while len(self._inflight) < OUTBOX_WINDOW:
            room = OUTBOX_WINDOW - len(self._inflight)
            items = self._store.outbox(after_oid=self._cursor, limit=room)
            if not items:
                return
            for item in items:
                if opening:
                    self._conn.send_frame_opening(item.frame)
                elif not self._conn.send_frame(item.frame):
                    return
                self._inflight[item.message_id] = item.oid
                self._cursor = item.oid

    def _on_down(self, error: BaseException | None) -> None:
        self._synced.clear()
        self._ephemeral.clear()  # docs/protocol.md §Ephemeral: the ring dies with the connection
        self._emit(ConnectionChanged(connected=False))
        if self._conn.fatal is not None:
            err = self._conn.fatal
            self._emit(ErrorEvent(code=err.code, message=str(err)))
            self._synced.set()  # wake waiters; sync() then raises the fatal error

    async def _maintenance(self) -> None:
        try:
            await self.ensure_prekeys()
            await self.rooms.ensure_key_packages()
            if self.username not in self._looked_up:
                await self._lookup(self.username)
        except (SottovoceError, TransportClosed) as exc:
            self._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

    async def ensure_prekeys(self) -> None:
        """Upload the first batch of one-time keys and a fallback key, once per device."""
        async with self._prekey_lock:
            if not self._store.flag("prekeys_uploaded"):
                await self._upload_prekeys(ONE_TIME_KEYS_BATCH, fallback=True)
                self._store.set_flag("prekeys_uploaded")

    async def _replenish(self, notice: int) -> None:
        """``sottovoce.prekeys.low`` (the ``notice``-th): top the stock up at once, unless
        the notice came before an upload that has succeeded since (it spoke of the stock
        before that upload, as the one sent at every login does before the first one)."""
        try:
            async with self._prekey_lock:
                if self._prekey_notices_answered >= notice:
                    return
                if not self._store.flag("prekeys_uploaded"):
                    await self._upload_prekeys(ONE_TIME_KEYS_BATCH, fallback=True)
                    self._store.set_flag("prekeys_uploaded")
                else:
                    await self._upload_prekeys(ONE_TIME_KEYS_BATCH, fallback=False)
        except SottovoceError as exc:
            self._emit(ErrorEvent(code=exc.code, message=str(exc)))

    async def _upload_prekeys(self, count: int, *, fallback: bool) -> None:
        olm = self._sessions.olm
        keys = olm.new_one_time_keys(self.identity.device_key, count)
        # The fallback key rotates only with the first batch: vodozemac remembers one
        # previous fallback key, and a peer may still hold a bundle with it.
        fallback_key = olm.new_fallback_key(self.identity.device_key) if fallback else None
        # The private halves are durable before anyone can claim the public ones.
        with self._store.transaction():
            self._sessions.mark_olm_dirty()
            self._sessions.flush()
        notices = self._prekey_notices
        await self._conn.request(
            ev.PrekeysUpload(
                oneTimeKeys=tuple(k.encode() for k in keys),
                fallbackKey=None if fallback_key is None else fallback_key.encode(),
            ),
            frozenset({ev.PREKEYS_STORED}),
        )
        self._prekey_notices_answered = max(self._prekey_notices_answered, notices)

    async def revoke_device(self, device_id: str) -> None:
        """Revoke another device of this account (a statement signed by the account key).

        The server stops routing to it at once and asks every room it is in to
        remove it (members commit the Remove).
        """
        validate_device_id(device_id)
        if device_id == self.device_id:
            raise UsageError("revoke this device from another device of the account")
        statement = RevocationStatement.issue(
            self.identity.account_key, username=self.username, device_id=device_id, now_ms=now_ms()
        )
        await self._conn.request(
            ev.RevokeDevice(revocation=statement.encode()), frozenset({ev.DEVICE_REVOKED})
        )
        self._looked_up.discard(self.username)
        await self._lookup(self.username)

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
        return EventStream(self)

    def _emit(self, event: ClientEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    # =========================================================================
    # Directory and sessions
    # =========================================================================

    async def _lookup(self, username: str) -> None:
        _, data = await self._conn.request(
            ev.DirectoryLookup(username=username), frozenset({ev.DIRECTORY_RESULT})
        )
        if data.get("username") != username:
            raise RemoteError("directory answered for another username")
        with self._store.transaction():
            self._sessions.apply_directory(data)
        self._looked_up.add(username)

    async def _claim(self, username: str) -> None:
        _, data = await self._conn.request(
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
            if self._sessions.has_session(username, cert.device_id):
                continue
            try:
                self._sessions.add_outbound(bundle)
            except RemoteError as exc:
                self._emit(ErrorEvent(code=exc.code, message=str(exc)))

    async def _targets(self, username: str, *, refresh: bool = False) -> list[Device]:
        """Every device a message to ``username`` goes to, each with a session."""
        for user in (username, self.username):
            cached = self._sessions.contact(user) is not None
            if not cached or refresh or (user not in self._looked_up and self._conn.is_up):
                # Offline with a pinned contact: use it; device_mismatch corrects it later.
                await self._lookup(user)
        targets = [(username, d) for d in self._sessions.devices_of(username)]
        if not targets:
            raise RemoteError(f"'{username}' has no device we can encrypt to")
        targets += [(self.username, d) for d in self._sessions.devices_of(self.username)]
        for user in sorted({u for u, d in targets if not self._sessions.has_session(u, d)}):
            await self._claim(user)
        return [t for t in targets if self._sessions.has_session(*t)]

    # =========================================================================
    # Sending
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
        validate_username(username)
        if username == self.username:
            raise UsageError("send to another user; your other devices get a copy anyway")
        try:
            body = text.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("the message is not valid UTF-8 text") from None
        if not body or len(body) > MAX_TEXT_BYTES:
            raise UsageError(f"a text message is 1-{MAX_TEXT_BYTES} bytes of UTF-8")
        if ephemeral and not self._conn.is_up:
            raise NotConnected("ephemeral messages need a live connection")
        async with self._send_lock:
            if not ephemeral and not self._conn.is_up and not self._can_encrypt_offline(username):
                return self._defer(username, text)
            if self._conn.is_up and self._has_unsent:
                await self._encrypt_unsent()  # older queued messages go out first
            message_id, idempotency_key, created = new_id(), new_id(), now_ms()
            try:
                targets = await self._targets(username)
            except NotConnected:
                if ephemeral:
                    raise
                return self._defer(username, text)  # the connection dropped meanwhile
            frame = self._send_frame(
                username, targets, message_id, idempotency_key, created, body, ephemeral=ephemeral
            )
            if len(frame) > MAX_FRAME_BYTES or ephemeral:
                with self._store.transaction():
                    # The ratchets moved: persist them even if the message goes nowhere.
                    self._sessions.flush()
                if len(frame) > MAX_FRAME_BYTES:
                    raise UsageError("message too large for this many devices")
                if not self._conn.send_frame(frame):
                    raise NotConnected("ephemeral messages need a live connection")
                self._ephemeral.append(
                    EphemeralReceived(
                        peer=username, sender=self.username, message_id=message_id, text=text
                    )
                )
                return message_id
            pending = _PendingSend(
                message_id=message_id,
                idempotency_key=idempotency_key,
                peer=username,
                text=text,
                created_ms=created,
                frame=frame,
                done=asyncio.get_running_loop().create_future(),
            )
            self._pending_sends.append(pending)
            if len(self._pending_sends) == 1:
                asyncio.get_running_loop().call_soon(self._commit_sends)
        # Durable before we return (and before the frame leaves): see _commit_sends.
        await pending.done
        return message_id

    def _send_frame(
        self,
        username: str,
        targets: list[Device],
        message_id: str,
        idempotency_key: str,
        created: int,
        body: bytes,
        *,
        ephemeral: bool = False,
    ) -> str:
        """The ``ksmpv3.send`` frame: one ciphertext per target device (ratchets move)."""
        conversation = ev.dm_conversation_id(self.username, username)
        payload = Payload(
            message_id=message_id,
            conversation_id=conversation,
            content_type="text",
            created_at_ms=created,
            body=body,
        ).encode()
        ciphertexts = tuple(
            ev.DeviceCiphertext(
                userId=user,
                deviceId=device,
                ciphertext=self._sessions.encrypt(user, device, payload),
            )
            for user, device in targets
        )
        send = ev.Send(
            conversationId=conversation,
            messageId=message_id,
            idempotencyKey=idempotency_key,
            recipientUserId=username,
            contentType="text",
            clientCreatedAtMs=created,
            ciphertexts=ciphertexts,
            senderUserId=self.username,
            ephemeral=ephemeral,
        )
        return send.to_frame(request_id=message_id)

    def _can_encrypt_offline(self, username: str) -> bool:
        """Every device of ``username`` and of our own account is known and has a session."""
        for user in (username, self.username):
            if self._sessions.contact(user) is None:
                return False
            devices = self._sessions.devices_of(user)
            if not all(self._sessions.has_session(user, d) for d in devices):
                return False
        return bool(self._sessions.devices_of(username))

    def _defer(self, username: str, text: str) -> str:
        """Store an outgoing message to encrypt on the next connection (see ``unsent``)."""
        message_id, idempotency_key, created = new_id(), new_id(), now_ms()
        with self._store.transaction():
            self._store.add_message(
                message_id=message_id,
                peer=username,
                sender=self.username,
                sender_device=self.device_id,
                outgoing=True,
                status=DeliveryStatus.SENDING,
                text=text,
                client_created_ms=created,
                local_at_ms=created,
                idempotency_key=idempotency_key,
            )
            self._store.add_unsent(message_id)
        self._has_unsent = True
        return message_id

    async def _encrypt_unsent(self) -> None:
        """Encrypt the messages queued while offline, oldest first; call holding the send lock.

        Each keeps the messageId and idempotencyKey it was stored with, so a send
        the server already has is acknowledged as a duplicate, never stored twice.
        """
        for message_id in self._store.unsent():
            stored = self._store.get_message(message_id)
            if stored is None or stored.status is not DeliveryStatus.SENDING:
                with self._store.transaction():
                    self._store.remove_unsent(message_id)
                continue
            try:
                targets = await self._targets(stored.peer)
            except NotConnected:
                return  # the next connection tries again
            except SottovoceError as exc:  # e.g. unknown_user: this message can never go
                self._fail(message_id, exc.code, str(exc))
                continue
            frame = self._send_frame(
                stored.peer,
                targets,
                message_id,
                stored.idempotency_key or new_id(),
                stored.client_created_ms,
                stored.text.encode("utf-8"),
            )
            if len(frame) > MAX_FRAME_BYTES:
                with self._store.transaction():
                    self._sessions.flush()  # the ratchets moved, as in send_text
                self._fail(message_id, "too_large", "message too large for this many devices")
                continue
            with self._store.transaction():
                self._sessions.flush()
                self._store.add_outbox(message_id, stored.idempotency_key or "", frame)
                self._store.remove_unsent(message_id)
            self._pump()
        self._has_unsent = self._store.unsent_size() > 0

    async def _send_unsent(self) -> None:
        """After a connection comes up: the messages queued offline go out."""
        if not self._has_unsent:
            return
        try:
            async with self._send_lock:
                await self._encrypt_unsent()
        except (SottovoceError, ProtocolError) as exc:
            self._emit(ErrorEvent(code=getattr(exc, "code", "error"), message=str(exc)))

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

    def _commit_sends(self) -> None:
        """Group commit: every send prepared in this loop turn, in one transaction.

        Concurrent ``send_text`` calls (e.g. ``asyncio.gather``) share one fsync;
        a single call costs what it did. The ratchet states the sends advanced
        are written in the same transaction as their messages and outbox rows,
        and nothing is written to the socket before that commit.
        """
        batch, self._pending_sends = self._pending_sends, []
        try:
            with self._store.transaction():
                self._sessions.flush()
                for p in batch:
                    self._store.add_message(
                        message_id=p.message_id,
                        peer=p.peer,
                        sender=self.username,
                        sender_device=self.device_id,
                        outgoing=True,
                        status=DeliveryStatus.SENDING,
                        text=p.text,
                        client_created_ms=p.created_ms,
                        local_at_ms=p.created_ms,
                        idempotency_key=p.idempotency_key,
                    )
                    self._store.add_outbox(p.message_id, p.idempotency_key, p.frame)
        except Exception as exc:
            # Nothing was sent: forget the in-memory ratchet steps the store lacks.
            self._sessions.discard_unflushed()
            for p in batch:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)
        self._pump()  # offline: the outbox goes out on the next connect

    async def wait_sent(self, message_id: str, *, timeout: float = CONNECT_TIMEOUT_S) -> int:
        """Wait for the server's ack of ``message_id``; returns its serverSeq."""
        stored = self._store.get_message(message_id)
        if stored is None:
            raise UsageError("unknown message id")
        if stored.status is DeliveryStatus.SENT and stored.server_seq is not None:
            return stored.server_seq
        if stored.status is DeliveryStatus.FAILED:
            raise ServerError("send_failed", "the server refused this message")
        future = self._ack_waiters.get(message_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._ack_waiters[message_id] = future
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise NotConnected("no acknowledgement from the server in time") from None

    def pending_sends(self) -> int:
        """Messages not acknowledged yet: in the outbox, or waiting to be encrypted."""
        return self._store.outbox_size() + self._store.unsent_size()

    def _on_send_error(self, message_id: str, data: dict[str, Any]) -> None:
        err = ev.WireError.from_data(data) if "code" in data else None
        code = err.code if err else "error"
        if code == "stale_epoch" and err is not None:
            stored = self._store.get_message(message_id)
            if stored is not None and stored.peer.startswith(ROOM_PREFIX):
                self.rooms.on_stale_send(message_id, stored.peer, err.details)
                return
        if code == "device_mismatch":
            self._spawn(self._resend_after_mismatch(message_id, err.details if err else {}))
            return
        if err is not None and err.retryable:
            delay = max(err.retryAfterMs, 200) / 1000
            asyncio.get_running_loop().call_later(delay, self._resend, message_id)
            return
        self._fail(message_id, code, err.message if err else "send refused")

    def _resend(self, message_id: str) -> None:
        if self._closed:
            return
        item = self._store.get_outbox(message_id)
        if item is not None:
            self._conn.send_frame(item.frame)

    def _fail(self, message_id: str, code: str, message: str) -> None:
        stored = self._store.get_message(message_id)
        if stored is not None and stored.status is DeliveryStatus.SENDING:
            with self._store.transaction():
                self._store.remove_outbox(message_id)
                self._store.remove_unsent(message_id)
                self._store.set_status(message_id, DeliveryStatus.FAILED)
            self._inflight.pop(message_id, None)
            self._pump()
            self._emit(
                DeliveryStateChanged(
                    message_id=message_id, peer=stored.peer, status=DeliveryStatus.FAILED
                )
            )
        self._emit(ErrorEvent(code=code, message=message, message_id=message_id))
        future = self._ack_waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_exception(ServerError(code, message))

    async def _resend_after_mismatch(self, message_id: str, details: dict[str, Any]) -> None:
        """``device_mismatch``: refresh the directory, re-encrypt for the new set, once."""
        tries = self._mismatch_retries.get(message_id, 0)
        if tries >= DEVICE_MISMATCH_RETRIES:
            self._fail(message_id, "device_mismatch", "the recipient's devices kept changing")
            return
        self._mismatch_retries[message_id] = tries + 1
        try:
            async with self._send_lock:
                stored = self._store.get_message(message_id)
                item = self._store.get_outbox(message_id)
                if stored is None or item is None:
                    return
                _, _, data = ev.parse_frame(item.frame)
                old = ev.Send.from_data(data)
                kept = {(c.userId, c.deviceId): c for c in old.ciphertexts}
                targets = await self._targets(stored.peer, refresh=True)
                payload = Payload(
                    message_id=message_id,
                    conversation_id=old.conversationId,
                    content_type=old.contentType,
                    created_at_ms=old.clientCreatedAtMs,
                    body=stored.text.encode("utf-8"),
                ).encode()
                ciphertexts = tuple(
                    kept.get(t)
                    or ev.DeviceCiphertext(
                        userId=t[0],
                        deviceId=t[1],
                        ciphertext=self._sessions.encrypt(t[0], t[1], payload),
                    )
                    for t in targets
                )
                send = ev.Send(
                    conversationId=old.conversationId,
                    messageId=message_id,
                    idempotencyKey=old.idempotencyKey,
                    recipientUserId=old.recipientUserId,
                    contentType=old.contentType,
                    clientCreatedAtMs=old.clientCreatedAtMs,
                    ciphertexts=ciphertexts,
                    senderUserId=self.username,
                )
                frame = send.to_frame(request_id=message_id)
                with self._store.transaction():
                    self._sessions.flush()
                    self._store.replace_outbox(message_id, frame)
                self._conn.send_frame(frame)
        except (SottovoceError, ProtocolError) as exc:
            self._fail(message_id, getattr(exc, "code", "error"), str(exc))

    # =========================================================================
    # Receiving
    # =========================================================================

    def _on_frame(self, event: str, request_id: str | None, data: dict[str, Any]) -> None:
        """Called by the connection for every frame that is not a request's reply."""
        if event == ev.INBOX_FRAME:
            seq = data.get("globalInboxSeq", 0)
            if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
                self._queue.put_nowait(_Frame(seq, data))
        elif event == ev.SEND_ACK:
            self._queue.put_nowait(_Ack(data))
        elif event == ev.REPLAY_DONE:
            self._queue.put_nowait(_ReplayDone(self._generation))
        elif event == ev.ERROR:
            message_id = data.get("messageId") or request_id
            if isinstance(message_id, str) and self._store.get_outbox(message_id) is not None:
                self._on_send_error(message_id, data)
            else:
                err = data.get("code")
                self._emit(
                    ErrorEvent(
                        code=err if isinstance(err, str) else "error",
                        message=str(data.get("message", ""))[:200],
                        message_id=message_id if isinstance(message_id, str) else None,
                        retryable=bool(data.get("retryable")),
                    )
                )
        elif event == ev.PREKEYS_LOW:
            self._prekey_notices += 1
            self._spawn(self._replenish(self._prekey_notices))
        elif event == ROOM_FRAME:
            self._queue.put_nowait(_RoomFrame(data))
        elif event == KEYPACKAGES_LOW:
            self._spawn(self.rooms.replenish())
        elif event in (ev.DEVICE_ADDED, ev.DEVICE_REVOKED):
            self._looked_up.discard(self.username)
            self._spawn(self._refresh_self())
        elif event == ev.ACCOUNT_DELETED:
            # Another device of ours deleted the account; the server closes us next (4002).
            self._mark_deleted()
            self._emit(ErrorEvent(code="account_deleted", message="this account was deleted"))

    def _queue_room_item(self, item: SyncedMark) -> None:
        """Queue a rooms marker behind the frames already received (in their order)."""
        self._queue.put_nowait(item)

    async def _refresh_self(self) -> None:
        with contextlib.suppress(SottovoceError):
            await self._lookup(self.username)

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
        # Look up unknown senders first: no await may separate a decryption from
        # the commit that stores its result (a concurrent send would persist the
        # advanced ratchet without the message).
        failed_lookup: dict[str, ErrorEvent] = {}
        for user in sorted({e.senderUserId for _, e in frames if e is not None}):
            contact = self._sessions.contact(user)
            known = contact is not None and all(
                e.senderDeviceId in contact.certificates
                for _, e in frames
                if e is not None and e.senderUserId == user
            )
            if not known:
                try:
                    await self._lookup(user)
                except IdentityChanged as exc:
                    failed_lookup[user] = ErrorEvent(code=exc.code, message=str(exc))
                except SottovoceError:
                    pass  # decryption below fails for a still-unknown device, typed
        events: list[ClientEvent] = []
        received: list[str] = []
        replay_done = False
        last_seq = self._store.last_inbox_seq
        top = 0
        try:
            with self._store.transaction():
                for item in batch:
                    if isinstance(item, _Ack):
                        self._apply_ack(item.data, events)
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
                        self._accept(item.seq, envelope, failed_lookup, events, received)
                self._sessions.flush()
                self.rooms.flush()
                self._store.set_last_inbox_seq(top)
        except BaseException:
            self._sessions.discard_unflushed()
            self.rooms.discard_unflushed()
            raise
        self.rooms.after_batch()
        if any(isinstance(item, _Ack) for item in batch):
            self._pump()  # acks opened the window
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

    def _apply_ack(self, data: dict[str, Any], events: list[ClientEvent]) -> None:
        message_id = data.get("messageId")
        seq = data.get("serverSeq")
        if not isinstance(message_id, str) or not isinstance(seq, int):
            return
        stored = self._store.get_message(message_id)
        newly = self._store.mark_sent(message_id, seq)
        self._store.remove_outbox(message_id)
        self._inflight.pop(message_id, None)
        self._mismatch_retries.pop(message_id, None)
        if newly and stored is not None:
            idem = data.get("idempotencyKey")
            events.append(
                MessageSent(
                    message_id=message_id,
                    peer=stored.peer,
                    server_seq=seq,
                    idempotency_key=idem if isinstance(idem, str) else "",
                    duplicate=bool(data.get("duplicate")),
                )
            )
            events.append(
                DeliveryStateChanged(
                    message_id=message_id, peer=stored.peer, status=DeliveryStatus.SENT
                )
            )
        future = self._ack_waiters.pop(message_id, None)
        if future is not None and not future.done():
            future.set_result(seq)

    def _accept(
        self,
        seq: int,
        envelope: ev.Envelope | None,
        failed_lookup: dict[str, ErrorEvent],
        events: list[ClientEvent],
        received: list[str],
    ) -> None:
        """Decrypt and store one inbound frame (inside the batch transaction)."""
        if envelope is None:
            events.append(ErrorEvent(code="bad_frame", message="malformed inbox frame skipped"))
            return
        ephemeral = envelope.ephemeral or seq == 0
        if not ephemeral and self._store.has_message(envelope.messageId):
            return  # replay of a stored message: never decrypt twice
        own_copy = envelope.senderUserId == self.username
        peer = envelope.recipientUserId if own_copy else envelope.senderUserId
        if envelope.senderUserId in failed_lookup:
            events.append(failed_lookup[envelope.senderUserId])
            self._store_failed(envelope, peer, seq, own_copy)
            return
        try:
            if envelope.conversationId != ev.dm_conversation_id(self.username, peer):
                raise RemoteError("envelope names another conversation")
            if not own_copy and envelope.recipientUserId not in ("", self.username):
                raise RemoteError("envelope is addressed to someone else")
            plaintext = self._sessions.decrypt(
                envelope.senderUserId, envelope.senderDeviceId, envelope.ciphertext
            )
            payload = Payload.decode(plaintext)
            if (
                payload.message_id != envelope.messageId
                or payload.conversation_id != envelope.conversationId
            ):
                raise RemoteError("ciphertext was moved to another message")
            text = payload.body.decode("utf-8")
        except (SottovoceError, UnicodeDecodeError) as exc:
            code = getattr(exc, "code", "decryption_failed")
            events.append(
                ErrorEvent(
                    code=code,
                    message="a message could not be decrypted",
                    message_id=envelope.messageId,
                )
            )
            if not ephemeral:
                self._store_failed(envelope, peer, seq, own_copy)
            return
        if ephemeral:
            item = EphemeralReceived(
                peer=peer, sender=envelope.senderUserId, message_id=envelope.messageId, text=text
            )
            self._ephemeral.append(item)
            events.append(item)
            return
        self._record_envelope(
            envelope,
            peer,
            seq,
            own_copy,
            DeliveryStatus.SENT,
            text,
            content_type=payload.content_type,
            client_created_ms=payload.created_at_ms,
            idempotency_key=envelope.idempotencyKey,
        )
        received.append(envelope.messageId)

    def _store_failed(self, envelope: ev.Envelope, peer: str, seq: int, own_copy: bool) -> None:
        """A placeholder, so the gap is visible and the frame is never retried."""
        self._record_envelope(envelope, peer, seq, own_copy, DeliveryStatus.FAILED, "")

    def _record_envelope(
        self,
        envelope: ev.Envelope,
        peer: str,
        seq: int,
        own_copy: bool,
        status: DeliveryStatus,
        text: str,
        *,
        content_type: str = "text",
        client_created_ms: int = 0,
        idempotency_key: str | None = None,
    ) -> None:
        """Store one received envelope (its routing fields taken from the envelope)."""
        self._store.add_message(
            message_id=envelope.messageId,
            peer=peer,
            sender=envelope.senderUserId,
            sender_device=envelope.senderDeviceId,
            outgoing=own_copy,
            status=status,
            text=text,
            content_type=content_type,
            client_created_ms=client_created_ms,
            server_received_ms=envelope.serverReceivedAtMs,
            local_at_ms=now_ms(),
            server_seq=envelope.serverSeq,
            inbox_seq=seq,
            idempotency_key=idempotency_key,
        )

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
        return [m for m in self._ephemeral if username is None or m.peer == username]

    def panic(self) -> None:
        """Forget every ephemeral message now."""
        self._ephemeral.clear()

    @property
    def last_inbox_seq(self) -> int:
        return self._store.last_inbox_seq

    async def safety_number(self, username: str) -> SafetyNumber:
        """The 60-digit safety number with ``username`` (looked up if not pinned yet)."""
        contact = self._sessions.contact(username)
        if contact is None:
            await self._lookup(username)
            contact = self._sessions.contact(username)
        if contact is None:  # pragma: no cover - _lookup stores it or raises
            raise RemoteError("the directory did not return this user")
        return safety_number(self.identity.certificate.account_key, contact.account_key)

    def known_safety_number(self, username: str) -> SafetyNumber | None:
        """The safety number from the pinned key only (no network)."""
        contact = self._sessions.contact(username)
        if contact is None:
            return None
        return safety_number(self.identity.certificate.account_key, contact.account_key)

    # =========================================================================
    # Audit only
    # =========================================================================

    def audit_only_private_material(self) -> list[tuple[str, Secret]]:
        """FOR THE BLINDNESS AUDIT ONLY (``sottovoce audit blindness``); never for apps.

        This device's private key material, labelled, so the audit kit can prove
        none of it reached the server. The Olm account and the sessions loaded
        in memory come as vodozemac pickles under the formality pickle key
        (pairwise/account.py); ``sottovoce.audit_kit.keys`` unpacks them.
        """
        out = [
            ("account key", self.identity.account_key.private_bytes()),
            ("device signing key", self.identity.device_key.private_bytes()),
            ("store key", self._store.storage_key),
        ]
        mls_key = getattr(self.identity, "mls_key", None)
        if mls_key is not None:
            out.append(("mls signature key", mls_key.private_bytes()))
        olm = self._sessions.olm._vodozemac()
        out.append(("olm account", Secret(olm.pickle(PICKLE_KEY).encode("ascii"))))
        for (user, device), sessions in sorted(self._sessions._sessions.items()):
            for i, session in enumerate(sessions):
                pickle = session._session.pickle(PICKLE_KEY).encode("ascii")
                out.append((f"olm session {user}/{device}#{i}", Secret(pickle)))
        # MLS: each room's current epoch secrets and this member's HPKE tree keys.
        # (The epoch authenticator is left out: audit entries may carry it on purpose.)
        for room in getattr(getattr(self, "rooms", None), "all", list)():
            group = getattr(room, "group", None)
            epoch = getattr(group, "_epoch", None)
            if epoch is None:
                continue
            for name in type(epoch.secrets).__dataclass_fields__:
                value = getattr(epoch.secrets, name)
                if isinstance(value, Secret) and name != "epoch_authenticator":
                    out.append((f"mls room {room.room_id} {name}", value))
            for node, key in sorted(epoch.private.keys.items()):
                out.append((f"mls room {room.room_id} tree key node {node}", key))
        return out


# =============================================================================
# Registration (pre-auth)
# =============================================================================


async def register_device(
    url: str,
    identity: LocalIdentity,
    *,
    add: bool = False,
    connector: Connector = websocket_connector,
) -> None:
    """Register a new account (``sottovoce.register``) or device (``sottovoce.device.add``).

    The device key signs the server's challenge (``auth_message``) to prove it
    holds the key its certificate names.
    """
    try:
        transport: Transport = await connector(url)
    except TransportClosed as exc:
        raise NotConnected(f"cannot reach the server: {exc}") from None
    try:
        nonce = await read_challenge(transport)
        signature = sign_challenge(
            identity.device_key, nonce, identity.username, identity.device_id
        )
        cert = identity.certificate.encode()
        request: ev.ClientEvent = (
            ev.AddDevice(certificate=cert, signature=signature)
            if add
            else ev.Register(certificate=cert, signature=signature)
        )
        await transport.send(request.to_frame("register"))
        await expect_reply(transport, frozenset({ev.REGISTERED}))  # the one reply
    except TransportClosed as exc:
        raise NotConnected(f"the server closed the connection: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await transport.close()


async def username_available(
    server_url: str, username: str, *, connector: Connector = websocket_connector
) -> bool:
    try:
        transport = await connector(ws_url(server_url))
    except TransportClosed as exc:
        raise NotConnected(f"cannot reach the server: {exc}") from None
    try:
        await read_challenge(transport)
        await transport.send(ev.UsernameCheck(username=username).to_frame("check"))
        _, data = await expect_reply(transport, frozenset({ev.USERNAME_RESULT}))
        return bool(data.get("available"))
    except TransportClosed as exc:
        raise NotConnected(f"the server closed the connection: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await transport.close()


def _b64decode(value: Any) -> bytes:
    import base64

    if not isinstance(value, str):
        raise ValueError("not base64")
    return base64.b64decode(value, validate=True)


def _remove_store(root: Path, created_dir: bool) -> None:
    for name in (STORE_FILE, STORE_FILE + "-wal", STORE_FILE + "-shm", LOCK_FILE):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    if created_dir:
        with contextlib.suppress(OSError):
            root.rmdir()  # only if we made it and it is empty again
