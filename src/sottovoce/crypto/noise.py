"""The Noise KK handshake (Noise Protocol Framework, revision 34) for ephemeral chats
(docs/protocol.md §Ephemeral chats).

    KK:
      -> s                      both sides know each other's static key beforehand
      <- s
      ...
      -> e, es, ss              message 1 (initiator)
      <- e, ee, se              message 2 (responder)
      split() ─► two CipherStates: one per direction

Sans-IO: the caller passes the ephemeral private keys in (drawn from its random
source), and gets bytes out; no clock, socket or randomness here. Only the
``25519``/``ChaChaPoly`` functions and the ``SHA256`` or ``BLAKE2s`` hashes are
offered: what the tests check against the published cacophony vectors.

Why KK and no signatures: both sides are authenticated by Diffie-Hellman with their
static keys only, so a transcript proves nothing to a third party (either side could
have computed it with its own static key): the chat is deniable.

Key hygiene: every secret this module holds (chaining key, cipher keys, static and
ephemeral private keys) lives in a ``bytearray`` that :meth:`HandshakeState.wipe` and
:meth:`CipherState.wipe` overwrite with zeros. That is best effort: the DH output
and the AEAD's key schedule are ``bytes`` inside ``cryptography`` (OpenSSL keeps its
own copy for the lifetime of the key object) and CPython may have copied a value
while hashing; those copies are freed, not zeroed.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sottovoce.errors import CryptoError, DecodeError, UsageError

DHLEN = 32
TAGLEN = 16
#: The Noise limit on one message (handshake or transport), tag included.
MAX_MESSAGE_LEN = 65535
_MAX_NONCE = 2**64 - 1  # reserved by the spec: never used for a message


@dataclass(frozen=True, slots=True)
class _Hash:
    name: str
    new: Any  # a hashlib constructor (hashlib's own type is private)
    hashlen: int


_HASHES = {
    "SHA256": _Hash("SHA256", hashlib.sha256, 32),
    "BLAKE2s": _Hash("BLAKE2s", hashlib.blake2s, 32),
}


def protocol_name(hash_name: str) -> bytes:
    """``Noise_KK_25519_ChaChaPoly_<hash>`` as bytes (the initial ``h``'s input)."""
    if hash_name not in _HASHES:
        raise UsageError(f"unsupported Noise hash {hash_name!r}")
    return f"Noise_KK_25519_ChaChaPoly_{hash_name}".encode("ascii")


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


def x25519_public(private: bytes | bytearray) -> bytes:
    """The public key of a raw X25519 private key."""
    key = x25519.X25519PrivateKey.from_private_bytes(bytes(private))
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _dh(private: bytearray, public: bytes) -> bytes:
    try:
        key = x25519.X25519PrivateKey.from_private_bytes(bytes(private))
        return key.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # A wrong length or a low-order point (all-zero output): refused, never mixed in.
        raise CryptoError("Noise DH failed") from None


class CipherState:
    """One direction's key and nonce (Noise §5.1)."""

    __slots__ = ("_k", "n")

    def __init__(self, key: bytes | bytearray | None = None) -> None:
        self._k: bytearray | None = None if key is None else bytearray(key)
        self.n = 0

    def __repr__(self) -> str:
        return f"CipherState(<redacted>, n={self.n})"

    @property
    def has_key(self) -> bool:
        return self._k is not None

    def _nonce(self) -> bytes:
        if self.n >= _MAX_NONCE:
            raise CryptoError("Noise nonce exhausted")
        return b"\x00\x00\x00\x00" + self.n.to_bytes(8, "little")

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._k is None:
            return plaintext
        out = ChaCha20Poly1305(bytes(self._k)).encrypt(self._nonce(), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._k is None:
            return ciphertext
        try:
            out = ChaCha20Poly1305(bytes(self._k)).decrypt(self._nonce(), ciphertext, ad)
        except InvalidTag:
            raise CryptoError("Noise message failed authentication") from None
        self.n += 1  # only after success: a forged message does not move the nonce
        return out

    def wipe(self) -> None:
        """Zero the key and forget it; the state encrypts nothing afterwards."""
        if self._k is not None:
            _wipe(self._k)
        self._k = None
        self.n = _MAX_NONCE


class _SymmetricState:
    """Noise §5.2: the chaining key, the handshake hash and the current cipher."""

    def __init__(self, name: bytes, hash_: _Hash) -> None:
        self._hash = hash_
        if len(name) <= hash_.hashlen:
            self.h = bytearray(name.ljust(hash_.hashlen, b"\x00"))
        else:
            self.h = bytearray(self._digest(name))
        self.ck = bytearray(self.h)
        self.cipher = CipherState()

    def _digest(self, data: bytes) -> bytes:
        h = self._hash.new()
        h.update(data)
        return bytes(h.digest())

    def _hkdf(self, ikm: bytes, n: int) -> list[bytes]:
        """Noise's HKDF (§4.3): HMAC-HASH outputs chained from ``ck``."""
        temp = hmac.new(bytes(self.ck), ikm, self._hash.new).digest()
        outs, prev = [], b""
        for i in range(1, n + 1):
            prev = hmac.new(temp, prev + bytes([i]), self._hash.new).digest()
            outs.append(prev)
        return outs

    def mix_key(self, ikm: bytes) -> None:
        ck, k = self._hkdf(ikm, 2)
        self._set_ck(ck)
        self.cipher.wipe()
        self.cipher = CipherState(k[:32])

    def _set_ck(self, ck: bytes) -> None:
        _wipe(self.ck)
        self.ck = bytearray(ck)

    def mix_hash(self, data: bytes) -> None:
        self.h = bytearray(self._digest(bytes(self.h) + data))

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = self.cipher.encrypt_with_ad(bytes(self.h), plaintext)
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = self.cipher.decrypt_with_ad(bytes(self.h), ciphertext)
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self._hkdf(b"", 2)
        return CipherState(k1[:32]), CipherState(k2[:32])

    def wipe(self) -> None:
        _wipe(self.ck)
        _wipe(self.h)
        self.cipher.wipe()


@dataclass(slots=True)
class Transport:
    """The two transport CipherStates after the handshake, and its hash (channel binding)."""

    send: CipherState
    receive: CipherState
    handshake_hash: bytes

    def __repr__(self) -> str:
        return "Transport(<redacted>)"

    def encrypt(self, plaintext: bytes, ad: bytes = b"") -> bytes:
        if len(plaintext) + TAGLEN > MAX_MESSAGE_LEN:
            raise UsageError("Noise message too long")
        return self.send.encrypt_with_ad(ad, plaintext)

    def decrypt(self, ciphertext: bytes, ad: bytes = b"") -> bytes:
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise DecodeError("Noise message too long")
        return self.receive.decrypt_with_ad(ad, ciphertext)

    def wipe(self) -> None:
        self.send.wipe()
        self.receive.wipe()


class HandshakeState:
    """One side of a Noise KK handshake (§5.3), two messages long.

    ``static`` is this side's X25519 private key, ``remote_static`` the peer's public
    key (known beforehand: that is what "KK" means), ``ephemeral`` this handshake's
    fresh private key (32 random bytes from the caller's random source).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        prologue: bytes,
        static: bytes | bytearray,
        remote_static: bytes,
        ephemeral: bytes | bytearray,
        hash_name: str = "SHA256",
    ) -> None:
        if len(remote_static) != DHLEN or len(static) != DHLEN or len(ephemeral) != DHLEN:
            raise UsageError("Noise keys are 32 bytes")
        self.initiator = initiator
        self._sym = _SymmetricState(protocol_name(hash_name), _HASHES[hash_name])
        self._s = bytearray(static)
        self._e = bytearray(ephemeral)
        self._s_pub = x25519_public(self._s)
        self._e_pub = x25519_public(self._e)
        self._rs = bytes(remote_static)
        self._re: bytes | None = None
        self._step = 0  # 0: message 1 next, 1: message 2 next, 2: done
        self._sym.mix_hash(prologue)
        first, second = (self._s_pub, self._rs) if initiator else (self._rs, self._s_pub)
        self._sym.mix_hash(first)
        self._sym.mix_hash(second)

    def __repr__(self) -> str:
        return f"HandshakeState(initiator={self.initiator}, step={self._step}, <redacted>)"

    @property
    def done(self) -> bool:
        return self._step == 2

    def write_message(self, payload: bytes = b"") -> bytes:
        """The next handshake message of ours, carrying ``payload`` (encrypted)."""
        if self._step != (0 if self.initiator else 1):
            raise UsageError("not our turn in the Noise handshake")
        sym = self._sym
        sym.mix_hash(self._e_pub)
        if self.initiator:  # e, es, ss
            sym.mix_key(_dh(self._e, self._rs))
            sym.mix_key(_dh(self._s, self._rs))
        else:  # e, ee, se
            if self._re is None:
                raise UsageError("not our turn in the Noise handshake")
            sym.mix_key(_dh(self._e, self._re))
            sym.mix_key(_dh(self._e, self._rs))
        out = self._e_pub + sym.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise UsageError("Noise message too long")
        self._step += 1
        return out

    def read_message(self, message: bytes) -> bytes:
        """The peer's next handshake message: its payload, or ``CryptoError``."""
        if self._step != (1 if self.initiator else 0):
            raise UsageError("not the peer's turn in the Noise handshake")
        if not DHLEN + TAGLEN <= len(message) <= MAX_MESSAGE_LEN:
            raise DecodeError("Noise handshake message has the wrong length")
        sym = self._sym
        re_pub = bytes(message[:DHLEN])
        sym.mix_hash(re_pub)
        if self.initiator:  # e, ee, se
            sym.mix_key(_dh(self._e, re_pub))
            sym.mix_key(_dh(self._s, re_pub))
        else:  # e, es, ss
            sym.mix_key(_dh(self._s, re_pub))
            sym.mix_key(_dh(self._s, self._rs))
        payload = sym.decrypt_and_hash(bytes(message[DHLEN:]))
        self._re = re_pub
        self._step += 1
        return payload

    def transport(self) -> Transport:
        """After both messages: the transport ciphers (the handshake's keys are wiped)."""
        if not self.done:
            raise UsageError("the Noise handshake is not finished")
        c1, c2 = self._sym.split()
        h = bytes(self._sym.h)
        self.wipe()
        return Transport(c1, c2, h) if self.initiator else Transport(c2, c1, h)

    def wipe(self) -> None:
        """Zero every secret this handshake holds (also on failure)."""
        self._sym.wipe()
        _wipe(self._s)
        _wipe(self._e)
