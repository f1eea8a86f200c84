"""Friend verification codes (docs/protocol.md §Friend verification codes): the forms a
code takes and the slow hashes that stand for it on the wire and in the server.

* a **TOTP code** (RFC 6238, 8 digits, 60 s step) comes from a secret only the owner's
  devices hold; the requester never sends it: it sends
  ``proof = scrypt(code, salt = DOMAIN ‖ owner ‖ requester)``, which the owner's device
  recomputes for the codes of the accepted window. The server relays the proof; to
  use it for anyone else it would have to find the code, 10^8 candidates at one
  scrypt each, within the code's two minutes;
* a **static code** ``SS-DDDDDDDD`` (slot, 8 random digits) is single use: the server
  keeps only ``scrypt(code, salt)`` with a salt per code, checks one when presented
  (the slot names the row, so one scrypt per attempt) and deletes it.

Pure: the caller passes codes, names and salts in.
"""

from __future__ import annotations

import hmac
import re

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

DOMAIN = b"sottovoce fvc v1"
TOTP_DIGITS = 8
TOTP_STEP_S = 60
#: Steps accepted either side of the current one.
TOTP_WINDOW = 1
#: A contact request waits this long for the owner's devices (the server keeps it); the
#: owner's device judges its code as of the server's receive stamp no older than this.
REQUEST_MAX_AGE_S = 7 * 86_400
#: How far ahead of the owner's clock a receive stamp may be (clock skew).
STAMP_SKEW_S = 300
STATIC_DIGITS = 8
HASH_BYTES = 32
SALT_BYTES = 16
#: scrypt cost (2^14, r 8: 16 MiB and tens of ms per hash): the server's offline guessing
#: of a relayed proof, and of a stolen static-code table, pays it per candidate.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: The salt of the scrypt a server runs for a name without codes (the same work either way).
DUMMY_SALT = bytes(SALT_BYTES)

_TOTP = re.compile(rf"\d{{{TOTP_DIGITS}}}")
_STATIC = re.compile(rf"(\d{{2}})-(\d{{{STATIC_DIGITS}}})")


def _scrypt(secret: bytes, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=HASH_BYTES, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret)


def is_totp(code: str) -> bool:
    return _TOTP.fullmatch(code) is not None


def static_slot(code: str) -> int | None:
    """The slot of a static code, or None if ``code`` is not one."""
    found = _STATIC.fullmatch(code)
    return None if found is None else int(found.group(1))


def static_code(slot: int, digits: str) -> str:
    return f"{slot:02d}-{digits}"


def static_hash(code: str, salt: bytes) -> bytes:
    return _scrypt(code.encode(), salt)


def static_matches(code: str, salt: bytes, digest: bytes) -> bool:
    return hmac.compare_digest(static_hash(code, salt), digest)


def code_proof(code: str, *, owner: str, requester: str) -> bytes:
    """What a requester sends for a TOTP code: bound to both names."""
    salt = DOMAIN + len(owner).to_bytes(1, "big") + owner.encode() + requester.encode()
    return _scrypt(code.encode(), salt)


def totp_steps(now_s: int) -> list[int]:
    """The time steps a code is accepted for at ``now_s``: the current one first."""
    step = now_s // TOTP_STEP_S
    return [step, *(step + d for k in range(1, TOTP_WINDOW + 1) for d in (-k, k))]


def static_grant_token(digest: bytes, requester: str) -> bytes:
    """The capability a used static code grants ``requester``: keyed by the code's hash,
    which the owner's devices keep, so that they can withdraw it later."""
    return hmac.new(digest, b"sottovoce static grant v1" + requester.encode(),
                    "sha256").digest()


def grant_token(key: bytes, requester: str) -> bytes:
    """The capability an owner's device grants ``requester``: the same on each of its
    devices (they share ``key``), so any of them can withdraw it."""
    return hmac.new(key, b"sottovoce grant v1" + requester.encode(), "sha256").digest()
