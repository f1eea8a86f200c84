"""minisign keys and signatures, with ``cryptography``'s Ed25519.

Releases are signed in minisign's format so that anyone can check them with
the ``minisign`` tool alone (``minisign -Vm FILE -P KEY``), without installing
sottovoce first. The formats (https://jedisct1.github.io/minisign/):

* public key: ``"Ed" || key id (8) || Ed25519 public key (32)``, base64, on the
  line after an untrusted comment;
* signature: ``"ED" || key id || Ed25519(BLAKE2b-512(file))`` (prehashed, what
  minisign makes today; legacy ``"Ed"`` signs the file itself and is accepted),
  then a trusted comment and a global signature, Ed25519 over the signature and
  the trusted comment, so the comment cannot be swapped;
* secret key: minisign's layout with no passphrase (``minisign -G -W``): the
  KDF algorithm is zero and the key material is stored as is, guarded by a
  BLAKE2b-256 checksum (which minisign itself leaves zero in such keys).
  Encrypted secret keys are refused with a plain message.

Pure functions over bytes: the caller reads files and supplies randomness.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from sottovoce.errors import SottovoceError

_ED = b"Ed"
_PREHASHED = b"ED"
_KDF_NONE = b"\x00\x00"
_CHK_B2 = b"B2"


class MinisignError(SottovoceError):
    """A key or signature is malformed, or a signature does not verify."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: bytes
    key: bytes

    @property
    def key_id_hex(self) -> str:
        """The id as minisign prints it (its bytes are a little-endian number)."""
        return self.key_id[::-1].hex().upper()

    def to_text(self) -> str:
        """The ``.pub`` file: untrusted comment, then the base64 line."""
        body = base64.b64encode(_ED + self.key_id + self.key).decode()
        return f"untrusted comment: minisign public key {self.key_id_hex}\n{body}\n"

    @property
    def base64(self) -> str:
        """What ``minisign -P`` takes."""
        return base64.b64encode(_ED + self.key_id + self.key).decode()


@dataclass(frozen=True, slots=True)
class SecretKey:
    key_id: bytes
    seed: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"SecretKey(key_id={self.key_id.hex()}, seed=<hidden>)"

    @property
    def public(self) -> PublicKey:
        pk = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()
        return PublicKey(self.key_id, pk)

    def to_text(self) -> str:
        """The ``.key`` file in minisign's unencrypted layout (``minisign -G -W``)."""
        sk = self.seed + self.public.key
        chk = hashlib.blake2b(_ED + self.key_id + sk, digest_size=32).digest()
        blob = _ED + _KDF_NONE + _CHK_B2 + bytes(32) + bytes(16) + self.key_id + sk + chk
        return f"untrusted comment: minisign secret key\n{base64.b64encode(blob).decode()}\n"


def generate(random: bytes) -> SecretKey:
    """A key pair from 40 random bytes (8 for the key id, 32 for the seed)."""
    if len(random) != 40:
        raise ValueError("need 40 random bytes")
    return SecretKey(key_id=random[:8], seed=random[8:])


def _payload(text: str, what: str) -> bytes:
    """The base64 line of a minisign file (the first line that is not a comment)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    body = [ln for ln in lines if not ln.startswith("untrusted comment:")]
    if not body:
        raise MinisignError(f"not a minisign {what}: no key or signature line")
    try:
        return base64.b64decode(body[0], validate=True)
    except (binascii.Error, ValueError):
        raise MinisignError(f"not a minisign {what}: the key line is not base64") from None


def load_public_key(text: str) -> PublicKey:
    """A ``.pub`` file's text, or the bare base64 line ``minisign -P`` takes."""
    raw = _payload(text, "public key")
    if len(raw) != 42 or raw[:2] != _ED:
        raise MinisignError("not a minisign public key (wrong length or algorithm)")
    return PublicKey(key_id=raw[2:10], key=raw[10:])


def load_secret_key(text: str) -> SecretKey:
    """An unencrypted minisign ``.key`` file (``minisign -G -W`` or :func:`generate`)."""
    raw = _payload(text, "secret key")
    if len(raw) != 158 or raw[:2] != _ED or raw[4:6] != _CHK_B2:
        raise MinisignError("not a minisign secret key (wrong length or algorithm)")
    if raw[2:4] != _KDF_NONE:
        raise MinisignError(
            "the secret key is protected by a passphrase; sign with minisign -S, or use a key "
            "made without one (minisign -G -W)"
        )
    key_id, sk, chk = raw[54:62], raw[62:126], raw[126:158]
    want = hashlib.blake2b(_ED + key_id + sk, digest_size=32).digest()
    # minisign 0.11 leaves the checksum of a key without a passphrase zero; the public
    # half below still catches a damaged file.
    if chk != bytes(32) and not hmac.compare_digest(chk, want):
        raise MinisignError("the secret key's checksum does not match: the file is damaged")
    key = SecretKey(key_id=key_id, seed=sk[:32])
    if key.public.key != sk[32:]:
        raise MinisignError("the secret key's public half does not match: the file is damaged")
    return key


def sign(key: SecretKey, message: bytes, trusted_comment: str,
         untrusted_comment: str = "signature from sottovoce release key") -> str:
    """A prehashed (``ED``) minisign signature file of ``message``."""
    if "\n" in trusted_comment or "\r" in trusted_comment:
        raise ValueError("the trusted comment is one line")
    priv = Ed25519PrivateKey.from_private_bytes(key.seed)
    sig = priv.sign(hashlib.blake2b(message, digest_size=64).digest())
    comment = trusted_comment.encode()
    global_sig = priv.sign(sig + comment)
    return (
        f"untrusted comment: {untrusted_comment}\n"
        f"{base64.b64encode(_PREHASHED + key.key_id + sig).decode()}\n"
        f"trusted comment: {trusted_comment}\n"
        f"{base64.b64encode(global_sig).decode()}\n"
    )


def verify(key: PublicKey, message: bytes, signature: str) -> str:
    """Check a minisign signature file over ``message``; return its trusted comment.

    Raises :class:`MinisignError` with a plain reason when anything does not hold.
    """
    lines = signature.splitlines()
    if len(lines) < 4 or not lines[2].startswith("trusted comment: "):
        raise MinisignError("not a minisign signature: expected four lines")
    try:
        raw = base64.b64decode(lines[1].strip(), validate=True)
        global_sig = base64.b64decode(lines[3].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MinisignError("not a minisign signature: a line is not base64") from None
    if len(raw) != 74 or raw[:2] not in (_ED, _PREHASHED) or len(global_sig) != 64:
        raise MinisignError("not a minisign signature (wrong length or algorithm)")
    if raw[2:10] != key.key_id:
        raise MinisignError(
            f"the signature was made by another key (id {raw[2:10][::-1].hex().upper()}, "
            f"expected {key.key_id_hex})"
        )
    signed = hashlib.blake2b(message, digest_size=64).digest() if raw[:2] == _PREHASHED else message
    pub = Ed25519PublicKey.from_public_bytes(key.key)
    comment = lines[2][len("trusted comment: "):]
    try:
        pub.verify(raw[10:], signed)
    except InvalidSignature:
        raise MinisignError("the signature does not match the file: it was changed") from None
    try:
        pub.verify(global_sig, raw[10:] + comment.encode())
    except InvalidSignature:
        raise MinisignError("the trusted comment's signature does not verify") from None
    return comment
