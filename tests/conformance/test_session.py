"""KSMP v3 session rules: challenge, registration, auth, error shape, keepalive
(docs/protocol.md §Session)."""

from __future__ import annotations

import dataclasses
import json
import secrets

from sottovoce.identity import AccountKey
from sottovoce.protocol.pow import solve as pow_solve
from tests.conformance.rawclient import (
    Device,
    RawClient,
    b64,
    logged_in,
    now_ms,
    registered,
    unb64,
    unique_name,
)

ERROR_KEYS = {"code", "message", "retryable", "retryAfterMs"}


def assert_error(frame: dict, code: str) -> dict:
    assert frame["event"] == "ksmpv3.error", frame
    data = frame["data"]
    assert set(data) >= ERROR_KEYS, data
    assert data["code"] == code, data
    assert isinstance(data["message"], str) and data["message"]
    assert isinstance(data["retryable"], bool)
    assert isinstance(data["retryAfterMs"], int) and data["retryAfterMs"] >= 0
    return data


async def test_challenge_is_sent_on_connect(url: str) -> None:
    c = await RawClient.open(url)
    assert len(c.nonce) == 32
    other = await RawClient.open(url)
    assert other.nonce != c.nonce, "every connection gets a fresh nonce"


async def test_register_verifies_certificate_and_possession(url: str) -> None:
    dev = Device.new()
    c = await RawClient.open(url)
    reply = await c.register(dev)
    assert reply["event"] == "sottovoce.registered"
    data = reply["data"]
    assert data["userId"] == dev.username and data["deviceId"] == "d1"
    assert data["latestGlobalInboxSeq"] == 0 and data["heartbeatMs"] > 0
    assert abs(data["serverTimeMs"] - now_ms()) < 60_000


async def test_register_and_device_add_get_exactly_one_reply(url: str) -> None:
    """One reply per request: a client that settles a request on its first reply must not
    see a second frame with the same requestId (a ksmpv3.connected after registered)."""
    alice = Device.new()
    for c, rid in [(await RawClient.open(url), "reg"), (await RawClient.open(url), "add")]:
        device = alice if rid == "reg" else alice.sibling("d2")
        data = {"certificate": b64(device.certificate.encode()),
                "signature": b64(device.sign_challenge(c.nonce))}
        if rid == "reg":  # a registration pays a proof of work first; the challenge stands
            await c.send("sottovoce.register", data, request_id="reg0")
            refused = await c.recv()
            assert refused["data"]["code"] == "pow_required", refused
            token = unb64(refused["data"]["details"]["challenge"])
            data = {**data, "pow": b64(pow_solve(token))}
        await c.send("sottovoce.register" if rid == "reg" else "sottovoce.device.add", data,
                     request_id=rid)
        first = await c.recv()
        assert first["event"] == "sottovoce.registered" and first["requestId"] == rid, first
        await c.send("ping", {}, request_id="after")
        nxt = await c.recv()
        assert (nxt["event"], nxt.get("requestId")) == ("pong", "after"), nxt


async def test_register_rejects_undecodable_certificate(url: str) -> None:
    c = await RawClient.open(url)
    dev = Device.new()
    reply = await c.request("sottovoce.register", {
        "certificate": b64(b"\x01garbage"), "signature": b64(dev.sign_challenge(c.nonce)),
    })
    assert_error(reply, "invalid_certificate")


async def test_register_rejects_certificate_signed_by_another_key(url: str) -> None:
    dev = Device.new()
    forger = AccountKey.generate(secrets.token_bytes)
    # Claims dev's account key but is signed by another key.
    forged = dataclasses.replace(dev.certificate, signature=forger.sign(dev.certificate.tbs()))
    c = await RawClient.open(url)
    reply = await c.register(dataclasses.replace(dev, certificate=forged))
    assert_error(reply, "invalid_certificate")


async def test_register_rejects_wrong_possession_signature(url: str) -> None:
    dev = Device.new()
    c = await RawClient.open(url)
    reply = await c.request("sottovoce.register", {
        "certificate": b64(dev.certificate.encode()),
        "signature": b64(dev.sign_challenge(b"\x00" * 32)),  # not this connection's nonce
    })
    assert_error(reply, "auth_failed")
    await c.new_challenge()


async def test_register_rejects_taken_username(url: str) -> None:
    first = Device.new()
    await registered(url, first)
    c = await RawClient.open(url)
    reply = await c.register(Device.new(first.username))
    assert_error(reply, "username_taken")


async def test_register_rejects_invalid_username(url: str) -> None:
    ak = AccountKey.generate(secrets.token_bytes)
    good = Device.new(account_key=ak)
    bad = dataclasses.replace(good.certificate, username="Bad Name!", signature=b"")
    bad = dataclasses.replace(bad, signature=ak.sign(bad.tbs()))
    dev = dataclasses.replace(good, username="Bad Name!", certificate=bad)
    c = await RawClient.open(url)
    assert_error(await c.register(dev), "invalid_username")


async def test_username_check_reports_availability(url: str) -> None:
    dev = Device.new()
    await registered(url, dev)
    c = await RawClient.open(url)
    taken = await c.request("sottovoce.username.check", {"username": dev.username})
    assert taken["data"] == {"username": dev.username, "available": False}
    free = unique_name()
    reply = await c.request("sottovoce.username.check", {"username": free})
    assert reply["data"] == {"username": free, "available": True}
    assert_error(
        await c.request("sottovoce.username.check", {"username": "NO"}), "invalid_username"
    )


