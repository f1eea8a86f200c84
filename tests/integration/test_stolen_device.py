"""A stolen device, step by step, through the real server
(docs/threat-model.md §A stolen or seized device).

The thief holds a full copy of the laptop's data directory (account key included) and
its passphrase. The owner revokes the laptop from the phone, then, once the thief has
raced with a succession of their own, recovers with the printed code. At each step
the thief tries to send, to receive, to certify a device and to revoke the owner's.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from pathlib import Path
from typing import TypeVar

import pytest

from sottovoce.client import Client
from sottovoce.client.account_keys import recertify, to_wire
from sottovoce.client.errors import ServerError
from sottovoce.client.events import ErrorEvent, KeysChanged
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.registration import register_device
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import SottovoceError
from sottovoce.identity import AccountKey, RevocationStatement
from sottovoce.identity.succession import AccountForked, Succession
from sottovoce.protocol import events as ev
from sottovoce.secret import Secret
from tests.integration.client_helpers import PASSPHRASE, make_account, received
from tests.integration.serverproc import ServerProcess


async def _next(stream: object, kind: type[T], code: str | None = None) -> T:
    """The next event of ``kind`` (and ``code``): the server tells correspondents at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        event = await stream.next(max(0.01, deadline - loop.time()))  # type: ignore[attr-defined]
        if isinstance(event, kind) and (code is None or getattr(event, "code", None) == code):
            return event

T = TypeVar("T")


async def _thief_connects(root: Path) -> None:
    thief = await Client.open(root, PASSPHRASE)
    try:
        await thief.connect(timeout=5, fail_fast=True)
    finally:
        await thief.close()


async def _thief_succession(url: str, laptop: LocalIdentity, old: AccountKey) -> AccountKey:
    """The thief's own succession from the stolen key, certifying the stolen laptop."""
    mine = AccountKey.generate(secrets.token_bytes)
    cert = recertify(mine, [laptop.certificate], now_ms=_now())[0]
    succession = Succession.issue(old, mine, username=laptop.username, now_ms=_now())
    renewed = LocalIdentity(username=laptop.username, device_id=laptop.device_id,
                            server_url=laptop.server_url, account_key=mine,
                            device_key=laptop.device_key, certificate=cert)
    await register_device(url, renewed, add=True, statements=to_wire([succession, cert]))
    return mine


def _now() -> int:
    import time

    return int(time.time() * 1000)


async def _alice_and_bob(server: ServerProcess, tmp_path: Path) -> tuple[Client, Secret, Client]:
    """alice's phone, the recovery code it printed, and bob."""
    phone = await make_account(server, "alice", tmp_path)
    code = phone.recovery_code
    assert code is not None
    return phone, code, await make_account(server, "bob", tmp_path)


