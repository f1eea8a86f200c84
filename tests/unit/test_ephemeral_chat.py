"""The ephemeral-chat state machine (pairwise/ephemeral.py): request, accept, Noise KK,
key confirmation, texts both ways, replays refused, keys wiped on close."""

from __future__ import annotations

import secrets
from types import SimpleNamespace

import pytest

from sottovoce.client.ephemeral_media import (
    CHUNK_BYTES,
    MAX_MEDIA_BYTES,
    Assembler,
    MediaKind,
    chunks,
    describe,
)
from sottovoce.client.identity import LocalIdentity
from sottovoce.errors import CryptoError, DecodeError, SignatureError, SottovoceError, UsageError
from sottovoce.pairwise.ephemeral import (
    ChatSession,
    DhStatement,
    Frame,
    Inner,
    Kind,
    State,
    device_dh_private,
    statement_of,
)


def _ident(name: str) -> LocalIdentity:
    ident, _ = LocalIdentity.new(username=name, server_url="ws://127.0.0.1:1", now_ms=1,
                                 rng=secrets.token_bytes)
    return ident


def _statement(ident: LocalIdentity) -> tuple[bytearray, DhStatement]:
    static = device_dh_private(ident.device_key)
    return static, DhStatement.make(ident.device_key, ident.username, ident.device_id, static)


def _frame(data: bytes) -> Frame:
    f = Frame.decode(data)
    assert f is not None
    return f


def _open_pair() -> tuple[ChatSession, ChatSession, list[bytes]]:
    alice, bob = _ident("alice"), _ident("bob")
    a_static, a_st = _statement(alice)
    b_static, b_st = _statement(bob)
    a, request = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                   static=a_static, statement=a_st, rng=secrets.token_bytes)
    req = _frame(request)
    got = DhStatement.decode(req.body[32:])
    got.verify(alice.certificate)
    b = ChatSession.incoming(req, me=("bob", bob.device_id), peer_user="alice",
                             peer_statement=got, static=b_static, rng=secrets.token_bytes)
    accept = _frame(b.accept(b_st))
    DhStatement.decode(accept.body[32:]).verify(bob.certificate)
    hs1 = a.on_accept(accept, DhStatement.decode(accept.body[32:]))
    hs2 = b.on_hs1(_frame(hs1))
    confirm = a.on_hs2(_frame(hs2))
    assert b.state is State.CONFIRMING
    assert b.open_data(_frame(confirm))[0] is Inner.CONFIRM
    return a, b, [hs1, confirm]


def test_handshake_opens_both_sides_and_texts_flow_both_ways() -> None:
    a, b, _ = _open_pair()
    assert a.state is State.OPEN and b.state is State.OPEN
    assert b.open_data(_frame(a.seal(Inner.TEXT, b"hi bob"))) == (Inner.TEXT, b"hi bob")
    assert a.open_data(_frame(b.seal(Inner.TEXT, b"hi alice"))) == (Inner.TEXT, b"hi alice")
    assert a.key_material() and sorted(a.key_material()) == sorted(b.key_material())


def test_a_replayed_opening_message_and_a_replayed_text_are_refused() -> None:
    a, b, (hs1, confirm) = _open_pair()
    with pytest.raises(UsageError):
        b.on_hs1(_frame(hs1))  # the opening message again
    text = a.seal(Inner.TEXT, b"once")
    b.open_data(_frame(text))
    with pytest.raises(CryptoError):
        b.open_data(_frame(text))
    with pytest.raises(CryptoError):
        b.open_data(_frame(confirm))


def test_an_opening_message_of_another_chat_does_not_fit() -> None:
    """HS1 recorded from one chat, offered to a fresh chat with the same devices: the
    prologue (chat id, nonces) differs, so Noise refuses it."""
    alice, bob = _ident("alice"), _ident("bob")
    a_static, a_st = _statement(alice)
    b_static, b_st = _statement(bob)
    _, request = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                   static=a_static, statement=a_st, rng=secrets.token_bytes)
    a2, _ = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                              static=a_static, statement=a_st, rng=secrets.token_bytes)
    b = ChatSession.incoming(_frame(request), me=("bob", bob.device_id), peer_user="alice",
                             peer_statement=a_st, static=b_static, rng=secrets.token_bytes)
    accept = _frame(b.accept(b_st))
    other = a2.on_accept(accept, b_st)  # a2's nonce_i differs from the request b saw
    with pytest.raises(SottovoceError):
        b.on_hs1(_frame(other))


