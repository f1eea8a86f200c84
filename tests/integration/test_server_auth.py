"""Challenge/response auth: wrong, expired and replayed signatures are refused
(docs/protocol.md §Session)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sottovoce.protocol.events import auth_message
from tests.conformance.rawclient import Device, RawClient, registered
from tests.conformance.test_session import assert_error
from tests.integration.serverproc import ServerProcess


async def _registered_device(url: str) -> Device:
    dev = Device.new()
    await (await registered(url, dev)).close()
    return dev


async def test_wrong_signature_is_refused(server: ServerProcess) -> None:
    dev = await _registered_device(server.ws_url)
    c = await RawClient.open(server.ws_url)
    sig = bytearray(dev.sign_challenge(c.nonce))
    sig[0] ^= 1
    assert_error(await c.auth(dev, signature=bytes(sig)), "auth_failed")
    # A signature over the right nonce but for another device id is refused too.
    await c.new_challenge()
    other = dev.device_key.sign(auth_message(c.nonce, dev.username, "d9"))
    assert_error(await c.auth(dev, signature=other), "auth_failed")


async def test_expired_challenge_is_refused(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--challenge-ttl-ms", "300")
    dev = await _registered_device(srv.ws_url)
    c = await RawClient.open(srv.ws_url)
    await asyncio.sleep(0.6)
    err = assert_error(await c.auth(dev), "challenge_expired")
    assert err["retryable"] is True
    await c.new_challenge()
    assert (await c.auth(dev))["event"] == "ksmpv3.connected"


async def test_replayed_challenge_response_is_refused(server: ServerProcess) -> None:
    dev = await _registered_device(server.ws_url)
    # Same connection: after a failed attempt the nonce is spent; the valid
    # signature over the old nonce no longer works.
    c = await RawClient.open(server.ws_url)
    old_nonce = c.nonce
    good_for_old = dev.sign_challenge(old_nonce)
    assert_error(await c.auth(dev, signature=b"\x00" * 64), "auth_failed")
    assert await c.new_challenge() != old_nonce
    assert_error(await c.auth(dev, signature=good_for_old), "auth_failed")
    # Another connection: a captured (nonce, signature) pair is useless there.
    victim = await RawClient.open(server.ws_url)
    captured = dev.sign_challenge(victim.nonce)
    assert (await victim.auth(dev, signature=captured))["event"] == "ksmpv3.connected"
    attacker = await RawClient.open(server.ws_url)
    assert_error(await attacker.auth(dev, signature=captured), "auth_failed")


async def test_auth_on_authenticated_connection_is_refused(server: ServerProcess) -> None:
    dev = Device.new()
    c = await registered(server.ws_url, dev)
    assert_error(await c.auth(dev), "already_authenticated")


async def test_unauthenticated_connection_is_closed_after_the_preauth_timeout(
    server_factory: Callable[..., ServerProcess],
) -> None:
    srv = server_factory("--preauth-timeout-ms", "300")
    c = await RawClient.open(srv.ws_url)
    await asyncio.wait_for(c.ws.wait_closed(), 5)
    assert c.ws.close_code == 1008
