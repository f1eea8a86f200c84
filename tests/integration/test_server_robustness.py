"""Bad input, floods and races against the real server process (docs/protocol.md §Limits).

Every kind of bad input gets a typed ``ksmpv3.error`` or a close with a
documented code (``server/errors.py``); the server stays up and a second pair
of clients exchanging messages meanwhile notices nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from sottovoce.limits import MAX_FRAME_BYTES
from tests.conformance.conftest import online_pair
from tests.conformance.rawclient import Device, RawClient, b64, logged_in, registered, unb64
from tests.conformance.test_directory import olm_device
from tests.conformance.test_session import assert_error
from tests.integration.serverproc import ServerProcess


async def _chatter(a: RawClient, b: RawClient, n: int) -> list[bytes]:
    """A well-behaved pair: a sends n messages to b, one at a time; b's payloads in order."""
    bob = b.device.username  # type: ignore[union-attr]
    got = []
    for i in range(n):
        ack = await a.send_message(bob, [(bob, "d1", b"ok-%d" % i)])
        assert ack["event"] == "ksmpv3.send.ack", ack
        f = await b.wait_for("ksmpv3.inbox.frame")
        got.append(unb64(f["data"]["envelope"]["ciphertext"]))
        await asyncio.sleep(0.005)
    return got


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("{not json", "bad_json"),
    ("[1, 2, 3]", "bad_request"),
    (json.dumps({"data": {}}), "bad_request"),
    (json.dumps({"event": "ksmpv3.teleport", "data": {}}), "unknown_event"),
    (json.dumps({"event": "ping", "data": "nope"}), "bad_request"),
    (json.dumps({"event": "ksmpv3.ack.read", "data": {"upToGlobalInboxSeq": "7"}}), "bad_request"),
    (json.dumps({"event": "ksmpv3.ack.read", "data": {"upToGlobalInboxSeq": True}}), "bad_request"),
    (json.dumps({"event": "ksmpv3.resume", "data": {"lastGlobalInboxSeq": -1}}), "bad_request"),
    (json.dumps({"event": "ksmpv3.send", "data": {"ciphertexts": "x"}}), "bad_request"),
    (b"\xff\xfe binary garbage", "bad_json"),
    ("\u00e9" * 10, "bad_json"),
    (json.dumps({"event": "ping", "requestId": "bad id with spaces", "data": {}}), "bad_request"),
    ("[" * 5000 + "]" * 5000, "bad_json"),
]


async def test_bad_input_gets_typed_errors_and_nobody_else_notices(server: ServerProcess) -> None:
    url = server.ws_url
    a, b = await online_pair(url)
    chatter = asyncio.create_task(_chatter(a, b, 30))
    evil = await registered(url)
    await evil.resume()
    bob = b.device.username
    for text, code in BAD_FRAMES:
        await evil.send_raw(text)
        assert_error(await evil.recv(), code)
    # Wrong types and values inside an otherwise valid send.
    base = evil.send_data(bob, [(bob, "d1", b"x")])
    for patch, code in [
        ({"contentType": "pdf"}, "bad_request"),
        ({"clientCreatedAtMs": "yesterday"}, "bad_request"),
        ({"ephemeral": "yes"}, "bad_request"),
        ({"ciphertexts": []}, "bad_request"),
        ({"ciphertexts": [{"userId": bob, "deviceId": "d1", "ciphertext": "!!"}]}, "bad_request"),
        ({"ciphertexts": [{"userId": bob, "deviceId": "d1", "ciphertext": b64(b"x")}] * 2},
         "bad_request"),
        ({"messageId": "x" * 500}, "bad_request"),
        ({"protocol": "ksmpv2"}, "bad_request"),
        ({"senderUserId": bob}, "forbidden"),
        ({"recipientUserId": "nobody-here"}, "unknown_recipient"),
    ]:
        reply = await evil.request("ksmpv3.send", {**base, **patch})
        assert_error(reply, code)
    assert await chatter == [b"ok-%d" % i for i in range(30)]
    assert server.running and server.health()["status"] == "ok"