def test_a_forged_statement_is_refused() -> None:
    alice, mallory = _ident("alice"), _ident("mallory")
    _, st = _statement(mallory)
    with pytest.raises(SignatureError):
        st.verify(alice.certificate)


def test_close_wipes_the_keys_and_nothing_more_goes_out() -> None:
    a, _b, _ = _open_pair()
    buffers = a.key_buffers()
    assert len(buffers) == 2 and all(any(b) for b in buffers)
    a.close()
    assert not any(any(b) for b in buffers) and a.state is State.CLOSED
    with pytest.raises(UsageError):
        a.seal(Inner.TEXT, b"x")
    assert a.key_material() == []


def test_an_olm_ciphertext_is_not_a_frame_and_a_bad_frame_is_an_error() -> None:
    assert Frame.decode(b"\x01\x02\x03") is None
    with pytest.raises(SottovoceError):
        Frame.decode(b"SVEC\x01\x09" + bytes(16))
    assert Frame.decode(Frame(Kind.DATA, bytes(16), "d1", "d2", b"x").encode()) is not None


def test_frames_may_arrive_a_little_out_of_order_but_never_twice() -> None:
    """For a moment frames take two paths (relay and data channel): a later frame may
    overtake an earlier one, which is still read once, and never a second time."""
    a, b, _ = _open_pair()
    frames = [a.seal(Inner.TEXT, str(i).encode()) for i in range(70)]
    assert b.open_data(_frame(frames[1]))[1] == b"1"
    assert b.open_data(_frame(frames[0]))[1] == b"0"
    with pytest.raises(CryptoError):
        b.open_data(_frame(frames[0]))
    assert b.open_data(_frame(frames[69]))[1] == b"69"
    with pytest.raises(CryptoError):
        b.open_data(_frame(frames[2]))  # 67 behind the newest: outside the window
    assert b.open_data(_frame(frames[10]))[1] == b"10"


class _Contacts:
    def __init__(self, *idents: LocalIdentity) -> None:
        self.by_user = {i.username: i for i in idents}

    async def lookup(self, username: str) -> None:
        return None

    def contact(self, username: str) -> object:
        ident = self.by_user[username]
        return SimpleNamespace(certificates={ident.device_id: ident.certificate}, revoked=set())


def test_a_flood_of_requests_keeps_only_the_newest_sixteen() -> None:
    from sottovoce.client.ephemeral import MAX_PENDING_REQUESTS, EphemeralChats
    from sottovoce.client.events import EphemeralChatEnded, EphemeralChatRequested

    alice, bob = _ident("alice"), _ident("bob")
    emitted: list[object] = []
    chats = EphemeralChats(
        link=None, contacts=_Contacts(alice, bob), username="bob",  # type: ignore[arg-type]
        device_id=bob.device_id, device_key=bob.device_key, emit=emitted.append,
        spawn=lambda coro: coro.close(),
    )
    a_static, a_st = _statement(alice)
    ids = []
    for _ in range(MAX_PENDING_REQUESTS + 4):
        s, request = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                       static=a_static, statement=a_st, rng=secrets.token_bytes)
        chats._on_frame("alice", _frame(request))
        chats._on_frame("alice", _frame(request))  # a resend: not a second request
        ids.append(s.chat_id.hex())
    assert [c.chat_id for c in chats.requests()] == ids[-MAX_PENDING_REQUESTS:]
    assert sum(isinstance(e, EphemeralChatRequested) for e in emitted) == len(ids)
    assert sum(isinstance(e, EphemeralChatEnded) for e in emitted) == 4
    # A request whose statement another device signed is refused.
    mallory = _ident("mallory")
    _, m_st = _statement(mallory)
    _, forged = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                  static=a_static, statement=m_st, rng=secrets.token_bytes)
    with pytest.raises(SignatureError):
        chats._on_frame("alice", _frame(forged))


