"""KeyPackages made before rooms carried a profile (docs/protocol.md, Rooms): their leaves
do not list the room profile extension, so a room with a profile cannot add the device
with them. At its next start the device withdraws that stock from the server and uploads
a fresh batch and last resort, and is then invited and joins like any other."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from sottovoce.client import Client
from sottovoce.client.rooms.keypackages import KeyPackageRecord
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES, profile
from sottovoce.client.store import TEST_KDF
from sottovoce.protocol.room_rules import ROOM_PROFILE_EXTENSION
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

#: The capabilities every leaf listed before the room profile existed.
BEFORE_PROFILES = replace(ROOM_CAPABILITIES, extensions=())


async def _device_from_before_profiles(server: ServerProcess, root: Path) -> Client:
    bob = await Client.create_account(
        server.url, "bob", root / "bob", PASSPHRASE, kdf=TEST_KDF, connect=False
    )
    bob.rooms._key_packages.capabilities = BEFORE_PROFILES
    await bob.connect()
    await bob.rooms.ensure_key_packages()
    return bob


async def test_a_device_with_key_packages_from_before_room_profiles_renews_them_and_joins(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await _device_from_before_profiles(server, tmp_path)
    try:
        records = bob._store.key_package_records()
        assert records and all(
            ROOM_PROFILE_EXTENSION not in KeyPackageRecord.decode(r).key_package.leaf_node
            .capabilities.extensions for _, r, _ in records
        )
        room = await alice.rooms.create_room("team")
        assert profile(alice.rooms.get(room.room_id)) is not None
        # The old stock cannot join a room with a profile.
        before = await alice.rooms._key_packages.claim("bob")
        assert before and all(
            ROOM_PROFILE_EXTENSION not in kp.leaf_node.capabilities.extensions
            for _, kp in before
        )
        await bob.close()
        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        await bob.connect()
        await bob.rooms.ensure_key_packages()
        # Every KeyPackage the server hands out now is fresh, the last resort included.
        for _ in range(2):
            after = await alice.rooms._key_packages.claim("bob")
            assert after and all(
                ROOM_PROFILE_EXTENSION in kp.leaf_node.capabilities.extensions
                for _, kp in after
            )
        result = await alice.rooms.invite(room.room_id, "bob")
        assert result is not None
        await asyncio.wait_for(bob.rooms.wait_epoch(room.room_id, result.epoch), 30)
        assert bob.rooms.roles(room.room_id) == {"alice": "admin", "bob": "member"}
        await alice.rooms.send(room.room_id, "welcome back")
    finally:
        await asyncio.gather(alice.close(), bob.close())