async def test_oversize_frame_closes_with_1009(server: ServerProcess) -> None:
    a, b = await online_pair(server.ws_url)
    evil = await registered(server.ws_url)
    await evil.send_raw("x" * (MAX_FRAME_BYTES + 1))
    await evil.ws.wait_closed()
    assert evil.ws.close_code == 1009
    assert await _chatter(a, b, 3) == [b"ok-0", b"ok-1", b"ok-2"]


async def test_flood_is_rate_limited_then_closed_with_1008(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--device-rate", "100", "--device-burst", "20", "--abuse-strikes", "40")
    a, b = await online_pair(srv.ws_url)
    chatter = asyncio.create_task(_chatter(a, b, 20))
    evil = await registered(srv.ws_url)
    limited = []
    closed = False
    try:
        for i in range(5000):
            await evil.send("ping", {}, request_id=f"p{i}")
            if i % 50 == 0:
                await asyncio.sleep(0)
    except ConnectionClosed:
        closed = True
    try:
        while True:
            f = await evil.recv(timeout=5)
            if f["event"] == "ksmpv3.error":
                limited.append(f["data"])
    except (ConnectionClosed, TimeoutError):
        pass
    await evil.ws.wait_closed()
    assert limited, "flood was never rate limited"
    assert all(e["code"] == "rate_limited" and e["retryable"] for e in limited)
    assert all(e["retryAfterMs"] >= 1 for e in limited)
    assert evil.ws.close_code == 1008, (closed, evil.ws.close_code)
    assert await chatter == [b"ok-%d" % i for i in range(20)]
    assert srv.health()["status"] == "ok"


async def test_concurrent_prekey_claims_never_share_a_one_time_key(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # Limits high enough to let every claimer race for the one-time keys.
    server = server_factory("--key-claims-per-requester", "100", "--key-claims-per-target", "100")
    url = server.ws_url
    alice, olm = olm_device()
    a = await registered(url, alice)
    keys = olm.new_one_time_keys(alice.device_key, 40)
    fallback = olm.new_fallback_key(alice.device_key)
    reply = await a.request("sottovoce.prekeys.upload", {
        "oneTimeKeys": [b64(k.encode()) for k in keys], "fallbackKey": b64(fallback.encode()),
    })
    assert reply["data"]["oneTimeKeys"] == 40
    claimers = [await registered(url) for _ in range(8)]

    async def claim(c: RawClient) -> list[bytes]:
        # The first claim pays the proof of work (and earns the pass for alice); the other
        # six race without waiting for each other's answers.
        first = await c.request("sottovoce.prekeys.claim", {"username": alice.username})
        out = [unb64(x) for x in first["data"]["bundles"]]
        rids = [await c.send("sottovoce.prekeys.claim", {"username": alice.username})
                for _ in range(6)]
        for _ in rids:
            f = await c.wait_for("sottovoce.prekeys.bundles")
            out.extend(unb64(x) for x in f["data"]["bundles"])
        return out

    results = await asyncio.gather(*(claim(c) for c in claimers))
    from sottovoce.pairwise import PrekeyBundle

    prekeys = [PrekeyBundle.decode(raw).prekey for got in results for raw in got]
    assert len(prekeys) == 56
    one_time = [p.key_id for p in prekeys if not p.fallback]
    assert len(one_time) == 40 and len(set(one_time)) == 40, "a one-time key was handed out twice"
    assert sum(p.fallback for p in prekeys) == 16
    low = await a.wait_for("sottovoce.prekeys.low")
    assert low["data"]["remaining"] < 10


async def test_unacked_frames_expire_after_retention(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--retention-ms", "400", "--expiry-interval-ms", "100")
    bob = Device.new()
    await (await registered(srv.ws_url, bob)).close()
    a = await registered(srv.ws_url)
    for _ in range(3):
        await a.send_message(bob.username, [(bob.username, "d1", b"old")])
    await asyncio.sleep(1.0)
    await a.send_message(bob.username, [(bob.username, "d1", b"new")])
    b = await logged_in(srv.ws_url, bob)
    frames = await b.resume(0)
    assert [unb64(f["data"]["envelope"]["ciphertext"]) for f in frames] == [b"new"]
    assert frames[0]["data"]["globalInboxSeq"] == 4, "sequences never go back after expiry"
    # Idempotency records expire too: the old key is a new message now (documented window).
    assert "sottovoce_inbox_expired_total 3.0" in srv.metrics()


async def test_second_connection_of_a_device_replaces_the_first(server: ServerProcess) -> None:
    dev = Device.new()
    first = await registered(server.ws_url, dev)
    second = await logged_in(server.ws_url, dev)
    await first.ws.wait_closed()
    assert first.ws.close_code == 4000
    assert (await second.request("ping", {}))["event"] == "pong"


async def test_slow_consumer_is_closed_with_1013_and_resumes_everything(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--write-buffer-limit", "300000")
    bob = Device.new()
    slow = await registered(srv.ws_url, bob)
    await slow.resume()
    slow.ws.transport.pause_reading()  # a client that stops reading its socket
    a = await registered(srv.ws_url)
    big = b"\x00" * 100_000
    n = 120
    for _ in range(n):
        await a.send("ksmpv3.send", a.send_data(bob.username, [(bob.username, "d1", big)]))
    for _ in range(n):
        assert (await a.wait_for("ksmpv3.send.ack"))["event"] == "ksmpv3.send.ack"
    slow.ws.transport.resume_reading()
    with contextlib.suppress(ConnectionClosed):
        while True:  # read what was queued before the close frame
            await asyncio.wait_for(slow.ws.recv(), 10)
    assert slow.ws.close_code == 1013
    # Nothing was lost: a fresh connection resumes every stored frame.
    again = await logged_in(srv.ws_url, bob)
    frames = await again.resume(0)
    assert [f["data"]["globalInboxSeq"] for f in frames] == list(range(1, n + 1))


async def test_resume_with_overflowing_live_buffer_rereads_storage(
    server_factory: Callable[..., ServerProcess],
) -> None:
    # The recipient stops reading during its replay, so the replay stalls on
    # backpressure while live frames pile up past their buffer (the write
    # buffer limit): they are dropped and read again from storage.
    srv = server_factory("--write-buffer-limit", "60000")
    bob = Device.new()
    await (await registered(srv.ws_url, bob)).close()
    a = await registered(srv.ws_url)
    big = b"\x01" * 20_000

    async def send(n: int) -> None:
        for _ in range(n):
            await a.send("ksmpv3.send", a.send_data(bob.username, [(bob.username, "d1", big)]))
        for _ in range(n):
            await a.wait_for("ksmpv3.send.ack")

    await send(300)
    b = await logged_in(srv.ws_url, bob)
    b.ws.transport.pause_reading()
    await b.send("ksmpv3.resume", {"lastGlobalInboxSeq": 0})
    await send(100)  # live while the replay is stalled
    b.ws.transport.resume_reading()
    seqs = []
    done = None
    while len(seqs) < 400 or done is None:
        f = await b.recv()
        if f["event"] == "ksmpv3.inbox.frame":
            seqs.append(f["data"]["globalInboxSeq"])
        elif f["event"] == "sottovoce.replay.done":
            done = f["data"]["upToGlobalInboxSeq"]
    assert seqs == list(range(1, 401))
    assert done == 400, "the live frames were carried by the (re-read) replay"
    await b.nothing(0.3)
    reread = re.search(r"^sottovoce_replay_rereads_total (\S+)$", srv.metrics(), re.M)
    assert reread is not None and float(reread.group(1)) >= 1, "overflow path not exercised"
