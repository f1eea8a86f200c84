"""Key transparency on the client, against the in-memory relay and its log (two or three
peers in memory; the server core is kt/prover.py, the witness kt/witness.py).

The lying-server cases: (a) a different view of the log for one user, caught by the
witness requirement and, with a colluding witness, as soon as two users exchange a
message; (b) a rollback, caught at the next consistency check; (c) a device in
Bob's entry Bob did not add, and a device the directory shows but the log does not;
(d) a device added and removed between two of Bob's polls. Malformed proofs and bad
signatures end in typed errors and replace nothing stored.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from sottovoce.client import Client, MessageReceived
from sottovoce.client.errors import KeyNotInLog, KTAlertRaised, ServerError
from sottovoce.client.events import ErrorEvent
from sottovoce.client.kt import (
    LOG_INCONSISTENT,
    LOG_KEY_CHANGED,
    OWN_ACCOUNT,
    RATE_LIMIT_PATIENCE_S,
    SPLIT_VIEW,
    LinkSource,
    WitnessPolicy,
)
from sottovoce.client.payload import Payload
from sottovoce.client.store import TEST_KDF
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt.checkpoint import NoteSigner
from sottovoce.kt.errors import (
    BadCheckpointSignature,
    KTError,
    MalformedProof,
    NotEnoughCosignatures,
    NoWitnessPinned,
)
from sottovoce.kt.map import ChangeKind
from sottovoce.kt.prover import KTLog, KTStores
from sottovoce.kt.witness import Witness
from sottovoce.protocol import kt as pk
from tests.unit.client_fake_relay import FakeRelay
from tests.unit.kt_fake_log import (
    LOG_SIGNER,
    OTHER_WITNESS,
    VRF,
    WITNESS_SIGNER,
    FakeLog,
    World,
    state_of,
)

URL = "ws://fake.invalid:1"
PASS = "pass"


def _relay() -> FakeRelay:
    return FakeRelay(kt=FakeLog())


async def _account(relay: FakeRelay, name: str, root: Path, **kw: Any) -> Client:
    return await Client.create_account(
        URL, name, root / name, PASS, kdf=TEST_KDF, connector=relay.connector, **kw
    )


async def _received(client: Client, stream: Any, n: int, timeout: float = 5.0) -> list[str]:
    texts: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(texts) < n:
        event = await stream.next(max(0.01, deadline - loop.time()))
        if isinstance(event, MessageReceived):
            texts.append(event.message.text)
    return texts


async def _alerted(client: Client, kind: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(a.kind == kind for a in client.kt.alerts()):
        assert loop.time() < deadline, f"no {kind} alert"
        await asyncio.sleep(0.02)


def _stored(client: Client) -> tuple[Any, ...]:
    return client.kt.pins, client.kt.head, client.kt.monitor_state


async def test_create_pins_the_log_and_every_lookup_and_poll_verifies(tmp_path: Path) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    pins = alice.kt.pins
    assert pins is not None and pins.log_key == LOG_SIGNER.public.vkey()
    assert pins.witnesses == (WITNESS_SIGNER.public.vkey(),) and pins.min_cosignatures == 1
    b_events = bob.events()
    await alice.wait_sent(await alice.send_text("bob", "hi"))
    assert await _received(bob, b_events, 1) == ["hi"]
    assert await bob.check_log() == 0  # registration seen at the first poll already
    head = alice.kt.head
    assert head is not None and head.size == 2  # alice's and bob's registrations
    assert alice.kt.alerts() == [] and bob.kt.alerts() == []
    # The sent payload carried alice's head (size, root) inside the ciphertext.
    assert alice.kt.checkpoint_ref() == (head.size, head.root)
    for c in (alice, bob):
        await c.close()


async def test_a_payload_carries_the_head_and_rejects_a_malformed_one() -> None:
    p = Payload(message_id="m", conversation_id="c", content_type="text", created_at_ms=1,
                body=b"x")
    assert Payload.decode(p.encode()) == p and p.encode()[0] == 1
    with_head = p.with_head((7, bytes(range(32))))
    assert Payload.decode(with_head.encode()) == with_head and with_head.encode()[0] == 2
    bad = p.encode()[:1].replace(b"\x01", b"\x02") + p.encode()[1:] + bytes(9) + b"\x01x"
    with pytest.raises(DecodeError):
        Payload.decode(bad)


async def test_a_given_log_key_that_the_server_does_not_use_is_refused(tmp_path: Path) -> None:
    relay = _relay()
    wrong = _other_log_key()
    with pytest.raises(KTAlertRaised, match="--kt-key"):
        await _account(relay, "alice", tmp_path, kt_key=wrong)
    alice = await Client.open(tmp_path / "alice", PASS, connector=relay.connector)
    assert alice.kt.pins is None and alice.kt.required
    await _account(relay, "bob", tmp_path)
    await alice.connect()
    with pytest.raises(KTError):  # nothing pinned, keys were given: lookups are refused
        await alice.send_text("bob", "unverified")
    assert [a.kind for a in alice.kt.alerts()] == [LOG_KEY_CHANGED]
    await alice.close()


async def test_given_keys_that_match_are_pinned(tmp_path: Path) -> None:
    relay = _relay()
    alice = await _account(relay, "alice", tmp_path, kt_key=LOG_SIGNER.public.vkey(),
                           kt_witnesses=(WITNESS_SIGNER.public.vkey(),))
    assert alice.kt.pins is not None and alice.kt.pins.log_key == LOG_SIGNER.public.vkey()
    await alice.close()


async def test_a_changed_log_key_is_a_lasting_alert_until_acknowledged(tmp_path: Path) -> None:
    relay = _relay()
    alice = await _account(relay, "alice", tmp_path)
    before = _stored(alice)
    relay.kt.served_log_key = _other_log_key()  # type: ignore[union-attr]
    with pytest.raises(KTAlertRaised, match="another log key"):
        await alice.check_log()
    assert _stored(alice) == before
    await alice.close()
    alice = await Client.open(tmp_path / "alice", PASS, connector=relay.connector)
    assert [a.kind for a in alice.kt.alerts()] == [LOG_KEY_CHANGED]  # it stays
    assert alice.kt.acknowledge() == 1
    assert alice.kt.alerts() == [] and len(alice.kt.alerts(acknowledged=True)) == 1
    await alice.close()


async def test_a_rotated_log_key_is_an_alert_until_the_user_pins_the_new_one(
    tmp_path: Path,
) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    log = relay.kt
    assert log is not None
    # The operator rotates the log key: the same changes, signed by a new key, that the
    # witness now follows.
    new = NoteSigner("kt.test/log2", SigningKey(SignatureScheme.ED25519, bytes([8]) * 32))
    stores = KTStores.memory()
    rotated = World(core=KTLog(stores, vrf_key=VRF, log_signer=new),
                    witness=Witness(WITNESS_SIGNER, new.public), stores=stores)
    for change in log.history:
        rotated.change(change)
    log.honest, log.served_log_key = rotated, new.public.vkey()
    with pytest.raises(KTAlertRaised, match="another log key"):
        await alice.check_log()
    with pytest.raises(KTError):  # never silently: lookups fail under the old key
        await alice.send_text("bob", "under the new key?")
    assert alice.kt.pins is not None and alice.kt.pins.log_key == LOG_SIGNER.public.vkey()
    # Re-pinning by hand: a key the server does not name is refused, nothing changes.
    with pytest.raises(UsageError, match="another log key"):
        await alice.kt.repin(_other_log_key())
    assert alice.kt.pins.log_key == LOG_SIGNER.public.vkey()
    pins = await alice.kt.repin(new.public.vkey())
    assert pins.log_key == new.public.vkey() and pins.witnesses == (WITNESS_SIGNER.public.vkey(),)
    assert alice.kt.alerts() == []  # the log-key alert is acknowledged, and kept
    assert [a.kind for a in alice.kt.alerts(acknowledged=True)] == [LOG_KEY_CHANGED]
    await alice.check_log()
    await bob.kt.repin(new.public.vkey())  # bob checked the new key too
    b_events = bob.events()
    await alice.wait_sent(await alice.send_text("bob", "verified again"))
    assert await _received(bob, b_events, 1) == ["verified again"]
    assert alice.kt.alerts() == []
    for c in (alice, bob):
        await c.close()


def _other_log_key() -> str:
    return NoteSigner("kt.test/log", SigningKey(SignatureScheme.ED25519,
                                                bytes([7]) * 32)).public.vkey()


# --- (a) a split view ------------------------------------------------------------------


async def _three(relay: FakeRelay, tmp_path: Path) -> tuple[Client, Client, Client]:
    return (await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path),
            await _account(relay, "carol", tmp_path))


async def test_a_split_view_is_refused_by_the_witness_requirement(tmp_path: Path) -> None:
    relay = _relay()
    alice, bob, carol = await _three(relay, tmp_path)
    log = relay.kt
    assert log is not None
    # Alice is shown a log where bob has another account key; the honest witness has
    # cosigned the real log and will not cosign this one.
    fork = log.fork(colluding=False)
    mallory = SigningKey(SignatureScheme.ED25519, bytes([9]) * 32).verify_key.data
    log.log("bob", state_of(mallory, []), ChangeKind.SUCCESSION, only=fork)
    log.log("erin", state_of(bytes([6]) * 32, []), ChangeKind.REGISTRATION, only=log.honest)
    log.honest.note()  # the witness cosigns the real log first
    log.views["alice"] = fork
    before = _stored(alice)
    with pytest.raises(NotEnoughCosignatures):
        await alice.send_text("bob", "to the real bob?")
    assert _stored(alice) == before  # nothing replaced
    for c in (alice, bob, carol):
        await c.close()


async def test_a_split_view_is_caught_when_two_users_exchange_a_message(
    tmp_path: Path,
) -> None:
    relay = _relay()
    alice, bob, carol = await _three(relay, tmp_path)
    log = relay.kt
    assert log is not None
    # A colluding witness: the fork is cosigned too, and alice cannot tell alone.
    fork = log.fork()
    log.views["alice"] = fork
    log.log("dave", state_of(bytes([5]) * 32, []), ChangeKind.REGISTRATION, only=fork)
    log.log("erin", state_of(bytes([6]) * 32, []), ChangeKind.REGISTRATION, only=log.honest)
    await alice.check_log()
    await carol.check_log()
    a, c = alice.kt.head, carol.kt.head
    assert a is not None and c is not None and a.size == c.size and a.root != c.root
    c_events = carol.events()
    await alice.wait_sent(await alice.send_text("carol", "hello"))
    assert await _received(carol, c_events, 1) == ["hello"]
    await _alerted(carol, SPLIT_VIEW)
    # Carol's answer carries her head to alice: she sees it too.
    a_events = alice.events()
    await carol.wait_sent(await carol.send_text("alice", "hi"))
    assert await _received(alice, a_events, 1) == ["hi"]
    await _alerted(alice, SPLIT_VIEW)
    for cl in (alice, bob, carol):
        await cl.close()


async def test_a_peer_head_on_a_longer_consistent_log_is_no_alert(tmp_path: Path) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    old = alice.kt.head
    assert old is not None and relay.kt is not None
    relay.kt.log("erin", state_of(bytes([6]) * 32, []), ChangeKind.REGISTRATION)
    await bob.check_log()
    b = bob.kt.head
    assert b is not None and b.size > old.size
    await alice.kt.compare("bob", b.size, b.root)  # ours is older: the log extends it
    await alice.kt.compare("bob", old.size, old.root)
    assert alice.kt.alerts() == []
    with pytest.raises(KTAlertRaised, match="bob"):
        await alice.kt.compare("bob", b.size, bytes(32))
    for c in (alice, bob):
        await c.close()


# --- (b) a rollback -------------------------------------------------------------------


async def test_a_rolled_back_log_is_caught_at_the_next_consistency_check(
    tmp_path: Path,
) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    assert relay.kt is not None
    await alice.check_log()
    before = _stored(alice)
    relay.kt.views["alice"] = relay.kt.fork(upto=1)  # only alice's registration
    with pytest.raises(KTAlertRaised, match="shrank"):
        await alice.check_log()
    assert _stored(alice) == before
    assert [a.kind for a in alice.kt.alerts()] == [LOG_INCONSISTENT]
    for c in (alice, bob):
        await c.close()


# --- (c) and (d): devices the owner did not add ------------------------------------------


async def test_a_device_bob_did_not_add_alerts_bob_at_his_next_poll(tmp_path: Path) -> None:
    relay = _relay()
    bob = await _account(relay, "bob", tmp_path)
    assert relay.kt is not None
    ak = bob.identity.account_key.public
    own = (bob.device_id, bob.identity.certificate.keys.signing_key)
    relay.kt.log("bob", state_of(ak, [own, ("evil", bytes([7]) * 32)]), ChangeKind.DEVICE_ADDED)
    with pytest.raises(KTAlertRaised, match="evil"):
        await bob.check_log()
    assert [a.kind for a in bob.kt.alerts()] == [OWN_ACCOUNT]
    # The alert stays; the monitor has moved past that version, so polls go on.
    assert await bob.check_log() == 0
    await bob.close()
    bob = await Client.open(tmp_path / "bob", PASS, connector=relay.connector)
    assert [a.kind for a in bob.kt.alerts()] == [OWN_ACCOUNT]
    assert bob.kt.acknowledge() == 1
    await bob.connect()
    assert await bob.check_log() == 0 and bob.kt.alerts() == []
    relay.kt.log("bob", state_of(ak, [own, ("evil2", bytes([8]) * 32)]), ChangeKind.DEVICE_ADDED)
    with pytest.raises(KTAlertRaised, match="evil2"):  # a new one is a new alert
        await bob.check_log()
    assert len(bob.kt.alerts()) == 1
    await bob.close()


async def test_a_device_added_and_removed_between_two_polls_is_caught(tmp_path: Path) -> None:
    relay = _relay()
    bob = await _account(relay, "bob", tmp_path)
    assert relay.kt is not None
    await bob.check_log()
    ak = bob.identity.account_key.public
    own = (bob.device_id, bob.identity.certificate.keys.signing_key)
    relay.kt.log("bob", state_of(ak, [own, ("evil", bytes([7]) * 32)]), ChangeKind.DEVICE_ADDED)
    relay.kt.log("bob", state_of(ak, [own]), ChangeKind.DEVICE_REVOKED)
    with pytest.raises(KTAlertRaised, match=r"version 1 .*evil"):
        await bob.check_log()
    await bob.close()


async def test_the_monitor_polls_on_connect_and_then_periodically(tmp_path: Path) -> None:
    relay = _relay()
    bob = await _account(relay, "bob", tmp_path)
    await bob.close()
    assert relay.kt is not None
    ak = bob.identity.account_key.public
    own = (bob.device_id, bob.identity.certificate.keys.signing_key)
    bob = await Client.open(tmp_path / "bob", PASS, connector=relay.connector)
    bob.kt_poll_interval_s = 0.05
    await bob.connect()
    relay.kt.log("bob", state_of(ak, [own, ("evil", bytes([7]) * 32)]), ChangeKind.DEVICE_ADDED)
    relay.kt.log("bob", state_of(ak, [own]), ChangeKind.DEVICE_REVOKED)
    await _alerted(bob, OWN_ACCOUNT)
    await bob.close()


async def test_a_second_device_added_by_the_owner_is_no_alert(tmp_path: Path) -> None:
    relay = _relay()
    bob = await _account(relay, "bob", tmp_path)
    bob2 = await bob.add_device(tmp_path / "bob2", PASS, kdf=TEST_KDF)
    assert bob2.kt.pins == bob.kt.pins  # the new device pins what the first one pinned
    await bob.check_log()
    await bob2.check_log()
    assert bob.kt.alerts() == [] and bob2.kt.alerts() == []
    for c in (bob, bob2):
        await c.close()


async def test_a_directory_device_missing_from_the_log_is_refused(tmp_path: Path) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    assert relay.kt is not None
    bob2 = await bob.add_device(tmp_path / "bob2", PASS, kdf=TEST_KDF)
    # The directory shows alice bob's new device; the log she is shown (cosigned by a
    # colluding witness) stops before it was added.
    relay.kt.views["alice"] = relay.kt.fork(upto=len(relay.kt.history) - 1)
    with pytest.raises(KeyNotInLog, match=r"bob2|not in the log"):
        await alice.send_text("bob", "hi")
    assert alice.history("bob") == []
    for c in (alice, bob, bob2):
        await c.close()


# --- malformed proofs and bad signatures ----------------------------------------------------


def _flip_checkpoint_signature(event: str, out: dict[str, Any]) -> dict[str, Any]:
    if event == "sottovoce.kt.head":
        note = out["checkpoint"]
        lines = note.split("\n")
        sig_line = next(i for i, line in enumerate(lines) if "kt.test/log" in line and "—" in line)
        name, b64 = lines[sig_line].rsplit(" ", 1)
        raw = bytearray(base64.b64decode(b64))
        raw[-1] ^= 1
        lines[sig_line] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
        out = {**out, "checkpoint": "\n".join(lines)}
    return out


def _truncate_response(event: str, out: dict[str, Any]) -> dict[str, Any]:
    if "response" in out:
        raw = base64.b64decode(out["response"])
        out = {**out, "response": base64.b64encode(raw[:-5]).decode()}
    return out


def _bad_consistency(event: str, out: dict[str, Any]) -> dict[str, Any]:
    if event == "sottovoce.kt.head":
        out = {**out, "consistency": [base64.b64encode(bytes(32)).decode()]}
    return out


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (_flip_checkpoint_signature, BadCheckpointSignature),
        (_truncate_response, MalformedProof),
        (_bad_consistency, KTAlertRaised),
    ],
)
async def test_malformed_proofs_and_bad_signatures_are_typed_and_replace_nothing(
    tmp_path: Path, tamper: Any, error: type[Exception]
) -> None:
    relay = _relay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    assert relay.kt is not None
    relay.kt.log("erin", state_of(bytes([6]) * 32, []), ChangeKind.REGISTRATION)
    before = _stored(alice)
    relay.kt.tamper = tamper
    with pytest.raises(error):
        await (alice.kt.poll_own() if tamper is _truncate_response else alice.kt.refresh())
    assert _stored(alice) == before
    for c in (alice, bob):
        await c.close()


async def test_a_long_lived_account_is_monitored_a_page_at_a_time(tmp_path: Path) -> None:
    relay = _relay()
    log = relay.kt
    assert log is not None
    log.page = 3  # versions per kt.history page
    await (await _account(relay, "bob", tmp_path)).close()
    bob = await Client.open(tmp_path / "bob", PASS, connector=relay.connector)

    async def polled_by_hand() -> int:
        return 0

    bob.check_log = polled_by_hand  # type: ignore[method-assign]  # no poll on connect
    await bob.connect()
    base = bob.kt.monitor_state.versions  # 1 if the poll at create ran to its end
    pages: list[int] = []

    def count(event: str, out: dict[str, Any]) -> dict[str, Any]:
        if event == "sottovoce.kt.history":
            pages.append(len(out["response"]))
        return out

    log.tamper = count
    me = log.history[0].state
    for _ in range(10):  # ten more versions of bob's own making (the same devices)
        log.log("bob", me, ChangeKind.DEVICE_ADDED)
    assert await bob.kt.poll_own() == 11 - base
    assert bob.kt.monitor_state.versions == 11 and len(pages) == 4
    # The next poll reads only what is new: one page.
    pages.clear()
    log.log("bob", me, ChangeKind.DEVICE_ADDED)
    assert await bob.kt.poll_own() == 1 and len(pages) == 1
    # A monitor record kept before pages (no compact range) is checked again from the
    # first version, with no alert and nothing counted twice.
    state = bob.kt.monitor_state
    with bob._store.transaction():
        bob._store.put_kt("monitor", b"\x01" + state.versions.to_bytes(4, "big")
                          + bytes([32]) + state.version_root)
    assert bob.kt.monitor_state.border == ()
    pages.clear()
    assert await bob.kt.poll_own() == 0 and len(pages) == 4
    assert bob.kt.monitor_state == state
    # A device bob did not add, many versions later, is still caught.
    log.log("bob", state_of(me.account_key, [("x-evil", bytes([4]) * 32)]),
            ChangeKind.DEVICE_ADDED)
    with pytest.raises(KTAlertRaised, match=r"version 12 .*'x-evil'"):
        await bob.kt.poll_own()
    assert [a.kind for a in bob.kt.alerts()] == [OWN_ACCOUNT]
    await bob.close()


async def test_an_uncosigned_checkpoint_is_refused(tmp_path: Path) -> None:
    relay = _relay()
    alice = await _account(relay, "alice", tmp_path)
    assert relay.kt is not None
    relay.kt.uncosigned = True
    with pytest.raises(NotEnoughCosignatures):
        await alice.check_log()
    await alice.close()


async def test_a_server_without_a_log_leaves_lookups_unverified(tmp_path: Path) -> None:
    relay = FakeRelay()
    alice, bob = await _account(relay, "alice", tmp_path), await _account(relay, "bob", tmp_path)
    assert alice.kt.pins is None and not alice.kt.required
    await alice.wait_sent(await alice.send_text("bob", "no log here"))
    for c in (alice, bob):
        await c.close()


async def test_a_server_with_no_witness_is_loud_and_refused_unless_the_user_opted_out(
    tmp_path: Path,
) -> None:
    relay = _relay()
    assert relay.kt is not None
    relay.kt.served_witnesses = []
    alice = await _account(relay, "alice", tmp_path)
    bob = await _account(relay, "bob", tmp_path, kt_min_cosignatures=0)
    assert alice.kt.pins is not None and alice.kt.pins.witnesses == ()
    assert alice.kt.witness_policy is WitnessPolicy.MISSING
    assert bob.kt.witness_policy is WitnessPolicy.OPTED_OUT
    # At connect the client says so (a typed event), and every lookup is refused.
    await alice.close()
    alice = await Client.open(tmp_path / "alice", PASS, connector=relay.connector)
    events = alice.events()
    await alice.connect()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        event = await events.next(max(0.01, deadline - loop.time()))
        if isinstance(event, ErrorEvent) and event.code == "kt_no_witness":
            break
    with pytest.raises(NoWitnessPinned):
        await alice.send_text("bob", "unverifiable")
    with pytest.raises(NoWitnessPinned):
        await alice.check_log()
    # Bob opted out knowingly: checked against the log key alone, no warning.
    assert await bob.check_log() == 0
    await bob.wait_sent(await bob.send_text("alice", "checked by the log key only"))
    # A witness pinned by hand (or opting out) ends the refusal.
    alice.kt.pin_witness(WITNESS_SIGNER.public.vkey())
    assert alice.kt.witness_policy is WitnessPolicy.REQUIRED
    await alice.wait_sent(await alice.send_text("bob", "verified"))
    assert alice.kt.require(2).min_cosignatures == 2  # more than pinned: refused again
    assert alice.kt.witness_policy is WitnessPolicy.MISSING
    with pytest.raises(NoWitnessPinned):
        await alice.check_log()
    for c in (alice, bob):
        await c.close()


def test_witness_keys_are_parsed_and_checked() -> None:
    from sottovoce.client.kt import parse_vkey
    from sottovoce.errors import UsageError

    assert parse_vkey(WITNESS_SIGNER.public.vkey(), witness=True) == (
        WITNESS_SIGNER.public.vkey()
    )
    with pytest.raises(UsageError, match="not a witness"):
        parse_vkey(LOG_SIGNER.public.vkey(), witness=True)
    with pytest.raises(UsageError, match="not a log"):
        parse_vkey(OTHER_WITNESS.public.vkey(), witness=False)
    with pytest.raises(UsageError, match="not a verifier key"):
        parse_vkey("nonsense", witness=False)
    from sottovoce.client.kt import check_min_cosignatures

    assert check_min_cosignatures(0) == 0 and check_min_cosignatures(32) == 32
    for bad in (-1, 33):
        with pytest.raises(UsageError, match="0-32"):
            check_min_cosignatures(bad)


def test_a_commits_log_head_round_trips_and_anything_else_is_no_head() -> None:
    from sottovoce.client.payload import decode_log_head, encode_log_head

    head = (9, bytes(range(32)))
    assert decode_log_head(encode_log_head(head)) == head
    assert encode_log_head(None) == b"" and decode_log_head(b"") is None
    good = encode_log_head(head)
    for bad in (b"\x02" + good[1:], good + b"\x00", good[:-1], encode_log_head((0, head[1])),
                encode_log_head((9, bytes(31)))):
        assert decode_log_head(bad) is None


class _PacedLink:
    """A link whose server refuses the first ``refusals`` requests as rate limited, each
    with a retry hint of ``hint_ms``, then answers."""

    def __init__(self, refusals: int, hint_ms: int) -> None:
        self.refusals, self.hint_ms, self.asked = refusals, hint_ms, 0

    async def request(self, event: Any, expect: frozenset[str]) -> tuple[str, dict[str, Any]]:
        self.asked += 1
        if self.asked <= self.refusals:
            raise ServerError("rate_limited", "too many key-transparency requests",
                              retryable=True, retry_after_ms=self.hint_ms)
        return pk.KT_LOOKUP_RESULT, pk.KTResponse(response=b"answer").to_wire()


async def test_a_rate_limited_kt_request_waits_for_the_hint_and_asks_again() -> None:
    link = _PacedLink(refusals=2, hint_ms=100)
    source = LinkSource(link)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    answer = await source._response(pk.KTLookup(username="bob"), pk.KT_LOOKUP_RESULT)
    assert answer == b"answer" and link.asked == 3
    assert loop.time() - started >= 0.2  # both hints were waited out


async def test_a_kt_rate_limit_longer_than_the_patience_reaches_the_caller() -> None:
    link = _PacedLink(refusals=1, hint_ms=int(RATE_LIMIT_PATIENCE_S * 1000) + 1)
    source = LinkSource(link)  # type: ignore[arg-type]
    with pytest.raises(ServerError, match="too many key-transparency requests"):
        await source._response(pk.KTLookup(username="bob"), pk.KT_LOOKUP_RESULT)
    assert link.asked == 1
