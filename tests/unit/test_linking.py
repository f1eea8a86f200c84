"""The handover after the linking PAKE (client/linking.py), two peers in memory: sealed
messages in turn, and every kind of wrong message ends in a LinkError."""

from __future__ import annotations

import secrets

import pytest

from sottovoce.client.linking import (
    GRANT,
    HELLO,
    OFFER,
    LinkError,
    _Inbox,
    _Sealed,
)
from sottovoce.identity.pake import LinkResult, LinkSession, Role, ShortCode
from sottovoce.secret import Secret


def pake_pair() -> tuple[LinkResult, LinkResult]:
    code = ShortCode.generate(secrets.token_bytes)
    sid = secrets.token_bytes(16)
    a = LinkSession(Role.EXISTING, prs=code.prs(), sid=sid, device_id="aaaa")
    b = LinkSession(Role.NEW, prs=code.prs(), sid=sid, device_id="bbbb")
    msg2 = b.respond(a.start(secrets.token_bytes), secrets.token_bytes)
    msg3, ra = a.confirm(msg2)
    return ra, b.finish(msg3)


def test_sealed_messages_go_both_ways_in_turn() -> None:
    ra, rb = pake_pair()
    assert ra.words == rb.words
    a, b = _Sealed(ra, Role.EXISTING), _Sealed(rb, Role.NEW)
    assert b.open(a.seal(OFFER, b"alice"), OFFER) == b"alice"
    assert a.open(b.seal(HELLO, b"laptop"), HELLO) == b"laptop"
    assert b.open(a.seal(GRANT, b"keys"), GRANT) == b"keys"


@pytest.mark.parametrize("mutate", ["replay", "skip", "kind", "flip", "truncate", "reflect",
                                    "other_key"])
def test_a_wrong_handover_message_is_a_link_error(mutate: str) -> None:
    ra, rb = pake_pair()
    a, b = _Sealed(ra, Role.EXISTING), _Sealed(rb, Role.NEW)
    first = a.seal(OFFER, b"alice")
    if mutate == "replay":
        b.open(first, OFFER)
        body = first
    elif mutate == "skip":
        body = a.seal(OFFER, b"again")  # the second one, the first never arrived
    elif mutate == "kind":
        body = first
        with pytest.raises(LinkError, match="out of order"):
            b.open(body, GRANT)
        return
    elif mutate == "flip":
        body = first[:-1] + bytes([first[-1] ^ 1])
    elif mutate == "truncate":
        body = first[:4]
    elif mutate == "reflect":  # B's own message sent back to B
        body = b.seal(OFFER, b"x")
    else:
        other = _Sealed(LinkResult(session_key=Secret(bytes(32)), peer_device_id="aaaa",
                                   words=()), Role.EXISTING)
        body = other.seal(OFFER, b"x")
    with pytest.raises(LinkError):
        b.open(body, OFFER)


def test_malformed_server_frames_are_reported_not_raised() -> None:
    inbox = _Inbox()
    inbox.feed("sottovoce.link.message", {"mailbox": "1234", "body": "***"})
    inbox.feed("sottovoce.link.message", {"mailbox": "bad!", "body": "eA=="})
    inbox.feed("sottovoce.link.closed", {"mailbox": "1234", "reason": 7})
    kinds = [inbox.queue.get_nowait() for _ in range(3)]
    assert [k for k, _, _ in kinds] == ["error", "error", "closed"]
    assert kinds[2][2] == "closed"
