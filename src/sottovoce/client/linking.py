"""Linking a new device to an account: the PAKE (identity/pake.py) through a server
mailbox (protocol/link.py), then the handover sealed under the PAKE's session key.

    existing device A (authenticated)                          new device B (not yet)
    open two mailboxes: the QR code's and the short code's
    put  0 | sid | msg1 in each ─────────────────────────────► join one; LinkSession(sid)
         ◄──────────────────────────────────────────────────── 0 | msg2
    confirm; 0 | msg3 ───────────────────────────────────────► finish: both have the key
    OFFER  {username, name hint} ────────────────────────────►
         ◄──────────────────────────────────────────────────── HELLO {name, public keys}
    shows name + words, the user confirms (B shows the same words)
    GRANT  {certificate, account key, own certificate, device names, contacts,
            rooms, history parts, contact list} ──────────────► checks, registers, uploads
    HISTORY × parts (only with history) ─────────────────────►   prekeys and KeyPackages
         ◄──────────────────────────────────────────────────── READY
    adds B to every room (MLS Add); DONE; closes the mailbox ► syncs (Welcomes), relabels

After the PAKE every body is ``1 | counter (u32) | ChaCha20-Poly1305`` under a key per
direction derived from the session key; the counter is the nonce and must be the next
one, so a replayed, dropped or reordered message ends the attempt. Any failure —
a wrong code, a malformed or unexpected message, a refusal, expiry — closes the
mailbox: one code buys one try.

Under the account-key model (client/identity.py) every device keeps the account key,
so GRANT carries it, exactly what ``Client.add_device`` copies into a new store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from sottovoce.client.client import Client
from sottovoce.client.connection import (
    Connector,
    Transport,
    TransportClosed,
    read_challenge,
    websocket_connector,
    ws_url,
)
from sottovoce.client.device_notices import DeviceNotices
from sottovoce.client.errors import NotConnected
from sottovoce.client.expiry import TIMER_CONTENT_TYPE, Expiries
from sottovoce.client.identity import DeviceKeys, LocalIdentity
from sottovoce.client.ids import now_ms
from sottovoce.client.ports import LinkPort
from sottovoce.client.rooms import ROOM_PREFIX
from sottovoce.client.store import Contact, DeliveryStatus, KdfParams, Store, StoredMessage
from sottovoce.client.store_contact_list import STATES, ContactTable, Entry
from sottovoce.client.store_control import ControlStore
from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.aead import Aead, AeadKey
from sottovoce.crypto.kdf import Hash, hkdf_expand
from sottovoce.crypto.rng import Random
from sottovoce.errors import DecodeError, IdentityError, SottovoceError, UsageError
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    DevicePublicKeys,
    validate_device_id,
    validate_username,
)
from sottovoce.identity.pake import (
    LinkError,
    LinkResult,
    LinkSession,
    QRPayload,
    Role,
    ShortCode,
)
from sottovoce.limits import LINK_MAX_MESSAGES, LINK_MESSAGE_MAX_BYTES
from sottovoce.protocol import events as ev
from sottovoce.protocol.fields import ProtocolError
from sottovoce.protocol.link import (
    BODY,
    LINK_CLOSED,
    LINK_JOINED,
    LINK_MESSAGE,
    LINK_OPENED,
    LINK_SENT,
    MAILBOX,
    LinkClose,
    LinkJoin,
    LinkOpen,
    LinkPut,
)
from sottovoce.secret import Secret

__all__ = [
    "DeviceNames",
    "LinkError",
    "LinkInvite",
    "LinkedDevice",
    "NewDevice",
    "link_existing",
]

_PAKE = 0
_SEALED = 1
_SID_BYTES = 16
_NAME_MAX = 64
#: Room of each sealed body for its header and the AEAD tag.
_OVERHEAD = 64
_HISTORY_PART = LINK_MESSAGE_MAX_BYTES - _OVERHEAD - 1024
#: Handover parts besides the history (OFFER, HELLO, GRANT, READY, DONE, the PAKE).
_FIXED_MESSAGES = 8
#: The label of each handover message, in the order they come.
OFFER, HELLO, GRANT, HISTORY, READY, DONE = range(1, 7)
_KIND_NAMES = {OFFER: "offer", HELLO: "hello", GRANT: "grant", HISTORY: "history",
               READY: "ready", DONE: "done"}
#: Waiting for the user (confirming on the other screen) or for a step of the other side.
STEP_TIMEOUT_S = 300.0


# =============================================================================
# The mailbox, as either side sees it
# =============================================================================


@dataclass(slots=True)
class _Inbox:
    """Frames of the mailbox events, queued in order: ("joined"|"message"|"closed"|
    "error", mailbox, payload)."""

    queue: asyncio.Queue[tuple[str, str, Any]] = field(default_factory=asyncio.Queue)

    def feed(self, event: str, data: dict[str, Any]) -> None:
        try:
            mailbox = MAILBOX.parse(data.get("mailbox"), "mailbox")
            if event == LINK_MESSAGE:
                self.queue.put_nowait(("message", mailbox, BODY.parse(data.get("body"), "body")))
            elif event == LINK_JOINED:
                self.queue.put_nowait(("joined", mailbox, None))
            elif event == LINK_CLOSED:
                reason = data.get("reason")
                self.queue.put_nowait(("closed", mailbox, reason if isinstance(reason, str)
                                       else "closed"))
        except ProtocolError:
            self.queue.put_nowait(("error", "", "the server sent a malformed linking frame"))

    async def next(self, timeout: float) -> tuple[str, str, Any]:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise LinkError("the other device did not answer in time: linking stopped") from None


def _closed_error(reason: str) -> LinkError:
    said = {
        "failed": "the other device stopped: the codes did not match",
        "cancelled": "linking was cancelled on the other device",
        "expired": "the linking code expired: show a new one",
        "peer_gone": "the other device went away: linking stopped",
        "too_many": "too many linking messages: linking stopped",
    }
    return LinkError(said.get(reason, "the other device ended the link"))


# =============================================================================
# Sealed handover messages
# =============================================================================


class _Sealed:
    """Both directions of the handover under the PAKE's session key."""

    def __init__(self, result: LinkResult, role: Role) -> None:
        other = Role.NEW if role is Role.EXISTING else Role.EXISTING
        key = result.session_key.expose()
        self._out = AeadKey(Aead.CHACHA20POLY1305, self._key(key, role))
        self._in = AeadKey(Aead.CHACHA20POLY1305, self._key(key, other))
        self._out_label = role.value.encode()
        self._in_label = other.value.encode()
        self._sent = 0
        self._received = 0

    @staticmethod
    def _key(session_key: bytes, role: Role) -> bytes:
        return hkdf_expand(Hash.SHA256, session_key,
                           b"sottovoce link handover v1 " + role.value.encode(), 32)

    def seal(self, kind: int, payload: bytes) -> bytes:
        self._sent += 1
        n = self._sent.to_bytes(4, "big")
        ct = self._out.seal(bytes(8) + n, bytes([kind]) + payload, self._out_label + n)
        return bytes([_SEALED]) + n + ct

    def open(self, body: bytes, expect: int) -> bytes:
        """The payload of the next message, which must be of kind ``expect``."""
        if len(body) < 6 or body[0] != _SEALED:
            raise LinkError("a linking message is malformed")
        n = body[1:5]
        if int.from_bytes(n, "big") != self._received + 1:
            raise LinkError("a linking message arrived out of order")
        try:
            plain = self._in.open(bytes(8) + n, body[5:], self._in_label + n)
        except SottovoceError:
            raise LinkError("a linking message is damaged or forged") from None
        self._received += 1
        if not plain or plain[0] != expect:
            raise LinkError(
                f"a linking message arrived out of order (expected {_KIND_NAMES[expect]})")
        return plain[1:]