def test_a_group_link_binds_its_group_chat_and_a_swapped_context_does_not_fit() -> None:
    """The REQUEST of a group chat's link names the group chat; the handshake binds it,
    so a relay that swaps the context for another group chat's breaks the handshake."""
    alice, bob = _ident("alice"), _ident("bob")
    a_static, a_st = _statement(alice)
    b_static, b_st = _statement(bob)
    group, other = secrets.token_bytes(32), secrets.token_bytes(32)
    a, request = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                   static=a_static, statement=a_st, rng=secrets.token_bytes,
                                   group=group)
    req = _frame(request)
    assert req.body[-32:] == group and statement_of(req) == a_st.encode()
    b = ChatSession.incoming(req, me=("bob", bob.device_id), peer_user="alice",
                             peer_statement=a_st, static=b_static, rng=secrets.token_bytes)
    assert b.group == group
    swapped = Frame(req.kind, req.chat_id, req.sender_device, req.to_device,
                    req.body[:-32] + other)
    b2 = ChatSession.incoming(swapped, me=("bob", bob.device_id), peer_user="alice",
                              peer_statement=a_st, static=b_static, rng=secrets.token_bytes)
    assert b2.group == other
    hs1 = a.on_accept(_frame(b2.accept(b_st)), b_st)
    with pytest.raises(SottovoceError):
        b2.on_hs1(_frame(hs1))
    with pytest.raises(UsageError):
        ChatSession.start(me=("alice", alice.device_id), peer_user="bob", static=a_static,
                          statement=a_st, rng=secrets.token_bytes, group=b"short")


def test_a_request_with_a_malformed_group_context_is_refused() -> None:
    alice = _ident("alice")
    a_static, a_st = _statement(alice)
    _, request = ChatSession.start(me=("alice", alice.device_id), peer_user="bob",
                                   static=a_static, statement=a_st, rng=secrets.token_bytes)
    req = _frame(request)
    bad = Frame(req.kind, req.chat_id, req.sender_device, req.to_device, req.body + b"x" * 7)
    with pytest.raises(DecodeError):
        ChatSession.incoming(bad, me=("bob", "d"), peer_user="alice", peer_statement=a_st,
                             static=a_static, rng=secrets.token_bytes)


def test_media_chunks_reassemble_and_a_chunk_that_does_not_add_up_is_refused() -> None:
    data = bytearray(secrets.token_bytes(3 * CHUNK_BYTES + 5))
    pieces = chunks(b"12345678", MediaKind.CLIP, "clip.webm", data)
    assert len(pieces) == 4
    asm = Assembler()
    for piece in reversed(pieces[1:]):
        assert asm.add("bob", piece) is None
    with pytest.raises(DecodeError):  # the last chunk cut short
        asm.add("bob", pieces[0][:-1])
    with pytest.raises(DecodeError):  # the same item under another name
        asm.add("bob", chunks(b"12345678", MediaKind.CLIP, "other", data)[0])
    media = asm.add("bob", pieces[0])
    assert media is not None and bytes(media.data) == bytes(data) and media.sender == "bob"
    assert media.describe() == f"clip 'clip.webm': clip of unknown format, {len(data)} bytes"
    media.wipe()
    assert not any(media.data)
    with pytest.raises(UsageError):
        chunks(b"12345678", MediaKind.PHOTO, "big", bytearray(MAX_MEDIA_BYTES + 1))
    lie = bytearray(pieces[1])
    lie[13:17] = (MAX_MEDIA_BYTES + 1).to_bytes(4, "big")  # total over the limit
    with pytest.raises(DecodeError):
        Assembler().add("bob", bytes(lie))
    half = Assembler()
    half.add("bob", pieces[1])
    half.wipe()
    assert repr(half) == "Assembler(0 in flight)"


def test_media_descriptions_read_image_sizes_from_headers_only() -> None:
    jpeg = (b"\xff\xd8" + b"\xff\xe0\x00\x04ab" + b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80"
            + b"\x00" * 12)
    assert describe(MediaKind.PHOTO, "a.jpg", jpeg) == (
        f"photo 'a.jpg': JPEG image, 640×480, {len(jpeg)} bytes")
    gif = b"GIF89a" + (33).to_bytes(2, "little") + (7).to_bytes(2, "little") + b"\x00" * 8
    assert describe(MediaKind.PHOTO, "g", gif).endswith("GIF image, 33×7, 18 bytes")
    assert describe(MediaKind.CLIP, "m", b"\x00\x00\x00\x18ftypmp42").startswith(
        "clip 'm': MP4/QuickTime clip, 12 bytes")
