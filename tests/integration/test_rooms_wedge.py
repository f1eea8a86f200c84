"""A join token is not a way to wedge a room (real server on 127.0.0.1, real clients).

The attack: a stranger who holds a room's token committed 64 random bytes as an
"external commit"; the server took it as the next epoch and no member could send
again. Now the server checks an external commit with the MLS public view before it
stores anything (protocol/rooms.py, "Joining by token"), and a commit that passes
those checks but does not prove knowledge of the token (its PSK) is refused by the
members, who rejoin and remove the intruder. After each attempt the members chat on.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from pathlib import Path

import pytest

from sottovoce.client import Client, ServerError
from sottovoce.client.events import ClientEvent, RoomRecovered
from sottovoce.client.rooms import identity_of
from sottovoce.client.rooms.rules import ROOM_CAPABILITIES
from sottovoce.mls.common import PreSharedKeyID, WireFormat
from sottovoce.mls.framing import MLSMessage, sign_content
from sottovoce.mls.group import ExternalJoin, Group, GroupConfig, PskStore
from sottovoce.mls.messages import Credential
from sottovoce.mls.public import FramedContentAuthData, PublicMessage, check_group_info
from sottovoce.protocol import rooms as pr
from sottovoce.protocol.fields import req_b64, req_int
from sottovoce.secret import Secret
from tests.integration.client_helpers import make_account
from tests.integration.serverproc import ServerProcess
from tests.integration.test_rooms_e2e import close_all, make_accounts, members, room_messages


async def group_info(client: Client, token: str) -> tuple[str, int, bytes]:
    _, data = await client._conn.request(
        pr.GroupInfoGet(token=pr.wire_token(Secret(token.encode()))),
        frozenset({pr.ROOM_GROUPINFO}),
    )
    return pr.req_room_id(data), req_int(data, "epoch"), req_b64(data, "groupInfo",
                                                                   max_bytes=1 << 20)


def forged_join(client: Client, info: bytes, token: str | None, psk_value: bytes) -> ExternalJoin:
    """The stranger's own external commit: signed with its certified MLS key, naming the
    token's hash as its PSK id but with ``psk_value`` as the key (the token's PSK is
    ``token_psk(T)``; a holder of the hash alone cannot know it)."""
    key = client.identity.mls_key
    assert key is not None
    h = b"" if token is None else pr.token_hash(pr.wire_token(Secret(token.encode())))
    psks = [] if token is None else [PreSharedKeyID.external(h, secrets.token_bytes(32))]
    return Group.join_by_external_commit(
        info, credential=Credential.basic(identity_of(client.username, client.device_id)),
        signing_key=key, rng=secrets.token_bytes, psks=psks,
        config=GroupConfig(psk_lookup=PskStore({h: psk_value})),
        capabilities=ROOM_CAPABILITIES,  # a room's profile extension, as every member's
    )


async def commit_as(client: Client, room_id: str, epoch: int, commit: bytes, token: str,
                    group_info: bytes | None) -> dict[str, object]:
    request = pr.RoomCommit(
        roomId=room_id, epoch=epoch, messageId=secrets.token_hex(8),
        idempotencyKey=secrets.token_hex(8), commit=commit,
        adds=(pr.MemberRef(userId=client.username, deviceId=client.device_id),),
        groupInfo=group_info, token=pr.wire_token(Secret(token.encode())),
    )
    _, data = await client._conn.request(request, frozenset({pr.ROOM_COMMITTED}))
    return data


async def refused(client: Client, room_id: str, epoch: int, commit: bytes, token: str,
                  info: bytes | None, code: str) -> None:
    with pytest.raises(ServerError) as err:
        await commit_as(client, room_id, epoch, commit, token, info)
    assert err.value.code == code, err.value


async def chat(a: Client, b: Client, room_id: str, n: int, text: str) -> None:
    """One message each way; ``n`` readable messages in the room once they arrived."""
    await a.rooms.send(room_id, f"{text} from {a.username}")
    await b.rooms.send(room_id, f"{text} from {b.username}")
    for client in (a, b):
        got = await room_messages(client, room_id, n)
        assert got[-2:] == [f"{text} from {a.username}", f"{text} from {b.username}"]


async def epoch_at_server(client: Client, room_id: str) -> int:
    return int((await client.rooms.info(room_id))["epoch"])


async def test_an_external_commit_the_server_cannot_check_is_refused_and_nothing_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, mallory = await make_accounts(server, ["alice", "bob", "mallory"], tmp_path)
    try:
        room = await alice.rooms.create_room("open")
        await alice.rooms.invite("open", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        token = await alice.rooms.create_token("open")
        room_id, epoch, info = await group_info(mallory, token)
        assert (room_id, epoch) == (room.room_id, 1)
        good = forged_join(mallory, info, token, b"")  # the shape is right; see below
        next_info = good.group.group_info()

        # 1. The attack as reported: 64 random bytes as the "external commit".
        await refused(mallory, room_id, epoch, secrets.token_bytes(64), token, next_info,
                      "invalid_commit")
        # 2. Well formed, but signed by another key than the leaf it adds.
        message = MLSMessage.decode(good.commit).body
        assert isinstance(message, PublicMessage)
        other_key = alice.identity.mls_key
        assert other_key is not None
        signature = sign_content(other_key, WireFormat.PUBLIC_MESSAGE, message.content,
                                 check_group_info(info).context)
        forged = MLSMessage(body=PublicMessage(
            content=message.content,
            auth=FramedContentAuthData(
                signature=signature, confirmation_tag=message.auth.confirmation_tag
            ),
        )).encode()
        await refused(mallory, room_id, epoch, forged, token, next_info, "invalid_commit")
        # 3. Without the token's PSK in it.
        bare = forged_join(mallory, info, None, b"")
        await refused(mallory, room_id, epoch, bare.commit, token, bare.group.group_info(),
                      "invalid_commit")
        # 4. For an epoch the room has left: made on this GroupInfo, sent after a commit.
        await alice.rooms.self_update("open")
        await bob.rooms.wait_epoch(room_id, 2)
        await refused(mallory, room_id, epoch + 1, good.commit, token, next_info,
                      "invalid_commit")
        await refused(mallory, room_id, epoch, good.commit, token, next_info, "commit_conflict")

        assert await epoch_at_server(alice, room_id) == 2  # nothing was stored
        assert ("mallory", mallory.device_id) not in set(
            (m["userId"], m["deviceId"]) for m in (await alice.rooms.info(room_id))["members"]
        )
        await chat(alice, bob, room_id, 2, "still here")
    finally:
        await close_all([alice, bob, mallory])


async def test_a_join_without_the_tokens_psk_is_refused_by_the_members_who_rejoin(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob, mallory = await make_accounts(server, ["alice", "bob", "mallory"], tmp_path)
    recovered: dict[str, list[RoomRecovered]] = {"alice": [], "bob": []}
    said = {"alice": asyncio.Event(), "bob": asyncio.Event()}

    async def watch(client: Client) -> None:
        stream = client.events()
        try:
            while True:
                event: ClientEvent = await stream.next(60)
                if isinstance(event, RoomRecovered):
                    recovered[client.username].append(event)
                    said[client.username].set()
        finally:
            stream.close()

    watchers = [asyncio.create_task(watch(c)) for c in (alice, bob)]
    try:
        room = await alice.rooms.create_room("open")
        await alice.rooms.invite("open", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        token = await alice.rooms.create_token("open")
        await chat(alice, bob, room.room_id, 2, "before")
        # Someone with the token's hash but not the token (the server's database, say)
        # makes an external commit the server cannot tell from a good one.
        room_id, epoch, info = await group_info(mallory, token)
        join = forged_join(mallory, info, token, secrets.token_bytes(32))
        done = await commit_as(mallory, room_id, epoch, join.commit, token,
                               join.group.group_info())
        assert done["epoch"] == epoch + 1  # the server took it: it holds no key to check
        # Both members refuse it, rejoin, and remove mallory again.
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in said.values())), 20)
        assert await alice.rooms.wait_until(
            lambda: ("mallory", mallory.device_id) not in members(alice, room_id), 20
        )
        assert await bob.rooms.wait_until(
            lambda: ("mallory", mallory.device_id) not in members(bob, room_id), 20
        )
        removed = [r for c in ("alice", "bob") for r in recovered[c] if r.removed]
        assert removed and removed[0].removed == (f"mallory/{mallory.device_id}",)
        assert await alice.rooms.wait_until(
            lambda: alice.rooms.get(room_id).epoch == bob.rooms.get(room_id).epoch, 20
        )
        assert alice.rooms.epoch_authenticator(room_id) == bob.rooms.epoch_authenticator(
            room_id
        )
        await chat(alice, bob, room_id, 4, "after")
        assert ("mallory", mallory.device_id) not in {
            (m["userId"], m["deviceId"]) for m in (await alice.rooms.info(room_id))["members"]
        }
    finally:
        for w in watchers:
            w.cancel()
        await close_all([alice, bob, mallory])


async def test_a_members_unreadable_commit_is_refused_without_the_next_groupinfo(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A member's commit is a PrivateMessage the server cannot read. One of 200 random
    bytes and no GroupInfo was once stored as the next epoch: nobody could process it,
    and nobody could rejoin either (the room held only the previous epoch's GroupInfo),
    so the room was wedged for good. Now a member's commit publishes the next epoch's
    GroupInfo, signed by its certified key, or nothing is stored."""
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    try:
        room = await alice.rooms.create_room("r")
        await alice.rooms.invite("r", "bob")
        await alice.rooms.invite("r", "carol")
        for client in (bob, carol):
            await client.rooms.wait_epoch(room.room_id, 2)
        await chat(alice, bob, room.room_id, 2, "before")
        group = carol.rooms.get(room.room_id).group
        assert group is not None
        current = group.group_info()  # valid and carol's, but this epoch's
        for info in (None, secrets.token_bytes(300), current):
            request = pr.RoomCommit(
                roomId=room.room_id, epoch=2, messageId=secrets.token_hex(8),
                idempotencyKey=secrets.token_hex(8), commit=secrets.token_bytes(200),
                groupInfo=info,
            )
            with pytest.raises(ServerError) as err:
                await carol._conn.request(request, frozenset({pr.ROOM_COMMITTED}))
            assert err.value.code == "invalid_commit", err.value
        assert await epoch_at_server(alice, room.room_id) == 2  # nothing was stored
        await chat(alice, bob, room.room_id, 4, "after")
    finally:
        await close_all([alice, bob, carol])


