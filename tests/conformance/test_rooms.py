"""Rooms through the real server (docs/protocol.md §Rooms, protocol/rooms.py):
the MLS delivery service's rules checked with raw frames.

Member commits, Welcomes and messages are opaque random bytes here: the server
never reads them, so the rules (one commit per epoch, fan-out of one ciphertext,
read positions, tokens stored as hashes) are checked without any MLS. External
commits are the exception: the server checks them with the MLS public view, so
the tests that make one build it with real MLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import uuid
from typing import Any

import pytest

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.identity import RevocationStatement
from sottovoce.limits import MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES, MAX_ROOM_COMMIT_BYTES
from sottovoce.mls.common import PreSharedKeyID
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import Group, GroupConfig, PskStore, generate_key_package
from sottovoce.mls.messages import Credential
from sottovoce.protocol.audit import AuditAction, make_entry
from sottovoce.protocol.rooms import member_identity
from tests.conformance import test_push
from tests.conformance.conftest import BACKENDS, EXTERNAL_URL, Target
from tests.conformance.rawclient import Device, RawClient, b64, logged_in, now_ms, registered, unb64


def _room_backends() -> list[str]:
    """The conformance backends whose storage adapter implements RoomStorage."""
    try:
        from sottovoce.server.storage.postgres import PostgresStorage
        from sottovoce.server.storage.roombase import RoomStorage

        pg = issubclass(PostgresStorage, RoomStorage)
    except ImportError:
        pg = False
    return [b for b in BACKENDS if b == "sqlite" or (b == "postgres" and pg)]


pytestmark = pytest.mark.parametrize(
    "target", ["external"] if EXTERNAL_URL else _room_backends(), indirect=True,
)

webhook = test_push.webhook  # the same fixture, registered in this module too
TOKEN_DOMAIN = b"sottovoce room token v1"


def new_room_id() -> str:
    return "room:" + secrets.token_hex(16)


def member(c: RawClient) -> dict[str, str]:
    assert c.device is not None
    return {"userId": c.device.username, "deviceId": c.device.device_id}


def commit_data(room: str, epoch: int, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roomId": room,
        "epoch": epoch,
        "messageId": f"c-{uuid.uuid4().hex}",
        "idempotencyKey": f"k-{uuid.uuid4().hex}",
        "commit": b64(secrets.token_bytes(64)),
        "welcome": None,
        "adds": [],
        "removes": [],
        "groupInfo": None,
        "audit": None,
        "token": None,
    }
    data.update(extra)
    return data


def send_data(room: str, epoch: int, ct: bytes, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "roomId": room,
        "epoch": epoch,
        "messageId": f"m-{uuid.uuid4().hex}",
        "idempotencyKey": f"k-{uuid.uuid4().hex}",
        "contentType": "text",
        "clientCreatedAtMs": now_ms(),
        "ciphertext": b64(ct),
    }
    data.update(extra)
    return data


def assert_error(reply: dict[str, Any], code: str, *, retryable: bool | None = None) -> None:
    assert reply["event"] == "ksmpv3.error", reply
    assert reply["data"]["code"] == code, reply
    if retryable is not None:
        assert reply["data"]["retryable"] is retryable, reply


async def room_frame(c: RawClient, kind: str | None = None) -> dict[str, Any]:
    """The next room frame's envelope (of ``kind``, skipping others)."""
    while True:
        f = await c.wait_for("sottovoce.room.frame")
        env: dict[str, Any] = f["data"]["envelope"]
        if kind is None or env["roomKind"] == kind:
            return env


async def make_room(url: str, n: int) -> tuple[str, list[RawClient], int]:
    """n registered users, live; the first creates a room and adds the others (epoch 1)."""
    clients = [await registered(url) for _ in range(n)]
    for c in clients:
        await c.resume()
    room = new_room_id()
    reply = await clients[0].request(
        "sottovoce.room.create", {"roomId": room, "groupInfo": b64(b"group-info-0")}
    )
    assert reply["event"] == "sottovoce.room.created", reply
    if n == 1:
        return room, clients, 0
    reply = await clients[0].request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(c) for c in clients[1:]], welcome=b64(b"welcome-1"),
    ))
    assert reply["event"] == "sottovoce.room.committed", reply
    await room_frame(clients[0], "commit")  # the committer is a member of epoch 0
    for c in clients[1:]:
        f = await c.wait_for("ksmpv3.inbox.frame")
        assert f["data"]["envelope"]["roomKind"] == "welcome"
    return room, clients, 1


# --- create, info, list ----------------------------------------------------------------


async def test_create_makes_the_creator_the_only_member(url: str) -> None:
    a = await registered(url)
    room = new_room_id()
    reply = await a.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
    assert reply["event"] == "sottovoce.room.created"
    assert reply["data"] == {"roomId": room, "epoch": 0, "serverSeq": 0}
    again = await a.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
    assert_error(again, "room_exists")
    info = await a.request("sottovoce.room.info", {"roomId": room})
    assert info["event"] == "sottovoce.room.state"
    # No audit entry names an admin here; no residency, no recorder until an admin sets them.
    assert info["data"] == {"roomId": room, "epoch": 0, "members": [member(a)],
                            "tokenSet": False, "latestServerSeq": 0,
                            "admin": None, "residency": None, "recorder": False}
    listed = await a.request("sottovoce.rooms.list", {})
    assert listed["data"]["rooms"] == [{"roomId": room, "epoch": 0, "latestServerSeq": 0}]
    b = await registered(url)
    assert_error(await b.request("sottovoce.room.info", {"roomId": room}), "not_member")
    assert_error(await b.request("sottovoce.room.info", {"roomId": new_room_id()}),
                 "unknown_room")


