"""The server app: one WebSocket server built from a :class:`ServerConfig`
(docs/architecture.md §Server).

HTTP GETs ``/healthz`` (JSON) and ``/metrics`` (Prometheus text) are answered
from ``process_request``, and the key-transparency ones (``/kt/...``, server/kt_log.py)
from the storage after it; the WebSocket lives at ``/v3/ws``. Each connection:

    connect ──► sottovoce.challenge ──► register | device.add | auth ──► ksmpv3.connected
            ──► resume / send / ack.read / directory / prekeys / push / ping …

Frames are parsed and validated by :mod:`sottovoce.protocol.events`; any
failure becomes one ``ksmpv3.error`` here, at the boundary. Pre-auth requests
are limited per IP, later ones per device; a connection that keeps sending
bad or rate-limited frames is closed with 1008 (codes in :mod:`.errors`).
Nothing here is global: tests start several apps in one process.

Connections not yet authenticated have a budget of their own, apart from
``max_connections``, which counts authenticated ones only, so that a flood of
sessions that never log in cannot take the room of devices that do: each has
``preauth_timeout_ms`` to log in; one address (an IPv6 /64 counts as one) may
hold ``max_preauth_per_ip`` of them (more are refused with HTTP 429); and when
``max_preauth`` are open in all, a new one closes the oldest (1008), so that a
flood from many addresses only ever displaces sessions that had their chance
(an honest device logs in within one round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from http import HTTPStatus
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
)
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from sottovoce import __version__
from sottovoce.errors import DecodeError, IdentityError, UsageError
from sottovoce.identity import (
    AccountDeletion,
    DeviceCertificate,
    RevocationStatement,
    validate_username,
)
from sottovoce.identity.succession import Statement
from sottovoce.limits import MAX_FRAME_BYTES
from sottovoce.private_files import private_dir, private_file, sqlite_files
from sottovoce.protocol.blobs import BlobPut, is_binary_chunk
from sottovoce.protocol.events import (
    ACCOUNT_DELETED,
    ACCOUNT_HEAD,
    BLOCK_RESULT,
    CHALLENGE,
    CONNECTED,
    DEVICE_ADDED,
    DEVICE_REVOKED,
    DIRECTORY_RESULT,
    PONG,
    PREKEY_BUNDLES,
    PREKEYS_LOW,
    PREKEYS_STORED,
    PUSH_REGISTERED,
    REGISTERED,
    USERNAME_RESULT,
    AccountStatements,
    AckRead,
    AddDevice,
    Auth,
    BlockSet,
    ClientEvent,
    DeleteAccount,
    DirectoryLookup,
    Ping,
    PrekeysClaim,
    PrekeysUpload,
    PushRegister,
    Register,
    Resume,
    RevokeDevice,
    Send,
    UsernameCheck,
    frame,
    parse_frame,
)
from sottovoce.protocol.fields import ProtocolError, b64
from sottovoce.protocol.link import LINK_PRE_AUTH
from sottovoce.protocol.pow import DifficultyRule
from sottovoce.protocol.rooms import ALL_CLIENT_EVENTS
from sottovoce.server import kt_log
from sottovoce.server.account_keys import (
    AccountKeys,
    chain_data,
    check_recovery_key,
    decode_statements,
    head_data,
    stale_key,
)
from sottovoce.server.auth import (
    Decoy,
    authenticate_device,
    check_certificate,
    new_challenge,
    spend,
    verify_possession,
)
from sottovoce.server.blobs import BlobService
from sottovoce.server.config import ServerConfig
from sottovoce.server.delivery import Delivery
from sottovoce.server.directory import Directory
from sottovoce.server.discovery import DiscoveryService
from sottovoce.server.errors import (
    ABUSE_CODES,
    CLOSE_ABUSE,
    CLOSE_ACCOUNT_DELETED,
    CLOSE_GOING_AWAY,
    RateLimited,
    WireFailure,
)
from sottovoce.server.fanout import FanoutPorts, make_fanout
from sottovoce.server.link_mailbox import LinkMailboxes
from sottovoce.server.logs import JsonLogger
from sottovoce.server.metrics import Metrics
from sottovoce.server.ports import DeviceKey
from sottovoce.server.pow_gate import PowGate, PowRequired
from sottovoce.server.presence import Presence
from sottovoce.server.push import (
    Pusher,
    TickleSender,
    WebhookTickleSender,
    check_endpoint,
)
from sottovoce.server.ratelimit import ClaimLimits, KeyedBuckets
from sottovoce.server.replay import Replay
from sottovoce.server.rooms import Rooms
from sottovoce.server.sendview import SendView, parse_send, send_frame
from sottovoce.server.session import Session, SessionLimits, SessionPorts
from sottovoce.server.sfu_handler import SfuHandler
from sottovoce.server.storage.base import AccountRecord, Storage
from sottovoce.server.storage.roombase import RoomStorage
from sottovoce.server.storage.shared import SharedStorage
from sottovoce.server.storage.sqlite import BatchStats, SqliteStorage
from sottovoce.server.transport import Connection, LeanServer, TransportConfig
from sottovoce.server.turn_handler import TurnHandler

WS_PATH = "/v3/ws"
#: Events a connection may send before it is authenticated (the link events only for the
#: one linking mailbox it joined: server/link_mailbox.py).
SEND = Send.name
PRE_AUTH = frozenset({Register.name, AddDevice.name, Auth.name, UsernameCheck.name, Ping.name,
                      *LINK_PRE_AUTH})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ServerApp:
    def __init__(
        self,
        config: ServerConfig,
        *,
        storage: Storage | None = None,
        tickle_sender: TickleSender | None = None,
        logger: JsonLogger | None = None,
    ) -> None:
        self.config = config
        if logger is None:
            logger = (
                JsonLogger.to_file(config.log_file, level=config.log_level)
                if config.log_file is not None
                else JsonLogger(level=config.log_level)
            )
        self.log = logger
        if storage is None:
            storage = make_storage(config, logger)
        self.storage = storage
        #: Names this process in /healthz and the fan-out (several nodes share a database).
        self.node_id = config.node_id or f"{socket.gethostname()}-{os.getpid()}"
        if config.nats or config.node_id:
            self.log.node = self.node_id  # several nodes may write to one log collector
        # The composition root: each part gets exactly what it uses, built bottom-up, so
        # no module below imports this one (docs/architecture.md §Server).
        self.directory = Directory(storage)
        if tickle_sender is None:
            tickle_sender = WebhookTickleSender(
                timeout_ms=config.push_timeout_ms, logger=logger,
                allow_private=config.push_allow_private,
            )
        self.pusher = Pusher(
            tickle_sender,
            hints=config.push_hints,
            min_interval_ms=config.push_min_interval_ms,
            logger=logger,
        )
        self.key_claims = ClaimLimits(config.key_claims_per_requester,
                                      config.key_claims_per_target)
        self.pow = PowGate(DifficultyRule(base_bits=config.pow_bits,
                                          half_life_ms=config.pow_half_life_ms))
        self.sessions: set[Session] = set()
        #: Sessions not authenticated yet, oldest first, and how many per address.
        self.preauth_sessions: OrderedDict[Session, None] = OrderedDict()
        self.preauth: dict[str, int] = {}
        online: dict[DeviceKey, Session] = {}
        self.metrics = Metrics(
            key_claims=lambda: self.key_claims.counts,
            connections=lambda: len(self.sessions),
            online=lambda: len(online),
            tickles=lambda: self.pusher.count,
            unauthenticated=lambda: len(self.preauth_sessions),
        )
        room_store = storage if isinstance(storage, RoomStorage) else None
        budget = config.write_buffer_limit // 4  # replayed bytes before awaiting a drain
        self.replay = Replay(
            storage, room_store, budget=budget,
            resume_interval_ms=config.resume_interval_ms, resume_burst=config.resume_burst,
            metrics=self.metrics, log=logger,
        )
        self.fanout = make_fanout(
            FanoutPorts(online=online, catch_up=self.replay.catch_up,
                        invalidate=self.directory.invalidate, metrics=self.metrics, log=logger),
            config.nats, node_id=self.node_id, namespace=config.nats_namespace,
        )
        if self.fanout.remote:
            self.directory.on_change = self.fanout.directory_changed
        self.presence = Presence(online, self.fanout, self.directory, self.pusher)
        self.delivery = Delivery(
            storage, self.directory, self.presence, self.fanout, self.metrics, logger
        )
        self.rooms = Rooms(
            room_store, self.directory, self.presence, self.key_claims, self.metrics, logger,
            budget=budget,
        )
        self._session_ports = SessionPorts(
            dispatch=self._dispatch, lost=self._disconnected,
            limits=SessionLimits.of(config), metrics=self.metrics, log=logger,
            order=self.fanout if self.fanout.remote else None,
        )
        stats = getattr(self.storage, "stats", None)
        if isinstance(stats, BatchStats):  # both adapters group-commit and report batches
            stats.observers.append(self.metrics.observe_batch)
        self.ip_buckets = KeyedBuckets(config.ip_rate, config.ip_burst)
        self.decoy = Decoy()
        self._server: LeanServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started_at = time.monotonic()
        self._handlers: dict[type[ClientEvent], Callable[..., Awaitable[None] | None]] = {
            Register: self._register,
            AddDevice: self._add_device,
            Auth: self._auth,
            UsernameCheck: self._username_check,
            Ping: self._ping,
            Send: self._send,
            AckRead: self._ack_read,
            Resume: self._resume,
            DirectoryLookup: self._lookup,
            PrekeysUpload: self._prekeys_upload,
            PrekeysClaim: self._prekeys_claim,
            PushRegister: self._push_register,
            BlockSet: self._block,
            RevokeDevice: self._revoke,
            DeleteAccount: self._delete_account,
        }
        self._handlers.update(self.rooms.handlers())
        self._handlers.update(TurnHandler.from_config(config).handlers())
        self.sfu = SfuHandler.from_config(config, room_store)
        self._handlers.update(self.sfu.handlers())
        # A removal kicks feeds on this node and, through the fan-out, on the node that
        # opened the call (another one, when several share the storage).
        self.rooms.on_removed = self._members_removed
        self.fanout.on_members_removed = self.sfu.members_removed
        #: Key transparency (both storage engines keep its tables).
        self.kt = (kt_log.from_config(config, storage, logger)
                   if isinstance(storage, SharedStorage) else None)
        if self.kt is not None:
            self._handlers.update(self.kt.handlers())
            self.directory.kt_changed = self.kt.changed
            self.kt.gate = self._kt_gate
            self.pow.use_key(self.kt.vrf.derive_key(b"proof-of-work MAC"))
        self.links = LinkMailboxes(ttl_ms=config.link_ttl_ms, log=logger,
                                   rearm=self._arm_preauth, fanout=self.fanout)
        self._handlers.update(self.links.handlers())
        self.account_keys = AccountKeys(storage, self.directory, self.presence, self.rooms,
                                        logger)
        self._handlers[AccountStatements] = self._account_statements
        #: File blobs (both storage engines keep their metadata; chunks are in data_dir).
        self.blobs = (BlobService(storage, config, logger, now_ms)
                      if isinstance(storage, SharedStorage) else None)
        if self.blobs is not None:
            self._handlers.update(self.blobs.handlers())
        #: Discovery modes, search, friend codes (both storage engines keep them).
        self.discovery = (DiscoveryService(storage, self.pow, self.directory, self.presence)
                          if isinstance(storage, SharedStorage) else None)
        if self.discovery is not None:
            self._handlers.update(self.discovery.handlers())
        self.rooms.visible = self._visible  # KeyPackage claims: gated like prekey claims
        if self.discovery is not None:
            self.delivery.hidden = partial(self.discovery.hidden, cap=None)

    def _members_removed(self, room_id: str, devices: Sequence[DeviceKey]) -> None:
        self.sfu.members_removed(room_id, devices)
        self.fanout.members_removed(room_id, devices)

    # --- life cycle -----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise UsageError("server is not started")
        for sock in self._server.sockets:
            return int(sock.getsockname()[1])
        raise UsageError("server has no socket")

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{self.config.scheme}://{host}:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except ssl.SSLError as exc:
            raise UsageError(
                f"cannot load TLS certificate {cfg.tls_cert} with key {cfg.tls_key}: they are "
                f"not a PEM certificate chain and its private key ({exc.reason or 'PEM'})"
            ) from None
        except OSError as exc:
            raise UsageError(
                f"cannot load TLS certificate {cfg.tls_cert} with key {cfg.tls_key}: "
                f"{exc.strerror or exc}"
            ) from None
        return ctx

    async def start(self) -> None:
        cfg = self.config
        ctx = self._ssl_context()
        self._private_data_dir()
        await self.storage.open()
        if self.kt is not None:
            await self.kt.start()
        await self.fanout.start()
        # No extensions (ciphertext does not compress; deflate would only cost CPU).
        self._server = LeanServer(
            TransportConfig(
                max_size=MAX_FRAME_BYTES,
                write_limit=cfg.write_buffer_limit,
                ping_interval=cfg.heartbeat_ms / 1000,
                ping_timeout=cfg.heartbeat_ms / 1000,
                server_header=f"sottovoce/{__version__}",
            ),
            self._process_request,
            self._connected,
        )
        await self._server.start(cfg.host, cfg.port, ssl=ctx, backlog=1024)
        self._spawn(self._expiry_loop())
        if self.blobs is not None:
            self.blobs.start()
            self._spawn(self.blobs.run())
        if self.kt is not None:  # its first round may call witnesses that call us back
            self._spawn(self.kt.run())
        self.log.info("server.started", url=self.url, version=__version__,
                      path=str(cfg.data_dir), node=self.node_id)

    def _private_data_dir(self) -> None:
        """Data directory 0700, database files 0600; an existing wider one is reported
        (a log line and standard error), not changed behind the operator's back."""
        cfg = self.config
        found = private_dir(cfg.data_dir)
        if cfg.database is None:
            found += private_file(cfg.db_path, *sqlite_files(cfg.db_path))
        for too_open in found:
            self.log.warning("storage.permissions", path=str(too_open.path),
                             code=f"{too_open.mode:04o}")
            print(f"sottovoce server: warning: {too_open}", file=sys.stderr, flush=True)

    async def stop(self) -> None:
        if self._server is not None:
            # Stop accepting, tell every client (1001), give them a moment, then cut.
            self._server.close()
            for session in list(self.sessions):
                session.close(CLOSE_GOING_AWAY, "server shutting down")
            deadline = time.monotonic() + 0.5
            while self.sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self._server.abort_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        await self.sfu.close()
        if self.kt is not None:
            await self.kt.close()
        await self.pusher.close()
        await self.fanout.close()
        await self.storage.close()
        self.log.info("server.stopped")
        self.log.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expiry_loop(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(cfg.expiry_interval_ms / 1000)
            try:
                deleted = await self.storage.expire(now_ms() - cfg.retention_ms)
                # Disappearing messages whose expiresAtMs passed (replay skips them already).
                deleted += await self.storage.drop_expired(now_ms())
            except Exception as exc:
                self.log.error("expiry.failed", error=type(exc).__name__)
                continue
            if deleted:
                self.metrics.expired += deleted
                self.log.info("expiry.deleted", deleted=deleted)

    # --- HTTP -----------------------------------------------------------------------

    def _process_request(
        self, remote: str, request: Request
    ) -> Response | Awaitable[Response] | None:
        path, _, query = request.path.partition("?")
        if path.startswith("/kt/") and self.kt is not None:
            wait = self.ip_buckets.take(remote)
            if wait:
                return self._refuse_handshake("rate_limited", HTTPStatus.TOO_MANY_REQUESTS,
                                              b"rate limited\n", max(1, wait // 1000))
            return self._kt_get(self.kt, path, query)
        if path == "/healthz":
            body = json.dumps({
                "status": "ok",
                "version": __version__,
                "protocol": "ksmpv3",
                "uptimeS": round(time.monotonic() - self.started_at, 3),
                "connections": len(self.sessions),
                "node": self.node_id,
                "residency": self.config.residency,
                "linkMailboxes": len(self.links),
                "storage": "sqlite" if self.config.database is None else "postgresql",
                **self.fanout.status(),
            }).encode()
            return _response(HTTPStatus.OK, body, "application/json")
        if path == "/metrics":
            return _response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE_LATEST)
        if path != WS_PATH:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        cfg = self.config
        wait = self.ip_buckets.take(remote)
        if wait:
            self.metrics.error("rate_limited")
            return self._refuse_handshake("rate_limited", HTTPStatus.TOO_MANY_REQUESTS,
                                          b"rate limited\n", max(1, wait // 1000))
        if len(self.sessions) - len(self.preauth_sessions) >= cfg.max_connections:
            return self._refuse_handshake("server_full", HTTPStatus.SERVICE_UNAVAILABLE,
                                          b"server full\n", 1)
        if self.preauth.get(address_key(remote), 0) >= cfg.max_preauth_per_ip:
            return self._refuse_handshake(
                "preauth_address", HTTPStatus.TOO_MANY_REQUESTS,
                b"too many unauthenticated connections from this address\n", 1)
        while len(self.preauth_sessions) >= cfg.max_preauth:
            oldest = next(iter(self.preauth_sessions))
            self._end_preauth(oldest)
            self.metrics.preauth_evicted += 1
            oldest.close(CLOSE_ABUSE, "server busy: authenticate sooner")
        return None

    async def _kt_get(self, kt: kt_log.KTService, path: str, query: str) -> Response:
        status, body, content_type = await kt.http_get(path, query)
        return _response(status, body, content_type)

    def _refuse_handshake(
        self, reason: str, status: HTTPStatus, body: bytes, retry_after_s: int
    ) -> Response:
        self.metrics.handshake_refused(reason)
        resp = _response(status, body, "text/plain")
        resp.headers["Retry-After"] = str(retry_after_s)
        return resp

    # --- WebSocket ------------------------------------------------------------------

    def _connected(self, conn: Connection) -> Session:
        """The transport upgraded a connection; frames go to the session from now on."""
        session = Session(conn, self._session_ports)
        self.sessions.add(session)
        session.preauth = True
        self.preauth_sessions[session] = None
        key = address_key(session.remote)
        self.preauth[key] = self.preauth.get(key, 0) + 1
        self._challenge(session)
        self._arm_preauth(session, None)
        return session

    def _arm_preauth(self, session: Session, delay_ms: int | None) -> None:
        """(Re)set the deadline by which ``session`` must log in: ``preauth_timeout_ms``,
        or ``delay_ms`` (a new device waiting in a linking mailbox)."""
        if session.timer is not None:
            session.timer.cancel()

        def preauth_expired() -> None:
            if session.user is None:
                session.close(CLOSE_ABUSE, "authenticate in time")

        delay = self.config.preauth_timeout_ms if delay_ms is None else delay_ms
        session.timer = asyncio.get_running_loop().call_later(delay / 1000, preauth_expired)

    def _disconnected(self, session: Session) -> None:
        """The TCP connection is gone (once per session). A handler may still be running
        for it: ``closed`` stops it from attaching the session afterwards (Presence.attach)."""
        if session.timer is not None:
            session.timer.cancel()
        session.closed = True
        self.links.lost(session)
        self._end_preauth(session)
        self.presence.detach(session)
        self.sessions.discard(session)

    def _end_preauth(self, session: Session) -> None:
        """The session leaves the pre-auth budget (authenticated or gone), once."""
        if not session.preauth:
            return
        session.preauth = False
        del self.preauth_sessions[session]
        key = address_key(session.remote)
        left = self.preauth[key] - 1
        if left:
            self.preauth[key] = left
        else:
            del self.preauth[key]

    def _challenge(self, session: Session) -> None:
        now = now_ms()
        session.challenge = new_challenge(now)
        session.reply(
            CHALLENGE, {"nonce": b64(session.challenge.nonce), "serverTimeMs": now}, None
        )

    def _dispatch(self, session: Session, message: str | bytes) -> Awaitable[None] | None:
        rid: str | None = None
        ev: ClientEvent | SendView | None = None
        try:
            if (isinstance(message, bytes) and self.blobs is not None
                    and is_binary_chunk(message)):
                return self._binary(self.blobs, session, message)
            # A send of the common shape is decoded and checked in one pass, and handed
            # to delivery straight away (the steps below, for a send only); any other
            # frame, or a send it does not take, goes the general way (sendview.py).
            fast = send_frame(message)
            if fast is not None:
                rid, view = fast
                self.metrics.frames[SEND] += 1
                if session.user is None:  # a send is never a pre-auth event
                    raise WireFailure("unauthorized", "authenticate first")
                wait = session.bucket.take()
                if wait:
                    raise RateLimited("too many requests", wait)
                ev = view
                result = self.delivery.send(session, view, {}, rid)  # it reads the view only
                session.strikes.good()
                return None if result is None else self._guard(session, rid, result, view)
            event, rid, data = parse_frame(message)
            cls = ALL_CLIENT_EVENTS.get(event)
            if cls is None:
                raise ProtocolError("unknown_event", "unknown event")
            self.metrics.frame(event)
            if session.user is None:
                if event not in PRE_AUTH:
                    raise WireFailure("unauthorized", "authenticate first")
                wait = self.ip_buckets.take(session.remote)
            else:
                wait = session.bucket.take()
            if wait:
                raise RateLimited("too many requests", wait)
            ev = parse_send(data) if cls is Send else cls.from_data(data)
            result = self._handlers[cls](session, ev, data, rid)
            session.strikes.good()
            if result is None:
                return None
            return self._guard(session, rid, result, ev)
        except ProtocolError as exc:
            self.metrics.frame("invalid")
            self._refuse(session, WireFailure(exc.code, str(exc)), rid)
        except WireFailure as exc:
            self._refuse(session, exc, rid, ev)
        except RecursionError:
            # json.loads on deeply nested input; parse_frame lets it through.
            self.metrics.frame("invalid")
            self._refuse(session, WireFailure("bad_json", "frame nests too deeply"), rid)
        except Exception as exc:  # our bug: answer, log, keep the connection and the server
            self.log.error("dispatch.failed", error=type(exc).__name__)
            session.error(WireFailure("internal", "internal error", retryable=True), rid)
        return None

    def _binary(
        self, blobs: BlobService, session: Session, message: bytes
    ) -> Awaitable[None] | None:
        """A file chunk in a binary message (server/blobs.py): the same checks as a frame."""
        self.metrics.frame(BlobPut.name)
        if session.user is None:
            raise WireFailure("unauthorized", "authenticate first")
        wait = session.bucket.take()
        if wait:
            raise RateLimited("too many requests", wait)
        ev, rid = blobs.binary(session, message)
        try:
            result = self._handlers[BlobPut](session, ev, {}, rid)
        except WireFailure as exc:
            self._refuse(session, exc, rid, ev)
            return None
        session.strikes.good()
        return None if result is None else self._guard(session, rid, result, ev)

    def _refuse(
        self, session: Session, failure: WireFailure, rid: str | None,
        ev: ClientEvent | SendView | None = None,
    ) -> None:
        """Answer a refused request (naming the send's messageId, if any); a code that
        counts as abuse is a strike against the connection."""
        mid = getattr(ev, "messageId", None)
        session.error(failure, rid, mid if isinstance(mid, str) else None)
        if failure.code in ABUSE_CODES and session.strikes.hit():
            self.log.warning("abuse.close", userId=session.user, code=failure.code)
            session.close(CLOSE_ABUSE, "too many bad or rate-limited requests")

    async def _guard(
        self,
        session: Session,
        rid: str | None,
        pending: Awaitable[None],
        ev: ClientEvent | SendView,
    ) -> None:
        try:
            await pending
            return
        except PowRequired as exc:
            self._refuse(session, exc, rid, ev)
            return  # asked before the login's challenge was spent: it still stands
        except WireFailure as exc:
            self._refuse(session, exc, rid, ev)
        except Exception as exc:
            self.log.error("handler.failed", reason=ev.name, error=type(exc).__name__)
            session.error(WireFailure("internal", "internal error", retryable=True), rid)
        if isinstance(ev, Register | AddDevice | Auth) and session.user is None:
            self._challenge(session)  # a failed login spent its challenge: here is the next

    # --- pre-auth handlers -------------------------------------------------------------

    def _spend_challenge(self, session: Session) -> tuple[int, bytes]:
        """(now, the nonce) of the challenge a login answers: it is used up either way."""
        if session.user is not None:
            raise WireFailure("already_authenticated", "this connection is authenticated")
        now = now_ms()
        return now, spend(session.challenge, now_ms=now, ttl_ms=self.config.challenge_ttl_ms)

    async def _register(
        self, session: Session, ev: Register, data: dict[str, Any], rid: str | None
    ) -> None:
        if session.user is not None:
            raise WireFailure("already_authenticated", "this connection is authenticated")
        cert = check_certificate(ev.certificate, now_ms=now_ms())
        # ``username_taken`` tells that the name exists: a proof of work each time (no
        # pass), its difficulty per address and name (docs/threat-model.md §Discovery),
        # asked for before the challenge is spent: the same signed request comes back.
        self.pow.spend(f"addr:{address_key(session.remote)}", f"register:{cert.username}",
                       ev.pow)
        now, nonce = self._spend_challenge(session)
        verify_possession(cert.keys.signing_key, nonce, cert.username, cert.device_id,
                          ev.signature)
        check_recovery_key(ev.recoveryKey, cert.account_key)
        await self.directory.register(cert, ev.certificate, now, ev.recoveryKey)
        await self._registered(session, cert, rid, "account.registered")

    async def _add_device(
        self, session: Session, ev: AddDevice, data: dict[str, Any], rid: str | None
    ) -> None:
        now, nonce = self._spend_challenge(session)
        cert = check_certificate(ev.certificate, now_ms=now)
        if ev.statements:
            await self._recertified_login(session, ev, cert, nonce, now, rid)
            return
        rec = await self.directory.account(cert.username)
        # A name nobody holds answers as a certificate of the wrong account key: a
        # device.add must not tell a prober which names exist (docs/threat-model.md
        # §Discovery); only a holder of the account key gets past this.
        if rec is None or cert.account_key != rec.account_key:
            raise WireFailure("invalid_certificate", "certificate is not signed by the account")
        if rec.forked:
            raise WireFailure("account_forked", "the account is forked: recover it first")
        verify_possession(cert.keys.signing_key, nonce, cert.username, cert.device_id,
                          ev.signature)
        await self.directory.add_device(cert, ev.certificate, now)
        self.presence.notify_user(cert.username, frame(DEVICE_ADDED, {"deviceId": cert.device_id}))
        await self._registered(session, cert, rid, "device.added")

    async def _recertified_login(
        self, session: Session, ev: AddDevice, cert: DeviceCertificate, nonce: bytes, now: int,
        rid: str | None,
    ) -> None:
        """``device.add`` with statements: a recovery from a new or revoked device, or a
        device renewing its expired certificate. The statements prove themselves; the
        device logs in if its certificate is then the ruling one for it."""
        verify_possession(cert.keys.signing_key, nonce, cert.username, cert.device_id,
                          ev.signature)
        statements = decode_statements(cert.username, ev.statements)
        cert_statement = DeviceCertificate.decode(ev.certificate)
        try:
            rec = await self.account_keys.apply(cert.username, [*statements, cert_statement],
                                                now)
        except WireFailure as exc:
            if exc.code == "unauthorized":  # no such account: answered as a wrong key
                raise stale_key() from None
            raise
        dev = rec.device(cert.device_id)
        if dev is None or dev.revoked or dev.certificate != ev.certificate:
            raise WireFailure("invalid_certificate", "certificate is not the ruling one")
        await self._registered(session, cert, rid, "device.recertified")

    async def _registered(
        self, session: Session, cert: DeviceCertificate, rid: str | None, event: str
    ) -> None:
        """A register or device.add went through: ``event`` to the log, and the device in."""
        self.log.info(event, userId=cert.username, deviceId=cert.device_id)
        await self._authenticated(session, cert.username, cert.device_id, rid, REGISTERED)

    async def _auth(
        self, session: Session, ev: Auth, data: dict[str, Any], rid: str | None
    ) -> None:
        now, nonce = self._spend_challenge(session)
        rec = await self.directory.account(ev.username)
        dev = rec.device(ev.deviceId) if rec is not None else None
        cert = authenticate_device(
            None if dev is None or dev.revoked else dev.certificate,
            nonce, ev.username, ev.deviceId, ev.signature, decoy=self.decoy,
        )
        if now >= cert.expires_at_ms:
            raise WireFailure("certificate_expired", "device certificate has expired")
        await self._authenticated(session, ev.username, ev.deviceId, rid)

    async def _authenticated(
        self, session: Session, user: str, device: str, rid: str | None,
        reply: str = CONNECTED,
    ) -> None:
        """The connection is now this device's. One reply answers the request:
        ``ksmpv3.connected`` for auth, ``sottovoce.registered`` (same fields) for
        register and device.add."""
        session.user, session.device = user, device
        session.challenge = None
        self._end_preauth(session)
        pending = self.presence.attach(session)
        if pending is not None:
            await pending  # other nodes route this device's frames here before it resumes
        latest = await self.storage.latest_inbox_seq(user, device)
        session.reply(reply, {
            "userId": user,
            "deviceId": device,
            "serverTimeMs": now_ms(),
            "latestGlobalInboxSeq": latest,
            "heartbeatMs": self.config.heartbeat_ms,
        }, rid)
        self.log.info("connection.authenticated", userId=user, deviceId=device,
                      remote=session.remote if self.config.log_ips else None)
        remaining = await self.storage.count_prekeys(user, device)
        if remaining < self.config.prekey_low_watermark:
            session.reply(PREKEYS_LOW, {"remaining": remaining}, None)
        await self.rooms.authenticated(session)
        if self.discovery is not None:
            await self.discovery.authenticated(session)

    async def _username_check(
        self, session: Session, ev: UsernameCheck, data: dict[str, Any], rid: str | None
    ) -> None:
        try:
            validate_username(ev.username)
        except UsageError as exc:
            raise WireFailure("invalid_username", str(exc)) from None
        requester = f"addr:{address_key(session.remote)}"
        self.pow.require(requester, ev.username, ev.pow)
        taken = (await self.directory.exists(ev.username) if self.discovery is None
                 else await self.discovery.taken(requester, ev.username))
        session.reply(USERNAME_RESULT, {"username": ev.username, "available": not taken}, rid)

    def _ping(self, session: Session, ev: Ping, data: dict[str, Any], rid: str | None) -> None:
        session.reply(PONG, {}, rid)

    # --- delivery -------------------------------------------------------------------

    def _send(
        self, session: Session, ev: SendView, data: dict[str, Any], rid: str | None
    ) -> Awaitable[None] | None:
        return self.delivery.send(session, ev, data, rid)

    def _ack_read(
        self, session: Session, ev: AckRead, data: dict[str, Any], rid: str | None
    ) -> None:
        self.delivery.ack_read(session, ev.upToGlobalInboxSeq, rid)

    def _resume(
        self, session: Session, ev: Resume, data: dict[str, Any], rid: str | None
    ) -> None:
        self.replay.resume(session, ev.lastGlobalInboxSeq, rid)

    # --- directory, prekeys, push, revocation ------------------------------------------

    async def _lookup(
        self, session: Session, ev: DirectoryLookup, data: dict[str, Any], rid: str | None
    ) -> None:
        rec = await self._visible(session, ev.username, ev.pow, ev.cap)
        if rec is None:
            raise WireFailure("unknown_user", "no such user")
        session.reply(DIRECTORY_RESULT, {
            "username": rec.user_id,
            "accountKey": b64(rec.account_key),
            "devices": [
                {"deviceId": d.device_id, "certificate": b64(d.certificate)} for d in rec.active()
            ],
            "revokedDeviceIds": [d.device_id for d in rec.devices if d.revoked],
            "forked": rec.forked,
            **chain_data(rec.genesis_key, rec.recovery_key, await self._chain(rec)),
        }, rid)

    async def _visible(self, session: Session, name: str, pow_proof: bytes | None,
                       cap: bytes | None) -> AccountRecord | None:
        """The account a lookup or claim is about, after its proof of work; None for a
        name nobody holds and, alike, for a strict account hidden from the requester."""
        self.pow.require(session.key[0], name, pow_proof)
        if self.discovery is None:
            return await self.directory.account(name)
        return await self.discovery.account(session.key[0], name, cap)

    async def _kt_gate(self, requester: str, name: str, pow_proof: bytes | None,
                       cap: bytes | None) -> None:
        """Key-transparency lookups about another account: the same proof of work, and
        a hidden or free name is ``unknown_user`` (no proof of absence to strangers)."""
        self.pow.require(requester, name, pow_proof)
        if self.discovery is not None and not await self.discovery.known(requester, name, cap):
            raise WireFailure("unknown_user", "no such user")

    async def _chain(self, rec: AccountRecord) -> list[Statement]:
        """An account's successions and recoveries (none to read while it has its first key)."""
        if rec.account_key == rec.genesis_key and not rec.forked:
            return []
        found = await self.storage.account_chain(rec.user_id)
        return [] if found is None else found[1]

    async def _own_account(self, user: str) -> AccountRecord:
        """The authenticated user's account (it may have been deleted meanwhile)."""
        rec = await self.directory.account(user)
        if rec is None:
            raise WireFailure("unauthorized", "account no longer exists")
        return rec

    async def _prekeys_upload(
        self, session: Session, ev: PrekeysUpload, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        rec = await self._own_account(user)
        count = await self.directory.store_prekeys(
            rec, device, ev.oneTimeKeys, ev.fallbackKey, now_ms()
        )
        session.reply(PREKEYS_STORED, {"oneTimeKeys": count}, rid)

    async def _prekeys_claim(
        self, session: Session, ev: PrekeysClaim, data: dict[str, Any], rid: str | None
    ) -> None:
        if await self._visible(session, ev.username, ev.pow, ev.cap) is None:
            raise WireFailure("unknown_user", "no such user")
        one_time = await self.directory.one_time_claims(
            self.key_claims, "prekey", session.key[0], ev.username
        )
        claimed = await self.directory.claim(ev.username, session.key, one_time=one_time)
        session.reply(PREKEY_BUNDLES, {
            "username": ev.username,
            # PrekeyBundle.encode() is the certificate's encoding followed by the prekey's.
            "bundles": [b64(c.certificate + c.prekey) for c in claimed],
        }, rid)
        self.presence.notice_low(ev.username, [(c.device_id, c.remaining) for c in claimed],
                                 self.config.prekey_low_watermark, PREKEYS_LOW)

    async def _block(
        self, session: Session, ev: BlockSet, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        await self.directory.set_block(user, ev.userId, ev.blocked)
        session.reply(BLOCK_RESULT, {"userId": ev.userId, "blocked": ev.blocked}, rid)

    async def _push_register(
        self, session: Session, ev: PushRegister, data: dict[str, Any], rid: str | None
    ) -> None:
        user, device = session.key
        await check_endpoint(ev.endpoint, allow_private=self.config.push_allow_private)
        await self.directory.set_push(user, device, ev.endpoint)
        session.reply(PUSH_REGISTERED, {}, rid)

    async def _revoke(
        self, session: Session, ev: RevokeDevice, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        rec = await self._own_account(user)
        if rec.forked:
            raise WireFailure("account_forked", "the account is forked: recover it first")
        try:
            stmt = RevocationStatement.decode(ev.revocation)
            stmt.verify(account_key=rec.account_key, username=user)
        except (DecodeError, IdentityError) as exc:
            raise WireFailure("invalid_revocation", str(exc)) from None
        if rec.device(stmt.device_id) is None:
            raise WireFailure("bad_request", "no such device")
        await self.account_keys.apply(user, [stmt], now_ms(), skip=session)
        self.log.info("device.revoked", userId=user, deviceId=stmt.device_id)
        session.reply(DEVICE_REVOKED, {"deviceId": stmt.device_id}, rid)

    async def _account_statements(
        self, session: Session, ev: AccountStatements, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        await self._own_account(user)
        statements = decode_statements(user, ev.statements)
        rec = await self.account_keys.apply(user, statements, now_ms(), skip=session)
        session.reply(ACCOUNT_HEAD, head_data(rec), rid)

    async def _delete_account(
        self, session: Session, ev: DeleteAccount, data: dict[str, Any], rid: str | None
    ) -> None:
        user, _ = session.key
        rec = await self._own_account(user)
        # Authenticate before mutating: only the stored account key can delete it.
        try:
            stmt = AccountDeletion.decode(ev.statement)
            stmt.verify(account_key=rec.account_key, username=user, now_ms=now_ms())
        except (DecodeError, IdentityError) as exc:
            raise WireFailure("invalid_deletion", str(exc)) from None
        devices = await self.directory.delete(user, now_ms())
        # Each device leaves its rooms as a revoked one does: members commit the Removes.
        for device in devices:
            self.rooms.device_revoked(user, device)
        self.log.info("account.deleted", userId=user, count=len(devices))
        session.reply(ACCOUNT_DELETED, {}, rid)
        text = frame(ACCOUNT_DELETED, {})
        for device in devices:
            self.presence.account_deleted((user, device), text, skip=session)
        session.close(CLOSE_ACCOUNT_DELETED, "account deleted")


def address_key(remote: str) -> str:
    """Whose connection this is, for per-address budgets: the IPv4 address, or the
    IPv6 /64 (one subscriber usually holds a whole /64)."""
    try:
        addr = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return remote


def make_storage(config: ServerConfig, logger: JsonLogger) -> Storage:
    """Embedded SQLite in the data directory, or PostgreSQL when ``database`` is set."""
    tuning: dict[str, Any] = {
        "logger": logger,
        "commit_window_ms": config.commit_window_ms,
        "max_batch": config.max_batch,
        "limits": config.inbox_limits,
    }
    if config.database is not None:
        # Imported here: asyncpg is needed only by deployments that use it.
        from sottovoce.server.storage.postgres import PostgresStorage

        return PostgresStorage(config.database, **tuning)
    return SqliteStorage(config.db_path, **tuning)


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = "no-store"
    # The transport closes the connection after an HTTP answer; saying so keeps a client
    # from sending its next request on it (and getting a reset instead of an answer).
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)