def _read(data: bytes, reader: Callable[[Reader], Any]) -> Any:
    try:
        return decode(reader, data)
    except (DecodeError, UnicodeDecodeError, UsageError, IdentityError, ValueError):
        raise LinkError("a linking message is malformed") from None


def _name(text: str) -> str:
    name = " ".join(text.split())[:_NAME_MAX]
    return "".join(c for c in name if c.isprintable())


# =============================================================================
# Device names, kept on each device (sealed in its store)
# =============================================================================


class DeviceNames:
    """This device's names for the devices of its account (local: the server never
    sees a name; linking hands the list to the new device)."""

    _RECORD = "device_names"

    def __init__(self, store: Store) -> None:
        self._store = store

    def all(self) -> dict[str, str]:
        raw = self._store.get_secret(self._RECORD)
        if raw is None:
            return {}
        return dict(_read(raw, _read_names))

    def set(self, device_id: str, name: str) -> None:
        validate_device_id(device_id)
        names = self.all()
        names[device_id] = _name(name)
        w = Writer()
        _write_names(w, names)
        with self._store.transaction():
            self._store.put_secret(self._RECORD, w.getvalue())

    def update(self, names: dict[str, str]) -> None:
        for device_id, name in names.items():
            self.set(device_id, name)


def _write_pair(w: Writer, pair: tuple[str, str]) -> None:
    """(an id, a name or label)"""
    w.opaque8(pair[0].encode("ascii"))
    w.opaque16(pair[1].encode("utf-8"))


