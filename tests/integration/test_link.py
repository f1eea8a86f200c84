"""Linking a new device through the real server (docs/protocol.md §Device linking).

* by the QR code's text, by a picture of the QR code and by the short code: the same
  words on both screens; the new device reads a room message sent after linking, and
  with the history the old 1:1 messages; it can send 1:1 itself; the account's other
  device is told; the history carries edits, reactions, receipts, replies and each
  disappearing message's expiry;
* a wrong code ends the attempt, and the right code afterwards finds nothing;
* an expired code is refused;
* a device offline during a link, then a revocation, is told by its next command, once;
* a picture of the QR code links like its text; a wrong picture is a plain error;
* malformed and out-of-order linking messages get typed errors (LinkError), and the
  pre-auth exception is narrow: a joined connection may touch its mailbox only;
* after success, failure or expiry the server holds no mailbox (/healthz).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, linking
from sottovoce.client.events import DeviceLinked
from sottovoce.client.linking import (
    LinkedDevice,
    LinkError,
    LinkInvite,
    NewDevice,
    PeerHello,
    link_existing,
)
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import UsageError
from sottovoce.identity.pake import ShortCode
from sottovoce.protocol.link import LINK_CLOSED, LINK_JOINED
from tests.conformance.rawclient import RawClient
from tests.integration.client_helpers import PASSPHRASE, accounts, make_account, received
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_e2e import room_messages


@pytest.fixture
async def alice_bob(server: ServerProcess, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    try:
        yield alice, bob
    finally:
        await asyncio.gather(alice.close(), bob.close(), return_exceptions=True)


class Existing:
    """The existing device's side run as a task; the invite and the words it showed."""

    def __init__(self, client: Client, *, with_history: bool = False,
                 answer: bool = True) -> None:
        self.invites: asyncio.Queue[LinkInvite] = asyncio.Queue()
        self.hello: PeerHello | None = None
        self._answer = answer
        self.task: asyncio.Task[LinkedDevice] = asyncio.get_running_loop().create_task(
            link_existing(client, show=self.invites.put_nowait, confirm=self._confirm,
                          name_hint="spare", with_history=with_history))

    def _confirm(self, hello: PeerHello) -> bool:
        self.hello = hello
        return self._answer

    async def invite(self) -> LinkInvite:
        return await asyncio.wait_for(self.invites.get(), 10)


async def linked_device(server: ServerProcess, tmp_path: Path, existing: Existing,
                        make: Callable[[LinkInvite], NewDevice], name: str = "laptop",
                        ) -> tuple[Client, LinkedDevice]:
    device = make(await existing.invite())
    words = await device.start()
    client, linked = await device.complete(name=name, data_dir=str(tmp_path / "laptop"),
                                           passphrase=PASSPHRASE, kdf=TEST_KDF)
    await asyncio.wait_for(existing.task, 20)
    assert existing.hello is not None and existing.hello.words == words
    assert existing.hello.name == (name or "spare")  # the existing device's --name-hint
    assert existing.hello.device_id == client.device_id
    return client, linked


def by_qr(invite: LinkInvite) -> NewDevice:
    return NewDevice.from_qr(invite.qr.encode())


def by_code(server: ServerProcess) -> Callable[[LinkInvite], NewDevice]:
    return lambda invite: NewDevice.from_code(server.url, str(invite.code))


async def no_mailboxes(server: ServerProcess) -> None:
    for _ in range(50):
        if server.health()["linkMailboxes"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"mailboxes left on the server: {server.health()['linkMailboxes']}")


async def nothing_linked(server: ServerProcess, client: Client) -> None:
    """The account still has only ``client``'s device, and the server no mailbox."""
    await client.refresh_own_devices()
    contact = client.own_contact()
    assert contact is not None and set(contact.certificates) == {client.device_id}
    await no_mailboxes(server)


