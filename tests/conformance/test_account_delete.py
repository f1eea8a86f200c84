"""Account deletion through the real server: ``sottovoce.account.delete``
(docs/protocol.md §Accounts).

The account key's signed ``AccountDeletion`` is checked against the stored
account key before anything changes. Then, in one storage transaction, every
device is revoked and loses its prekeys, KeyPackages, inbox rows and push
endpoint; the account stays as a tombstone so its name cannot be registered
again; lookups answer ``unknown_user``; each room of its devices gets a
removeRequest notice; and every connection of the account closes with 4002.
Runs once per storage backend (the ``target`` fixture).
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sottovoce.identity import AccountDeletion, AccountKey, RevocationStatement
from sottovoce.limits import ACCOUNT_DELETION_MAX_AGE_MS
from tests.conformance.conftest import Target
from tests.conformance.rawclient import Device, RawClient, b64, now_ms, registered
from tests.conformance.test_directory import olm_device
from tests.conformance.test_rooms import commit_data, member, new_room_id, room_frame
from tests.conformance.test_session import assert_error

DELETE = "sottovoce.account.delete"
CLOSE_ACCOUNT_DELETED = 4002

#: Per-device rows a deletion must leave empty (and push endpoints cleared).
_TABLES = ("prekeys", "fallback_keys", "key_packages", "key_package_devices", "inbox")


def _sqlite_rows(path: str, user: str) -> dict[str, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = {
            t: int(con.execute(
                f"SELECT count(*) FROM {t} WHERE dev IN "
                "(SELECT dev FROM devices WHERE user_id=?)", (user,),
            ).fetchone()[0])
            for t in _TABLES
        }
        out["push"] = int(con.execute(
            "SELECT count(*) FROM devices WHERE user_id=? AND push_endpoint IS NOT NULL", (user,)
        ).fetchone()[0])
        out["active"] = int(con.execute(
            "SELECT count(*) FROM devices WHERE user_id=? AND revoked_at IS NULL", (user,)
        ).fetchone()[0])
        return out
    finally:
        con.close()


def _pg_rows(dsn: str, user: str) -> dict[str, int]:
    import asyncpg

    async def go() -> dict[str, int]:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            out = {
                t: int(await conn.fetchval(
                    f"SELECT count(*) FROM {t} WHERE dev IN "
                    "(SELECT dev FROM devices WHERE user_id=$1)", user,
                ))
                for t in _TABLES
            }
            out["push"] = int(await conn.fetchval(
                "SELECT count(*) FROM devices WHERE user_id=$1 AND push_endpoint IS NOT NULL",
                user,
            ))
            out["active"] = int(await conn.fetchval(
                "SELECT count(*) FROM devices WHERE user_id=$1 AND revoked_at IS NULL", user
            ))
            return out
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def stored_rows(target: Target, user: str) -> dict[str, int]:
    """Rows the server stores for ``user``'s devices, read from its database."""
    if target.database is not None:
        return _pg_rows(target.database, user)
    return _sqlite_rows(str(target.local().db_path), user)


async def wait_closed(c: RawClient, timeout: float = 5.0) -> tuple[int | None, list[str]]:
    """Read until the server closes the socket; the close code and the events seen."""
    events: list[str] = []
    try:
        while True:
            f = await c._read(timeout)
            events.append(f["event"])
    except TimeoutError:
        raise AssertionError(f"socket still open; saw {events}") from None
    except Exception:  # closed: that is what we wait for
        pass
    return c.ws.close_code, events


async def account_with_everything(target: Target) -> tuple[Device, RawClient, RawClient, RawClient]:
    """alice with two live devices, prekeys, KeyPackages, a push endpoint and an unread
    1:1 message from bob in both inboxes; returns (alice, a1, a2, bob)."""
    url = target.ws_url
    alice, olm = olm_device()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    assert (await a2.add_device(alice.sibling("d2")))["event"] == "sottovoce.registered"
    bob = await registered(url)
    for c in (a1, a2, bob):
        await c.resume()
    stored = await a1.request("sottovoce.prekeys.upload", {
        "oneTimeKeys": [b64(k.encode()) for k in olm.new_one_time_keys(alice.device_key, 3)],
        "fallbackKey": b64(olm.new_fallback_key(alice.device_key).encode()),
    })
    assert stored["data"] == {"oneTimeKeys": 3}
    kps = await a2.request("sottovoce.keypackages.upload", {
        "keyPackages": [b64(secrets.token_bytes(100)) for _ in range(2)],
        "lastResort": b64(secrets.token_bytes(100)),
    })
    assert kps["data"] == {"count": 2}
    push = await a2.request("sottovoce.push.register", {"endpoint": "http://127.0.0.1:9/push/a"})
    assert push["event"] == "sottovoce.push.registered"
    ack = await bob.send_message(alice.username, [
        (alice.username, "d1", b"to-d1"), (alice.username, "d2", b"to-d2"),
    ])
    assert ack["event"] == "ksmpv3.send.ack", ack
    return alice, a1, a2, bob