def _read_pair(r: Reader) -> tuple[str, str]:
    return r.opaque8().decode("ascii"), r.opaque16().decode("utf-8")


def _write_names(w: Writer, names: dict[str, str]) -> None:
    w.vector_v(sorted(names.items()), _write_pair)


def read_offer(r: Reader) -> tuple[str, str]:
    """OFFER, as the new device reads it: the account's username and a name hint."""
    return validate_username(r.opaque8().decode("ascii")), _name(r.opaque8().decode("utf-8"))


def read_hello(r: Reader) -> tuple[str, DevicePublicKeys]:
    """HELLO, as the existing device reads it: the new device's name and public keys."""
    return _name(r.opaque8().decode("utf-8")), DevicePublicKeys.read(r)


def _read_names(r: Reader) -> list[tuple[str, str]]:
    def one(r2: Reader) -> tuple[str, str]:
        device, name = _read_pair(r2)
        return validate_device_id(device), _name(name)

    return r.vector_v(one)


# =============================================================================
# The history archive
# =============================================================================


def _write_message(w: Writer, m: StoredMessage) -> None:
    for text in (m.message_id, m.peer, m.sender, m.sender_device, m.content_type):
        w.opaque8(text.encode("utf-8"))
    w.boolean(m.outgoing)
    w.u8(int(m.status))
    w.u64(m.client_created_ms)
    w.u64(m.server_received_ms)
    w.u64(m.local_at_ms)
    w.u64(m.server_seq or 0)
    w.opaque_v(m.text.encode("utf-8"))


def _read_message(r: Reader) -> dict[str, Any]:
    mid, peer, sender, device, ctype = (r.opaque8().decode("utf-8") for _ in range(5))
    outgoing = r.boolean()
    status = DeliveryStatus(r.u8())
    created, received, local, seq = r.u64(), r.u64(), r.u64(), r.u64()
    return {"message_id": mid, "peer": peer, "sender": sender, "sender_device": device,
            "content_type": ctype, "outgoing": outgoing, "status": status,
            "client_created_ms": created, "server_received_ms": received,
            "local_at_ms": local, "server_seq": seq or None,
            "text": r.opaque_v().decode("utf-8")}


def all_messages(after: Callable[[int], list[StoredMessage]]) -> Iterator[StoredMessage]:
    """Every stored message, oldest first, read in batches by ``after(local_id)``
    (``Store.messages_after`` or ``Client.messages_after``)."""
    last = 0
    while batch := after(last):
        yield from batch
        last = batch[-1].local_id


def history_archive(
    store: Store, users: Iterable[str] = ()
) -> tuple[list[bytes], int]:
    """Every stored message, encoded, in parts that each fit one mailbox message; and how
    many messages. Then, as JSON, what control messages did to them (``ctl_*``, with
    the usernames of ``users`` and of every sender for their keyed tags) and each
    disappearing message's expiry: the linked device deletes it at the same time.
    A message already expired is left out."""
    w = Writer()
    expiries = Expiries(store)
    now = expiries.clock()
    messages = [m for m in all_messages(store.messages_after)
                if not expiries.due(expiries.of(m.message_id))]
    w.vector_v(messages, _write_message)
    ids = [m.message_id for m in messages]
    names = {m.sender for m in messages} | {m.peer for m in messages} | set(users)
    extras = {
        "controls": ControlStore(store).export(ids, names),
        "expiries": {m: e for m in ids if (e := expiries.of(m)) and e > now},
    }
    w.opaque_v(json.dumps(extras, separators=(",", ":")).encode("utf-8"))
    raw = w.getvalue()
    parts = [raw[i:i + _HISTORY_PART] for i in range(0, len(raw), _HISTORY_PART)] or [b""]
    if len(parts) > LINK_MAX_MESSAGES - _FIXED_MESSAGES:
        raise UsageError(
            f"the message history ({len(raw) // (1 << 20)} MiB) is too large to hand over; "
            "link without --with-history")
    return parts, len(messages)


