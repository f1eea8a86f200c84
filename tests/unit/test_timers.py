"""Disappearing messages, the parts without a server: the payload's expiry (every
payload version still decodes), the timer message's body, the chat timer's ordering,
and the store's deletion of expired messages (row, outbox, queue, sealed bytes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sottovoce.client import DeliveryStatus
from sottovoce.client.expiry import (
    TIMER_CHOICES,
    Expiries,
    parse_timer,
    read_timer_body,
    remaining,
    timer_body,
    timer_notice,
    wire_expiry,
)
from sottovoce.client.payload import Payload
from sottovoce.client.store import STORE_FILE, TEST_KDF, Store
from sottovoce.client.store_timers import ChatTimer
from sottovoce.errors import DecodeError, UsageError
from sottovoce.protocol import events as ev
from sottovoce.server.sendview import fast_send, parse_send

HEAD = (7, bytes(range(32)))


def _payload(**kw: object) -> Payload:
    return Payload(
        message_id="m1", conversation_id="c1", content_type="text", created_at_ms=1_000,
        body=b"hello", **kw,  # type: ignore[arg-type]
    )


def test_version_1_payload_still_decodes_and_has_no_expiry() -> None:
    p = _payload()
    assert p.encode()[0] == 1
    assert Payload.decode(p.encode()) == p and Payload.decode(p.encode()).expires_at_ms == 0


def test_version_2_payload_still_decodes_and_has_no_expiry() -> None:
    p = _payload().with_head(HEAD)
    assert p.encode()[0] == 2
    decoded = Payload.decode(p.encode())
    assert decoded == p and decoded.expires_at_ms == 0 and decoded.kt_root == HEAD[1]


def test_version_3_carries_the_expiry_with_and_without_a_log_head() -> None:
    plain = _payload(expires_at_ms=6_000)
    assert plain.encode()[0] == 3
    assert Payload.decode(plain.encode()) == plain
    headed = plain.with_head(HEAD)
    assert headed.encode()[0] == 3
    assert Payload.decode(headed.encode()) == headed
    assert Payload.decode_padded(headed.encode_padded()).expires_at_ms == 6_000


def test_version_3_refuses_a_zero_expiry_or_a_half_head() -> None:
    good = _payload(expires_at_ms=6_000).encode()
    with pytest.raises(DecodeError):
        Payload.decode(good[:-8] + bytes(8))  # expiry 0
    half = _payload(expires_at_ms=6_000, kt_size=5).encode()  # a size without a root
    with pytest.raises(DecodeError):
        Payload.decode(half[:-8 - 1 - 8] + (5).to_bytes(8, "big") + b"\x00" + good[-8:])
    with pytest.raises(DecodeError):
        Payload.decode(good[:-1])  # truncated


def test_timer_body_round_trip_and_refusals() -> None:
    for name, seconds in TIMER_CHOICES.items():
        assert parse_timer(name) == seconds
        assert read_timer_body(timer_body(seconds)) == seconds
    assert timer_body(60) == '{"v":1,"seconds":60}'
    for bad in ('{"v":1,"seconds":61}', '{"v":1,"seconds":true}', '{"v":1,"seconds":"60"}',
                '{"v":2,"seconds":60}', '{"v":1,"seconds":60,"x":1}', "nope"):
        with pytest.raises(DecodeError):
            read_timer_body(bad)
    with pytest.raises(UsageError, match="a timer is one of off, 5s, 1m, 1h, 1d, 1w"):
        parse_timer("2m")
    with pytest.raises(UsageError):
        timer_body(61)


def test_notices_and_remaining_time_read_plainly() -> None:
    assert timer_notice("alice", timer_body(60)) == "alice set disappearing messages to 1 min"
    assert timer_notice("bob", timer_body(0)) == "bob turned disappearing messages off"
    assert timer_notice("bob", "junk") == "bob sent a timer this client cannot read"
    assert remaining(10_000, 5_500) == "4 s"
    assert remaining(3_600_000 * 5, 0) == "5 h"
    assert remaining(86_400_000 * 6 + 5, 0) == "6 d"
    assert remaining(0, 5) == "0 s"
    assert wire_expiry(5_001) == 6_000 and wire_expiry(5_000) == 5_000 and wire_expiry(0) == 0


def test_the_newest_timer_wins_whatever_the_order_it_arrives_in(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "a", "pw", kdf=TEST_KDF)
    exp = Expiries(store)
    with store.transaction():
        assert exp.apply("c", "bob", "m2", 2_000, timer_body(3600).encode())
        assert not exp.apply("c", "alice", "m1", 1_000, timer_body(5).encode())  # older
    assert exp.seconds("c") == 3600
    assert exp.for_new("c", 10_000) == 10_000 + 3_600_000
    assert exp.for_new("other", 10_000) == 0
    timer = exp.table.timer("c")
    assert timer == ChatTimer(seconds=3600, setter="bob", set_at_ms=2_000, message_id="m2")
    with pytest.raises(DecodeError):
        exp.apply("c", "bob", "m3", 3_000, b'{"v":1,"seconds":7}')
    store.close()


def test_a_timer_change_does_not_move_an_expiry_already_given(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "a", "pw", kdf=TEST_KDF)
    exp = Expiries(store, clock=lambda: 0)
    with store.transaction():
        exp.apply("c", "bob", "t1", 1, timer_body(3600).encode())
        exp.record("m1", exp.for_new("c", 1_000))
        exp.apply("c", "bob", "t2", 2_000, timer_body(0).encode())
        exp.record("m1", 99)  # a second record never moves the first
    assert exp.of("m1") == 1_000 + 3_600_000
    assert exp.for_new("c", 3_000) == 0
    store.close()


def test_sweep_deletes_expired_rows_everywhere_and_their_sealed_bytes(tmp_path: Path) -> None:
    root = tmp_path / "a"
    store = Store.create(root, "pw", kdf=TEST_KDF)
    now = [1_000]
    exp = Expiries(store, clock=lambda: now[0])
    with store.transaction():
        for mid, expires in (("gone", 5_000), ("kept", 0), ("later", 9_000)):
            store.add_outgoing(mid, peer="bob", sender="me", sender_device="d", text=mid * 50,
                               created_ms=1_000, idempotency_key=f"k-{mid}")
            store.add_outbox(mid, f"k-{mid}", "frame " + mid)
            store.add_unsent(mid)
            exp.record(mid, expires)
    sealed = bytes(store.connection.execute(
        "SELECT sealed FROM messages WHERE message_id = 'gone'").fetchone()[0])
    store.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    files = b"".join(p.read_bytes() for p in root.iterdir() if p.name.startswith(STORE_FILE))
    assert sealed[-32:] in files  # present before
    assert exp.sweep() == []
    now[0] = 5_000
    assert exp.sweep() == ["gone"]
    assert store.get_message("gone") is None and store.get_outbox("gone") is None
    assert "gone" not in store.unsent() and exp.of("gone") == 0
    assert store.get_message("kept") is not None and store.get_message("later") is not None
    assert exp.table.next_expiry() == 9_000
    files = b"".join(p.read_bytes() for p in root.iterdir() if p.name.startswith(STORE_FILE))
    assert sealed[-32:] not in files  # gone from the database file and its log
    assert [m.message_id for m in store.history("bob")] == ["kept", "later"]
    store.close()


def test_status_is_untouched_for_messages_that_do_not_expire(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "a", "pw", kdf=TEST_KDF)
    exp = Expiries(store, clock=lambda: 1 << 60)
    with store.transaction():
        store.add_message(message_id="x", peer="bob", sender="bob", sender_device="d",
                          outgoing=False, status=DeliveryStatus.SENT, text="hi")
        exp.record("x", 0)
    assert exp.sweep() == [] and store.get_message("x") is not None
    store.close()


def _send(**extra: object) -> dict[str, object]:
    return {
        "conversationId": ev.dm_conversation_id("alice", "bob"), "messageId": "m1",
        "idempotencyKey": "k1", "recipientUserId": "bob", "contentType": "text",
        "clientCreatedAtMs": 1, "ciphertexts": [
            {"userId": "bob", "deviceId": "d1", "ciphertext": "AAAA"}], **extra,
    }


def test_the_send_frame_carries_expires_at_and_both_validators_agree() -> None:
    data = _send(expiresAtMs=6_000)
    assert ev.Send.from_data(data).expiresAtMs == 6_000
    fast = fast_send(data)
    assert fast is not None and fast.expiresAtMs == 6_000
    assert parse_send(_send()).expiresAtMs == 0
    sent = dataclasses.replace(ev.Send.from_data(_send()), expiresAtMs=0)
    assert "expiresAtMs" not in sent.to_frame()  # absent unless the message disappears
    for bad in (-1, "6000", True, 1.5):
        assert fast_send(_send(expiresAtMs=bad)) is None
        with pytest.raises(ev.ProtocolError):
            ev.Send.from_data(_send(expiresAtMs=bad))


def test_a_linked_device_gets_disappearing_messages_with_their_expiry_and_the_timers(
    tmp_path: Path,
) -> None:
    from sottovoce.client.linking import history_archive, import_history

    old = Store.create(tmp_path / "old", "pw", kdf=TEST_KDF)
    exp = Expiries(old)
    with old.transaction():
        for mid, ctype, text in (("t1", "timer", timer_body(3600)), ("m1", "text", "fades"),
                                 ("m2", "text", "stays"), ("m3", "text", "gone already")):
            old.add_message(message_id=mid, peer="bob", sender="bob", sender_device="d",
                            outgoing=False, status=DeliveryStatus.SENT, text=text,
                            content_type=ctype, client_created_ms=5)
        exp.record("m1", 10**13)
        exp.record("m3", 1000)  # expired, not swept yet: never handed over
    parts, count = history_archive(old)
    assert count == 3
    new = Store.create(tmp_path / "new", "pw", kdf=TEST_KDF)
    assert import_history(new, b"".join(parts), "alice") == 3
    assert [m.message_id for m in new.history("bob")] == ["t1", "m1", "m2"]
    later = Expiries(new)
    assert later.of("m1") == 10**13 and later.of("m2") == 0
    later.clock = lambda: 10**13
    assert later.sweep() == ["m1"]  # it disappears here at the same time
    timer = Expiries(new).table.timer(ev.dm_conversation_id("alice", "bob"))
    assert timer is not None and (timer.seconds, timer.setter) == (3600, "bob")
    old.close()
    new.close()


def test_history_lines_show_timer_changes_and_time_left() -> None:
    from sottovoce.cli import render
    from sottovoce.client.store import StoredMessage

    def msg(ctype: str, text: str, sender: str = "alice") -> StoredMessage:
        return StoredMessage(local_id=1, message_id="m", peer="alice", sender=sender,
                             sender_device="d", outgoing=sender == "bob",
                             status=DeliveryStatus.SENT, text=text, content_type=ctype,
                             client_created_ms=0)

    plain = render.message_line(msg("text", "hi"), "bob")
    assert plain.endswith(" alice: hi")  # unchanged without an expiry
    assert render.message_line(msg("text", "hi"), "bob", expires_at_ms=90_000,
                               now_ms=30_000) == plain + " ⏱ 1 min left"
    assert render.message_line(msg("timer", timer_body(5)), "bob").endswith(
        " — alice set disappearing messages to 5 s")
    assert render.message_line(msg("timer", timer_body(0), "bob"), "bob").endswith(
        " — you turned disappearing messages off")
