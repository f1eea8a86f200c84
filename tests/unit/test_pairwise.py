"""1:1 sessions over Olm (docs/architecture.md §1:1 messages), two devices in memory.

The wire between the devices is a list we control: messages are delivered in
bursts, reordered inside vodozemac's limits (40 skipped keys per chain, 5
receiver chains), dropped, duplicated and tampered with.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import STORAGE_KEY_BYTES
from sottovoce.errors import (
    CertificateExpired,
    CertificateRevoked,
    DecodeError,
    DuplicateMessage,
    IdentityError,
    MessageDecryptionError,
    PairwiseError,
    PrekeyBundleError,
    SealedStateError,
    SessionMismatch,
    UsageError,
)
from sottovoce.identity import AccountKey, DeviceCertificate, DeviceSigningKey
from sottovoce.limits import (
    MAX_PLAINTEXT_BYTES,
    PADDING_BUCKETS,
    PADDING_LARGE_STEP,
    SEEN_MESSAGE_IDS_PER_SESSION,
)
from sottovoce.pairwise import OlmAccount, OlmEnvelope, PairwiseSession, SignedPrekey
from sottovoce.pairwise.padding import pad, padded_size, unpad
from sottovoce.pairwise.session import NORMAL_MESSAGE, PREKEY_MESSAGE
from sottovoce.secret import Secret
from tests.pairwise_peers import DAY_MS, NOW_MS, Device, establish, make_device

#: Reorder window: well inside vodozemac's 40 skipped message keys per chain.
REORDER_WINDOW = 20


@pytest.fixture
def alice(rng: Random) -> Device:
    return make_device("alice", "phone", rng)


@pytest.fixture
def bob(rng: Random) -> Device:
    return make_device("bob", "laptop", rng)


@pytest.fixture
def shuffler(rng: Random) -> random.Random:
    return random.Random(int.from_bytes(rng(8), "big"))


@pytest.fixture
def storage_key(rng: Random) -> Secret:
    return Secret(rng(STORAGE_KEY_BYTES))


def resign(cert: DeviceCertificate, ak: AccountKey, **changes: Any) -> DeviceCertificate:
    """``cert`` with ``changes`` applied and a valid signature by ``ak``."""
    body = replace(cert, **changes, signature=b"")
    return replace(body, signature=ak.sign(body.tbs()))


def flip(message: bytes, position: int) -> bytes:
    """Flip one bit in the Olm body of an envelope, keeping the envelope well-formed."""
    envelope = OlmEnvelope.decode(message)
    body = bytearray(envelope.body)
    body[position] ^= 0x01
    return OlmEnvelope(message_type=envelope.message_type, body=bytes(body)).encode()


def windows(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@pytest.fixture
def olm_spy(monkeypatch: pytest.MonkeyPatch) -> list[OlmAccount]:
    """Records every time the session layer reaches into an Olm account."""
    calls: list[OlmAccount] = []
    original = OlmAccount._vodozemac

    def spy(self: OlmAccount) -> object:
        calls.append(self)
        return original(self)

    monkeypatch.setattr(OlmAccount, "_vodozemac", spy)
    return calls


# --- conversation -------------------------------------------------------------------


def test_500_messages_both_ways_in_bursts_reordered_within_each_chain(
    alice: Device, bob: Device, shuffler: random.Random
) -> None:
    a, b = establish(alice, bob)
    sides = [(a, b, "a->b"), (b, a, "b->a")]
    sent = {"a->b": 0, "b->a": 0}
    total = 500
    turn = 0
    while min(sent.values()) < total:
        sender, receiver, name = sides[turn % 2]
        turn += 1
        burst = min(shuffler.randint(1, 30), total - sent[name])
        if burst == 0:
            continue
        expected = {}
        wire = []
        for _ in range(burst):
            n = sent[name]
            sent[name] += 1
            plaintext = f"{name} #{n} ".encode() + bytes(shuffler.randrange(0, 300))
            message = sender.encrypt(plaintext)
            expected[message] = plaintext
            wire.append(message)
        # One burst is one sending chain; shuffle within windows of <= 20.
        for window in windows(wire, shuffler.randint(2, REORDER_WINDOW)):
            shuffler.shuffle(window)
            for message in window:
                assert receiver.decrypt(message) == expected[message]
    assert sent == {"a->b": total, "b->a": total}
    assert turn > 20  # many ratchet turns, not one long chain


def test_prekey_messages_reordered_open_the_session_from_any_of_them(
    alice: Device, bob: Device
) -> None:
    out = PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS)
    burst = [out.encrypt(f"m{i}".encode()) for i in range(5)]
    assert all(OlmEnvelope.decode(m).message_type == PREKEY_MESSAGE for m in burst)
    inb, first = PairwiseSession.inbound(bob.olm, alice.certificate, burst[3], now_ms=NOW_MS)
    assert first == b"m3"
    assert inb.session_id == out.session_id
    assert all(inb.matches(m) for m in burst)
    for i in (4, 0, 2, 1):
        assert inb.decrypt(burst[i]) == f"m{i}".encode()
    # The reply ends the prekey phase for alice.
    assert out.decrypt(inb.encrypt(b"ok")) == b"ok"
    assert OlmEnvelope.decode(out.encrypt(b"x")).message_type == NORMAL_MESSAGE


def test_dropped_message_is_skipped_and_later_ones_decrypt(alice: Device, bob: Device) -> None:
    a, b = establish(alice, bob)
    burst = [a.encrypt(f"m{i}".encode()) for i in range(6)]
    for i in (0, 1, 3, 4):  # m2 never arrives; m5 (end of chain) never arrives
        assert b.decrypt(burst[i]) == f"m{i}".encode()
    # New ratchet turns after the gaps still work both ways.
    assert a.decrypt(b.encrypt(b"reply")) == b"reply"
    assert b.decrypt(a.encrypt(b"next chain")) == b"next chain"
    assert a.decrypt(b.encrypt(b"and back")) == b"and back"


def test_duplicate_message_raises_duplicate_message(alice: Device, bob: Device) -> None:
    a, b = establish(alice, bob)
    m1, m2 = a.encrypt(b"one"), a.encrypt(b"two")
    assert b.decrypt(m1) == b"one"
    with pytest.raises(DuplicateMessage):
        b.decrypt(m1)
    assert b.decrypt(m2) == b"two"  # the duplicate disturbed nothing
    with pytest.raises(DuplicateMessage):
        b.decrypt(m1)


def test_duplicate_of_the_opening_prekey_message_is_a_duplicate(alice: Device, bob: Device) -> None:
    out = PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS)
    first = out.encrypt(b"hi")
    inb, _ = PairwiseSession.inbound(bob.olm, alice.certificate, first, now_ms=NOW_MS)
    with pytest.raises(DuplicateMessage):
        inb.decrypt(first)


def test_duplicate_after_seal_and_restore_raises_duplicate_message(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, b = establish(alice, bob)
    m1 = a.encrypt(b"one")
    assert b.decrypt(m1) == b"one"
    restored = PairwiseSession.restore(
        storage_key, alice.username, alice.device_id, b.seal(storage_key, rng)
    )
    with pytest.raises(DuplicateMessage):
        restored.decrypt(m1)
    assert restored.decrypt(a.encrypt(b"two")) == b"two"


def test_replay_older_than_the_seen_window_is_still_rejected(alice: Device, bob: Device) -> None:
    # Past SEEN_MESSAGE_IDS_PER_SESSION the ratchet itself refuses the used key.
    a, b = establish(alice, bob)
    first = a.encrypt(b"old")
    assert b.decrypt(first) == b"old"
    for i in range(SEEN_MESSAGE_IDS_PER_SESSION):
        assert b.decrypt(a.encrypt(i.to_bytes(2, "big"))) == i.to_bytes(2, "big")
    with pytest.raises(MessageDecryptionError):
        b.decrypt(first)


@pytest.mark.parametrize("where", ["header", "ratchet-key", "ciphertext", "mac"])
def test_tampered_ciphertext_fails_and_leaves_state_unchanged(
    alice: Device, bob: Device, where: str
) -> None:
    a, b = establish(alice, bob)
    m1, m2, m3 = a.encrypt(b"one"), a.encrypt(b"two"), a.encrypt(b"three")
    body_len = len(OlmEnvelope.decode(m1).body)
    position = {"header": 1, "ratchet-key": 5, "ciphertext": body_len // 2, "mac": -1}[where]
    tampered = flip(m1, position)
    with pytest.raises(MessageDecryptionError) as info:
        b.decrypt(tampered)
    assert b"one" not in str(info.value).encode()
    assert b.decrypt(m2) == b"two"  # the next genuine message
    assert b.decrypt(m1) == b"one"  # the tampered message's genuine original
    assert b.decrypt(m3) == b"three"
    with pytest.raises((MessageDecryptionError, DuplicateMessage)):
        b.decrypt(tampered)


def test_tampered_prekey_message_opens_no_session_and_keeps_the_one_time_key(
    alice: Device, bob: Device
) -> None:
    out = PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS)
    first = out.encrypt(b"hi")
    tampered = flip(first, -1)
    with pytest.raises(MessageDecryptionError):
        PairwiseSession.inbound(bob.olm, alice.certificate, tampered, now_ms=NOW_MS)
    inb, plaintext = PairwiseSession.inbound(bob.olm, alice.certificate, first, now_ms=NOW_MS)
    assert plaintext == b"hi"
    assert out.decrypt(inb.encrypt(b"ok")) == b"ok"


@pytest.mark.parametrize("field", ["one-time-key", "base-key", "identity-key"])
def test_tampered_prekey_message_in_an_open_session_is_rejected(
    alice: Device, bob: Device, field: str
) -> None:
    bundle = bob.bundle()
    out = PairwiseSession.outbound(alice.olm, bundle, now_ms=NOW_MS)
    first, second = out.encrypt(b"first"), out.encrypt(b"second")
    inb, _ = PairwiseSession.inbound(bob.olm, alice.certificate, first, now_ms=NOW_MS)
    body = OlmEnvelope.decode(second).body
    otk_at = body.find(bundle.prekey.public_key)
    position = {
        "one-time-key": otk_at + 7,
        "base-key": otk_at + 32 + 2 + 7,  # the next 32-byte field
        "identity-key": body.find(alice.olm.identity_key) + 7,
    }[field]
    with pytest.raises(MessageDecryptionError):
        inb.decrypt(flip(second, position))
    assert inb.decrypt(second) == b"second"


def test_normal_message_without_a_session_is_a_session_mismatch(
    alice: Device, bob: Device, rng: Random
) -> None:
    a, _ = establish(alice, bob)
    carol = make_device("carol", "tab", rng)
    with pytest.raises(SessionMismatch):
        PairwiseSession.inbound(carol.olm, alice.certificate, a.encrypt(b"x"), now_ms=NOW_MS)


# --- opening: prekey bundle and certificate checks ---------------------------------


def _forged_prekeys(bob: Device, rng: Random) -> dict[str, SignedPrekey]:
    genuine, other = bob.one_time_keys[0], bob.one_time_keys[1]
    sig = bytearray(genuine.signature)
    sig[10] ^= 0x01
    mallory = DeviceSigningKey.generate(rng)
    return {
        "flipped-signature": replace(genuine, signature=bytes(sig)),
        "swapped-public-key": replace(genuine, public_key=other.public_key),
        "fallback-flag": replace(genuine, fallback=True),
        "other-key-id": replace(genuine, key_id=other.key_id),
        "signed-by-other-device-key": SignedPrekey.sign(
            mallory,
            username=bob.username,
            device_id=bob.device_id,
            key_id=genuine.key_id,
            public_key=genuine.public_key,
            fallback=False,
        ),
        "signed-for-other-device": SignedPrekey.sign(
            bob.device_key,
            username=bob.username,
            device_id="phone",
            key_id=genuine.key_id,
            public_key=genuine.public_key,
            fallback=False,
        ),
    }


@pytest.mark.parametrize(
    "forgery",
    [
        "flipped-signature",
        "swapped-public-key",
        "fallback-flag",
        "other-key-id",
        "signed-by-other-device-key",
        "signed-for-other-device",
    ],
)
def test_forged_prekey_signature_is_rejected_and_no_session_opens(
    alice: Device, bob: Device, rng: Random, olm_spy: list[OlmAccount], forgery: str
) -> None:
    prekey = _forged_prekeys(bob, rng)[forgery]
    with pytest.raises(PrekeyBundleError):
        PairwiseSession.outbound(alice.olm, bob.bundle(prekey), now_ms=NOW_MS)
    assert olm_spy == []  # Olm was never asked to create a session


def test_genuine_bundle_opens_a_session_through_olm(
    alice: Device, bob: Device, olm_spy: list[OlmAccount]
) -> None:
    # Control for the "no session opens" checks: the spy sees a genuine opening.
    PairwiseSession.outbound(
        alice.olm, bob.bundle(), now_ms=NOW_MS, account_key=bob.account_key.public
    )
    assert olm_spy == [alice.olm]


def test_certificate_signed_by_a_different_account_key_is_rejected_outbound(
    alice: Device, bob: Device, rng: Random, olm_spy: list[OlmAccount]
) -> None:
    mallory = AccountKey.generate(rng)
    issued_by_mallory = resign(bob.certificate, mallory, account_key=mallory.public)
    claiming_bob = replace(issued_by_mallory, account_key=bob.account_key.public)
    for cert in (issued_by_mallory, claiming_bob):
        bundle = replace(bob.bundle(bob.one_time_keys[0]), certificate=cert)
        with pytest.raises(PrekeyBundleError) as info:
            PairwiseSession.outbound(
                alice.olm, bundle, now_ms=NOW_MS, account_key=bob.account_key.public
            )
        assert isinstance(info.value.__cause__, IdentityError)
    assert olm_spy == []


def test_revoked_device_certificate_is_rejected_outbound(
    alice: Device, bob: Device, olm_spy: list[OlmAccount]
) -> None:
    with pytest.raises(PrekeyBundleError) as info:
        PairwiseSession.outbound(
            alice.olm, bob.bundle(), now_ms=NOW_MS, revoked_device_ids={bob.device_id}
        )
    assert isinstance(info.value.__cause__, CertificateRevoked)
    assert olm_spy == []


def test_expired_device_certificate_is_rejected_outbound(
    alice: Device, rng: Random, olm_spy: list[OlmAccount]
) -> None:
    bob = make_device("bob", "laptop", rng, lifetime_ms=DAY_MS)
    with pytest.raises(PrekeyBundleError) as info:
        PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS + DAY_MS)
    assert isinstance(info.value.__cause__, CertificateExpired)
    assert olm_spy == []


def _inbound_rejected_then_accepted(
    alice: Device,
    bob: Device,
    sender_cert: DeviceCertificate,
    olm_spy: list[OlmAccount],
    **verify_args: Any,
) -> PrekeyBundleError:
    """Bob rejects alice's prekey message under ``verify_args``, then accepts it genuinely."""
    out = PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS)
    first = out.encrypt(b"hi")
    olm_spy.clear()
    with pytest.raises(PrekeyBundleError) as info:
        PairwiseSession.inbound(bob.olm, sender_cert, first, **verify_args)
    assert olm_spy == []  # no Olm session was created, no one-time key consumed
    inb, plaintext = PairwiseSession.inbound(
        bob.olm, alice.certificate, first, now_ms=NOW_MS, account_key=alice.account_key.public
    )
    assert plaintext == b"hi"
    assert olm_spy == [bob.olm]  # the spy does see a genuine opening
    assert out.decrypt(inb.encrypt(b"ok")) == b"ok"
    return info.value


