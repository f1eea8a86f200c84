"""Device certificates, revocation statements and account deletions
(docs/architecture.md §Identity).

A device certificate is the account key's signature over the username, the
device id, every public key of the device and its validity window. Anyone
holding the account's public key can check it; the server checks it on upload
but, holding no account key, can never make one.

All three structures use the RFC 8446 presentation language (``codec.tls``);
the signature covers a domain-separated encoding of every other field, so a
signature made for one structure can never be replayed as another.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypedDict

from sottovoce.codec.tls import (
    OPAQUE_V,
    U64,
    Codec,
    Reader,
    TlsStruct,
    Writer,
    struct_of,
    tls,
    tls_struct,
)
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import (
    CertificateExpired,
    CertificateRevoked,
    DecodeError,
    IdentityError,
    SignatureError,
    UsageError,
)
from sottovoce.identity.keys import AccountKey
from sottovoce.limits import (
    ACCOUNT_DELETION_MAX_AGE_MS,
    CLOCK_SKEW_MS,
    DEVICE_CERT_MAX_LIFETIME_MS,
    DEVICE_ID_MAX_LEN,
    USERNAME_MAX_LEN,
    USERNAME_MIN_LEN,
)

CERT_VERSION = 1
_CERT_DOMAIN = b"sottovoce device certificate v1"
_REVOCATION_DOMAIN = b"sottovoce device revocation v1"
_DELETION_DOMAIN = b"sottovoce account deletion v1"

_USERNAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?")
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]+")
_ED25519_LEN = 32
_SIG_LEN = 64


def validate_username(name: str) -> str:
    """Return ``name`` if it is a valid public alias, else raise :class:`UsageError`.

    Lower-case letters, digits, ``_ . -``, starting and ending alphanumeric.
    """
    if not (USERNAME_MIN_LEN <= len(name) <= USERNAME_MAX_LEN) or not _USERNAME_RE.fullmatch(
        name
    ):
        raise UsageError(
            f"username must be {USERNAME_MIN_LEN}-{USERNAME_MAX_LEN} characters of a-z, 0-9, "
            "'_', '.', '-', starting and ending with a letter or digit"
        )
    return name


def validate_device_id(device_id: str) -> str:
    if not (1 <= len(device_id) <= DEVICE_ID_MAX_LEN) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise UsageError(f"device id must be 1-{DEVICE_ID_MAX_LEN} characters of A-Z a-z 0-9 _ -")
    return device_id


def _read_name(r: Reader) -> str:
    raw = r.opaque8()
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("identifier is not ASCII") from None


def _read_key(r: Reader, length: int = _ED25519_LEN) -> bytes:
    key = r.opaque8()
    if len(key) != length:
        raise DecodeError("key has the wrong length")
    return key


class CertificateChecks(TypedDict, total=False):
    """What :meth:`DeviceCertificate.verify` checks a certificate against besides the
    clock, for the callers that pass it on: the account key and username it must be
    bound to (each when given) and the device ids the account revoked."""

    account_key: bytes | None
    username: str | None
    revoked_device_ids: frozenset[str] | set[str]


def _read_cert_version(r: Reader) -> int:
    version = r.u8()
    if version != CERT_VERSION:
        raise DecodeError("unsupported certificate version")
    return version


#: An Ed25519 public key, an Ed25519 signature: ``opaque<0..255>`` of exactly 32 or 64 bytes.
KEY = Codec(Writer.opaque8, _read_key)
SIGNATURE = Codec(Writer.opaque8, lambda r: _read_key(r, _SIG_LEN))
#: A username or device id: ``opaque<0..255>`` of ASCII.
NAME = Codec(lambda w, v: w.opaque8(v.encode("ascii")), _read_name)
_CERT_VERSION = Codec(Writer.u8, _read_cert_version)


def _verify_account_statement(
    what: str,
    statement: DeviceCertificate | RevocationStatement | AccountDeletion,
    account_key: bytes | None,
    username: str | None,
) -> None:
    """The checks every statement of the account key shares: the expected key and
    username (each when given), then the signature. Raises :class:`IdentityError`
    naming ``what``."""
    if account_key is not None and account_key != statement.account_key:
        raise IdentityError(f"{what} is signed by a different account key")
    if username is not None and username != statement.username:
        raise IdentityError(f"{what} is for a different username")
    try:
        ed25519_verify(statement.account_key, statement.tbs(), statement.signature)
    except SignatureError:
        raise IdentityError(f"{what} signature is invalid") from None


@tls_struct
class DevicePublicKeys(TlsStruct):
    """Every public key of one device.

    * ``signing_key``: Ed25519, authenticates the device to the server, signs prekeys;
    * ``olm_identity_key`` / ``olm_signing_key``: the Olm account's Curve25519 and
      Ed25519 identity keys (pairwise sessions);
    * ``mls_signature_key``: the device's MLS signature public key (may be empty
      until the device joins rooms).
    """

    signing_key: bytes = tls(KEY)
    olm_identity_key: bytes = tls(KEY)
    olm_signing_key: bytes = tls(KEY)
    mls_signature_key: bytes = tls(OPAQUE_V, default=b"")


class _SignedStatement(TlsStruct):
    """What every statement signed by an account (or recovery) key shares: it is a
    :func:`tls_struct` whose last fields are its signatures, in ``_SIGNATURES`` order; the
    signed bytes are a domain label followed by every field before them (the body)."""

    __slots__ = ()
    _DOMAIN: ClassVar[bytes]
    #: The signature fields, in wire order; the i-th key given to :meth:`_signed` makes the i-th.
    _SIGNATURES: ClassVar[tuple[str, ...]] = ("signature",)

    @classmethod
    def _signed(cls, signers: tuple[AccountKey, ...], **body: Any) -> Self:
        """The statement with ``body``, signed over its :meth:`tbs` by each of ``signers``."""
        make: Callable[..., Self] = cls
        tbs = make(**body, **dict.fromkeys(cls._SIGNATURES, b"")).tbs()
        signatures = {f: key.sign(tbs) for f, key in zip(cls._SIGNATURES, signers, strict=True)}
        return make(**body, **signatures)

    def tbs(self) -> bytes:
        """The bytes each key signs."""
        w = Writer()
        w.opaque8(self._DOMAIN)
        self._write_fields(w, len(self._tls_writers) - len(self._SIGNATURES))
        return w.getvalue()


@tls_struct
class DeviceCertificate(_SignedStatement):
    _DOMAIN: ClassVar[bytes] = _CERT_DOMAIN
    version: int = tls(_CERT_VERSION, default=CERT_VERSION)
    username: str = tls(NAME)
    account_key: bytes = tls(KEY)
    device_id: str = tls(NAME)
    keys: DevicePublicKeys = tls(struct_of(DevicePublicKeys))
    created_at_ms: int = tls(U64)
    expires_at_ms: int = tls(U64)
    signature: bytes = tls(SIGNATURE)

    # --- making one ------------------------------------------------------------

    @classmethod
    def issue(
        cls,
        account_key: AccountKey,
        *,
        username: str,
        device_id: str,
        keys: DevicePublicKeys,
        now_ms: int,
        lifetime_ms: int = DEVICE_CERT_MAX_LIFETIME_MS,
    ) -> DeviceCertificate:
        validate_username(username)
        validate_device_id(device_id)
        if not 0 < lifetime_ms <= DEVICE_CERT_MAX_LIFETIME_MS:
            raise UsageError("certificate lifetime out of range")
        return cls._signed(
            (account_key,),
            username=username,
            account_key=account_key.public,
            device_id=device_id,
            keys=keys,
            created_at_ms=now_ms,
            expires_at_ms=now_ms + lifetime_ms,
        )

    # --- checking one ------------------------------------------------------------

    def verify(
        self,
        *,
        now_ms: int,
        account_key: bytes | None = None,
        username: str | None = None,
        revoked_device_ids: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """Check signature, binding, validity window and revocation.

        ``account_key``/``username``: when given (from the directory or a
        verified contact), the certificate must be bound to exactly them.
        Raises :class:`IdentityError` (or its ``CertificateExpired`` /
        ``CertificateRevoked`` subclasses); returns ``None`` on success.
        """
        try:
            validate_username(self.username)
            validate_device_id(self.device_id)
        except UsageError as exc:
            raise IdentityError("certificate names are malformed") from exc
        _verify_account_statement("certificate", self, account_key, username)
        if self.expires_at_ms - self.created_at_ms > DEVICE_CERT_MAX_LIFETIME_MS:
            raise IdentityError("certificate lifetime exceeds the maximum")
        if now_ms + CLOCK_SKEW_MS < self.created_at_ms:
            raise IdentityError("certificate is not valid yet")
        if now_ms >= self.expires_at_ms:
            raise CertificateExpired("certificate has expired")
        if self.device_id in revoked_device_ids:
            raise CertificateRevoked("device has been revoked")


@tls_struct
class RevocationStatement(_SignedStatement):
    """The account key's statement that a device must no longer be trusted."""

    _DOMAIN: ClassVar[bytes] = _REVOCATION_DOMAIN
    username: str = tls(NAME)
    account_key: bytes = tls(KEY)
    device_id: str = tls(NAME)
    revoked_at_ms: int = tls(U64)
    signature: bytes = tls(SIGNATURE)

    @classmethod
    def issue(
        cls, account_key: AccountKey, *, username: str, device_id: str, now_ms: int
    ) -> RevocationStatement:
        validate_username(username)
        validate_device_id(device_id)
        return cls._signed(
            (account_key,),
            username=username,
            account_key=account_key.public,
            device_id=device_id,
            revoked_at_ms=now_ms,
        )

    def verify(self, *, account_key: bytes, username: str | None = None) -> None:
        """Raise :class:`IdentityError` unless the account key signed this revocation."""
        _verify_account_statement("revocation", self, account_key, username)


