"""After `device revoke`, every surviving device holds the new account key, through the
real server (docs/threat-model.md §A stolen or seized device): a connected device at
once, an offline one on its next connect; the revoked device (a thief with a copy of
its data) gets nothing and can do nothing.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.errors import ServerError
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.ids import now_ms
from sottovoce.client.key_handover import SENT_TEXT
from sottovoce.client.linking import all_messages
from sottovoce.client.registration import register_device
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import SottovoceError
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_link import Existing, by_code, linked_device


async def _holds(client: Client, head: Client) -> None:
    """Wait until ``client`` holds the account key (and a certificate under it) of ``head``."""
    want = head.identity.account_key.public
    for _ in range(200):
        if client.identity.account_key.public == want:
            break
        await asyncio.sleep(0.05)
    assert client.identity.account_key.public == want
    assert client.identity.certificate.account_key == want


async def test_every_surviving_device_gets_the_new_account_key(
    server: ServerProcess, tmp_path: Path
) -> None:
    phone = await make_account(server, "alice", tmp_path)
    tablet = await phone.add_device(tmp_path / "tablet", PASSPHRASE, kdf=TEST_KDF)
    desk = await phone.add_device(tmp_path / "desk", PASSPHRASE, kdf=TEST_KDF)
    laptop = await phone.add_device(tmp_path / "laptop", PASSPHRASE, kdf=TEST_KDF)
    clients = [phone, tablet, laptop]
    try:
        await desk.close()  # offline while the laptop is revoked
        stolen = tmp_path / "stolen"
        shutil.copytree(tmp_path / "laptop", stolen)
        old_key = laptop.identity.account_key

        await phone.revoke_device(laptop.device_id)
        assert phone.identity.account_key.public != old_key.public
        await _holds(tablet, phone)  # connected: at once
        # The key travels only inside the Olm message: no message row holds it.
        secret = base64.b64encode(phone.identity.account_key.private_bytes().expose()).decode()
        for c in (phone, tablet):
            texts = [m.text for m in all_messages(c._store.messages_after)]
            assert not any(secret in t for t in texts)
        assert SENT_TEXT in [m.text for m in all_messages(phone._store.messages_after)]

        # The offline device finds it in its inbox on its next connect.
        desk = await Client.open(tmp_path / "desk", PASSPHRASE)
        clients.append(desk)
        await desk.connect(timeout=10)
        await _holds(desk, phone)

        # The tablet, which did not revoke, now certifies a new device (by short code) ...
        existing = Existing(tablet)
        (tmp_path / "spare").mkdir()
        spare, linked = await linked_device(server, tmp_path / "spare", existing,
                                            by_code(server))
        clients.append(spare)
        assert spare.identity.account_key.public == phone.identity.account_key.public
        await phone.refresh_own_devices()
        own = phone.own_contact()
        assert own is not None and linked.device_id in own.certificates
        # ... and revokes one: the key moves on, and the phone and the new device follow.
        await tablet.revoke_device(desk.device_id)
        assert tablet.identity.account_key.public != own.account_key
        await _holds(phone, tablet)
        await _holds(spare, tablet)
        assert desk.identity.account_key.public != tablet.identity.account_key.public

        # The thief with the laptop's data: no login (so no inbox, no key), and the key
        # it holds certifies nothing.
        thief = await Client.open(stolen, PASSPHRASE)
        try:
            with pytest.raises(SottovoceError):
                await thief.connect(timeout=5, fail_fast=True)
            assert thief.identity.account_key.public == old_key.public
        finally:
            await thief.close()
        fake, _ = LocalIdentity.new(username="alice", server_url=server.url, now_ms=now_ms(),
                                    rng=secrets.token_bytes, account_key=old_key)
        with pytest.raises(ServerError) as refused:
            await register_device(server.ws_url, fake, add=True)
        assert refused.value.code == "invalid_certificate"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
