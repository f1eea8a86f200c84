"""The client SDK and CLI against the real server process.

* two accounts chat both ways; ticks, history order and safety numbers agree;
* a user with two devices receives on both, and the sender's other device
  gets a copy of what it sent (docs/protocol.md §Delivery: once per own other device);
* an offline recipient gets everything on its next connect, exactly once;
* the CLI commands a user types (account create, send, listen, verify).

The second device is linked with ``Client.add_device``, which certifies it
with the account key copied from the first device's store (the QR/PAKE
linking is planned).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sottovoce.client import Client, DeliveryStatus, EphemeralReceived, ErrorEvent
from sottovoce.client.store import TEST_KDF
from sottovoce.protocol.events import dm_conversation_id
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


async def test_two_accounts_chat_both_ways(server: ServerProcess, tmp_path: Path) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    a_events, b_events = alice.events(), bob.events()
    try:
        first = await alice.send_text("bob", "Hi Bob, only you can read this.")
        assert await alice.wait_sent(first) == 1
        got = await received(b_events, 1)
        assert [(m.text, m.sender, m.outgoing) for m in got] == [
            ("Hi Bob, only you can read this.", "alice", False)
        ]
        await bob.send_text("alice", "Hi Alice!")
        await bob.send_text("alice", "Second one.")
        assert [m.text for m in await received(a_events, 2)] == ["Hi Alice!", "Second one."]

        for client, peer in ((alice, "bob"), (bob, "alice")):
            history = client.history(peer)
            assert [m.text for m in history] == [
                "Hi Bob, only you can read this.",
                "Hi Alice!",
                "Second one.",
            ]
            assert [m.server_seq for m in history] == [1, 2, 3]  # one serverSeq per message
            # ✓ on both sides; a sent message may already be ✓✓ (the peer's delivered
            # receipt), since each has written to the other and so may signal it.
            assert all(m.status is DeliveryStatus.SENT for m in history if not m.outgoing)
            assert all(m.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
                       for m in history if m.outgoing)
        assert alice.pending_sends() == 0 and bob.pending_sends() == 0
        assert dm_conversation_id("bob", "alice") == "dm:alice:bob"
        sn_a, sn_b = await alice.safety_number("bob"), await bob.safety_number("alice")
        assert len(sn_a.digits) == 60 and sn_a.digits == sn_b.digits
    finally:
        await alice.close()
        await bob.close()


async def test_two_devices_receive_and_senders_other_device_gets_a_copy(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    bob_tablet = await bob.add_device(tmp_path / "bob-tablet", PASSPHRASE, kdf=TEST_KDF)
    alice_laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
    clients = (alice, alice_laptop, bob, bob_tablet)
    streams = {c: c.events() for c in clients}
    try:
        mid = await alice.send_text("bob", "to all of bob's devices")
        await alice.wait_sent(mid)
        for device in (bob, bob_tablet):
            (msg,) = await received(streams[device], 1)
            assert (msg.message_id, msg.text, msg.sender) == (
                mid,
                "to all of bob's devices",
                "alice",
            )
        (copy,) = await received(streams[alice_laptop], 1)
        assert (copy.message_id, copy.text, copy.outgoing, copy.peer) == (
            mid,
            "to all of bob's devices",
            True,
            "bob",
        )
        assert copy.sender_device == alice.device_id

        reply = await bob_tablet.send_text("alice", "answered from the tablet")
        await bob_tablet.wait_sent(reply)
        for device in (alice, alice_laptop, bob):
            (msg,) = await received(streams[device], 1)
            assert (msg.message_id, msg.text) == (reply, "answered from the tablet")
        # Every device shows the same conversation, in the same serverSeq order.
        views = [
            [(m.text, m.server_seq) for m in c.history(p)]
            for c, p in (
                (alice, "bob"),
                (alice_laptop, "bob"),
                (bob, "alice"),
                (bob_tablet, "alice"),
            )
        ]
        assert all(v == views[0] for v in views)
        assert [s for _, s in views[0]] == [1, 2]
    finally:
        for c in clients:
            await c.close()


async def test_offline_recipient_gets_everything_once_on_reconnect(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    await bob.close()
    try:
        ids = [await alice.send_text("bob", f"while you were away {i}") for i in range(20)]
        for mid in ids:
            await alice.wait_sent(mid)
        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        stream = bob.events()
        await bob.connect()  # returns once the replay is stored
        got = await received(stream, 20)
        assert [m.message_id for m in got] == ids
        await bob.drop_connection()  # a resume after a drop replays nothing new
        await bob.sync(timeout=10)
        assert [m.message_id for m in bob.history("alice")] == ids
        assert bob.last_inbox_seq == 20
    finally:
        await alice.close()
        await bob.close()


async def test_ephemeral_messages_touch_no_store_and_need_the_peer_online(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    a_events, b_events = alice.events(), bob.events()
    try:
        await alice.send_text("bob", "just between us, right now", ephemeral=True)
        event = await b_events.next(10)
        while not isinstance(event, EphemeralReceived):
            event = await b_events.next(10)
        assert (event.sender, event.text) == ("alice", "just between us, right now")
        assert [m.text for m in bob.ephemeral_messages("alice")] == ["just between us, right now"]
        assert bob.history("alice") == [] and alice.history("bob") == []  # never stored
        assert bob.last_inbox_seq == 0  # nor counted in the durable inbox

        await bob.close()
        await alice.send_text("bob", "anyone there?", ephemeral=True)
        error = await a_events.next(10)
        while not isinstance(error, ErrorEvent):
            error = await a_events.next(10)
        assert error.code == "recipient_offline"
        alice.panic()
        assert alice.ephemeral_messages() == []
    finally:
        await alice.close()
        await bob.close()


def _cli(*args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(home), SOTTOVOCE_PASSPHRASE="a long cli passphrase")
    return subprocess.run(
        [sys.executable, "-m", "sottovoce", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_cli_account_create_send_listen_verify(server: ServerProcess, tmp_path: Path) -> None:
    alice_home, bob_home = tmp_path / "cli-alice", tmp_path / "cli-bob"
    for name, home in (("alice", alice_home), ("bob", bob_home)):
        done = _cli("account", "create", name, "--server", server.url, home=home)
        assert done.returncode == 0, done.stderr
        assert f"created account '{name}'" in done.stdout
    taken = _cli("account", "create", "alice", "--server", server.url, home=tmp_path / "again")
    assert taken.returncode == 1 and "taken" in taken.stderr
    assert not (tmp_path / "again" / "store.sqlite3").exists()

    sent = _cli("send", "bob", "hello from the command line", home=alice_home)
    assert sent.returncode == 0, sent.stderr
    assert "✓ sent to bob" in sent.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env.update(SOTTOVOCE_HOME=str(bob_home), SOTTOVOCE_PASSPHRASE="a long cli passphrase")
    listener = subprocess.Popen(
        [sys.executable, "-u", "-m", "sottovoce", "listen"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        lines: list[str] = []
        assert listener.stdout is not None
        while time.monotonic() < deadline:
            line = listener.stdout.readline()
            lines.append(line)
            if "hello from the command line" in line:
                break
        assert any("alice: hello from the command line" in line for line in lines), lines
    finally:
        listener.send_signal(signal.SIGINT)
        out, err = listener.communicate(timeout=20)
    assert listener.returncode == 0, err  # Ctrl-C is a clean exit
    assert "stopped." in out

    wrong = subprocess.run(
        [sys.executable, "-m", "sottovoce", "verify", "alice"],
        env={**env, "SOTTOVOCE_PASSPHRASE": "not it"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr

    numbers = []
    for home, peer in ((alice_home, "bob"), (bob_home, "alice")):
        shown = _cli("verify", peer, home=home)
        assert shown.returncode == 0, shown.stderr
        groups = re.findall(r"^(\d{5}(?: \d{5}){3})$", shown.stdout, flags=re.M)
        assert len(groups) == 3
        assert "█" in shown.stdout or "▀" in shown.stdout  # the QR code
        numbers.append(groups)
    assert numbers[0] == numbers[1]
