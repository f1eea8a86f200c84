"""Client-side room pieces without a server: identity, store tables, wire parsing, and the
checks a member applies to KeyPackages and received commits (docs/architecture.md §Rooms).

The end-to-end behaviour (commit races, removal, tokens, audit) runs against the
real server in tests/integration/test_rooms_e2e.py.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, EventStream
from sottovoce.client.events import ErrorEvent, RoomJoined
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.ids import now_ms
from sottovoce.client.rooms import (
    RoomFrame,
    device_of,
    identity_of,
    is_room_id,
    new_token,
)
from sottovoce.client.rooms.keypackages import KeyPackageRecord
from sottovoce.client.store import TEST_KDF, Store
from sottovoce.codec.tls import Writer
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import RemoteError, UsageError
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import Group, StagedCommit, generate_key_package
from sottovoce.mls.messages import Credential, GroupInfo
from sottovoce.protocol import events as ev
from sottovoce.protocol.fields import ProtocolError, b64
from tests.unit.client_fake_relay import FakeRelay

NOW = 1_700_000_000_000


def _identity() -> LocalIdentity:
    ident, _ = LocalIdentity.new(
        username="alice", server_url="ws://x", now_ms=NOW, rng=secrets.token_bytes
    )
    return ident


def test_new_identity_has_an_mls_key_in_its_certificate() -> None:
    ident = _identity()
    assert ident.mls_key is not None
    assert ident.certificate.keys.mls_signature_key == ident.mls_key.verify_key.data
    back = LocalIdentity.decode(ident.encode())
    assert back.mls_key is not None
    assert back.mls_key.verify_key.data == ident.mls_key.verify_key.data
    assert "redacted" in repr(back.mls_key) and "alice" in repr(back)


def test_identity_record_version_1_still_opens_without_an_mls_key() -> None:
    ident = _identity()
    w = Writer()
    w.u8(1)
    w.opaque8(b"alice")
    w.opaque8(ident.device_id.encode())
    w.opaque16(b"ws://x")
    w.opaque8(ident.account_key.private_bytes().expose())
    w.opaque8(ident.device_key.private_bytes().expose())
    w.opaque_v(ident.certificate.encode())
    old = LocalIdentity.decode(w.getvalue())
    assert old.mls_key is None and old.device_id == ident.device_id


def test_store_keeps_room_names_sealed_and_finds_rooms_by_name(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", "pw", kdf=TEST_KDF)
    room_id = "room:" + "ab" * 16
    try:
        with store.transaction():
            assert store.add_room(room_id, "Secret Project Falcon")
            assert not store.add_room(room_id, "other")  # known: label kept
            store.update_room(room_id, epoch=3, last_seq=9, state=b"group-state-bytes")
            store.update_room(room_id, last_seq=4)  # never moves back
            store.put_epoch_authenticator(room_id, 3, b"\x01" * 32)
            store.add_key_package(b"ref1", b"kp-one", last_resort=False, now=1)
            store.add_key_package(b"ref-lr", b"kp-lr", last_resort=True, now=1)
        (row,) = store.rooms()
        assert (row.label, row.epoch, row.last_seq, row.state) == (
            "Secret Project Falcon", 3, 9, b"group-state-bytes",
        )
        assert store.rooms_by_label("Secret Project Falcon") == [room_id]
        assert store.rooms_by_label("nope") == []
        assert store.epoch_authenticators(room_id) == {3: b"\x01" * 32}
        assert store.key_package_count() == 1
        with store.transaction():
            store.delete_key_package(b"ref1")
            store.delete_key_package(b"ref-lr")  # the last-resort one is never consumed
        assert store.get_key_package(b"ref1") is None
        assert store.get_key_package(b"ref-lr") == (b"kp-lr", True)
    finally:
        store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file())
    for secret in (b"Secret Project Falcon", b"group-state-bytes", b"kp-lr"):
        assert secret not in raw


def _envelope(**over: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "protocol": "ksmpv3",
        "conversationId": "room:" + "0f" * 16,
        "messageId": "m1",
        "senderUserId": "bob",
        "senderDeviceId": "d1",
        "recipientUserId": "",
        "ciphertext": b64(b"ct"),
        "contentType": "text",
        "clientCreatedAtMs": 1,
        "serverSeq": 5,
        "serverReceivedAtMs": 2,
        "idempotencyKey": "k1",
        "ephemeral": False,
        "roomEpoch": 3,
        "roomKind": "commit",
        "adds": [{"userId": "carol", "deviceId": "c1"}],
        "removes": [],
    }
    env.update(over)
    return env


def test_room_frame_parses_and_rejects_what_breaks_the_contract() -> None:
    frame = RoomFrame.from_wire(_envelope())
    assert (frame.kind, frame.epoch, frame.server_seq, frame.adds) == (
        "commit", 3, 5, (("carol", "c1"),),
    )
    notice = RoomFrame.from_wire(
        _envelope(
            roomKind="notice",
            ciphertext="AA==",
            removeRequest={"userId": "bob", "deviceId": "d2", "reason": "revoked"},
        )
    )
    assert notice.remove_request == ("bob", "d2")
    for bad in (
        _envelope(roomKind="gossip"),
        _envelope(conversationId="dm:alice:bob"),
        _envelope(serverSeq=0),
        _envelope(adds=[{"userId": "carol"}]),
        _envelope(roomEpoch="3"),
    ):
        with pytest.raises(ProtocolError):
            RoomFrame.from_wire(bad)


def test_ids_credentials_and_tokens() -> None:
    assert is_room_id("room:" + "a1" * 16)
    assert not is_room_id("room:" + "A1" * 16) and not is_room_id("room:abc")
    assert device_of(Credential.basic(identity_of("bob", "d1"))) == ("bob", "d1")
    assert device_of(Credential.basic(b"no-slash")) is None
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) == 43 and "=" not in t for t in tokens)


async def test_claimed_key_package_must_match_the_device_certificate(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice = await Client.create_account(
        "ws://fake.invalid:1", "alice", tmp_path / "a", "pw", kdf=TEST_KDF,
        connector=relay.connector,
    )
    bob = await Client.create_account(
        "ws://fake.invalid:1", "bob", tmp_path / "b", "pw", kdf=TEST_KDF,
        connector=relay.connector,
    )
    try:
        await alice._directory.lookup("bob")
        bob_key = bob.identity.mls_key
        assert bob_key is not None
        cred = Credential.basic(identity_of("bob", bob.device_id))
        good, _ = generate_key_package(1, cred, bob_key, secrets.token_bytes, NOW)
        alice.rooms._key_packages.check("bob", bob.device_id, good, NOW)  # accepted

        stranger = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
        forged, _ = generate_key_package(1, cred, stranger, secrets.token_bytes, NOW)
        with pytest.raises(RemoteError, match="certificate"):
            alice.rooms._key_packages.check("bob", bob.device_id, forged, NOW)
        with pytest.raises(RemoteError, match="another device"):
            alice.rooms._key_packages.check("bob", "other-device", good, NOW)
        other = Credential.basic(identity_of("mallory", bob.device_id))
        wrong_name, _ = generate_key_package(1, other, bob_key, secrets.token_bytes, NOW)
        with pytest.raises(RemoteError):
            alice.rooms._key_packages.check("bob", bob.device_id, wrong_name, NOW)
    finally:
        await alice.close()
        await bob.close()


async def test_commit_declaring_another_roster_than_it_makes_is_refused(tmp_path: Path) -> None:
    """A server that lies about adds/removes is caught: the member does not merge."""
    relay = FakeRelay()
    alice = await Client.create_account(
        "ws://fake.invalid:1", "alice", tmp_path / "a", "pw", kdf=TEST_KDF,
        connector=relay.connector,
    )
    try:
        key = alice.identity.mls_key
        assert key is not None
        cred = Credential.basic(identity_of("alice", alice.device_id))
        group = Group.create(1, credential=cred, signing_key=key, rng=secrets.token_bytes,
                             now_ms=NOW, group_id=secrets.token_bytes(16))
        carol_key = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
        carol_cred = Credential.basic(identity_of("carol", "c1"))
        kp, _ = generate_key_package(1, carol_cred, carol_key, secrets.token_bytes, NOW)
        staged = group.add_members([kp], rng=secrets.token_bytes, now_ms=NOW).staged
        honest = RoomFrame.from_wire(_envelope(adds=[{"userId": "carol", "deviceId": "c1"}]))
        lying = RoomFrame.from_wire(_envelope(adds=[{"userId": "dave", "deviceId": "x"}]))
        hidden = RoomFrame.from_wire(_envelope(adds=[]))
        alice.rooms._membership.check_declared(staged, honest, None)
        for frame in (lying, hidden):
            with pytest.raises(RemoteError, match="declared adds"):
                alice.rooms._membership.check_declared(staged, frame, None)
    finally:
        await alice.close()


async def _next_of(stream: EventStream, kind: type[Any], timeout: float = 5.0) -> Any:
    while True:
        event = await stream.next(timeout)
        if isinstance(event, kind):
            return event


async def test_welcome_naming_a_forged_member_is_refused(tmp_path: Path) -> None:
    """A member who adds a leaf under carol's name with its own key cannot get bob to
    join: bob checks every leaf of the Welcome against the directory's certificates."""
    relay = FakeRelay()
    alice, bob, carol = [
        await Client.create_account(
            "ws://fake.invalid:1", name, tmp_path / name, "pw", kdf=TEST_KDF,
            connector=relay.connector,
        )
        for name in ("alice", "bob", "carol")
    ]
    now = now_ms()  # leaf lifetimes are checked against the joiner's clock
    try:
        alice_key, bob_key, carol_key = (c.identity.mls_key for c in (alice, bob, carol))
        assert alice_key is not None and bob_key is not None and carol_key is not None
        # Bob's KeyPackage, its private half in bob's store (as an upload leaves it).
        bob_kp, bob_priv = generate_key_package(
            1, Credential.basic(identity_of("bob", bob.device_id)), bob_key,
            secrets.token_bytes, now,
        )
        with bob._store.transaction():
            bob._store.add_key_package(
                bob_kp.ref(cipher_suite(1)), KeyPackageRecord(bob_kp, bob_priv).encode(),
                last_resort=True, now=now,  # kept after use: both Welcomes below use it
            )
        carol_cred = Credential.basic(identity_of("carol", carol.device_id))
        stranger = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
        events = bob.events()
        seq = 0

        def welcome_to_bob(carol_signing: SigningKey) -> str:
            """Alice's room with carol (signed by ``carol_signing``) and bob; the Welcome
            pushed to bob's inbox. Returns the room id."""
            nonlocal seq
            group = Group.create(
                1, credential=Credential.basic(identity_of("alice", alice.device_id)),
                signing_key=alice_key, rng=secrets.token_bytes, now_ms=now,
                group_id=secrets.token_bytes(16),
            )
            carol_kp, _ = generate_key_package(
                1, carol_cred, carol_signing, secrets.token_bytes, now
            )
            bundle = group.add_members([carol_kp, bob_kp], rng=secrets.token_bytes, now_ms=now)
            assert bundle.welcome is not None
            room_id = "room:" + group.group_id.hex()
            seq += 1
            env = _envelope(
                conversationId=room_id, messageId=f"w{seq}", senderUserId="alice",
                senderDeviceId=alice.device_id, recipientUserId="bob",
                ciphertext=b64(bundle.welcome), contentType="system", clientCreatedAtMs=0,
                serverSeq=1, idempotencyKey=f"w{seq}", roomEpoch=1, roomKind="welcome",
                adds=[],
            )
            relay.online[("bob", bob.device_id)].push(ev.inbox_frame(seq, env))
            return room_id

        forged_room = welcome_to_bob(stranger)
        error = await _next_of(events, ErrorEvent)
        assert forged_room in error.message and f"carol/{carol.device_id}" in error.message
        assert "certificate" in error.message and error.code == "room_member_unverified"
        assert all(r.room_id != forged_room for r in bob.rooms.all())

        honest_room = welcome_to_bob(carol_key)  # control: the same, carol's real key
        joined = await _next_of(events, RoomJoined)
        assert joined.room_id == honest_room and joined.epoch == 1
        assert set(bob.rooms.get(honest_room).members()) == {
            ("alice", alice.device_id), ("bob", bob.device_id), ("carol", carol.device_id),
        }
        events.close()
    finally:
        for c in (alice, bob, carol):
            await c.close()