def _read_archive(r: Reader) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = r.vector_v(_read_message)
    extras = json.loads(r.opaque_v()) if not r.eof() else {}
    if not isinstance(extras, dict):
        raise ValueError("a history's records are malformed")
    return records, extras


def import_history(store: Store, raw: bytes, username: str) -> int:
    """Store the handed-over messages, their expiries and control records; the timer
    messages among them set each chat's disappearing-message timer here too (the
    newest wins, as when they arrive)."""
    records, extras = _read(raw, _read_archive)
    added = 0
    expiries = Expiries(store)
    ends = extras.get("expiries", {})
    if not isinstance(ends, dict):
        raise LinkError("a linking message is malformed")
    controls = ControlStore(store)  # its tables first: executescript commits
    with store.transaction():
        for rec in records:
            end = ends.get(rec["message_id"], 0)
            if not isinstance(end, int) or expiries.due(end):
                continue  # expired meanwhile (or malformed): never stored here
            if store.add_message(**rec) is not None:
                added += 1
                expiries.record(rec["message_id"], end)
            if rec["content_type"] == TIMER_CONTENT_TYPE and rec["status"] is DeliveryStatus.SENT:
                peer = rec["peer"]
                chat = (peer if peer.startswith(ROOM_PREFIX)
                        else ev.dm_conversation_id(username, peer))
                with contextlib.suppress(DecodeError):
                    expiries.apply(chat, rec["sender"], rec["message_id"],
                                   rec["client_created_ms"], rec["text"].encode("utf-8"))
        try:
            controls.restore(extras.get("controls") or {
                "state": {}, "edits": [], "reactions": [], "receipts": [], "read_sent": []})
        except ValueError:
            raise LinkError("a linking message is malformed") from None
    return added


# =============================================================================
# The existing device
# =============================================================================


@dataclass(frozen=True, slots=True)
class LinkInvite:
    """What the existing device shows: the QR code's payload and the short code."""

    qr: QRPayload
    code: ShortCode
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class LinkedDevice:
    device_id: str
    name: str
    rooms_added: int
    rooms_failed: tuple[str, ...]
    history_messages: int


@dataclass(frozen=True, slots=True)
class PeerHello:
    device_id: str
    name: str
    words: tuple[str, ...]


#: Shown to the user: the new device's id and name and the confirmation words; answers
#: whether to go on (run in a thread: it may wait on the terminal).
Confirm = Callable[[PeerHello], bool]


class _Opener:
    """The existing device's side of one or two mailboxes (QR and short code)."""

    def __init__(self, client: Client, port: LinkPort) -> None:
        self._client = client
        self._port = port
        self._inbox = _Inbox()
        for name in (LINK_MESSAGE, LINK_JOINED, LINK_CLOSED):
            port.route(name, functools.partial(self._inbox.feed, name))
        self.open_boxes: list[str] = []

    async def open(self, mailbox: str) -> int:
        _, data = await self._port.link.request(LinkOpen(mailbox=mailbox),
                                                frozenset({LINK_OPENED}))
        self.open_boxes.append(mailbox)
        expires = data.get("expiresAtMs")
        return expires if isinstance(expires, int) else now_ms()

    async def put(self, mailbox: str, body: bytes) -> None:
        try:
            await self._port.link.request(LinkPut(mailbox=mailbox, body=body),
                                          frozenset({LINK_SENT}))
        except SottovoceError as exc:
            if getattr(exc, "code", "") != "link_not_found":
                raise
            # The new device left (or the code expired) after this side last looked:
            # say so as the notice does, not as a server error about the code.
            self.check_open(mailbox)
            raise _closed_error("") from None

    async def close(self, mailbox: str, reason: str) -> None:
        if mailbox not in self.open_boxes:
            return
        self.open_boxes.remove(mailbox)
        with contextlib.suppress(SottovoceError, UsageError):
            await self._port.link.request(LinkClose(mailbox=mailbox, reason=reason),
                                          frozenset({LINK_CLOSED}), timeout=5)

    async def close_all(self, reason: str) -> None:
        for mailbox in list(self.open_boxes):
            await self.close(mailbox, reason)

    async def next(self, mailbox: str | None, timeout: float = STEP_TIMEOUT_S
                   ) -> tuple[str, str, Any]:
        """The next frame of ``mailbox`` (any open one if None); a close is an error."""
        while True:
            kind, box, payload = await self._inbox.next(timeout)
            if kind == "error":
                raise LinkError(payload)
            if box not in self.open_boxes or (mailbox is not None and box != mailbox):
                continue
            if kind == "closed":
                self.open_boxes.remove(box)
                raise _closed_error(payload)
            return kind, box, payload

    def check_open(self, mailbox: str) -> None:
        """Raise if the mailbox ended meanwhile (while the user was deciding)."""
        while not self._inbox.queue.empty():
            kind, box, payload = self._inbox.queue.get_nowait()
            if box == mailbox and kind == "closed" and box in self.open_boxes:
                self.open_boxes.remove(box)
                raise _closed_error(payload)

    async def body(self, mailbox: str) -> bytes:
        kind, _, payload = await self.next(mailbox)
        if kind != "message":
            raise LinkError("a linking message arrived out of order")
        body: bytes = payload
        return body