# --- commits ---------------------------------------------------------------------------


async def test_one_commit_per_epoch_losers_get_conflict_naming_the_winner(url: str) -> None:
    room, clients, epoch = await make_room(url, 6)
    racers = clients[1:]
    datas = [commit_data(room, epoch) for _ in racers]
    replies = await asyncio.gather(*(
        c.request("sottovoce.room.commit", d) for c, d in zip(racers, datas, strict=True)
    ))
    won = [r for r in replies if r["event"] == "sottovoce.room.committed"]
    lost = [r for r in replies if r["event"] == "ksmpv3.error"]
    assert len(won) == 1 and len(lost) == len(racers) - 1, replies
    winner = won[0]["data"]
    assert winner["epoch"] == epoch + 1 and winner["duplicate"] is False
    for r in lost:
        assert_error(r, "commit_conflict", retryable=True)
        assert r["data"]["details"] == {
            "roomId": room, "currentEpoch": epoch + 1, "winningServerSeq": winner["serverSeq"],
        }
    # Every member (the winner too) receives the winning commit, in serverSeq order.
    for c in clients:
        env = await room_frame(c, "commit")
        assert env["serverSeq"] == winner["serverSeq"] and env["roomEpoch"] == epoch
        assert env["messageId"] == winner["messageId"]
    # A loser processes the winner and retries in the new epoch.
    loser = racers[[r["event"] for r in replies].index("ksmpv3.error")]
    retry = await loser.request("sottovoce.room.commit", commit_data(room, epoch + 1))
    assert retry["event"] == "sottovoce.room.committed"
    assert retry["data"]["serverSeq"] == winner["serverSeq"] + 1
    # The same (device, idempotencyKey) answers the same, marked duplicate.
    won_at = next(d for d, r in zip(datas, replies, strict=True)
                  if r["event"] == "sottovoce.room.committed")
    winner_client = racers[replies.index(won[0])]
    dup = await winner_client.request("sottovoce.room.commit", won_at)
    assert dup["event"] == "sottovoce.room.committed"
    assert dup["data"] == {**winner, "duplicate": True}
    # A stale epoch from the past names the commit that made the next epoch.
    old = await clients[0].request("sottovoce.room.commit", commit_data(room, epoch))
    assert_error(old, "commit_conflict")
    assert old["data"]["details"]["winningServerSeq"] == winner["serverSeq"]
    assert old["data"]["details"]["currentEpoch"] == epoch + 2


async def test_commit_roster_change_reaches_members_before_the_change(url: str) -> None:
    room, (a, b, c), epoch = await make_room(url, 3)
    d = await registered(url)
    await d.resume()
    reply = await a.request("sottovoce.room.commit", commit_data(
        room, epoch, adds=[member(d)], removes=[member(c)], welcome=b64(b"welcome-d"),
    ))
    assert reply["event"] == "sottovoce.room.committed"
    seq = reply["data"]["serverSeq"]
    for x in (a, b, c):  # c is removed by it, and learns so from it
        env = await room_frame(x, "commit")
        assert env["serverSeq"] == seq
        assert env["adds"] == [member(d)] and env["removes"] == [member(c)]
        assert env["recipientUserId"] == "" and env["contentType"] == "system"
    welcome = (await d.wait_for("ksmpv3.inbox.frame"))["data"]["envelope"]
    assert welcome["roomKind"] == "welcome" and welcome["conversationId"] == room
    assert welcome["serverSeq"] == seq and welcome["roomEpoch"] == epoch + 1
    assert unb64(welcome["ciphertext"]) == b"welcome-d"
    await d.nothing(0.2)  # the added device does not get the commit itself
    info = await b.request("sottovoce.room.info", {"roomId": room})
    assert {m["userId"] for m in info["data"]["members"]} == {
        a.device.username, b.device.username, d.device.username,  # type: ignore[union-attr]
    }
    # c is out: it can neither send nor commit, and receives nothing new.
    assert_error(await c.request("sottovoce.room.send", send_data(room, epoch + 1, b"x")),
                 "not_member")
    ack = await d.request("sottovoce.room.send", send_data(room, epoch + 1, b"hello from d"))
    assert ack["event"] == "ksmpv3.send.ack"
    for x in (a, b, d):
        assert unb64((await room_frame(x, "message"))["ciphertext"]) == b"hello from d"
    await c.nothing(0.2)


# --- messages --------------------------------------------------------------------------


async def test_room_send_fans_one_envelope_out_to_every_member_device(url: str) -> None:
    room, clients, epoch = await make_room(url, 4)
    outsider = await registered(url)
    await outsider.resume()
    ct = secrets.token_bytes(200)
    data = send_data(room, epoch, ct)
    ack = await clients[1].request("sottovoce.room.send", data)
    assert ack["event"] == "ksmpv3.send.ack"
    assert ack["data"]["conversationId"] == room and ack["data"]["duplicate"] is False
    envs = [await room_frame(c, "message") for c in clients]
    assert all(e == envs[0] for e in envs), "every member device gets the same envelope"
    env = envs[0]
    assert unb64(env["ciphertext"]) == ct and env["serverSeq"] == ack["data"]["serverSeq"]
    assert env["roomEpoch"] == epoch and env["senderUserId"] == clients[1].device.username  # type: ignore[union-attr]
    assert env["serverReceivedAtMs"] == ack["data"]["serverReceivedAtMs"]
    await outsider.nothing(0.3)
    dup = await clients[1].request("sottovoce.room.send", data)
    assert dup["event"] == "ksmpv3.send.ack" and dup["data"]["duplicate"] is True
    assert dup["data"]["serverSeq"] == ack["data"]["serverSeq"]
    await clients[2].nothing(0.2)  # a retry is not delivered twice


