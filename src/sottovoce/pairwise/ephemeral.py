"""One ephemeral chat between two devices, sans-IO (docs/protocol.md §Ephemeral chats).

    initiator                                   responder
    REQUEST  chat id, nonce_i, DH statement ──►  (shown: accept or ignore)
             ◄── ACCEPT  nonce_r, DH statement
    HS1      Noise KK message 1 ──────────────►
             ◄── HS2  Noise KK message 2 (payload: the responder's confirmation)
    DATA     CONFIRM(handshake hash) ─────────►  open on both sides
    DATA     TEXT / SIGNAL / BYE  ◄──────────►

Every frame is ``magic | kind | chat id | from device | to device | body``; the
header is the AEAD's associated data of a DATA frame, whose body is an explicit
64-bit counter and the ciphertext (counters only grow: a replay is refused).

The keys: each device's static X25519 key is derived from its certified Ed25519
device key (HKDF, a separate key, never the same scalar) and bound to it by a
*DH statement*, the device key's signature over that public key, its username and
device id. The statement says only "this device owns this DH key", never anything
about a chat; the chat itself is authenticated by Diffie-Hellman alone (Noise KK),
so its transcript proves nothing to anyone else. The Noise prologue binds the chat
id, both devices and both fresh nonces, so a recorded HS1 fits no other chat.

A chat that is one link of an ephemeral *group* chat (client/ephemeral_group.py)
carries a group context in its REQUEST: the group chat's id and a tag of its room.
The prologue binds it too, so a link of one group chat cannot be passed off as a
link of another, and every group message inside repeats the group chat's id.

Nothing here touches a file, a socket or a clock; randomness is passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer
from sottovoce.crypto import kdf
from sottovoce.crypto.noise import HandshakeState, Transport, x25519_public
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import CryptoError, DecodeError, UsageError
from sottovoce.identity import DeviceCertificate, DeviceSigningKey

MAGIC = b"SVEC\x01"
CHAT_ID_LEN = 16
NONCE_LEN = 32
#: A group context: the group chat's id (16 bytes) and its room's tag (16 bytes).
GROUP_LEN = 32
_STATEMENT_LEN = 96
#: How far behind the newest frame an older one may still arrive (then it is refused).
REPLAY_WINDOW = 64
_DH_INFO = b"sottovoce ephemeral-chat device DH v1"
_STATEMENT_DOMAIN = b"sottovoce device DH key v1"
_PROLOGUE = b"sottovoce ephemeral chat v1"
_RESPONDER_CONFIRM = b"sottovoce ephemeral chat: responder confirms"


class Kind(enum.IntEnum):
    REQUEST = 1
    ACCEPT = 2
    HS1 = 3
    HS2 = 4
    DATA = 5


class Inner(enum.IntEnum):
    """What a DATA frame carries, once decrypted."""

    CONFIRM = 1
    TEXT = 2
    SIGNAL = 3
    BYE = 4
    PING = 5  # keeps a quiet chat known to be alive
    GROUP_TEXT = 6  # a text of the group chat this chat is a link of
    PANIC = 7  # a group member panicked: the whole group chat ends
    ROSTER = 8  # who else is in the group chat (the receiver links to them)
    MEDIA = 9  # one chunk of a photo or a clip, sent from memory


class State(enum.Enum):
    REQUESTED = "requested"  # initiator: request sent, waiting for an accept
    INCOMING = "incoming"  # responder: request shown, not answered yet
    ACCEPTED = "accepted"  # responder: accept sent, waiting for HS1
    HANDSHAKE = "handshake"  # initiator: HS1 sent, waiting for HS2
    CONFIRMING = "confirming"  # responder: HS2 sent, waiting for the confirmation
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    chat_id: bytes
    sender_device: str
    to_device: str
    body: bytes

    def header(self) -> bytes:
        w = Writer()
        w.raw(MAGIC)
        w.u8(self.kind)
        w.raw(self.chat_id)
        w.opaque8(self.sender_device.encode("ascii"))
        w.opaque8(self.to_device.encode("ascii"))
        return w.getvalue()

    def encode(self) -> bytes:
        w = Writer()
        w.raw(self.header())
        w.opaque16(self.body)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> Frame | None:
        """The frame, ``None`` if ``data`` is no ephemeral-chat frame at all (an Olm
        message), or ``DecodeError`` if it is one but malformed."""
        if not data.startswith(MAGIC):
            return None
        r = Reader(data[len(MAGIC):])
        try:
            kind = Kind(r.u8())
        except ValueError:
            raise DecodeError("unknown ephemeral-chat frame kind") from None
        chat_id = r.raw(CHAT_ID_LEN)
        try:
            sender, to = r.opaque8().decode("ascii"), r.opaque8().decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("device id is not ASCII") from None
        body = r.opaque16()
        r.finish()
        return cls(kind, chat_id, sender, to, body)


# --- the device's DH key ---------------------------------------------------------------


def device_dh_private(device_key: DeviceSigningKey) -> bytearray:
    """This device's static X25519 key for ephemeral chats, derived from its device key
    (so nothing new is stored); the caller zeroes the ``bytearray`` when done."""
    seed = device_key.private_bytes().expose()
    return bytearray(kdf.hkdf(kdf.Hash.SHA256, seed, b"", _DH_INFO, 32))


def _statement_tbs(username: str, device_id: str, dh_public: bytes) -> bytes:
    w = Writer()
    w.opaque8(_STATEMENT_DOMAIN)
    w.opaque8(username.encode("ascii"))
    w.opaque8(device_id.encode("ascii"))
    w.raw(dh_public)
    return w.getvalue()


@dataclass(frozen=True, slots=True)
class DhStatement:
    """A device's DH public key, signed by its certified device key."""

    dh_public: bytes
    signature: bytes

    @classmethod
    def make(cls, device_key: DeviceSigningKey, username: str, device_id: str,
             dh_private: bytearray) -> DhStatement:
        public = x25519_public(dh_private)
        return cls(public, device_key.sign(_statement_tbs(username, device_id, public)))

    def encode(self) -> bytes:
        return self.dh_public + self.signature

    @classmethod
    def decode(cls, data: bytes) -> DhStatement:
        if len(data) != 96:
            raise DecodeError("a DH statement is 96 bytes")
        return cls(data[:32], data[32:])

    def verify(self, certificate: DeviceCertificate) -> None:
        """Bound to the device ``certificate`` names (already checked by the caller)."""
        tbs = _statement_tbs(certificate.username, certificate.device_id, self.dh_public)
        ed25519_verify(certificate.keys.signing_key, tbs, self.signature)


