"""Which MLS cipher suites exist (RFC 9420 §17.1): each one's name, hash and signature scheme.

This is the part of a suite that checking a hash or a signature needs, as a
table and as :class:`PublicSuite`. It loads no HPKE and no AEAD, so code that
holds no group keys (the server, the public view of MLS, the audit chain) can use
a suite without pulling them in; :mod:`sottovoce.crypto.suite` adds each suite's
HPKE and AEAD for members (its ``CipherSuite`` is a ``PublicSuite``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sottovoce.crypto import kdf
from sottovoce.crypto.kdf import Hash
from sottovoce.crypto.sign import SignatureScheme, VerifyKey
from sottovoce.errors import UnsupportedError, UsageError
from sottovoce.readonly import ReadOnly


@dataclass(frozen=True, slots=True)
class PublicSuite:
    """A cipher suite's hash and signature scheme: all a public check uses of it."""

    id: int
    hash: Hash
    signature: SignatureScheme

    nh = ReadOnly[int]("hash.size", "KDF.Nh: the hash output size, used for secrets throughout.")

    def digest(self, data: bytes) -> bytes:
        return kdf.digest(self.hash, data)

    def verify_key(self, public: bytes) -> VerifyKey:
        return VerifyKey(self.signature, public)


class SuiteEntry(NamedTuple):
    name: str
    hash: Hash
    signature: SignatureScheme


SUITE_TABLE: dict[int, SuiteEntry] = {
    1: SuiteEntry("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519",
                  Hash.SHA256, SignatureScheme.ED25519),
    2: SuiteEntry("MLS_128_DHKEMP256_AES128GCM_SHA256_P256",
                  Hash.SHA256, SignatureScheme.ECDSA_SECP256R1_SHA256),
    3: SuiteEntry("MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
                  Hash.SHA256, SignatureScheme.ED25519),
    4: SuiteEntry("MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448",
                  Hash.SHA512, SignatureScheme.ED448),
    5: SuiteEntry("MLS_256_DHKEMP521_AES256GCM_SHA512_P521",
                  Hash.SHA512, SignatureScheme.ECDSA_SECP521R1_SHA512),
    6: SuiteEntry("MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448",
                  Hash.SHA512, SignatureScheme.ED448),
    7: SuiteEntry("MLS_256_DHKEMP384_AES256GCM_SHA384_P384",
                  Hash.SHA384, SignatureScheme.ECDSA_SECP384R1_SHA384),
    # Hybrid post-quantum suite: suite 1 with its KEM replaced by X-Wing
    # (X25519 + ML-KEM-768). No IANA value is assigned yet, so it sits in the
    # private-use range (RFC 9420 §17.1: 0xF000-0xFFFF) until one is.
    0xF001: SuiteEntry("MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519",
                       Hash.SHA256, SignatureScheme.ED25519),
}

#: The hybrid X-Wing suite's private-use code point.
XWING_SUITE_ID = 0xF001
#: Short names for the suites a user picks a room's suite by: the first name of each
#: suite is the one shown (``room info``); the others are accepted too.
SUITE_NAMES = {
    "classic": 1,
    "xwing": XWING_SUITE_ID,
    "x25519": 1,
    "x25519-mlkem768": XWING_SUITE_ID,
}

#: Suite 1 is the mandatory-to-implement default (RFC 9420 §17.1).
DEFAULT_SUITE_ID = 1
SUPPORTED_SUITES = tuple(sorted(SUITE_TABLE))


def suite_entry(suite_id: int) -> SuiteEntry:
    """The entry for an RFC 9420 code point, or raise :class:`UnsupportedError`."""
    try:
        return SUITE_TABLE[suite_id]
    except KeyError:
        raise UnsupportedError(f"unsupported MLS cipher suite {suite_id:#06x}") from None


def suite_short_name(suite_id: int) -> str | None:
    """The name a user picks ``suite_id`` by (``classic``, ``xwing``), if it has one."""
    return next((name for name, i in SUITE_NAMES.items() if i == suite_id), None)


def describe_suite(suite_id: int) -> str:
    """``xwing (0xf001, MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519)``: the short name
    (if any), the code point and the RFC 9420 name (``unknown`` for a suite we lack)."""
    entry = SUITE_TABLE.get(suite_id)
    full = f"{suite_id:#06x}, {entry.name if entry else 'unknown'}"
    short = suite_short_name(suite_id)
    return f"{short} ({full})" if short else f"suite {full}"


def parse_suite(text: str, allowed: tuple[int, ...] = SUPPORTED_SUITES) -> int:
    """A suite a user named, by short name or number (``xwing``, ``0xF001``, ``1``), one of
    ``allowed``; raises :class:`UsageError` naming the choices otherwise."""
    value = text.strip().lower()
    suite_id = SUITE_NAMES.get(value)
    if suite_id is None:
        try:
            suite_id = int(value, 0)
        except ValueError:
            suite_id = None
    if suite_id not in allowed:
        choices = ", ".join(describe_suite(s) for s in allowed)
        raise UsageError(f"unknown MLS cipher suite {text!r}: choose one of {choices}")
    return suite_id