def test_public_mls_helpers_describe_the_epoch_a_commit_starts() -> None:
    """StagedCommit.member and Group.staged_group_info (what rooms.py used to reach
    into privately): the GroupInfo published with a commit opens the new epoch to an
    external joiner, and ``member`` reads leaves of the new tree."""
    key = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
    group = Group.create(
        1, credential=Credential.basic(b"alice/a1"), signing_key=key,
        rng=secrets.token_bytes, now_ms=NOW, group_id=secrets.token_bytes(16),
    )
    carol_key = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
    carol_kp, _ = generate_key_package(
        1, Credential.basic(b"carol/c1"), carol_key, secrets.token_bytes, NOW
    )
    staged = group.add_members([carol_kp], rng=secrets.token_bytes, now_ms=NOW).staged
    (added,) = staged.adds
    member = staged.member(added.index)
    assert member is not None and member.signature_key == carol_key.verify_key.data
    assert staged.member(1000) is None and group.member(added.index) is None  # not merged
    info = group.staged_group_info(staged)
    assert info is not None
    msg = MLSMessage.decode(info).body
    assert isinstance(msg, GroupInfo) and msg.group_context.epoch == 1  # the new epoch
    dave_key = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
    join = Group.join_by_external_commit(
        info, credential=Credential.basic(b"dave/d1"), signing_key=dave_key,
        rng=secrets.token_bytes, now_ms=NOW,
    )
    group.merge_pending_commit()
    processed = group.process_message(join.commit, now_ms=NOW)
    assert isinstance(processed.content, StagedCommit)
    joiner = processed.content.member(processed.content.committer)
    assert joiner is not None and joiner.signature_key == dave_key.verify_key.data
    with pytest.raises(UsageError):
        group.staged_group_info(staged)  # merged already: not for the current epoch
    rooms_package = Path(__file__).resolve().parents[2] / "src" / "sottovoce" / "client" / "rooms"
    source = "".join(p.read_text() for p in sorted(rooms_package.glob("*.py")))
    assert "._next" not in source and "._group_info" not in source
