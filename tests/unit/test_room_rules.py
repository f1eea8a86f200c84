"""The room profile codec and the rule function the server and members share
(protocol/room_rules.py), over real MLS commits read by the public view
(mls/public.py ``check_member_commit``): who may remove whom, who may change the
profile, a leaver's Remove by reference, revoked devices, an orphaned room.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest

from sottovoce.client.rooms.rules import ROOM_CAPABILITIES
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError, DecryptionError, UsageError
from sottovoce.mls.common import WireFormat
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.errors import InvalidCommit, InvalidSignature
from sottovoce.mls.framing import MLSMessage, sign_content
from sottovoce.mls.group import Group, generate_key_package
from sottovoce.mls.messages import Credential, GroupContextExtensions
from sottovoce.mls.public import PublicMessage, check_group_info, check_member_commit
from sottovoce.protocol.room_names import (
    KEY_ID_BYTES,
    NONCE_BYTES,
    PAD_TO,
    TAG_BYTES,
    NameKey,
    RoomNames,
    SealedNames,
)
from sottovoce.protocol.room_names_seal import AEAD, open_names, seal_names
from sottovoce.protocol.room_rules import (
    RoomProfile,
    RuleBroken,
    check_commit_rules,
    members_of,
    profile_extension,
    profile_of,
    removed_others,
    with_profile,
)
from sottovoce.secret import Secret
from tests.imports_graph import SRC, imported, read_sources

NOW = 1_900_000_000_000
PUBLIC = GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE)


def _key() -> SigningKey:
    return SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)


GROUP_ID = b"g" * 16
KEY = NameKey(b"k" * KEY_ID_BYTES, Secret(b"K" * 32))


def _sealed(name: str, topic: str = "", key: NameKey = KEY) -> bytes:
    return seal_names(RoomNames(name, topic), key.key, key_id=key.key_id,
                      nonce=secrets.token_bytes(NONCE_BYTES), group_id=GROUP_ID)


def _room() -> tuple[dict[str, Group], dict[str, int]]:
    """alice (admin), bob and carol in one room; every group, and each one's leaf."""
    keys = {n: _key() for n in ("alice", "bob", "carol")}
    alice = Group.create(
        1, credential=Credential.basic(b"alice/d1"), signing_key=keys["alice"],
        rng=secrets.token_bytes, now_ms=NOW, capabilities=ROOM_CAPABILITIES, config=PUBLIC,
        extensions=[profile_extension(RoomProfile(("alice",), _sealed("team")))],
    )
    groups = {"alice": alice}
    packages = {
        n: generate_key_package(1, Credential.basic(f"{n}/d1".encode()), keys[n],
                                secrets.token_bytes, NOW, capabilities=ROOM_CAPABILITIES)
        for n in ("bob", "carol")
    }
    bundle = alice.add_members([kp for kp, _ in packages.values()], rng=secrets.token_bytes,
                               now_ms=NOW)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    for n, (kp, priv) in packages.items():
        groups[n] = Group.join_from_welcome(bundle.welcome, kp, priv, signing_key=keys[n],
                                            config=PUBLIC)
    leaves = {n: g.own_leaf_index for n, g in groups.items()}
    return groups, leaves


def _check(groups: dict[str, Group], commit: bytes, proposals: tuple[bytes, ...] = (),
           revoked: tuple[tuple[str, str], ...] = ()) -> None:
    """What the server does: the public view of the commit, then the rules."""
    info = check_group_info(groups["alice"].group_info())
    checked = check_member_commit(commit, info, proposals)
    check_commit_rules(info.context.extensions, members_of(enumerate(info.leaves)),
                       checked.proposals, revoked=revoked)