async def test_forged_stale_or_foreign_deletion_is_refused_and_changes_nothing(
    target: Target,
) -> None:
    alice, a1, a2, bob = await account_with_everything(target)
    before = stored_rows(target, alice.username) if target.proc is not None else None
    name = alice.username
    stranger = AccountKey.generate(secrets.token_bytes)
    revocation = RevocationStatement.issue(alice.account_key, username=name, device_id="d2",
                                           now_ms=now_ms())
    refused: list[bytes] = [
        # Signed by another key (claiming it, or claiming alice's).
        AccountDeletion.issue(stranger, username=name, now_ms=now_ms()).encode(),
        AccountDeletion(username=name, account_key=alice.account_key.public,
                        deleted_at_ms=now_ms(),
                        signature=stranger.sign(b"anything")).encode(),
        # Alice's key, but for bob's account: a session deletes only its own account.
        AccountDeletion.issue(alice.account_key, username=bob.device.username,  # type: ignore[union-attr]
                              now_ms=now_ms()).encode(),
        # Alice's key and name, but signed long ago.
        AccountDeletion.issue(alice.account_key, username=name,
                              now_ms=now_ms() - ACCOUNT_DELETION_MAX_AGE_MS - 60_000).encode(),
        # Another statement of alice's key (domain separation), and garbage.
        revocation.encode(),
        secrets.token_bytes(40),
    ]
    for statement in refused:
        assert_error(await a1.request(DELETE, {"statement": b64(statement)}), "invalid_deletion")
    # Bob cannot delete alice with alice's own valid statement either: it names alice.
    good = AccountDeletion.issue(alice.account_key, username=name, now_ms=now_ms())
    assert_error(await bob.request(DELETE, {"statement": b64(good.encode())}), "invalid_deletion")
    # Nothing changed: both devices listed and connected, keys still claimable.
    res = await bob.request("sottovoce.directory.lookup", {"username": name})
    assert [d["deviceId"] for d in res["data"]["devices"]] == ["d1", "d2"]
    assert res["data"]["revokedDeviceIds"] == []
    for c in (a1, a2):
        assert (await c.request("ping", {}))["event"] == "pong"
    if before is not None:
        assert stored_rows(target, name) == before
        assert before["prekeys"] == 3 and before["key_packages"] == 2 and before["inbox"] == 2
    claim = await bob.request("sottovoce.prekeys.claim", {"username": name})
    assert len(claim["data"]["bundles"]) == 1  # d1's (d2 uploaded none)


