"""Linking with the two devices on different server nodes (PostgreSQL + NATS): the
mailbox stays on the opener's node and the joiner's node relays through the fan-out,
with the rules of one node (one joiner, closed on either side's loss, nothing left).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.linking import LinkError, NewDevice
from sottovoce.client.store import TEST_KDF
from sottovoce.identity.pake import ShortCode
from tests.conformance.rawclient import RawClient
from tests.integration.client_helpers import PASSPHRASE
from tests.integration.serverproc import ServerProcess
from tests.integration.test_link import Existing
from tests.integration.test_multinode import Cluster, _clusters, cluster_factory

__all__ = ["_clusters", "cluster_factory"]  # the fixtures, shared with test_multinode


async def _no_mailboxes(*nodes: ServerProcess) -> None:
    for _ in range(100):
        if all(n.health()["linkMailboxes"] == 0 for n in nodes):
            return
        await asyncio.sleep(0.05)
    raise AssertionError([n.health()["linkMailboxes"] for n in nodes])


async def test_link_by_short_code_with_the_devices_on_different_nodes(
    cluster_factory: Callable[[int], Awaitable[Cluster]], tmp_path: Path
) -> None:
    c = await cluster_factory(2)
    name = f"l{secrets.token_hex(5)}"
    phone = await Client.create_account(c.nodes[0].url, name, tmp_path / "phone", PASSPHRASE,
                                        kdf=TEST_KDF)
    laptop: Client | None = None
    try:
        # A code nobody opened is not found on the other node either.
        nobody = NewDevice.from_code(c.nodes[1].url,
                                     str(ShortCode.generate(secrets.token_bytes)))
        with pytest.raises(LinkError, match="no linking code with this number"):
            await nobody.start()

        existing = Existing(phone)
        invite = await existing.invite()
        device = NewDevice.from_code(c.nodes[1].url, str(invite.code))
        words = await device.start()
        # One joiner: a second connection, on either node, is refused.
        for node in c.nodes:
            other = await RawClient.open(node.ws_url)
            try:
                taken = await other.request("sottovoce.link.join",
                                            {"mailbox": invite.code.nameplate})
                assert taken["data"]["code"] == "link_not_found"
            finally:
                await other.close()
        laptop, linked = await device.complete(name="laptop", data_dir=str(tmp_path / "laptop"),
                                               passphrase=PASSPHRASE, kdf=TEST_KDF)
        await asyncio.wait_for(existing.task, 20)
        assert existing.hello is not None and existing.hello.words == words
        assert laptop.identity.account_key.public == phone.identity.account_key.public
        await phone.refresh_own_devices()
        own = phone.own_contact()
        assert own is not None and linked.device_id in own.certificates
        await _no_mailboxes(*c.nodes)

        # The opener's loss ends the mailbox for a joiner on the other node.
        existing = Existing(phone)
        invite = await existing.invite()
        raw = await RawClient.open(c.ws(1))
        try:
            joined = await raw.request("sottovoce.link.join", {"mailbox": invite.code.nameplate})
            assert joined["event"] == "sottovoce.link.joined", joined
            assert c.nodes[1].health()["linkMailboxes"] == 1
            existing.task.cancel()
            await phone.close()
            closed = await raw.wait_for("sottovoce.link.closed", 10)
            assert closed["data"]["reason"] == "peer_gone"
        finally:
            await raw.close()
        await _no_mailboxes(*c.nodes)
    finally:
        await phone.close()
        if laptop is not None:
            await laptop.close()
