"""The checks a device makes before it installs an account key handed over by another
device of its account (client/key_handover.py): the sender, the chain, the head."""

from __future__ import annotations

import secrets

import pytest

from sottovoce.client.account_keys import recertify
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.key_handover import Offer, choose, descends, new_certificate, offer_body
from sottovoce.client.store import Contact
from sottovoce.errors import DecodeError
from sottovoce.identity import AccountKey
from sottovoce.identity.succession import Succession

NOW = 1_800_000_000_000


def _device(key: AccountKey, device_id: str) -> LocalIdentity:
    identity, _ = LocalIdentity.new(username="alice", server_url="ws://127.0.0.1:1",
                                    now_ms=NOW, rng=secrets.token_bytes, account_key=key,
                                    device_id=device_id)
    return identity


def _setup() -> tuple[LocalIdentity, LocalIdentity, AccountKey, Succession, Contact]:
    """The tablet (holding the old key), the phone that revoked, the new key, the
    succession and the account as a verified lookup shows it after the revocation."""
    old = AccountKey.generate(secrets.token_bytes)
    new = AccountKey.generate(secrets.token_bytes)
    tablet, phone = _device(old, "tablet0001"), _device(old, "phone00001")
    succession = Succession.issue(old, new, username="alice", now_ms=NOW)
    certs = recertify(new, [phone.certificate, tablet.certificate], now_ms=NOW)
    own = Contact(username="alice", account_key=new.public, pinned_at_ms=NOW,
                  certificates={c.device_id: c for c in certs}, revoked={"laptop0001"})
    return tablet, phone, new, succession, own


def _offer(sender: str, key: AccountKey, chain: tuple[Succession, ...]) -> Offer:
    return Offer.from_body(sender, offer_body(key, chain))


def test_an_offer_from_an_active_device_of_ours_naming_the_head_is_installed() -> None:
    tablet, phone, new, succession, own = _setup()
    offer = _offer(phone.device_id, new, (succession,))
    assert choose([offer], tablet, own) is offer
    cert = new_certificate(tablet, own)
    assert cert is not None and cert.account_key == new.public
    assert cert.keys == tablet.certificate.keys
    assert "key" not in repr(offer).lower().replace("offer", "")  # no secret in the repr


def test_offers_that_must_not_be_installed() -> None:
    tablet, phone, new, succession, own = _setup()
    # From the revoked device, from a device the account does not list, from ourselves.
    for sender in ("laptop0001", "stranger01", tablet.device_id):
        assert choose([_offer(sender, new, (succession,))], tablet, own) is None
    # A key that is not the verified head (a thief's own new key, with its succession).
    other = AccountKey.generate(secrets.token_bytes)
    thief = Succession.issue(tablet.account_key, other, username="alice", now_ms=NOW)
    assert choose([_offer(phone.device_id, other, (thief,))], tablet, own) is None
    # The head, but no valid chain from the key held here.
    unrelated = Succession.issue(other, new, username="alice", now_ms=NOW)
    assert choose([_offer(phone.device_id, new, (unrelated,))], tablet, own) is None
    # Nothing to do when this device already holds the head.
    holder = _device(new, tablet.device_id)
    assert choose([_offer(phone.device_id, new, (succession,))], holder, own) is None


def test_two_revocations_while_offline_chain_through_both_offers() -> None:
    tablet, phone, mid, first, _ = _setup()
    head = AccountKey.generate(secrets.token_bytes)
    second = Succession.issue(mid, head, username="alice", now_ms=NOW)
    own = Contact(username="alice", account_key=head.public, pinned_at_ms=NOW,
                  certificates={c.device_id: c for c in recertify(
                      head, [phone.certificate, tablet.certificate], now_ms=NOW)})
    offers = [_offer(phone.device_id, mid, (first,)), _offer(phone.device_id, head, (second,))]
    assert choose(offers, tablet, own) is offers[1]
    assert choose(offers[1:], tablet, own) is None  # the first link is missing
    assert descends(tablet.account_key.public, head.public, [first, second], "alice")
    assert not descends(tablet.account_key.public, head.public, [first, second], "bob")


@pytest.mark.parametrize("body", [
    b"not json",
    b'{"v":1,"key":"AAAA","chain":[]}',
    b'{"v":1,"key":"AAAA","chain":["AAAA"]}',
    b'{"v":1,"key":1,"chain":["AAAA"]}',
    b'{"v":2,"key":"AAAA","chain":["AAAA"]}',
])
def test_a_malformed_handover_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        Offer.from_body("phone00001", body)
