"""kill -9 the server during a 2,000-message burst, restart it, resume (docs/protocol.md §Delivery).

Contract rules checked on the receiver's store:

* every acked message arrives exactly once, in serverSeq order;
* sends the server never acked are resent by the client with the same
  idempotency key after the restart, and are not delivered twice;
* nothing is lost: all 2,000 arrive, whatever was in flight at the kill.

The sender pipelines: ``send_text`` returns once the message is durably in
the outbox, so the burst runs at the relay's speed, not at one round trip
per message.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sottovoce.client import Client, DeliveryStatus, MessageSent
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess

BURST = 2000
KILL_AT = 700
RESTART_AT = 1000
CHUNK = 50  # sends issued concurrently (KILL_AT and RESTART_AT are multiples)


async def test_kill_9_mid_burst_then_resume_exactly_once_in_order(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server").start()
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    for client in (alice, bob):
        client.configure_reconnect(base_s=0.05, cap_s=0.5)  # keep the test short
    a_events, b_events = alice.events(), bob.events()
    texts = [f"burst message {i:04d}" for i in range(BURST)]
    sent_ids: list[str] = []
    acked_before_kill: set[str] = set()
    unacked_at_kill: set[str] = set()
    started = time.monotonic()
    restart_s = 0.0
    try:
        for start in range(0, BURST, CHUNK):
            if start == KILL_AT:
                await asyncio.sleep(0)  # let the writer put the last sends on the wire
                server.kill()
                acked_before_kill = {
                    e.message_id for e in a_events.pending() if isinstance(e, MessageSent)
                }
                unacked_at_kill = set(sent_ids) - acked_before_kill
            if start == RESTART_AT:
                restart_began = time.monotonic()
                await asyncio.to_thread(server.start)  # same port, same data directory
                restart_s = time.monotonic() - restart_began
            # Pipelined: concurrent sends share one local commit and never wait for acks.
            chunk = texts[start : start + CHUNK]
            sent_ids += await asyncio.gather(*(alice.send_text("bob", t) for t in chunk))
        got = await received(b_events, BURST, timeout=90)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 30
        while alice.pending_sends() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert alice.pending_sends() == 0
        acks = [e for e in a_events.pending() if isinstance(e, MessageSent)]
    finally:
        await alice.close()
        await bob.close()
        server.stop()

    # The receiver's store (reopened from disk): all 2,000, each once, in serverSeq order.
    assert len(got) == BURST
    bob = Client.load(tmp_path / "bob", PASSPHRASE)
    try:
        stored = bob.history("alice", limit=BURST * 2)
    finally:
        await bob.close()
    assert [m.message_id for m in stored] == sent_ids  # one sender, so send order = serverSeq
    assert [m.text for m in stored] == texts
    seqs = [m.server_seq or 0 for m in stored]
    assert seqs == sorted(seqs) and len(set(seqs)) == BURST  # strictly increasing
    inbox = [m.inbox_seq or 0 for m in stored]
    assert inbox == sorted(inbox) and len(set(inbox)) == BURST

    # Every acked message arrived; every message got exactly one MessageSent (a
    # duplicate ack is reported once, never as a second message).
    ack_ids = [e.message_id for e in acks]
    all_acked = acked_before_kill | set(ack_ids)
    assert all_acked == set(sent_ids)
    assert len(ack_ids) == len(set(ack_ids))
    # Resent messages kept their idempotency key: the ack echoes the key stored at send time.
    bob_view = {m.message_id: m for m in stored}
    for event in acks:
        assert event.idempotency_key == bob_view[event.message_id].idempotency_key
    duplicates = [e for e in acks if e.duplicate]
    assert all(e.message_id in unacked_at_kill for e in duplicates)
    assert unacked_at_kill, "the kill should catch some sends unacknowledged"
    print(
        f"\n{BURST} messages, server killed after {KILL_AT} sends: "
        f"{len(acked_before_kill)} acked before the kill, {len(unacked_at_kill)} unacked, "
        f"{len(duplicates)} resends answered as duplicates; all delivered once in "
        f"{elapsed:.1f}s (server restart took {restart_s:.1f}s)"
    )


async def test_sender_restart_resends_its_outbox_with_the_same_keys(tmp_path: Path) -> None:
    """The outbox survives the *client* going away too (closed while the server is down)."""
    server = ServerProcess(tmp_path / "server").start()
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    b_events = bob.events()
    try:
        await alice.wait_sent(await alice.send_text("bob", "a session exists"))
        await received(b_events, 1)
        server.kill()
        ids = [await alice.send_text("bob", f"queued {i}") for i in range(5)]
        keys = [alice.message(i).idempotency_key for i in ids]  # type: ignore[union-attr]
        assert alice.pending_sends() == 5
        await alice.close()
        alice = await Client.open(tmp_path / "alice", PASSPHRASE)  # a new process, offline
        ids.append(await alice.send_text("bob", "queued by the new process"))
        keys.append(alice.message(ids[-1]).idempotency_key)  # type: ignore[union-attr]
        await asyncio.to_thread(server.start)
        await alice.connect()
        for mid in ids:
            await alice.wait_sent(mid)
        got = await received(b_events, 6, timeout=30)
        assert [m.message_id for m in got] == ids
        assert [m.idempotency_key for m in got] == keys
        assert all(alice.message(i).status is DeliveryStatus.SENT for i in ids)  # type: ignore[union-attr]
    finally:
        await alice.close()
        await bob.close()
        server.stop()
