"""Whose connection it is, for the pre-auth budget per address (server/app.py,
docs/threat-model.md): one IPv6 subscriber holds a whole /64, so a flood from many
addresses of one /64 is one address's budget."""

from __future__ import annotations

from sottovoce.server.app import address_key


def test_ipv4_addresses_are_their_own_key() -> None:
    assert address_key("127.0.0.2") == "127.0.0.2"
    assert address_key("127.0.0.2") != address_key("127.0.0.3")


def test_every_address_of_one_ipv6_64_shares_a_key_and_another_64_does_not() -> None:
    one = {address_key(f"2001:db8:0:1::{i:x}") for i in range(1, 200)}
    one.add(address_key("2001:db8:0:1:ffff:ffff:ffff:ffff"))
    assert one == {"2001:db8:0:1::/64"}
    assert address_key("2001:db8:0:2::1") != address_key("2001:db8:0:1::1")


def test_an_ipv4_mapped_address_counts_as_the_ipv4_address() -> None:
    assert address_key("::ffff:127.0.0.2") == address_key("127.0.0.2")


def test_a_remote_that_is_not_an_address_is_kept_as_it_is() -> None:
    assert address_key("unix:/run/sottovoce.sock") == "unix:/run/sottovoce.sock"
