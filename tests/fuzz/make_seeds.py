"""Write the seed corpora of tests/fuzz/corpus/NAME/ (``python -m tests.fuzz.make_seeds
[NAME ...]``; without names, every corpus).

Seeds come from the test vectors in tests/vectors/data (RFC 9420 messages, RFC 9605
SFrame headers, C2SP notes) and from objects the project's own encoders build, so
that mutation starts from well-formed input and reaches past the first length check.
Each corpus keeps a few small entries: the folder is committed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from sottovoce.client import linking
from sottovoce.client.control import READ, Delete, Quote, Reaction, Receipt, typing_body
from sottovoce.client.ephemeral_media import MediaKind
from sottovoce.client.key_handover import offer_body
from sottovoce.client.payload import Payload, encode_log_head, json_body
from sottovoce.client.presence import presence_body
from sottovoce.client.rooms.tree_blob import TreeRef
from sottovoce.codec.tls import Writer
from sottovoce.crypto.file_chunks import ChunkSealer
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.identity import pake
from sottovoce.identity.keys import AccountKey
from sottovoce.identity.pake import QRPayload, Role, ShortCode
from sottovoce.identity.succession import Succession
from sottovoce.kt.checkpoint import Checkpoint
from sottovoce.kt.map import MapProof
from sottovoce.kt.verify import EntryProof, HistoryPage, HistoryResponse, LookupResponse
from sottovoce.mls.public import decode_key_package
from sottovoce.pairwise import ephemeral
from sottovoce.protocol import pow as pow_
from sottovoce.protocol.audit import AuditAction, make_entry
from sottovoce.protocol.blobs import OP_CHUNK, OP_PUT, pack_chunk
from sottovoce.protocol.room_names import RoomNames
from sottovoce.protocol.room_names_seal import seal_names
from sottovoce.secret import Secret
from tests.fuzz.engine import CORPUS
from tests.fuzz.harnesses import (
    _LINK_SESSION,
    FILE_SIZE,
    NAMES_GROUP,
    NAMES_KEY,
    POW_KEY,
    _signer,
    noise_states,
)

VECTORS = Path(__file__).parent.parent / "vectors" / "data"
#: Seeds per harness and the largest seed kept (the corpus is committed).
PER_HARNESS = 8
MAX_SEED = 4096


def _small(items: Iterable[bytes]) -> list[bytes]:
    unique = sorted(set(items), key=len)
    return [s for s in unique if len(s) <= MAX_SEED][:PER_HARNESS]


def _mls_vectors() -> dict[str, list[bytes]]:
    messages = json.loads((VECTORS / "mls" / "messages.json").read_text())
    field = lambda key: [bytes.fromhex(v[key]) for v in messages]  # noqa: E731
    proposals = [k for k in messages[0] if k.endswith("_proposal")]
    framed = [*field("public_message_application"), *field("public_message_proposal"),
              *field("public_message_commit"), *field("private_message")]
    return {
        "mls_message": [*framed, *field("mls_welcome"), *field("mls_group_info"),
                        *field("mls_key_package")],
        "mls_public": [*field("public_message_commit"), *field("mls_group_info"),
                       *field("mls_key_package")],
        "mls_public_message": [m[4:] for m in field("public_message_commit")
                               + field("public_message_proposal")],
        "mls_authenticated_content": [m[2:-33] for m in field("public_message_application")],
        "mls_private_message": [m[4:] for m in field("private_message")],
        "mls_private_content": [b"\x01" + bytes(8), b"\x02\x00\x01\x00\x00\x00\x01" + bytes(8)],
        "mls_sender_data": [bytes(12), b"\x00\x00\x00\x07" + bytes(8)],
        "mls_welcome": [m[4:] for m in field("mls_welcome")],
        "mls_group_info": [m[4:] for m in field("mls_group_info")],
        "mls_key_package": field("mls_key_package"),
        "mls_leaf_node": [decode_key_package(k).leaf_node.encode()
                          for k in field("mls_key_package")],
        "mls_commit": field("commit"),
        "mls_proposal": [(n + 1).to_bytes(2, "big") + p
                         for n, key in enumerate(proposals) for p in field(key)[:2]],
        "mls_ratchet_tree": field("ratchet_tree"),
    }


def _sframe() -> list[bytes]:
    data = json.loads((VECTORS / "sframe" / "test-vectors.json").read_text())
    return [bytes.fromhex(h["encoded"]) for h in data["header"]][::8]


def _notes() -> list[bytes]:
    signer = _signer("example.com/log", False)
    note = Checkpoint(origin="example.com/log", size=7, root=bytes(range(32))).sign(signer)
    return [note.encode(), Checkpoint(origin="o", size=0, root=bytes(32)).sign(
        _signer("o", False)).encode()]


def _kt() -> dict[str, list[bytes]]:
    note = _notes()[0]
    empty = MapProof(depth=0, terminal_key=None, terminal_value=None, present=b"", siblings=())
    entry = EntryProof(checkpoint=note, consistency=(bytes(32),), leaf=b"leaf",
                       leaf_proof=(bytes(32),), vrf_proof=bytes(80), map_proof=empty,
                       versions=1, version_root=bytes(32))
    lookup = LookupResponse(entry=entry, version_proof=(), state=b"\x01\x00", opening=bytes(32))
    history = HistoryResponse(entry=entry, states=(b"s",), openings=(bytes(32),))
    page = HistoryPage(entry=entry, start=0, states=(b"s",), openings=(bytes(32),))
    merkle = [(0).to_bytes(8, "big") + (1).to_bytes(8, "big") + bytes(64),
              (3).to_bytes(8, "big") + (8).to_bytes(8, "big") + bytes(64 + 32 * 3)]
    vkeys = [_signer("example.com/log", False).public.vkey().encode(),
             _signer("witness", True).public.vkey().encode()]
    return {"kt_note": _notes()[:1], "kt_vkey": vkeys, "kt_lookup": [lookup.encode()],
            "kt_history": [b"\x00" + history.encode(), b"\x01" + page.encode()],
            "kt_merkle": merkle}


def _audit() -> list[bytes]:
    key = SigningKey(SignatureScheme.ED25519, hashlib.sha256(b"audit").digest())
    first = make_entry(signing_key=key, suite=1, prev=None, room_id="r" * 32, epoch=0,
                       epoch_authenticator=bytes(32), action=AuditAction.ROOM_CREATED,
                       actor_user_id="alice", actor_device_id="d1", actor_leaf_index=0,
                       now_ms=1_700_000_000_000)
    second = make_entry(signing_key=key, suite=1, prev=first.encode(), room_id="r" * 32,
                        epoch=1, epoch_authenticator=bytes(32),
                        action=AuditAction.MEMBER_ADDED, actor_user_id="alice",
                        actor_device_id="d1", actor_leaf_index=0, now_ms=1_700_000_000_001,
                        subjects=[("bob", "d2")])
    return [first.encode(), second.encode()]


def _frames() -> dict[str, list[bytes]]:
    def frame(event: str, data: dict[str, object]) -> bytes:
        return json.dumps({"event": event, "requestId": "r1", "data": data}).encode()

    envelope = {"protocol": "ksmpv3", "messageId": "m1", "conversationId": "c1",
                "senderUserId": "alice", "senderDeviceId": "d1", "ciphertext": "AAAA",
                "serverSeq": 1, "createdAtMs": 1}
    return {
        "client_event": [frame("ping", {}), frame("ksmpv3.send", {"messageId": "m1"}),
                         frame("sottovoce.room.send", {"roomId": "a" * 32}),
                         frame("sottovoce.kt.lookup", {"username": "alice"}),
                         frame("sottovoce.blob.create", {"size": 1}),
                         frame("sottovoce.link.open", {})],
        "server_event": [frame("ksmpv3.inbox.frame", {"globalInboxSeq": 1,
                                                      "envelope": envelope}),
                         frame("sottovoce.kt.lookup.result", {"response": "AAAA"})],
    }


def _files() -> dict[str, list[bytes]]:
    key, file_id = Secret(bytes(32)), bytes(16)
    first = ChunkSealer(key, file_id, FILE_SIZE).seal(b"x" * FILE_SIZE)
    body = json_body(blob="ab" * 16, key="A" * 43 + "=", sha256="00" * 32, size=5,
                     name="a.txt", type="text/plain", kind="file", thumb=None,
                     durationMs=None, expires=0)
    return {
        "file_chunk": [first, first[:20] + bytes(16)],
        "blob_chunk": [pack_chunk(OP_PUT, "ab" * 16, 0, "r1", b"data"),
                       pack_chunk(OP_CHUNK, "cd" * 16, 3, "req-2", b"\x00" * 32)],
        "file_body": [body.encode()],
    }


def _payloads() -> list[bytes]:
    plain = Payload(message_id="m1", conversation_id="c1", content_type="text/plain",
                    created_at_ms=1, body=b"hello")
    kt = Payload(message_id="m2", conversation_id="c1", content_type="text/plain",
                 created_at_ms=2, body=b"hi", kt_size=3, kt_root=bytes(32))
    expiring = Payload(message_id="m3", conversation_id="c1", content_type="text/plain",
                       created_at_ms=3, body=b"x", expires_at_ms=9)
    return [plain.encode(), kt.encode(), expiring.encode(), plain.encode_padded(),
            encode_log_head((3, bytes(32)))]


def _control() -> list[bytes]:
    return [Quote(to="m1", text="hi").encode(), Delete(to="m1").encode(),
            Reaction(to="m1", emoji="\N{THUMBS UP SIGN}", on=True).encode(),
            Receipt(kind=READ, ids=("m1", "m2"), room="room:" + "a" * 32).encode(),
            typing_body(), typing_body("room:" + "a" * 32)]


def _ephemeral() -> dict[str, list[bytes]]:
    chat = bytes(range(16))
    frames = [ephemeral.Frame(kind, chat, "d1", "d2", bytes(16) + bytes(range(96))).encode()
              for kind in ephemeral.Kind]
    chunk = (bytes(8) + bytes([MediaKind.PHOTO]) + (0).to_bytes(2, "big")
             + (1).to_bytes(2, "big") + (5).to_bytes(4, "big") + b"\x05a.png" + b"hello")
    roster = (2).to_bytes(2, "big") + b"\x05alice\x03bob"
    responder, _, one = noise_states()
    reply = copy.deepcopy(responder)
    reply.read_message(one)
    png = (b"\x89PNG\r\n\x1a\n" + bytes([0, 0, 0, 13]) + b"IHDR"
           + bytes([0, 0, 2, 128, 0, 0, 1, 224]))
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(11) + b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80"
    media = [b"\x00" + png + bytes(8), b"\x00" + jpeg + bytes(8), b"\x00GIF89a\x80\x02\xe0\x01",
             b"\x01OggS\x00\x02" + bytes(22), b"\x01\x00\x00\x00\x18ftypisom" + bytes(8)]
    return {"ephemeral_frame": frames, "ephemeral_content": [chunk, roster],
            "media_describe": media,
            "presence": [presence_body("online", ask=True), presence_body("away", ask=False)],
            "noise_handshake": [one, reply.write_message(b"")]}


def _linking() -> dict[str, list[bytes]]:
    share = pake._encode_share(bytes(range(32)), b"d1", b"")
    tagged = pake._encode_share(bytes(range(32)), b"d2", bytes(64))
    code = ShortCode.generate(_rng(b"code"))
    qr = QRPayload(secret=Secret(bytes(32)), device_fingerprint=bytes(32),
                   server_url="http://127.0.0.1:8080", expires_at_ms=1_800_000_000_000)
    sealed = linking._Sealed(_LINK_SESSION, Role.EXISTING)
    offer = Writer()
    offer.opaque8(b"alice")
    offer.opaque8(b"laptop")
    names = Writer()
    linking._write_names(names, {"d1": "phone", "d2": "laptop"})
    history = Writer()
    history.vector_v([], lambda w, m: None)
    history.opaque_v(b'{"controls":{},"expiries":{}}')
    return {"link_pake": [share, tagged, bytes([linking._PAKE]) + share, str(code).encode(),
                          qr.encode().encode()],
            "link_message": [sealed.seal(linking.OFFER, offer.getvalue()), offer.getvalue(),
                             names.getvalue(), history.getvalue(), b"\x00\x03"]}


def _rng(label: bytes) -> Callable[[int], bytes]:
    return lambda n: hashlib.shake_256(label).digest(n)


def _rooms() -> dict[str, list[bytes]]:
    ref = TreeRef(bytes(16), Secret(bytes(32)), bytes(32), 1000)
    names = RoomNames("Book club", "Fridays")
    sealed = seal_names(names, NAMES_KEY, key_id=bytes(16), nonce=bytes(12),
                        group_id=NAMES_GROUP)
    token = pow_.issue(POW_KEY, "alice", "bob", difficulty=0, now_ms=1_700_000_000_000,
                       ttl_ms=60_000, nonce=bytes(16))
    old, new = AccountKey.generate(_rng(b"old")), AccountKey.generate(_rng(b"new"))
    chain = (Succession.issue(old, new, username="alice", now_ms=1_700_000_000_000),)
    return {"tree_ref": [ref.encode()],
            "room_names": [names.encode(), sealed, bytes(48)],
            "pow": [token, pow_.solve(token)],
            "key_handover": [json_body(key="A" * 43 + "=", chain=["AAAA"]).encode(),
                             offer_body(new, chain)]}


def _calls() -> dict[str, list[bytes]]:
    from tests.unit.call_sim import fake_sdp
    from tests.unit.test_calls_signals import FP, SAMPLE_SIGNALS
    from tests.unit.test_room_call_signals import PAYLOADS, SIGNALS

    signals = [s.encode() for s in (*SAMPLE_SIGNALS, *SIGNALS, *PAYLOADS)]
    return {"call_signal": sorted(signals, key=len)[:: max(1, len(signals) // PER_HARNESS)],
            "sdp": [fake_sdp(FP, "tok").encode()]}


def seeds() -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {"tls": [b"\x00\x05hello", b"\x11\x40\x05hello\x00"]}
    out |= _mls_vectors() | _kt() | _frames() | _files()
    out |= _ephemeral() | _linking() | _rooms() | _calls()
    out |= {"sframe_header": _sframe(), "audit_entry": _audit(), "payload": _payloads(),
            "control_body": _control()}
    return out


def main(names: list[str]) -> None:
    """Write every corpus, or only those of ``names``."""
    for name, items in seeds().items():
        if names and name not in names:
            continue
        folder = CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for data in _small(items):
            (folder / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1:])
