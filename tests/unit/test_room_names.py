"""The name key of a room's shared names over real in-memory MLS groups
(client/rooms/names.py): the committer and every member of the commit's epoch derive
the same key from the exporter and open the new names; a member removed before that
epoch holds no key that opens them; a commit that keeps the names brings no key.
"""

from __future__ import annotations

import secrets

import pytest

from sottovoce.client.rooms.model import Room
from sottovoce.client.rooms.names import (
    derived_key,
    display_name,
    key_of_commit,
    name_key_control,
    random_key,
    read_name_key_control,
    seal,
    shared_names,
    topic,
)
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES, profile
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError, DecryptionError
from sottovoce.mls.common import WireFormat
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.epoch import StagedCommit
from sottovoce.mls.group import Group, generate_key_package
from sottovoce.mls.messages import Credential, GroupContextExtensions
from sottovoce.protocol.room_names import KEY_ID_BYTES, RoomNames
from sottovoce.protocol.room_names_seal import open_names
from sottovoce.protocol.room_rules import RoomProfile, profile_extension, with_profile

NOW = 1_900_000_000_000
PUBLIC = GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE)


def _room() -> tuple[dict[str, Group], Room]:
    """alice (admin; the room named "team" under a random key), bob and carol."""
    keys = {n: SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
            for n in ("alice", "bob", "carol")}
    group_id, first = secrets.token_bytes(16), random_key()
    alice = Group.create(
        1, credential=Credential.basic(b"alice/d1"), signing_key=keys["alice"],
        rng=secrets.token_bytes, now_ms=NOW, capabilities=ROOM_CAPABILITIES, config=PUBLIC,
        group_id=group_id,
        extensions=[profile_extension(
            RoomProfile(("alice",), seal(group_id, RoomNames("team"), first))
        )],
    )
    packages = {
        n: generate_key_package(1, Credential.basic(f"{n}/d1".encode()), keys[n],
                                secrets.token_bytes, NOW, capabilities=ROOM_CAPABILITIES)
        for n in ("bob", "carol")
    }
    bundle = alice.add_members([kp for kp, _ in packages.values()], rng=secrets.token_bytes,
                               now_ms=NOW)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    groups = {"alice": alice}
    for n, (kp, priv) in packages.items():
        groups[n] = Group.join_from_welcome(bundle.welcome, kp, priv, signing_key=keys[n],
                                            config=PUBLIC)
    return groups, Room(room_id="room:" + "0" * 32, label="mine", group=alice, name_key=first)


def _process(group: Group, commit: bytes) -> StagedCommit:
    staged = group.process_message(commit).content
    assert isinstance(staged, StagedCommit)
    return staged


def test_members_of_the_epoch_derive_the_key_a_removed_member_cannot() -> None:
    groups, room = _room()
    alice, bob, carol = groups["alice"], groups["bob"], groups["carol"]
    assert (display_name(room), topic(room)) == ("team", "")
    # alice removes carol, then renames in the next epoch.
    removal = alice.remove_members([carol.own_leaf_index], rng=secrets.token_bytes)
    alice.merge_pending_commit()
    bob.merge_staged_commit(_process(bob, removal.commit))
    carol.merge_staged_commit(_process(carol, removal.commit))
    assert not carol.is_active

    key = derived_key(alice, secrets.token_bytes(KEY_ID_BYTES))
    current = profile(room)
    assert current is not None
    renamed = current.with_sealed(seal(alice.group_id, RoomNames("core", "friday"), key))
    ext = with_profile(alice.group_context.extensions, renamed)
    bundle = alice.commit(rng=secrets.token_bytes,
                          proposals=[GroupContextExtensions(extensions=ext)])
    # The committer (its pending commit) and bob derive the same key before merging.
    assert alice.pending_commit is not None
    ours = key_of_commit(alice, alice.pending_commit)
    staged = _process(bob, bundle.commit)
    theirs = key_of_commit(bob, staged)
    assert ours is not None and theirs is not None
    assert ours.key == theirs.key == key.key and theirs.key_id == key.key_id
    alice.merge_pending_commit()
    bob.merge_staged_commit(staged)
    room.name_key = ours
    assert (display_name(room), topic(room)) == ("core", "friday")
    sealed = renamed.names
    assert sealed is not None
    # carol's last epoch exports another key: the names stay closed to her.
    with pytest.raises(DecryptionError):
        open_names(sealed, derived_key(carol, key.key_id).key, group_id=alice.group_id)
    # A role change keeps the sealed names: it brings no key.
    promoted = with_profile(alice.group_context.extensions, renamed.with_admins({"alice", "bob"}))
    bundle = alice.commit(rng=secrets.token_bytes,
                          proposals=[GroupContextExtensions(extensions=promoted)])
    assert alice.pending_commit is not None
    assert key_of_commit(alice, alice.pending_commit) is None
    assert key_of_commit(bob, _process(bob, bundle.commit)) is None


def test_a_stale_or_wrong_key_opens_nothing_and_the_label_shows() -> None:
    _, room = _room()
    room.name_key = random_key()  # not the key the names were sealed under
    assert shared_names(room) is None
    assert (display_name(room), topic(room)) == ("mine", "")
    sent = random_key()
    assert read_name_key_control(name_key_control(sent)).key == sent.key
    with pytest.raises(DecodeError):
        read_name_key_control(b"\x01" + name_key_control(sent)[1:])  # a token, not a key
    with pytest.raises(DecodeError):
        read_name_key_control(name_key_control(sent)[:-1])
