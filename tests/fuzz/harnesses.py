"""One fuzz target per decoder that takes bytes from the network.

A target takes arbitrary bytes and feeds them to one decoder (and, where the decoder's
result is checked next, to that check too). Every decoder documents that hostile input
ends in a typed error: a subclass of :class:`sottovoce.errors.SottovoceError`. Anything
else escaping a target -- ``ValueError``, ``IndexError``, ``RecursionError``, a hang --
is a finding (see :mod:`tests.fuzz.engine`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

from sottovoce.calls import sdp
from sottovoce.calls.room_signals import CallPayload, RoomCallSignal
from sottovoce.calls.signals import CallSignal
from sottovoce.client import control, linking
from sottovoce.client.ephemeral_group import EphemeralGroups
from sottovoce.client.ephemeral_media import Assembler, MediaKind, describe
from sottovoce.client.file_body import FileInfo, is_opened
from sottovoce.client.key_handover import Offer as KeyOffer
from sottovoce.client.payload import Payload, decode_log_head, read_json_body
from sottovoce.client.presence import read_presence
from sottovoce.client.rooms.tree_blob import TreeRef
from sottovoce.codec.tls import Reader, decode
from sottovoce.crypto.file_chunks import ChunkOpener
from sottovoce.crypto.noise import HandshakeState, x25519_public
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.identity import pake
from sottovoce.identity.pake import LinkError, LinkResult, QRPayload, Role, ShortCode
from sottovoce.kt.checkpoint import Checkpoint, NoteKey, NoteSigner, SignedNote, open_checkpoint
from sottovoce.kt.merkle import verify_consistency, verify_inclusion
from sottovoce.kt.verify import (
    HistoryPage,
    HistoryResponse,
    KTPolicy,
    LookupResponse,
    verify_lookup,
)
from sottovoce.mls.framing import PrivateMessage, PrivateMessageContent, SenderData, decode_message
from sottovoce.mls.messages import (
    Commit,
    GroupInfo,
    KeyPackage,
    LeafNode,
    Welcome,
    decode_proposal,
    decode_ratchet_tree,
)
from sottovoce.mls.public import (
    AuthenticatedContent,
    ContentType,
    PublicMessage,
    decode_key_package,
    decode_mls,
    decode_public,
    is_external_commit,
)
from sottovoce.mls.tree import RatchetTree
from sottovoce.pairwise import ephemeral
from sottovoce.protocol import pow as pow_
from sottovoce.protocol.audit import AuditEntry
from sottovoce.protocol.blobs import unpack_chunk
from sottovoce.protocol.events import Envelope, parse_frame, parse_inbox_frame
from sottovoce.protocol.kt import KTHeadResult, KTResponse
from sottovoce.protocol.room_names import NameKey, RoomNames, SealedNames
from sottovoce.protocol.room_names_seal import open_names
from sottovoce.protocol.rooms import ALL_CLIENT_EVENTS, parse_room_frame
from sottovoce.secret import Secret
from sottovoce.sframe.header import SFrameHeader, parse_header

Target = Callable[[bytes], object]

#: The cipher suite of every structure-only MLS target (the project's default suite).
_SUITE_ID = 1
#: The size of the file the file_chunk target opens.
FILE_SIZE = 64


@dataclass(frozen=True, slots=True)
class Harness:
    """A named target and the tokens its mutator may splice in (JSON decoders get
    JSON's punctuation and awkward values, binary ones the length prefixes)."""

    name: str
    target: Target
    kind: str = "binary"


# --- codec ---------------------------------------------------------------------------------


def _tls_program(data: bytes) -> None:
    """Drive every Reader primitive: the first byte picks a sequence of reads."""
    if not data:
        return
    ops = data[0]

    def read(r: Reader) -> object:
        out: list[object] = []
        step = ops
        while not r.eof():
            op = step % 8
            step = (step * 5 + 3) & 0xFF
            if op == 0:
                out.append(r.varint())
            elif op == 1:
                out.append(r.opaque_v())
            elif op == 2:
                out.append(r.vector_v(lambda s: s.u16()))
            elif op == 3:
                out.append(r.optional(lambda s: s.opaque8()))
            elif op == 4:
                out.append(r.boolean())
            elif op == 5:
                out.append(r.opaque24())
            elif op == 6:
                out.append(r.block(r.u8()).u32())
            else:
                out.append(r.opaque32())
        return out

    decode(read, data[1:])


# --- MLS -----------------------------------------------------------------------------------


def _mls(read: Callable[[Reader], object]) -> Target:
    return lambda data: decode_mls(read, data)


def _each(*calls: Callable[[], object]) -> None:
    """Run every call, each on its own: a typed error from one does not hide the next."""
    for call in calls:
        try:
            call()
        except Exception as exc:
            if not _typed(exc):
                raise


def _ratchet_tree(data: bytes) -> None:
    _each(lambda: RatchetTree.decode(cipher_suite(_SUITE_ID), data),
          lambda: decode_ratchet_tree(data))


def _private_content(data: bytes) -> None:
    if not data:
        return
    PrivateMessageContent.decode(data[1:], ContentType(1 + data[0] % 3))


def _public(data: bytes) -> None:
    _each(lambda: decode_public(data), lambda: is_external_commit(data))


# --- SFrame ----------------------------------------------------------------------------------


def _sframe(data: bytes) -> None:
    _each(lambda: parse_header(data), lambda: SFrameHeader.parse(data),
          lambda: SFrameHeader.decode(data))


# --- protocol events -------------------------------------------------------------------------


def _client_event(data: bytes) -> None:
    event, _, body = parse_frame(data)
    cls = ALL_CLIENT_EVENTS.get(event)
    if cls is not None:
        cls.from_data(body)


def _server_event(data: bytes) -> None:
    """What the client SDK parses from the server: inbox and room frames, KT results."""
    _, _, body = parse_frame(data)
    _each(lambda: parse_inbox_frame(body), lambda: parse_room_frame(body),
          lambda: Envelope.from_wire(body), lambda: KTHeadResult.from_wire(body),
          lambda: KTResponse.from_wire(body))


def _binary_chunk(data: bytes) -> None:
    unpack_chunk(data)


# --- key transparency ----------------------------------------------------------------------


@functools.cache
def _signer(name: str, cosigner: bool) -> NoteSigner:
    seed = hashlib.sha256(name.encode()).digest()
    return NoteSigner(name, SigningKey(SignatureScheme.ED25519, seed), cosigner=cosigner)


def _log_key() -> NoteKey:
    return _signer("example.com/log", False).public


def _note(data: bytes) -> None:
    note = SignedNote.decode(data)
    Checkpoint.parse(note.text)
    open_checkpoint(note, log_key=_log_key(), now_ms=1_700_000_000_000)


def _vkey(data: bytes) -> None:
    NoteKey.from_vkey(data.decode("utf-8", "replace"))


@functools.cache
def _policy() -> KTPolicy:
    return KTPolicy(log_key=_log_key(), vrf_key=bytes(32), min_cosignatures=0, max_age_ms=None)


def _lookup(data: bytes) -> None:
    response = LookupResponse.decode(data)
    verify_lookup(_policy(), None, "alice", response, now_ms=1_700_000_000_000)


def _history(data: bytes) -> None:
    if data[:1] == b"\x00":
        HistoryResponse.decode(data[1:])
    else:
        HistoryPage.decode(data[1:])


def _merkle(data: bytes) -> None:
    """Proof verification with garbage: sizes and indexes from the first 16 bytes."""
    if len(data) < 16:
        return
    a, b = int.from_bytes(data[:8], "big") >> 1, int.from_bytes(data[8:16], "big") >> 1
    body = data[16:]
    hashes = [body[i : i + 32] for i in range(64, len(body), 32)]
    root, other = body[:32], body[32:64]
    _each(lambda: verify_inclusion(a, b, root, hashes, other),
          lambda: verify_consistency(a, b, root, other, hashes))


# --- audit, files, client payloads -----------------------------------------------------------


def _audit(data: bytes) -> None:
    AuditEntry.decode(data)


def _file_chunk(data: bytes) -> None:
    """A one-chunk file under a known key: header checks, AEAD, then the whole-file checks."""
    opener = ChunkOpener(Secret(bytes(32)), bytes(16), FILE_SIZE, bytes(32))
    opener.open(data)
    opener.finish()


def _payload(data: bytes) -> None:
    _each(lambda: Payload.decode(data), lambda: Payload.decode_padded(data),
          lambda: decode_log_head(data))


def _file_body(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    is_opened(text)
    FileInfo.decode(text)


def _control(data: bytes) -> None:
    _each(lambda: control.Quote.decode(data, "quote"), lambda: control.Delete.decode(data),
          lambda: control.Reaction.decode(data), lambda: control.Receipt.decode(data),
          lambda: control.read_typing(data), lambda: read_json_body(data, ("to",), "body"))


# --- ephemeral chats, Noise, device linking ---------------------------------------------------


def _ephemeral_frame(data: bytes) -> None:
    """An ephemeral-chat frame (or ``None`` for an Olm message), the DH statement in it."""
    frame = ephemeral.Frame.decode(data)
    if frame is not None:
        ephemeral.DhStatement.decode(ephemeral.statement_of(frame))
    ephemeral.DhStatement.decode(data[-96:])


def _ephemeral_content(data: bytes) -> None:
    """A media chunk into a fresh assembler; a group roster (no member is in the room, so
    the parse is all that runs)."""
    roster_owner = SimpleNamespace(username="alice")
    _each(lambda: Assembler().add("alice", data),
          lambda: EphemeralGroups._on_roster(roster_owner, None, data, set()))  # type: ignore[arg-type]


def _media_describe(data: bytes) -> None:
    """What a completed photo or clip is (format, dimensions from its header)."""
    if data:
        describe(MediaKind(1 + data[0] % 2), "a", data[1:])


def _presence(data: bytes) -> None:
    read_presence(data)


def _key(label: bytes) -> bytes:
    return hashlib.sha256(label).digest()


@functools.cache
def noise_states() -> tuple[HandshakeState, HandshakeState, bytes]:
    """A responder before message 1, an initiator after it, and message 1 (fixed keys)."""
    a, b = _key(b"noise static a"), _key(b"noise static b")
    responder = HandshakeState(initiator=False, prologue=b"fuzz", static=b,
                               remote_static=x25519_public(a), ephemeral=_key(b"noise e b"))
    initiator = HandshakeState(initiator=True, prologue=b"fuzz", static=a,
                               remote_static=x25519_public(b), ephemeral=_key(b"noise e a"))
    first = initiator.write_message(b"")
    return responder, initiator, first


def _noise(data: bytes) -> None:
    """Noise KK message 1 (to the responder) and message 2 (to the initiator)."""
    responder, initiator, _ = noise_states()
    _each(lambda: copy.deepcopy(responder).read_message(data),
          lambda: copy.deepcopy(initiator).read_message(data))


def _link_pake(data: bytes) -> None:
    """The CPace shares of device linking, the ``PAKE`` mailbox body, QR and short code."""
    text = data.decode("utf-8", "replace")
    _each(lambda: pake._decode_share(data, LinkError), lambda: linking._pake_body(data),
          lambda: QRPayload.decode(text, now_ms=1_700_000_000_000),
          lambda: ShortCode.parse(text))


_LINK_SESSION = LinkResult(session_key=Secret(bytes(32)), peer_device_id="d1", words=())


def _link_message(data: bytes) -> None:
    """The sealed handover messages (OFFER, HELLO, GRANT, the history, DONE) as the peer's
    device reads them once opened, and the sealed envelope itself under a known key."""
    readers = (linking.read_offer, linking.read_hello, linking._read_grant, linking._read_archive,
               linking._read_names, lambda r: r.u16())
    _each(*(functools.partial(linking._read, data, read) for read in readers),
          lambda: linking._Sealed(_LINK_SESSION, Role.NEW).open(data, linking.OFFER))


# --- rooms: tree references, names; key handover; proof of work ---------------------------------


def _tree_ref(data: bytes) -> None:
    TreeRef.decode(data)


NAMES_KEY = Secret(bytes(range(32)))
NAMES_GROUP = b"fuzz group"


def _room_names(data: bytes) -> None:
    """Room names (plain), the sealed field, a name key; and sealed names opened under a
    known key (the seeds are sealed under it, so mutations reach the plaintext)."""

    def sealed() -> None:
        open_names(SealedNames.decode(data), NAMES_KEY, group_id=NAMES_GROUP)

    _each(lambda: RoomNames.decode(data), sealed, lambda: NameKey.decode(data))


def _key_handover(data: bytes) -> None:
    KeyOffer.from_body("d1", data)


POW_KEY = bytes(32)


def _pow(data: bytes) -> None:
    """A challenge as the client reads it; a proof as the server checks it."""
    _each(lambda: pow_.read_token(data),
          lambda: pow_.check(POW_KEY, "alice", "bob", data, now_ms=1_700_000_000_000))


# --- calls -----------------------------------------------------------------------------------


def _call_signal(data: bytes) -> None:
    _each(lambda: CallSignal.decode(data), lambda: RoomCallSignal.decode(data),
          lambda: CallPayload.decode(data))


def _sdp(data: bytes) -> None:
    """The SDP checks the call engine runs on the peer's offer or answer."""
    text = data.decode("utf-8", "replace")
    _each(lambda: sdp.fingerprints(text), lambda: sdp.check_fingerprints(text, ()),
          lambda: sdp.header_extensions(text), lambda: sdp.candidates(text),
          lambda: sdp.connection_addresses(text), lambda: sdp.codecs(text))


def _typed(exc: BaseException) -> bool:
    from sottovoce.errors import SottovoceError

    return isinstance(exc, SottovoceError)


HARNESSES: dict[str, Harness] = {
    h.name: h
    for h in (
        Harness("tls", _tls_program),
        Harness("mls_message", lambda d: decode_message(d)),
        Harness("mls_public", _public),
        Harness("mls_public_message", _mls(PublicMessage.read)),
        Harness("mls_authenticated_content", _mls(AuthenticatedContent.read)),
        Harness("mls_private_message", _mls(PrivateMessage.read)),
        Harness("mls_private_content", _private_content),
        Harness("mls_sender_data", _mls(SenderData.read)),
        Harness("mls_welcome", _mls(Welcome.read)),
        Harness("mls_group_info", _mls(GroupInfo.read)),
        Harness("mls_key_package", lambda d: _each(lambda: decode_key_package(d),
                                                   lambda: decode_mls(KeyPackage.read, d[4:]))),
        Harness("mls_leaf_node", _mls(LeafNode.read)),
        Harness("mls_commit", _mls(Commit.read)),
        Harness("mls_proposal", lambda d: decode_proposal(d)),
        Harness("mls_ratchet_tree", _ratchet_tree),
        Harness("sframe_header", _sframe),
        Harness("client_event", _client_event, "json"),
        Harness("server_event", _server_event, "json"),
        Harness("blob_chunk", _binary_chunk),
        Harness("audit_entry", _audit),
        Harness("kt_note", _note, "text"),
        Harness("kt_vkey", _vkey, "text"),
        Harness("kt_lookup", _lookup),
        Harness("kt_history", _history),
        Harness("kt_merkle", _merkle),
        Harness("file_chunk", _file_chunk),
        Harness("payload", _payload),
        Harness("file_body", _file_body, "json"),
        Harness("control_body", _control, "json"),
        Harness("ephemeral_frame", _ephemeral_frame),
        Harness("ephemeral_content", _ephemeral_content),
        Harness("media_describe", _media_describe),
        Harness("presence", _presence, "json"),
        Harness("noise_handshake", _noise),
        Harness("link_pake", _link_pake),
        Harness("link_message", _link_message),
        Harness("tree_ref", _tree_ref),
        Harness("room_names", _room_names),
        Harness("key_handover", _key_handover, "json"),
        Harness("pow", _pow),
        Harness("call_signal", _call_signal),
        Harness("sdp", _sdp, "text"),
    )
}

__all__ = ["HARNESSES", "Harness", "Target"]
