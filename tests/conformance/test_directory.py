"""Directory and prekeys: lookups, signed prekeys, atomic claims, low-stock notice
(docs/protocol.md §Directory)."""

from __future__ import annotations

import secrets

from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
from sottovoce.limits import ONE_TIME_KEYS_LOW_WATERMARK
from sottovoce.pairwise import OlmAccount, PrekeyBundle
from tests.conformance.rawclient import Device, RawClient, b64, now_ms, registered, unb64
from tests.conformance.test_session import assert_error


def olm_device(username: str | None = None) -> tuple[Device, OlmAccount]:
    """A device whose certificate carries real Olm identity keys."""
    dev = Device.new(username)
    olm = OlmAccount.create(username=dev.username, device_id=dev.device_id)
    keys = DevicePublicKeys(
        signing_key=dev.device_key.public,
        olm_identity_key=olm.identity_key,
        olm_signing_key=olm.signing_key,
    )
    cert = DeviceCertificate.issue(
        dev.account_key, username=dev.username, device_id=dev.device_id, keys=keys,
        now_ms=now_ms(),
    )
    dev.certificate = cert
    return dev, olm


async def test_lookup_returns_account_key_and_certificates(url: str) -> None:
    alice = Device.new()
    await registered(url, alice)
    a2 = await RawClient.open(url)
    await a2.add_device(alice.sibling("d2"))
    b = await registered(url)
    reply = await b.request("sottovoce.directory.lookup", {"username": alice.username})
    data = reply["data"]
    assert reply["event"] == "sottovoce.directory.result"
    assert unb64(data["accountKey"]) == alice.account_key.public
    assert sorted(d["deviceId"] for d in data["devices"]) == ["d1", "d2"]
    for d in data["devices"]:
        cert = DeviceCertificate.decode(unb64(d["certificate"]))
        cert.verify(now_ms=now_ms(), account_key=alice.account_key.public,
                    username=alice.username)
    assert data["revokedDeviceIds"] == []


async def test_lookup_of_unknown_user(url: str) -> None:
    b = await registered(url)
    reply = await b.request("sottovoce.directory.lookup", {"username": "no" + secrets.token_hex(4)})
    assert_error(reply, "unknown_user")
    reply = await b.request("sottovoce.prekeys.claim", {"username": "no" + secrets.token_hex(4)})
    assert_error(reply, "unknown_user")


async def test_add_device_requires_the_account_key(url: str) -> None:
    alice = Device.new()
    await registered(url, alice)
    stranger = Device.new(alice.username, "evil")  # another account key, same username
    c = await RawClient.open(url)
    assert_error(await c.add_device(stranger), "invalid_certificate")


async def test_prekeys_upload_claim_consumes_one_time_keys_then_fallback(url: str) -> None:
    alice, olm = olm_device()
    a = await registered(url, alice)
    one_time = olm.new_one_time_keys(alice.device_key, 3)
    fallback = olm.new_fallback_key(alice.device_key)
    stored = await a.request("sottovoce.prekeys.upload", {
        "oneTimeKeys": [b64(k.encode()) for k in one_time],
        "fallbackKey": b64(fallback.encode()),
    })
    assert stored["data"] == {"oneTimeKeys": 3}
    b = await registered(url)
    seen = []
    for _ in range(4):
        reply = await b.request("sottovoce.prekeys.claim", {"username": alice.username})
        bundles = reply["data"]["bundles"]
        assert len(bundles) == 1
        bundle = PrekeyBundle.decode(unb64(bundles[0]))
        bundle.verify(now_ms=now_ms(), account_key=alice.account_key.public,
                      username=alice.username)
        seen.append(bundle.prekey)
    assert [p.key_id for p in seen[:3]] == sorted({k.key_id for k in one_time})
    assert seen[3].fallback is True, "after the one-time keys, the fallback key"
    low = await a.wait_for("sottovoce.prekeys.low")
    assert low["data"]["remaining"] < ONE_TIME_KEYS_LOW_WATERMARK


async def test_prekey_not_signed_by_the_device_is_refused(url: str) -> None:
    alice, olm = olm_device()
    a = await registered(url, alice)
    other = DeviceSigningKey.generate(secrets.token_bytes)
    keys = olm.new_one_time_keys(other, 1)
    reply = await a.request("sottovoce.prekeys.upload", {"oneTimeKeys": [b64(keys[0].encode())]})
    assert_error(reply, "invalid_prekey")
    reply = await a.request("sottovoce.prekeys.upload", {"oneTimeKeys": [b64(b"\x01junk")]})
    assert_error(reply, "invalid_prekey")
    assert "does not decode" in reply["data"]["message"]


async def test_revoked_device_leaves_the_directory_and_its_socket(url: str) -> None:
    from sottovoce.identity import RevocationStatement

    alice = Device.new()
    a1 = await registered(url, alice)
    a2 = await RawClient.open(url)
    await a2.add_device(alice.sibling("d2"))
    stmt = RevocationStatement.issue(alice.account_key, username=alice.username,
                                     device_id="d2", now_ms=now_ms())
    reply = await a1.request("sottovoce.device.revoke", {"revocation": b64(stmt.encode())})
    assert reply["event"] == "sottovoce.device.revoked"
    res = await a1.request("sottovoce.directory.lookup", {"username": alice.username})
    assert [d["deviceId"] for d in res["data"]["devices"]] == ["d1"]
    assert res["data"]["revokedDeviceIds"] == ["d2"]
    bad = RevocationStatement.issue(AccountKey.generate(secrets.token_bytes),
                                    username=alice.username, device_id="d1", now_ms=now_ms())
    assert_error(await a1.request("sottovoce.device.revoke", {"revocation": b64(bad.encode())}),
                 "invalid_revocation")