def _pake_body(body: bytes) -> bytes:
    if not body or body[0] != _PAKE:
        raise LinkError("a linking message arrived out of order")
    return body[1:]


async def link_existing(
    client: Client,
    *,
    show: Callable[[LinkInvite], None],
    confirm: Confirm,
    name_hint: str = "",
    with_history: bool = False,
    rng: Random = secrets.token_bytes,
) -> LinkedDevice:
    """Run the existing device's side of linking, start to end (see the module doc)."""
    port = client.linking()
    opener = _Opener(client, port)
    try:
        return await _link_existing(client, port, opener, show, confirm, name_hint,
                                    with_history, rng)
    except asyncio.CancelledError:
        await opener.close_all("cancelled")
        raise
    except BaseException as exc:
        await opener.close_all("failed" if isinstance(exc, LinkError) else "cancelled")
        raise


async def _open_code(opener: _Opener, rng: Random) -> tuple[ShortCode, int]:
    """A short code whose nameplate is free on the server."""
    for _ in range(8):
        code = ShortCode.generate(rng)
        try:
            return code, await opener.open(code.nameplate)
        except SottovoceError as exc:
            if getattr(exc, "code", "") != "link_mailbox_taken":
                raise
    raise LinkError("the server has no free linking code number now: try again soon")


async def _link_existing(
    client: Client, port: LinkPort, opener: _Opener, show: Callable[[LinkInvite], None],
    confirm: Confirm, name_hint: str, with_history: bool, rng: Random,
) -> LinkedDevice:
    ident = client.identity
    qr = QRPayload.generate(rng, device_signing_key=ident.device_key.public,
                            server_url=ident.server_url, now_ms=now_ms())
    await opener.open(qr.mailbox_id())
    code, expires = await _open_code(opener, rng)
    sessions: dict[str, LinkSession] = {}
    for mailbox, prs in ((qr.mailbox_id(), qr.secret), (code.nameplate, code.prs())):
        sid = rng(_SID_BYTES)
        sessions[mailbox] = LinkSession(Role.EXISTING, prs=prs, sid=sid,
                                        device_id=client.device_id)
        await opener.put(mailbox, bytes([_PAKE]) + sid + sessions[mailbox].start(rng))
    show(LinkInvite(qr=qr, code=code, expires_at_ms=expires))

    # Whichever code the new device used: its mailbox is joined first, the other closes.
    while True:
        kind, mailbox, _ = await opener.next(None)
        if kind == "joined":
            break
    for other in list(opener.open_boxes):
        if other != mailbox:
            await opener.close(other, "cancelled")
    msg3, result = sessions[mailbox].confirm(_pake_body(await opener.body(mailbox)))
    await opener.put(mailbox, bytes([_PAKE]) + msg3)
    sealed = _Sealed(result, Role.EXISTING)

    w = Writer()
    w.opaque8(client.username.encode("ascii"))
    w.opaque8(_name(name_hint).encode("utf-8"))
    await opener.put(mailbox, sealed.seal(OFFER, w.getvalue()))
    name, keys = _read(sealed.open(await opener.body(mailbox), HELLO), read_hello)
    new_id = result.peer_device_id
    name = name or _name(name_hint) or "new device"
    if not await asyncio.to_thread(confirm, PeerHello(new_id, name, result.words)):
        await opener.close(mailbox, "cancelled")
        raise UsageError("not linked: you did not confirm the new device")
    opener.check_open(mailbox)

    cert = DeviceCertificate.issue(ident.account_key, username=client.username,
                                   device_id=new_id, keys=keys, now_ms=now_ms())
    if client.kt.pins is not None:  # certified here: our own monitor accepts it
        client.kt.remember_own_device(new_id, keys.signing_key)
    store = port.store
    names = DeviceNames(store)
    names.set(new_id, name)
    DeviceNotices(store, client.device_id).expect(new_id)  # linked here: no notice here
    rooms = [(r.room_id, r.label) for r in client.rooms.all() if not r.removed]
    users = {u for r in client.rooms.all() for u, _ in r.members()} | set(
        client.contacts.contacts())
    parts, count = history_archive(store, users) if with_history else ([], 0)
    grant = Writer()
    grant.opaque_v(cert.encode())
    grant.opaque8(ident.account_key.private_bytes().expose())
    grant.opaque_v(ident.certificate.encode())
    _write_names(grant, names.all())
    grant.vector_v(_contacts(client, store), lambda w2, c: w2.opaque_v(c.encode()))
    grant.vector_v(rooms, _write_pair)
    grant.u16(len(parts))
    grant.vector_v(ContactTable(store).all(), _write_entry)
    await opener.put(mailbox, sealed.seal(GRANT, grant.getvalue()))
    for part in parts:
        await opener.put(mailbox, sealed.seal(HISTORY, part))
    sealed.open(await opener.body(mailbox), READY)

    # The new device is registered and has KeyPackages: add it to every room.
    port.forget(client.username)
    failed: list[str] = []
    added = 0
    for room_id, label in rooms:
        try:
            await client.rooms.invite(room_id, client.username)
            added += 1
        except (SottovoceError, UsageError):
            failed.append(label or room_id)
    done = Writer()
    done.u16(added)
    await opener.put(mailbox, sealed.seal(DONE, done.getvalue()))
    await opener.close(mailbox, "done")
    return LinkedDevice(new_id, name, added, tuple(failed), count)


