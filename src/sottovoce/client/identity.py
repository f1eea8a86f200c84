"""This device's identity: who it is, its private keys, its certificate (DESIGN §3).

Made once (``account create`` or ``add_device``) and kept sealed in the local
store; the Olm account is sealed separately because it changes whenever an
inbound prekey message consumes a one-time key.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.rng import Random
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

_VERSION = 1


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
        device_key = DeviceSigningKey.generate(rng)
        olm = OlmAccount.create(username=username, device_id=device)
        cert = DeviceCertificate.issue(
            ak,
            username=username,
            device_id=device,
            keys=DevicePublicKeys(
                signing_key=device_key.public,
                olm_identity_key=olm.identity_key,
                olm_signing_key=olm.signing_key,
            ),
            now_ms=now_ms,
        )
        ident = cls(
            username=username,
            device_id=device,
            server_url=server_url,
            account_key=ak,
            device_key=device_key,
            certificate=cert,
        )
        return ident, olm

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
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> LocalIdentity:
        def read(r: Reader) -> LocalIdentity:
            if r.u8() != _VERSION:
                raise DecodeError("unknown identity record version")
            return cls(
                username=r.opaque8().decode("ascii"),
                device_id=r.opaque8().decode("ascii"),
                server_url=r.opaque16().decode("utf-8"),
                account_key=AccountKey(r.opaque8()),
                device_key=DeviceSigningKey(r.opaque8()),
                certificate=DeviceCertificate.decode(r.opaque_v()),
            )

        return decode(read, data)
