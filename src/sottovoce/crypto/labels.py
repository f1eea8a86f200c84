"""RFC 9420 §5.1–5.2 labelled operations, on any :class:`CipherSuite`.

Every label is prefixed with ``"MLS 1.0 "`` and bound to its use, so a value
made for one purpose can never be accepted for another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sottovoce.codec.tls import Writer
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey, VerifyKey
from sottovoce.secret import Secret

if TYPE_CHECKING:  # annotations only: the suite module loads HPKE and AEAD, and the
    # signature helpers here serve code that must not (the server's MLS public view)
    from sottovoce.crypto.suite import CipherSuite

LABEL_PREFIX = b"MLS 1.0 "


def _two_opaques(a: bytes, b: bytes) -> bytes:
    w = Writer()
    w.opaque_v(a)
    w.opaque_v(b)
    return w.getvalue()


def ref_hash(suite: CipherSuite, label: bytes, value: bytes) -> bytes:
    """RefHash (§5.2): note the label carries no "MLS 1.0 " prefix here."""
    return suite.digest(_two_opaques(label, value))


def expand_with_label(
    suite: CipherSuite, secret: bytes, label: bytes, context: bytes, length: int
) -> bytes:
    """ExpandWithLabel (§8)."""
    w = Writer()
    w.u16(length)
    w.opaque_v(LABEL_PREFIX + label)
    w.opaque_v(context)
    return suite.expand(secret, w.getvalue(), length)


def derive_secret(suite: CipherSuite, secret: bytes, label: bytes) -> bytes:
    """DeriveSecret (§8) = ExpandWithLabel(secret, label, "", Nh)."""
    return expand_with_label(suite, secret, label, b"", suite.nh)


def sign_with_label(key: SigningKey, label: bytes, content: bytes) -> bytes:
    """SignWithLabel (§5.1.2)."""
    return key.sign(_two_opaques(LABEL_PREFIX + label, content))


def verify_with_label(key: VerifyKey, label: bytes, content: bytes, signature: bytes) -> None:
    """VerifyWithLabel (§5.1.2); raises ``SignatureError``. An empty signature fails."""
    key.verify(_two_opaques(LABEL_PREFIX + label, content), signature)


def encrypt_with_label(
    suite: CipherSuite,
    public_key: bytes,
    label: bytes,
    context: bytes,
    plaintext: bytes,
    rng: Random,
) -> tuple[bytes, bytes]:
    """EncryptWithLabel (§5.1.3): returns ``(kem_output, ciphertext)``."""
    info = _two_opaques(LABEL_PREFIX + label, context)
    return suite.hpke.seal(public_key, info, b"", plaintext, rng)


def decrypt_with_label(
    suite: CipherSuite,
    private_key: bytes | Secret,
    label: bytes,
    context: bytes,
    kem_output: bytes,
    ciphertext: bytes,
) -> bytes:
    """DecryptWithLabel (§5.1.3); raises ``DecryptionError``."""
    info = _two_opaques(LABEL_PREFIX + label, context)
    return suite.hpke.open(kem_output, private_key, info, b"", ciphertext)