def _contacts(client: Client, store: Store) -> list[Contact]:
    """The people this device knows (those it has messages with, and room members), with
    their pinned keys and whether they were verified."""
    users: set[str] = set()
    for m in all_messages(store.messages_after):
        users.update((m.peer, m.sender))
    for room in client.rooms.all():
        users.update(u for u, _ in room.members())
    users.update(e.username for e in ContactTable(store).all())  # their marks too
    users.discard(client.username)
    found = []
    for user in sorted(users):
        contact = store.get_contact(user)
        if contact is not None:
            found.append(contact)
    return found


# =============================================================================
# The new device
# =============================================================================


class _Joiner:
    """The new device's own short connection to the mailbox (not authenticated)."""

    def __init__(self, transport: Transport, mailbox: str) -> None:
        self._transport = transport
        self.mailbox = mailbox
        self._inbox = _Inbox()
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def join(cls, server_url: str, mailbox: str, connector: Connector) -> _Joiner:
        try:
            transport = await connector(ws_url(server_url))
        except TransportClosed as exc:
            raise NotConnected(f"cannot reach the server: {exc}") from None
        joiner = cls(transport, mailbox)
        try:
            await read_challenge(transport)
            await transport.send(LinkJoin(mailbox=mailbox).to_frame("join"))
            joiner._reader = asyncio.get_running_loop().create_task(joiner._read())
            kind, _, payload = await joiner._inbox.next(30)
            if kind == "error":
                raise LinkError(payload)
            if kind != "joined":
                raise LinkError("the server did not let this device join the link")
        except TransportClosed as exc:
            await joiner.close(None)
            raise NotConnected(f"the server closed the connection: {exc}") from None
        except BaseException:
            await joiner.close(None)
            raise
        return joiner

    async def _read(self) -> None:
        try:
            while True:
                event, _, data = ev.parse_frame(await self._transport.recv())
                if event == ev.ERROR:
                    code, message = data.get("code"), data.get("message")
                    text = (message if code == "link_not_found" and isinstance(message, str)
                            else f"the server refused a linking step ({str(code)[:40]})")
                    self._inbox.queue.put_nowait(("error", "", text))
                elif event in (LINK_MESSAGE, LINK_JOINED, LINK_CLOSED):
                    self._inbox.feed(event, data)
        except (TransportClosed, ProtocolError):
            self._inbox.queue.put_nowait(("closed", self.mailbox, "peer_gone"))

    async def put(self, body: bytes) -> None:
        try:
            await self._transport.send(LinkPut(mailbox=self.mailbox, body=body).to_frame())
        except TransportClosed:
            raise LinkError("the server closed the connection: linking stopped") from None

    async def body(self, timeout: float = STEP_TIMEOUT_S) -> bytes:
        kind, box, payload = await self._inbox.next(timeout)
        if kind == "error":
            raise LinkError(payload)
        if kind == "closed":
            self._closed = True
            raise _closed_error(payload)
        if kind != "message" or box != self.mailbox:
            raise LinkError("a linking message arrived out of order")
        body: bytes = payload
        return body

    async def close(self, reason: str | None) -> None:
        if reason is not None and not self._closed:
            with contextlib.suppress(TransportClosed):
                await self._transport.send(
                    LinkClose(mailbox=self.mailbox, reason=reason).to_frame())
        self._closed = True
        if self._reader is not None:
            self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._transport.close()


