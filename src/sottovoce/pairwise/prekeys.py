"""Prekey bundles (docs/architecture.md §1:1 messages): a device certificate and one signed prekey.

A bundle is only usable after the certificate *and* the prekey signature have
been checked (:meth:`PrekeyBundle.verify`). ``SignedPrekey`` itself lives in
:mod:`sottovoce.identity.prekeys` (the server checks it too) and is re-exported here.
"""

from __future__ import annotations

from typing import Unpack

from sottovoce.codec.tls import TlsStruct, struct_of, tls, tls_struct
from sottovoce.errors import IdentityError, PrekeyBundleError
from sottovoce.identity.certificates import CertificateChecks, DeviceCertificate
from sottovoce.identity.prekeys import SignedPrekey

__all__ = ["PrekeyBundle", "SignedPrekey", "verify_certificate"]


def verify_certificate(
    certificate: DeviceCertificate, what: str, *, now_ms: int, **checks: Unpack[CertificateChecks]
) -> None:
    """:meth:`DeviceCertificate.verify`, a failure raised as :class:`PrekeyBundleError`
    naming ``what`` certificate was rejected (and wrapping the identity error)."""
    try:
        certificate.verify(now_ms=now_ms, **checks)
    except IdentityError as exc:
        raise PrekeyBundleError(f"{what} certificate rejected: {exc}") from exc


@tls_struct
class PrekeyBundle(TlsStruct):
    """What the directory hands out for one device: its certificate and one prekey."""

    certificate: DeviceCertificate = tls(struct_of(DeviceCertificate))
    prekey: SignedPrekey = tls(struct_of(SignedPrekey))

    def verify(self, *, now_ms: int, **checks: Unpack[CertificateChecks]) -> None:
        """Check the certificate (signature, binding, expiry, revocation) and the prekey.

        Raises :class:`PrekeyBundleError` (wrapping the identity error) on failure.
        """
        verify_certificate(self.certificate, "device", now_ms=now_ms, **checks)
        self.prekey.verify(self.certificate)
