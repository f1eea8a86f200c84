"""A trail with a bad entry stays usable (protocol/audit.py, "A trail with a bad entry").

An older server let members append entries with garbage signatures naming someone
else, and every later entry chained onto them. ``verify_trail`` reports and skips such
an entry and judges the later ones on their own; a broken chain (an entry changed,
dropped or reordered after the fact) is still fatal and names the entry.
"""

from __future__ import annotations

import dataclasses

import pytest

from sottovoce.protocol.audit import (
    AuditAction,
    AuditChainError,
    AuditEntry,
    check_signature,
    entry_hash,
    make_entry,
    verify_chain,
    verify_trail,
)
from tests.unit.test_audit import (
    ALICE,
    AUTHS,
    BOB,
    MALLORY,
    MEMBER_KEYS,
    NOW,
    PLAN,
    ROOM,
    auth,
    resign,
)


def chain_with(bad_at: int, make_bad: str, n: int = 8) -> list[bytes]:
    """A chain of ``n`` entries where entry ``bad_at`` was appended broken (as an older
    server accepted it) and every later entry was made on top of it, honestly."""
    out: list[bytes] = []
    for i in range(n):
        epoch, action, leaf, subjects = PLAN[i]
        key, user, device = (ALICE, "alice", "phone") if leaf == 0 else (BOB, "bob", "laptop")
        entry = make_entry(
            signing_key=key, suite=1, prev=out[-1] if out else None, room_id=ROOM,
            epoch=epoch, epoch_authenticator=auth(epoch), action=action,
            actor_user_id=user, actor_device_id=device, actor_leaf_index=leaf,
            now_ms=NOW + i, subjects=subjects,
        )
        data = entry.encode()
        if i == bad_at:
            data = _break(entry, make_bad)
        out.append(data)
    return out


def _break(entry: AuditEntry, how: str) -> bytes:
    if how == "garbage-signature-other-actor":  # the reported attack
        forged = dataclasses.replace(entry, actor_user_id="alice", actor_device_id="phone",
                                     signature=bytes(64))
        return forged.encode()
    if how == "server-key-unseen-epoch":  # signed with a key of the server's own
        return resign(entry, MALLORY, epoch=99, authenticator=auth(99))
    if how == "huge-epoch-bad-signature":
        return dataclasses.replace(entry, epoch=2**40, signature=bytes(64)).encode()
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["garbage-signature-other-actor", "server-key-unseen-epoch",
            "huge-epoch-bad-signature"]
)
def test_a_bad_entry_in_the_chain_is_reported_and_the_rest_verifies(how: str) -> None:
    chain = chain_with(3, how)
    trail = verify_trail(chain, room_id=ROOM, authenticators=AUTHS, member_keys=MEMBER_KEYS,
                         strict=True)
    assert [r.index for r in trail.rejected] == [3]
    assert [e.index for e in trail] == [0, 1, 2, 4, 5, 6, 7]
    assert len(trail) == 7 and trail[3].index == 4
    # The strict form still fails the whole chain, at that entry.
    with pytest.raises(AuditChainError) as err:
        verify_chain(chain, room_id=ROOM, authenticators=AUTHS, strict=True)
    assert err.value.index == 3


def test_a_bad_last_entry_is_reported_too() -> None:
    chain = chain_with(7, "garbage-signature-other-actor")
    trail = verify_trail(chain, room_id=ROOM, authenticators=AUTHS, strict=True)
    assert [r.index for r in trail.rejected] == [7] and len(trail) == 7


def test_an_entry_changed_after_the_next_was_made_breaks_the_chain_naming_it() -> None:
    chain = chain_with(99, "")  # all good
    edited = bytearray(chain[3])
    edited[-70] ^= 1
    chain[3] = bytes(edited)
    with pytest.raises(AuditChainError) as err:
        verify_trail(chain, room_id=ROOM, authenticators=AUTHS, strict=True)
    assert err.value.index == 3
    # Dropped or reordered entries break it as before.
    for broken in (chain_with(99, "")[:3] + chain_with(99, "")[4:],
                   [*chain_with(99, "")[:3], chain_with(99, "")[4], chain_with(99, "")[3]]):
        with pytest.raises(AuditChainError) as err:
            verify_trail(broken, room_id=ROOM, authenticators=AUTHS)
        assert err.value.index == 3


def test_a_changed_head_the_member_saw_is_still_fatal() -> None:
    chain = chain_with(99, "")
    head = (7, entry_hash(chain[7]))
    chain[7] = _break(AuditEntry.decode(chain[7]), "garbage-signature-other-actor")
    with pytest.raises(AuditChainError) as err:
        verify_trail(chain, room_id=ROOM, authenticators=AUTHS, known_head=head)
    assert err.value.index == 7


def test_the_signature_check_the_server_makes() -> None:
    good = AuditEntry.decode(chain_with(99, "")[0])
    check_signature(good)
    with pytest.raises(AuditChainError):
        check_signature(AuditEntry.decode(_break(good, "garbage-signature-other-actor")))
    assert good.action is AuditAction.ROOM_CREATED