async def test_offline_member_gets_a_push_tickle_and_nothing_more(
    url: str, webhook: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = webhook
    room, (a, b), epoch = await make_room(url, 2)
    reply = await b.request("sottovoce.push.register", {"endpoint": endpoint})
    assert reply["event"] == "sottovoce.push.registered"
    await b.close()
    canary = b"ROOM-PUSH-CANARY"
    ack = await a.request("sottovoce.room.send", send_data(room, epoch, canary))
    assert ack["event"] == "ksmpv3.send.ack"
    for _ in range(100):
        if bodies:
            break
        await asyncio.sleep(0.05)
    assert bodies, "no tickle arrived"
    assert json.loads(bodies[0]) == {"type": "ksmpv3_tickle"}
    assert all(canary not in body and b64(canary).encode() not in body for body in bodies)


async def test_send_in_an_old_epoch_is_stale(url: str) -> None:
    room, (_, b), epoch = await make_room(url, 2)
    reply = await b.request("sottovoce.room.send", send_data(room, epoch - 1, b"old"))
    assert_error(reply, "stale_epoch", retryable=True)
    assert reply["data"]["details"] == {"roomId": room, "currentEpoch": epoch}
    assert reply["data"]["messageId"]


async def test_welcome_survives_reconnect_until_acked(url: str) -> None:
    a = await registered(url)
    await a.resume()
    joiner = Device.new()
    j = await registered(url, joiner)
    await j.close()  # offline when added
    room = new_room_id()
    await a.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
    reply = await a.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[{"userId": joiner.username, "deviceId": "d1"}], welcome=b64(b"W"),
    ))
    assert reply["event"] == "sottovoce.room.committed"
    for _ in range(2):  # not acked: the Welcome is replayed after every reconnect
        j = await logged_in(url, joiner)
        frames = await j.resume()
        envs = [f["data"]["envelope"] for f in frames]
        assert [e["roomKind"] for e in envs] == ["welcome"]
        assert unb64(envs[0]["ciphertext"]) == b"W"
        assert envs[0]["serverSeq"] == reply["data"]["serverSeq"]
        await j.close()
    j = await logged_in(url, joiner)
    frames = await j.resume()
    await j.send("ksmpv3.ack.read", {"upToGlobalInboxSeq": frames[-1]["data"]["globalInboxSeq"]})
    await j.request("ping", {})
    await j.close()
    # ack.read has no reply: poll (bounded) until the deletion is visible.
    for _ in range(50):
        j = await logged_in(url, joiner)
        left = await j.resume()
        await j.close()
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == []


async def test_resume_replays_room_frames_after_the_read_position(url: str) -> None:
    room, (a, b), epoch = await make_room(url, 2)
    bdev = b.device
    assert bdev is not None
    await b.close()
    acks = []
    for i in range(3):
        ack = await a.request("sottovoce.room.send", send_data(room, epoch, b"m%d" % i))
        acks.append(ack["data"]["serverSeq"])
    b = await logged_in(url, bdev)
    await b.send("ksmpv3.resume", {"lastGlobalInboxSeq": 0})
    got: list[dict[str, Any]] = []
    while True:  # inbox (the Welcome), then room frames, then replay.done
        f = await b.recv()
        if f["event"] == "sottovoce.replay.done":
            break
        if f["event"] == "sottovoce.room.frame":
            got.append(f["data"]["envelope"])
    seqs = [e["serverSeq"] for e in got]
    assert seqs == sorted(seqs) and seqs[-3:] == acks
    assert [unb64(e["ciphertext"]) for e in got[-3:]] == [b"m0", b"m1", b"m2"]
    ack = await b.request("sottovoce.room.ack", {"roomId": room, "upToServerSeq": acks[1]})
    assert ack["event"] == "sottovoce.room.acked"
    assert ack["data"] == {"roomId": room, "upToServerSeq": acks[1]}
    await b.close()
    b = await logged_in(url, bdev)
    await b.send("ksmpv3.resume", {"lastGlobalInboxSeq": 10**6})
    again = []
    while True:
        f = await b.recv()
        if f["event"] == "sottovoce.replay.done":
            break
        if f["event"] == "sottovoce.room.frame":
            again.append(f["data"]["envelope"]["serverSeq"])
    assert again == [acks[2]]
    # Live frames follow the replay.
    await a.request("sottovoce.room.send", send_data(room, epoch, b"live"))
    assert unb64((await room_frame(b, "message"))["ciphertext"]) == b"live"


