"""Directory and prekeys: usernames → account key and device certificates
(docs/protocol.md §Directory).

The server checks every signature it is handed (certificates on upload,
prekey signatures against the uploading device's certificate) but can make
none. Accounts are cached in memory: every write goes through
:class:`Directory`, which refreshes the cache after the write is durable and
(with several nodes) tells the others through ``on_change`` so they drop
their copy (:meth:`Directory.invalidate`). A deleted account is kept as a
tombstone: :meth:`Directory.account` answers ``None`` for it (lookups say
``unknown_user``) while :meth:`Directory.exists` still says the name is taken.

Prekeys are stored as the encoded ``SignedPrekey`` bytes the device made and
checked with :class:`sottovoce.identity.prekeys.SignedPrekey`, the same class
the devices sign with (it lives in ``identity/`` so the server never imports
the pairwise package: docs/architecture.md §Rules).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from sottovoce.errors import PrekeyBundleError
from sottovoce.identity import DeviceCertificate
from sottovoce.identity.prekeys import SignedPrekey
from sottovoce.limits import MAX_BLOCKED_ACCOUNTS, MAX_PREKEYS_PER_DEVICE
from sottovoce.server.errors import WireFailure, decoded
from sottovoce.server.ratelimit import ClaimLimits
from sottovoce.server.storage.base import (
    AccountRecord,
    ClaimedPrekey,
    DeviceExists,
    PrekeysFull,
    Storage,
    UnknownAccount,
    UsernameTaken,
)


def verify_prekey(raw: bytes, cert: DeviceCertificate, *, fallback: bool) -> SignedPrekey:
    """Decode an uploaded prekey and check the device signed it for this slot."""
    pk = decoded(SignedPrekey.decode, raw, "invalid_prekey", "prekey")
    if pk.fallback != fallback:
        raise WireFailure("invalid_prekey", "prekey fallback flag does not match its slot")
    try:
        pk.verify(cert)
    except PrekeyBundleError:
        raise WireFailure("invalid_prekey", "prekey is not signed by this device") from None
    return pk


class Directory:
    def __init__(
        self, storage: Storage, on_change: Callable[[str], None] | None = None
    ) -> None:
        self._storage = storage
        self._accounts: dict[str, AccountRecord] = {}
        #: Bumped whenever a cached account changes; caches derived from accounts check it.
        self.version = 0
        #: Called with the user id after a write to that account is durable.
        self.on_change = on_change
        #: Awaited after a change the key-transparency log records (registration, device
        #: added or revoked, deletion): returns once a checkpoint covers it (bounded).
        self.kt_changed: Callable[[], Awaitable[None]] | None = None

    async def logged(self) -> None:
        """The change just stored is in the key-transparency log: wait (boundedly) for the
        checkpoint round that covers it, so the answer to the change can be proved."""
        if self.kt_changed is not None:
            await self.kt_changed()

    def cached(self, user_id: str) -> AccountRecord | None:
        rec = self._accounts.get(user_id)
        return None if rec is None or rec.deleted else rec

    async def _record(self, user_id: str) -> AccountRecord | None:
        """The stored record, a deleted account's tombstone included."""
        rec = self._accounts.get(user_id)
        if rec is None:
            version = self.version
            rec = await self._storage.get_account(user_id)
            # An invalidation that arrived during the read may make `rec` stale: don't keep it.
            if rec is not None and version == self.version:
                self._accounts[user_id] = rec
        return rec

    async def account(self, user_id: str) -> AccountRecord | None:
        """The live account: ``None`` when there is none or it was deleted."""
        rec = await self._record(user_id)
        return None if rec is None or rec.deleted else rec

    def invalidate(self, user_id: str) -> None:
        """Another node changed this account: drop the cached copy."""
        self._accounts.pop(user_id, None)
        self.version += 1

    async def refresh(self, user_id: str) -> AccountRecord | None:
        self.invalidate(user_id)
        if self.on_change is not None:
            self.on_change(user_id)
        return await self.account(user_id)

    async def one_time_claims(
        self, limits: ClaimLimits, kind: str, requester: str, target: str
    ) -> bool:
        """Whether ``requester`` may take ``target``'s one-time keys of ``kind`` now (see
        :class:`ClaimLimits`); ``unknown_user`` if ``target`` has no account."""
        if await self.account(target) is None:
            raise WireFailure("unknown_user", "no such user")
        return limits.one_time(kind, requester, target)

    async def exists(self, user_id: str) -> bool:
        """Whether the name is taken (a deleted account's tombstone keeps it taken)."""
        return await self._record(user_id) is not None

    async def register(
        self, cert: DeviceCertificate, raw_cert: bytes, now_ms: int,
        recovery_key: bytes | None = None,
    ) -> None:
        try:
            await self._storage.create_account(
                cert.username, cert.account_key, cert.device_id, raw_cert, now_ms, recovery_key
            )
        except UsernameTaken:
            raise WireFailure("username_taken", "username is taken") from None
        await self.refresh(cert.username)
        await self.logged()

    async def add_device(self, cert: DeviceCertificate, raw_cert: bytes, now_ms: int) -> None:
        try:
            await self._storage.add_device(cert.username, cert.device_id, raw_cert, now_ms)
        except UnknownAccount:
            raise WireFailure("unknown_user", "no such account") from None
        except DeviceExists:
            raise WireFailure("device_exists", "device id is already registered") from None
        await self.refresh(cert.username)
        await self.logged()

    async def delete(self, user_id: str, now_ms: int) -> tuple[str, ...]:
        """Delete the account (tombstone, see ``Storage.delete_account``); returns the
        device ids that were active until now."""
        try:
            revoked = await self._storage.delete_account(user_id, now_ms)
        except UnknownAccount:
            raise WireFailure("unauthorized", "account no longer exists") from None
        await self.refresh(user_id)
        await self.logged()
        return revoked

    async def set_block(self, user_id: str, peer: str, blocked: bool) -> None:
        """Record ``user_id``'s block of ``peer`` (or lift it); the cached account (here
        and on the other nodes) then carries it, so delivery reads it without a query."""
        rec = await self.account(user_id)
        if rec is None:
            raise WireFailure("unauthorized", "account no longer exists")
        if blocked and peer not in rec.blocked and len(rec.blocked) >= MAX_BLOCKED_ACCOUNTS:
            raise WireFailure("too_many_blocks", "too many blocked accounts")
        if peer == user_id:
            raise WireFailure("invalid_request", "an account cannot block itself")
        await self._storage.set_block(user_id, peer, blocked)
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
        self, user_id: str, requester: tuple[str, str], *, one_time: bool = True
    ) -> list[ClaimedPrekey]:
        """One bundle per active device of ``user_id`` but the requester's own;
        ``one_time=False`` (a limited requester): fallback keys only."""
        if await self.account(user_id) is None:
            raise WireFailure("unknown_user", "no such user")
        return await self._storage.claim_prekeys(user_id, requester, one_time=one_time)
