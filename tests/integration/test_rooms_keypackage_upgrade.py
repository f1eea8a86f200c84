"""Devices and rooms from before rooms carried a profile (docs/protocol.md, Rooms).

KeyPackages made then do not list the room profile extension, so a room with a profile
cannot add the device with them: at its next start the device withdraws that stock from
the server and uploads a fresh batch and last resort, and is then invited and joins.
A room made then has leaves without the capability, so no profile can be set in it
(RFC 9420 §12.1.7): each device refreshes its leaf (a self-update) when it connects;
until every leaf has, a rename is refused with a plain message naming who is behind,
and then it goes through."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from sottovoce.client import Client
from sottovoce.client.rooms import membership
from sottovoce.client.rooms.keypackages import KeyPackageRecord
from sottovoce.client.rooms.manager import RoomManager
from sottovoce.client.rooms.model import ROOM_SUITES
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES, lacks_capabilities, profile
from sottovoce.client.store import TEST_KDF
from sottovoce.errors import UsageError
from sottovoce.mls.group import Group
from sottovoce.protocol.room_rules import ROOM_PROFILE_EXTENSION
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.serverproc import ServerProcess

#: The capabilities every leaf listed before the room profile existed.
BEFORE_PROFILES = replace(ROOM_CAPABILITIES, extensions=())


class _GroupBeforeProfiles:
    """Group.create as it was before profiles: no profile, leaves without the capability."""

    @staticmethod
    def create(*args: object, **kwargs: object) -> Group:
        kwargs.update(extensions=[], capabilities=BEFORE_PROFILES)
        return Group.create(*args, **kwargs)  # type: ignore[arg-type]


async def _device_from_before_profiles(server: ServerProcess, root: Path) -> Client:
    bob = await Client.create_account(
        server.url, "bob", root / "bob", PASSPHRASE, kdf=TEST_KDF, connect=False
    )
    bob.rooms._key_packages.capabilities = BEFORE_PROFILES
    await bob.connect()
    await bob.rooms._key_packages.ensure()
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
        # The old one-time stock is gone from the server: what it hands out is fresh,
        # and so are the last resorts it now holds, one per suite.
        last_resort = [
            KeyPackageRecord.decode(r).key_package
            for _, r, lr in bob._store.key_package_records() if lr
        ]
        assert sorted(kp.cipher_suite for kp in last_resort) == sorted(ROOM_SUITES)
        assert all(
            ROOM_PROFILE_EXTENSION in kp.leaf_node.capabilities.extensions for kp in last_resort
        )
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


async def test_the_regular_top_up_also_replaces_a_stock_from_before_profiles(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_account(server, "alice", tmp_path)

    async def nothing_at_connect(_: RoomManager) -> None:
        return None  # only the top-up below may replace the stock

    monkeypatch.setattr(RoomManager, "ensure_key_packages", nothing_at_connect)
    bob = await _device_from_before_profiles(server, tmp_path)
    try:
        # The same running client, now with today's capabilities, told its stock is low.
        bob.rooms._key_packages.capabilities = ROOM_CAPABILITIES
        await bob.rooms.replenish()
        claimed = await alice.rooms._key_packages.claim("bob")
        assert claimed and all(
            ROOM_PROFILE_EXTENSION in kp.leaf_node.capabilities.extensions for _, kp in claimed
        )
    finally:
        await asyncio.gather(alice.close(), bob.close())


def _own_leaf_is_old(client: Client, room_id: str) -> bool:
    group = client.rooms.get(room_id).group
    assert group is not None
    return lacks_capabilities(group, group.own_leaf_index)


async def test_a_room_from_before_profiles_gets_one_once_every_leaf_is_refreshed(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await make_account(server, "alice", tmp_path)
    bob = await _device_from_before_profiles(server, tmp_path)
    try:
        with monkeypatch.context() as old:
            old.setattr(membership, "Group", _GroupBeforeProfiles)
            room = await alice.rooms.create_room("old")
        room_id = room.room_id
        invited = await alice.rooms.invite(room_id, "bob")
        assert invited is not None
        await asyncio.wait_for(bob.rooms.wait_epoch(room_id, invited.epoch), 30)
        assert profile(room) is None
        assert _own_leaf_is_old(alice, room_id) and _own_leaf_is_old(bob, room_id)
        await bob.close()
        # bob's device is offline with its old leaf: alice's own leaf is refreshed, but
        # no profile can be set yet, and she is told why and what to do.
        with pytest.raises(UsageError) as refused:
            await alice.rooms.promote(room_id, "bob")
        message = str(refused.value)
        assert "made before rooms had admins" in message and "bob" in message
        assert "\n" not in message
        assert not _own_leaf_is_old(alice, room_id)
        assert profile(alice.rooms.get(room_id)) is None
        epoch = alice.rooms.get(room_id).epoch
        # bob's device connects again: it refreshes its leaf in the room by itself.
        bob = await Client.open(tmp_path / "bob", PASSPHRASE)
        await bob.connect()
        await bob.rooms.ensure_key_packages()
        assert not _own_leaf_is_old(bob, room_id)
        await asyncio.wait_for(alice.rooms.wait_epoch(room_id, epoch + 1), 30)
        renamed = await alice.rooms.promote(room_id, "bob")
        assert renamed is not None
        await asyncio.wait_for(bob.rooms.wait_epoch(room_id, renamed.epoch), 30)
        for client in (alice, bob):
            shared = profile(client.rooms.get(room_id))
            assert shared is not None and shared.admins == ("alice", "bob")
            assert client.rooms.roles(room_id) == {"alice": "admin", "bob": "admin"}
    finally:
        await asyncio.gather(alice.close(), bob.close())
