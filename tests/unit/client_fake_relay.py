"""An in-memory stand-in for the relay, for unit tests of the client state machine.

It speaks just enough of the KSMP v3 contract (protocol/events.py) to drive
``sottovoce.client.Client`` without sockets: challenge/auth, register and
device.add, directory, prekeys, send (device check, idempotency, one serverSeq
per send), per-device inbox with global sequence, resume/replay, ack.read.
Tests can drop connections, duplicate frames and refuse sends. It is not the
server (that is ``sottovoce.server``, exercised by tests/integration/).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from sottovoce.client.connection import TransportClosed
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.identity import DeviceCertificate
from sottovoce.kt.map import ChangeKind
from sottovoce.pairwise import PrekeyBundle, SignedPrekey
from sottovoce.protocol import events as ev
from sottovoce.protocol.fields import b64
from tests.unit.kt_fake_log import FakeLog

NOW = 0


@dataclass
class _Socket:
    relay: FakeRelay
    incoming: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    nonce: bytes = b""
    who: tuple[str, str] | None = None
    closed: bool = False

    # --- the client's side (Transport) ---
    async def send(self, text: str) -> None:
        if self.closed:
            raise TransportClosed
        self.relay.handle(self, text)

    async def recv(self) -> str:
        if self.closed:
            raise TransportClosed
        item = await self.incoming.get()
        if item is None:
            raise TransportClosed
        return item

    async def close(self) -> None:
        self.relay.disconnect(self)

    # --- the relay's side ---
    def push(self, text: str) -> None:
        if not self.closed:
            self.incoming.put_nowait(text)


@dataclass
class FakeRelay:
    accounts: dict[str, bytes] = field(default_factory=dict)
    devices: dict[tuple[str, str], DeviceCertificate] = field(default_factory=dict)
    prekeys: dict[tuple[str, str], list[SignedPrekey]] = field(default_factory=dict)
    fallback: dict[tuple[str, str], SignedPrekey] = field(default_factory=dict)
    inbox: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    next_global: dict[tuple[str, str], int] = field(default_factory=dict)
    conv_seq: dict[str, int] = field(default_factory=dict)
    ephemeral_seq: int = 0
    #: Ephemeral sends (typing, delivered receipts, call signals): relayed, never stored.
    live_sends: list[dict[str, Any]] = field(default_factory=list)
    idem: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    online: dict[tuple[str, str], _Socket] = field(default_factory=dict)
    sends: list[dict[str, Any]] = field(default_factory=list)
    #: Drop (do not answer) the next N sends: simulates a crash before the ack.
    swallow_acks: int = 0
    #: Deliver every live frame twice.
    duplicate_frames: bool = False
    #: A transparency log (sottovoce.kt.*); without one those events are unknown.
    kt: FakeLog | None = None

    async def connector(self, url: str) -> _Socket:
        sock = _Socket(self)
        sock.nonce = secrets.token_bytes(32)
        sock.push(ev.frame(ev.CHALLENGE, {"nonce": b64(sock.nonce), "serverTimeMs": NOW}))
        return sock

    def disconnect(self, sock: _Socket) -> None:
        sock.closed = True
        sock.incoming.put_nowait(None)
        if sock.who and self.online.get(sock.who) is sock:
            del self.online[sock.who]

    async def drop_all(self) -> None:
        for sock in list(self.online.values()):
            self.disconnect(sock)

    # --- dispatch ---

    def handle(self, sock: _Socket, text: str) -> None:
        event, rid, data = ev.parse_frame(text)
        if sock.who is None:
            if event in ("sottovoce.register", "sottovoce.device.add", "sottovoce.auth"):
                self._auth(sock, event, rid, data)
            else:
                self._error(sock, rid, "unauthenticated", "authenticate first")
            return
        if event == "ksmpv3.resume":
            last = data.get("lastGlobalInboxSeq", 0)
            top = last
            for seq, env in self.inbox.get(sock.who, []):
                if seq > last:
                    sock.push(ev.inbox_frame(seq, env))
                    top = seq
            sock.push(ev.frame(ev.REPLAY_DONE, {"upToGlobalInboxSeq": top}))
        elif event == "ksmpv3.ack.read":
            up = data["upToGlobalInboxSeq"]
            self.inbox[sock.who] = [(s, e) for s, e in self.inbox.get(sock.who, []) if s > up]
        elif event == "ping":
            sock.push(ev.frame(ev.PONG, {}))
        elif event == "sottovoce.directory.lookup":
            name = data["username"]
            if name not in self.accounts:
                self._error(sock, rid, "unknown_user", "no such user")
                return
            devices = [
                {"deviceId": d, "certificate": b64(c.encode())}
                for (u, d), c in sorted(self.devices.items())
                if u == name
            ]
            sock.push(
                ev.frame(
                    ev.DIRECTORY_RESULT,
                    {
                        "username": name,
                        "accountKey": b64(self.accounts[name]),
                        "devices": devices,
                        "revokedDeviceIds": [],
                    },
                    rid,
                )
            )
        elif event == "sottovoce.prekeys.upload":
            upload = ev.PrekeysUpload.from_data(data)
            keys = [SignedPrekey.decode(k) for k in upload.oneTimeKeys]
            self.prekeys.setdefault(sock.who, []).extend(keys)
            if upload.fallbackKey is not None:
                self.fallback[sock.who] = SignedPrekey.decode(upload.fallbackKey)
            sock.push(
                ev.frame(ev.PREKEYS_STORED, {"oneTimeKeys": len(self.prekeys[sock.who])}, rid)
            )
        elif event == "sottovoce.prekeys.claim":
            name = data["username"]
            bundles = []
            for (u, d), cert in sorted(self.devices.items()):
                if u != name:
                    continue
                stock = self.prekeys.get((u, d), [])
                key = stock.pop(0) if stock else self.fallback.get((u, d))
                if key is not None:
                    bundles.append(b64(PrekeyBundle(certificate=cert, prekey=key).encode()))
            sock.push(ev.frame(ev.PREKEY_BUNDLES, {"username": name, "bundles": bundles}, rid))
        elif event == "ksmpv3.send":
            self._send(sock, rid, ev.Send.from_data(data))
        elif event.startswith("sottovoce.kt.") and self.kt is not None:
            name, out = self.kt.answer(sock.who[0], event, data)
            sock.push(ev.frame(name, out, rid))
        else:
            self._error(sock, rid, "unknown_event", "unknown event")

    def log_account(self, username: str, kind: ChangeKind) -> None:
        """Append ``username``'s directory state to the transparency log (if there is one)."""
        if self.kt is not None:
            certs = [c for (u, _), c in self.devices.items() if u == username]
            self.kt.record(username, self.accounts[username], certs, kind)

    def _error(self, sock: _Socket, rid: str | None, code: str, msg: str, **extra: Any) -> None:
        err = ev.WireError(code=code, message=msg, **extra)
        sock.push(ev.frame(ev.ERROR, err.to_data(), rid))

    def _auth(self, sock: _Socket, event: str, rid: str | None, data: dict[str, Any]) -> None:
        if event == "sottovoce.auth":
            auth = ev.Auth.from_data(data)
            cert = self.devices.get((auth.username, auth.deviceId))
            if cert is None:
                self._error(sock, rid, "unknown_device", "no such device")
                return
            ed25519_verify(
                cert.keys.signing_key,
                ev.auth_message(sock.nonce, auth.username, auth.deviceId),
                auth.signature,
            )
            sock.who = (auth.username, auth.deviceId)
            old = self.online.get(sock.who)
            if old is not None:
                self.disconnect(old)
            self.online[sock.who] = sock
            sock.push(
                ev.frame(
                    ev.CONNECTED,
                    {
                        "userId": auth.username,
                        "deviceId": auth.deviceId,
                        "serverTimeMs": NOW,
                        "latestGlobalInboxSeq": self.next_global.get(sock.who, 0),
                        "heartbeatMs": 20_000,
                    },
                )
            )
            return
        reg = ev.Register.from_data(data)
        cert = DeviceCertificate.decode(reg.certificate)
        ed25519_verify(
            cert.keys.signing_key,
            ev.auth_message(sock.nonce, cert.username, cert.device_id),
            reg.signature,
        )
        if event == "sottovoce.register":
            if cert.username in self.accounts:
                self._error(sock, rid, "username_taken", "taken")
                return
            self.accounts[cert.username] = cert.account_key
        elif self.accounts.get(cert.username) != cert.account_key:
            self._error(sock, rid, "invalid_certificate", "wrong account key")
            return
        self.devices[(cert.username, cert.device_id)] = cert
        self.log_account(cert.username, ChangeKind.REGISTRATION if event == "sottovoce.register"
                         else ChangeKind.DEVICE_ADDED)
        sock.push(ev.frame(ev.REGISTERED, {
            "userId": cert.username, "deviceId": cert.device_id, "serverTimeMs": 0,
            "latestGlobalInboxSeq": 0, "heartbeatMs": 20_000,
        }, rid))

    def _relay_live(self, sock: _Socket, rid: str | None, send: ev.Send) -> None:
        """An ephemeral send: to the target devices online (globalInboxSeq 0), never stored,
        no serverSeq (as the server does: docs/protocol.md §Ephemeral)."""
        assert sock.who is not None
        self.ephemeral_seq += 1
        for c in send.ciphertexts:
            live = self.online.get((c.userId, c.deviceId))
            if live is None:
                continue
            env = ev.Envelope(
                conversationId=send.conversationId, messageId=send.messageId,
                senderUserId=sock.who[0], senderDeviceId=sock.who[1],
                recipientUserId=send.recipientUserId, ciphertext=c.ciphertext,
                contentType=send.contentType, clientCreatedAtMs=send.clientCreatedAtMs,
                ephemeral=True, ephemeralSeq=self.ephemeral_seq, serverReceivedAtMs=NOW,
                idempotencyKey=send.idempotencyKey,
            ).to_wire()
            live.push(ev.inbox_frame(0, env))
        sock.push(ev.frame(ev.SEND_ACK, {
            "messageId": send.messageId, "idempotencyKey": send.idempotencyKey,
            "conversationId": send.conversationId, "ephemeral": True,
            "ephemeralSeq": self.ephemeral_seq, "serverReceivedAtMs": NOW, "duplicate": False,
        }, rid))

    def _send(self, sock: _Socket, rid: str | None, send: ev.Send) -> None:
        assert sock.who is not None
        user, dev = sock.who
        key = (user, dev, send.idempotencyKey)
        if key in self.idem:
            sock.push(ev.frame(ev.SEND_ACK, {**self.idem[key], "duplicate": True}, rid))
            return
        expected = {k for k in self.devices if k[0] == send.recipientUserId}
        expected |= {k for k in self.devices if k[0] == user and k[1] != dev}
        got = {(c.userId, c.deviceId) for c in send.ciphertexts}
        if got != expected:
            missing = [{"userId": u, "deviceId": d} for u, d in sorted(expected - got)]
            stale = [{"userId": u, "deviceId": d} for u, d in sorted(got - expected)]
            self._error(
                sock,
                rid,
                "device_mismatch",
                "device list changed",
                messageId=send.messageId,
                details={"missing": missing, "stale": stale},
            )
            return
        if send.ephemeral:
            self.live_sends.append(send.to_data())
            self._relay_live(sock, rid, send)
            return
        self.sends.append(send.to_data())
        seq = self.conv_seq.get(send.conversationId, 0) + 1
        self.conv_seq[send.conversationId] = seq
        ack = {
            "messageId": send.messageId,
            "idempotencyKey": send.idempotencyKey,
            "conversationId": send.conversationId,
            "serverSeq": seq,
            "serverReceivedAtMs": NOW,
            "duplicate": False,
        }
        self.idem[key] = ack
        for c in send.ciphertexts:
            target = (c.userId, c.deviceId)
            gseq = self.next_global.get(target, 0) + 1
            self.next_global[target] = gseq
            env = ev.Envelope(
                conversationId=send.conversationId,
                messageId=send.messageId,
                senderUserId=user,
                senderDeviceId=dev,
                recipientUserId=send.recipientUserId,
                ciphertext=c.ciphertext,
                contentType=send.contentType,
                clientCreatedAtMs=send.clientCreatedAtMs,
                serverSeq=seq,
                serverReceivedAtMs=NOW,
                idempotencyKey=send.idempotencyKey,
            ).to_wire()
            self.inbox.setdefault(target, []).append((gseq, env))
            live = self.online.get(target)
            if live is not None:
                live.push(ev.inbox_frame(gseq, env))
                if self.duplicate_frames:
                    live.push(ev.inbox_frame(gseq, env))
        if self.swallow_acks > 0:
            self.swallow_acks -= 1
            return
        sock.push(ev.frame(ev.SEND_ACK, ack, rid))