def test_the_profile_seals_the_name_and_topic() -> None:
    """The server reads the profile: it holds the name and topic only as ciphertext
    under the name key, bound to the room; a role change keeps that ciphertext."""
    sealed = _sealed("secret-name", "secret-topic")
    ours = RoomProfile(("alice",), sealed)
    encoded = ours.encode()
    assert encoded[0] == 2 and b"secret" not in encoded
    promoted = ours.with_admins({"alice", "bob"})
    assert promoted.sealed == sealed and promoted.admins == ("alice", "bob")
    assert RoomProfile.decode(promoted.encode()) == promoted
    names = promoted.names
    assert names is not None and names.key_id == KEY.key_id
    assert open_names(names, KEY.key, group_id=GROUP_ID) == RoomNames(
        "secret-name", "secret-topic"
    )
    with pytest.raises(DecryptionError):  # another room's profile: the AAD differs
        open_names(names, KEY.key, group_id=b"h" * 16)
    with pytest.raises(DecryptionError):  # a removed member's old key
        open_names(names, Secret(b"J" * 32), group_id=GROUP_ID)
    # A version 1 profile (name and topic in clear, only ever a placeholder) still
    # decodes, to no shared name.
    assert RoomProfile.decode(b"\x01\x04room\x00\x06\x05alice") == RoomProfile(("alice",))


def test_profile_round_trips_and_refuses_bad_input() -> None:
    profile = RoomProfile(("alice", "bob"), _sealed("core team", "friday"))
    assert RoomProfile.decode(profile.encode()) == profile
    assert profile_of([profile_extension(profile)]) == profile
    assert profile_of([]) is None
    assert RoomProfile(("alice",)).names is None
    with pytest.raises(UsageError):
        RoomProfile(("bob", "alice"))  # not sorted
    with pytest.raises(UsageError):
        RoomProfile(("bob/d1",))  # a device, not a username
    with pytest.raises(UsageError):
        RoomProfile(("bob",), b"not sealed names")
    with pytest.raises(DecodeError):
        RoomProfile.decode(b"\x03" + profile.encode()[1:])  # unknown version
    with pytest.raises(DecodeError):
        RoomProfile.decode(profile.encode() + b"\x00")  # trailing bytes
    with pytest.raises(DecodeError):
        RoomProfile.decode(b"\x01\x02\xff\xfe\x00\x00")  # a v1 name that is not UTF-8
    short = SealedNames(b"k" * 15, b"n" * NONCE_BYTES, b"c" * 40).encode()
    with pytest.raises(DecodeError):
        RoomProfile.decode(RoomProfile(("bob",)).encode()[:1] + bytes([len(short)]) + short
                           + b"\x00")
    assert profile.with_admins({"carol", "alice"}).admins == ("alice", "carol")
    with pytest.raises(UsageError):
        RoomNames("")
    with pytest.raises(UsageError):
        RoomNames("x", "t" * 1025)
    assert NameKey.decode(KEY.encode()).key == KEY.key
    assert "KKKK" not in repr(KEY) and "redacted" in repr(KEY)


def test_an_admin_may_remove_and_rename_a_member_may_not() -> None:
    groups, leaves = _room()
    remove_carol = groups["alice"].remove_members([leaves["carol"]], rng=secrets.token_bytes)
    _check(groups, remove_carol.commit)  # the admin's
    groups["alice"].clear_pending_commit()
    by_bob = groups["bob"].remove_members([leaves["carol"]], rng=secrets.token_bytes)
    with pytest.raises(RuleBroken, match="only a room admin may remove"):
        _check(groups, by_bob.commit)
    groups["bob"].clear_pending_commit()
    seized = with_profile(groups["bob"].group_context.extensions,
                          RoomProfile(("bob",), _sealed("mine")))
    rename = groups["bob"].commit(rng=secrets.token_bytes,
                                  proposals=[GroupContextExtensions(extensions=seized)])
    with pytest.raises(RuleBroken, match="only a room admin may rename"):
        _check(groups, rename.commit)
    groups["bob"].clear_pending_commit()
    # Only the sealed names changed (same admins): still a rename, still refused; the
    # server sees that they changed, never what they say.
    renamed = with_profile(groups["bob"].group_context.extensions,
                           RoomProfile(("alice",), _sealed("mine")))
    rename = groups["bob"].commit(rng=secrets.token_bytes,
                                  proposals=[GroupContextExtensions(extensions=renamed)])
    with pytest.raises(RuleBroken, match="only a room admin may rename"):
        _check(groups, rename.commit)
    groups["bob"].clear_pending_commit()
    by_alice = groups["alice"].commit(rng=secrets.token_bytes,
                                      proposals=[GroupContextExtensions(extensions=renamed)])
    _check(groups, by_alice.commit)
    groups["alice"].clear_pending_commit()
    dropped = groups["alice"].commit(rng=secrets.token_bytes,
                                     proposals=[GroupContextExtensions(extensions=())])
    with pytest.raises(RuleBroken, match="cannot be dropped"):
        _check(groups, dropped.commit)