def test_certificate_signed_by_a_different_account_key_is_rejected_inbound(
    alice: Device, bob: Device, rng: Random, olm_spy: list[OlmAccount]
) -> None:
    mallory = AccountKey.generate(rng)
    forged = resign(alice.certificate, mallory, account_key=mallory.public)
    error = _inbound_rejected_then_accepted(
        alice, bob, forged, olm_spy, now_ms=NOW_MS, account_key=alice.account_key.public
    )
    assert isinstance(error.__cause__, IdentityError)


def test_revoked_device_certificate_is_rejected_inbound(
    alice: Device, bob: Device, olm_spy: list[OlmAccount]
) -> None:
    error = _inbound_rejected_then_accepted(
        alice,
        bob,
        alice.certificate,
        olm_spy,
        now_ms=NOW_MS,
        revoked_device_ids=frozenset({alice.device_id}),
    )
    assert isinstance(error.__cause__, CertificateRevoked)


def test_expired_device_certificate_is_rejected_inbound(
    alice: Device, bob: Device, olm_spy: list[OlmAccount]
) -> None:
    error = _inbound_rejected_then_accepted(
        alice, bob, alice.certificate, olm_spy, now_ms=alice.certificate.expires_at_ms
    )
    assert isinstance(error.__cause__, CertificateExpired)


