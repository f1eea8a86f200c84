"""Order-independence of account-key succession, at the server's storage and at a contact.

The five things that can happen after a device holding the account key is stolen:
the owner's succession (revoking the stolen device), the thief's succession (revoking
the owner's device), a second succession from the thief's new key, the owner's recovery
with the printed code, and the thief's succession replayed after the recovery. Whatever
order they reach the server in, the server ends on the owner's recovered key with only
the owner's device active, and a contact who looked the account up after every step
ends pinned to that same key (docs/protocol.md §Succession).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sottovoce.client.account_keys import served_chain
from sottovoce.client.errors import IdentityChanged
from sottovoce.client.sessions import SessionManager
from sottovoce.client.store import TEST_KDF, Store
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    DevicePublicKeys,
    RevocationStatement,
)
from sottovoce.identity.succession import (
    AccountForked,
    Genesis,
    Recovery,
    Statement,
    Succession,
    follow,
)
from sottovoce.kt.map import ChangeKind
from sottovoce.pairwise import OlmAccount
from sottovoce.protocol.events import b64
from sottovoce.server.account_keys import chain_data
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.integration import pgschema

NOW = 1_800_000_000_000
EVENTS = ("owner", "thief", "thief2", "recovery", "replay")


def _keys() -> DevicePublicKeys:
    return DevicePublicKeys(signing_key=secrets.token_bytes(32),
                            olm_identity_key=secrets.token_bytes(32),
                            olm_signing_key=secrets.token_bytes(32))


class Story:
    """One account: the owner's phone, a stolen laptop, and every statement of the five
    events (each a bundle, as the clients send them)."""

    def __init__(self, username: str) -> None:
        gen = secrets.token_bytes
        self.username = username
        self.ak0, self.rk0 = AccountKey.generate(gen), AccountKey.generate(gen)
        self.phone, self.laptop = _keys(), _keys()
        self.first = [self.cert(self.ak0, "phone", self.phone, 0),
                      self.cert(self.ak0, "laptop", self.laptop, 0)]
        owner, thief, thief2 = (AccountKey.generate(gen) for _ in range(3))
        recovered, rk1 = AccountKey.generate(gen), AccountKey.generate(gen)
        self.owner, self.owner_key, self.recovered = owner, owner.public, recovered.public
        self.bundles: dict[str, list[Statement]] = {
            "owner": [self.succession(self.ak0, owner), self.cert(owner, "phone", self.phone),
                      self.revoke(owner, "laptop")],
            "thief": [self.succession(self.ak0, thief), self.cert(thief, "laptop", self.laptop),
                      self.revoke(thief, "phone")],
            "thief2": [self.succession(thief, thief2),
                       self.cert(thief2, "laptop", self.laptop), self.revoke(thief2, "phone")],
            "recovery": [Recovery.issue(self.rk0, recovered, rk1, username=username,
                                        now_ms=NOW + 4),
                         self.cert(recovered, "phone", self.phone, 4)],
        }
        self.bundles["replay"] = list(self.bundles["thief"])

    def cert(self, key: AccountKey, device: str, keys: DevicePublicKeys,
             at: int = 1) -> DeviceCertificate:
        return DeviceCertificate.issue(key, username=self.username, device_id=device,
                                       keys=keys, now_ms=NOW + at)

    def succession(self, old: AccountKey, new: AccountKey) -> Succession:
        return Succession.issue(old, new, username=self.username, now_ms=NOW + 1)

    def revoke(self, key: AccountKey, device: str) -> RevocationStatement:
        return RevocationStatement.issue(key, username=self.username, device_id=device,
                                         now_ms=NOW + 1)

    @property
    def genesis(self) -> Genesis:
        return Genesis(username=self.username, account_key=self.ak0.public,
                       recovery_key=self.rk0.public)


# --- the resolver alone: every ordering, exhaustively -------------------------------------


def test_every_ordering_of_the_statements_resolves_to_the_owner() -> None:
    story = Story("alice")
    for order in itertools.permutations(EVENTS):
        seen: list[Statement] = []
        pinned = story.ak0.public
        for name in order:
            seen += story.bundles[name]
            with contextlib.suppress(AccountForked):  # a contact checks each link on return
                pinned = follow(story.genesis, seen, pinned_key=pinned, now_ms=NOW).account_key
        assert pinned == story.recovered, order
        head = follow(story.genesis, seen, pinned_key=story.ak0.public, now_ms=NOW)
        assert [c.device_id for c in head.devices] == ["phone"], order


# --- the server's storage and a contact's client --------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The same operations on both engines."""
    log = JsonLogger(io.StringIO())
    if request.param == "sqlite":
        st: Any = SqliteStorage(tmp_path / "db.sqlite3", logger=log)
        await st.open()
        try:
            yield st
        finally:
            await st.close()
        return
    reason = pgschema.unreachable()
    if reason is not None:
        pytest.skip(reason)
    from sottovoce.server.storage.postgres import PostgresStorage

    with pgschema.fresh_schema() as dsn:
        st = PostgresStorage(dsn, logger=log, pool_size=2)
        await st.open()
        try:
            yield st
        finally:
            await st.close()


