"""Directory and prekeys: usernames → account key and device certificates (DESIGN §3, §4).

The server checks every signature it is handed (certificates on upload,
prekey signatures against the uploading device's certificate) but can make
none. Accounts are cached in memory: this process is the only writer, and
every write goes through :class:`Directory`, which refreshes the cache after
the write is durable.

Prekeys are stored as the encoded ``SignedPrekey`` bytes the device made. The
server reads them with its own small reader (it must not import the pairwise
package, DESIGN §2); the layout and signed bytes mirror
``sottovoce.pairwise.prekeys.SignedPrekey`` and the conformance suite uploads
keys made by that class, so a drift fails a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import DecodeError, SignatureError
from sottovoce.identity import DeviceCertificate
from sottovoce.limits import MAX_PREKEYS_PER_DEVICE
from sottovoce.server.errors import WireFailure
from sottovoce.server.storage.base import (
    AccountRecord,
    ClaimedPrekey,
    DeviceExists,
    PrekeysFull,
    Storage,
    UnknownAccount,
    UsernameTaken,
)

_PREKEY_DOMAIN = b"sottovoce prekey v1"
_KEY_LEN = 32
_SIG_LEN = 64
_KEY_ID_MAX = 64


@dataclass(frozen=True, slots=True)
class PrekeyView:
    key_id: str
    public_key: bytes
    fallback: bool
    signature: bytes


def read_prekey(raw: bytes) -> PrekeyView:
    """Decode an encoded SignedPrekey (opaque8 id, opaque8 key, bool, opaque8 sig)."""

    def read(r: Reader) -> PrekeyView:
        key_id, public, fallback, sig = r.opaque8(), r.opaque8(), r.boolean(), r.opaque8()
        if not 0 < len(key_id) <= _KEY_ID_MAX or len(public) != _KEY_LEN or len(sig) != _SIG_LEN:
            raise DecodeError("malformed prekey")
        try:
            kid = key_id.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("prekey id is not ASCII") from None
        return PrekeyView(kid, public, fallback, sig)

    return decode(read, raw)


def verify_prekey(raw: bytes, cert: DeviceCertificate, *, fallback: bool) -> PrekeyView:
    try:
        pk = read_prekey(raw)
    except DecodeError:
        raise WireFailure("invalid_prekey", "prekey does not decode") from None
    if pk.fallback != fallback:
        raise WireFailure("invalid_prekey", "prekey fallback flag does not match its slot")
    w = Writer()
    w.opaque8(_PREKEY_DOMAIN)
    w.opaque8(cert.username.encode("ascii"))
    w.opaque8(cert.device_id.encode("ascii"))
    w.opaque8(pk.key_id.encode("ascii"))
    w.opaque8(pk.public_key)
    w.boolean(pk.fallback)
    try:
        ed25519_verify(cert.keys.signing_key, w.getvalue(), pk.signature)
    except SignatureError:
        raise WireFailure("invalid_prekey", "prekey is not signed by this device") from None
    return pk


class Directory:
    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._accounts: dict[str, AccountRecord] = {}
        #: Bumped whenever a cached account changes; caches derived from accounts check it.
        self.version = 0

    def cached(self, user_id: str) -> AccountRecord | None:
        return self._accounts.get(user_id)

    async def account(self, user_id: str) -> AccountRecord | None:
        rec = self._accounts.get(user_id)
        if rec is None:
            rec = await self._storage.get_account(user_id)
            if rec is not None:
                self._accounts[user_id] = rec
        return rec

    async def refresh(self, user_id: str) -> AccountRecord | None:
        self._accounts.pop(user_id, None)
        self.version += 1
        return await self.account(user_id)

    async def exists(self, user_id: str) -> bool:
        return await self.account(user_id) is not None

    async def register(self, cert: DeviceCertificate, raw_cert: bytes, now_ms: int) -> None:
        try:
            await self._storage.create_account(
                cert.username, cert.account_key, cert.device_id, raw_cert, now_ms
            )
        except UsernameTaken:
            raise WireFailure("username_taken", "username is taken") from None
        await self.refresh(cert.username)

    async def add_device(self, cert: DeviceCertificate, raw_cert: bytes, now_ms: int) -> None:
        try:
            await self._storage.add_device(cert.username, cert.device_id, raw_cert, now_ms)
        except UnknownAccount:
            raise WireFailure("unknown_user", "no such account") from None
        except DeviceExists:
            raise WireFailure("device_exists", "device id is already registered") from None
        await self.refresh(cert.username)

    async def revoke(self, user_id: str, device_id: str, now_ms: int) -> None:
        try:
            await self._storage.revoke_device(user_id, device_id, now_ms)
        except UnknownAccount:
            raise WireFailure("bad_request", "no such device") from None
        await self.refresh(user_id)

    async def set_push(self, user_id: str, device_id: str, endpoint: str | None) -> None:
        await self._storage.set_push_endpoint(user_id, device_id, endpoint)
        await self.refresh(user_id)

    async def store_prekeys(
        self,
        rec: AccountRecord,
        device_id: str,
        one_time: Sequence[bytes],
        fallback: bytes | None,
        now_ms: int,
    ) -> int:
        dev = rec.device(device_id)
        if dev is None:
            raise WireFailure("unauthorized", "device is not registered")
        cert = DeviceCertificate.decode(dev.certificate)
        keys: list[tuple[str, bytes]] = []
        for raw in one_time:
            keys.append((verify_prekey(raw, cert, fallback=False).key_id, raw))
        if fallback is not None:
            verify_prekey(fallback, cert, fallback=True)
        try:
            return await self._storage.store_prekeys(
                rec.user_id, device_id, keys, fallback, MAX_PREKEYS_PER_DEVICE
            )
        except PrekeysFull:
            raise WireFailure(
                "prekeys_full", f"at most {MAX_PREKEYS_PER_DEVICE} one-time keys per device"
            ) from None

    async def claim(
        self, user_id: str, requester: tuple[str, str]
    ) -> list[ClaimedPrekey]:
        if await self.account(user_id) is None:
            raise WireFailure("unknown_user", "no such user")
        return await self._storage.claim_prekeys(user_id, requester)
