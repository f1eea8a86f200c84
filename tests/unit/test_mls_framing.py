"""RFC 9420 §6 framing: signatures, membership tags, PrivateMessage rules, MLSMessage.

Negative cases first: each malformed or forged input is rejected with a
typed error, and a failed unprotect leaves the secret tree unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sottovoce.crypto.labels import ref_hash
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError, SignatureError, UsageError
from sottovoce.mls.common import ContentType, GroupContext, SenderType, WireFormat
from sottovoce.mls.errors import (
    InvalidMembershipTag,
    InvalidPadding,
    InvalidSignature,
    MlsDecryptionError,
    UnknownWireFormat,
    ValidationError,
)
from sottovoce.mls.framing import (
    AuthenticatedContent,
    Content,
    FramedContent,
    FramedContentAuthData,
    MLSMessage,
    PrivateMessage,
    PrivateMessageContent,
    PublicMessage,
    Sender,
    SenderData,
    authenticate,
    decrypt_private_content,
    decrypt_sender_data,
    encrypt_private,
    membership_tag,
    open_private,
    protect_private,
    protect_public,
    sign_content,
    unprotect_private,
    unprotect_public,
    verify_content_signature,
)
from sottovoce.mls.messages import Commit, Remove
from sottovoce.mls.secret_tree import RatchetType, SecretTree

SUITE = cipher_suite(1)
N_LEAVES = 4
SENDER = 2


@pytest.fixture
def key(rng: Random) -> SigningKey:
    return SUITE.generate_signing_key(rng)


@pytest.fixture
def ctx() -> GroupContext:
    return GroupContext(
        cipher_suite=SUITE.id,
        group_id=b"group",
        epoch=7,
        tree_hash=bytes(32),
        confirmed_transcript_hash=b"\x01" * 32,
    )


MEMBERSHIP_KEY = b"\x02" * 32
ENCRYPTION_SECRET = b"\x03" * 32
SENDER_DATA_SECRET = b"\x04" * 32


def _content(ctx: GroupContext, body: Content, sender: Sender | None = None) -> FramedContent:
    return FramedContent(
        group_id=ctx.group_id,
        epoch=ctx.epoch,
        sender=sender or Sender.member(SENDER),
        authenticated_data=b"aad",
        content=body,
    )


def _public(key: SigningKey, ctx: GroupContext) -> PublicMessage:
    ac = authenticate(key, WireFormat.PUBLIC_MESSAGE, _content(ctx, Remove(removed=1)), ctx)
    return protect_public(SUITE, ac, MEMBERSHIP_KEY, ctx)


def _private(
    key: SigningKey, ctx: GroupContext, rng: Random, body: Content = b"hi"
) -> PrivateMessage:
    ac = authenticate(key, WireFormat.PRIVATE_MESSAGE, _content(ctx, body), ctx)
    tree = SecretTree(SUITE, ENCRYPTION_SECRET, N_LEAVES)
    return protect_private(SUITE, ac, tree, SENDER_DATA_SECRET, rng, padding=5)


# --- §6.1 signatures ------------------------------------------------------------------


def test_rfc9420_6_1_signature_round_trip(key: SigningKey, ctx: GroupContext) -> None:
    ac = _public(key, ctx).authenticated_content()
    verify_content_signature(key.verify_key, ac, ctx)


def test_rfc9420_6_1_empty_signature_rejected(key: SigningKey, ctx: GroupContext) -> None:
    ac = _public(key, ctx).authenticated_content()
    empty = replace(ac, auth=FramedContentAuthData(signature=b""))
    with pytest.raises(InvalidSignature) as exc:
        verify_content_signature(key.verify_key, empty, ctx)
    assert isinstance(exc.value, SignatureError)


def test_rfc9420_6_1_forged_signature_rejected(
    key: SigningKey, ctx: GroupContext, rng: Random
) -> None:
    ac = _public(key, ctx).authenticated_content()
    sig = bytearray(ac.auth.signature)
    sig[0] ^= 1
    with pytest.raises(InvalidSignature):
        verify_content_signature(
            key.verify_key, replace(ac, auth=FramedContentAuthData(signature=bytes(sig))), ctx
        )
    # A valid signature by another key is a forgery too.
    other = SUITE.generate_signing_key(rng)
    with pytest.raises(InvalidSignature):
        verify_content_signature(other.verify_key, ac, ctx)


def test_rfc9420_6_1_signature_binds_group_context_and_wire_format(
    key: SigningKey, ctx: GroupContext
) -> None:
    ac = _public(key, ctx).authenticated_content()
    with pytest.raises(InvalidSignature):
        verify_content_signature(key.verify_key, ac, replace(ctx, epoch=8))
    with pytest.raises(InvalidSignature):
        verify_content_signature(
            key.verify_key, replace(ac, wire_format=WireFormat.PRIVATE_MESSAGE), ctx
        )


def test_rfc9420_6_1_external_sender_signs_without_group_context(key: SigningKey) -> None:
    fc = FramedContent(
        group_id=b"g", epoch=1, sender=Sender.external(0), content=Remove(removed=0)
    )
    ac = authenticate(key, WireFormat.PUBLIC_MESSAGE, fc, None)
    verify_content_signature(key.verify_key, ac, None)
    pm = protect_public(SUITE, ac, None, None)
    assert pm.membership_tag is None


def test_rfc9420_6_1_confirmation_tag_exactly_for_commits(
    key: SigningKey, ctx: GroupContext
) -> None:
    fc = _content(ctx, Commit())
    sig = sign_content(key, WireFormat.PUBLIC_MESSAGE, fc, ctx)
    with pytest.raises(UsageError):
        AuthenticatedContent(
            wire_format=WireFormat.PUBLIC_MESSAGE,
            content=fc,
            auth=FramedContentAuthData(signature=sig),
        )
    with pytest.raises(UsageError):
        authenticate(key, WireFormat.PUBLIC_MESSAGE, _content(ctx, b"x"), ctx, b"tag")


# --- §6.2 PublicMessage ---------------------------------------------------------------


def test_rfc9420_6_2_membership_tag_round_trip(key: SigningKey, ctx: GroupContext) -> None:
    pm = MLSMessage.decode(MLSMessage(body=_public(key, ctx)).encode()).body
    assert isinstance(pm, PublicMessage)
    ac = unprotect_public(SUITE, pm, MEMBERSHIP_KEY, ctx)
    verify_content_signature(key.verify_key, ac, ctx)
    assert ac.content.content == Remove(removed=1)


def test_rfc9420_6_2_wrong_membership_tag_rejected(key: SigningKey, ctx: GroupContext) -> None:
    pm = _public(key, ctx)
    assert pm.membership_tag is not None
    bad = bytearray(pm.membership_tag)
    bad[-1] ^= 0x80
    with pytest.raises(InvalidMembershipTag):
        unprotect_public(SUITE, replace(pm, membership_tag=bytes(bad)), MEMBERSHIP_KEY, ctx)
    with pytest.raises(InvalidMembershipTag):
        unprotect_public(SUITE, pm, b"\x09" * 32, ctx)
    with pytest.raises(InvalidMembershipTag):
        unprotect_public(SUITE, pm, MEMBERSHIP_KEY, replace(ctx, epoch=8))


def test_rfc9420_6_2_member_public_message_needs_membership_tag(
    key: SigningKey, ctx: GroupContext
) -> None:
    pm = _public(key, ctx)
    with pytest.raises(UsageError):
        replace(pm, membership_tag=None)
    # On the wire, a member message without a tag is truncated input.
    wire = MLSMessage(body=pm).encode()
    tag_len = 1 + len(pm.membership_tag or b"")
    with pytest.raises(DecodeError):
        MLSMessage.decode(wire[:-tag_len])


def test_rfc9420_6_application_data_never_public(key: SigningKey, ctx: GroupContext) -> None:
    ac = authenticate(key, WireFormat.PUBLIC_MESSAGE, _content(ctx, b"secret"), ctx)
    with pytest.raises(UsageError):
        protect_public(SUITE, ac, MEMBERSHIP_KEY, ctx)
    pm = PublicMessage(
        content=ac.content,
        auth=ac.auth,
        membership_tag=membership_tag(SUITE, MEMBERSHIP_KEY, ac, ctx),
    )
    with pytest.raises(ValidationError):
        unprotect_public(SUITE, pm, MEMBERSHIP_KEY, ctx)


# --- §6.3 PrivateMessage --------------------------------------------------------------


def test_rfc9420_6_3_private_round_trip_each_content_type(
    key: SigningKey, ctx: GroupContext, rng: Random
) -> None:
    bodies: list[Content] = [b"hello", Remove(removed=3), Commit(proposals=(b"\x05" * 32,))]
    recv = SecretTree(SUITE, ENCRYPTION_SECRET, N_LEAVES)
    send = SecretTree(SUITE, ENCRYPTION_SECRET, N_LEAVES)
    for body in bodies:
        fc = _content(ctx, body)
        tag = b"\x06" * 32 if isinstance(body, Commit) else None
        ac = authenticate(key, WireFormat.PRIVATE_MESSAGE, fc, ctx, tag)
        pm = protect_private(SUITE, ac, send, SENDER_DATA_SECRET, rng, padding=3)
        back = MLSMessage.decode(MLSMessage(body=pm).encode()).body
        assert isinstance(back, PrivateMessage)
        assert back.content_type is fc.content_type
        out = unprotect_private(SUITE, back, recv, SENDER_DATA_SECRET)
        verify_content_signature(key.verify_key, out, ctx)
        assert out == ac


def test_rfc9420_6_3_1_nonzero_padding_rejected(key: SigningKey, ctx: GroupContext) -> None:
    ac = authenticate(key, WireFormat.PRIVATE_MESSAGE, _content(ctx, b"hi"), ctx)
    plain = PrivateMessageContent(content=b"hi", auth=ac.auth).encode()
    assert PrivateMessageContent.decode(plain + bytes(4), ContentType.APPLICATION).padding == 4
    with pytest.raises(InvalidPadding):
        PrivateMessageContent.decode(plain + b"\x00\x01", ContentType.APPLICATION)

    # End to end: a sender that pads with a non-zero byte is rejected after decryption.
    key_, nonce = b"\x07" * SUITE.aead_key_size, b"\x08" * SUITE.aead_nonce_size
    good = encrypt_private(
        SUITE, ac, key=key_, nonce=nonce, generation=0, reuse_guard=bytes(4),
        sender_data_secret=SENDER_DATA_SECRET,
    )
    forged_ct = SUITE.aead_key(key_).seal(nonce, plain + b"\x01", good.content_aad())
    sender_data = SenderData(leaf_index=SENDER, generation=0, reuse_guard=bytes(4))
    with pytest.raises(InvalidPadding):
        forged = replace(good, ciphertext=forged_ct)
        decrypt_private_content(SUITE, forged, sender_data, key_, nonce)
    assert decrypt_private_content(SUITE, good, sender_data, key_, nonce) == ac


def test_rfc9420_6_3_1_reuse_guard_is_xored_into_nonce(key: SigningKey, ctx: GroupContext) -> None:
    ac = authenticate(key, WireFormat.PRIVATE_MESSAGE, _content(ctx, b"hi"), ctx)
    key_, nonce = b"\x07" * 16, b"\x08" * 12
    guard = b"\x01\x02\x03\x04"
    pm = encrypt_private(
        SUITE, ac, key=key_, nonce=nonce, generation=9, reuse_guard=guard,
        sender_data_secret=SENDER_DATA_SECRET,
    )
    sd = decrypt_sender_data(SUITE, pm, SENDER_DATA_SECRET)
    assert (sd.leaf_index, sd.generation, sd.reuse_guard) == (SENDER, 9, guard)
    guarded = b"\x09\x0a\x0b\x0c" + nonce[4:]  # 0x08 ^ 01, 02, 03, 04
    plain = SUITE.aead_key(key_).open(guarded, pm.ciphertext, pm.content_aad())
    assert PrivateMessageContent.decode(plain, ContentType.APPLICATION).content == b"hi"


def test_rfc9420_6_3_tampered_private_message_rejected_tree_unchanged(
    key: SigningKey, ctx: GroupContext, rng: Random
) -> None:
    pm = _private(key, ctx, rng)
    tree = SecretTree(SUITE, ENCRYPTION_SECRET, N_LEAVES)
    before = tree.ratchet_position(SENDER, RatchetType.APPLICATION)
    tampered = [
        replace(pm, epoch=pm.epoch + 1),  # AAD of both layers
        replace(pm, authenticated_data=b"other"),  # content AAD only
        replace(pm, ciphertext=pm.ciphertext[:-1] + bytes([pm.ciphertext[-1] ^ 1])),
        replace(pm, encrypted_sender_data=bytes(len(pm.encrypted_sender_data))),
    ]
    for bad in tampered:
        with pytest.raises(MlsDecryptionError):
            unprotect_private(SUITE, bad, tree, SENDER_DATA_SECRET)
    with pytest.raises(MlsDecryptionError):
        unprotect_private(SUITE, pm, tree, b"\x05" * 32)
    assert tree.ratchet_position(SENDER, RatchetType.APPLICATION) == before
    # The untouched message still opens; peeking alone does not consume.
    opened = open_private(SUITE, pm, tree, SENDER_DATA_SECRET)
    assert tree.ratchet_position(SENDER, RatchetType.APPLICATION) == before
    opened.pending_key.consume()
    assert opened.content.content.content == b"hi"


def test_rfc9420_6_3_2_sender_leaf_outside_tree_rejected(
    key: SigningKey, ctx: GroupContext, rng: Random
) -> None:
    pm = _private(key, ctx, rng)
    small = SecretTree(SUITE, ENCRYPTION_SECRET, 2)  # leaf 2 does not exist here
    with pytest.raises(ValidationError):
        unprotect_private(SUITE, pm, small, SENDER_DATA_SECRET)


def test_rfc9420_6_3_only_members_send_private(key: SigningKey) -> None:
    fc = FramedContent(group_id=b"g", epoch=0, sender=Sender.external(0), content=Remove(removed=0))
    ac = authenticate(key, WireFormat.PRIVATE_MESSAGE, fc, None)
    tree = SecretTree(SUITE, ENCRYPTION_SECRET, N_LEAVES)
    with pytest.raises(UsageError):
        protect_private(SUITE, ac, tree, SENDER_DATA_SECRET, lambda n: bytes(n))


# --- §6 MLSMessage ----------------------------------------------------------------------


def test_rfc9420_6_trailing_bytes_rejected(
    key: SigningKey, ctx: GroupContext, rng: Random
) -> None:
    for body in (_public(key, ctx), _private(key, ctx, rng)):
        wire = MLSMessage(body=body).encode()
        assert MLSMessage.decode(wire).body == body
        with pytest.raises(DecodeError):
            MLSMessage.decode(wire + b"\x00")
        with pytest.raises(DecodeError):
            MLSMessage.decode(wire[:-1])
    with pytest.raises(DecodeError):
        SenderData.decode(bytes(13))


def test_rfc9420_6_unknown_wire_format_rejected(key: SigningKey, ctx: GroupContext) -> None:
    wire = MLSMessage(body=_public(key, ctx)).encode()
    for wire_format in (0, 6, 0x0A0A, 0xFFFF):
        bad = wire[:2] + wire_format.to_bytes(2, "big") + wire[4:]
        with pytest.raises(UnknownWireFormat) as exc:
            MLSMessage.decode(bad)
        assert isinstance(exc.value, DecodeError)


def test_rfc9420_6_unknown_version_rejected(key: SigningKey, ctx: GroupContext) -> None:
    wire = MLSMessage(body=_public(key, ctx)).encode()
    with pytest.raises(DecodeError):
        MLSMessage.decode(b"\x00\x02" + wire[2:])


def test_rfc9420_6_unknown_sender_and_content_type_rejected(
    key: SigningKey, ctx: GroupContext
) -> None:
    fc = _content(ctx, Remove(removed=1))
    enc = fc.encode()
    sender_at = 1 + len(ctx.group_id) + 8
    assert enc[sender_at] == SenderType.MEMBER
    with pytest.raises(DecodeError):
        FramedContent.decode(enc[:sender_at] + b"\x05" + enc[sender_at + 1 :])
    ctype_at = sender_at + 5 + 1 + len(fc.authenticated_data)
    assert enc[ctype_at] == ContentType.PROPOSAL
    with pytest.raises(DecodeError):
        FramedContent.decode(enc[:ctype_at] + b"\x04" + enc[ctype_at + 1 :])


def test_rfc9420_5_2_proposal_ref_is_ref_hash_of_authenticated_content(
    key: SigningKey, ctx: GroupContext
) -> None:
    ac = _public(key, ctx).authenticated_content()
    ref = ac.proposal_ref(SUITE)
    assert ref == ref_hash(SUITE, b"MLS 1.0 Proposal Reference", ac.encode())
    assert len(ref) == SUITE.nh
    with pytest.raises(UsageError):
        authenticate(key, WireFormat.PUBLIC_MESSAGE, _content(ctx, b"x"), ctx).proposal_ref(SUITE)


