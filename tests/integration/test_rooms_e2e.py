"""Rooms through the real server process, real clients (docs/architecture.md §Rooms).

* 20 members; 5 commit at the same moment: one commit per epoch wins, the others
  process it and retry, and all 20 end with the same epoch authenticator;
* a removed member decrypts nothing sent after its removal; a revoked device is
  removed from every room by the members' automatic commits;
* invite by Welcome and join by token (external commit): messages flow both ways;
* the audit trail verifies, and fails naming the entry once the server's copy is
  tampered with (deleted, reordered, edited);
* the server's database and log hold neither the join token nor room plaintexts.
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, DeliveryStatus
from sottovoce.client.events import ErrorEvent, RoomMessageReceived
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import SottovoceError
from sottovoce.protocol.audit import AuditAction, AuditChainError
from tests.integration.client_helpers import PASSPHRASE, make_account, opened_by
from tests.integration.serverproc import ServerProcess


async def make_accounts(server: ServerProcess, names: Iterable[str], root: Path) -> list[Client]:
    return list(await asyncio.gather(*(make_account(server, n, root) for n in names)))


async def close_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def room_messages(client: Client, room_id: str, n: int, timeout: float = 10.0) -> list[str]:
    """Wait until ``client`` stored ``n`` readable messages of the room; their texts."""

    def readable() -> list[str]:
        # In the room's order (serverSeq), not local arrival order: our own message is
        # stored when sent, possibly before an earlier one from someone else arrives.
        got = [
            m
            for m in client.rooms.history(room_id, limit=1000)
            if m.status is DeliveryStatus.SENT and m.server_seq is not None
        ]
        return [m.text for m in sorted(got, key=lambda m: m.server_seq or 0)]

    await client.rooms.wait_until(lambda: len(readable()) >= n, timeout)
    return readable()


def members(client: Client, room_id: str) -> set[tuple[str, str]]:
    return set(client.rooms.get(room_id).members())


async def test_invite_by_welcome_and_messages_both_ways(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("friends")
        result = await alice.rooms.invite("friends", "bob")
        assert result is not None and result.epoch == 1
        joined = await bob.rooms.wait_epoch(room.room_id, 1)
        assert joined.room_id == room.room_id
        # The room's shared name: bob's devices learn its key from alice, inside the
        # room's encryption, and his label follows it.
        assert await bob.rooms.wait_until(lambda: bob.rooms.name(room.room_id) == "friends")
        assert joined.label == "friends" and bob.rooms.get("friends").room_id == room.room_id
        assert members(bob, room.room_id) == {
            ("alice", alice.device_id),
            ("bob", bob.device_id),
        }
        await alice.rooms.send("friends", "hello bob, from the room")
        assert await room_messages(bob, room.room_id, 1) == ["hello bob, from the room"]
        await bob.rooms.send(room.room_id, "hi alice")
        got = await room_messages(alice, room.room_id, 2)
        assert got == ["hello bob, from the room", "hi alice"]
        # Same history, same serverSeq order on both sides; decrypted once, read back.
        a_hist = alice.rooms.history("friends")
        b_hist = bob.rooms.history(room.room_id)
        assert [m.message_id for m in a_hist] == [m.message_id for m in b_hist]
        assert [m.sender for m in b_hist] == ["alice", "bob"]
        assert alice.rooms.epoch_authenticator("friends") == bob.rooms.epoch_authenticator(
            room.room_id
        )
    finally:
        await close_all([alice, bob])


async def test_twenty_members_five_commit_at_once(server: ServerProcess, tmp_path: Path) -> None:
    names = [f"m{i:02d}" for i in range(20)]
    clients = await make_accounts(server, names, tmp_path)
    owner = clients[0]
    try:
        room = await owner.rooms.create_room("big")
        for name in names[1:]:
            await owner.rooms.invite("big", name)
        await asyncio.gather(*(c.rooms.wait_epoch(room.room_id, 19, 20) for c in clients))
        assert len(members(clients[19], room.room_id)) == 20

        racers = clients[3:8]
        results = await asyncio.gather(*(c.rooms.self_update(room.room_id) for c in racers))
        # Exactly one commit per epoch: five commits made epochs 20..24, one each.
        assert sorted(r.epoch for r in results if r) == [20, 21, 22, 23, 24]
        assert sum(c.rooms.commit_conflicts for c in racers) >= 4  # the losers retried
        await asyncio.gather(*(c.rooms.wait_epoch(room.room_id, 24, 20) for c in clients))
        auths = {c.rooms.epoch_authenticator(room.room_id) for c in clients}
        assert len(auths) == 1  # all 20 in the same epoch with the same key schedule

        # The group still works for everyone: one message, 19 readers.
        streams = [c.events() for c in clients[1:]]
        await clients[0].rooms.send(room.room_id, "after the race")
        for client in clients[1:]:
            assert await room_messages(client, room.room_id, 1) == ["after the race"]
        for s in streams:
            s.close()
    finally:
        await close_all(clients)


async def test_removed_member_decrypts_nothing_later(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("r")
        await alice.rooms.invite("r", "bob")
        await alice.rooms.invite("r", "carol")
        await carol.rooms.wait_epoch(room.room_id, 2)
        await alice.rooms.send("r", "before removal")
        assert await room_messages(carol, room.room_id, 1) == ["before removal"]  # control

        removal = await alice.rooms.remove("r", "carol")
        assert removal is not None
        tapped = _tap_room_ciphertexts(bob)  # what the server fans out from here on
        await carol.rooms.wait_until(lambda: carol.rooms.get(room.room_id).removed)
        assert ("carol", carol.device_id) not in members(bob, room.room_id)
        for i in range(5):
            await alice.rooms.send("r", f"after removal {i}")
        await bob.rooms.send(room.room_id, "bob after removal")
        assert len(await room_messages(bob, room.room_id, 7)) == 7
        await carol.sync()
        readable = await room_messages(carol, room.room_id, 1)
        assert readable == ["before removal"]  # nothing later is readable by carol
        assert all("after removal" not in m.text for m in carol.rooms.history(room.room_id))
        # Even handed the later ciphertexts directly, carol's group opens none of them.
        carol_group = carol.rooms.get(room.room_id).group
        assert carol_group is not None and not carol_group.is_active
        later = [ct for seq, ct in tapped if seq > removal.server_seq]
        assert len(later) == 6  # alice's five and bob's own (echoed to all members)
        assert opened_by(carol_group, later) == 0
    finally:
        await close_all([alice, bob, carol])


async def test_revoked_device_is_removed_from_every_room(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    tablet = await bob.add_device(tmp_path / "bob-tablet", PASSPHRASE, kdf=TEST_KDF)
    try:
        rooms = [await alice.rooms.create_room(f"room{i}") for i in range(2)]
        for r in rooms:
            await alice.rooms.invite(r.room_id, "bob")  # both of bob's devices
            await tablet.rooms.wait_epoch(r.room_id, 1)
            assert ("bob", tablet.device_id) in members(alice, r.room_id)
        await bob.revoke_device(tablet.device_id)
        gone = ("bob", tablet.device_id)
        for r in rooms:
            for member in (alice, bob):
                ok = await member.rooms.wait_until(
                    lambda m=member, rid=r.room_id: gone not in members(m, rid), 15
                )
                assert ok, f"{member} still has the revoked device in {r.room_id}"
            assert alice.rooms.epoch_authenticator(r.room_id) == bob.rooms.epoch_authenticator(
                r.room_id
            )
    finally:
        await close_all([alice, bob, tablet])


async def test_join_by_token_then_messages_both_ways(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, carol = await make_accounts(server, ["alice", "carol"], tmp_path)
    canaries = ["canary-room-7f3a9c-alice", "canary-room-41bd02-carol"]
    try:
        room = await alice.rooms.create_room("open")
        token = await alice.rooms.create_token("open")
        joined = await carol.rooms.join_with_token(token, label="theirs")
        assert joined.room_id == room.room_id and joined.epoch == 1
        await alice.rooms.wait_epoch(room.room_id, 1)
        assert ("carol", carol.device_id) in members(alice, room.room_id)
        await alice.rooms.send("open", canaries[0])
        await carol.rooms.send("theirs", canaries[1])
        assert await room_messages(carol, room.room_id, 2) == canaries
        assert await room_messages(alice, room.room_id, 2) == canaries
        # Rotate: the old token opens nothing any more.
        await alice.rooms.rotate_token("open")
        dave = await make_account(server, "dave", tmp_path)
        try:
            with pytest.raises(Exception, match="invalid_token"):
                await dave.rooms.join_with_token(token)
        finally:
            await dave.close()
    finally:
        await close_all([alice, carol])
    server.stop()
    blobs = _server_bytes(server)
    secret = token.encode("ascii")
    for needle in (secret, base64.b64encode(secret), secret.hex().encode()):
        assert needle not in blobs, "the join token reached the server's disk"
    for canary in canaries:
        raw = canary.encode()
        for needle in (raw, base64.b64encode(raw), raw.hex().encode()):
            assert needle not in blobs, "a room plaintext reached the server's disk"


async def test_join_request_is_answered_by_an_online_member(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("asked")
        await alice.rooms.invite("asked", "bob")
        token = await alice.rooms.create_token("asked")
        assert await carol.rooms.request_join(token) == room.room_id
        # Alice and bob both see the notice; one Add wins, the other finds nothing to do.
        joined = await carol.rooms.wait_epoch(room.room_id, 2, 15)
        assert ("carol", carol.device_id) in members(carol, room.room_id)
        await alice.rooms.wait_epoch(room.room_id, 2)
        await bob.rooms.wait_epoch(room.room_id, 2)
        assert joined.epoch == 2 and not joined.removed
        await carol.rooms.send(room.room_id, "thanks for letting me in")
        assert await room_messages(bob, room.room_id, 1) == ["thanks for letting me in"]
    finally:
        await close_all([alice, bob, carol])


def _tap_room_ciphertexts(client: Client) -> list[tuple[int, bytes]]:
    """Record (serverSeq, ciphertext) of every room message frame ``client`` receives."""
    seen: list[tuple[int, bytes]] = []
    conn = client._conn
    inner = conn.on_frame

    def tap(event: str, request_id: str | None, data: dict[str, Any]) -> None:
        env = data.get("envelope") if event == "sottovoce.room.frame" else None
        if isinstance(env, dict) and env.get("roomKind") == "message":
            seen.append((env["serverSeq"], base64.b64decode(env["ciphertext"])))
        inner(event, request_id, data)

    conn.on_frame = tap
    return seen


async def test_rooms_survive_a_restart_of_both_clients(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    room = await alice.rooms.create_room("kept")
    await alice.rooms.invite("kept", "bob")
    await bob.rooms.wait_epoch(room.room_id, 1)
    await alice.rooms.send("kept", "one")
    assert await room_messages(bob, room.room_id, 1) == ["one"]
    await bob.close()
    await alice.rooms.send("kept", "two while bob is away")
    await alice.rooms.self_update("kept")  # an epoch change bob must replay
    await alice.rooms.send("kept", "three in the new epoch")
    await alice.close()
    # Both come back from their stores: group state, positions and names restored.
    alice = await Client.open(tmp_path / "alice", PASSPHRASE)
    bob = await Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        await alice.connect()
        await bob.connect()
        assert alice.rooms.get("kept").epoch == 2
        assert await room_messages(bob, room.room_id, 3) == [
            "one",
            "two while bob is away",
            "three in the new epoch",
        ]
        assert bob.rooms.get(room.room_id).epoch == 2
        await bob.rooms.send(room.room_id, "back")
        assert (await room_messages(alice, room.room_id, 4))[-1] == "back"
        assert alice.rooms.epoch_authenticator("kept") == bob.rooms.epoch_authenticator(
            room.room_id
        )
    finally:
        await close_all([alice, bob])


def _server_bytes(server: ServerProcess) -> bytes:
    """Every file the server wrote (database, WAL, logs), concatenated."""
    out = b""
    for path in sorted(server.data_dir.rglob("*")):
        if path.is_file():
            out += path.read_bytes()
    return out


async def _room_with_audit_trail(server: ServerProcess, tmp_path: Path) -> tuple[Client, str]:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    room = await alice.rooms.create_room("audited")  # #0 created
    await alice.rooms.invite("audited", "bob")  # #1 added
    await alice.rooms.create_token("audited")  # #2 token created
    await alice.rooms.invite("audited", "carol")  # #3 added
    await alice.rooms.remove("audited", "carol")  # #4 removed
    await alice.rooms.record_event("audited", AuditAction.CALL_STARTED)  # #5 (no commit)
    await bob.close()
    await carol.close()
    return alice, room.room_id


@pytest.mark.parametrize("tamper", ["delete", "reorder", "edit"])
async def test_tampered_audit_trail_fails_naming_the_entry(
    server: ServerProcess, tmp_path: Path, tamper: str
) -> None:
    alice, room_id = await _room_with_audit_trail(server, tmp_path)
    try:
        entries = await alice.rooms.audit(room_id)
        assert [e.action for e in entries] == [
            AuditAction.ROOM_CREATED,
            AuditAction.MEMBER_ADDED,
            AuditAction.TOKEN_CREATED,
            AuditAction.MEMBER_ADDED,
            AuditAction.MEMBER_REMOVED,
            AuditAction.CALL_STARTED,
        ]
        assert [e.epoch for e in entries] == [0, 1, 1, 2, 3, 3]  # bound to the epoch
        assert [s.user_id for s in entries[4].subjects] == ["carol"]
        db = sqlite3.connect(server.db_path)
        try:
            (pk,) = db.execute("SELECT room FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
            rows = dict(db.execute("SELECT idx, entry FROM room_audit WHERE room = ?", (pk,)))
            with db:
                if tamper == "delete":
                    db.execute("DELETE FROM room_audit WHERE room = ? AND idx = 2", (pk,))
                elif tamper == "reorder":
                    for a, b in ((2, 3), (3, 2)):
                        db.execute(
                            "UPDATE room_audit SET entry = ? WHERE room = ? AND idx = ?",
                            (rows[b], pk, a),
                        )
                else:
                    edited = bytearray(rows[2])
                    edited[-70] ^= 0x01  # inside the signed fields
                    db.execute(
                        "UPDATE room_audit SET entry = ? WHERE room = ? AND idx = 2",
                        (bytes(edited), pk),
                    )
        finally:
            db.close()
        with pytest.raises(AuditChainError) as info:
            await alice.rooms.audit(room_id)
        assert info.value.index == 2
        assert "audit entry #2" in str(info.value)
    finally:
        await alice.close()


async def test_room_messages_are_fanned_out_as_one_ciphertext(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("fan")
        await alice.rooms.invite("fan", "bob")
        await alice.rooms.invite("fan", "carol")
        b_events, c_events = bob.events(), carol.events()
        await carol.rooms.wait_epoch(room.room_id, 2)
        await alice.rooms.send("fan", "one for all")
        got: list[RoomMessageReceived] = []
        for stream in (b_events, c_events):
            while True:
                event = await stream.next(10)
                if isinstance(event, RoomMessageReceived):
                    got.append(event)
                    break
        assert {e.message.server_seq for e in got} == {got[0].message.server_seq}
        assert {e.message.text for e in got} == {"one for all"}
        db = sqlite3.connect(server.db_path)
        try:
            # Rows every member has read may already be deleted; the room's counter
            # and the send record stay: the message took one seq, the last one.
            (last_seq,) = db.execute(
                "SELECT last_seq FROM rooms WHERE room_id = ?", (room.room_id,)
            ).fetchone()
            (sends,) = db.execute(
                "SELECT COUNT(*) FROM sends WHERE message_id = ?", (got[0].message.message_id,)
            ).fetchone()
        finally:
            db.close()
        # One stored row for three member devices.
        assert (last_seq, sends) == (got[0].message.server_seq, 1)
    finally:
        await close_all([alice, bob, carol])


def _drop_room_frames(
    client: Client, kind: str, count: int = 1
) -> tuple[list[int], asyncio.Event]:
    """Lose the next ``count`` room frames of ``kind`` on their way to ``client`` (as a
    lossy path would); the serverSeqs dropped, and an event set once all were."""
    dropped: list[int] = []
    done = asyncio.Event()
    conn = client._conn
    inner = conn.on_frame

    def lossy(event: str, request_id: str | None, data: dict[str, Any]) -> None:
        env = data.get("envelope") if event == "sottovoce.room.frame" else None
        if isinstance(env, dict) and env.get("roomKind") == kind and len(dropped) < count:
            dropped.append(env["serverSeq"])
            if len(dropped) == count:
                done.set()
            return
        inner(event, request_id, data)

    conn.on_frame = lossy
    return dropped, done


async def test_a_lost_commit_frame_is_fetched_by_sync_and_the_room_converges(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("lossy")
        await alice.rooms.invite("lossy", "bob")
        await alice.rooms.invite("lossy", "carol")
        await bob.rooms.wait_epoch(room.room_id, 2)
        await carol.rooms.wait_epoch(room.room_id, 2)
        b_events = bob.events()
        dropped, lost = _drop_room_frames(bob, "commit")
        update = await alice.rooms.self_update("lossy")  # epoch 3; bob never sees the frame
        await asyncio.wait_for(lost.wait(), 10)
        assert update is not None and dropped == [update.server_seq]
        await alice.rooms.send("lossy", "made in epoch 3")  # bob: a frame of a later epoch
        await carol.rooms.wait_epoch(room.room_id, 3)
        await carol.rooms.send(room.room_id, "carol in epoch 3 too")
        # Bob holds the later frames, fetches the lost commit by room.sync, plays all in order.
        got = await room_messages(bob, room.room_id, 2, timeout=15)
        assert got == ["made in epoch 3", "carol in epoch 3 too"]
        assert bob.rooms.get(room.room_id).epoch == 3 and bob.rooms.catch_ups == 1
        assert not bob.rooms.get(room.room_id).catching_up
        auths = {c.rooms.epoch_authenticator(room.room_id) for c in (alice, bob, carol)}
        assert len(auths) == 1
        # Decrypted once each: nothing failed, no duplicate rows from the sync's repeats.
        history = bob.rooms.history(room.room_id)
        assert all(m.status is DeliveryStatus.SENT for m in history)
        assert len({m.message_id for m in history}) == len(history) == 2
        errors = [e for e in b_events.pending() if isinstance(e, ErrorEvent)]
        assert errors == []
        # And the room keeps working from bob's side.
        await bob.rooms.send(room.room_id, "bob caught up")
        assert (await room_messages(alice, room.room_id, 3))[-1] == "bob caught up"
        b_events.close()
    finally:
        await close_all([alice, bob, carol])


async def test_a_lost_message_of_the_same_epoch_is_fetched_by_sync(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Per-room serverSeqs are contiguous: a missing one is a lost frame even when no
    epoch moved, and the member fetches it instead of silently skipping it."""
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("gaps")
        await alice.rooms.invite("gaps", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        dropped, lost = _drop_room_frames(bob, "message")
        await alice.rooms.send("gaps", "lost on the way")
        await asyncio.wait_for(lost.wait(), 10)
        await alice.rooms.send("gaps", "the next one")
        got = await room_messages(bob, room.room_id, 2, timeout=15)
        assert got == ["lost on the way", "the next one"]
        assert bob.rooms.catch_ups == 1 and not bob.rooms.get(room.room_id).catching_up
        assert len(dropped) == 1
    finally:
        await close_all([alice, bob])


async def test_room_messages_are_padded_to_size_buckets(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    try:
        room = await alice.rooms.create_room("padded")
        await alice.rooms.invite("padded", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        tapped = _tap_room_ciphertexts(bob)
        # The payload carries ~120 bytes besides the text (ids, the sender's
        # transparency-log head), so 20 and 100 bytes of text share the 256 bucket.
        texts = ["a short one, twenty!", "x" * 100, "x" * 300]
        for text in texts:
            await alice.rooms.send("padded", text)
        assert await room_messages(bob, room.room_id, 3) == texts  # the pad comes off
        short, longer, long = (len(ct) for _, ct in sorted(tapped))
        assert short == longer  # 20 and 100 bytes of text: one bucket, one length
        assert long > longer  # 300 bytes: the next bucket up
    finally:
        await close_all([alice, bob])


async def test_room_send_while_offline_is_queued_and_delivered_once(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    room = await alice.rooms.create_room("later")
    await alice.rooms.invite("later", "bob")
    await bob.rooms.wait_epoch(room.room_id, 1)
    await alice.close()
    await bob.rooms.self_update(room.room_id)  # the epoch moves while alice is away
    alice = await Client.open(tmp_path / "alice", PASSPHRASE)  # offline
    try:
        message_id = await alice.rooms.send("later", "written offline")
        queued = alice.message(message_id)
        assert queued is not None and queued.status is DeliveryStatus.SENDING
        assert alice.pending_sends() == 1
        await alice.close()  # the outbox is durable: a new process sends it
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)
        await alice.connect()
        seq = await alice.wait_sent(message_id, timeout=15)
        # It was made in epoch 1, refused as stale, re-encrypted for epoch 2.
        assert alice.rooms.stale_resends == 1 and alice.rooms.get("later").epoch == 2
        assert await room_messages(bob, room.room_id, 1) == ["written offline"]
        (got,) = bob.rooms.history(room.room_id)
        sent = alice.message(message_id)
        assert sent is not None and sent.status is DeliveryStatus.SENT
        assert (got.message_id, got.server_seq) == (message_id, seq)
        assert got.idempotency_key == sent.idempotency_key == queued.idempotency_key
        assert alice.pending_sends() == 0
    finally:
        await close_all([alice, bob])
    server.stop()  # every write on disk
    db = sqlite3.connect(server.db_path)
    try:
        (accepted,) = db.execute(
            "SELECT COUNT(*) FROM sends WHERE message_id = ?", (message_id,)
        ).fetchone()
        (last_seq,) = db.execute(
            "SELECT last_seq FROM rooms WHERE room_id = ?", (room.room_id,)
        ).fetchone()
    finally:
        db.close()
    # One accepted send; and the room's rows were: invite 1, the name key alice sent
    # bob 2, bob's update 3, this 4 (read rows may be deleted, the counter stays): no
    # second copy was appended.
    assert accepted == 1 and last_seq == seq == 4


def _decoded(keys: Any, frames: list[bytes]) -> int:
    from sottovoce.sframe.errors import SFrameError

    n = 0
    for f in frames:
        try:
            keys.unprotect(f)
            n += 1
        except SFrameError:
            pass
    return n


async def test_media_frames_after_a_removal_decode_only_for_members(
    server: ServerProcess, tmp_path: Path
) -> None:
    """SFrame keys from the room's real MLS groups, across the epoch change
    of a removal: the member decodes all 1,000 frames, the removed member 0, and a
    participant with a wrong key 0."""
    import secrets as _secrets

    from sottovoce.sframe.mls_keys import MediaKeyManager, Track

    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("call")
        await alice.rooms.invite("call", "bob")
        await alice.rooms.invite("call", "carol")
        await bob.rooms.wait_epoch(room.room_id, 2)
        await carol.rooms.wait_epoch(room.room_id, 2)
        keys = {c: c.rooms.media_keys(room.room_id) for c in (alice, bob, carol)}
        before = [keys[alice].protect(Track.AUDIO, b"before %d" % i) for i in range(10)]
        assert _decoded(keys[carol], before) == 10  # control: carol is in the call

        removal = await alice.rooms.remove("call", "carol")
        assert removal is not None
        await bob.rooms.wait_epoch(room.room_id, removal.epoch)
        await carol.rooms.wait_until(lambda: carol.rooms.get(room.room_id).removed)
        keys[alice] = alice.rooms.media_keys(room.room_id, keys[alice])
        keys[bob] = bob.rooms.media_keys(room.room_id, keys[bob])
        assert keys[alice].current_epoch == keys[bob].current_epoch == removal.epoch
        with pytest.raises(SottovoceError):
            carol.rooms.media_keys(room.room_id, keys[carol])  # no keys of the new epoch

        frames = [keys[alice].protect(Track.VIDEO, b"frame %d" % i + b"\x00" * 1100)
                  for i in range(1000)]
        assert _decoded(keys[bob], frames) == 1000
        assert _decoded(keys[carol], frames) == 0
        group = bob.rooms.get(room.room_id).group
        assert group is not None
        wrong = MediaKeyManager(keys[bob].context.suite, group.own_leaf_index)
        secret = _secrets.token_bytes(32)
        wrong.begin_epoch(removal.epoch, lambda label, ctx, n: (secret * 2)[:n],
                          [m.index for m in group.members()])
        assert _decoded(wrong, frames) == 0
    finally:
        await close_all([alice, bob, carol])