def test_a_member_commits_a_leavers_own_remove_by_reference() -> None:
    groups, leaves = _room()
    leave = groups["carol"].leave(rng=secrets.token_bytes)
    groups["bob"].process_message(leave)
    commit = groups["bob"].commit(rng=secrets.token_bytes)
    assert any(isinstance(p, bytes) for p in _proposals_of(commit.commit))
    _check(groups, commit.commit, (leave,))
    # Without the proposal beside it the server cannot tell who proposed it.
    with pytest.raises(InvalidCommit, match="references a proposal"):
        _check(groups, commit.commit)
    # bob's own proposal to remove carol, by reference, is not carol's leaving.
    groups, leaves = _room()
    forged = groups["bob"].propose_remove(leaves["carol"], rng=secrets.token_bytes)
    commit = groups["bob"].commit(rng=secrets.token_bytes)
    assert any(isinstance(p, bytes) for p in _proposals_of(commit.commit))
    with pytest.raises(RuleBroken, match="only a room admin may remove"):
        _check(groups, commit.commit, (forged,))


def _proposals_of(commit: bytes) -> tuple[object, ...]:
    from sottovoce.mls.messages import Commit
    from sottovoce.mls.public import PublicMessage, decode_public

    message = decode_public(commit)
    assert isinstance(message, PublicMessage) and isinstance(message.content.content, Commit)
    return message.content.content.proposals


def test_revoked_devices_and_an_orphaned_room() -> None:
    groups, leaves = _room()
    members = members_of((m.index, m.leaf) for m in groups["alice"].members())
    by_bob = groups["bob"].remove_members([leaves["carol"]], rng=secrets.token_bytes)
    assert removed_others(members, [(leaves["bob"], _remove(leaves["carol"]))]) == [
        ("carol", "d1")
    ]
    _check(groups, by_bob.commit, revoked=(("carol", "d1"),))  # the directory vouches
    # Once no member is an admin any more, every member acts as one.
    extensions = groups["alice"].group_context.extensions
    orphaned = with_profile(extensions, RoomProfile(("dave",)))
    check_commit_rules(orphaned, members, [(leaves["bob"], _remove(leaves["carol"]))])
    with pytest.raises(RuleBroken):
        check_commit_rules(extensions, members, [(leaves["bob"], _remove(leaves["carol"]))])
    # A room made before profiles has no rules until one is set.
    check_commit_rules((), members, [(leaves["bob"], _remove(leaves["carol"]))])


def _remove(leaf: int) -> object:
    from sottovoce.mls.messages import Remove

    return Remove(removed=leaf)


def test_the_public_view_refuses_a_private_or_forged_commit() -> None:
    groups, _ = _room()
    private = Group.from_state(groups["alice"].to_state())
    private._state = replace(private._state, config=GroupConfig())
    bundle = private.self_update(rng=secrets.token_bytes)
    with pytest.raises(InvalidCommit, match="not a PublicMessage"):
        _check(groups, bundle.commit)
    # bob's commit, its signature made by another key than bob's leaf holds.
    good = groups["bob"].self_update(rng=secrets.token_bytes).commit
    message = MLSMessage.decode(good).body
    assert isinstance(message, PublicMessage)
    context = check_group_info(groups["alice"].group_info()).context
    signature = sign_content(_key(), WireFormat.PUBLIC_MESSAGE, message.content, context)
    forged = MLSMessage(body=replace(message, auth=replace(message.auth, signature=signature)))
    with pytest.raises(InvalidSignature):
        _check(groups, forged.encode())