def test_inbound_sender_certificate_naming_another_olm_identity_key_is_rejected(
    alice: Device, bob: Device, rng: Random
) -> None:
    # A certificate validly signed by alice's account key, but for a different
    # Olm identity (say, her other device): the prekey message is not from it.
    other = make_device("alice", "tablet", rng, account_key=alice.account_key)
    wrong = resign(alice.certificate, alice.account_key, keys=other.certificate.keys)
    wrong.verify(now_ms=NOW_MS, account_key=alice.account_key.public)
    out = PairwiseSession.outbound(alice.olm, bob.bundle(), now_ms=NOW_MS)
    first = out.encrypt(b"hi")
    with pytest.raises(PairwiseError):
        PairwiseSession.inbound(
            bob.olm, wrong, first, now_ms=NOW_MS, account_key=alice.account_key.public
        )
    with pytest.raises(PairwiseError):
        PairwiseSession.inbound(bob.olm, other.certificate, first, now_ms=NOW_MS)
    # Rejection consumed nothing: the genuine certificate still opens the session.
    inb, plaintext = PairwiseSession.inbound(bob.olm, alice.certificate, first, now_ms=NOW_MS)
    assert plaintext == b"hi"
    assert inb.peer_identity_key == alice.olm.identity_key


# --- sealed state --------------------------------------------------------------------


