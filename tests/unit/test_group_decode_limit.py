"""The decode limit of joins (limits.MAX_GROUP_DECODE_BYTES): a Welcome, GroupInfo or
ratchet tree of the largest room in the suite with the largest keys decodes; nothing
larger does, and every other decode keeps MAX_DECODE_BYTES.

In the hybrid X-Wing suite every tree node holds a 1,216-byte key, so the Welcome of
a 1,000-member room is ~2.6 MB: over MAX_DECODE_BYTES (2 MiB), which every decode had
used. The limit is derived from MAX_ROOM_MEMBERS and the largest suite's key size;
these tests check the arithmetic against real encodings and join one real X-Wing
room whose Welcome is just over the old limit (bench/mls.py measures 1,000).
"""

from __future__ import annotations

import os
import time

import pytest
from bench.mls import _member, build_full

from sottovoce.codec.tls import Writer, decode
from sottovoce.crypto import xwing
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.crypto.suite import SUPPORTED_SUITES, cipher_suite
from sottovoce.errors import DecodeError
from sottovoce.limits import (
    MAX_DECODE_BYTES,
    MAX_GROUP_DECODE_BYTES,
    MAX_MLS_KEM_PUBLIC_KEY_BYTES,
    MAX_RATCHET_TREE_BYTES,
    MAX_ROOM_MEMBERS,
)
from sottovoce.mls.group import Group, GroupConfig, InvalidWelcome, generate_key_package
from sottovoce.mls.messages import (
    Credential,
    Node,
    ParentNode,
    decode_ratchet_tree,
    read_ratchet_tree,
    write_ratchet_tree,
)

XWING = cipher_suite(XWING_SUITE_ID)
NOW = int(time.time() * 1000)


def _largest_tree() -> list[Node | None]:
    """A ratchet tree of MAX_ROOM_MEMBERS X-Wing leaves (real, of the size a room's
    leaves have: the longest user/device credential) with a key on every parent."""
    sk = XWING.generate_signing_key(os.urandom)
    identity = b"u" * 32 + b"/" + b"d" * 64
    kp, _ = generate_key_package(XWING, Credential.basic(identity), sk, os.urandom, NOW)
    parent = ParentNode(encryption_key=os.urandom(xwing.PUBLIC_KEY_SIZE),
                        parent_hash=os.urandom(32), unmerged_leaves=tuple(range(8)))
    nodes: list[Node | None] = []
    for _ in range(MAX_ROOM_MEMBERS):
        nodes += [kp.leaf_node, parent]
    return nodes[:-1]


def test_the_limit_is_the_largest_key_times_the_largest_room() -> None:
    largest = max(
        len(cipher_suite(s).generate_hpke_key_pair(os.urandom).public) for s in SUPPORTED_SUITES
    )
    assert largest == MAX_MLS_KEM_PUBLIC_KEY_BYTES == xwing.PUBLIC_KEY_SIZE
    w = Writer()
    write_ratchet_tree(w, _largest_tree())
    tree = w.getvalue()
    # The largest tree is over the general limit, within the join limit, with room to
    # spare for what a Welcome adds around it.
    assert MAX_DECODE_BYTES < len(tree) <= MAX_RATCHET_TREE_BYTES < MAX_GROUP_DECODE_BYTES
    assert len(decode_ratchet_tree(tree)) == 2 * MAX_ROOM_MEMBERS - 1
    with pytest.raises(DecodeError, match="too large"):  # what every decode had done
        decode(read_ratchet_tree, tree)


def test_nothing_over_the_join_limit_decodes() -> None:
    with pytest.raises(DecodeError, match="too large"):
        decode_ratchet_tree(bytes(MAX_GROUP_DECODE_BYTES + 1))
    with pytest.raises(InvalidWelcome, match="does not decode"):
        Group.join_by_external_commit(
            bytes(MAX_GROUP_DECODE_BYTES + 1), credential=Credential.basic(b"x"),
            signing_key=XWING.generate_signing_key(os.urandom), rng=os.urandom, now_ms=NOW,
        )
    # Everything else keeps the general limit (the fuzz harnesses and decode-bomb tests
    # of the codec rely on it).
    with pytest.raises(DecodeError, match="too large"):
        decode(lambda r: r.u8(), bytes(MAX_DECODE_BYTES + 1))


@pytest.mark.slow
def test_an_xwing_welcome_over_the_old_limit_is_joined() -> None:
    # ~2,630 bytes a member: 810 members make a Welcome just over 2 MiB.
    config = GroupConfig()
    groups = build_full(XWING, 810, config, [0])
    joiner = _member(XWING, 810)
    bundle = groups[0].add_members([joiner.key_package], rng=os.urandom, now_ms=NOW)
    welcome = bundle.welcome
    assert welcome is not None and len(welcome) > MAX_DECODE_BYTES
    joined = Group.join_from_welcome(welcome, joiner.key_package, joiner.private,
                                     signing_key=joiner.signing_key, config=config)
    groups[0].merge_pending_commit()
    assert joined.suite.id == XWING_SUITE_ID
    assert joined.epoch_authenticator == groups[0].epoch_authenticator
