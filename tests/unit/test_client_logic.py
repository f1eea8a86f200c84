"""The client state machine against an in-memory relay (two peers in memory).

Contract rules (docs/protocol.md §Delivery) from the client's side: fan-out to the peer's and
our own other devices; resume replays what was missed; a frame delivered
twice reaches the application once and is decrypted once; a send whose ack is
lost is resent with the same idempotency key; ``device_mismatch`` refreshes
the directory and retries once; a changed account key is refused (TOFU).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sottovoce.client import (
    Client,
    DeliveryStatus,
    IdentityChanged,
    MessageReceived,
    MessageSent,
    WrongPassphrase,
)
from sottovoce.client.store import TEST_KDF
from sottovoce.identity import AccountKey
from tests.unit.client_fake_relay import FakeRelay

URL = "ws://fake.invalid:1"
PASS = "pass"


async def _account(relay: FakeRelay, name: str, root: Path) -> Client:
    return await Client.create_account(
        URL, name, root / name, PASS, kdf=TEST_KDF, connector=relay.connector
    )


async def _received(client: Client, stream: object, n: int, timeout: float = 5.0) -> list[str]:
    texts: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(texts) < n:
        event = await stream.next(max(0.01, deadline - loop.time()))  # type: ignore[attr-defined]
        if isinstance(event, MessageReceived):
            texts.append(event.message.text)
    return texts


async def test_two_accounts_chat_both_ways(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    a_events, b_events = alice.events(), bob.events()
    mid = await alice.send_text("bob", "hi bob")
    assert await alice.wait_sent(mid) == 1
    assert await _received(bob, b_events, 1) == ["hi bob"]
    await bob.send_text("alice", "hi alice")
    assert await _received(alice, a_events, 1) == ["hi alice"]
    history = alice.history("bob")
    assert [(m.text, m.outgoing, m.status) for m in history] == [
        ("hi bob", True, DeliveryStatus.SENT),
        ("hi alice", False, DeliveryStatus.SENT),
    ]
    assert [m.server_seq for m in history] == [1, 2]  # one conversation, one sequence
    assert (await alice.safety_number("bob")).digits == (await bob.safety_number("alice")).digits
    for sent in relay.sends:  # the relay saw ciphertext only
        assert b"hi bob" not in str(sent).encode()
    await alice.close()
    await bob.close()


async def test_resume_replays_missed_frames_and_duplicates_reach_the_app_once(
    tmp_path: Path,
) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    await bob.close()  # bob offline: frames wait in his inbox
    for i in range(5):
        await alice.wait_sent(await alice.send_text("bob", f"offline {i}"))
    relay.duplicate_frames = True
    bob = await Client.open(tmp_path / "bob", PASS, connector=relay.connector)
    events = bob.events()
    await bob.connect()
    await alice.wait_sent(await alice.send_text("bob", "live"))
    texts = await _received(bob, events, 6)
    assert texts == [f"offline {i}" for i in range(5)] + ["live"]
    await asyncio.sleep(0.05)
    assert not [e for e in events.pending() if isinstance(e, MessageReceived)]
    assert bob.last_inbox_seq == 6
    assert relay.inbox[("bob", bob.device_id)] == []  # acked, so deleted on the relay
    # A resume after a drop replays nothing already stored.
    await relay.drop_all()
    await bob.sync(timeout=5)
    await asyncio.sleep(0.3)
    await bob.sync(timeout=5)
    assert [m.text for m in bob.history("alice")][-1] == "live"
    assert len(bob.history("alice")) == 6
    await alice.close()
    await bob.close()


async def test_lost_ack_is_resent_with_the_same_idempotency_key(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    b_events, a_events = bob.events(), alice.events()
    relay.swallow_acks = 1
    mid = await alice.send_text("bob", "ack lost")
    await asyncio.sleep(0.05)
    assert alice.pending_sends() == 1
    await relay.drop_all()  # reconnect: the outbox goes out again
    assert await alice.wait_sent(mid, timeout=5) == 1
    sent = [e for e in a_events.pending() if isinstance(e, MessageSent)]
    stored = alice.message(mid)
    assert stored is not None
    assert [(e.message_id, e.duplicate, e.idempotency_key) for e in sent] == [
        (mid, True, stored.idempotency_key)
    ]
    assert len(relay.sends) == 1
    assert await _received(bob, b_events, 1) == ["ack lost"]
    assert alice.pending_sends() == 0
    await alice.close()
    await bob.close()


async def test_second_device_gets_messages_and_copies_after_device_mismatch(
    tmp_path: Path,
) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    await alice.wait_sent(await alice.send_text("bob", "before"))  # caches bob's one device
    bob2 = await bob.add_device(tmp_path / "bob2", PASS, kdf=TEST_KDF)
    alice2 = await alice.add_device(tmp_path / "alice2", PASS, kdf=TEST_KDF)
    e_alice, e_alice2 = alice.events(), alice2.events()
    e_bob, e_bob2 = bob.events(), bob2.events()
    mid = await alice.send_text("bob", "to both")  # stale cache → device_mismatch → retry
    await alice.wait_sent(mid, timeout=5)
    assert await _received(bob, e_bob, 1) == ["to both"]
    assert await _received(bob2, e_bob2, 1) == ["to both"]
    assert await _received(alice2, e_alice2, 1) == ["to both"]  # the sender's copy
    copy = alice2.history("bob")
    assert [(m.text, m.outgoing, m.sender) for m in copy] == [("to both", True, "alice")]
    assert {len(s["ciphertexts"]) for s in relay.sends} == {1, 3}
    # The retry is the same send (ids, recipient, type, time) to the devices there are now.
    (retry,) = (s for s in relay.sends if s["messageId"] == mid)
    sent = next(m for m in alice.history("bob") if m.message_id == mid)
    assert (retry["idempotencyKey"], retry["clientCreatedAtMs"], retry["recipientUserId"],
            retry["senderUserId"], retry["contentType"], len(retry["ciphertexts"])) == (
        sent.idempotency_key, sent.client_created_ms, "bob", "alice", "text", 3)
    # Bob answers from his second device: alice's devices and bob's first get it.
    await bob2.send_text("alice", "from bob2")
    assert await _received(alice, e_alice, 1) == ["from bob2"]
    assert await _received(alice2, e_alice2, 1) == ["from bob2"]
    assert await _received(bob, e_bob, 1) == ["from bob2"]
    assert [m.text for m in bob.history("alice")] == ["before", "to both", "from bob2"]
    for c in (alice, alice2, bob, bob2):
        await c.close()


async def test_changed_account_key_is_refused(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    await alice.wait_sent(await alice.send_text("bob", "pinned"))
    relay.accounts["bob"] = AccountKey.generate(lambda n: bytes(n)).public
    await alice.close()
    alice = await Client.open(tmp_path / "alice", PASS, connector=relay.connector)
    await alice.connect()  # a new process looks bob up again before sending
    with pytest.raises(IdentityChanged, match="bob"):
        await alice.send_text("bob", "after the swap")
    assert [m.text for m in alice.history("bob")] == ["pinned"]
    await alice.close()
    await bob.close()


async def test_wrong_passphrase_on_open(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice = await _account(relay, "alice", tmp_path)
    await alice.close()
    with pytest.raises(WrongPassphrase):
        await Client.open(tmp_path / "alice", "nope", connector=relay.connector)
    reopened = await Client.open(tmp_path / "alice", PASS, connector=relay.connector)
    assert reopened.username == "alice"
    await reopened.close()
