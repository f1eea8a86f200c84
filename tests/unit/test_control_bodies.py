"""Control-message bodies (client/control.py) and their tables (client/store_control.py):
exact fields, ids shaped like ids, bounded lists and emoji; sealed at rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from sottovoce.client import control as c
from sottovoce.client.store import TEST_KDF, Store
from sottovoce.client.store_control import (
    DELETED_FOR_EVERYONE,
    KIND_DELIVERED,
    KIND_READ,
    ControlStore,
    MessageState,
)
from sottovoce.errors import DecodeError

MID = "AAAAAAAAAAAAAAAAAAAAAA"


def test_bodies_round_trip_as_compact_versioned_json() -> None:
    reply = c.Quote(to=MID, text="yes ☕")
    assert reply.encode() == f'{{"v":1,"to":"{MID}","text":"yes ☕"}}'.encode()
    assert c.Quote.decode(reply.encode(), "a reply") == reply
    assert c.Delete.decode(c.Delete(to=MID).encode()) == c.Delete(to=MID)
    reaction = c.Reaction(to=MID, emoji="👍🏽", on=False)
    assert c.Reaction.decode(reaction.encode()) == reaction
    receipt = c.Receipt(kind=c.READ, ids=(MID, MID[:-1] + "B"))
    assert c.Receipt.decode(receipt.encode()) == receipt
    assert c.read_typing(c.typing_body()) is None
    room = "room:" + "0f" * 16
    assert c.typing_body(room) == f'{{"v":1,"room":"{room}"}}'.encode()
    assert c.read_typing(c.typing_body(room)) == room
    delivered = c.Receipt(kind=c.DELIVERED, ids=(MID,), room=room)
    wire = f'{{"v":1,"kind":"delivered","ids":["{MID}"],"room":"{room}"}}'
    assert delivered.encode() == wire.encode()
    assert c.Receipt.decode(delivered.encode()) == delivered


@pytest.mark.parametrize(
    ("decode", "body", "why"),
    [
        (c.Delete.decode, '{"v":1,"to":"../etc"}', "malformed message id"),
        (c.Delete.decode, '{"v":1,"to":"short"}', "malformed message id"),
        (c.Delete.decode, '{"v":1,"to":7}', "malformed message id"),
        (c.Delete.decode, '{"v":1,"to":"' + MID + '","by":"alice"}', "wrong fields"),
        (c.Reaction.decode, '{"v":1,"to":"' + MID + '","emoji":"","on":true}', "emoji"),
        (c.Reaction.decode, '{"v":1,"to":"' + MID + '","emoji":"' + "x" * 33 + '","on":true}',
         "emoji"),
        (c.Reaction.decode, '{"v":1,"to":"' + MID + '","emoji":"a b","on":true}', "emoji"),
        (c.Reaction.decode, '{"v":1,"to":"' + MID + '","emoji":"👍","on":1}', "boolean"),
        (c.Receipt.decode, '{"v":1,"kind":"seen","ids":["' + MID + '"]}', "kind"),
        (c.Receipt.decode, '{"v":1,"kind":"read","ids":[]}', "no message"),
        (c.Receipt.decode, '{"v":1,"kind":"read","ids":"' + MID + '"}', "no message"),
        (c.Receipt.decode,
         '{"v":1,"kind":"read","ids":[' + ",".join(['"' + MID + '"'] * 201) + "]}",
         "too many"),
        (c.Delete.decode, '{"v":2,"to":"' + MID + '"}', "version"),
        (c.read_typing, '{"v":1,"text":"hi"}', "wrong fields"),
        (c.read_typing, '{"v":1,"room":"room:../../x"}', "malformed room id"),
        (c.Receipt.decode, '{"v":1,"kind":"read","ids":["' + MID + '"],"room":"bob"}',
         "malformed room id"),
    ],
)
def test_malformed_bodies_are_refused(decode: object, body: str, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode(body.encode("utf-8"))  # type: ignore[operator]


@pytest.mark.parametrize("text", ["", "x" * (16 * 1024 + 1)])
def test_an_edit_is_a_text_message_in_size(text: str) -> None:
    body = f'{{"v":1,"to":"{MID}","text":"{text}"}}'.encode()
    with pytest.raises(DecodeError, match="empty or too long"):
        c.Quote.decode(body, "an edit")


def test_markers_stay_out_of_every_history() -> None:
    assert c.REPLY not in c.MARKER_TYPES and c.MARKER_TYPES | {c.REPLY} == c.CONTROL_TYPES
    assert c.control_peer("bob") == "bob#control"


def test_control_tables_count_per_user_and_seal_content(tmp_path: Path) -> None:
    store = Store.create(tmp_path / "s", "pw", kdf=TEST_KDF)
    try:
        db = ControlStore(store)
        with store.transaction():
            db.set_reactions(MID, "bob", {"CANARY-EMOJI"})
            db.set_reactions(MID, "carol", {"CANARY-EMOJI", "👍"})
            db.set_reactions(MID, "bob", {"CANARY-EMOJI"})  # again: still one for bob
            assert db.add_receipt(MID, "bob", KIND_READ)
            assert not db.add_receipt(MID, "bob", KIND_READ)
            db.add_receipt(MID, "carol", KIND_DELIVERED)
            db.put_state(MID, MessageState(edited=True, edits=[(1, "CANARY-EDIT")]))
            db.mark_read_sent([MID])
        assert db.reaction_counts(MID) == {"CANARY-EMOJI": 2, "👍": 1}
        assert db.receipt_count(MID, KIND_READ) == 1
        assert db.receipt_count(MID, KIND_DELIVERED) == 1
        assert db.state(MID).text == "CANARY-EDIT" and db.read_sent([MID, "x" * 22]) == {MID}
        with store.transaction():
            db.clear_reactions(MID)
            db.put_state(MID, MessageState(deleted=DELETED_FOR_EVERYONE))
        assert db.reaction_counts(MID) == {} and db.state(MID).text is None
    finally:
        store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "s").iterdir() if p.is_file())
    assert b"CANARY" not in raw and b"bob" not in raw and b"carol" not in raw
