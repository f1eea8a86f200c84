"""The room audit trail (protocol/audit.py, docs/protocol.md §Audit trail): hash chain,
signatures, epoch binding.

Each tamper (delete, reorder, edit, forge, wrong binding, wrong room,
truncation of what a member already saw) must fail verification with an
:class:`AuditChainError` naming the right entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.crypto import labels
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.crypto.suite import SUPPORTED_SUITES, cipher_suite
from sottovoce.errors import DecodeError, RemoteError, UsageError
from sottovoce.limits import (
    AUDIT_MAX_ENTRY_BYTES,
    AUDIT_MAX_SUBJECTS,
    MAX_ROOM_AUDIT_ENTRY_BYTES,
)
from sottovoce.protocol import audit
from sottovoce.protocol.audit import (
    ZERO_HASH,
    AuditAction,
    AuditChainError,
    AuditEntry,
    AuditSubject,
    chain_head,
    entry_hash,
    make_entry,
    verify_chain,
)
from sottovoce.secret import Secret
from tests.conftest import deterministic_rng

ROOM = "room:" + "ab" * 16
OTHER_ROOM = "room:" + "cd" * 16
NOW = 1_700_000_000_000
N = 10

ALICE = SigningKey(SignatureScheme.ED25519, bytes([1]) * 32)
BOB = SigningKey(SignatureScheme.ED25519, bytes([2]) * 32)
MALLORY = SigningKey(SignatureScheme.ED25519, bytes([3]) * 32)
ACTORS = {0: ("alice", "phone", ALICE), 1: ("bob", "laptop", BOB)}


def auth(epoch: int) -> Secret:
    """The epoch authenticator every member of ``epoch`` shares (here: made up)."""
    return Secret(bytes([epoch + 100]) * 32)


# entry i: (epoch, action, actor leaf, subjects)
PLAN: list[tuple[int, AuditAction, int, tuple[tuple[str, str], ...]]] = [
    (0, AuditAction.ROOM_CREATED, 0, ()),
    (1, AuditAction.MEMBER_ADDED, 0, (("bob", "laptop"),)),
    (1, AuditAction.TOKEN_CREATED, 1, ()),
    (2, AuditAction.MEMBER_JOINED, 1, (("carol", "tab"),)),
    (2, AuditAction.CALL_STARTED, 0, ()),
    (2, AuditAction.RECORDING_ON, 1, ()),
    (2, AuditAction.RECORDING_OFF, 1, ()),
    (2, AuditAction.CALL_STOPPED, 0, ()),
    (3, AuditAction.MEMBER_REMOVED, 0, (("carol", "tab"), ("dave", "d1"))),
    (4, AuditAction.TOKEN_ROTATED, 1, ()),
]


def build_chain(n: int = N) -> list[bytes]:
    out: list[bytes] = []
    for i, (epoch, action, leaf, subjects) in enumerate(PLAN[:n]):
        user, device, key = ACTORS[leaf]
        entry = make_entry(
            signing_key=key,
            suite=1,
            prev=out[-1] if out else None,
            room_id=ROOM,
            epoch=epoch,
            epoch_authenticator=auth(epoch),
            action=action,
            actor_user_id=user,
            actor_device_id=device,
            actor_leaf_index=leaf,
            now_ms=NOW + i,
            subjects=subjects,
        )
        out.append(entry.encode())
    return out


CHAIN = build_chain()
AUTHS = {e: auth(e) for e in range(5)}
MEMBER_KEYS = {e: {0: ALICE.verify_key.data, 1: BOB.verify_key.data} for e in range(5)}


def resign(
    entry: AuditEntry,
    key: SigningKey,
    *,
    authenticator: Secret | None = None,
    state_key: bool = True,
    **changes: object,
) -> bytes:
    """``entry`` with ``changes``, re-bound and re-signed by ``key`` (a validly made
    entry, as a member holding ``key`` could make it)."""
    e = dataclasses.replace(entry, **changes)  # type: ignore[arg-type]
    if state_key:
        e = dataclasses.replace(e, actor_signature_key=key.verify_key.data)
    binding = audit.compute_binding(1, authenticator or auth(e.epoch), e.tbs())
    e = dataclasses.replace(e, binding=binding)
    sig = labels.sign_with_label(key, b"sottovoce audit entry", e.signed_content())
    return dataclasses.replace(e, signature=sig).encode()


def relink(entries: list[bytes], start: int) -> list[bytes]:
    """Re-make entries from ``start`` on so their prev_hash links again (a member
    colluding with the server could do this for entries it signs itself)."""
    out = list(entries[:start])
    for data in entries[start:]:
        e = AuditEntry.decode(data)
        key = ACTORS[e.actor_leaf_index][2]
        out.append(resign(e, key, prev_hash=entry_hash(out[-1]) if out else ZERO_HASH))
    return out


def fails_at(entries: list[bytes], index: int, words: str, **kwargs: object) -> AuditChainError:
    kw: dict[str, object] = {"room_id": ROOM, "authenticators": AUTHS}
    kw.update(kwargs)
    with pytest.raises(AuditChainError) as info:
        verify_chain(entries, **kw)  # type: ignore[arg-type]
    assert info.value.index == index, str(info.value)
    assert str(info.value).startswith(f"audit entry #{index}: ")
    assert words in info.value.reason, info.value.reason
    return info.value


# --- the good chain ----------------------------------------------------------------------


def test_a_chain_of_ten_entries_verifies_with_every_check_on() -> None:
    entries = verify_chain(
        CHAIN,
        room_id=ROOM,
        authenticators=AUTHS,
        known_head=chain_head(CHAIN),
        member_keys=MEMBER_KEYS,
    )
    assert [e.index for e in entries] == list(range(N))
    assert [e.action for e in entries] == [p[1] for p in PLAN]
    assert entries[8].subjects == (AuditSubject("carol", "tab"), AuditSubject("dave", "d1"))
    assert entries[0].prev_hash == ZERO_HASH
    for a, b in zip(CHAIN, entries[1:], strict=False):
        assert b.prev_hash == entry_hash(a)


def test_verification_without_optional_knowledge_still_checks_links_and_signatures() -> None:
    assert len(verify_chain(CHAIN, room_id=ROOM)) == N
    assert verify_chain([], room_id=ROOM) == []


def test_server_side_linkage_uses_only_decode_index_prev_hash_and_entry_hash() -> None:
    # What the server does on append (rooms-protocol.md "Audit trail").
    stored: list[bytes] = []
    for data in CHAIN:
        e = AuditEntry.decode(data)
        assert e.index == len(stored)
        assert e.prev_hash == (entry_hash(stored[-1]) if stored else ZERO_HASH)
        assert e.room_id == ROOM
        stored.append(data)
    # A competing entry made from a stale head no longer links.
    stale = AuditEntry.decode(CHAIN[5])
    assert stale.index != len(stored)


def test_entry_hash_is_domain_separated_sha256() -> None:
    domain = b"sottovoce audit entry hash v1"
    assert entry_hash(CHAIN[0]) == hashlib.sha256(domain + CHAIN[0]).digest()
    assert entry_hash(CHAIN[0]) != hashlib.sha256(CHAIN[0]).digest()


def test_entries_hold_no_secret_and_the_binding_does_not_equal_the_authenticator() -> None:
    for data in CHAIN:
        e = AuditEntry.decode(data)
        assert auth(e.epoch).expose() not in data
        assert audit.binding_key(1, auth(e.epoch)).expose() not in data


# --- tampering: each fails naming the right entry -----------------------------------------


def test_deleting_the_first_entry_fails_at_0() -> None:
    fails_at(CHAIN[1:], 0, "missing")


@pytest.mark.parametrize("k", [1, 4, 8])
def test_deleting_a_middle_entry_fails_naming_it(k: int) -> None:
    fails_at(CHAIN[:k] + CHAIN[k + 1 :], k, "missing")


def test_deleting_the_last_entry_is_caught_by_the_known_head() -> None:
    head = chain_head(CHAIN)
    assert verify_chain(CHAIN[:-1], room_id=ROOM)  # without the head nothing can tell
    fails_at(CHAIN[:-1], N - 1, "chain ends before", known_head=head)


def test_truncating_several_entries_names_the_first_missing_one() -> None:
    head = chain_head(CHAIN[:8])
    fails_at(CHAIN[:5], 5, "chain ends before", known_head=head)


def test_entries_appended_after_the_known_head_are_accepted() -> None:
    head = chain_head(CHAIN[:6])
    assert len(verify_chain(CHAIN, room_id=ROOM, known_head=head)) == N
    assert chain_head([]) is None
    for bad in ((-1, ZERO_HASH), (0, b"short")):
        with pytest.raises(UsageError, match="known_head"):
            verify_chain(CHAIN, room_id=ROOM, known_head=bad)


@pytest.mark.parametrize("k", [0, 3, 8])
def test_reordering_two_entries_fails_at_the_first(k: int) -> None:
    swapped = list(CHAIN)
    swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
    fails_at(swapped, k, "missing")


def test_reordering_even_when_relinked_by_a_colluding_signer_fails() -> None:
    # Swap 4 and 5, renumber and relink them: signatures are valid, but the
    # epochs/hashes no longer match the head the member saw.
    e4, e5 = AuditEntry.decode(CHAIN[4]), AuditEntry.decode(CHAIN[5])
    forged = list(CHAIN[:4])
    forged.append(CHAIN[5])
    forged.append(CHAIN[4])
    forged[4] = resign(dataclasses.replace(e5, index=4), BOB)
    forged[5] = resign(dataclasses.replace(e4, index=5), ALICE)
    forged += CHAIN[6:]
    forged = relink(forged, 4)
    fails_at(forged, 4, "differs", known_head=chain_head(CHAIN[:5]))


@pytest.mark.parametrize("k", [0, 4, N - 1])
def test_editing_any_byte_of_an_entry_fails_naming_it(k: int) -> None:
    original = CHAIN[k]
    for pos in range(len(original)):
        for flip in (0x01, 0x80):
            edited = bytearray(original)
            edited[pos] ^= flip
            chain = [*CHAIN[:k], bytes(edited), *CHAIN[k + 1 :]]
            with pytest.raises(AuditChainError) as info:
                verify_chain(chain, room_id=ROOM)
            assert info.value.index == k, (pos, flip, str(info.value))


def test_a_signature_by_another_key_does_not_verify() -> None:
    e = AuditEntry.decode(CHAIN[6])
    forged = resign(e, MALLORY, state_key=False)  # claims Bob's key, signed by Mallory
    fails_at([*CHAIN[:6], forged, *CHAIN[7:]], 6, "signature does not verify")


def test_an_entry_signed_by_a_non_member_key_fails_the_member_key_check() -> None:
    # Mallory states her own key: the signature verifies, but leaf 1 at that
    # epoch holds Bob's key.
    e = AuditEntry.decode(CHAIN[6])
    forged = resign(e, MALLORY)
    chain = [*CHAIN[:6], forged, *CHAIN[7:]]
    fails_at(chain, 7, "does not link")  # the next entry's link breaks anyway
    fails_at(chain[:7], 6, "signature key is not that of leaf 1", member_keys=MEMBER_KEYS)


def test_an_actor_leaf_that_is_not_a_member_at_that_epoch_fails() -> None:
    keys = {e: dict(v) for e, v in MEMBER_KEYS.items()}
    del keys[2][1]  # bob was not at leaf 1 in epoch 2, by this member's view
    fails_at(CHAIN, 3, "actor leaf 1 is not a member at epoch 2", member_keys=keys)


def test_wrong_binding_fails_for_a_member_who_knows_the_epoch() -> None:
    e = AuditEntry.decode(CHAIN[N - 1])
    forked = resign(e, BOB, authenticator=Secret(b"\x99" * 32))  # another view of epoch 4
    chain = [*CHAIN[:-1], forked]
    fails_at(chain, N - 1, "not bound to this member's view of epoch 4")
    # A member that never knew epoch 4 cannot check the binding (documented).
    assert verify_chain(chain, room_id=ROOM, authenticators={0: auth(0)})


def test_strict_mode_refuses_entries_of_epochs_the_member_has_not_seen() -> None:
    # The server signs with a key of its own and claims an epoch the member does not
    # know: the signature verifies, only the (missing) binding can tell.
    server_key = SigningKey(SignatureScheme.ED25519, bytes([9]) * 32)
    forged = resign(
        AuditEntry.decode(CHAIN[-1]),
        server_key,
        index=N,
        prev_hash=entry_hash(CHAIN[-1]),
        epoch=9,
        action=AuditAction.RECORDING_OFF,
        authenticator=Secret(b"?" * 32),
    )
    chain = [*CHAIN, forged]
    assert verify_chain(chain, room_id=ROOM, authenticators=AUTHS)  # not strict: passes
    fails_at(chain, N, "bound to epoch 9, which this member has not seen", strict=True)
    assert len(verify_chain(CHAIN, room_id=ROOM, authenticators=AUTHS, strict=True)) == N
    # A member who joined at epoch 2 checks epochs 2-4 strictly; the earlier entries
    # are authenticated by the chain link to entry #3, the first one bound to epoch 2.
    joined = {e: auth(e) for e in (2, 3, 4)}
    assert len(verify_chain(CHAIN, room_id=ROOM, authenticators=joined, strict=True)) == N
    gap = {e: auth(e) for e in (2, 4)}  # missed epoch 3: entry #8 is unverifiable
    fails_at(CHAIN, 8, "bound to epoch 3", authenticators=gap, strict=True)
    with pytest.raises(UsageError, match="strict"):
        verify_chain(CHAIN, room_id=ROOM, strict=True)


def test_a_wrong_authenticator_fails_at_the_first_entry_of_that_epoch() -> None:
    auths = dict(AUTHS)
    auths[2] = Secret(b"\x42" * 32)
    fails_at(CHAIN, 3, "epoch 2", authenticators=auths)


def test_wrong_room_fails_at_0_and_a_spliced_foreign_entry_fails_naming_it() -> None:
    fails_at(CHAIN, 0, "another room", room_id=OTHER_ROOM)
    e = AuditEntry.decode(CHAIN[3])
    foreign = resign(e, BOB, room_id=OTHER_ROOM)
    fails_at([*CHAIN[:3], foreign, *CHAIN[4:]], 3, "another room")


def test_an_epoch_going_backwards_fails() -> None:
    e = AuditEntry.decode(CHAIN[4])
    back = resign(e, ALICE, epoch=1)
    fails_at(relink([*CHAIN[:4], back, *CHAIN[5:]], 4), 4, "epoch goes backwards")


def test_a_rewritten_known_head_fails_even_with_valid_signatures() -> None:
    # The server (with one colluding member) substitutes a validly signed entry.
    e = AuditEntry.decode(CHAIN[5])
    other = resign(e, BOB, action=AuditAction.RECORDING_OFF)
    chain = relink([*CHAIN[:5], other, *CHAIN[6:]], 5)
    assert verify_chain(chain, room_id=ROOM, authenticators=AUTHS)  # consistent by itself
    fails_at(chain, 5, "differs from the entry", known_head=chain_head(CHAIN[:6]))


def test_garbage_and_unsupported_suite_entries_fail_naming_them() -> None:
    fails_at([*CHAIN[:2], b"\x00\x01garbage"], 2, "does not decode")
    e = AuditEntry.decode(CHAIN[2])
    unsupported = dataclasses.replace(e, cipher_suite=0x7777).encode()
    fails_at([*CHAIN[:2], unsupported], 2, "unsupported cipher suite")
    bad_key = dataclasses.replace(e, actor_signature_key=b"\x01\x02").encode()
    fails_at([*CHAIN[:2], bad_key], 2, "malformed")


def test_audit_chain_error_is_a_remote_error_with_a_wire_code() -> None:
    err = AuditChainError(3, "signature does not verify")
    assert isinstance(err, RemoteError)
    assert str(err) == "audit entry #3: signature does not verify"
    assert err.code == "audit_chain_invalid" and not err.retryable


# --- construction ------------------------------------------------------------------------


def test_make_entry_links_to_prev_and_rejects_misuse() -> None:
    e = AuditEntry.decode(CHAIN[3])
    assert e.index == 3 and e.prev_hash == entry_hash(CHAIN[2])
    p256 = cipher_suite(2).generate_signing_key(deterministic_rng(b"p256"))

    def build(**over: object) -> AuditEntry:
        kw: dict[str, object] = {
            "signing_key": ALICE,
            "suite": 1,
            "prev": CHAIN[-1],
            "room_id": ROOM,
            "epoch": 4,
            "epoch_authenticator": auth(4),
            "action": AuditAction.CALL_STARTED,
            "actor_user_id": "alice",
            "actor_device_id": "phone",
            "actor_leaf_index": 0,
            "now_ms": NOW,
        }
        kw.update(over)
        return make_entry(**kw)  # type: ignore[arg-type]

    assert build().index == N
    with pytest.raises(UsageError, match="signature scheme"):
        build(signing_key=p256)
    with pytest.raises(UsageError, match="another room"):
        build(room_id=OTHER_ROOM)
    # The stored head is not known to be authentic yet (a poisoned one may claim any
    # epoch): an entry follows it whatever its epoch; verification orders epochs
    # among authentic entries only (test_audit_trail.py).
    assert build(epoch=3).index == N
    with pytest.raises(UsageError, match="not an encoded"):
        build(prev=b"junk")
    with pytest.raises(UsageError, match="id alphabet"):
        build(prev=None, room_id="room with spaces")
    with pytest.raises(UsageError, match="subjects"):
        build(subjects=[("u", f"d{i}") for i in range(AUDIT_MAX_SUBJECTS + 1)])
    with pytest.raises(UsageError, match="authenticator"):
        build(epoch_authenticator=b"")
    # The largest entry the format allows (128 subjects of 128-character ids) is built,
    # decodes, and fits the wire limit the server applies.
    long_id = "u" * 128
    big = build(subjects=[(long_id, f"{i:0128d}") for i in range(AUDIT_MAX_SUBJECTS)])
    assert AuditEntry.decode(big.encode()) == big
    assert len(big.encode()) <= MAX_ROOM_AUDIT_ENTRY_BYTES == AUDIT_MAX_ENTRY_BYTES


@pytest.mark.parametrize("suite_id", [2, 4, 7])
def test_other_suites_sign_and_bind_with_their_own_scheme_and_kdf(suite_id: int) -> None:
    suite = cipher_suite(suite_id)
    key = suite.generate_signing_key(deterministic_rng(bytes([suite_id])))
    authenticator = Secret(bytes([7]) * suite.nh)
    e = make_entry(
        signing_key=key,
        suite=suite,
        prev=None,
        room_id=ROOM,
        epoch=0,
        epoch_authenticator=authenticator,
        action=AuditAction.ROOM_CREATED,
        actor_user_id="alice",
        actor_device_id="phone",
        actor_leaf_index=0,
        now_ms=NOW,
    )
    assert e.cipher_suite == suite_id
    assert verify_chain([e.encode()], room_id=ROOM, authenticators={0: authenticator})
    fails_at([e.encode()], 0, "not bound", authenticators={0: Secret(bytes(suite.nh))})


def test_constructions_match_rfc9420_labelled_operations_and_the_suite_table() -> None:
    e = AuditEntry.decode(CHAIN[1])
    # SignWithLabel (RFC 9420 §5.1.2): Ed25519 is deterministic, so bytes must agree.
    expected_sig = labels.sign_with_label(ALICE, b"sottovoce audit entry", e.signed_content())
    assert e.signature == expected_sig
    labels.verify_with_label(
        ALICE.verify_key, b"sottovoce audit entry", e.signed_content(), e.signature
    )
    for suite_id in SUPPORTED_SUITES:
        suite = cipher_suite(suite_id)
        assert audit._scheme_and_hash(suite_id) == (suite.signature, suite.hash)
        a = bytes(range(suite.nh))
        assert audit.binding_key(suite_id, a).expose() == labels.expand_with_label(
            suite, a, b"sottovoce audit binding", b"", 32
        )


def test_the_module_does_not_load_aead_hpke_or_mls_so_the_server_may_import_it() -> None:
    code = (
        "import sys, sottovoce.protocol.audit\n"
        "bad = [m for m in sys.modules if m.startswith(('sottovoce.mls', 'sottovoce.pairwise',"
        " 'sottovoce.crypto.aead', 'sottovoce.crypto.hpke', 'sottovoce.crypto.sealed',"
        " 'sottovoce.crypto.suite', 'vodozemac'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_real_mls_group_signs_and_verifies_its_trail() -> None:
    from sottovoce.mls.group import Group, generate_key_package
    from sottovoce.mls.messages import Credential

    rng = deterministic_rng(b"audit-mls")
    suite = cipher_suite(1)
    a_key, b_key = suite.generate_signing_key(rng), suite.generate_signing_key(rng)
    alice = Group.create(
        suite,
        credential=Credential.basic(b"alice"),
        signing_key=a_key,
        rng=rng,
        now_ms=NOW,
        group_id=bytes.fromhex(ROOM.removeprefix("room:")),
    )
    trail = [
        make_entry(
            signing_key=a_key,
            suite=suite,
            prev=None,
            room_id=ROOM,
            epoch=alice.epoch,
            epoch_authenticator=alice.epoch_authenticator,
            action=AuditAction.ROOM_CREATED,
            actor_user_id="alice",
            actor_device_id="phone",
            actor_leaf_index=alice.own_leaf_index,
            now_ms=NOW,
        ).encode()
    ]
    kp, priv = generate_key_package(suite, Credential.basic(b"bob"), b_key, rng, NOW)
    bundle = alice.add_members([kp], rng=rng)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    # Bound to the epoch the commit creates, signed with the committer's leaf key.
    trail.append(
        make_entry(
            signing_key=a_key,
            suite=suite,
            prev=trail[-1],
            room_id=ROOM,
            epoch=alice.epoch,
            epoch_authenticator=alice.epoch_authenticator,
            action=AuditAction.MEMBER_ADDED,
            actor_user_id="alice",
            actor_device_id="phone",
            actor_leaf_index=alice.own_leaf_index,
            now_ms=NOW + 1,
            subjects=[("bob", "laptop")],
        ).encode()
    )
    bob = Group.join_from_welcome(bundle.welcome, kp, priv, signing_key=b_key, now_ms=NOW)
    # Bob knows epoch 1 only: he checks that binding and the actor's key in his tree.
    entries = verify_chain(
        trail,
        room_id=ROOM,
        authenticators={bob.epoch: bob.epoch_authenticator},
        member_keys={bob.epoch: {m.index: m.signature_key for m in bob.members()}},
    )
    assert [e.action for e in entries] == [AuditAction.ROOM_CREATED, AuditAction.MEMBER_ADDED]


# --- codec -------------------------------------------------------------------------------

_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@/+=-",
    min_size=1,
    max_size=128,
)
_entries = st.builds(
    AuditEntry,
    index=st.integers(0, 2**64 - 1),
    prev_hash=st.binary(min_size=32, max_size=32),
    room_id=_ids,
    epoch=st.integers(0, 2**64 - 1),
    action=st.sampled_from(list(AuditAction)),
    subjects=st.lists(st.tuples(_ids, _ids).map(lambda t: AuditSubject(*t)), max_size=5).map(tuple),
    actor_user_id=_ids,
    actor_device_id=_ids,
    actor_leaf_index=st.integers(0, 2**32 - 1),
    cipher_suite=st.integers(0, 0xFFFF),
    actor_signature_key=st.binary(min_size=1, max_size=256),
    time_ms=st.integers(0, 2**64 - 1),
    binding=st.binary(min_size=32, max_size=32),
    signature=st.binary(max_size=256),
)


@settings(max_examples=200, deadline=None)
@given(_entries)
def test_encode_decode_round_trip(entry: AuditEntry) -> None:
    data = entry.encode()
    assert AuditEntry.decode(data) == entry
    assert AuditEntry.decode(data).encode() == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_raises_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        AuditEntry.decode(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_entries_raise_decode_error_only(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(CHAIN)))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        AuditEntry.decode(bytes(raw))


def test_every_truncation_and_any_trailing_byte_raise_decode_error() -> None:
    data = CHAIN[8]
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            AuditEntry.decode(data[:n])
    with pytest.raises(DecodeError, match="trailing"):
        AuditEntry.decode(data + b"\x00")


def test_decode_rejects_bad_versions_actions_ids_and_oversize_input() -> None:
    data = bytearray(CHAIN[0])
    data[1] = 2  # version
    with pytest.raises(DecodeError, match="version"):
        AuditEntry.decode(bytes(data))
    e = AuditEntry.decode(CHAIN[0])
    raw = e.encode()
    action_at = 2 + 8 + 32 + 1 + len(ROOM) + 8
    assert raw[action_at] == AuditAction.ROOM_CREATED
    for bad_action in (0, max(AuditAction) + 1, 255):
        with pytest.raises(DecodeError, match="action"):
            AuditEntry.decode(raw[:action_at] + bytes([bad_action]) + raw[action_at + 1 :])
    room_at = 2 + 8 + 32 + 1
    for bad_char in (b" ", b"\xff", b"\n"):
        with pytest.raises(DecodeError, match="identifier"):
            AuditEntry.decode(raw[:room_at] + bad_char + raw[room_at + 1 :])
    with pytest.raises(DecodeError, match="too large"):
        AuditEntry.decode(bytes(AUDIT_MAX_ENTRY_BYTES + 1))
    with pytest.raises(UsageError):
        AuditEntry.decode("text")  # type: ignore[arg-type]