# --- one chat ------------------------------------------------------------------------


def _prologue(chat_id: bytes, initiator: tuple[str, str], responder: tuple[str, str],
              nonce_i: bytes, nonce_r: bytes, group: bytes) -> bytes:
    w = Writer()
    w.opaque8(_PROLOGUE)
    w.raw(chat_id)
    for user, device in (initiator, responder):
        w.opaque8(user.encode("ascii"))
        w.opaque8(device.encode("ascii"))
    w.raw(nonce_i)
    w.raw(nonce_r)
    if group:  # a 1:1 chat's prologue stays what it was
        w.opaque8(group)
    return w.getvalue()


def statement_of(frame: Frame) -> bytes:
    """The DH statement's bytes in a REQUEST or an ACCEPT (after the nonce)."""
    return frame.body[NONCE_LEN:NONCE_LEN + _STATEMENT_LEN]


class ChatSession:
    """The state machine of one chat on one device; every method returns the frames to
    send (bytes) and raises ``CryptoError``/``DecodeError``/``UsageError`` on a frame
    that does not fit, which the caller drops (a forged frame never changes state)."""

    def __init__(self, *, chat_id: bytes, initiator: bool, me: tuple[str, str],
                 peer: tuple[str, str], static: bytearray, rng: Random,
                 group: bytes = b"") -> None:
        self.chat_id, self.initiator, self.me, self.peer = chat_id, initiator, me, peer
        #: The group context (group chat id + room tag) of a group chat's link, else b"".
        self.group = group
        self._static, self._rng = static, rng
        self.state = State.REQUESTED if initiator else State.INCOMING
        self._nonce_i = b""
        self._nonce_r = b""
        self._peer_dh = b""
        self._hs: HandshakeState | None = None
        self._transport: Transport | None = None
        self._next_in = 0  # one more than the highest counter received
        self._window = 0  # bit i: counter (_next_in - 1 - i) was received

    def __repr__(self) -> str:
        return f"ChatSession({self.peer[0]}, {self.state.value}, <redacted>)"

    # --- frames -----------------------------------------------------------------------

    def _frame(self, kind: Kind, body: bytes, to: str | None = None) -> Frame:
        return Frame(kind, self.chat_id, self.me[1], self.peer[1] if to is None else to, body)

    # --- initiator ----------------------------------------------------------------------

    @classmethod
    def start(cls, *, me: tuple[str, str], peer_user: str, static: bytearray,
              statement: DhStatement, rng: Random,
              group: bytes = b"") -> tuple[ChatSession, bytes]:
        """A new chat and its REQUEST (to every device of ``peer_user``: ``to`` is ``*``);
        ``group``: the group context when the chat is a link of a group chat."""
        if group and len(group) != GROUP_LEN:
            raise UsageError("a group context is 32 bytes")
        s = cls(chat_id=rng(CHAT_ID_LEN), initiator=True, me=me, peer=(peer_user, "*"),
                static=static, rng=rng, group=group)
        s._nonce_i = rng(NONCE_LEN)
        return s, s.request_frame(statement)

    def request_frame(self, statement: DhStatement) -> bytes:
        """The REQUEST again (resent while nobody answered): same chat id, same nonce."""
        body = self._nonce_i + statement.encode() + self.group
        return self._frame(Kind.REQUEST, body, "*").encode()

    def on_accept(self, frame: Frame, peer_statement: DhStatement) -> bytes:
        """The peer's ACCEPT (its statement checked by the caller) ─► HS1."""
        if self.state is not State.REQUESTED or len(frame.body) != NONCE_LEN + _STATEMENT_LEN:
            raise UsageError("unexpected accept")
        self.peer = (self.peer[0], frame.sender_device)
        self._nonce_r, self._peer_dh = frame.body[:NONCE_LEN], peer_statement.dh_public
        self._hs = self._handshake()
        self.state = State.HANDSHAKE
        return self._frame(Kind.HS1, self._hs.write_message()).encode()

    def on_hs2(self, frame: Frame) -> bytes:
        """HS2 ─► the keys, and the CONFIRM that opens the chat on the peer's side."""
        if self.state is not State.HANDSHAKE or self._hs is None:
            raise UsageError("unexpected handshake message")
        if self._hs.read_message(frame.body) != _RESPONDER_CONFIRM:
            raise CryptoError("the responder's confirmation is wrong")
        self._transport = self._hs.transport()
        self._hs = None
        self.state = State.OPEN
        return self.seal(Inner.CONFIRM, self._transport.handshake_hash)

    # --- responder ----------------------------------------------------------------------

    @classmethod
    def incoming(cls, frame: Frame, *, me: tuple[str, str], peer_user: str,
                 peer_statement: DhStatement, static: bytearray, rng: Random) -> ChatSession:
        """A REQUEST (its statement checked by the caller): shown, not answered yet."""
        if frame.kind is not Kind.REQUEST or len(frame.body) not in (
                NONCE_LEN + _STATEMENT_LEN, NONCE_LEN + _STATEMENT_LEN + GROUP_LEN):
            raise DecodeError("malformed ephemeral-chat request")
        s = cls(chat_id=frame.chat_id, initiator=False, me=me,
                peer=(peer_user, frame.sender_device), static=static, rng=rng,
                group=frame.body[NONCE_LEN + _STATEMENT_LEN:])
        s._nonce_i, s._peer_dh = frame.body[:NONCE_LEN], peer_statement.dh_public
        return s

    def accept(self, statement: DhStatement) -> bytes:
        if self.state is not State.INCOMING:
            raise UsageError("this chat request was already answered")
        self._nonce_r = self._rng(NONCE_LEN)
        self.state = State.ACCEPTED
        return self._frame(Kind.ACCEPT, self._nonce_r + statement.encode()).encode()

    def on_hs1(self, frame: Frame) -> bytes:
        """HS1 ─► HS2. Only once, only after our accept: a replayed HS1 is refused."""
        if self.state is not State.ACCEPTED:
            raise UsageError("unexpected handshake message")
        hs = self._handshake()
        try:
            hs.read_message(frame.body)
            reply = hs.write_message(_RESPONDER_CONFIRM)
        except BaseException:
            hs.wipe()
            raise
        self._transport = hs.transport()
        self.state = State.CONFIRMING
        return self._frame(Kind.HS2, reply).encode()

    def _handshake(self) -> HandshakeState:
        init, resp = (self.me, self.peer) if self.initiator else (self.peer, self.me)
        return HandshakeState(
            initiator=self.initiator,
            prologue=_prologue(self.chat_id, init, resp, self._nonce_i, self._nonce_r,
                               self.group),
            static=self._static, remote_static=self._peer_dh, ephemeral=self._rng(32),
        )

    # --- both -------------------------------------------------------------------------

    def seal(self, inner: Inner, content: bytes) -> bytes:
        """One DATA frame (CONFIRM, TEXT, SIGNAL or BYE) under the chat's keys."""
        t = self._transport
        if t is None or self.state is State.CLOSED:
            raise UsageError("the chat is not open")
        counter = t.send.n
        header = self._frame(Kind.DATA, b"").header()
        ct = t.encrypt(bytes((inner,)) + content, header)
        return self._frame(Kind.DATA, counter.to_bytes(8, "big") + ct).encode()

    def open_data(self, frame: Frame) -> tuple[Inner, bytes]:
        """A DATA frame's content; a replayed one, or one older than the window, is refused."""
        t = self._transport
        if t is None or self.state not in (State.CONFIRMING, State.OPEN):
            raise UsageError("the chat is not open")
        if len(frame.body) < 8 + 17:
            raise DecodeError("DATA frame too short")
        counter = int.from_bytes(frame.body[:8], "big")
        if not self._fresh(counter):
            raise CryptoError("replayed ephemeral-chat frame")
        saved = t.receive.n
        t.receive.n = counter
        try:
            plain = t.decrypt(frame.body[8:], Frame(Kind.DATA, frame.chat_id, frame.sender_device,
                                                   frame.to_device, b"").header())
        finally:
            t.receive.n = saved
        self._mark(counter)
        try:
            inner = Inner(plain[0])
        except ValueError:
            raise DecodeError("unknown ephemeral-chat content") from None
        if self.state is State.CONFIRMING:
            if inner is not Inner.CONFIRM or plain[1:] != t.handshake_hash:
                raise CryptoError("key confirmation failed")
            self.state = State.OPEN
        return inner, plain[1:]

    def _fresh(self, counter: int) -> bool:
        """Not seen before and not older than the window: frames may take two paths
        (relay and data channel) for a moment, so a little reordering is allowed."""
        if counter >= self._next_in:
            return True
        age = self._next_in - 1 - counter
        return age < REPLAY_WINDOW and not self._window >> age & 1

    def _mark(self, counter: int) -> None:
        if counter >= self._next_in:
            shift = counter + 1 - self._next_in
            self._window = ((self._window << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self._next_in = counter + 1
        else:
            self._window |= 1 << (self._next_in - 1 - counter)

    def close(self) -> None:
        """Wipe every key of this chat; nothing can be sent or read afterwards."""
        if self._hs is not None:
            self._hs.wipe()
            self._hs = None
        if self._transport is not None:
            self._transport.wipe()
            self._transport = None
        self.state = State.CLOSED

    def key_buffers(self) -> list[bytearray]:
        """The chat's cipher keys as the buffers that hold them (to ``mlock`` them)."""
        t = self._transport
        if t is None:
            return []
        return [k for k in (t.send._k, t.receive._k) if k is not None]

    def key_material(self) -> list[bytes]:
        """The chat's current cipher keys (for a test to search storage for them)."""
        t = self._transport
        if t is None:
            return []
        return [bytes(k) for k in (t.send._k, t.receive._k) if k is not None]