@pytest.fixture
def contact(tmp_path: Path) -> Iterator[SessionManager]:
    store = Store.create(tmp_path / "carol", "pass", kdf=TEST_KDF)
    olm = OlmAccount.create(username="carol", device_id="c1")
    try:
        yield SessionManager(store, olm, username="carol", device_id="c1",
                             clock_ms=lambda: NOW + 10)
    finally:
        store.close()


async def directory_answer(storage: SqliteStorage, username: str) -> dict[str, Any]:
    """What the server's directory lookup answers (server/app.py ``_lookup``)."""
    rec = await storage.get_account(username)
    assert rec is not None
    found = await storage.account_chain(username)
    assert found is not None
    return {
        "username": username, "accountKey": b64(rec.account_key), "forked": rec.forked,
        "devices": [{"deviceId": d.device_id, "certificate": b64(d.certificate)}
                    for d in rec.active()],
        "revokedDeviceIds": [d.device_id for d in rec.devices if d.revoked],
        **chain_data(rec.genesis_key, rec.recovery_key, found[1]),
    }


async def _play(storage: SqliteStorage, contact: SessionManager, story: Story,
                order: tuple[str, ...]) -> list[str]:
    """Register the account, let the contact pin it, apply each event, let the contact
    look it up after each; returns what the contact saw at each step."""
    name = story.username
    await storage.create_account(name, story.ak0.public, "phone", story.first[0].encode(), NOW,
                                 story.rk0.public)
    await storage.add_device(name, "laptop", story.first[1].encode(), NOW)
    await storage.apply_statements(name, story.first, NOW)
    contact.apply_directory(await directory_answer(storage, name))
    saw: list[str] = []
    for event in order:
        await storage.apply_statements(name, story.bundles[event], NOW + 10)
        try:
            contact.apply_directory(await directory_answer(storage, name))
            saw.append("followed")
        except AccountForked:
            saw.append("forked")
    return saw


async def _ends_with_the_owner(storage: SqliteStorage, contact: SessionManager,
                               story: Story) -> None:
    rec = await storage.get_account(story.username)
    assert rec is not None and not rec.forked
    assert rec.account_key == story.recovered
    assert [d.device_id for d in rec.active()] == ["phone"]
    pinned = contact.contact(story.username)
    assert pinned is not None and pinned.account_key == story.recovered
    assert set(pinned.certificates) == {"phone"}
    assert not pinned.verified  # the safety number changed


async def test_every_ordering_ends_with_the_owner_at_the_server_and_the_contact(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    orders = list(itertools.permutations(EVENTS))
    # All 120 on SQLite; on PostgreSQL (slower per transaction) every 8th, each event
    # first and last in some of them (the resolution itself is shared code).
    for i, order in enumerate(orders if isinstance(storage, SqliteStorage) else orders[::8]):
        story = Story(f"user{i}")
        await _play(storage, contact, story, order)
        await _ends_with_the_owner(storage, contact, story)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(EVENTS), repeats=st.lists(st.sampled_from(EVENTS), max_size=4))
async def test_orderings_with_repeats_end_with_the_owner(
    storage: SqliteStorage, contact: SessionManager, order: list[str], repeats: list[str]
) -> None:
    """Any statement delivered again, at any point after the five, changes nothing."""
    story = Story(f"h{secrets.token_hex(6)}")
    await _play(storage, contact, story, (*order, *repeats))
    await _ends_with_the_owner(storage, contact, story)