async def test_link_by_qr_with_history_rooms_and_the_other_devices_told(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_bob
    second = await alice.add_device(tmp_path / "alice2", PASSPHRASE, kdf=TEST_KDF)
    told = second.events()
    room = await alice.rooms.create_room("team")
    await alice.rooms.invite("team", "bob")
    await bob.rooms.wait_epoch(room.room_id, 1)
    inbox = alice.events()
    await bob.send_text("alice", "before the link")
    await received(inbox, 1)
    await alice.send_text("bob", "an answer before the link")

    laptop, linked = await linked_device(server, tmp_path, Existing(alice, with_history=True),
                                         by_qr)
    try:
        texts = [m.text for m in laptop.history("bob")]
        assert texts == ["before the link", "an answer before the link"]
        assert linked.history_messages >= 2
        assert laptop.known_contact("bob")
        assert laptop.rooms.get(room.room_id).label == "team"
        await bob.rooms.wait_epoch(room.room_id, 2)  # the Add of the linked device
        await bob.rooms.send(room.room_id, "after the link")
        assert "after the link" in await room_messages(laptop, room.room_id, 1)

        async def told_of(device: str) -> None:
            while True:
                event = await told.next(10)
                if isinstance(event, DeviceLinked) and event.device_id == device:
                    return

        await told_of(laptop.device_id)
        bob_inbox = bob.events()
        await laptop.send_text("bob", "from the laptop")
        assert [m.text for m in await received(bob_inbox, 1)] == ["from the laptop"]
    finally:
        await asyncio.gather(laptop.close(), second.close())
    await no_mailboxes(server)


async def test_link_carries_the_contact_list_with_marks_requests_and_blocks(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_bob
    async with accounts(server, tmp_path, "carol", "dave") as (carol, _dave):
        inbox = alice.events()
        await bob.wait_sent(await bob.send_text("alice", "hi, it is bob"))
        await carol.wait_sent(await carol.send_text("alice", "a request"))
        await received(inbox, 2)
        await alice.contacts.accept("bob")
        await alice.contacts.add("erin")  # added, never written to
        await alice.contacts.block("dave")
        store = alice.linking().store
        pinned = store.get_contact("bob")
        assert pinned is not None and not pinned.verified
        with store.transaction():
            store.put_contact(dataclasses.replace(pinned, verified=True))  # compared numbers

        laptop, _ = await linked_device(server, tmp_path, Existing(alice), by_code(server))
        try:
            assert laptop.contacts.contacts() == ["bob", "erin"]
            assert laptop.contacts.requests() == ["carol"]
            assert laptop.contacts.blocked() == ["dave"]
            carried = laptop.linking().store.get_contact("bob")
            assert carried is not None and carried.verified
            assert carried.account_key == pinned.account_key
            with pytest.raises(UsageError, match="blocked"):
                await laptop.send_text("dave", "hello?")
            # The request stays a request: carol learns nothing, bob may be signalled.
            assert not laptop.contacts.may_signal("carol") and laptop.contacts.may_signal("bob")
        finally:
            await laptop.close()
    await no_mailboxes(server)


async def test_a_linked_history_carries_edits_reactions_receipts_replies_and_expiries(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_bob
    await bob.contacts.add("alice")  # so bob's device answers with receipts
    first = await alice.send_text("bob", "draft")
    await bob.rooms.wait_until(lambda: bob.message(first) is not None, 10)
    await alice.controls.edit("bob", first, "final")
    await bob.controls.react("alice", first, "👍")
    reply = await bob.controls.reply("alice", first, "ok")
    await bob.rooms.wait_until(lambda: bob.controls.view(bob.message(first)).edited, 10)  # type: ignore[arg-type]
    assert await bob.controls.mark_read("alice") >= 1
    await alice.timers.set_chat_timer("bob", 3600)
    fades = await alice.send_text("bob", "fades in an hour")

    def shown() -> bool:
        m = alice.message(first)
        if m is None or alice.message(reply) is None:
            return False
        view = alice.controls.view(m)
        return view.state == "read" and view.reactions == {"👍": 1}

    assert await alice.rooms.wait_until(shown, 15)
    laptop, _ = await linked_device(server, tmp_path, Existing(alice, with_history=True), by_qr)
    try:
        views = {v.message.message_id: v for v in laptop.controls.history("bob")}
        view = views[first]
        assert (view.text, view.edited, view.reactions, view.state) == (
            "final", True, {"👍": 1}, "read")
        assert views[reply].quote == "final" and views[reply].text == "ok"
        ends = laptop.timers.expires_at(fades)
        assert ends and ends == alice.timers.expires_at(fades)
        laptop.timers.expiries.clock = lambda: ends + 1
        assert fades in laptop.timers.sweep() and laptop.message(fades) is None
    finally:
        await laptop.close()


async def test_link_by_short_code_then_send(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_bob
    laptop, linked = await linked_device(server, tmp_path, Existing(alice), by_code(server),
                                         name="")
    try:
        assert linked.name == "spare"  # no name of its own: the hint
        assert linked.history_messages == 0 and laptop.history("bob") == []
        assert laptop.username == "alice"
        bob_inbox = bob.events()
        await laptop.send_text("bob", "hello from the new device")
        got = await received(bob_inbox, 1)
        assert got[0].sender_device == laptop.device_id
    finally:
        await laptop.close()
    await no_mailboxes(server)


async def test_wrong_code_ends_the_attempt_and_the_right_one_then_fails(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, _ = alice_bob
    existing = Existing(alice)
    invite = await existing.invite()
    right = invite.code
    digits = right.digits[:4] + f"{(int(right.digits[4:]) + 1) % 10000:04d}"
    wrong = ShortCode(digits=digits, words=right.words)
    guess = NewDevice.from_code(server.url, str(wrong))
    with pytest.raises(LinkError):
        await guess.start()
    with pytest.raises(LinkError, match="code does not match"):
        await asyncio.wait_for(existing.task, 10)
    await no_mailboxes(server)
    again = NewDevice.from_code(server.url, str(right))
    with pytest.raises(LinkError, match="no linking code with this number"):
        await again.start()
    qr = by_qr(invite)
    with pytest.raises(LinkError, match="no linking code"):
        await qr.start()


async def test_refusing_the_words_links_nothing(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, _ = alice_bob
    existing = Existing(alice, answer=False)
    device = by_qr(await existing.invite())
    await device.start()
    with pytest.raises(LinkError, match="cancelled on the other device"):
        await device.complete(name="x", data_dir=str(tmp_path / "x"), passphrase=PASSPHRASE,
                              kdf=TEST_KDF)
    with pytest.raises(Exception, match="did not confirm"):
        await existing.task
    assert not (tmp_path / "x").exists()
    await nothing_linked(server, alice)


async def test_expired_code_is_refused(server_factory: Callable[..., ServerProcess],
                                       tmp_path: Path) -> None:
    server = server_factory("--link-ttl-ms", "600")
    alice = await make_account(server, "alice", tmp_path)
    try:
        existing = Existing(alice)
        invite = await existing.invite()
        with pytest.raises(LinkError, match="expired"):
            await asyncio.wait_for(existing.task, 10)
        await no_mailboxes(server)
        with pytest.raises(LinkError, match="no linking code"):
            await NewDevice.from_code(server.url, str(invite.code)).start()
    finally:
        await alice.close()


async def raw_joiner(server: ServerProcess, mailbox: str) -> RawClient:
    raw = await RawClient.open(server.ws_url)
    reply = await raw.request("sottovoce.link.join", {"mailbox": mailbox})
    assert reply["event"] == "sottovoce.link.joined", reply
    return raw


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(("body", "why"), [
    (b"\x00garbage", "malformed"),
    (b"\x01" + bytes(200), "out of order"),
])
async def test_malformed_or_out_of_order_message_is_a_typed_error(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client],
    body: bytes, why: str,
) -> None:
    alice, _ = alice_bob
    existing = Existing(alice)
    invite = await existing.invite()
    raw = await raw_joiner(server, invite.qr.mailbox_id())
    try:
        first = await raw.wait_for("sottovoce.link.message")
        assert base64.b64decode(first["data"]["body"])[0] == 0  # the PAKE's first message
        await raw.request("sottovoce.link.put", {"mailbox": invite.qr.mailbox_id(),
                                                 "body": b64(body)})
        with pytest.raises(LinkError, match=why):
            await asyncio.wait_for(existing.task, 10)
        closed = await raw.wait_for("sottovoce.link.closed")
        assert closed["data"]["reason"] == "failed"
    finally:
        await raw.close()
    await no_mailboxes(server)


async def test_the_pre_auth_exception_is_narrow(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    alice, _ = alice_bob
    stranger = await RawClient.open(server.ws_url)
    try:
        refused = await stranger.request("sottovoce.link.open", {"mailbox": "1234"})
        assert refused["data"]["code"] == "unauthorized"
        refused = await stranger.request("sottovoce.link.put",
                                         {"mailbox": "1234", "body": b64(b"x")})
        assert refused["data"]["code"] == "unauthorized"
        bad = await stranger.request("sottovoce.link.join", {"mailbox": "12345"})
        assert bad["data"]["code"] == "bad_request"
    finally:
        await stranger.close()

    existing = Existing(alice)
    invite = await existing.invite()
    raw = await raw_joiner(server, invite.code.nameplate)
    try:
        other = await raw.request("sottovoce.link.put", {"mailbox": "0000" if
                                  invite.code.nameplate != "0000" else "0001",
                                  "body": b64(b"x")})
        assert other["data"]["code"] == "unauthorized"
        lookup = await raw.request("sottovoce.directory.lookup", {"username": "alice"})
        assert lookup["data"]["code"] == "unauthorized"
        second = await RawClient.open(server.ws_url)
        taken = await second.request("sottovoce.link.join", {"mailbox": invite.code.nameplate})
        assert taken["data"]["code"] == "link_not_found"
        await second.close()
        await raw.request("sottovoce.link.close", {"mailbox": invite.code.nameplate,
                                                   "reason": "cancelled"})
        with pytest.raises(LinkError, match="cancelled on the other device"):
            await asyncio.wait_for(existing.task, 10)
    finally:
        await raw.close()
    await no_mailboxes(server)


# --- the commands ---------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env["SOTTOVOCE_PASSPHRASE"] = PASSPHRASE
    return env


class Proc:
    """A `sottovoce` command in the background, its output in a file."""

    def __init__(self, out: Path, *args: str, stdin: bool = False) -> None:
        self.out = out
        with out.open("wb") as o:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sottovoce", *args], env=cli_env(), stdout=o,
                stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)

    def text(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")

    async def wait_for(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        for _ in range(int(timeout / 0.05)):
            found = re.search(pattern, self.text())
            if found is not None:
                return found
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {pattern!r}:\n{self.text()}")

    def answer(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.close()

    async def exit_code(self, timeout: float = 60) -> int:
        for _ in range(int(timeout / 0.05)):
            if self.proc.poll() is not None:
                return self.proc.returncode
            await asyncio.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"still running:\n{self.text()}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sottovoce", *args], env=cli_env(),
                          capture_output=True, text=True, timeout=60, check=False)


async def test_cli_device_link_account_link_list_rename_and_send(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await make_account(server, "bob", tmp_path)
    second = await alice.add_device(tmp_path / "alice2", PASSPHRASE, kdf=TEST_KDF)
    await asyncio.gather(alice.close(), second.close())
    alice_dir, laptop_dir = str(tmp_path / "alice"), str(tmp_path / "laptop")
    listen = Proc(tmp_path / "listen.out", "listen", "--data-dir", str(tmp_path / "alice2"))
    try:
        await listen.wait_for("● connected")
        existing = Proc(tmp_path / "link.out", "device", "link", "--no-qr", "--data-dir",
                        alice_dir, stdin=True)
        code = (await existing.wait_for(r"short code: +(\S+ \S+)")).group(1)
        assert "Only link a device you are holding" in existing.text()
        assert "sottovoce-link:" in existing.text()
        new = Proc(tmp_path / "new.out", "account", "link", "--server", server.url,
                   "--data-dir", laptop_dir, "--name", "laptop", "--code", code)
        words = (await new.wait_for(r"This screen shows:\n +([a-z ]+)\n")).group(1)
        shown = (await existing.wait_for(r"'laptop' \(\w+\) shows:\n +([a-z ]+)\n")).group(1)
        assert words == shown
        existing.answer("y\n")
        assert await new.exit_code() == 0, new.text()
        assert await existing.exit_code() == 0, existing.text()
        assert "linked 'laptop'" in existing.text()
        assert "this device is 'laptop'" in new.text()

        listed = cli("device", "list", "--data-dir", laptop_dir)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert len(lines) == 3  # alice's first device, the second, the laptop
        mine = next(line for line in lines if "(this device)" in line)
        assert "laptop" in mine and mine.startswith("*") and "key " in mine
        unnamed = [line.split() for line in lines if "(this device)" not in line]
        assert [words[1] for words in unnamed] == ["-", "-"]  # no names given to them
        other = unnamed[0][0]
        renamed = cli("device", "rename", other[:6], "desktop", "--data-dir", laptop_dir)
        assert renamed.returncode == 0, renamed.stderr
        assert "desktop" in cli("device", "list", "--data-dir", laptop_dir).stdout

        bob_inbox = bob.events()
        sent = cli("send", "bob", "from the linked laptop", "--data-dir", laptop_dir)
        assert sent.returncode == 0, sent.stderr
        assert [m.text for m in await received(bob_inbox, 1)] == ["from the linked laptop"]
        told = await listen.wait_for(r"a device was linked to your account: .*?\(id (\w+)\)")
        assert told.group(1) in mine
    finally:
        listen.proc.terminate()
        listen.proc.wait(10)
        await bob.close()
    await no_mailboxes(server)


async def test_cli_account_link_by_qr_image(server: ServerProcess, tmp_path: Path) -> None:
    """The QR code `device link` shows, as a PNG: `account link --qr-image` links with it
    as with the pasted text."""
    import segno

    alice = await make_account(server, "alice", tmp_path)
    await alice.close()
    laptop_dir = str(tmp_path / "laptop")
    existing = Proc(tmp_path / "link.out", "device", "link", "--data-dir",
                    str(tmp_path / "alice"), stdin=True)
    try:
        text = (await existing.wait_for(r"linking text: (sottovoce-link:\S+)")).group(1)
        # The existing device names both ways to link: the short code and a picture.
        await existing.wait_for(r"account link --data-dir DIR --qr-image FILE")
        image = tmp_path / "link-qr.png"
        segno.make(text, error="m", micro=False).save(str(image), scale=6, border=4)
        new = Proc(tmp_path / "new.out", "account", "link", "--data-dir", laptop_dir,
                   "--name", "laptop", "--qr-image", str(image))
        words = (await new.wait_for(r"This screen shows:\n +([a-z ]+)\n")).group(1)
        shown = (await existing.wait_for(r"'laptop' \(\w+\) shows:\n +([a-z ]+)\n")).group(1)
        assert words == shown
        existing.answer("y\n")
        assert await new.exit_code() == 0, new.text()
        assert await existing.exit_code() == 0, existing.text()
        assert "this device is 'laptop'" in new.text() and "of 'alice'" in new.text()
        listed = cli("device", "list", "--data-dir", laptop_dir)
        assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed
    finally:
        for proc in (existing.proc,):
            if proc.poll() is None:
                proc.kill()
    await no_mailboxes(server)


def test_cli_qr_image_mistakes_are_plain(tmp_path: Path) -> None:
    import segno
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    other = tmp_path / "other.png"
    segno.make("https://example.org/not-a-link", micro=False).save(str(other), scale=6)
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(blank.read_bytes()[:60])
    notes = tmp_path / "notes.txt"
    notes.write_text("sottovoce-link:AAAA")
    cases = [
        (tmp_path / "missing.png", "no image file"),
        (notes, "not an image"),
        (damaged, "damaged image"),
        (blank, "found no QR code"),
        (other, "not a sottovoce linking code"),
    ]
    for path, why in cases:
        bad = cli("account", "link", "--data-dir", str(tmp_path / "n"), "--qr-image", str(path))
        assert bad.returncode == 1 and why in bad.stderr, (path, bad.stderr)
        assert "Traceback" not in bad.stderr
    both = cli("account", "link", "--data-dir", str(tmp_path / "n"), "--qr-image", str(blank),
               "--code", "1234-5678 apple-river")
    assert both.returncode == 1 and "not both" in both.stderr
    assert not (tmp_path / "n").exists()


async def test_an_offline_device_is_told_once_of_a_link_and_of_a_revocation(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Device B is offline while A links C, then while A revokes C: B's next command
    says so, once; A, which did both itself, is not told."""
    alice = await make_account(server, "alice", tmp_path)
    second = await alice.add_device(tmp_path / "alice2", PASSPHRASE, kdf=TEST_KDF)
    await second.refresh_own_devices()  # what B knows of its account: A and B
    await second.close()
    laptop, _ = await linked_device(server, tmp_path, Existing(alice), by_qr)
    laptop_id = laptop.device_id
    await asyncio.gather(laptop.close(), alice.close())
    alice_dir, second_dir = str(tmp_path / "alice"), str(tmp_path / "alice2")

    def told(data_dir: str, what: str) -> list[str]:
        done = cli("device", "list", "--data-dir", data_dir)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        return [line for line in done.stderr.splitlines() if what in line]

    linked = told(second_dir, "a device was linked to your account")
    assert len(linked) == 1, linked
    assert f"(id {laptop_id}) on " in linked[0]
    assert "revoke it with '" in linked[0] and f" device revoke {laptop_id}'" in linked[0]
    assert told(second_dir, "was linked") == []  # told once
    assert told(alice_dir, "was linked") == []  # A linked it itself

    revoked = cli("device", "revoke", laptop_id, "--data-dir", alice_dir)
    assert revoked.returncode == 0, revoked.stderr
    assert "was revoked" not in revoked.stderr
    gone = told(second_dir, "was revoked")
    assert gone == [f"! device (id {laptop_id}) was revoked from your account"]
    assert told(second_dir, "was revoked") == []
    assert told(alice_dir, "was revoked") == []


def test_cli_link_mistakes_are_plain(tmp_path: Path) -> None:
    bad = cli("account", "link", "--data-dir", str(tmp_path / "n"), "--code", "hello")
    assert bad.returncode == 1 and "a short code looks like" in bad.stderr
    assert "Traceback" not in bad.stderr
    damaged = cli("account", "link", "--data-dir", str(tmp_path / "n"), "--code",
                  "sottovoce-link:AAAA")
    assert damaged.returncode == 1 and "damaged" in damaged.stderr
    nobody = cli("device", "rename", "abc", "x", "--data-dir", str(tmp_path / "none"))
    assert nobody.returncode == 1 and "Traceback" not in nobody.stderr


async def left_at_the_question(
    server: ServerProcess, alice: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    *, notice_delay_s: float = 0.0,
) -> asyncio.Task[LinkedDevice]:
    """Start a link by QR; the new device says HELLO, then leaves while Alice's device asks
    its user. Once the server has ended the mailbox and (unless the notice of it is held
    back ``notice_delay_s``) Alice's device has the notice, the user says yes. Returns
    Alice's side of the link."""
    loop = asyncio.get_running_loop()
    feed = linking._Inbox.feed
    noticed = asyncio.Event()
    existing: list[linking._Inbox] = []  # told the new device joined: Alice's side

    def fed(inbox: linking._Inbox, event: str, data: dict[str, Any]) -> None:
        if event == LINK_JOINED:
            existing.append(inbox)
        if event != LINK_CLOSED or not any(inbox is mine for mine in existing):
            feed(inbox, event, data)
            return

        def deliver() -> None:
            feed(inbox, event, data)
            noticed.set()

        loop.call_later(notice_delay_s, deliver)

    monkeypatch.setattr(linking._Inbox, "feed", fed)
    asked, answer = threading.Event(), threading.Event()
    invites: asyncio.Queue[LinkInvite] = asyncio.Queue()

    def confirm(hello: PeerHello) -> bool:
        asked.set()
        answer.wait(10)
        return True

    task = asyncio.create_task(link_existing(alice, show=invites.put_nowait, confirm=confirm))
    device = by_qr(await invites.get())
    await device.start()
    hello_sent = asyncio.create_task(device.complete(
        name="x", data_dir=str(tmp_path / "x"), passphrase=PASSPHRASE, kdf=TEST_KDF))
    # HELLO is out when the existing device asks its user; it waits for the answer.
    assert await asyncio.to_thread(asked.wait, 10)
    hello_sent.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await hello_sent
    await no_mailboxes(server)
    if not notice_delay_s:
        await asyncio.wait_for(noticed.wait(), 10)
    answer.set()
    return task


async def test_the_new_device_leaving_while_the_user_decides_ends_the_link(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, _ = alice_bob
    task = await left_at_the_question(server, alice, tmp_path, monkeypatch)
    with pytest.raises(LinkError, match="cancelled on the other device"):
        await asyncio.wait_for(task, 10)
    await nothing_linked(server, alice)


async def test_the_new_device_leaving_as_the_user_confirms_ends_the_link(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The notice that the new device left can still be on its way when the user says
    yes (here it comes a second late): the handover then finds no mailbox, and that ends
    the link with a LinkError as the notice would, not with a server error."""
    alice, _ = alice_bob
    task = await left_at_the_question(server, alice, tmp_path, monkeypatch, notice_delay_s=1.0)
    with pytest.raises(LinkError, match="the other device ended the link"):
        await asyncio.wait_for(task, 10)
    await nothing_linked(server, alice)


async def test_a_device_linked_here_then_revoked_at_once_raises_no_alert(
    server: ServerProcess, tmp_path: Path, alice_bob: tuple[Client, Client]
) -> None:
    """The existing device remembers the device it certified, so its own monitor never
    takes the linked device's versions for a device that none of the account's added,
    even when it has not polled between the link and the revocation."""
    alice, _ = alice_bob
    assert alice.kt.pins is not None
    laptop, _ = await linked_device(server, tmp_path, Existing(alice), by_qr)
    laptop_id = laptop.device_id
    await laptop.close()
    await alice.revoke_device(laptop_id)
    await alice.check_log()
    assert alice.kt.alerts() == []
