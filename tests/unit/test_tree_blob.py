"""A Welcome whose ratchet tree travels out of band (client/rooms/tree_blob.py): a real
hybrid X-Wing Welcome over the one-frame cap becomes a small Welcome whose encrypted,
signed GroupInfo names a sealed tree; the joiner fetches it, checks every chunk and the
whole, and the join checks it against the GroupContext's tree hash. A small Welcome keeps
its tree inline.

The big case is one the relay takes: an X-Wing room of MEMBERS with every parent keyed
(bench/mls.py ``build_full``) adds ADDS devices in one commit; the commit and the next
GroupInfo (with the tree) fit their frames, the Welcome with the tree would not."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import pytest
from bench.mls import _member, build_full

from sottovoce.client.rooms import tree_blob
from sottovoce.client.rooms.tree_blob import BadWelcomeTree, TreeCarrier, TreeRef
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.crypto.suite import cipher_suite
from sottovoce.limits import MAX_ROOM_GROUP_INFO_BYTES, MAX_ROOM_WELCOME_BYTES
from sottovoce.mls.common import ExtensionType
from sottovoce.mls.errors import TreeHashMismatch
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import Group, GroupConfig, InvalidWelcome
from sottovoce.mls.messages import Credential, Welcome
from sottovoce.protocol import blobs as pb
from sottovoce.secret import Secret

XWING = cipher_suite(XWING_SUITE_ID)
NOW = int(time.time() * 1000)
MEMBERS = 52
#: Devices added in one commit: the Welcome (the tree and a secrets entry each) is then
#: over MAX_ROOM_WELCOME_BYTES, the commit and the GroupInfo with the tree under theirs.
ADDS = 12


class BlobServer:
    """The two blob requests a joiner makes, answered from sealed chunks (tampered or not)."""

    def __init__(self, blob_id: str, chunks: list[bytes]) -> None:
        self.blob_id, self.chunks, self.fetched = blob_id, chunks, False

    async def request(self, event: Any, expect: frozenset[str], **_: Any) -> tuple[str, dict]:
        if isinstance(event, pb.BlobGet):
            assert event.blobId == self.blob_id
            return pb.BLOB_CHUNK, {"blobId": event.blobId, "index": event.index,
                                   "data": self.chunks[event.index]}
        assert isinstance(event, pb.BlobFetched)
        self.fetched = True
        return pb.BLOB_RELEASED, {"blobId": event.blobId, "deleted": True}


def _creator() -> Group:
    sk = XWING.generate_signing_key(os.urandom)
    return Group.create(XWING, credential=Credential.basic(b"alice/" + b"d" * 32),
                        signing_key=sk, rng=os.urandom, now_ms=NOW)


@pytest.fixture(scope="module")
def big() -> tuple[Group, Any, TreeCarrier, bytes, bytes]:
    """A creator adding ADDS X-Wing members in one commit, first inline (to measure), then
    with the tree out of band; the joiner (the first added) and its Welcome."""
    members = [_member(XWING, 1000 + i) for i in range(ADDS)]
    group = build_full(XWING, MEMBERS, GroupConfig(), [0])[0]
    inline = group.add_members([m.key_package for m in members], rng=os.urandom, now_ms=NOW)
    group.clear_pending_commit()
    group.welcome_tree = carrier = TreeCarrier()
    bundle = group.add_members([m.key_package for m in members], rng=os.urandom, now_ms=NOW)
    group.welcome_tree = None
    # What the inviting client checks before sending: the relay takes this commit.
    tree_blob.check_fits("room:test", bundle.commit, group.staged_group_info(bundle.staged))
    group.merge_pending_commit()
    assert inline.welcome is not None and bundle.welcome is not None
    return group, members[0], carrier, inline.welcome, bundle.welcome


def _serve(carrier: TreeCarrier, chunks: list[bytes] | None = None) -> BlobServer:
    assert carrier.ref is not None
    return BlobServer(carrier.ref.blob_id.hex(), list(carrier.sealed if chunks is None else chunks))


def _ref_of(welcome: bytes, member: Any) -> TreeRef:
    body = MLSMessage.decode(welcome).body
    assert isinstance(body, Welcome)
    ref = tree_blob.tree_ref(Group.welcome_group_info(body, member.key_package, member.private))
    assert ref is not None
    return ref


async def test_an_xwing_welcome_over_the_cap_joins_with_its_tree_out_of_band(big: Any) -> None:
    group, joiner, carrier, inline, welcome = big
    # The same commit inline is over the one-frame cap; its GroupInfo with the tree is not.
    assert len(inline) > MAX_ROOM_WELCOME_BYTES
    assert len(group.group_info()) < MAX_ROOM_GROUP_INFO_BYTES
    assert len(group.members()) == MEMBERS + ADDS
    assert len(welcome) < MAX_ROOM_WELCOME_BYTES  # the tree is no longer in it
    ref = _ref_of(welcome, joiner)
    assert ref.size == len(group.export_ratchet_tree()) and len(ref.encode()) == 84
    server = _serve(carrier)
    tree = await tree_blob.fetch_tree(server, ref)
    assert server.fetched and tree == group.export_ratchet_tree()
    joined = Group.join_from_welcome(welcome, joiner.key_package, joiner.private,
                                     signing_key=joiner.signing_key, ratchet_tree=tree, now_ms=NOW)
    assert joined.epoch_authenticator == group.epoch_authenticator
    assert len(joined.members()) == MEMBERS + ADDS
    # Without the tree the Welcome cannot be joined at all.
    with pytest.raises(Exception, match="no ratchet tree"):
        Group.join_from_welcome(welcome, joiner.key_package, joiner.private,
                                signing_key=joiner.signing_key, now_ms=NOW)


async def test_a_tampered_or_swapped_tree_is_refused(big: Any) -> None:
    _, joiner, carrier, _, welcome = big
    ref = _ref_of(welcome, joiner)
    flipped = bytearray(carrier.sealed[0])
    flipped[-1] ^= 1
    with pytest.raises(BadWelcomeTree, match="does not open") as info:
        await tree_blob.fetch_tree(_serve(carrier, [bytes(flipped), *carrier.sealed[1:]]), ref)
    assert info.value.code == "bad_welcome_tree"
    with pytest.raises(BadWelcomeTree):  # cut short
        await tree_blob.fetch_tree(_serve(carrier, [carrier.sealed[0][:-40]]), ref)
    with pytest.raises(BadWelcomeTree, match="SHA-256"):  # a reference with another hash
        await tree_blob.fetch_tree(_serve(carrier), replace(ref, sha256=bytes(32)))
    # A tree that opens and hashes as its reference says, but is not the group's (e.g.
    # the tree of another group, sealed by whoever knows the key): the join refuses it.
    other = _creator()
    other.add_members([joiner.key_package], rng=os.urandom, now_ms=NOW)
    other.merge_pending_commit()
    with pytest.raises((TreeHashMismatch, InvalidWelcome)):
        Group.join_from_welcome(welcome, joiner.key_package, joiner.private,
                                signing_key=joiner.signing_key,
                                ratchet_tree=other.export_ratchet_tree(), now_ms=NOW)


def test_a_reference_must_be_well_formed() -> None:
    with pytest.raises(BadWelcomeTree, match="84 bytes"):
        TreeRef.decode(bytes(83))
    with pytest.raises(BadWelcomeTree, match="impossible size"):
        TreeRef.decode(bytes(84))
    ref = TreeRef(os.urandom(16), Secret(os.urandom(32)), os.urandom(32), 1000)
    assert TreeRef.decode(ref.encode()).encode() == ref.encode()
    assert ref.key.expose().hex() not in repr(ref)


def test_a_small_welcome_keeps_its_tree_inline() -> None:
    group = _creator()
    member = _member(XWING, 0)
    bundle = group.add_members([member.key_package], rng=os.urandom, now_ms=NOW)
    assert bundle.welcome is not None and len(bundle.welcome) < tree_blob.INLINE_WELCOME_MAX
    body = MLSMessage.decode(bundle.welcome).body
    assert isinstance(body, Welcome)
    info = Group.welcome_group_info(body, member.key_package, member.private)
    types = {e.extension_type for e in info.extensions}
    assert ExtensionType.RATCHET_TREE in types and tree_blob.TREE_REF_EXTENSION not in types
    assert tree_blob.tree_ref(info) is None


async def test_a_tree_of_several_chunks_comes_back_whole_and_in_order() -> None:
    # A 1,000-member X-Wing tree is ~2.6 MB: many chunks, each checked in its place.
    data = os.urandom(300_000)
    carrier = TreeCarrier()
    carrier(data)
    assert carrier.ref is not None and len(carrier.sealed) == 3
    assert await tree_blob.fetch_tree(_serve(carrier), carrier.ref) == data
    swapped = [carrier.sealed[1], carrier.sealed[0], carrier.sealed[2]]
    with pytest.raises(BadWelcomeTree, match="position"):
        await tree_blob.fetch_tree(_serve(carrier, swapped), carrier.ref)