async def test_sync_returns_frames_after_a_seq_members_only(url: str) -> None:
    room, (a, b), epoch = await make_room(url, 2)
    for i in range(3):
        await a.request("sottovoce.room.send", send_data(room, epoch, b"s%d" % i))
    for _ in range(3):
        await room_frame(b, "message")  # the live copies
    latest = (await b.request("sottovoce.room.info", {"roomId": room}))["data"]["latestServerSeq"]
    rid = await b.send("sottovoce.room.sync", {"roomId": room, "afterServerSeq": latest - 2})
    got = []
    while True:
        f = await b.recv()
        if f["event"] == "sottovoce.room.synced":
            break
        got.append(f["data"]["envelope"])
    assert f["requestId"] == rid
    assert [e["serverSeq"] for e in got] == [latest - 1, latest]
    assert [unb64(e["ciphertext"]) for e in got] == [b"s1", b"s2"]
    assert f["data"] == {"roomId": room, "upToServerSeq": latest, "epoch": epoch,
                         "latestServerSeq": latest}
    # A device that joined later gets nothing from before its join.
    c = await registered(url)
    await a.request("sottovoce.room.commit", commit_data(room, epoch, adds=[member(c)]))
    await c.send("sottovoce.room.sync", {"roomId": room, "afterServerSeq": 0})
    f = await c.wait_for("sottovoce.room.synced")
    # upToServerSeq is where the server stopped looking: past everything from before the
    # join (and past expired messages), so the device's next sync starts there.
    assert f["data"]["upToServerSeq"] == latest + 1 and f["data"]["latestServerSeq"] == latest + 1
    await c.nothing(0.2)
    outsider = await registered(url)
    assert_error(await outsider.request("sottovoce.room.sync", {"roomId": room}), "not_member")


async def test_removed_offline_device_learns_its_removal_on_replay(url: str) -> None:
    room, (a, _, c), epoch = await make_room(url, 3)
    cdev = c.device
    assert cdev is not None
    await c.close()
    await a.request("sottovoce.room.send", send_data(room, epoch, b"still in"))
    rm = await a.request("sottovoce.room.commit", commit_data(room, epoch, removes=[member(c)]))
    await a.request("sottovoce.room.send", send_data(room, epoch + 1, b"after removal"))
    c = await logged_in(url, cdev)
    await c.send("ksmpv3.resume", {"lastGlobalInboxSeq": 10**6})
    kinds = []
    while True:
        f = await c.recv()
        if f["event"] == "sottovoce.replay.done":
            break
        if f["event"] == "sottovoce.room.frame":
            env = f["data"]["envelope"]
            kinds.append((env["roomKind"], env["serverSeq"]))
    # Up to and including the commit that removed it; nothing after.
    assert kinds[-2:] == [("message", rm["data"]["serverSeq"] - 1),
                          ("commit", rm["data"]["serverSeq"])]
    ack = await c.request("sottovoce.room.ack",
                          {"roomId": room, "upToServerSeq": rm["data"]["serverSeq"]})
    assert ack["event"] == "sottovoce.room.acked"
    assert_error(await c.request("sottovoce.room.info", {"roomId": room}), "not_member")
    listed = await c.request("sottovoce.rooms.list", {})
    assert listed["data"]["rooms"] == []


# --- tokens ----------------------------------------------------------------------------


def mls_group(c: RawClient) -> tuple[str, Group]:
    """A real one-member MLS group of ``c`` (external commits are checked by the server's
    MLS public view, so a room that takes them needs a real GroupInfo) and its room id."""
    assert c.device is not None
    group = Group.create(
        1, credential=Credential.basic(member_identity(c.device.username, c.device.device_id)),
        signing_key=c.device.mls_key, rng=secrets.token_bytes, now_ms=now_ms(),
        group_id=secrets.token_bytes(16),
    )
    return "room:" + group.group_id.hex(), group


def external_commit(c: RawClient, group_info: bytes, psk_id: bytes) -> Group:
    """``c``'s external commit (RFC 9420 §12.4.3.2) on ``group_info``, injecting an external
    PSK named ``psk_id`` (its value is the members' business, not the server's)."""
    assert c.device is not None
    return Group.join_by_external_commit(
        group_info,
        credential=Credential.basic(member_identity(c.device.username, c.device.device_id)),
        signing_key=c.device.mls_key, rng=secrets.token_bytes, now_ms=now_ms(),
        psks=[PreSharedKeyID.external(psk_id, secrets.token_bytes(32))],
        config=GroupConfig(psk_lookup=PskStore({psk_id: secrets.token_bytes(32)})),
    )


