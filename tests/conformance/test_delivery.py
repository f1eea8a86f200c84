"""KSMP v3 delivery rules: ack, serverSeq, globalInboxSeq, idempotency, durability, resume,
ack.read deletion, device_mismatch (docs/protocol.md §Delivery)."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from tests.conformance.conftest import Target, online_pair
from tests.conformance.rawclient import (
    Device,
    RawClient,
    logged_in,
    registered,
    unb64,
)
from tests.conformance.test_session import assert_error


async def test_send_ack_carries_server_seq(url: str) -> None:
    a, b = await online_pair(url)
    bob = b.device.username
    data = a.send_data(bob, [(bob, "d1", b"one")])
    ack = await a.request("ksmpv3.send", data)
    assert ack["event"] == "ksmpv3.send.ack"
    assert ack["data"]["serverSeq"] == 1
    assert ack["data"]["messageId"] == data["messageId"]
    assert ack["data"]["idempotencyKey"] == data["idempotencyKey"]
    assert ack["data"]["conversationId"] == data["conversationId"]
    assert ack["data"]["duplicate"] is False
    frame = await b.expect("ksmpv3.inbox.frame")
    env = frame["data"]["envelope"]
    assert unb64(env["ciphertext"]) == b"one"
    assert env["serverSeq"] == 1
    assert env["serverReceivedAtMs"] == ack["data"]["serverReceivedAtMs"]
    assert env["senderUserId"] == a.device.username and env["senderDeviceId"] == "d1"
    assert env["recipientUserId"] == bob and env["protocol"] == "ksmpv3"
    assert env["ephemeral"] is False


async def test_server_seq_strictly_increasing_per_conversation_and_shared_by_device_copies(
    url: str,
) -> None:
    alice, bob = Device.new(), Device.new()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    assert (await a2.add_device(alice.sibling("d2")))["event"] == "sottovoce.registered"
    b1 = await registered(url, bob)
    b2 = await RawClient.open(url)
    assert (await b2.add_device(bob.sibling("d2")))["event"] == "sottovoce.registered"
    for c in (a1, a2, b1, b2):
        await c.resume()
    seqs = []
    for i in range(5):
        targets = [(bob.username, "d1", b"b1-%d" % i), (bob.username, "d2", b"b2-%d" % i),
                   (alice.username, "d2", b"a2-%d" % i)]
        sender = a1 if i % 2 == 0 else b1
        if sender is b1:
            targets = [(alice.username, "d1", b"x"), (alice.username, "d2", b"y"),
                       (bob.username, "d2", b"z")]
            ack = await b1.send_message(alice.username, targets)
        else:
            ack = await a1.send_message(bob.username, targets)
        assert ack["event"] == "ksmpv3.send.ack", ack
        seqs.append(ack["data"]["serverSeq"])
    assert seqs == [1, 2, 3, 4, 5], "one conversation, strictly increasing, both directions"
    # Every device copy of one send carries the same serverSeq and its own ciphertext.
    got = {}
    for name, c in (("b2", b2), ("a2", a2)):
        frames = [await c.expect("ksmpv3.inbox.frame") for _ in range(5)]
        got[name] = [f["data"]["envelope"]["serverSeq"] for f in frames]
    assert got["b2"] == [1, 2, 3, 4, 5] and got["a2"] == [1, 2, 3, 4, 5]
    # A different conversation has its own sequence.
    carol = await registered(url)
    await carol.resume()
    ack = await a1.send_message(carol.device.username, [(carol.device.username, "d1", b"c"),
                                                        (alice.username, "d2", b"c")])
    assert ack["data"]["serverSeq"] == 1


async def test_global_inbox_seq_strictly_increasing_per_device(url: str) -> None:
    a, b = await online_pair(url)
    c = await registered(url)
    await c.resume()
    bob = b.device.username
    for sender in (a, c, a, c):
        ack = await sender.send_message(bob, [(bob, "d1", b"m")])
        assert ack["event"] == "ksmpv3.send.ack"
    frames = [await b.expect("ksmpv3.inbox.frame") for _ in range(4)]
    assert [f["data"]["globalInboxSeq"] for f in frames] == [1, 2, 3, 4]


async def test_idempotent_retry_returns_same_ack_and_no_second_delivery(url: str) -> None:
    a, b = await online_pair(url)
    bob = b.device.username
    data = a.send_data(bob, [(bob, "d1", b"once")])
    first = await a.request("ksmpv3.send", data)
    again = await a.request("ksmpv3.send", data)
    assert again["event"] == "ksmpv3.send.ack"
    assert again["data"]["duplicate"] is True
    for key in ("messageId", "serverSeq", "serverReceivedAtMs", "conversationId"):
        assert again["data"][key] == first["data"][key]
    await b.expect("ksmpv3.inbox.frame")
    await b.nothing(0.4)
    # The retry is recognised on a new connection of the same device too.
    await a.close()
    a2 = await logged_in(url, a.device)
    third = await a2.request("ksmpv3.send", data)
    assert third["data"]["duplicate"] is True
    assert third["data"]["serverSeq"] == first["data"]["serverSeq"]


@pytest.mark.fresh_server
async def test_ack_only_after_durable(target: Target) -> None:
    proc = target.local()
    url = target.ws_url
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    n = 200
    rids = []
    for i in range(n):
        rids.append(await a.send("ksmpv3.send", a.send_data(bob.username, [
            (bob.username, "d1", b"durable-%d" % i)])))
    acks = {}
    while len(acks) < n:
        f = await a.recv()
        assert f["event"] == "ksmpv3.send.ack", f
        acks[f["requestId"]] = f["data"]["serverSeq"]
    proc.kill()  # SIGKILL right after the last ack: nothing acked may be lost
    proc.start()
    b = await logged_in(url, bob)
    frames = await b.resume(0)
    assert sorted(acks.values()) == [f["data"]["envelope"]["serverSeq"] for f in frames]
    assert [unb64(f["data"]["envelope"]["ciphertext"]) for f in frames] == [
        b"durable-%d" % i for i in range(n)
    ]


async def test_resume_replays_in_order_then_replay_done_then_live(url: str) -> None:
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    for i in range(7):
        await a.send_message(bob.username, [(bob.username, "d1", b"%d" % i)])
    b = await logged_in(url, bob)
    await b.send("ksmpv3.resume", {"lastGlobalInboxSeq": 2})
    frames = []
    while True:
        f = await b.recv()
        if f["event"] == "sottovoce.replay.done":
            assert f["data"]["upToGlobalInboxSeq"] == 7
            break
        if f["event"] == "ksmpv3.inbox.frame":
            frames.append(f)
    assert [f["data"]["globalInboxSeq"] for f in frames] == [3, 4, 5, 6, 7]
    assert [unb64(f["data"]["envelope"]["ciphertext"]) for f in frames] == [
        b"2", b"3", b"4", b"5", b"6"]
    await a.send_message(bob.username, [(bob.username, "d1", b"live")])
    live = await b.wait_for("ksmpv3.inbox.frame")
    assert live["data"]["globalInboxSeq"] == 8


async def test_resume_during_concurrent_sends_loses_and_duplicates_nothing(url: str) -> None:
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    for _ in range(300):
        await a.send("ksmpv3.send", a.send_data(bob.username, [(bob.username, "d1", b"p")]))
    b = await logged_in(url, bob)

    async def more() -> None:
        for _ in range(300):
            await a.send("ksmpv3.send", a.send_data(bob.username, [(bob.username, "d1", b"q")]))

    sender = asyncio.create_task(more())
    await b.send("ksmpv3.resume", {"lastGlobalInboxSeq": 0})
    seqs = []
    while len(seqs) < 600:
        f = await b.recv()
        if f["event"] == "ksmpv3.inbox.frame":
            seqs.append(f["data"]["globalInboxSeq"])
    await sender
    assert seqs == list(range(1, 601))


async def test_ack_read_deletes_frames(url: str) -> None:
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    for i in range(5):
        await a.send_message(bob.username, [(bob.username, "d1", b"%d" % i)])
    b = await logged_in(url, bob)
    frames = await b.resume(0)
    assert len(frames) == 5
    await b.send("ksmpv3.ack.read", {"upToGlobalInboxSeq": 3})
    await b.request("ping", {})  # the server has read the ack before the close
    await b.close()
    # ack.read has no reply and the server deletes in the background: until it has,
    # a replay may carry acked frames again (clients deduplicate), never lose one.
    deadline = time.monotonic() + 15
    while True:
        b2 = await logged_in(url, bob)
        again = [f["data"]["globalInboxSeq"] for f in await b2.resume(0)]
        await b2.close()
        if again == [4, 5]:
            break
        assert again in ([1, 2, 3, 4, 5], [2, 3, 4, 5], [3, 4, 5]), again
        assert time.monotonic() < deadline, "acked frames are still replayed"
        await asyncio.sleep(0.5)


async def test_expires_at_is_bounded_and_an_expired_frame_is_never_replayed(url: str) -> None:
    bob = Device.new()
    await (await registered(url, bob)).close()
    a = await registered(url)
    to_bob = [(bob.username, "d1", b"x")]
    now = int(time.time() * 1000)
    week, skew = 7 * 24 * 3600 * 1000, 5 * 60 * 1000
    for bad in (now - skew - 60_000, now + week + skew + 60_000):
        assert_error(await a.send_message(bob.username, to_bob, expiresAtMs=bad), "bad_request")
    for expires in (now - 1000, now + 3_600_000, 0):  # 0: does not expire
        ack = await a.send_message(bob.username, to_bob, expiresAtMs=expires)
        assert ack["event"] == "ksmpv3.send.ack", ack
    b = await logged_in(url, bob)
    frames = await b.resume(0)
    # The frame already expired is not replayed; the two others are, in order.
    assert [f["data"]["globalInboxSeq"] for f in frames] == [2, 3]


async def test_device_mismatch_lists_missing_and_stale(url: str) -> None:
    alice, bob = Device.new(), Device.new()
    a = await registered(url, alice)
    await registered(url, bob)
    b2 = await RawClient.open(url)
    await b2.add_device(bob.sibling("d2"))
    a2 = await RawClient.open(url)
    await a2.add_device(alice.sibling("tablet"))
    reply = await a.send_message(bob.username, [(bob.username, "d1", b"x"),
                                                (bob.username, "old", b"y")])
    err = assert_error(reply, "device_mismatch")
    def key(d: dict[str, str]) -> tuple[str, str]:
        return (d["userId"], d["deviceId"])

    assert sorted(err["details"]["missing"], key=key) == sorted(
        [{"userId": alice.username, "deviceId": "tablet"},
         {"userId": bob.username, "deviceId": "d2"}], key=key)
    assert err["details"]["stale"] == [{"userId": bob.username, "deviceId": "old"}]
    ok = await a.send_message(bob.username, [(bob.username, "d1", b"x"),
                                             (bob.username, "d2", b"y"),
                                             (alice.username, "tablet", b"z")])
    assert ok["event"] == "ksmpv3.send.ack"


async def test_sender_other_device_gets_a_copy(url: str) -> None:
    alice = Device.new()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    await a2.add_device(alice.sibling("d2"))
    await a2.resume()
    b = await registered(url)
    bob = b.device.username
    await a1.send_message(bob, [(bob, "d1", b"to bob"), (alice.username, "d2", b"own copy")])
    f = await a2.wait_for("ksmpv3.inbox.frame")
    env = f["data"]["envelope"]
    assert unb64(env["ciphertext"]) == b"own copy"
    assert env["recipientUserId"] == bob and env["senderUserId"] == alice.username


async def test_conversation_id_must_be_the_dm_id(url: str) -> None:
    a, b = await online_pair(url)
    bob = b.device.username
    reply = await a.send_message(bob, [(bob, "d1", b"x")], conversation_id="dm:zz:" + bob)
    assert_error(reply, "conversation_mismatch")


async def test_forged_sender_is_forbidden(url: str) -> None:
    a, b = await online_pair(url)
    bob = b.device.username
    reply = await a.send_message(bob, [(bob, "d1", b"x")], senderUserId=bob)
    assert_error(reply, "forbidden")
    await b.nothing(0.3)


async def test_unknown_recipient_is_refused(url: str) -> None:
    a = await registered(url)
    ghost = "ghost" + secrets.token_hex(4)
    assert_error(await a.send_message(ghost, [(ghost, "d1", b"x")]), "unknown_recipient")


@pytest.mark.fresh_server
async def test_a_stranger_cannot_fill_an_offline_inbox(target: Target) -> None:
    """One account once put 80 MB into another's inbox in 10 s. Now what may wait from
    a stranger (an account the recipient never wrote to) is capped, the sender is told
    (inbox_full, retryable later), and the recipient's contacts still get through."""
    url = target.ws_url
    bob, carol = Device.new(), Device.new()
    b = await registered(url, bob)
    c = await registered(url, carol)
    ack = await b.send_message(carol.username, [(carol.username, "d1", b"hi")])
    assert ack["event"] == "ksmpv3.send.ack"  # bob has written to carol: a contact
    await b.close()
    mallory = await registered(url)
    blob = secrets.token_bytes(150_000)
    stored = 0
    for _ in range(200):  # 30 MB at most; the default stranger quota is 16 MiB
        reply = await mallory.send_message(bob.username, [(bob.username, "d1", blob)])
        if reply["event"] == "ksmpv3.error":
            break
        stored += 1
    err = assert_error(reply, "inbox_full")
    assert err["retryable"] is True and err["retryAfterMs"] > 0
    assert err["details"] == {"scope": "stranger", "userId": bob.username, "deviceId": "d1"}
    assert 50 < stored * 150_000 < 17 * 1024 * 1024
    ack = await c.send_message(bob.username, [(bob.username, "d1", b"still here")])
    assert ack["event"] == "ksmpv3.send.ack", ack
    if target.proc is not None:
        text = target.proc.metrics()
        assert 'sottovoce_inbox_full_total{scope="stranger"} 1.0' in text
