"""RFC 9420 §9 secret tree: single-use keys, bounded out-of-order, transactional receive."""

from __future__ import annotations

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import RemoteError, UsageError
from sottovoce.limits import MLS_MAX_FORWARD_RATCHET, MLS_MAX_SKIPPED_KEYS
from sottovoce.mls.common import ContentType
from sottovoce.mls.secret_tree import (
    GenerationExpired,
    GenerationTooFar,
    RatchetType,
    ReplayedGeneration,
    SecretTree,
)

SUITE = cipher_suite(1)
APP = RatchetType.APPLICATION
HS = RatchetType.HANDSHAKE
ENC = bytes(range(32))


def _tree(n_leaves: int = 4) -> SecretTree:
    return SecretTree(SUITE, ENC, n_leaves)


def _state(tree: SecretTree, leaf: int) -> tuple[object, ...]:
    return (
        tree.held_nodes(),
        tree.ratchet_position(leaf, APP),
        tree.ratchet_position(leaf, HS),
    )


def test_rfc9420_9_2_replayed_generation_is_rejected() -> None:
    tree = _tree()
    tree.key_for(1, APP, 0)
    with pytest.raises(ReplayedGeneration):
        tree.peek(1, APP, 0)
    # A skipped key is also single-use.
    tree.key_for(1, APP, 5)
    tree.key_for(1, APP, 3)
    with pytest.raises(ReplayedGeneration):
        tree.key_for(1, APP, 3)
    with pytest.raises(ReplayedGeneration):
        tree.key_for(1, APP, 5)
    assert issubclass(ReplayedGeneration, RemoteError)


def test_rfc9420_9_2_pending_key_consumed_twice_is_a_replay() -> None:
    tree = _tree()
    first = tree.peek(2, HS, 4)
    second = tree.peek(2, HS, 4)
    assert first.key == second.key and first.nonce == second.nonce
    first.consume()
    with pytest.raises(ReplayedGeneration):
        second.consume()


def test_rfc9420_9_generation_too_far_ahead_is_rejected() -> None:
    tree = _tree()
    before = _state(tree, 0)
    with pytest.raises(GenerationTooFar):
        tree.peek(0, APP, MLS_MAX_FORWARD_RATCHET + 1)
    assert _state(tree, 0) == before
    # Exactly the limit is still reachable; the limit then counts from the new position.
    tree.key_for(0, APP, MLS_MAX_FORWARD_RATCHET)
    with pytest.raises(GenerationTooFar):
        tree.peek(0, APP, 2 * MLS_MAX_FORWARD_RATCHET + 2)


def test_peeked_but_not_consumed_key_leaves_state_unchanged() -> None:
    tree = _tree()
    before = _state(tree, 3)
    pending = tree.peek(3, APP, 7)
    assert _state(tree, 3) == before  # nothing derived into the tree, nothing deleted
    # The same key is available again, and a fresh tree agrees on it.
    again = tree.peek(3, APP, 7)
    assert again.key == pending.key
    assert _tree().key_for(3, APP, 7) == (pending.key, pending.nonce)
    # After consumption the state moves; the other generations are still usable.
    pending.consume()
    assert _state(tree, 3) != before
    assert tree.ratchet_position(3, APP) == (8, tuple(range(7)))


def test_stale_pending_key_replans_against_the_current_tree() -> None:
    tree = _tree()
    pending = tree.peek(0, APP, 5)
    tree.key_for(0, APP, 2)  # the tree changes between peek and consume
    tree.key_for(1, HS, 0)
    pending.consume()
    assert tree.ratchet_position(0, APP) == (6, (0, 1, 3, 4))
    with pytest.raises(ReplayedGeneration):
        tree.peek(0, APP, 5)


def test_rfc9420_9_2_consumed_secrets_are_deleted() -> None:
    tree = _tree(4)  # nodes 0..6, root 3
    assert tree.held_nodes() == {3}
    tree.key_for(0, APP, 0)
    # Root and node 1 were consumed to reach leaf 0; their other children remain.
    assert tree.held_nodes() == {2, 5}
    assert tree.ratchet_position(0, APP) == (1, ())
    assert tree.ratchet_position(0, HS) == (0, ())  # opened, unused
    tree.key_for(3, HS, 0)
    assert tree.held_nodes() == {2, 4}
    tree.key_for(1, HS, 0)
    tree.key_for(2, HS, 0)
    assert tree.held_nodes() == frozenset()


def test_skipped_keys_are_bounded_and_old_ones_expire() -> None:
    tree = _tree()
    jump = MLS_MAX_SKIPPED_KEYS + 50
    tree.key_for(1, APP, jump)
    generation, skipped = tree.ratchet_position(1, APP)
    assert generation == jump + 1
    assert skipped == tuple(range(jump - MLS_MAX_SKIPPED_KEYS, jump))
    with pytest.raises(GenerationExpired):
        tree.peek(1, APP, 0)
    tree.key_for(1, APP, jump - 1)  # inside the window
    # Filling the window further evicts the oldest keys first.
    tree.key_for(1, APP, jump + 11)
    _, skipped = tree.ratchet_position(1, APP)
    assert len(skipped) == MLS_MAX_SKIPPED_KEYS
    with pytest.raises(GenerationExpired):
        tree.peek(1, APP, jump - MLS_MAX_SKIPPED_KEYS)


def test_rfc9420_6_3_sender_and_receiver_agree_and_never_reuse_a_generation() -> None:
    sender, receiver = _tree(), _tree()
    seen = set()
    for expected in range(3):
        generation, key, nonce = sender.next_key(2, APP)
        assert generation == expected
        seen.add(key)
        assert receiver.key_for(2, APP, generation) == (key, nonce)
    assert len(seen) == 3
    # Handshake and application ratchets are independent.
    assert sender.next_key(2, HS)[0] == 0
    assert sender.next_key(2, APP)[0] == 3


def test_out_of_range_input_is_a_usage_error() -> None:
    tree = _tree(4)
    with pytest.raises(UsageError):
        tree.peek(4, APP, 0)
    with pytest.raises(UsageError):
        tree.peek(0, APP, 1 << 32)
    with pytest.raises(UsageError):
        SecretTree(SUITE, ENC, 3)  # RFC 9420 trees are full
    with pytest.raises(UsageError):
        SecretTree(SUITE, ENC[:16], 4)


def test_rfc9420_6_3_1_content_type_selects_the_ratchet() -> None:
    assert RatchetType.for_content(ContentType.APPLICATION) is APP
    assert RatchetType.for_content(ContentType.PROPOSAL) is HS
    assert RatchetType.for_content(ContentType.COMMIT) is HS


def test_reprs_hide_key_material() -> None:
    tree = _tree()
    pending = tree.peek(0, APP, 0)
    for text in (repr(tree), repr(pending)):
        assert pending.key.hex() not in text
        assert ENC.hex() not in text