async def test_token_groupinfo_external_commit_and_revoke(url: str) -> None:
    a = await registered(url)
    await a.resume()
    room, group = mls_group(a)
    created = await a.request("sottovoce.room.create",
                              {"roomId": room, "groupInfo": b64(group.group_info())})
    assert created["event"] == "sottovoce.room.created", created
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    reply = await a.request("sottovoce.room.token.set", {"roomId": room, "token": token})
    assert reply["data"] == {"roomId": room, "tokenSet": True}
    assert (await a.request("sottovoce.room.info", {"roomId": room}))["data"]["tokenSet"] is True
    joiner = await registered(url)
    await joiner.resume()
    gi = await joiner.request("sottovoce.room.groupinfo.get", {"token": token})
    assert gi["event"] == "sottovoce.room.groupinfo"
    assert gi["data"] == {"roomId": room, "epoch": 0, "groupInfo": b64(group.group_info())}
    wrong = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(await joiner.request("sottovoce.room.groupinfo.get", {"token": wrong}),
                 "invalid_token", retryable=False)
    # The members' GroupInfo by room id: for members only.
    mine = await a.request("sottovoce.room.groupinfo.get", {"roomId": room})
    assert mine["data"] == gi["data"]
    assert_error(await joiner.request("sottovoce.room.groupinfo.get", {"roomId": room}),
                 "not_member")
    # External commit: the token authorizes a non-member that adds exactly itself...
    h = hashlib.sha256(TOKEN_DOMAIN + token.encode()).digest()
    join = external_commit(joiner, unb64(gi["data"]["groupInfo"]), h)
    commit = {"commit": b64(join.commit), "groupInfo": b64(join.group.group_info())}
    bad = await joiner.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(joiner)], token=wrong, **commit))
    assert_error(bad, "invalid_token")
    assert_error(await joiner.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(joiner)], **commit)), "not_member")
    assert_error(await joiner.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(joiner), member(a)], token=token, **commit)), "bad_request")
    # ... with a commit the server can check: not 64 random bytes (the attack that wedged
    # rooms), not one that binds no token PSK, nor one for another epoch.
    for refused in (
        {"commit": b64(secrets.token_bytes(64)), "groupInfo": commit["groupInfo"]},
        {"commit": b64(external_commit(joiner, unb64(gi["data"]["groupInfo"]), b"x" * 32)
                       .commit), "groupInfo": commit["groupInfo"]},
        {**commit, "groupInfo": b64(group.group_info())},  # not the next epoch's
    ):
        assert_error(await joiner.request("sottovoce.room.commit", commit_data(
            room, 0, adds=[member(joiner)], token=token, **refused)), "invalid_commit")
    assert (await a.request("sottovoce.room.info", {"roomId": room}))["data"]["epoch"] == 0
    ok = await joiner.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(joiner)], token=token, **commit))
    assert ok["event"] == "sottovoce.room.committed" and ok["data"]["epoch"] == 1
    assert (await room_frame(a, "commit"))["adds"] == [member(joiner)]
    info = await joiner.request("sottovoce.room.info", {"roomId": room})
    assert member(joiner) in info["data"]["members"]
    gi = await a.request("sottovoce.room.groupinfo.get", {"token": token})
    assert gi["data"]["groupInfo"] == commit["groupInfo"] and gi["data"]["epoch"] == 1
    # Revoked: the same answer as a token that never existed.
    reply = await a.request("sottovoce.room.token.revoke", {"roomId": room, "audit": None})
    assert reply["data"] == {"roomId": room, "tokenSet": False}
    assert_error(await a.request("sottovoce.room.groupinfo.get", {"token": token}),
                 "invalid_token")


def key_package(c: RawClient, *, key: SigningKey | None = None, name: RawClient | None = None
                ) -> bytes:
    """An MLSMessage(KeyPackage) of ``c``'s device (``key``/``name`` forge one)."""
    who = (name or c).device
    assert c.device is not None and who is not None
    kp, _ = generate_key_package(
        1, Credential.basic(member_identity(who.username, who.device_id)),
        key or c.device.mls_key, secrets.token_bytes, now_ms(),
    )
    return MLSMessage(body=kp).encode()


async def test_join_request_is_a_notice_to_the_members(url: str) -> None:
    room, (a, b), epoch = await make_room(url, 2)
    token = secrets.token_urlsafe(32)
    await a.request("sottovoce.room.token.set", {"roomId": room, "token": token})
    asker = await registered(url)
    await asker.resume()
    kp = key_package(asker)
    reply = await asker.request("sottovoce.room.join.request",
                                {"token": token, "keyPackage": b64(kp)})
    assert reply["data"] == {"roomId": room}
    for x in (a, b):
        env = await room_frame(x, "notice")
        assert env["joinRequest"] == member(asker)
        assert unb64(env["ciphertext"]) == kp and env["contentType"] == "system"
        assert env["roomEpoch"] == epoch
    await asker.nothing(0.2)
    assert_error(await asker.request("sottovoce.room.join.request",
                                     {"token": secrets.token_urlsafe(32), "keyPackage": b64(kp)}),
                 "invalid_token")


async def test_a_join_request_carries_only_the_requesters_own_key_package(url: str) -> None:
    room, (a,), _ = await make_room(url, 1)
    token = secrets.token_urlsafe(32)
    await a.request("sottovoce.room.token.set", {"roomId": room, "token": token})
    asker = await registered(url)
    stranger = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
    for bad, code in (
        (secrets.token_bytes(300), "invalid_key_package"),      # attacker-chosen bytes
        (key_package(asker, name=a), "invalid_key_package"),    # names another device
        (key_package(asker, key=stranger), "invalid_key_package"),  # not its certified key
        (key_package(asker) + b"\x00" * MAX_JOIN_REQUEST_KEY_PACKAGE_BYTES,
         "payload_too_large"),  # over the size cap
    ):
        assert_error(await asker.request("sottovoce.room.join.request",
                                         {"token": token, "keyPackage": b64(bad)}), code)
    await a.nothing(0.2)  # none of that reached the members