async def test_a_fork_freezes_the_account_and_warns_contacts(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    story = Story("dora")
    saw = await _play(storage, contact, story, ("owner", "thief"))
    assert saw == ["followed", "forked"]
    rec = await storage.get_account("dora")
    assert rec is not None and rec.forked
    # Nothing signed by any account key is kept while forked: not even the owner's.
    applied = await storage.apply_statements("dora", [story.bundles["owner"][1]], NOW + 20)
    assert applied.refused == "account_forked"
    saw = await _play_more(storage, contact, story, ("recovery",))
    assert saw == ["followed"]
    await _ends_with_the_owner(storage, contact, story)


async def _play_more(storage: SqliteStorage, contact: SessionManager, story: Story,
                     order: tuple[str, ...]) -> list[str]:
    saw = []
    for event in order:
        await storage.apply_statements(story.username, story.bundles[event], NOW + 10)
        contact.apply_directory(await directory_answer(storage, story.username))
        saw.append("followed")
    return saw


async def test_the_old_key_certifies_and_revokes_nothing_after_a_succession(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    story = Story("erin")
    await _play(storage, contact, story, ("owner",))
    stale = [story.cert(story.ak0, "laptop2", _keys(), 5), story.revoke(story.ak0, "phone")]
    for statement in stale:
        applied = await storage.apply_statements("erin", [statement], NOW + 20)
        assert applied.refused == "stale_account_key"
    rec = await storage.get_account("erin")
    assert rec is not None and [d.device_id for d in rec.active()] == ["phone"]


async def test_each_change_says_what_the_transparency_log_is_to_record(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    story = Story("hank")
    await _play(storage, contact, story, ())
    applied = await storage.apply_statements("hank", story.first, NOW)
    assert applied.change is None  # nothing new
    renewal = story.cert(story.ak0, "phone", story.phone, 3)
    applied = await storage.apply_statements("hank", [renewal], NOW)
    assert applied.change is ChangeKind.DEVICE_ADDED
    revocation = story.revoke(story.ak0, "laptop")
    assert (await storage.apply_statements("hank", [revocation], NOW)).change is (
        ChangeKind.DEVICE_REVOKED)
    kinds = [(await storage.apply_statements("hank", story.bundles[e], NOW)).change
             for e in ("owner", "thief", "recovery")]
    assert kinds == [ChangeKind.SUCCESSION, ChangeKind.SUCCESSION, ChangeKind.RECOVERY]


async def test_a_contact_refuses_a_key_that_does_not_descend_from_the_pinned_one(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    story, other = Story("fred"), Story("fred")
    await _play(storage, contact, story, ())
    answer = await directory_answer(storage, "fred")
    # The server claims another genesis (keys nobody pinned) with a chain to its own key.
    forged = {**answer, "accountKey": b64(other.owner_key),
              **chain_data(other.ak0.public, other.rk0.public, other.bundles["owner"][:1])}
    with pytest.raises(IdentityChanged):
        contact.apply_directory(forged)
    # The same genesis, but a chain that does not reach the served key.
    lying = {**answer, "accountKey": b64(other.owner_key),
             **chain_data(story.ak0.public, story.rk0.public, story.bundles["owner"][:1])}
    with pytest.raises(IdentityChanged):
        contact.apply_directory(lying)
    assert served_chain(lying)  # it was well-formed: refused for what it says


async def test_a_contact_pinned_before_genesis_keys_follows_only_its_own_key_s_chain(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    """A contact pinned by an older client knows the key, not the genesis: a chain from
    any other genesis is refused; the account's own chain is followed."""
    story, other = Story("gail"), Story("gail")
    await _play(storage, contact, story, ())
    answer = await directory_answer(storage, "gail")
    contact._contacts.clear()
    old = contact.contact("gail")
    assert old is not None
    contact.store.put_contact(
        type(old)(username="gail", account_key=old.account_key, pinned_at_ms=old.pinned_at_ms,
                  certificates=old.certificates))
    contact._contacts.clear()
    forged = {**answer, "accountKey": b64(other.owner_key),
              **chain_data(other.ak0.public, other.rk0.public, other.bundles["owner"][:1])}
    with pytest.raises(IdentityChanged):
        contact.apply_directory(forged)
    await _play_more(storage, contact, story, ("owner",))
    pinned = contact.contact("gail")
    assert pinned is not None and pinned.account_key == story.owner_key


async def test_a_contact_offline_during_several_successions_checks_every_link(
    storage: SqliteStorage, contact: SessionManager
) -> None:
    story = Story("ivan")
    await _play(storage, contact, story, ())  # the contact pins AK0, then goes away
    later = AccountKey.generate(secrets.token_bytes)
    second = [story.succession(story.owner, later), story.cert(later, "phone", story.phone, 2)]
    await storage.apply_statements("ivan", story.bundles["owner"], NOW + 10)
    await storage.apply_statements("ivan", second, NOW + 11)
    changes: list[tuple[bytes, bytes]] = []
    answer = await directory_answer(storage, "ivan")
    contact.apply_directory(answer, lambda old, new: changes.append((old.account_key,
                                                                      new.account_key)))
    assert changes == [(story.ak0.public, later.public)]
    # Without the middle link, the same answer is refused.
    gap = {**answer, "chain": [c for c in answer["chain"]
                               if c["data"] != b64(story.bundles["owner"][0].encode())]}
    contact._contacts.clear()
    contact.store.put_contact(dataclasses.replace(
        contact.contact("ivan"), account_key=story.ak0.public))
    contact._contacts.clear()
    with pytest.raises(IdentityChanged):
        contact.apply_directory(gap)
