"""What a member checks of an external commit (protocol/rooms.py, "Joining by token"),
with in-memory MLS peers: a join must inject the token's PSK (RFC 9420 §8.4) under the
hash the server keeps; a wrong key fails the key schedule, an unknown one the lookup,
a missing one the policy; a member's resync (RFC 9420 §12.2) needs none.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from sottovoce.client.rooms.membership import _check_external_join
from sottovoce.client.rooms.tokens import new_token, read_token_control, token_control
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError, RemoteError
from sottovoce.mls.common import PreSharedKeyID, PSKType
from sottovoce.mls.errors import InvalidConfirmationTag, MissingPsk
from sottovoce.mls.group import Group, GroupConfig, StagedCommit, generate_key_package
from sottovoce.mls.messages import Credential
from sottovoce.protocol import rooms as pr
from sottovoce.secret import Secret

NOW = 1_700_000_000_000
TOKEN = Secret(new_token().encode("ascii"))
H = pr.token_hash(pr.wire_token(TOKEN))


def lookup_for(*tokens: Secret) -> Callable[[PreSharedKeyID], Secret | None]:
    """A member's lookup: the tokens it was told, by the hash an external commit names."""
    known = {pr.token_hash(pr.wire_token(t)): pr.token_psk(t) for t in tokens}

    def lookup(psk: PreSharedKeyID) -> Secret | None:
        return known.get(psk.psk_id) if psk.psktype == PSKType.EXTERNAL else None

    return lookup


def key() -> SigningKey:
    return SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)


def room(bob_knows: tuple[Secret, ...] = (TOKEN,)) -> tuple[Group, Group, SigningKey]:
    """alice and bob in one group; bob knows ``bob_knows``. Returns bob's signing key too."""
    config = GroupConfig(psk_lookup=lookup_for(TOKEN))
    alice = Group.create(1, credential=Credential.basic(b"alice/a1"), signing_key=key(),
                         rng=secrets.token_bytes, now_ms=NOW, config=config)
    bob_key = key()
    kp, private = generate_key_package(1, Credential.basic(b"bob/b1"), bob_key,
                                       secrets.token_bytes, NOW)
    bundle = alice.add_members([kp], rng=secrets.token_bytes, now_ms=NOW)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    bob = Group.join_from_welcome(bundle.welcome, kp, private, signing_key=bob_key,
                                  config=GroupConfig(psk_lookup=lookup_for(*bob_knows)))
    return alice, bob, bob_key


def dave_joins(alice: Group, psk_value: Secret | None, psk_id: bytes = H) -> bytes:
    psks = [] if psk_value is None else [PreSharedKeyID.external(psk_id, secrets.token_bytes(32))]
    return Group.join_by_external_commit(
        alice.group_info(), credential=Credential.basic(b"dave/d1"), signing_key=key(),
        rng=secrets.token_bytes, now_ms=NOW, psks=psks,
        config=GroupConfig(psk_lookup=lambda p: psk_value),
    ).commit


def staged(group: Group, commit: bytes) -> StagedCommit:
    out = group.process_message(commit, now_ms=NOW).content
    assert isinstance(out, StagedCommit) and out.external
    return out


def test_a_join_with_the_tokens_psk_is_accepted() -> None:
    alice, bob, _ = room()
    commit = dave_joins(alice, pr.token_psk(TOKEN))
    assert _check_external_join(staged(bob, commit), "dave", "d1") is False
    assert _check_external_join(staged(alice, commit), "dave", "d1") is False


def test_rfc9420_8_4_a_wrong_psk_fails_the_key_schedule() -> None:
    alice, bob, _ = room()
    before = bob.to_state()
    with pytest.raises(InvalidConfirmationTag):
        bob.process_message(dave_joins(alice, Secret(secrets.token_bytes(32))), now_ms=NOW)
    assert bob.to_state() == before


def test_rfc9420_8_4_a_psk_named_by_an_unknown_hash_is_missing() -> None:
    alice, bob, _ = room(bob_knows=())  # bob was never told the token
    with pytest.raises(MissingPsk):
        bob.process_message(dave_joins(alice, pr.token_psk(TOKEN)), now_ms=NOW)
    # A token the members never set (a server can name any hash it likes).
    other = Secret(new_token().encode("ascii"))
    alice, bob, _ = room()
    with pytest.raises(MissingPsk):
        bob.process_message(
            dave_joins(alice, pr.token_psk(other), pr.token_hash(pr.wire_token(other))),
            now_ms=NOW,
        )


def test_a_join_without_any_psk_is_refused_by_the_members_policy() -> None:
    alice, bob, _ = room()
    with pytest.raises(RemoteError, match="token"):
        _check_external_join(staged(bob, dave_joins(alice, None)), "dave", "d1")


def test_rfc9420_12_2_a_members_resync_needs_no_token() -> None:
    alice, bob, bob_key = room()
    rejoin = Group.join_by_external_commit(
        alice.group_info(), credential=Credential.basic(b"bob/b1"), signing_key=bob_key,
        rng=secrets.token_bytes, now_ms=NOW, remove_leaf=bob.own_leaf_index,
    )
    assert _check_external_join(staged(alice, rejoin.commit), "bob", "b1") is True
    # Someone else removing bob's leaf is no resync: it changes the credential (§12.2).
    with pytest.raises(RemoteError):
        _check_external_join(staged(alice, dave_joins(alice, None)), "bob", "b1")


def test_the_token_travels_between_members_as_a_control_message() -> None:
    assert read_token_control(token_control(TOKEN)) == TOKEN
    for bad in (b"", b"\x02\x01a", b"\x01\x05short", token_control(TOKEN) + b"\x00"):
        with pytest.raises(DecodeError):
            read_token_control(bad)
    # What crosses the wire is neither the token nor the PSK; each is its own hash of it.
    wire, psk = pr.wire_token(TOKEN), pr.token_psk(TOKEN)
    assert len({wire.expose(), psk.expose(), TOKEN.expose(), H}) == 4
    assert pr.req_token({"token": wire.expose().decode()}) == wire  # a valid wire token