@tls_struct
class AccountDeletion(_SignedStatement):
    """The account key's statement that the whole account is deleted (docs/protocol.md §Accounts).

    Only the account key can make one, so neither the server nor a device that
    lost the account key can delete an account. The server refuses a statement
    whose ``deleted_at_ms`` is older than ``ACCOUNT_DELETION_MAX_AGE_MS`` (or in
    the future beyond the clock skew): one taken from a device long ago is no use.
    """

    _DOMAIN: ClassVar[bytes] = _DELETION_DOMAIN

    username: str = tls(NAME)
    account_key: bytes = tls(KEY)
    deleted_at_ms: int = tls(U64)
    signature: bytes = tls(SIGNATURE)

    @classmethod
    def issue(cls, account_key: AccountKey, *, username: str, now_ms: int) -> AccountDeletion:
        validate_username(username)
        return cls._signed(
            (account_key,), username=username, account_key=account_key.public, deleted_at_ms=now_ms
        )

    def verify(self, *, account_key: bytes, username: str, now_ms: int) -> None:
        """Raise :class:`IdentityError` unless the account key signed this deletion of
        ``username`` within the last ``ACCOUNT_DELETION_MAX_AGE_MS``."""
        _verify_account_statement("account deletion", self, account_key, username)
        if self.deleted_at_ms > now_ms + CLOCK_SKEW_MS:
            raise IdentityError("account deletion is dated in the future")
        if self.deleted_at_ms < now_ms - ACCOUNT_DELETION_MAX_AGE_MS:
            raise IdentityError("account deletion is too old; sign a new one")