async def test_members_who_cannot_read_a_members_commit_rejoin_on_its_groupinfo(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The insider's other try: an unreadable commit with a good next GroupInfo (of a
    commit it made but did not send). Random bytes the server refuses now (a member's
    commit is a PublicMessage it checks); one signed right but with a wrong membership
    tag (only members can check that) it takes, and every member, the sender's own
    client included, fails to process it, rejoins on that GroupInfo, says so, and
    the room chats on."""
    alice, bob, carol = await make_accounts(server, ["alice", "bob", "carol"], tmp_path)
    said: dict[str, asyncio.Event] = {c.username: asyncio.Event() for c in (alice, bob, carol)}

    async def watch(client: Client) -> None:
        stream = client.events()
        try:
            while True:
                event: ClientEvent = await stream.next(60)
                if isinstance(event, RoomRecovered):
                    said[client.username].set()
        finally:
            stream.close()

    watchers = [asyncio.create_task(watch(c)) for c in (alice, bob, carol)]
    try:
        room = await alice.rooms.create_room("r")
        await alice.rooms.invite("r", "bob")
        await alice.rooms.invite("r", "carol")
        for client in (bob, carol):
            await client.rooms.wait_epoch(room.room_id, 2)
        await chat(alice, bob, room.room_id, 2, "before")
        group = carol.rooms.get(room.room_id).group
        assert group is not None
        bundle = group.self_update(rng=secrets.token_bytes)
        info = group.staged_group_info(bundle.staged)
        group.clear_pending_commit()
        request = pr.RoomCommit(
            roomId=room.room_id, epoch=2, messageId=secrets.token_hex(8),
            idempotencyKey=secrets.token_hex(8), commit=secrets.token_bytes(200),
            groupInfo=info,
        )
        with pytest.raises(ServerError) as caught:
            await carol._conn.request(request, frozenset({pr.ROOM_COMMITTED}))
        assert caught.value.code == "invalid_commit"
        message = MLSMessage.decode(bundle.commit).body
        assert isinstance(message, PublicMessage) and message.membership_tag is not None
        untagged = MLSMessage(body=replace(
            message, membership_tag=secrets.token_bytes(len(message.membership_tag))
        )).encode()
        request = replace(request, commit=untagged, messageId=secrets.token_hex(8))
        _, done = await carol._conn.request(request, frozenset({pr.ROOM_COMMITTED}))
        assert done["epoch"] == 3
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in said.values())), 30)
        assert await alice.rooms.wait_until(
            lambda: alice.rooms.get(room.room_id).epoch == bob.rooms.get(room.room_id).epoch
            == carol.rooms.get(room.room_id).epoch, 20
        )
        await chat(alice, bob, room.room_id, 4, "after")
        assert (await room_messages(carol, room.room_id, 2))[-2:] == [
            "after from alice", "after from bob"
        ]
    finally:
        for w in watchers:
            w.cancel()
        await close_all([alice, bob, carol])


async def test_an_honest_joiner_by_token_is_accepted_and_sees_later_tokens(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice, bob = await make_accounts(server, ["alice", "bob"], tmp_path)
    carol = await make_account(server, "carol", tmp_path)
    try:
        room = await alice.rooms.create_room("open")
        token = await alice.rooms.create_token("open")
        # Bob comes in by a Welcome after the token was set: the member who adds him tells
        # him the token, so he can check carol's PSK.
        await alice.rooms.invite("open", "bob")
        await bob.rooms.wait_epoch(room.room_id, 1)
        joined = await carol.rooms.join_with_token(token, label="theirs")
        for client in (alice, bob):
            await client.rooms.wait_epoch(room.room_id, joined.epoch)
            assert ("carol", carol.device_id) in members(client, room.room_id)
        assert not alice.rooms.get(room.room_id).recovering
        assert not bob.rooms.get(room.room_id).recovering
        await chat(alice, carol, room.room_id, 2, "welcome")
        assert (await room_messages(bob, room.room_id, 2))[-2:] == [
            "welcome from alice", "welcome from carol"
        ]
    finally:
        await close_all([alice, bob, carol])