async def test_deletion_revokes_everything_keeps_the_name_and_closes_every_socket(
    target: Target,
) -> None:
    url = target.ws_url
    alice, a1, a2, bob = await account_with_everything(target)
    name = alice.username
    if target.proc is not None:  # what there is to delete
        assert stored_rows(target, name) == {
            "prekeys": 3, "fallback_keys": 1, "key_packages": 2, "key_package_devices": 1,
            "inbox": 2, "push": 1, "active": 2,
        }
    statement = AccountDeletion.issue(alice.account_key, username=name, now_ms=now_ms())
    reply = await a1.request(DELETE, {"statement": b64(statement.encode())})
    assert reply["event"] == "sottovoce.account.deleted" and reply["data"] == {}
    # Both connections close with 4002; the other one is told why first.
    code, _ = await wait_closed(a1)
    assert code == CLOSE_ACCOUNT_DELETED
    code, events = await wait_closed(a2)
    assert code == CLOSE_ACCOUNT_DELETED
    assert "sottovoce.account.deleted" in events
    # The directory no longer knows the name; nobody can send to it or claim its keys.
    assert_error(await bob.request("sottovoce.directory.lookup", {"username": name}),
                 "unknown_user")
    assert_error(await bob.request("sottovoce.prekeys.claim", {"username": name}),
                 "unknown_user")
    assert_error(await bob.request("sottovoce.keypackages.claim", {"username": name}),
                 "unknown_user")
    assert_error(await bob.send_message(name, [(name, "d1", b"x")]), "unknown_recipient")
    # No device of it can come back, nor can a new one be added with the old account key.
    for device in (alice, alice.sibling("d2")):
        c = await RawClient.open(url)
        assert_error(await c.auth(device), "auth_failed")
    c = await RawClient.open(url)
    # (a name nobody holds answers as a wrong account key: no existence oracle)
    assert_error(await c.add_device(alice.sibling("d3")), "invalid_certificate")
    # The name stays taken (tombstone): an impersonator cannot inherit it.
    c = await RawClient.open(url)
    taken = await c.request("sottovoce.username.check", {"username": name})
    assert taken["data"] == {"username": name, "available": False}
    assert_error(await c.register(Device.new(name)), "username_taken")
    # The stored rows are gone, push endpoints cleared, every device revoked.
    if target.proc is not None:
        assert stored_rows(target, name) == dict.fromkeys((*_TABLES, "push", "active"), 0)


async def test_deleted_accounts_rooms_get_remove_requests_for_each_device(url: str) -> None:
    alice = Device.new()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    assert (await a2.add_device(alice.sibling("d2")))["event"] == "sottovoce.registered"
    carol = await registered(url)
    for c in (a1, a2, carol):
        await c.resume()
    rooms = [new_room_id(), new_room_id()]
    for room in rooms:
        await carol.request("sottovoce.room.create", {"roomId": room, "groupInfo": None})
        reply = await carol.request("sottovoce.room.commit", commit_data(
            room, 0, adds=[member(a1), member(a2)], welcome=b64(b"w")))
        assert reply["event"] == "sottovoce.room.committed", reply
    statement = AccountDeletion.issue(alice.account_key, username=alice.username,
                                      now_ms=now_ms())
    reply = await a1.request(DELETE, {"statement": b64(statement.encode())})
    assert reply["event"] == "sottovoce.account.deleted"
    seen: set[tuple[str, str]] = set()
    for _ in range(4):  # two devices x two rooms
        env = await room_frame(carol, "notice")
        req: dict[str, Any] = env["removeRequest"]
        assert req["userId"] == alice.username and req["reason"] == "revoked"
        seen.add((env["conversationId"], req["deviceId"]))
    assert seen == {(r, d) for r in rooms for d in ("d1", "d2")}
    # Members commit the Removes; the server accepts them although the devices are gone.
    for room in rooms:
        rm = await carol.request("sottovoce.room.commit", commit_data(
            room, 1, removes=[{"userId": alice.username, "deviceId": d} for d in ("d1", "d2")]))
        assert rm["event"] == "sottovoce.room.committed", rm
        info = await carol.request("sottovoce.room.info", {"roomId": room})
        assert info["data"]["members"] == [member(carol)]


async def test_a_deleted_account_cannot_be_deleted_twice_or_used_after(url: str) -> None:
    alice = Device.new()
    a1 = await registered(url, alice)
    await a1.resume()
    statement = b64(AccountDeletion.issue(alice.account_key, username=alice.username,
                                          now_ms=now_ms()).encode())
    assert (await a1.request(DELETE, {"statement": statement}))["event"] == (
        "sottovoce.account.deleted"
    )
    assert (await wait_closed(a1))[0] == CLOSE_ACCOUNT_DELETED
    # The same statement replayed on a new connection: nobody can authenticate as alice.
    c = await RawClient.open(url)
    assert_error(await c.auth(alice), "auth_failed")
    assert_error(await c.request(DELETE, {"statement": statement}), "unauthorized")


async def test_delete_request_is_validated(url: str) -> None:
    a = await registered(url)
    assert_error(await a.request(DELETE, {}), "bad_request")
    assert_error(await a.request(DELETE, {"statement": "not base64!"}), "bad_request")
    assert (await a.request("ping", {}))["event"] == "pong"