async def test_auth_success_gives_connected_payload(url: str) -> None:
    dev = Device.new()
    first = await registered(url, dev)
    await first.close()
    c = await RawClient.open(url)
    reply = await c.auth(dev)
    assert reply["event"] == "ksmpv3.connected"
    data = reply["data"]
    assert data["userId"] == dev.username and data["deviceId"] == dev.device_id
    assert data["latestGlobalInboxSeq"] == 0
    assert isinstance(data["heartbeatMs"], int) and data["heartbeatMs"] > 0
    assert abs(data["serverTimeMs"] - now_ms()) < 60_000


async def test_auth_failure_is_refused_and_a_new_challenge_follows(url: str) -> None:
    dev = Device.new()
    await (await registered(url, dev)).close()
    c = await RawClient.open(url)
    impostor = Device.new(dev.username)  # same name, another device key
    assert_error(await c.auth(dev, signature=impostor.sign_challenge(c.nonce)), "auth_failed")
    await c.new_challenge()
    assert (await c.auth(dev))["event"] == "ksmpv3.connected"


async def test_auth_unknown_device_is_refused(url: str) -> None:
    dev = Device.new()
    await (await registered(url, dev)).close()
    c = await RawClient.open(url)
    assert_error(await c.auth(dev.sibling("nope")), "auth_failed")


async def test_auth_failures_say_nothing_about_which_devices_exist(url: str) -> None:
    """Unknown user, unknown device, revoked device, wrong signature: one identical answer
    (code, message, retryable, retryAfterMs), so nobody learns which (user, device) exist."""
    from sottovoce.identity import RevocationStatement

    alice = Device.new()
    a1 = await registered(url, alice)
    gone = alice.sibling("d2")
    await (await RawClient.open(url)).add_device(gone)
    stmt = RevocationStatement.issue(alice.account_key, username=alice.username,
                                     device_id="d2", now_ms=now_ms())
    reply = await a1.request("sottovoce.device.revoke", {"revocation": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.device.revoked"
    answers = []
    for device, signer in [
        (Device.new(), None),  # no such user
        (alice.sibling("nope"), None),  # no such device
        (gone, None),  # revoked
        (alice, Device.new(alice.username)),  # the device exists; the signature is wrong
    ]:
        c = await RawClient.open(url)
        sig = signer.sign_challenge(c.nonce) if signer is not None else None
        reply = await c.auth(device, signature=sig)
        answers.append(assert_error(reply, "auth_failed"))
        await c.close()
    assert all(a == answers[0] for a in answers), answers


async def test_device_add_says_nothing_about_which_names_exist(url: str) -> None:
    """A device.add of a stranger's certificate for a taken name and for a name nobody
    holds: one identical answer, with or without statements (a recertified login)."""
    alice = Device.new()
    await registered(url, alice)
    for statements in (False, True):
        answers = []
        for name in (alice.username, unique_name()):
            device = Device.new(name)  # a certificate of another account key
            c = await RawClient.open(url)
            data = {"certificate": b64(device.certificate.encode()),
                    "signature": b64(device.sign_challenge(c.nonce))}
            if statements:
                data["statements"] = [{"kind": "certificate", "data": data["certificate"]}]
            reply = await c.request("sottovoce.device.add", data)
            answers.append(assert_error(
                reply, "stale_account_key" if statements else "invalid_certificate"))
            await c.close()
        assert answers[0] == answers[1], answers


async def test_send_before_auth_is_unauthorized(url: str) -> None:
    c = await RawClient.open(url)
    reply = await c.request("ksmpv3.send", {"conversationId": "dm:a:b"})
    assert_error(reply, "unauthorized")
    reply = await c.request("sottovoce.directory.lookup", {"username": "someone"})
    assert_error(reply, "unauthorized")


async def test_error_shape_carries_request_id_and_message_id(url: str) -> None:
    a = await registered(url)
    data = a.send_data("nobody" + secrets.token_hex(4), [("x", "d1", b"c")])
    reply = await a.request("ksmpv3.send", data)
    err = assert_error(reply, "unknown_recipient")
    assert err["messageId"] == data["messageId"]
    assert err["retryable"] is False


async def test_ping_gets_pong(url: str) -> None:
    c = await RawClient.open(url)
    reply = await c.request("ping", {})
    assert reply["event"] == "pong"
    dev = Device.new()
    a = await registered(url, dev)
    assert (await a.request("ping", {}))["event"] == "pong"


async def test_malformed_frames_get_typed_errors(url: str) -> None:
    c = await RawClient.open(url)
    await c.send_raw("{not json")
    assert_error(await c.recv(), "bad_json")
    await c.send_raw(json.dumps({"event": "ksmpv3.nope", "data": {}}))
    assert_error(await c.recv(), "unknown_event")
    await c.send_raw(json.dumps({"event": "sottovoce.username.check", "data": {"username": 7}}))
    assert_error(await c.recv(), "bad_request")


async def test_connected_reports_latest_global_inbox_seq(url: str) -> None:
    a = await registered(url)
    bob = Device.new()
    await (await registered(url, bob)).close()
    for _ in range(3):
        ack = await a.send_message(bob.username, [(bob.username, "d1", b"x")])
        assert ack["event"] == "ksmpv3.send.ack"
    b = await logged_in(url, bob)
    assert b.connected["latestGlobalInboxSeq"] == 3
