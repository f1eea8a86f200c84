"""The canary run: fresh accounts send random plaintexts through the real server.

    A (two devices a1, a2)                server                 B (one device b)
    a1 ──create, a2 added──────────────►  directory  ◄──────────create────── b
                                                      ◄── push endpoint (opt.) b
                                                                     b goes offline
    a1 ── 1:1 "stored" canaries ──────►  inbox rows ── tickle ──► capture (opt.)
                                                                     b reconnects
    a1 ── 1:1 "live" canary ──────────►  relayed ─────────────────────────► b
    b  ── 1:1 canary to both of A's devices ──────────────────────► a1, a2
    a2 ── 1:1 canary (copy to a1) ────►  relayed ─────────────────────────► b, a1
    a1 ── ephemeral canary ───────────►  relayed, never stored ──────────► b
    (rooms: a1 creates a room, invites B, sends a canary — when the SDK has rooms)

Each canary is ``sottovoce-canary <label> <random 128 bits>``: unique, never
seen before, and long enough that no search can match it by chance. The run
checks that every canary did arrive (otherwise a clean scan would prove
nothing), then collects the canary devices' private keys for the search.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sottovoce.audit_kit.keys import KeySecret, key_secrets
from sottovoce.audit_kit.needles import MIN_SECRET_BYTES
from sottovoce.audit_kit.push_capture import PushCapture
from sottovoce.client import Client, EphemeralReceived, EventStream, ServerError
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import SottovoceError
from sottovoce.secret import Secret

#: How long one step of the run (a send, a delivery) may take before the run gives up.
STEP_TIMEOUT_S = 20.0
#: How long the kit waits for the first push tickle after the stored canaries.
PUSH_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class Canary:
    label: str
    text: str  # the secret

    def __repr__(self) -> str:
        return f"Canary({self.label!r})"


@dataclass(slots=True)
class CanaryRun:
    usernames: list[str] = field(default_factory=list)
    canaries: list[Canary] = field(default_factory=list)
    keys: list[KeySecret] = field(default_factory=list)
    passphrase: Secret = field(default_factory=lambda: Secret(b""))
    push_refused: bool = False
    notes: list[str] = field(default_factory=list)  # coverage gaps that do not block
    blockers: list[str] = field(default_factory=list)  # the run is not trustworthy
    store_dir: Path | None = None


_Maker = Callable[[str], Canary]


def canary_maker(seed: bytes | None = None) -> _Maker:
    """Canaries with 128 random bits each; with ``seed`` (the kit's own tests only) the
    bits are HMAC(seed, label), so a test can plant a canary before the run."""

    def make(label: str) -> Canary:
        if seed is None:
            tail = secrets.token_hex(16)
        else:
            tail = hmac.new(seed, label.encode(), hashlib.sha256).hexdigest()[:32]
        return Canary(label, f"sottovoce-canary {label} {tail}")

    return make


async def _wait_texts(
    client: Client, stream: EventStream, peer: str, texts: list[str], timeout: float
) -> bool:
    """Wait (driven by the client's events) until ``texts`` are in the history with ``peer``."""
    deadline = time.monotonic() + timeout
    while True:
        have = {m.text for m in client.history(peer, limit=1000)}
        if all(t in have for t in texts):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await stream.next(remaining)


async def _wait_ephemeral(stream: EventStream, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = await stream.next(remaining)
        except TimeoutError:
            return False
        if isinstance(event, EphemeralReceived) and event.text == text:
            return True
    return False


async def _room_canary(
    a1: Client, b: Client, b_events: EventStream, bob: str, run: CanaryRun, make: _Maker
) -> None:
    """Room canaries through the SDK's rooms API (``client.rooms``), if this build has one.

    The room's shared name, a rename and its topic are canaries too (the room's
    profile, which the server reads, holds them only sealed), and so is a join token
    (the server keeps only its hash).
    """
    rooms: Any = getattr(a1, "rooms", None)
    if rooms is None or not hasattr(rooms, "create_room"):
        run.notes.append("room canary not sent: this SDK has no rooms API yet")
        return
    name, message = make("room name (sealed)"), make("room message")
    try:
        room = await asyncio.wait_for(rooms.create_room(name.text), STEP_TIMEOUT_S)
        room_id: str = room.room_id
        run.canaries.append(name)
        await asyncio.wait_for(rooms.invite(room_id, bob), STEP_TIMEOUT_S)
        if hasattr(rooms, "set_topic"):
            for what, change in (("room rename", rooms.rename_room),
                                 ("room topic", rooms.set_topic)):
                canary = make(f"{what} (sealed)")
                await asyncio.wait_for(change(room_id, canary.text), STEP_TIMEOUT_S)
                run.canaries.append(canary)
        if hasattr(rooms, "create_token"):
            token: str = await asyncio.wait_for(rooms.create_token(room_id), STEP_TIMEOUT_S)
            run.keys.append(KeySecret("room join token", Secret(token.encode())))
            with contextlib.suppress(ValueError):
                raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
                if len(raw) >= MIN_SECRET_BYTES:
                    run.keys.append(KeySecret("room join token (decoded)", Secret(raw)))
        await asyncio.wait_for(rooms.send(room_id, message.text), STEP_TIMEOUT_S)
        run.canaries.append(message)
    except (SottovoceError, TimeoutError) as exc:
        run.blockers.append(f"the room canary failed: {type(exc).__name__}: {exc}")
        return
    if not await _wait_texts(b, b_events, room_id, [message.text], STEP_TIMEOUT_S):
        run.blockers.append("the room canary did not arrive at the invited member")


async def run_canaries(
    server_url: str,
    *,
    push: PushCapture | None = None,
    keep: Path | None = None,
    seed: bytes | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> CanaryRun:
    """Register canary accounts on ``server_url``, send every kind of canary, collect keys."""
    run = CanaryRun()
    make_canary = canary_maker(seed)
    tag = secrets.token_hex(5)
    alice, bob = f"svaudit-{tag}-a", f"svaudit-{tag}-b"
    run.usernames = [alice, bob]
    passphrase = secrets.token_urlsafe(24)
    run.passphrase = Secret(passphrase.encode())
    root = keep if keep is not None else Path(tempfile.mkdtemp(prefix="sottovoce-audit-"))
    root.mkdir(parents=True, exist_ok=True)
    run.store_dir = root
    clients: list[Client] = []

    async def new_account(name: str) -> Client:
        client = await asyncio.wait_for(
            Client.create_account(server_url, name, root / f"{name}-1", passphrase, kdf=TEST_KDF),
            STEP_TIMEOUT_S,
        )
        clients.append(client)
        return client

    try:
        progress(f"registering canary accounts {alice} (2 devices) and {bob}")
        a1 = await new_account(alice)
        a2 = await asyncio.wait_for(
            a1.add_device(root / f"{alice}-2", passphrase, kdf=TEST_KDF), STEP_TIMEOUT_S
        )
        clients.append(a2)
        b = await new_account(bob)
        if push is not None:
            try:
                await asyncio.wait_for(b.register_push(push.endpoint("b")), STEP_TIMEOUT_S)
            except ServerError as exc:
                run.blockers.append(
                    f"the server refused the push capture endpoint ({exc.code}: {exc}); "
                    "for the audit, run the server with --push-allow-private true or give "
                    "--push-listen an address the server may call"
                )
                run.push_refused = True
                push = None
        await b.close()
        clients.remove(b)

        progress("sending canaries to an offline device (stored on the server)")
        stored = [make_canary("1:1 stored for an offline device #1"),
                  make_canary("1:1 stored for an offline device #2")]
        for c in stored:
            await a1.wait_sent(await a1.send_text(bob, c.text), timeout=STEP_TIMEOUT_S)
        run.canaries += stored
        if push is not None:
            got = await asyncio.to_thread(push.wait, PUSH_WAIT_S)
            if not got:
                run.blockers.append(
                    f"no push payload arrived within {PUSH_WAIT_S:.0f} s, so none was scanned"
                )

        b = await Client.open(root / f"{bob}-1", passphrase)
        clients.append(b)
        b_events, a1_events, a2_events = b.events(), a1.events(), a2.events()
        await asyncio.wait_for(b.connect(), STEP_TIMEOUT_S)

        progress("sending live 1:1 canaries (also to and from a second device)")
        live = make_canary("1:1 live")
        to_two = make_canary("1:1 to both devices of one user")
        from_second = make_canary("1:1 from a second device")
        await a1.wait_sent(await a1.send_text(bob, live.text), timeout=STEP_TIMEOUT_S)
        await b.wait_sent(await b.send_text(alice, to_two.text), timeout=STEP_TIMEOUT_S)
        await a2.wait_sent(await a2.send_text(bob, from_second.text), timeout=STEP_TIMEOUT_S)
        run.canaries += [live, to_two, from_second]
        checks = [
            ("b", await _wait_texts(b, b_events, alice,
                                    [c.text for c in (*stored, live, from_second)],
                                    STEP_TIMEOUT_S)),
            ("a1", await _wait_texts(a1, a1_events, bob, [to_two.text, from_second.text],
                                     STEP_TIMEOUT_S)),
            ("a2", await _wait_texts(a2, a2_events, bob, [to_two.text], STEP_TIMEOUT_S)),
        ]
        for who, ok in checks:
            if not ok:
                run.blockers.append(f"canary device {who} did not receive every 1:1 canary")

        progress("sending an ephemeral canary")
        ephemeral = make_canary("ephemeral")
        await a1.send_text(bob, ephemeral.text, ephemeral=True)
        run.canaries.append(ephemeral)
        if not await _wait_ephemeral(b_events, ephemeral.text, STEP_TIMEOUT_S):
            run.blockers.append("the ephemeral canary did not arrive")

        await _room_canary(a1, b, b_events, bob, run, make_canary)

        for owner, client in ((f"{alice}/a1", a1), (f"{alice}/a2", a2), (f"{bob}/b", b)):
            keys, failed = key_secrets(owner, client.audit_only_private_material())
            run.keys += keys
            run.notes += [f"key material not checked: {f}" for f in failed]
    except (SottovoceError, TimeoutError, OSError) as exc:
        run.blockers.append(f"the canary run failed: {type(exc).__name__}: {exc}")
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
            run.store_dir = None
    return run