def test_seal_restore_mid_conversation_on_both_sides_continues_seamlessly(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, b = establish(alice, bob)
    for i in range(5):
        assert b.decrypt(a.encrypt(b"a%d" % i)) == b"a%d" % i
        assert a.decrypt(b.encrypt(b"b%d" % i)) == b"b%d" % i
    seen_by_b = a.encrypt(b"seen")
    assert b.decrypt(seen_by_b) == b"seen"
    in_flight = [a.encrypt(b"late %d" % i) for i in range(3)]  # sent before the seal

    sealed_a, sealed_b = a.seal(storage_key, rng), b.seal(storage_key, rng)
    a2 = PairwiseSession.restore(storage_key, bob.username, bob.device_id, sealed_a)
    b2 = PairwiseSession.restore(storage_key, alice.username, alice.device_id, sealed_b)
    assert (a2.session_id, b2.session_id) == (a.session_id, b.session_id)
    assert (b2.peer_username, b2.peer_device_id) == (alice.username, alice.device_id)
    assert b2.peer_identity_key == alice.olm.identity_key

    assert b2.decrypt(in_flight[2]) == b"late 2"
    assert b2.decrypt(in_flight[0]) == b"late 0"
    with pytest.raises(DuplicateMessage):  # the seen-set survived
        b2.decrypt(seen_by_b)
    for i in range(5):
        assert b2.decrypt(a2.encrypt(b"A%d" % i)) == b"A%d" % i
        assert a2.decrypt(b2.encrypt(b"B%d" % i)) == b"B%d" % i
    assert b2.decrypt(in_flight[1]) == b"late 1"


def test_two_seals_of_the_same_session_differ(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, _ = establish(alice, bob)
    assert a.seal(storage_key, rng) != a.seal(storage_key, rng)


def test_restore_with_wrong_storage_key_is_sealed_state_error(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, _ = establish(alice, bob)
    sealed = a.seal(storage_key, rng)
    with pytest.raises(SealedStateError):
        PairwiseSession.restore(Secret(rng(32)), bob.username, bob.device_id, sealed)
    with pytest.raises(SealedStateError):
        OlmAccount.restore(Secret(rng(32)), alice.device_id, alice.olm.seal(storage_key, rng))


def test_restore_with_swapped_record_id_is_sealed_state_error(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, _ = establish(alice, bob)
    sealed_a = a.seal(storage_key, rng)  # a's peer is bob/laptop
    for user, device in (("bob", "phone"), ("alice", "laptop"), ("alice", "phone")):
        with pytest.raises(SealedStateError):
            PairwiseSession.restore(storage_key, user, device, sealed_a)
    with pytest.raises(SealedStateError):
        OlmAccount.restore(storage_key, bob.device_id, alice.olm.seal(storage_key, rng))


def test_restore_of_the_wrong_kind_or_damaged_record_is_sealed_state_error(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    a, _ = establish(alice, bob)
    sealed = a.seal(storage_key, rng)
    # An account sealed under the session's record id is still the wrong kind.
    with pytest.raises(SealedStateError):
        OlmAccount.restore(storage_key, "bob/laptop", sealed)
    flipped = sealed[:30] + bytes([sealed[30] ^ 1]) + sealed[31:]
    for damaged in (sealed[:-1], sealed[:40], b"", flipped):
        with pytest.raises(SealedStateError):
            PairwiseSession.restore(storage_key, bob.username, bob.device_id, damaged)


def test_account_seal_restore_keeps_unused_one_time_keys_usable(
    alice: Device, bob: Device, storage_key: Secret, rng: Random
) -> None:
    bundles = [bob.bundle() for _ in range(3)]  # published before the seal
    restored = OlmAccount.restore(storage_key, bob.device_id, bob.olm.seal(storage_key, rng))
    assert (restored.username, restored.device_id) == (bob.username, bob.device_id)
    assert restored.identity_key == bob.olm.identity_key
    assert restored.signing_key == bob.olm.signing_key
    bob.olm = restored
    out = PairwiseSession.outbound(alice.olm, bundles[1], now_ms=NOW_MS)
    inb, plaintext = PairwiseSession.inbound(
        restored, alice.certificate, out.encrypt(b"after restore"), now_ms=NOW_MS
    )
    assert plaintext == b"after restore"
    assert out.decrypt(inb.encrypt(b"ok")) == b"ok"
    # A used one-time key stays used across another seal/restore.
    again = OlmAccount.restore(storage_key, bob.device_id, restored.seal(storage_key, rng))
    carol = make_device("carol", "tab", rng)
    reuse = PairwiseSession.outbound(carol.olm, bundles[1], now_ms=NOW_MS).encrypt(b"replay")
    with pytest.raises(MessageDecryptionError):
        PairwiseSession.inbound(again, carol.certificate, reuse, now_ms=NOW_MS)
    # The other unused keys still work on the re-restored account.
    out2 = PairwiseSession.outbound(carol.olm, bundles[2], now_ms=NOW_MS)
    _, plaintext2 = PairwiseSession.inbound(
        again, carol.certificate, out2.encrypt(b"still fine"), now_ms=NOW_MS
    )
    assert plaintext2 == b"still fine"


# --- fallback key ----------------------------------------------------------------------


def test_session_opens_with_the_fallback_prekey(alice: Device, rng: Random) -> None:
    bob = make_device("bob", "laptop", rng, one_time_keys=0)
    fallback = bob.olm.new_fallback_key(bob.device_key)
    assert fallback.fallback
    bundle = bob.bundle(fallback)
    bundle.verify(now_ms=NOW_MS, account_key=bob.account_key.public)
    a, b = establish(alice, bob, bundle=bundle)
    assert b.decrypt(a.encrypt(b"via fallback")) == b"via fallback"
    # Unlike a one-time key, the fallback key serves a second initiator too.
    carol = make_device("carol", "tab", rng)
    c, b_c = establish(carol, bob, bundle=bundle)
    assert b_c.decrypt(c.encrypt(b"me too")) == b"me too"
    assert b_c.session_id != b.session_id


def test_fallback_flag_is_covered_by_the_prekey_signature(alice: Device, rng: Random) -> None:
    bob = make_device("bob", "laptop", rng, one_time_keys=0)
    fallback = bob.olm.new_fallback_key(bob.device_key)
    with pytest.raises(PrekeyBundleError):
        PairwiseSession.outbound(
            alice.olm, bob.bundle(replace(fallback, fallback=False)), now_ms=NOW_MS
        )


# --- padding --------------------------------------------------------------------------


def test_padding_hides_length_within_a_bucket(alice: Device, bob: Device) -> None:
    a, b = establish(alice, bob)
    lengths = {n: len(a.encrypt(bytes(n))) for n in (1, 10, 50)}
    assert len(set(lengths.values())) == 1, lengths
    assert len(a.encrypt(bytes(100))) > lengths[1]  # next bucket
    assert len(b.encrypt(b"x")) == lengths[1]


def _edge_sizes() -> list[int]:
    edges = [*PADDING_BUCKETS, 2 * PADDING_LARGE_STEP, MAX_PLAINTEXT_BYTES + 1]
    return sorted({max(0, e + d) for e in edges for d in (-2, -1, 0, 1)} | {0})


@settings(max_examples=120, deadline=None)
@given(
    size=st.sampled_from([s for s in _edge_sizes() if s <= MAX_PLAINTEXT_BYTES]),
    head=st.binary(max_size=8),
    fill=st.sampled_from([0x00, 0x80, 0x01, 0xFF]),
    last=st.sampled_from([0x00, 0x80, 0x01]),
)
def test_unpad_pad_round_trips_across_bucket_edges(
    size: int, head: bytes, fill: int, last: int
) -> None:
    content = (head + bytes([fill]) * size)[: max(size - 1, 0)] + bytes([last])[: min(size, 1)]
    assert len(content) == size
    padded = pad(content)
    assert len(padded) == padded_size(size) > size
    assert len(padded) in PADDING_BUCKETS or len(padded) % PADDING_LARGE_STEP == 0
    assert unpad(padded) == content


@pytest.mark.parametrize("bad", [b"", bytes(64), b"abc", b"abc\x81" + bytes(60)])
def test_unpad_rejects_missing_marker(bad: bytes) -> None:
    with pytest.raises(DecodeError):
        unpad(bad)


def test_plaintext_over_the_maximum_is_a_usage_error(alice: Device, bob: Device) -> None:
    a, b = establish(alice, bob)
    with pytest.raises(UsageError):
        a.encrypt(bytes(MAX_PLAINTEXT_BYTES + 1))
    # The limit itself is accepted, and the refusal left the chain untouched.
    big = bytes(MAX_PLAINTEXT_BYTES)
    assert b.decrypt(a.encrypt(big)) == big


# --- envelope ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"\x01",
        b"\x02\x01\x00",  # unknown version
        b"\x01\x02\x00",  # unknown message type
        b"\x01\x01\x05abc",  # truncated body
        b"\x01\x01\x00\x00",  # trailing byte
        b"\x01\x01\x40\x01x",  # non-minimal length
        b"\xff" * 40,
    ],
)
def test_envelope_decode_of_junk_is_a_decode_error(junk: bytes) -> None:
    with pytest.raises(DecodeError):
        OlmEnvelope.decode(junk)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_envelope_decode_accepts_exactly_or_raises_decode_error(data: bytes) -> None:
    try:
        envelope = OlmEnvelope.decode(data)
    except DecodeError:
        return
    assert envelope.encode() == data


def test_session_decrypt_of_junk_is_a_typed_error(alice: Device, bob: Device) -> None:
    a, b = establish(alice, bob)
    with pytest.raises(DecodeError):
        b.decrypt(b"\x07junk")
    for body in (b"", b"\x03", bytes(80)):
        envelope = OlmEnvelope(message_type=NORMAL_MESSAGE, body=body).encode()
        with pytest.raises(MessageDecryptionError):
            b.decrypt(envelope)
    assert b.decrypt(a.encrypt(b"still fine")) == b"still fine"


def test_session_and_account_reprs_are_redacted(alice: Device, bob: Device) -> None:
    a, _ = establish(alice, bob)
    assert "redacted" in repr(a)
    assert "redacted" in repr(alice.olm)
    assert alice.olm.identity_key.hex()[:16] not in repr(alice.olm)