async def test_a_join_request_flood_is_bounded(url: str) -> None:
    """One device asks again and again; then many devices ask at once. The server answers
    with typed errors past each limit, and the members get at most the room's cap."""
    from sottovoce.limits import (
        JOIN_REQUESTS_PER_DEVICE_BURST,
        JOIN_REQUESTS_PER_ROOM_BURST,
        MAX_PENDING_JOIN_REQUESTS,
    )

    room, (a,), _ = await make_room(url, 1)
    token = secrets.token_urlsafe(32)
    await a.request("sottovoce.room.token.set", {"roomId": room, "token": token})

    async def ask(c: RawClient) -> dict[str, Any]:
        return await c.request("sottovoce.room.join.request",
                               {"token": token, "keyPackage": b64(key_package(c))})

    first = await registered(url)
    assert (await ask(first))["event"] == "sottovoce.room.join.requested"
    for _ in range(JOIN_REQUESTS_PER_DEVICE_BURST - 1):
        assert_error(await ask(first), "join_request_pending", retryable=False)
    assert_error(await ask(first), "rate_limited", retryable=True)
    askers = [await registered(url) for _ in range(JOIN_REQUESTS_PER_ROOM_BURST + 1)]
    replies = [await ask(c) for c in askers]
    events = [r["event"] if r["event"] != "ksmpv3.error" else r["data"]["code"] for r in replies]
    room_left = JOIN_REQUESTS_PER_ROOM_BURST - JOIN_REQUESTS_PER_DEVICE_BURST
    assert events == (
        ["sottovoce.room.join.requested"] * (MAX_PENDING_JOIN_REQUESTS - 1)
        + ["join_requests_full"] * (room_left - MAX_PENDING_JOIN_REQUESTS + 1)
        + ["rate_limited"] * (len(askers) - room_left)
    )
    # Each accepted request notifies the members: wait for them all (room_frame has a
    # generous deadline), then none more.
    for _ in range(MAX_PENDING_JOIN_REQUESTS):
        await room_frame(a, "notice")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(room_frame(a, "notice"), 0.5)


@pytest.mark.fresh_server
async def test_token_is_stored_only_as_its_hash(target: Target) -> None:
    proc = target.local()
    room, (a, b), _ = await make_room(target.ws_url, 2)
    token = secrets.token_urlsafe(32)
    await a.request("sottovoce.room.token.set", {"roomId": room, "token": token})
    await b.request("sottovoce.room.groupinfo.get", {"token": token})
    await b.request("sottovoce.room.join.request", {"token": token, "keyPackage": b64(b"kp")})
    joiner = await registered(target.ws_url)
    await joiner.request("sottovoce.room.join.request",
                         {"token": token, "keyPackage": b64(key_package(joiner))})
    h = hashlib.sha256(TOKEN_DOMAIN + token.encode()).digest()
    files = [proc.db_path, proc.db_path.with_name(proc.db_path.name + "-wal"), proc.log_path]
    blob = b"".join(p.read_bytes() for p in files if p.exists())
    if target.database is not None:  # PostgreSQL: its files are not ours to read; ask it
        import asyncpg

        conn = await asyncpg.connect(target.database)
        try:
            rows = []
            for table in ("rooms", "room_messages", "room_audit", "sends"):
                rows += [str(tuple(r)) for r in await conn.fetch(f"SELECT * FROM {table}")]
            dump = "\n".join(rows).encode()
            hashes = [bytes(r[0]) for r in await conn.fetch(
                "SELECT token_hash FROM rooms WHERE token_hash IS NOT NULL")]
        finally:
            await conn.close()
        assert hashes == [h], "the hash is what the server keeps"
        blob += dump
    else:
        assert h in blob, "the hash is what the server keeps"
    assert token.encode() not in blob
    assert base64.b64encode(token.encode()) not in blob


# --- revocation ------------------------------------------------------------------------


