"""Signed prekeys: a device key's signature over one of its Olm keys
(docs/architecture.md §1:1 messages).

Olm has no signed prekeys of its own, so every one-time and fallback key a
device publishes carries the device key's signature over the key and the
device's identity. The statement lives in ``identity/`` (not ``pairwise/``)
because the server checks these signatures on upload and must never import the
pairwise package; both sides use this one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import DecodeError, PrekeyBundleError, SignatureError
from sottovoce.identity.certificates import DeviceCertificate
from sottovoce.identity.keys import DeviceSigningKey

_PREKEY_DOMAIN = b"sottovoce prekey v1"
_KEY_LEN = 32
_SIG_LEN = 64
_KEY_ID_MAX = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedPrekey(WireStruct):
    """A Curve25519 one-time (or fallback) key, signed by the device key."""

    key_id: str
    public_key: bytes
    fallback: bool
    signature: bytes

    @staticmethod
    def tbs(username: str, device_id: str, key_id: str, public_key: bytes, fallback: bool) -> bytes:
        w = Writer()
        w.opaque8(_PREKEY_DOMAIN)
        w.opaque8(username.encode("ascii"))
        w.opaque8(device_id.encode("ascii"))
        w.opaque8(key_id.encode("ascii"))
        w.opaque8(public_key)
        w.boolean(fallback)
        return w.getvalue()

    @classmethod
    def sign(
        cls,
        signing_key: DeviceSigningKey,
        *,
        username: str,
        device_id: str,
        key_id: str,
        public_key: bytes,
        fallback: bool,
    ) -> SignedPrekey:
        sig = signing_key.sign(cls.tbs(username, device_id, key_id, public_key, fallback))
        return cls(key_id=key_id, public_key=public_key, fallback=fallback, signature=sig)

    def verify(self, certificate: DeviceCertificate) -> None:
        """Raise :class:`PrekeyBundleError` unless the certificate's device signed this key."""
        tbs = self.tbs(
            certificate.username,
            certificate.device_id,
            self.key_id,
            self.public_key,
            self.fallback,
        )
        try:
            ed25519_verify(certificate.keys.signing_key, tbs, self.signature)
        except SignatureError:
            raise PrekeyBundleError("prekey signature is invalid") from None

    def write(self, w: Writer) -> None:
        w.opaque8(self.key_id.encode("ascii"))
        w.opaque8(self.public_key)
        w.boolean(self.fallback)
        w.opaque8(self.signature)

    @classmethod
    def read(cls, r: Reader) -> SignedPrekey:
        key_id = r.opaque8()
        public_key = r.opaque8()
        fallback = r.boolean()
        signature = r.opaque8()
        if not 0 < len(key_id) <= _KEY_ID_MAX or len(public_key) != _KEY_LEN:
            raise DecodeError("malformed prekey")
        if len(signature) != _SIG_LEN:
            raise DecodeError("malformed prekey signature")
        try:
            kid = key_id.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("prekey id is not ASCII") from None
        return cls(key_id=kid, public_key=public_key, fallback=fallback, signature=signature)
