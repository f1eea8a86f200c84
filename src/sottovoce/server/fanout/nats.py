"""NATS fan-out: any number of nodes share PostgreSQL and one NATS (docs/deploy.md).

Routing is **one subject per device**: ``<ns>.v1.dev.<token>`` where the token
is a keyed BLAKE2b of (user, device) — no raw ids in subjects. A node
subscribes to the subjects of the devices connected to it (on attach) and
unsubscribes when they leave; a node that commits a send publishes each frame
for a device *not connected to it* on that device's subject.

Why per device rather than one subject per node plus a presence map: the
per-device subscription gives the ordering the resume contract needs for free.
On attach the node subscribes and *flushes* (a PING/PONG round trip, so the
NATS server has registered the interest) before the device may resume; from
then on any frame committed anywhere is either read by the replay (committed
before the read) or published after the interest existed (committed after).
A presence map would have to be agreed by every node before the replay to give
the same guarantee. Cost: one subscription per connected device (a few KB in
nats-py) and one NATS message per remote frame; NATS drops messages nobody
listens to, so frames for offline devices cost one publish.

    node B: send commits ──► local device? ──yes──► session.deliver
                                 │no
                                 └─► PUB <p>.dev.<tok>  "F<seq>\\n<frame>"
    node A: SUB <p>.dev.<tok> ──► online[key].deliver(seq, frame)

Other traffic on a device subject (first byte = kind):

* ``E<frame>`` ephemeral, sent as a request; the holder answers ``1`` (NATS
  answers "no responders" when nobody holds the device: ``recipient_offline``);
* ``N<frame>`` a notice; ``R<frame>`` revoked: write it, close with 4001;
  ``D<frame>`` the account was deleted: write it, close with 4002;
* ``A<ns> <node>`` a newer connection of this device attached on ``node``:
  an older one elsewhere closes with 4000 ("replaced").

``<prefix>.sfu`` carries room removals (JSON ``{"room": ID, "devices": [[user,
device], ...]}``) from the node that stored the commit to every other node, so the
node that opened a call's SFU room revokes the removed devices' grants and kicks
their feeds wherever the commit was made (the room id and device ids are what room
frames already carry in the clear).

``<prefix>.dir`` carries directory invalidations (payload: the user id) so the
nodes' account caches follow writes made elsewhere. ``<prefix>.presence``
gossips which devices are online on which node; it only decides whether an
offline device gets a push tickle (a stale entry costs one tickle too many or
too few, never a frame).

``<prefix>.link.<token>`` (the token keys a mailbox id and a side, ``o`` for the
node holding the mailbox, ``j`` for the node of a joiner connected elsewhere)
carries a device-linking mailbox across nodes: the join as a request, then the
opaque bodies and the close (server/link_mailbox.py). Nothing of it is stored.

When the NATS connection drops, frames published meanwhile are lost to this
node's subscribers; on reconnect every connected device is caught up from
storage from the last globalInboxSeq written to it (the durable inbox covers
the gap; the client dedupes by messageId).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Collection, Sequence
from functools import partial
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from sottovoce.errors import UsageError
from sottovoce.limits import LINK_MESSAGE_MAX_BYTES, MAX_ID_LEN
from sottovoce.protocol.fields import ID_RE
from sottovoce.server.errors import CLOSE_ACCOUNT_DELETED, CLOSE_REPLACED, CLOSE_REVOKED
from sottovoce.server.fanout.base import Fanout, LinkHandler
from sottovoce.server.ports import DeviceKey, FanoutPorts
from sottovoce.server.session import Session

#: Keys the subject tokens: without it a NATS operator could test guessed usernames.
TOKEN_PERSON = b"sottovoce-dev"
#: Longest user id a directory invalidation may carry (ids are far shorter).
MAX_ID_BYTES = 256
#: An ephemeral relay waits this long for the holding node: a live device on a
#: healthy cluster answers in well under a millisecond; longer means it is gone.
FANOUT_EPHEMERAL_TIMEOUT_S = 0.5
#: Attach waits this long for NATS to confirm the subscription; past it the
#: reconnect catch-up, not the flush, guarantees no frame is missed.
FANOUT_FLUSH_TIMEOUT_S = 2
#: Publishes buffered while NATS is away (nats-py's default is 2 MiB); past it
#: frames are dropped from the buffer and read back from storage by the holder.
FANOUT_PENDING_BYTES = 16 * 1024 * 1024
#: Each node repeats its presence list this often (also its heartbeat) ...
FANOUT_PRESENCE_INTERVAL_S = 5.0
#: ... and a node not heard from for this long (killed) is taken as gone.
FANOUT_PRESENCE_EXPIRY_S = 16.0
#: A frame that arrives ahead of its predecessor waits this long for it (the
#: predecessor committed first, but its publish from another node may be later);
#: then the session reads the gap from storage. Measured arrival skew between two
#: nodes on one machine is well under 5 ms.
FANOUT_GAP_WAIT_S = 0.05
#: Frames held for one session while waiting for a gap; past it, read storage now.
FANOUT_GAP_MAX_FRAMES = 1000
#: Largest presence message accepted (2,000 tokens of 32 hex chars per chunk).
MAX_PRESENCE_BYTES = 128 * 1024
#: A join asks the node holding the mailbox; it answers at once if it is there.
FANOUT_LINK_TIMEOUT_S = 1.0
#: Largest link message accepted from NATS (one body and its kind byte).
MAX_LINK_BYTES = LINK_MESSAGE_MAX_BYTES + 64
#: Most devices one removal names (one commit removes at most this many).
MAX_REMOVED_DEVICES = 1000
#: Largest removal message accepted.
MAX_REMOVAL_BYTES = MAX_REMOVED_DEVICES * 2 * (MAX_ID_LEN + 8) + 256


def device_token(user: str, device: str, key: bytes = b"") -> str:
    h = hashlib.blake2b(digest_size=16, key=key[:64], person=TOKEN_PERSON)
    h.update(user.encode())
    h.update(b"\x00")
    h.update(device.encode())
    return h.hexdigest()


class NatsFanout(Fanout):
    remote = True

    def __init__(
        self, ports: FanoutPorts, url: str, *, node_id: str, namespace: str = "sottovoce"
    ) -> None:
        super().__init__(ports)
        self.url = url
        self.node_id = node_id
        self.prefix = f"{namespace}.v1"
        # Tokens differ per deployment too (not a secret: see docs/deploy.md on NATS auth).
        self._token_key = namespace.encode()
        self.nc: NatsClient | None = None
        self._subs: dict[DeviceKey, Subscription] = {}
        self._subjects: dict[DeviceKey, str] = {}
        #: The link mailbox sides this node listens for (see link_listen).
        self._link_subs: dict[str, Subscription] = {}
        #: The attach time of this node's connection of each device (orders replacements).
        self._stamps: dict[DeviceKey, int] = {}
        self._out: list[tuple[str, bytes]] = []
        self._flushing = False
        self._tasks: set[asyncio.Future[Any]] = set()
        #: token -> node, for devices online on other nodes (tickle decisions only).
        self._remote_online: dict[str, str] = {}
        self._node_seen: dict[str, float] = {}
        #: Frames ahead of a gap, per live session, and the timer that gives up waiting.
        self._held: dict[tuple[Session, str | None], dict[int, str]] = {}
        self._gap_timers: dict[tuple[Session, str | None], asyncio.TimerHandle] = {}
        self.connected = False
        self.reconnects = 0
        self.gaps = 0
        self.dropped = 0
        self.catchups = 0

    # --- life cycle -----------------------------------------------------------------

    def subject(self, key: DeviceKey) -> str:
        subj = self._subjects.get(key)
        if subj is None:
            subj = f"{self.prefix}.dev.{device_token(key[0], key[1], self._token_key)}"
            if len(self._subjects) > 200_000:
                self._subjects.clear()
            self._subjects[key] = subj
        return subj

    async def start(self) -> None:
        try:
            self.nc = await nats.connect(
                servers=[u.strip() for u in self.url.split(",")],  # a NATS cluster: a,b,c
                name=f"sottovoce-{self.node_id}",
                # Frames for our own devices never leave the node: no echo needed.
                no_echo=True,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.25,
                connect_timeout=2,
                pending_size=FANOUT_PENDING_BYTES,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                error_cb=self._on_error,
            )
        except (TimeoutError, OSError, NatsError) as exc:
            raise UsageError(
                f"cannot connect to NATS at {_redact_url(self.url)}: {type(exc).__name__}"
            ) from None
        self.connected = True
        nc = self.nc
        await nc.subscribe(f"{self.prefix}.dir", cb=self._on_directory)
        await nc.subscribe(f"{self.prefix}.presence", cb=self._on_presence)
        await nc.subscribe(f"{self.prefix}.sfu", cb=self._on_members_removed)
        await nc.flush(FANOUT_FLUSH_TIMEOUT_S)
        # Ask the others for their lists; they answer on the presence subject.
        self._publish(f"{self.prefix}.presence", b"?" + self.node_id.encode())
        self._spawn(self._presence_loop())
        self.ports.log.info("fanout.started", url=_redact_url(self.url), reason=self.node_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                self._publish(f"{self.prefix}.presence", b"x" + self.node_id.encode())
                await self._drain_out()
                await self.nc.flush(FANOUT_FLUSH_TIMEOUT_S)
            with contextlib.suppress(Exception):
                await self.nc.close()
        self.connected = False

    def status(self) -> dict[str, object]:
        return {
            "nats": "connected" if self.connected else "disconnected",
            "natsReconnects": self.reconnects,
        }

    def _spawn(self, coro: Any) -> asyncio.Future[Any]:
        task: asyncio.Future[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- publishing (never awaits on the hot path) --------------------------------------

    def _publish(self, subject: str, payload: bytes) -> None:
        self._out.append((subject, payload))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._drain_out())

    async def _drain_out(self) -> None:
        nc = self.nc
        try:
            while self._out and nc is not None:
                batch, self._out = self._out, []
                for subject, payload in batch:
                    try:
                        await nc.publish(subject, payload)
                    except NatsError:
                        # Reconnect buffer full or connection closed: the frame is in
                        # storage and the holder catches up after its reconnect.
                        self.dropped += 1
        finally:
            self._flushing = False

    # --- presence -------------------------------------------------------------------

    def attach(self, session: Session) -> Awaitable[None] | None:
        return self._attach(session)

    async def _attach(self, session: Session) -> None:
        key = session.key
        nc = self.nc
        if nc is None:
            return
        stamp = time.time_ns()
        self._stamps[key] = stamp
        subject = self.subject(key)
        online = self.ports.online
        if key not in self._subs:
            try:
                sub = await nc.subscribe(subject, cb=partial(self._on_device, key))
            except NatsError as exc:
                self.ports.log.warning("fanout.subscribe_failed", error=type(exc).__name__)
                return
            if key not in self._subs and online.get(key) is session:
                self._subs[key] = sub
            else:  # left, or attached again, while we subscribed
                self._spawn(_unsubscribe(sub))
        if nc.is_connected:
            # The server has our interest before the device may resume (see module doc);
            # if NATS is away, the reconnect catch-up covers it instead.
            with contextlib.suppress(TimeoutError, NatsError):
                await nc.flush(FANOUT_FLUSH_TIMEOUT_S)
        if online.get(key) is not session or key not in self._subs:
            return
        token = subject.rsplit(".", 1)[1]
        self._publish(subject, b"A" + str(stamp).encode() + b" " + self.node_id.encode())
        self._publish(f"{self.prefix}.presence", b"+" + self.node_id.encode() + b" "
                      + token.encode())

    def detach(self, key: DeviceKey) -> None:
        self._stamps.pop(key, None)
        for stream in [st for st in self._held if (st[0].user, st[0].device) == key]:
            self._forget_gap(stream)
        sub = self._subs.pop(key, None)
        if sub is not None:
            self._spawn(_unsubscribe(sub))
            token = self.subject(key).rsplit(".", 1)[1]
            self._publish(f"{self.prefix}.presence", b"-" + self.node_id.encode() + b" "
                          + token.encode())

    # --- outbound -------------------------------------------------------------------

    def online_elsewhere(self, key: DeviceKey) -> bool:
        return self.subject(key).rsplit(".", 1)[1] in self._remote_online

    def frame(self, user: str, device: str, seq: int, text: str) -> None:
        self._publish(self.subject((user, device)),
                      b"F" + str(seq).encode() + b"\n" + text.encode())

    def room_frame(self, key: DeviceKey, room_id: str, seq: int, text: str) -> None:
        # Room ids are protocol ids (no spaces or newlines): "M<seq> <room>\n<frame>".
        self._publish(self.subject(key), b"M" + str(seq).encode() + b" " + room_id.encode()
                      + b"\n" + text.encode())

    def ephemeral(self, targets: Collection[tuple[DeviceKey, str]]) -> Awaitable[set[DeviceKey]]:
        return self._spawn(self._ephemeral(list(targets)))

    async def _ephemeral(self, targets: list[tuple[DeviceKey, str]]) -> set[DeviceKey]:
        nc = self.nc
        if nc is None or not nc.is_connected or not targets:
            return set()

        async def one(key: DeviceKey, text: str) -> DeviceKey | None:
            try:
                reply = await nc.request(
                    self.subject(key), b"E" + text.encode(), timeout=FANOUT_EPHEMERAL_TIMEOUT_S
                )
            except (TimeoutError, NoRespondersError, NatsTimeoutError, NatsError):
                return None
            return key if reply.data == b"1" else None

        got = await asyncio.gather(*(one(k, t) for k, t in targets))
        return {k for k in got if k is not None}

    def notice(self, keys: Collection[DeviceKey], text: str) -> None:
        data = b"N" + text.encode()
        for key in keys:
            self._publish(self.subject(key), data)

    def revoked(self, key: DeviceKey, text: str) -> None:
        self._publish(self.subject(key), b"R" + text.encode())

    def account_deleted(self, key: DeviceKey, text: str) -> None:
        self._publish(self.subject(key), b"D" + text.encode())

    def directory_changed(self, user: str) -> None:
        self._publish(f"{self.prefix}.dir", user.encode())

    def members_removed(self, room_id: str, devices: Sequence[DeviceKey]) -> None:
        for i in range(0, len(devices), MAX_REMOVED_DEVICES):
            chunk = [list(d) for d in devices[i:i + MAX_REMOVED_DEVICES]]
            self._publish(f"{self.prefix}.sfu",
                          json.dumps({"room": room_id, "devices": chunk}).encode())

    # --- link mailboxes (server/link_mailbox.py) ------------------------------------

    def link_subject(self, channel: str) -> str:
        """``<prefix>.link.<token>``: the mailbox id and side keyed, as device subjects."""
        return f"{self.prefix}.link.{device_token('link', channel, self._token_key)}"

    async def link_listen(self, channel: str, handler: LinkHandler) -> None:
        nc = self.nc
        if nc is None:
            return

        async def on_message(msg: Msg) -> None:
            if len(msg.data) > MAX_LINK_BYTES:
                self.ports.log.warning("fanout.bad_message", reason="link subject")
                return
            reply = await handler(msg.data)
            if msg.reply and reply is not None:
                with contextlib.suppress(NatsError):
                    await msg.respond(reply)

        try:
            sub = await nc.subscribe(self.link_subject(channel), cb=on_message)
        except NatsError as exc:
            self.ports.log.warning("fanout.subscribe_failed", error=type(exc).__name__)
            return
        old = self._link_subs.pop(channel, None)
        if old is not None:
            self._spawn(_unsubscribe(old))
        self._link_subs[channel] = sub
        with contextlib.suppress(TimeoutError, NatsError):
            await nc.flush(FANOUT_FLUSH_TIMEOUT_S)

    def link_unlisten(self, channel: str) -> None:
        sub = self._link_subs.pop(channel, None)
        if sub is not None:
            self._spawn(_unsubscribe(sub))

    def link_publish(self, channel: str, data: bytes) -> None:
        self._publish(self.link_subject(channel), data)

    async def link_request(self, channel: str, data: bytes) -> bytes | None:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return None
        try:
            reply = await nc.request(self.link_subject(channel), data,
                                     timeout=FANOUT_LINK_TIMEOUT_S)
        except (TimeoutError, NoRespondersError, NatsTimeoutError, NatsError):
            return None
        return reply.data if len(reply.data) <= MAX_LINK_BYTES else None

    # --- ordering -------------------------------------------------------------------
    #
    # A "stream" is a session's inbox (room None) or one of its rooms. Sequence
    # numbers are contiguous per stream and commit in order, but two nodes'
    # publishes race: a frame that comes early is held until the gap fills, or
    # read back from storage (catch_up) if it does not fill in time.

    def deliver_live(self, session: Session, seq: int, text: str) -> None:
        self._ordered(session, None, seq, text)

    def deliver_room_live(self, session: Session, room_id: str, seq: int, text: str) -> None:
        if room_id not in session.room_sent:
            # No base on this connection yet (nothing replayed for the room): where this
            # device's read position is, only storage knows. Read the room from there
            # (this frame included: it is committed) instead of guessing.
            self.gaps += 1
            self.ports.catch_up(session)
            return
        self._ordered(session, room_id, seq, text)

    def _ordered(self, session: Session, room: str | None, seq: int, text: str) -> None:
        stream = (session, room)
        last = session.last_sent if room is None else session.room_sent[room]
        if seq == last + 1:
            self._advance(session, room, seq, text)
            held = self._held.get(stream)
            if held:
                nxt = held.pop(seq + 1, None)
                while nxt is not None:
                    seq += 1
                    self._advance(session, room, seq, nxt)
                    nxt = held.pop(seq + 1, None)
                if not held or min(held) <= seq:
                    self._forget_gap(stream)
            return
        held = self._held.setdefault(stream, {})
        held[seq] = text
        if len(held) > FANOUT_GAP_MAX_FRAMES:
            self._gap_expired(stream)
        elif stream not in self._gap_timers:
            self._gap_timers[stream] = asyncio.get_running_loop().call_later(
                FANOUT_GAP_WAIT_S, self._gap_expired, stream
            )

    @staticmethod
    def _advance(session: Session, room: str | None, seq: int, text: str) -> None:
        if room is None:
            session.last_sent = seq
        else:
            session.room_sent[room] = seq
        session.write(text)

    def _forget_gap(self, stream: tuple[Session, str | None]) -> None:
        self._held.pop(stream, None)
        timer = self._gap_timers.pop(stream, None)
        if timer is not None:
            timer.cancel()

    def _gap_expired(self, stream: tuple[Session, str | None]) -> None:
        # The missing frame committed before the held ones: storage has it.
        self._forget_gap(stream)
        self.gaps += 1
        session = stream[0]
        if not session.closed:
            self.ports.catch_up(session)

    # --- inbound --------------------------------------------------------------------

    async def _on_device(self, key: DeviceKey, msg: Msg) -> None:
        data = msg.data
        kind = data[:1]
        session = self.ports.online.get(key)
        try:
            if kind == b"F":
                nl = data.index(b"\n", 1, 24)
                seq = int(data[1:nl])
                if session is not None:
                    session.deliver(seq, data[nl + 1:].decode())
                    self.ports.metrics.deliveries_live += 1
            elif kind == b"M":
                nl = data.index(b"\n", 1, 300)
                seq_text, room = data[1:nl].split(b" ", 1)
                seq = int(seq_text)
                if session is not None:
                    session.deliver_room(room.decode(), seq, data[nl + 1:].decode())
                    self.ports.metrics.room_deliveries_live += 1
            elif kind == b"E":
                ok = session is not None and not session.closed
                if session is not None and ok:
                    session.deliver_ephemeral(data[1:].decode())
                if msg.reply:
                    await msg.respond(b"1" if ok else b"0")
            elif kind == b"N":
                if session is not None:
                    session.write(data[1:].decode())
            elif kind == b"R":
                if session is not None:
                    session.write(data[1:].decode())
                    session.close(CLOSE_REVOKED, "device revoked")
            elif kind == b"D":
                if session is not None:
                    session.write(data[1:].decode())
                    session.close(CLOSE_ACCOUNT_DELETED, "account deleted")
            elif kind == b"A":
                stamp_text, node = data[1:].split(b" ", 1)
                stamp = int(stamp_text)
                mine = self._stamps.get(key)
                if (session is not None and mine is not None and node != self.node_id.encode()
                        and (stamp, node) > (mine, self.node_id.encode())):
                    session.close(CLOSE_REPLACED, "replaced by a newer connection of this device")
            else:
                raise ValueError("unknown kind")
        except (ValueError, UnicodeDecodeError):
            self.ports.log.warning("fanout.bad_message", reason="device subject")

    async def _on_directory(self, msg: Msg) -> None:
        if not 0 < len(msg.data) <= MAX_ID_BYTES:
            return
        try:
            user = msg.data.decode()
        except UnicodeDecodeError:
            return
        self.ports.invalidate(user)

    async def _on_members_removed(self, msg: Msg) -> None:
        hook = self.on_members_removed
        removal = parse_removal(msg.data)
        if removal is None:
            self.ports.log.warning("fanout.bad_message", reason="sfu subject")
        elif hook is not None:
            hook(*removal)

    async def _on_presence(self, msg: Msg) -> None:
        data = msg.data
        if not data or len(data) > MAX_PRESENCE_BYTES:
            return
        kind, rest = data[:1], data[1:].decode(errors="replace")
        parts = rest.split(" ")
        node = parts[0]
        if node == self.node_id:
            return
        self._node_seen[node] = time.monotonic()
        if kind == b"+":
            for tok in parts[1:]:
                self._remote_online[tok] = node
        elif kind == b"-":
            for tok in parts[1:]:
                if self._remote_online.get(tok) == node:
                    del self._remote_online[tok]
        elif kind == b"x":
            self._forget(node)
        elif kind == b"?":
            self._announce()

    def _announce(self) -> None:
        """Our whole list, in chunks (answers a new node's question; also the heartbeat)."""
        tokens = [self.subject(k).rsplit(".", 1)[1] for k in self._subs]
        head = b"+" + self.node_id.encode()
        for i in range(0, max(len(tokens), 1), 2000):
            chunk = tokens[i:i + 2000]
            self._publish(f"{self.prefix}.presence",
                          head + b"".join(b" " + t.encode() for t in chunk))

    def _forget(self, node: str) -> None:
        self._node_seen.pop(node, None)
        for tok in [t for t, n in self._remote_online.items() if n == node]:
            del self._remote_online[tok]

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(FANOUT_PRESENCE_INTERVAL_S)
            self._announce()
            now = time.monotonic()
            for node, seen in list(self._node_seen.items()):
                if now - seen > FANOUT_PRESENCE_EXPIRY_S:
                    self._forget(node)  # a node killed without saying goodbye

    # --- connection events ----------------------------------------------------------

    async def _on_disconnected(self) -> None:
        if self.connected:
            self.connected = False
            self.ports.log.warning("fanout.disconnected", reason=self.node_id)

    async def _on_reconnected(self) -> None:
        self.connected = True
        self.reconnects += 1
        self.ports.log.info("fanout.reconnected", reason=self.node_id)
        self._publish(f"{self.prefix}.presence", b"?" + self.node_id.encode())
        self._announce()
        self.catch_up_all()

    async def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, nats.errors.SlowConsumerError):
            # Frames were dropped for a device: read them back from storage.
            self.catch_up_all()
            return
        self.ports.log.warning("fanout.error", error=type(exc).__name__)

    def catch_up_all(self) -> None:
        """Frames may have been missed: re-read storage for every connected device."""
        self.catchups += 1
        for session in list(self.ports.online.values()):
            self.ports.catch_up(session)


def _is_id(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ID_LEN and bool(ID_RE.fullmatch(value))


def parse_removal(data: bytes) -> tuple[str, list[DeviceKey]] | None:
    """A removal from the ``sfu`` subject, checked (``None``: not a valid one). NATS is
    shared by the nodes only, but what comes from it is still parsed with bounds."""
    if not 0 < len(data) <= MAX_REMOVAL_BYTES:
        return None
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not _is_id(body.get("room")):
        return None
    listed = body.get("devices")
    if not isinstance(listed, list) or not 0 < len(listed) <= MAX_REMOVED_DEVICES:
        return None
    devices: list[DeviceKey] = []
    for item in listed:
        if not (isinstance(item, list) and len(item) == 2 and all(_is_id(x) for x in item)):
            return None
        devices.append((item[0], item[1]))
    return body["room"], devices


async def _unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await sub.unsubscribe()


def _redact_url(url: str) -> str:
    """``nats://user:pass@host`` → ``nats://host`` (no credentials in logs)."""
    out = []
    for one in url.split(","):
        scheme, sep, rest = one.strip().partition("://")
        out.append(scheme + "://" + rest.rsplit("@", 1)[-1] if sep else one)
    return ",".join(out)
