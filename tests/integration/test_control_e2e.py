"""Control messages through the real server (client/conversation.py, docs/protocol.md
§Control messages): receipts, typing, replies, edits, deletes and reactions, 1:1 and
in rooms, and the rule that only a message's authenticated sender edits or deletes it.

Waits use ``client.rooms.wait_until``: it wakes after every batch the client stores
(1:1 frames included), so no test sleeps.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path

import pytest

from sottovoce.audit_kit.needles import Scanner, needles_for
from sottovoce.client import Client
from sottovoce.client import control as c
from sottovoce.client.conversation import MessageView
from sottovoce.client.events import TypingStarted
from sottovoce.client.store import TEST_KDF, DeliveryStatus
from sottovoce.errors import UsageError
from tests.integration.client_helpers import PASSPHRASE, accounts, befriend, make_account
from tests.integration.serverproc import ServerProcess

T = 15.0


async def until(client: Client, done: Callable[[], bool]) -> None:
    assert await client.rooms.wait_until(done, T), "timed out"


async def close_all(clients: Iterable[Client]) -> None:
    await asyncio.gather(*(x.close() for x in clients), return_exceptions=True)


def view_of(client: Client, chat: str, message_id: str, room: bool = False) -> MessageView:
    (view,) = [v for v in client.controls.history(chat, room=room, limit=200)
               if v.message.message_id == message_id]
    return view


def state(client: Client, chat: str, message_id: str, room: bool = False) -> str:
    return view_of(client, chat, message_id, room).state


def text_of(client: Client, chat: str, message_id: str, room: bool = False) -> str:
    return view_of(client, chat, message_id, room).text


def assert_canary_gone(client: Client, root: Path, canary: bytes) -> None:
    """Neither the decrypted store (messages, edit history) nor its raw files hold it."""
    texts = [m.text for m in client.messages_after(0, limit=100_000)]
    assert not any(canary.decode() in t for t in texts)
    for m in client.messages_after(0, limit=100_000):
        view = client.controls.view(m)
        assert canary.decode() not in view.text and canary.decode() not in (view.quote or "")
    scanner = Scanner(needles_for(canary, label="canary", kind="canary"))
    for path in root.iterdir():
        if path.is_file():
            assert not scanner.scan(path.read_bytes()), f"canary in {path.name}"


async def test_edit_and_delete_for_everyone_one_to_one(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
    canary = f"CANARY-{secrets.token_hex(6)}".encode()
    try:
        mid = await alice.send_text("bob", "first draft")
        await until(bob, lambda: bob.message(mid) is not None)
        await alice.controls.edit("bob", mid[:10], f"edited {canary.decode()}")
        for who, peer in ((bob, "alice"), (laptop, "bob"), (alice, "bob")):
            await until(who, lambda w=who, p=peer: text_of(w, p, mid).startswith("edited"))
            view = view_of(who, peer, mid)
            assert view.edited and view.text == f"edited {canary.decode()}"
        await alice.controls.delete("bob", mid, for_everyone=True)
        for who, peer in ((bob, "alice"), (laptop, "bob"), (alice, "bob")):
            await until(who, lambda w=who, p=peer: text_of(w, p, mid) == "(deleted)")
            view = view_of(who, peer, mid)
            assert view.deleted and not view.edited  # the tombstone stays
    finally:
        await close_all([alice, bob, laptop])
    for root in (tmp_path / "alice", tmp_path / "bob", tmp_path / "alice-laptop"):
        reopened = await Client.open(root, PASSPHRASE)
        try:
            assert_canary_gone(reopened, root, canary)
        finally:
            await reopened.close()


async def test_mallory_cannot_edit_delete_or_react_for_alice(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob", "mallory") as (alice, bob, mallory):
        mid = await alice.send_text("bob", "the real text")
        await until(bob, lambda: bob.message(mid) is not None)
        # Mallory names alice's message id in her own chat with bob ...
        forged = [
            (c.EDIT, c.Quote(to=mid, text="forged by mallory").encode()),
            (c.REACTION, c.Reaction(to=mid, emoji="💩", on=True).encode()),
            (c.DELETE, c.Delete(to=mid).encode()),
        ]
        for kind, body in forged:
            await mallory._direct.send_control("bob", kind, body, body.decode())
        # ... and bob, a party to the chat, tries to edit and delete alice's message.
        for kind, body in forged[::2]:
            await bob._direct.send_control("alice", kind, body, body.decode())
        # A reply quoting alice's message from mallory's chat does not show alice's text.
        quoting = c.Quote(to=mid, text="look what alice said").encode()
        fake_reply = await mallory._direct.send_control("bob", c.REPLY, quoting, "look")
        barrier_b = await mallory.send_text("bob", "barrier")
        barrier_a = await bob.send_text("alice", "barrier")
        await until(bob, lambda: bob.message(barrier_b) is not None)
        await until(alice, lambda: alice.message(barrier_a) is not None)
        assert view_of(bob, "mallory", fake_reply).quote == "(a message not on this device)"
        for who, peer in ((bob, "alice"), (alice, "bob")):
            view = view_of(who, peer, mid)
            assert (view.text, view.edited, view.deleted, view.reactions) == (
                "the real text", False, False, {}
            )
        # A reaction is counted once per authenticated sender.
        for _ in range(2):
            await bob.controls.react("alice", mid, "👍")
        await alice.controls.react("bob", mid, "👍")
        await until(alice, lambda: view_of(alice, "bob", mid).reactions == {"👍": 2})
        await bob.controls.react("alice", mid, "👍", remove=True)
        await until(alice, lambda: view_of(alice, "bob", mid).reactions == {"👍": 1})
        # Delete for me: gone from bob's history and store, untouched for alice.
        assert await bob.controls.delete("alice", mid) is None
        assert [v.message.message_id for v in bob.controls.history("alice")] == [barrier_a]
        assert bob.message(mid) is not None and bob.message(mid).text == ""  # type: ignore[union-attr]
        assert view_of(alice, "bob", mid).text == "the real text"


async def test_delivered_and_read_receipts_reach_the_senders_devices(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    laptop = await alice.add_device(tmp_path / "alice-laptop", PASSPHRASE, kdf=TEST_KDF)
    try:
        await befriend(alice, bob)
        mids = [await alice.send_text("bob", f"line {i}") for i in range(3)]
        await until(alice, lambda: all(state(alice, "bob", m) == "✓✓" for m in mids))
        await until(laptop, lambda: all(state(laptop, "bob", m) == "✓✓" for m in mids))
        for who in (alice, laptop):  # the stored status says the same as the view
            assert [m.status for m in who.history("bob")] == [DeliveryStatus.DELIVERED] * 3
        assert await bob.controls.mark_read("alice") == 3
        assert await bob.controls.mark_read("alice") == 0  # once per message
        for who in (alice, laptop):
            await until(who, lambda w=who: all(state(w, "bob", m) == "read" for m in mids))
            assert [m.status for m in who.history("bob")] == [DeliveryStatus.READ] * 3
            assert [m.status.tick for m in who.history("bob")] == ["read"] * 3
        # Receipts are never shown in the history, and never answered with receipts.
        assert [m.text for m in bob.history("alice")] == ["line 0", "line 1", "line 2"]
        assert len(alice.history("bob")) == 3
    finally:
        await close_all([alice, bob, laptop])


async def test_read_receipts_off_in_both_directions(server: ServerProcess, tmp_path: Path) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        await befriend(alice, bob)
        bob.controls.set_settings(read_receipts=False)
        to_bob = await alice.send_text("bob", "to bob")
        await until(alice, lambda: state(alice, "bob", to_bob) == "✓✓")
        assert await bob.controls.mark_read("alice") == 0  # bob sends none
        # ... and shows none: alice reads bob's message, bob still sees ✓✓.
        to_alice = await bob.send_text("alice", "to alice")
        await until(bob, lambda: state(bob, "alice", to_alice) == "✓✓")
        assert await alice.controls.mark_read("bob") == 1
        barrier = await alice.send_text("bob", "barrier")
        await until(bob, lambda: bob.message(barrier) is not None)
        assert state(bob, "alice", to_alice) == "✓✓"
        assert bob.message(to_alice).status is DeliveryStatus.READ  # type: ignore[union-attr]
        assert state(alice, "bob", to_bob) == "✓✓"
        bob.controls.set_settings(read_receipts=True)
        assert state(bob, "alice", to_alice) == "read"  # kept, shown once on again


async def test_room_read_by_n_edits_forgery_and_delete(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, carol = await asyncio.gather(
        *(make_account(server, n, tmp_path) for n in ("alice", "bob", "carol"))
    )
    canary = f"CANARY-{secrets.token_hex(6)}"
    try:
        await befriend(alice, bob, carol)
        room = await alice.rooms.create_room("team")
        await alice.rooms.invite("team", "bob")
        await alice.rooms.invite("team", "carol")
        await asyncio.gather(*(x.rooms.wait_epoch(room.room_id, 2, T) for x in (bob, carol)))
        mid = await alice.rooms.send("team", canary)
        for who in (bob, carol):
            await until(who, lambda w=who: w.message(mid) is not None)
        # Each member's device that stored it tells alice, live over 1:1.
        await until(alice, lambda: state(alice, "team", mid, True) == "delivered to 2")
        await bob.controls.mark_read(room.room_id, room=True)
        await carol.controls.mark_read(room.room_id, room=True)
        await until(alice, lambda: state(alice, "team", mid, True) == "read by 2")
        # Typing in a room: live over 1:1 to each member, shown as the room's.
        assert await bob.controls.typing(room.room_id, room=True) is not None
        await until(carol, lambda: carol.controls.typing_now(room.room_id, room=True) == ["bob"])
        # Bob forges edits and deletes of alice's message: nobody applies them.
        for kind, body in ((c.EDIT, c.Quote(to=mid, text="forged").encode()),
                           (c.DELETE, c.Delete(to=mid).encode())):
            await bob.rooms.send_control(room.room_id, kind, body, "")
        reply = await bob.controls.reply(room.room_id, mid, "a reply", room=True)
        await until(carol, lambda: carol.message(reply) is not None)
        await until(alice, lambda: alice.message(reply) is not None)
        for who in (alice, carol):
            assert text_of(who, room.room_id, mid, True) == canary
            view = view_of(who, room.room_id, reply, True)
            assert (view.text, view.quote) == ("a reply", canary)
        await bob.controls.react(room.room_id, mid, "🎉", room=True)
        await carol.controls.react(room.room_id, mid, "🎉", room=True)
        await until(alice, lambda: view_of(alice, "team", mid, True).reactions == {"🎉": 2})
        await alice.controls.edit("team", mid, f"{canary} (fixed)", room=True)
        await until(carol, lambda: text_of(carol, room.room_id, mid, True).endswith("(fixed)"))
        await alice.controls.delete("team", mid, for_everyone=True, room=True)
        for who in (bob, carol):
            await until(who, lambda w=who: text_of(w, room.room_id, mid, True) == "(deleted)")
    finally:
        await close_all([alice, bob, carol])
    for name in ("alice", "bob", "carol"):
        reopened = await Client.open(tmp_path / name, PASSPHRASE)
        try:
            assert_canary_gone(reopened, tmp_path / name, canary.encode())
        finally:
            await reopened.close()


async def test_typing_reaches_the_peer_and_is_never_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    stream = bob.events()
    try:
        await befriend(alice, bob)
        hello = await bob.send_text("alice", "hello")  # sessions both ways
        await until(alice, lambda: alice.message(hello) is not None)
        typing_id = await alice.controls.typing("bob")
        assert typing_id is not None
        assert await alice.controls.typing("bob") is None  # rate-limited
        loop = asyncio.get_running_loop()
        deadline = loop.time() + T
        while True:
            event = await stream.next(deadline - loop.time())
            if isinstance(event, TypingStarted):
                break
        assert (event.conversation, event.sender) == ("alice", "alice")
        assert bob.controls.typing_now("alice") == ["alice"]
        assert bob.history("alice")[-1].text == "hello"  # nothing stored here either
        with closing(sqlite3.connect(server.db_path, timeout=10)) as db:
            sends = db.execute("SELECT COUNT(*) FROM sends WHERE message_id = ?",
                               (typing_id,)).fetchone()[0]
            inbox = db.execute("SELECT COUNT(*) FROM inbox WHERE envelope LIKE ?",
                               (f"%{typing_id}%",)).fetchone()[0]
        assert (sends, inbox) == (0, 0)
        bob.controls.set_settings(typing=False)
        assert await bob.controls.typing("alice") is None  # off: none sent
    finally:
        stream.close()
        await close_all([alice, bob])


async def test_a_stranger_gets_no_receipt_and_no_typing_until_accepted(
    server: ServerProcess, tmp_path: Path
) -> None:
    async with accounts(server, tmp_path, "alice", "bob") as (alice, bob):
        live: list[str] = []  # every live send bob's device makes (receipts, typing)
        send_live = bob._direct.send_live

        async def recording(user: str, body: bytes | object, content_type: str) -> str:
            live.append(content_type)
            return await send_live(user, body, content_type)  # type: ignore[arg-type]

        bob._direct.send_live = recording  # type: ignore[method-assign]
        hello = await alice.send_text("bob", "hello, stranger")
        await until(bob, lambda: bob.message(hello) is not None)
        assert bob.contacts.requests() == ["alice"]
        assert await bob.controls.settle(T)  # nothing under way: nothing was started
        assert await bob.controls.mark_read("alice") == 0
        assert await bob.controls.typing("alice") is None
        assert live == [] and state(alice, "bob", hello) == "✓"
        # Accepted: the read receipt held back goes now, and typing reaches alice.
        await bob.contacts.accept("alice")
        assert await bob.controls.mark_read("alice") == 1
        await until(alice, lambda: state(alice, "bob", hello) == "read")
        assert await bob.controls.typing("alice") is not None
        await until(alice, lambda: alice.controls.typing_now("bob") == ["bob"])
        assert live == [c.TYPING]
        second = await alice.send_text("bob", "now we talk")
        await until(alice, lambda: state(alice, "bob", second) == "✓✓")  # delivered, live


async def test_history_a_page_before_a_message(server: ServerProcess, tmp_path: Path) -> None:
    """``Controls.history(before=)``: the page before a message of that conversation,
    oldest first; a message of another conversation is refused (the app's long chats)."""
    async with accounts(server, tmp_path, "alice", "bob", "carol") as (alice, _, _):
        sent = [await alice.send_text("bob", f"to bob {i}") for i in range(5)]
        other = await alice.send_text("carol", "to carol")
        page = alice.controls.history("bob", limit=2, before=sent[3])
        assert [v.message.message_id for v in page] == sent[1:3]
        assert alice.controls.history("bob", limit=9, before=sent[0]) == []
        with pytest.raises(UsageError, match="no such message in this conversation"):
            alice.controls.history("bob", before=other)
        with pytest.raises(UsageError, match="no such message in this conversation"):
            alice.controls.history("bob", before="not-a-message-id")
