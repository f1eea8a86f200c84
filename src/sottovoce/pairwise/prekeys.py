"""Prekey bundles (docs/architecture.md §1:1 messages): a device certificate and one signed prekey.

A bundle is only usable after the certificate *and* the prekey signature have
been checked (:meth:`PrekeyBundle.verify`). ``SignedPrekey`` itself lives in
:mod:`sottovoce.identity.prekeys` (the server checks it too) and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.errors import IdentityError, PrekeyBundleError
from sottovoce.identity.certificates import DeviceCertificate
from sottovoce.identity.prekeys import SignedPrekey

__all__ = ["PrekeyBundle", "SignedPrekey"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PrekeyBundle(WireStruct):
    """What the directory hands out for one device: its certificate and one prekey."""

    certificate: DeviceCertificate
    prekey: SignedPrekey

    def verify(
        self,
        *,
        now_ms: int,
        account_key: bytes | None = None,
        username: str | None = None,
        revoked_device_ids: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """Check the certificate (signature, binding, expiry, revocation) and the prekey.

        Raises :class:`PrekeyBundleError` (wrapping the identity error) on failure.
        """
        try:
            self.certificate.verify(
                now_ms=now_ms,
                account_key=account_key,
                username=username,
                revoked_device_ids=revoked_device_ids,
            )
        except IdentityError as exc:
            raise PrekeyBundleError(f"device certificate rejected: {exc}") from exc
        self.prekey.verify(self.certificate)

    def write(self, w: Writer) -> None:
        self.certificate.write(w)
        self.prekey.write(w)

    @classmethod
    def read(cls, r: Reader) -> PrekeyBundle:
        return cls(certificate=DeviceCertificate.read(r), prekey=SignedPrekey.read(r))