@dataclass(eq=False, repr=False)
class NewDevice:
    """The new device's side: join with a QR payload or a short code, run the PAKE
    (:meth:`start`: the words to show), then :meth:`complete` makes the account here."""

    server_url: str
    mailbox: str
    prs: Secret
    fingerprint: bytes | None
    _: KW_ONLY
    connector: Connector = websocket_connector
    rng: Random = secrets.token_bytes
    _joiner: _Joiner | None = field(init=False, default=None)
    _sealed: _Sealed | None = field(init=False, default=None)
    _result: LinkResult | None = field(init=False, default=None)
    device_id: str = field(init=False)
    username: str = field(init=False, default="")
    name_hint: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.device_id = self.rng(8).hex()

    @classmethod
    def from_qr(cls, text: str, **kw: Any) -> NewDevice:
        qr = QRPayload.decode(text, now_ms=now_ms())
        return cls(qr.server_url, qr.mailbox_id(), qr.secret, qr.device_fingerprint, **kw)

    @classmethod
    def from_code(cls, server_url: str, text: str, **kw: Any) -> NewDevice:
        ws_url(server_url)  # a wrong scheme is a plain error before any connection
        code = ShortCode.parse(text)
        return cls(server_url, code.nameplate, code.prs(), None, **kw)

    async def start(self) -> tuple[str, ...]:
        """Join and run the PAKE; the confirmation words (the other screen shows them too)."""
        self._joiner = await _Joiner.join(self.server_url, self.mailbox, self.connector)
        try:
            first = _pake_body(await self._joiner.body())
            if len(first) <= _SID_BYTES:
                raise LinkError("a linking message is malformed")
            session = LinkSession(Role.NEW, prs=self.prs, sid=first[:_SID_BYTES],
                                  device_id=self.device_id)
            await self._joiner.put(bytes([_PAKE]) + session.respond(first[_SID_BYTES:],
                                                                    self.rng))
            self._result = session.finish(_pake_body(await self._joiner.body()))
            self._sealed = _Sealed(self._result, Role.NEW)
            self.username, self.name_hint = _read(
                self._sealed.open(await self._joiner.body(), OFFER), read_offer)
        except BaseException as exc:
            await self.abort(exc)
            raise
        return self._result.words

    async def abort(self, exc: BaseException | None = None) -> None:
        if self._joiner is not None:
            await self._joiner.close("failed" if isinstance(exc, LinkError) else "cancelled")

    async def complete(
        self, *, name: str, data_dir: str, passphrase: str | bytes,
        kdf: KdfParams | None = None, on_wait: Callable[[], None] = lambda: None,
    ) -> tuple[Client, LinkedDevice]:
        """Send this device's keys, wait for the other device's confirmation and the
        handover, register, and come back with the new account's connected Client."""
        if self._joiner is None or self._sealed is None or self._result is None:
            raise UsageError("start the link first")
        try:
            return await self._complete(self._joiner, self._sealed, self._result,
                                        name, data_dir, passphrase, kdf, on_wait)
        except BaseException as exc:
            await self.abort(exc)
            raise

    async def _complete(
        self, joiner: _Joiner, sealed: _Sealed, result: LinkResult, name: str,
        data_dir: str, passphrase: str | bytes, kdf: KdfParams | None,
        on_wait: Callable[[], None],
    ) -> tuple[Client, LinkedDevice]:
        new = DeviceKeys.generate(username=self.username, device_id=self.device_id, rng=self.rng)
        keys = new.public
        name = _name(name) or self.name_hint or "new device"
        hello = Writer()
        hello.opaque8(name.encode("utf-8"))
        keys.write(hello)
        await joiner.put(sealed.seal(HELLO, hello.getvalue()))
        on_wait()
        grant = _read(sealed.open(await joiner.body(), GRANT), _read_grant)
        cert, account_key, existing, names, contacts, rooms, parts, entries = grant
        self._check_grant(cert, account_key, existing, keys, result)
        history = b"".join([sealed.open(await joiner.body(), HISTORY) for _ in range(parts)])
        identity = LocalIdentity(username=self.username, device_id=self.device_id,
                                 server_url=self.server_url, account_key=account_key,
                                 device_key=new.device_key, certificate=cert, mls_key=new.mls_key)
        client = await Client.enroll_linked(identity, new.olm, data_dir, passphrase, kdf=kdf,
                                            connector=self.connector)
        try:
            port = client.linking()
            with port.store.transaction():
                for contact in contacts:
                    if contact.username != self.username:
                        port.store.put_contact(contact)
                table = ContactTable(port.store)
                for entry in entries:
                    if entry.username != self.username:
                        table.put(entry)
            DeviceNames(port.store).update({**names, self.device_id: name})
            imported = import_history(port.store, history, self.username) if parts else 0
            client.timers.wake()  # the expiries just handed over
            await joiner.put(sealed.seal(READY, b""))
            added = _read(sealed.open(await joiner.body(), DONE), lambda r: r.u16())
            await joiner.close(None)
            await client.sync()
            await self._label_rooms(client, dict(rooms), added)
        except BaseException:
            await client.close()
            raise
        return client, LinkedDevice(self.device_id, name, added, (), imported)

    def _check_grant(self, cert: DeviceCertificate, account_key: AccountKey,
                     existing: DeviceCertificate, keys: DevicePublicKeys,
                     result: LinkResult) -> None:
        now = now_ms()
        try:
            cert.verify(now_ms=now, account_key=account_key.public, username=self.username)
            existing.verify(now_ms=now, account_key=account_key.public, username=self.username)
        except IdentityError:
            raise LinkError("the other device sent a certificate that does not verify") from None
        if cert.device_id != self.device_id or cert.keys != keys:
            raise LinkError("the other device certified other keys than this device's")
        if existing.device_id != result.peer_device_id:
            raise LinkError("the other device's certificate names another device")
        if self.fingerprint is not None and (
            hashlib.sha256(existing.keys.signing_key).digest() != self.fingerprint
        ):
            raise LinkError("the other device's key is not the one its QR code named")

    @staticmethod
    async def _label_rooms(client: Client, labels: dict[str, str], expected: int) -> None:
        """Wait (briefly) for the Welcomes of the rooms it was added to; name them as the
        other device does."""
        async def joined() -> None:
            while sum(1 for r in client.rooms.all() if r.room_id in labels) < expected:
                await asyncio.sleep(0.05)

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(joined(), 10)
        for room in client.rooms.all():
            label = labels.get(room.room_id)
            if label:
                client.rooms.rename(room.room_id, label)