def test_protocol_reaches_mls_only_through_the_room_rules_and_its_public_view() -> None:
    """The one import arrow from protocol/ into mls/ (docs/architecture.md, "Who may
    import what"): the rule function must be one, run by the server and by members
    over MLS proposals, so protocol/room_rules.py reads them with the key-free public
    view the server may import anyway (mls.public, mls.messages, mls.common), and no
    other protocol module imports mls at all."""
    allowed = {"sottovoce.mls", "sottovoce.mls.public", "sottovoce.mls.messages",
               "sottovoce.mls.common"}
    found: dict[str, set[str]] = {}
    for module, (source, is_package) in read_sources(SRC / "sottovoce" / "protocol").items():
        names = {n for n, _ in imported(source, module, is_package)}
        mls = {n for n in names if n == "sottovoce.mls" or n.startswith("sottovoce.mls.")}
        if mls:
            found[module] = mls
    assert set(found) == {"sottovoce.protocol.room_rules"}
    assert found["sottovoce.protocol.room_rules"] <= allowed | {
        f"{m}.{name}" for m in allowed for name in ("Extension", "GroupContextExtensions",
        "LeafNode", "Proposal", "ReInit", "Remove", "find_extension", "leaf_identity")
    }


def test_a_leaving_account_takes_its_other_devices_along() -> None:
    """carol/d1 removes itself by reference: the committer (bob, not an admin) may remove
    carol's other device by value in the same commit, and not otherwise."""
    groups, _ = _room()
    extensions = groups["alice"].group_context.extensions
    members = {0: ("alice", "d1"), 1: ("bob", "d1"), 2: ("carol", "d1"), 3: ("carol", "d2")}
    check_commit_rules(extensions, members, [(2, _remove(2)), (1, _remove(3))])
    with pytest.raises(RuleBroken):
        check_commit_rules(extensions, members, [(1, _remove(3))])
    with pytest.raises(RuleBroken):  # carol leaving does not let bob remove alice
        check_commit_rules(extensions, members, [(2, _remove(2)), (1, _remove(0))])


def test_a_group_saved_with_private_handshakes_commits_publicly_once_told() -> None:
    """A room saved before commits were public (RoomBook tells it on restore)."""
    groups, _ = _room()
    saved = Group.from_state(groups["alice"].to_state())
    saved._state = replace(saved._state, config=GroupConfig())  # the old policy
    restored = Group.from_state(saved.to_state())
    with pytest.raises(InvalidCommit):
        _check(groups, restored.self_update(rng=secrets.token_bytes).commit)
    restored.clear_pending_commit()
    restored.use_handshake_wire_format(WireFormat.PUBLIC_MESSAGE)
    _check(groups, restored.self_update(rng=secrets.token_bytes).commit)


def test_the_shapes_the_server_checks_are_the_aeads() -> None:
    """protocol/room_names.py states the AEAD's sizes without loading it (the server
    checks the sealed field's shape and holds no AEAD code)."""
    assert (AEAD.nonce_size, AEAD.tag_size) == (NONCE_BYTES, TAG_BYTES)


def test_sealed_names_are_padded_to_a_size_class() -> None:
    """The ciphertext's length tells the server only a 64-byte size class of the name
    and topic; padding that is not zeros is refused."""
    sizes = {len(RoomNames(n, t).encode()) for n, t in (("a", ""), ("a" * 40, "b" * 10))}
    assert sizes == {PAD_TO}
    assert len(RoomNames("a" * 200, "b" * 1024).encode()) % PAD_TO == 0
    assert RoomNames.decode(RoomNames("team", "friday").encode()) == RoomNames("team", "friday")
    with pytest.raises(DecodeError):
        RoomNames.decode(RoomNames("team").encode()[:-1] + b"\x01")
    assert len(_sealed("a")) == len(_sealed("a" * 40, "b" * 10))
