"""A device's Olm account: its Olm identity keys and its stock of one-time keys.

Wraps ``vodozemac.Account``; no vodozemac type leaves ``pairwise/``. (vodozemac
draws its own key randomness inside Rust; everything of ours takes ``rng``.)
"""

from __future__ import annotations

import base64

import vodozemac

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import open_record, seal_record
from sottovoce.errors import DecodeError, DecryptionError, SealedStateError
from sottovoce.identity.keys import DeviceSigningKey
from sottovoce.limits import ONE_TIME_KEYS_BATCH
from sottovoce.pairwise.prekeys import SignedPrekey
from sottovoce.secret import Secret

#: vodozemac's pickle encryption is deterministic; we seal pickles ourselves, so
#: the pickle key is only a formality (crypto/sealed.py).
PICKLE_KEY = bytes(32)
_ACCOUNT_KIND = b"olm-account"


class OlmAccount:
    """The Olm half of a device (identity keys, one-time keys, fallback key)."""

    __slots__ = ("_account", "device_id", "username")

    def __init__(self, account: vodozemac.Account, *, username: str, device_id: str) -> None:
        self._account = account
        self.username = username
        self.device_id = device_id

    @classmethod
    def create(cls, *, username: str, device_id: str) -> OlmAccount:
        return cls(vodozemac.Account(), username=username, device_id=device_id)

    def __repr__(self) -> str:
        return f"OlmAccount({self.username}/{self.device_id}, <redacted>)"

    # --- identity ----------------------------------------------------------------

    @property
    def identity_key(self) -> bytes:
        """Curve25519 identity key (goes into the device certificate)."""
        return self._account.curve25519_key.to_bytes()

    @property
    def signing_key(self) -> bytes:
        """Olm's Ed25519 key (goes into the device certificate)."""
        b64 = self._account.ed25519_key.to_base64()
        return base64.b64decode(b64 + "=" * (-len(b64) % 4))

    # --- prekeys -------------------------------------------------------------------

    def _sign(
        self, device_key: DeviceSigningKey, key_id: str, public: bytes, fallback: bool
    ) -> SignedPrekey:
        return SignedPrekey.sign(
            device_key,
            username=self.username,
            device_id=self.device_id,
            key_id=key_id,
            public_key=public,
            fallback=fallback,
        )

    def new_one_time_keys(
        self, device_key: DeviceSigningKey, count: int = ONE_TIME_KEYS_BATCH
    ) -> list[SignedPrekey]:
        """Generate ``count`` one-time keys, sign them, and mark them published.

        The caller uploads the result; after a crash before the upload, the
        keys are simply never handed out (a later batch replaces them).
        """
        count = max(0, min(count, self._account.max_number_of_one_time_keys))
        self._account.generate_one_time_keys(count)
        keys = [
            self._sign(device_key, key_id, pub.to_bytes(), False)
            for key_id, pub in self._account.one_time_keys.items()
        ]
        self._account.mark_keys_as_published()
        return keys

    def new_fallback_key(self, device_key: DeviceSigningKey) -> SignedPrekey:
        """Rotate the fallback key (used when one-time keys run out)."""
        # Present at run time, missing from vodozemac 0.10's type stubs.
        self._account.generate_fallback_key()  # type: ignore[attr-defined]
        fallback: dict[str, vodozemac.Curve25519PublicKey] = self._account.fallback_key  # type: ignore[attr-defined]
        key_id, pub = next(iter(fallback.items()))
        self._account.mark_keys_as_published()
        return self._sign(device_key, key_id, pub.to_bytes(), True)

    # --- internals for session.py ------------------------------------------------

    def _vodozemac(self) -> vodozemac.Account:
        return self._account

    # --- sealing -----------------------------------------------------------------

    def seal(self, storage_key: Secret, rng: Random) -> bytes:
        w = Writer()
        w.opaque8(self.username.encode("ascii"))
        w.opaque8(self.device_id.encode("ascii"))
        w.opaque_v(self._account.pickle(PICKLE_KEY).encode("ascii"))
        return seal_record(storage_key, _ACCOUNT_KIND, self.device_id.encode(), w.getvalue(), rng)

    @classmethod
    def restore(cls, storage_key: Secret, device_id: str, sealed: bytes) -> OlmAccount:
        try:
            raw = open_record(storage_key, _ACCOUNT_KIND, device_id.encode(), sealed)
        except DecryptionError:
            raise SealedStateError("sealed account could not be opened") from None

        def read(r: Reader) -> OlmAccount:
            username = r.opaque8().decode("ascii")
            dev = r.opaque8().decode("ascii")
            pickle = r.opaque_v().decode("ascii")
            try:
                acc = vodozemac.Account.from_pickle(pickle, PICKLE_KEY)
            except vodozemac.PickleException:
                raise DecodeError("account pickle is invalid") from None
            return cls(acc, username=username, device_id=dev)

        try:
            return decode(read, raw)
        except DecodeError:
            raise SealedStateError("sealed account is corrupt") from None