def _write_entry(w: Writer, entry: Entry) -> None:
    """One contact-list entry: who, contact/request/blocked, and when it changed."""
    w.opaque8(entry.username.encode("ascii"))
    w.opaque8(entry.state.encode("ascii"))
    w.u64(entry.changed_ms)


def _read_entry(r: Reader) -> Entry:
    username = validate_username(r.opaque8().decode("ascii"))
    state = r.opaque8().decode("ascii")
    if state not in STATES:
        raise DecodeError("a contact-list entry has an unknown state")
    return Entry(username=username, state=state, changed_ms=r.u64())


def _read_grant(r: Reader) -> tuple[DeviceCertificate, AccountKey, DeviceCertificate,
                                    dict[str, str], list[Contact], list[tuple[str, str]], int,
                                    list[Entry]]:
    cert = DeviceCertificate.decode(r.opaque_v())
    account_key = AccountKey(r.opaque8())
    existing = DeviceCertificate.decode(r.opaque_v())
    names = dict(_read_names(r))
    contacts = r.vector_v(lambda r2: Contact.decode(r2.opaque_v()))
    rooms = r.vector_v(_read_pair)
    parts = r.u16()
    if parts > LINK_MAX_MESSAGES:
        raise DecodeError("too many history parts")
    entries = r.vector_v(_read_entry)
    return cert, account_key, existing, names, contacts, rooms, parts, entries