async def test_a_thief_with_the_laptop_s_data_loses_everything_once_the_owner_acts(
    server: ServerProcess, tmp_path: Path
) -> None:
    phone, code, bob = await _alice_and_bob(server, tmp_path)
    laptop = await phone.add_device(tmp_path / "laptop", PASSPHRASE, kdf=TEST_KDF)
    bob_events = bob.events()
    phone_events = phone.events()
    try:
        await bob.send_text("alice", "before")  # bob has sessions with both devices
        assert [m.text for m in await received(phone_events, 1)] == ["before"]
        stolen = tmp_path / "stolen"
        shutil.copytree(tmp_path / "laptop", stolen)
        await bob.safety_number("alice")
        before = bob.known_safety_number("alice")

        # 1. The owner revokes the laptop: its live connection closes at once.
        await phone.revoke_device(laptop.device_id)
        for _ in range(100):
            if not laptop.connected:
                break
            await asyncio.sleep(0.05)
        assert not laptop.connected
        old_key = laptop.identity.account_key
        assert phone.identity.account_key.public != old_key.public

        # Bob sees the succession, drops the laptop and his safety number changes.
        changed = await _next(bob_events, KeysChanged)
        assert changed.dropped == (laptop.device_id,)
        assert "keys changed by succession" in changed.message
        assert "safety number changed" in changed.message
        assert bob.known_safety_number("alice") != before
        assert not bob._sessions.has_session("alice", laptop.device_id)

        # The thief cannot log in: no sending, no receiving.
        with pytest.raises(SottovoceError):
            await _thief_connects(stolen)
        await bob.send_text("alice", "after revocation")
        assert [m.text for m in await received(phone_events, 1)] == ["after revocation"]
        # Nor certify a device or revoke one with the stolen key.
        thief_copy = await Client.open(stolen, PASSPHRASE)
        stolen_id = thief_copy.identity
        await thief_copy.close()
        new_dev, _ = LocalIdentity.new(username="alice", server_url=server.url,
                                       now_ms=_now(), rng=secrets.token_bytes,
                                       account_key=old_key)
        with pytest.raises(ServerError) as refused:
            await register_device(server.ws_url, new_dev, add=True)
        assert refused.value.code == "invalid_certificate"

        # 2. The thief races with a succession of their own: the account is forked,
        # nothing signed by an account key counts, and bob sends nothing to it.
        with pytest.raises(ServerError) as forked:
            await _thief_succession(server.ws_url, stolen_id, old_key)
        assert forked.value.code == "account_forked"
        warning = await _next(bob_events, ErrorEvent, "account_forked")
        assert "nothing is sent to it" in warning.message
        with pytest.raises(AccountForked):
            await bob.send_text("alice", "while forked")
        with pytest.raises(ServerError) as frozen:  # even the owner's new key is not obeyed
            await phone.renew_certificate()
        assert frozen.value.code == "account_forked"

        # 3. The owner recovers with the printed code on the phone.
        new_code = await phone.recover_account(code.expose().decode())
        assert new_code.expose() != code.expose()
        await phone.connect(timeout=10)
        await _next(bob_events, KeysChanged)
        await bob.send_text("alice", "after recovery")
        texts = [m.text for m in await received(phone_events, 1)]
        assert texts == ["after recovery"]

        # The thief's succession replayed, a new one from the stolen key, a revocation of
        # the phone: none of it moves the account.
        with pytest.raises(ServerError):
            await _thief_succession(server.ws_url, stolen_id, old_key)
        revocation = RevocationStatement.issue(old_key, username="alice",
                                               device_id=phone.device_id, now_ms=_now())
        with pytest.raises(SottovoceError):
            thief_copy = await Client.open(stolen, PASSPHRASE)
            try:
                await thief_copy.connect(timeout=5, fail_fast=True)
                await thief_copy._conn.request(
                    ev.RevokeDevice(revocation=revocation.encode()),
                    frozenset({ev.DEVICE_REVOKED}),
                )
            finally:
                await thief_copy.close()
        with pytest.raises(SottovoceError):
            await _thief_connects(stolen)
        await bob.send_text("alice", "still the owner's")
        assert [m.text for m in await received(phone_events, 1)] == ["still the owner's"]
        assert phone.connected
    finally:
        for c in (phone, bob, laptop):
            await c.close()


async def test_recovery_on_a_new_device_takes_the_account_back(
    server: ServerProcess, tmp_path: Path
) -> None:
    phone, code, bob = await _alice_and_bob(server, tmp_path)
    tablet = await phone.add_device(tmp_path / "tablet", PASSPHRASE, kdf=TEST_KDF)
    laptop = await phone.add_device(tmp_path / "laptop", PASSPHRASE, kdf=TEST_KDF)
    await phone.revoke_device(laptop.device_id)
    # The tablet survives (certified again) and is handed the new account key.
    for _ in range(200):
        if tablet.identity.account_key.public == phone.identity.account_key.public:
            break
        await asyncio.sleep(0.05)
    assert tablet.identity.account_key.public == phone.identity.account_key.public
    for c in (tablet, laptop):
        await c.close()
    await phone.close()
    try:
        fresh, new_code = await Client.recover_on_new_device(
            server.url, "alice", tmp_path / "fresh", PASSPHRASE, code.expose().decode(),
            kdf=TEST_KDF,
        )
        events = fresh.events()
        try:
            assert new_code.expose() != code.expose()
            await bob.send_text("alice", "hello new device")
            assert [m.text for m in await received(events, 1)] == ["hello new device"]
            # The old phone was not certified under the recovered key: it is revoked.
            with pytest.raises(SottovoceError):
                await _thief_connects(tmp_path / "alice")
        finally:
            await fresh.close()
    finally:
        await bob.close()
