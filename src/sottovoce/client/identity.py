"""This device's identity: who it is, its private keys, its certificate
(docs/architecture.md §Identity).

Made once (``account create`` or ``add_device``) and kept sealed in the local
store; the Olm account is sealed separately because it changes whenever an
inbound prekey message consumes a one-time key.

The MLS signature key (docs/architecture.md §Identity) signs this device's KeyPackages and leaf
nodes in rooms; its public half is in the device certificate, so a member who
adds us can check a claimed KeyPackage against the directory. Identities of
record version 1 predate rooms and have none (``mls_key is None``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.errors import DecodeError
from sottovoce.identity import (
    AccountKey,
    DeviceCertificate,
    DevicePublicKeys,
    DeviceSigningKey,
    validate_device_id,
    validate_username,
)
from sottovoce.pairwise import OlmAccount

_VERSION = 2
_VERSION_NO_MLS = 1


@dataclass(frozen=True, slots=True, repr=False)
class DeviceKeys:
    """A new device's private keys and Olm account, and the public keys its certificate
    binds: made the same way for a new account, an added device and a linked one."""

    device_key: DeviceSigningKey
    mls_key: SigningKey
    olm: OlmAccount
    public: DevicePublicKeys

    @classmethod
    def generate(cls, *, username: str, device_id: str, rng: Random) -> DeviceKeys:
        device_key = DeviceSigningKey.generate(rng)
        mls_key = SigningKey.generate(SignatureScheme.ED25519, rng)
        olm = OlmAccount.create(username=username, device_id=device_id)
        public = DevicePublicKeys(
            signing_key=device_key.public,
            olm_identity_key=olm.identity_key,
            olm_signing_key=olm.signing_key,
            mls_signature_key=mls_key.verify_key.data,
        )
        return cls(device_key, mls_key, olm, public)

    def __repr__(self) -> str:
        return "DeviceKeys(...)"


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalIdentity:
    username: str
    device_id: str
    server_url: str
    #: The account key; every device of the account keeps it so that it can
    #: certify a new device (see ``Client.add_device``).
    account_key: AccountKey
    device_key: DeviceSigningKey
    certificate: DeviceCertificate
    #: Ed25519 MLS signature key (RFC 9420 §5.1.2); ``None`` on pre-rooms identities.
    mls_key: SigningKey | None = None

    def __repr__(self) -> str:
        return f"LocalIdentity({self.username}/{self.device_id} @ {self.server_url})"

    @classmethod
    def new(
        cls,
        *,
        username: str,
        server_url: str,
        now_ms: int,
        rng: Random,
        account_key: AccountKey | None = None,
        device_id: str | None = None,
    ) -> tuple[LocalIdentity, OlmAccount]:
        """Fresh device keys and an Olm account, certified by ``account_key`` (new if None)."""
        validate_username(username)
        device = validate_device_id(device_id or rng(8).hex())
        ak = account_key if account_key is not None else AccountKey.generate(rng)
        keys = DeviceKeys.generate(username=username, device_id=device, rng=rng)
        cert = DeviceCertificate.issue(
            ak, username=username, device_id=device, keys=keys.public, now_ms=now_ms
        )
        ident = cls(
            username=username, device_id=device, server_url=server_url, account_key=ak,
            device_key=keys.device_key, certificate=cert, mls_key=keys.mls_key,
        )
        return ident, keys.olm

    def encode(self) -> bytes:
        """Private keys included: only ever stored sealed."""
        w = Writer()
        w.u8(_VERSION)
        w.opaque8(self.username.encode("ascii"))
        w.opaque8(self.device_id.encode("ascii"))
        w.opaque16(self.server_url.encode("utf-8"))
        w.opaque8(self.account_key.private_bytes().expose())
        w.opaque8(self.device_key.private_bytes().expose())
        w.opaque_v(self.certificate.encode())
        w.opaque8(b"" if self.mls_key is None else self.mls_key.private_bytes().expose())
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> LocalIdentity:
        def read(r: Reader) -> LocalIdentity:
            version = r.u8()
            if version not in (_VERSION, _VERSION_NO_MLS):
                raise DecodeError("unknown identity record version")
            username = r.opaque8().decode("ascii")
            device_id = r.opaque8().decode("ascii")
            server_url = r.opaque16().decode("utf-8")
            account_key = AccountKey(r.opaque8())
            device_key = DeviceSigningKey(r.opaque8())
            certificate = DeviceCertificate.decode(r.opaque_v())
            mls_key: SigningKey | None = None
            if version == _VERSION:
                raw = r.opaque8()
                if raw:
                    if len(raw) != 32:
                        raise DecodeError("MLS signature key has the wrong length")
                    mls_key = SigningKey(SignatureScheme.ED25519, raw)
            return cls(
                username=username, device_id=device_id, server_url=server_url,
                account_key=account_key, device_key=device_key, certificate=certificate,
                mls_key=mls_key,
            )

        return decode(read, data)