async def test_revoked_device_gets_nothing_and_its_rooms_get_a_remove_request(url: str) -> None:
    alice = Device.new()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    alice2 = alice.sibling("d2")
    assert (await a2.add_device(alice2))["event"] == "sottovoce.registered"
    c = await registered(url)
    for x in (a1, a2, c):
        await x.resume()
    room = new_room_id()
    await c.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
    reply = await c.request("sottovoce.room.commit", commit_data(
        room, 0, adds=[member(a1), member(a2)], welcome=b64(b"w")))
    assert reply["event"] == "sottovoce.room.committed"
    stmt = RevocationStatement.issue(alice.account_key, username=alice.username,
                                     device_id="d2", now_ms=now_ms())
    reply = await a1.request("sottovoce.device.revoke", {"revocation": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.device.revoked"
    for x in (a1, c):
        env = await room_frame(x, "notice")
        assert env["removeRequest"] == {"userId": alice.username, "deviceId": "d2",
                                        "reason": "revoked"}
        assert env["ciphertext"] == "AA=="
    ack = await c.request("sottovoce.room.send", send_data(room, 1, b"after revoke"))
    assert ack["event"] == "ksmpv3.send.ack"
    # The revoked device's socket was closed (4001); nothing room-related reached it.
    with_room = []
    try:
        while True:
            f = await a2._read(2.0)
            if f["event"] == "sottovoce.room.frame":
                with_room.append(f["data"]["envelope"]["roomKind"])
    except Exception:  # closed or quiet: both end the read
        pass
    assert "message" not in with_room and "notice" not in with_room
    assert a2.ws.close_code == 4001
    # It stays an MLS member until someone commits its Remove (the first commit wins).
    info = await c.request("sottovoce.room.info", {"roomId": room})
    assert {"userId": alice.username, "deviceId": "d2"} in info["data"]["members"]
    rm = await a1.request("sottovoce.room.commit", commit_data(
        room, 1, removes=[{"userId": alice.username, "deviceId": "d2"}]))
    assert rm["event"] == "sottovoce.room.committed"
    info = await c.request("sottovoce.room.info", {"roomId": room})
    assert {"userId": alice.username, "deviceId": "d2"} not in info["data"]["members"]


# --- KeyPackages -----------------------------------------------------------------------


async def test_keypackages_claimed_once_then_last_resort_and_low_notice(url: str) -> None:
    owner = await registered(url)
    await owner.resume()
    kps = [secrets.token_bytes(200) for _ in range(3)]
    last = secrets.token_bytes(200)
    reply = await owner.request("sottovoce.keypackages.upload", {
        "keyPackages": [b64(k) for k in kps], "lastResort": b64(last)})
    assert reply["data"] == {"count": 3}
    other = await registered(url)
    name = owner.device.username  # type: ignore[union-attr]
    got = []
    for _ in range(5):
        r = await other.request("sottovoce.keypackages.claim", {"username": name})
        assert r["event"] == "sottovoce.keypackages.bundles"
        (bundle,) = r["data"]["keyPackages"]
        assert bundle["deviceId"] == "d1"
        got.append(unb64(bundle["keyPackage"]))
    assert got == [*kps, last, last], "one-time ones once each, then the last resort, kept"
    low = await owner.wait_for("sottovoce.keypackages.low")
    assert low["data"]["remaining"] < 10
    # A device never claims its own KeyPackage.
    mine = await owner.request("sottovoce.keypackages.claim", {"username": name})
    assert mine["data"]["keyPackages"] == []
    # At auth, a device that uses rooms hears that its stock is low.
    await owner.close()
    again = await logged_in(url, owner.device)  # type: ignore[arg-type]
    low = await again.wait_for("sottovoce.keypackages.low")
    assert low["data"] == {"remaining": 0, "suite": 1}  # a stock from before suites: suite 1


# --- audit -----------------------------------------------------------------------------


def _entry(
    c: RawClient, room: str, prev: bytes | None, epoch: int, *,
    key: SigningKey | None = None, actor: RawClient | None = None,
    subjects: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """An entry by ``c`` (signed with its certified MLS key, naming it as the actor);
    ``key``/``actor`` forge one."""
    assert c.device is not None
    who = (actor or c).device
    assert who is not None
    return make_entry(
        signing_key=key or c.device.mls_key, suite=1, prev=prev, room_id=room, epoch=epoch,
        epoch_authenticator=b"\x01" * 32, action=AuditAction.CALL_STARTED,
        actor_user_id=who.username, actor_device_id=who.device_id, actor_leaf_index=0,
        now_ms=now_ms(), subjects=subjects,
    ).encode()


async def test_audit_chain_links_or_is_refused(url: str) -> None:
    room, (a, b), epoch = await make_room(url, 2)
    e0 = _entry(a, room, None, epoch)
    reply = await a.request("sottovoce.room.audit.append", {"roomId": room, "entry": b64(e0)})
    assert reply["data"] == {"roomId": room, "index": 0}
    # Not linked to the head (index 0 again): refused, nothing stored.
    again = await a.request("sottovoce.room.audit.append", {"roomId": room, "entry": b64(e0)})
    assert_error(again, "audit_conflict", retryable=True)
    assert again["data"]["details"] == {"roomId": room, "nextIndex": 1}
    e1 = _entry(b, room, e0, epoch)
    commit = await b.request("sottovoce.room.commit", commit_data(room, epoch, audit=b64(e1)))
    assert commit["event"] == "sottovoce.room.committed"
    # A commit whose audit entry does not link is refused as a whole.
    stale = await a.request("sottovoce.room.commit",
                            commit_data(room, epoch + 1, audit=b64(_entry(a, room, e0, epoch))))
    assert_error(stale, "audit_conflict")
    info = await a.request("sottovoce.room.info", {"roomId": room})
    assert info["data"]["epoch"] == epoch + 1
    got = await a.request("sottovoce.room.audit.get", {"roomId": room, "afterIndex": -1})
    assert [unb64(e) for e in got["data"]["entries"]] == [e0, e1]
    got = await a.request("sottovoce.room.audit.get", {"roomId": room, "afterIndex": 0})
    assert [unb64(e) for e in got["data"]["entries"]] == [e1]
    other = _entry(a, new_room_id(), None, 0)
    assert_error(await a.request("sottovoce.room.audit.append",
                                 {"roomId": room, "entry": b64(other)}), "bad_request")
    outsider = await registered(url)
    assert_error(await outsider.request("sottovoce.room.audit.get", {"roomId": room}),
                 "not_member")


async def test_an_audit_entry_is_signed_by_the_sending_devices_certified_key(url: str) -> None:
    """The poisoning attack: a member appends an entry with a garbage signature naming
    another member as actor. Refused, like every entry not by the sender's certified key;
    nothing is stored and the chain goes on."""
    room, (a, b), epoch = await make_room(url, 2)
    e0 = _entry(a, room, None, epoch)
    forged = bytearray(_entry(b, room, e0, epoch, actor=a))
    forged[-1] ^= 1  # a garbage signature, too
    stranger = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
    assert (await a.request("sottovoce.room.audit.append",
                            {"roomId": room, "entry": b64(e0)}))["data"]["index"] == 0
    broken = bytearray(_entry(b, room, e0, epoch))
    broken[-1] ^= 1  # flipped, never set: a signature may already end in any byte
    for bad in (
        bytes(forged),                                        # another actor, bad signature
        _entry(b, room, e0, epoch, actor=a),                  # another actor, b's key
        _entry(b, room, e0, epoch, key=stranger),             # b as actor, not b's key
        bytes(broken),                                        # b's key, signature broken
    ):
        assert_error(await b.request("sottovoce.room.audit.append",
                                     {"roomId": room, "entry": b64(bad)}),
                     "invalid_audit_entry", retryable=False)
        assert_error(await b.request("sottovoce.room.commit",
                                     commit_data(room, epoch, audit=b64(bad))),
                     "invalid_audit_entry")
    got = await a.request("sottovoce.room.audit.get", {"roomId": room, "afterIndex": -1})
    assert [unb64(e) for e in got["data"]["entries"]] == [e0]
    e1 = _entry(b, room, e0, epoch)
    assert (await b.request("sottovoce.room.audit.append",
                            {"roomId": room, "entry": b64(e1)}))["data"]["index"] == 1


async def test_audit_replies_fit_in_a_frame_and_say_more(url: str) -> None:
    """Entries of up to 36 KiB: a reply is cut by bytes, says "more", and paging by
    afterIndex returns the whole chain in order."""
    from sottovoce.limits import ROOM_AUDIT_REPLY_BYTES

    room, (a, _), epoch = await make_room(url, 2)
    subjects = tuple((f"user{i:03d}" + "x" * 50, f"device{i:03d}" + "y" * 50) for i in range(120))
    chain: list[bytes] = []
    while sum(len(b64(e)) for e in chain) <= ROOM_AUDIT_REPLY_BYTES * 1.5:
        entry = _entry(a, room, chain[-1] if chain else None, epoch, subjects=subjects)
        reply = await a.request("sottovoce.room.audit.append",
                                {"roomId": room, "entry": b64(entry)})
        assert reply["event"] == "sottovoce.room.audit.appended", reply
        chain.append(entry)
    got: list[bytes] = []
    pages = 0
    while True:
        reply = await a.request("sottovoce.room.audit.get",
                                {"roomId": room, "afterIndex": len(got) - 1})
        page = [unb64(e) for e in reply["data"]["entries"]]
        assert sum(len(e) for e in reply["data"]["entries"]) <= ROOM_AUDIT_REPLY_BYTES
        got.extend(page)
        pages += 1
        if not reply["data"]["more"]:
            break
    assert got == chain and pages >= 2


# --- bad input -------------------------------------------------------------------------


async def test_bad_room_input_gets_typed_errors(url: str) -> None:
    room, (a, b), epoch = await make_room(url, 2)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("sottovoce.room.create", {"roomId": "room:XYZ"}, "bad_request"),
        ("sottovoce.room.create", {"roomId": 5}, "bad_request"),
        ("sottovoce.room.send", send_data(room, "1", b"x"), "bad_request"),  # type: ignore[arg-type]
        ("sottovoce.room.send", send_data(room, epoch, b"x", contentType="html"), "bad_request"),
        ("sottovoce.room.send", {**send_data(room, epoch, b"x"), "ciphertext": ""},
         "bad_request"),
        ("sottovoce.room.send", {**send_data(room, epoch, b"x"), "ciphertext": "!!"},
         "bad_request"),
        ("sottovoce.room.commit", commit_data(room, epoch, adds="all"), "bad_request"),
        ("sottovoce.room.commit", commit_data(room, epoch, adds=[member(b)], removes=[member(b)]),
         "bad_request"),
        ("sottovoce.room.commit", commit_data(room, epoch, adds=[member(b)]), "bad_request"),
        ("sottovoce.room.commit",
         commit_data(room, epoch, commit=b64(b"\0" * (MAX_ROOM_COMMIT_BYTES + 1))),
         "payload_too_large"),
        ("sottovoce.room.commit", commit_data(room, epoch, welcome=b64(b"w")), "bad_request"),
        ("sottovoce.room.commit", commit_data(
            room, epoch, adds=[{"userId": "nobody-here", "deviceId": "d1"}]), "bad_request"),
        ("sottovoce.room.token.set", {"roomId": room, "token": "short"}, "bad_request"),
        ("sottovoce.room.token.set", {"roomId": room, "token": "x" * 40 + "\n"}, "bad_request"),
        ("sottovoce.room.ack", {"roomId": room, "upToServerSeq": 0}, "bad_request"),
        ("sottovoce.room.audit.append", {"roomId": room, "entry": b64(b"junk")}, "bad_request"),
        ("sottovoce.keypackages.upload", {"keyPackages": []}, "bad_request"),
        ("sottovoce.keypackages.upload",
         {"keyPackages": [b64(b"\0" * (16 * 1024 + 1))]}, "payload_too_large"),
        ("sottovoce.keypackages.claim", {"username": "nobody-here"}, "unknown_user"),
        ("sottovoce.room.send", send_data(new_room_id(), 0, b"x"), "unknown_room"),
    ]
    for event, data, code in cases:
        assert_error(await a.request(event, data), code)
        await asyncio.sleep(0)
    outsider = await registered(url)
    for event, data in [
        ("sottovoce.room.send", send_data(room, epoch, b"x")),
        ("sottovoce.room.commit", commit_data(room, epoch)),
        ("sottovoce.room.ack", {"roomId": room, "upToServerSeq": 1}),
        ("sottovoce.room.token.set", {"roomId": room, "token": secrets.token_urlsafe(32)}),
        ("sottovoce.room.audit.append",
         {"roomId": room, "entry": b64(_entry(outsider, room, None, 1))}),
    ]:
        assert_error(await outsider.request(event, data), "not_member")
    # Nothing of that reached the members.
    info = await a.request("sottovoce.room.info", {"roomId": room})
    assert info["data"]["epoch"] == epoch and info["data"]["latestServerSeq"] == 1
