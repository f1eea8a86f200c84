"""A small raw KSMP v3 client for the conformance suite: JSON frames, no SDK.

It signs challenges with ``sottovoce.identity`` keys and otherwise speaks the
wire format directly, so the suite checks the server, not a client library.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
from sottovoce.protocol.events import auth_message, dm_conversation_id
from sottovoce.protocol.pow import solve as pow_solve

TIMEOUT = 10.0
#: Unsolicited server notices; ``recv``/``expect`` set them aside in ``notices``.
NOTICES = frozenset({"sottovoce.prekeys.low", "sottovoce.device.added", "sottovoce.device.revoked"})
_counter = itertools.count(1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def unique_name(prefix: str = "u") -> str:
    """A fresh valid username (tests may share one server via SOTTOVOCE_CONFORMANCE_URL)."""
    return f"{prefix}{secrets.token_hex(5)}"


@dataclass
class Device:
    """One device of an account: its keys and certificate (Olm keys are random stand-ins;
    the MLS signature key is real, for the room rules the server checks with it)."""

    username: str
    device_id: str
    account_key: AccountKey
    device_key: DeviceSigningKey
    certificate: DeviceCertificate
    mls_key: SigningKey

    @classmethod
    def new(
        cls,
        username: str | None = None,
        device_id: str = "d1",
        account_key: AccountKey | None = None,
        *,
        olm_identity_key: bytes | None = None,
        olm_signing_key: bytes | None = None,
    ) -> Device:
        username = username or unique_name()
        ak = account_key or AccountKey.generate(secrets.token_bytes)
        dk = DeviceSigningKey.generate(secrets.token_bytes)
        mls_key = SigningKey.generate(SignatureScheme.ED25519, secrets.token_bytes)
        keys = DevicePublicKeys(
            signing_key=dk.public,
            olm_identity_key=olm_identity_key or secrets.token_bytes(32),
            olm_signing_key=olm_signing_key or secrets.token_bytes(32),
            mls_signature_key=mls_key.verify_key.data,
        )
        cert = DeviceCertificate.issue(
            ak, username=username, device_id=device_id, keys=keys, now_ms=now_ms()
        )
        return cls(username, device_id, ak, dk, cert, mls_key)

    def sibling(self, device_id: str) -> Device:
        """Another device of the same account (certificate signed by the same account key)."""
        return Device.new(self.username, device_id, self.account_key)

    def sign_challenge(self, nonce: bytes) -> bytes:
        return self.device_key.sign(auth_message(nonce, self.username, self.device_id))


@dataclass
class RawClient:
    ws: ClientConnection
    nonce: bytes = b""
    device: Device | None = None
    connected: dict[str, Any] = field(default_factory=dict)
    replay_done: dict[str, Any] = field(default_factory=dict)
    notices: list[dict[str, Any]] = field(default_factory=list)
    _backlog: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def open(cls, ws_url: str, **kwargs: Any) -> RawClient:
        ws = await connect(ws_url, max_size=None, compression=None, open_timeout=TIMEOUT,
                           **kwargs)
        client = cls(ws)
        challenge = await client.expect("sottovoce.challenge")
        client.nonce = unb64(challenge["data"]["nonce"])
        return client

    async def close(self) -> None:
        await self.ws.close()

    # --- frames ---------------------------------------------------------------------

    async def send(self, event: str, data: dict[str, Any], request_id: str | None = None) -> str:
        rid = request_id or f"r{next(_counter)}"
        await self.ws.send(json.dumps({"event": event, "requestId": rid, "data": data}))
        return rid

    async def send_raw(self, text: str | bytes) -> None:
        await self.ws.send(text)

    async def _read(self, timeout: float) -> dict[str, Any]:
        """The next frame off the socket, notices set aside."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame in time")
            obj: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if obj.get("event") in NOTICES and "requestId" not in obj:
                self.notices.append(obj)
                continue
            return obj

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if self._backlog:
            return self._backlog.pop(0)
        return await self._read(timeout)

    async def expect(self, event: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be ``event``."""
        frame = await self.recv(timeout)
        if frame["event"] != event:
            raise AssertionError(f"expected {event}, got {frame}")
        return frame

    async def wait_for(self, event: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame named ``event``; other frames stay queued for later."""
        deadline = time.monotonic() + timeout
        pool = self.notices if event in NOTICES else self._backlog
        for i, f in enumerate(pool):
            if f["event"] == event:
                return pool.pop(i)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {event} within {timeout}s")
            f = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            if f["event"] == event:
                return f  # type: ignore[no-any-return]
            (self.notices if f["event"] in NOTICES else self._backlog).append(f)

    async def nothing(self, timeout: float = 0.3) -> None:
        """Assert that no frame arrives within ``timeout``."""
        if self._backlog:
            raise AssertionError(f"unexpected frame {self._backlog[0]}")
        try:
            f = await self._read(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {f!r}")

    async def request(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        """Send and return the reply carrying our requestId (skipping other frames); a
        ``pow_required`` refusal is solved and the request sent again with ``pow``, as
        the SDK does (client/proof_of_work.py)."""
        for _ in range(3):
            reply = await self._request_once(event, data)
            err = reply["data"] if reply["event"] == "ksmpv3.error" else {}
            if err.get("code") != "pow_required":
                return reply
            proof = pow_solve(unb64(err["details"]["challenge"]))
            data = {**data, "pow": b64(proof)}
        return reply

    async def _request_once(self, event: str, data: dict[str, Any]) -> dict[str, Any]:
        rid = await self.send(event, data)
        deadline = time.monotonic() + TIMEOUT
        for i, f in enumerate(self._backlog):
            if f.get("requestId") == rid:
                return self._backlog.pop(i)
        while True:
            f = await self._read(deadline - time.monotonic())
            if f.get("requestId") == rid:
                return f  # type: ignore[no-any-return]
            self._backlog.append(f)

    # --- session ----------------------------------------------------------------------

    async def register(self, device: Device) -> dict[str, Any]:
        """Register; returns the one reply (sottovoce.registered or ksmpv3.error)."""
        reply = await self.request("sottovoce.register", {
            "certificate": b64(device.certificate.encode()),
            "signature": b64(device.sign_challenge(self.nonce)),
        })
        if reply["event"] == "sottovoce.registered":
            self.device = device
            self.connected = reply["data"]
        return reply

    async def add_device(self, device: Device) -> dict[str, Any]:
        reply = await self.request("sottovoce.device.add", {
            "certificate": b64(device.certificate.encode()),
            "signature": b64(device.sign_challenge(self.nonce)),
        })
        if reply["event"] == "sottovoce.registered":
            self.device = device
            self.connected = reply["data"]
        return reply

    async def auth(self, device: Device, signature: bytes | None = None) -> dict[str, Any]:
        reply = await self.request("sottovoce.auth", {
            "username": device.username,
            "deviceId": device.device_id,
            "signature": b64(signature if signature is not None
                             else device.sign_challenge(self.nonce)),
        })
        if reply["event"] == "ksmpv3.connected":
            self.device = device
            self.connected = reply["data"]
        return reply

    async def new_challenge(self) -> bytes:
        """After a failed auth the server issues a fresh challenge."""
        frame = await self.wait_for("sottovoce.challenge")
        self.nonce = unb64(frame["data"]["nonce"])
        return self.nonce

    async def resume(self, last: int = 0) -> list[dict[str, Any]]:
        """Resume; returns the replayed inbox frames (up to sottovoce.replay.done)."""
        await self.send("ksmpv3.resume", {"lastGlobalInboxSeq": last})
        frames = []
        others = []
        while True:
            f = await self.recv()
            if f["event"] == "sottovoce.replay.done":
                self.replay_done = f["data"]
                self._backlog[:0] = others
                return frames
            if f["event"] == "ksmpv3.inbox.frame":
                frames.append(f)
            else:
                others.append(f)

    def send_data(
        self,
        recipient: str,
        targets: list[tuple[str, str, bytes]],
        *,
        idempotency_key: str | None = None,
        message_id: str | None = None,
        ephemeral: bool = False,
        conversation_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        if self.device is None:
            raise RuntimeError("not authenticated")
        mid = message_id or f"m-{uuid.uuid4().hex}"
        data: dict[str, Any] = {
            "protocol": "ksmpv3",
            "conversationId": conversation_id
            or dm_conversation_id(self.device.username, recipient),
            "messageId": mid,
            "idempotencyKey": idempotency_key or f"k-{uuid.uuid4().hex}",
            "recipientUserId": recipient,
            "contentType": "text",
            "clientCreatedAtMs": now_ms(),
            "ephemeral": ephemeral,
            "ciphertexts": [
                {"userId": u, "deviceId": d, "ciphertext": b64(ct)} for u, d, ct in targets
            ],
        }
        data.update(extra)
        return data

    async def send_message(
        self, recipient: str, targets: list[tuple[str, str, bytes]], **kwargs: Any
    ) -> dict[str, Any]:
        """Send and return the ack (or error) answering it."""
        return await self.request("ksmpv3.send", self.send_data(recipient, targets, **kwargs))


async def registered(ws_url: str, device: Device | None = None) -> RawClient:
    client = await RawClient.open(ws_url)
    reply = await client.register(device or Device.new())
    if reply["event"] != "sottovoce.registered":
        raise AssertionError(f"registration failed: {reply}")
    return client


async def logged_in(ws_url: str, device: Device) -> RawClient:
    client = await RawClient.open(ws_url)
    reply = await client.auth(device)
    if reply["event"] != "ksmpv3.connected":
        raise AssertionError(f"auth failed: {reply}")
    return client
