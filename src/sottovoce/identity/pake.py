"""Linking a new device: CPace (draft-irtf-cfrg-cpace, suite CPACE-X25519-SHA512) with
explicit key confirmation, the QR payload, the short code and the confirmation words.

    existing device A (initiator)            mailbox on the server        new device B
    ─────────────────────────────            ─────────────────────        ────────────
    code / QR shown on screen    ···································► typed or scanned
    msg1 = Ya || ADa (A's device id) ─────────────────────────────────►
                                                                         K = X25519(yb, Ya)
                                     ◄───────── msg2 = Yb || ADb (B's id) || Tb
    K = X25519(ya, Yb); check Tb
    msg3 = Ta ─────────────────────────────────────────────────────────►  check Ta
    both: session key and the same confirmation words on both screens

* PRS (the password) is the whole short code, or the QR code's 32-byte secret: one
  protocol for both. The generator is g = Elligator2(SHA-512(generator_string(
  "CPace255", PRS, CI, sid))[:32]) on Curve25519 (draft §"CPace group objects
  G_X25519", RFC 9380 §6.7.1); Ya = X25519(ya, g).
* ISK = SHA-512(lv_cat("CPace255_ISK", sid, K) || lv_cat(Ya, ADa) || lv_cat(Yb, ADb))
  (initiator-responder transcript). K is never exposed.
* Key confirmation (the draft's §"Key confirmation", strengthened as linking needs):
  mac_key = SHA-512("CPaceMac" || sid || ISK); each side's tag is HMAC-SHA-512 over
  its role and a transcript binding the session id, both device ids and both
  messages, so the server relaying the mailbox can neither splice sessions nor
  swap an identity.
* The server sees the exchange but learns nothing that lets it test a guess
  offline; an online guess is one run, and any failure ends the attempt: a
  :class:`LinkSession` that failed refuses every further input.

Python integers are not constant-time: the Elligator2 map leaks timing about the
code. Each code is used once and expires within minutes, which bounds what a
local timing attacker could do with it (the draft's §"Side channel attacks").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto.dh import X25519PrivateKey
from sottovoce.crypto.kdf import Hash, hkdf_expand, hkdf_extract
from sottovoce.crypto.rng import Random
from sottovoce.errors import CryptoError, DecodeError, IdentityError, UsageError
from sottovoce.identity.certificates import validate_device_id
from sottovoce.identity.wordlist import WORDS
from sottovoce.limits import (
    LINK_CODE_TTL_MS,
    LINK_CONFIRMATION_WORDS,
    LINK_SECRET_BYTES,
    LINK_SERVER_URL_MAX_LEN,
)
from sottovoce.secret import Secret


class LinkError(IdentityError):
    """A linking run failed: a wrong code, a message out of order, a bad tag, or an
    expired code. The attempt is over; start a new one from the existing device."""

    code = "link_failed"


# --- CPace building blocks (draft-irtf-cfrg-cpace, appendix "CPace function definitions") ---

DSI = b"CPace255"
_P = 2**255 - 19
_A = 486662
_Z = 2  # RFC 9380 §6.7.1: the non-square Z of curve25519
_SHA512_BLOCK = 128  # H.s_in_bytes


def prepend_len(data: bytes) -> bytes:
    """LEB128 length, then the data."""
    n, out = len(data), bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def lv_cat(*parts: bytes) -> bytes:
    return b"".join(prepend_len(p) for p in parts)


def generator_string(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    """generator_string(G.DSI, PRS, CI, sid, H.s_in_bytes): zero padding fills the first
    hash block after DSI and PRS."""
    zpad = max(0, _SHA512_BLOCK - 1 - len(prepend_len(prs)) - len(prepend_len(DSI)))
    return lv_cat(DSI, prs, bytes(zpad), ci, sid)


def elligator2(r: int) -> int:
    """RFC 9380 §6.7.1 map_to_curve_elligator2 for curve25519, u coordinate only (the
    form the draft's reference code uses)."""
    v = (-_A * pow(1 + _Z * r * r, _P - 2, _P)) % _P
    eps = pow((v * v * v + _A * v * v + v) % _P, (_P - 1) // 2, _P)
    if eps == 1:
        return v
    return (-v - _A) % _P  # eps = -1; eps = 0 cannot happen (curve25519 has one 2-torsion x)


def calculate_generator(prs: bytes, ci: bytes, sid: bytes) -> bytes:
    gen_hash = hashlib.sha512(generator_string(prs, ci, sid)).digest()[:32]
    r = int.from_bytes(gen_hash, "little") & ((1 << 255) - 1)  # decodeUCoordinate
    return (elligator2(r % _P)).to_bytes(32, "little")


def scalar_mult_vfy(scalar: bytes, point: bytes) -> bytes:
    """X25519(y, g) (RFC 7748, which clamps y and ignores bit 255 of g); raises
    :class:`LinkError` where the draft returns G.I (a low-order point)."""
    try:
        out = X25519PrivateKey(scalar).exchange(point).expose()
    except CryptoError:  # a low-order point: the all-zero result, which X25519 refuses
        raise LinkError("the other device sent an invalid key share") from None
    if out == bytes(32):
        raise LinkError("the other device sent an invalid key share")
    return out


def isk(sid: bytes, k: bytes, ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> bytes:
    return hashlib.sha512(
        lv_cat(DSI + b"_ISK", sid, k) + lv_cat(ya, ada) + lv_cat(yb, adb)
    ).digest()


# --- the linking session -------------------------------------------------------------------


class Role(Enum):
    EXISTING = "existing"  # A, the initiator: the device that shows the code
    NEW = "new"  # B, the responder: the device that types or scans it


class _Step(Enum):
    START = 0
    SENT_1 = 1
    SENT_2 = 2
    DONE = 3
    FAILED = 4


_CONFIRM_LABEL = b"sottovoce link confirmation v1"
_SESSION_LABEL = b"sottovoce link session v1"
_WORDS_LABEL = b"sottovoce link words v1"
_CI = b"sottovoce device link v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkResult:
    """A confirmed link: the session key for the handover (keys, contacts, rooms), the
    other device's id, and the words both screens show."""

    session_key: Secret
    peer_device_id: str
    words: tuple[str, ...]


def confirmation_words(session_key: bytes, count: int = LINK_CONFIRMATION_WORDS) -> tuple[str, ...]:
    """Words both screens show, derived from the session key (11 bits each)."""
    stream = hkdf_expand(Hash.SHA256, session_key, _WORDS_LABEL, 32)
    bits = int.from_bytes(stream, "big")
    return tuple(WORDS[(bits >> (256 - 11 * (i + 1))) & 0x7FF] for i in range(count))


class LinkSession:
    """One CPace run with key confirmation. Sans-I/O: feed it the peer's messages,
    send what it returns. Any failure ends the session for good (one try)."""

    __slots__ = ("_ad", "_isk", "_msg1", "_msg2", "_peer", "_prs", "_role", "_sid", "_step",
                 "_y", "_ys")

    def __init__(self, role: Role, *, prs: Secret, sid: bytes, device_id: str) -> None:
        if not 16 <= len(sid) <= 64:
            raise UsageError("the session id is 16-64 bytes")
        self._role = role
        self._prs = prs
        self._sid = sid
        self._ad = validate_device_id(device_id).encode("ascii")
        self._step = _Step.START
        self._y = b""
        self._ys = b""
        self._isk = b""
        self._msg1 = b""
        self._msg2 = b""
        self._peer = ""

    def _g(self) -> bytes:
        return calculate_generator(self._prs.expose(), _CI, self._sid)

    def _fail(self, why: str) -> LinkError:
        self._step = _Step.FAILED
        self._isk = b""
        self._y = b""
        return LinkError(why)

    def _expect(self, role: Role, step: _Step) -> None:
        if self._step is _Step.FAILED:
            raise LinkError("this linking attempt has already failed; start a new one")
        if self._role is not role or self._step is not step:
            raise self._fail("a linking message arrived out of order")

    def _tag(self, role: Role) -> bytes:
        mac_key = hashlib.sha512(b"CPaceMac" + self._sid + self._isk).digest()
        a_id, b_id = ((self._ad.decode(), self._peer) if self._role is Role.EXISTING
                      else (self._peer, self._ad.decode()))
        transcript = lv_cat(_CONFIRM_LABEL, role.value.encode(), self._sid, a_id.encode(),
                            b_id.encode(), self._msg1, self._msg2)
        return hmac.new(mac_key, transcript, "sha512").digest()

    def _derive(self, k: bytes, ya: bytes, ada: bytes, yb: bytes, adb: bytes) -> None:
        self._isk = isk(self._sid, k, ya, ada, yb, adb)

    def _result(self) -> LinkResult:
        key = hkdf_extract(Hash.SHA256, _SESSION_LABEL + self._sid, self._isk)
        self._step = _Step.DONE
        self._isk = b""
        return LinkResult(session_key=Secret(key), peer_device_id=self._peer,
                          words=confirmation_words(key))

    # A -> B
    def start(self, rng: Random) -> bytes:
        """(existing device) msg1 = Ya || ADa."""
        self._expect(Role.EXISTING, _Step.START)
        self._y = rng(32)
        self._ys = scalar_mult_vfy(self._y, self._g())
        self._msg1 = _encode_share(self._ys, self._ad, b"")
        self._step = _Step.SENT_1
        return self._msg1

    # B: msg1 -> msg2
    def respond(self, msg1: bytes, rng: Random) -> bytes:
        """(new device) read msg1, return msg2 = Yb || ADb || Tb."""
        self._expect(Role.NEW, _Step.START)
        ya, ada, extra = _decode_share(msg1, self._fail)
        if extra:
            raise self._fail("the first linking message carries a tag")
        self._y = rng(32)
        yb = scalar_mult_vfy(self._y, self._g())
        try:
            k = scalar_mult_vfy(self._y, ya)
        except LinkError:
            raise self._fail("the other device sent an invalid key share") from None
        self._peer = ada.decode("ascii")
        self._msg1 = msg1
        self._derive(k, ya, ada, yb, self._ad)
        self._msg2 = _encode_share(yb, self._ad, b"")
        tag = self._tag(Role.NEW)
        self._step = _Step.SENT_2
        return _encode_share(yb, self._ad, tag)

    # A: msg2 -> msg3
    def confirm(self, msg2: bytes) -> tuple[bytes, LinkResult]:
        """(existing device) check B's tag; return msg3 = Ta and the result."""
        self._expect(Role.EXISTING, _Step.SENT_1)
        yb, adb, tag = _decode_share(msg2, self._fail)
        try:
            k = scalar_mult_vfy(self._y, yb)
        except LinkError:
            raise self._fail("the other device sent an invalid key share") from None
        self._peer = adb.decode("ascii")
        self._msg2 = _encode_share(yb, adb, b"")
        self._derive(k, self._ys, self._ad, yb, adb)
        if not hmac.compare_digest(self._tag(Role.NEW), tag):
            raise self._fail("the code does not match: linking stopped")
        ta = self._tag(Role.EXISTING)
        return ta, self._result()

    # B: msg3
    def finish(self, msg3: bytes) -> LinkResult:
        """(new device) check A's tag."""
        self._expect(Role.NEW, _Step.SENT_2)
        if not hmac.compare_digest(self._tag(Role.EXISTING), msg3):
            raise self._fail("the code does not match: linking stopped")
        return self._result()

    def __repr__(self) -> str:
        return f"LinkSession({self._role.value}, step={self._step.name})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("linking sessions cannot be pickled")


def _encode_share(y: bytes, ad: bytes, tag: bytes) -> bytes:
    w = Writer()
    w.raw(y)
    w.opaque8(ad)
    w.opaque8(tag)
    return w.getvalue()


def _decode_share(
    data: bytes, fail: Callable[[str], LinkError]
) -> tuple[bytes, bytes, bytes]:
    def read(r: Reader) -> tuple[bytes, bytes, bytes]:
        y, ad, tag = r.raw(32), r.opaque8(), r.opaque8()
        if tag and len(tag) != 64:
            raise DecodeError("bad tag length")
        validate_device_id(ad.decode("ascii"))
        return y, ad, tag

    try:
        return decode(read, data)
    except (DecodeError, UsageError, UnicodeDecodeError):
        raise fail("a linking message is malformed") from None


# --- short codes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ShortCode:
    """``1234-5678 word-word``: the first four digits name the mailbox on the server
    (public); the rest -- four digits and two words, about 35 bits -- is secret, and the
    whole code is CPace's PRS."""

    digits: str
    words: tuple[str, str]

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9]{8}", self.digits) or not all(
            w in _WORD_INDEX for w in self.words
        ):
            raise UsageError("a short code is 8 digits and two words from the list")

    @property
    def nameplate(self) -> str:
        return self.digits[:4]

    def __str__(self) -> str:
        return f"{self.digits[:4]}-{self.digits[4:]} {self.words[0]}-{self.words[1]}"

    def prs(self) -> Secret:
        return Secret(str(self).encode("ascii"))

    @classmethod
    def generate(cls, rng: Random) -> ShortCode:
        raw = int.from_bytes(rng(16), "big")  # 128 bits, reduced below with negligible bias
        digits = f"{raw % 10**8:08d}"
        raw //= 10**8
        return cls(digits=digits, words=(WORDS[raw % 2048], WORDS[(raw >> 11) % 2048]))

    @classmethod
    def parse(cls, text: str) -> ShortCode:
        """Tolerant of case, spaces and dashes, and of words given by their first four
        letters; strict about everything else."""
        tokens = re.findall(r"[0-9]+|[A-Za-z]+", text)
        digits = "".join(t for t in tokens if t.isdigit())
        words = [t.lower() for t in tokens if t.isalpha()]
        if len(digits) != 8 or len(words) != 2:
            raise UsageError("a short code looks like 1234-5678 word-word")
        full = []
        for w in words:
            match = _WORD_INDEX.get(w) or _PREFIX_INDEX.get(w[:4])
            if match is None or not match.startswith(w[:4]):
                raise UsageError(f"{w!r} is not a word of the linking code list")
            full.append(match)
        return cls(digits=digits, words=(full[0], full[1]))


_WORD_INDEX = {w: w for w in WORDS}
_PREFIX_INDEX = {w[:4]: w for w in WORDS}


# --- the QR payload ---------------------------------------------------------------------------

QR_PREFIX = "sottovoce-link:"
_QR_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class QRPayload:
    """What the existing device's QR code carries: a one-time 32-byte secret (CPace's
    PRS, and the mailbox's name), the SHA-256 fingerprint of the existing device's
    signing key (the new device checks the key it is handed against it), the server
    URL, and when the code expires."""

    secret: Secret
    device_fingerprint: bytes
    server_url: str
    expires_at_ms: int

    def __post_init__(self) -> None:
        if len(self.secret) != LINK_SECRET_BYTES or len(self.device_fingerprint) != 32:
            raise UsageError("a QR payload holds a 32-byte secret and fingerprint")
        if not re.fullmatch(r"(https|wss?|http)://[!-~]+", self.server_url) or (
            len(self.server_url) > LINK_SERVER_URL_MAX_LEN
        ):
            raise UsageError("the server URL must be an http(s)/ws(s) URL")

    @classmethod
    def generate(cls, rng: Random, *, device_signing_key: bytes, server_url: str,
                 now_ms: int) -> QRPayload:
        return cls(secret=Secret(rng(LINK_SECRET_BYTES)),
                   device_fingerprint=hashlib.sha256(device_signing_key).digest(),
                   server_url=server_url, expires_at_ms=now_ms + LINK_CODE_TTL_MS)

    def mailbox_id(self) -> str:
        """The mailbox both devices meet at: a hash of the secret, which tells the
        server nothing about it."""
        digest = hashlib.sha256(b"sottovoce link mailbox v1" + self.secret.expose()).digest()
        return digest[:16].hex()

    def encode(self) -> str:
        w = Writer()
        w.u8(_QR_VERSION)
        w.raw(self.secret.expose())
        w.raw(self.device_fingerprint)
        w.u64(self.expires_at_ms)
        w.opaque16(self.server_url.encode("ascii"))
        return QR_PREFIX + base64.urlsafe_b64encode(w.getvalue()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, *, now_ms: int) -> QRPayload:
        """Parse a scanned or pasted payload; refuse a malformed or expired one."""
        text = text.strip()
        if not text.startswith(QR_PREFIX) or len(text) > 4 * LINK_SERVER_URL_MAX_LEN:
            raise UsageError("that is not a sottovoce linking code")
        body = text[len(QR_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise UsageError("the linking code is damaged") from None

        def read(r: Reader) -> QRPayload:
            r.version(_QR_VERSION, "linking code")
            secret, fp, expires = r.raw(32), r.raw(32), r.u64()
            url = r.opaque16().decode("ascii")
            return cls(secret=Secret(secret), device_fingerprint=fp, server_url=url,
                       expires_at_ms=expires)

        try:
            payload = decode(read, raw)
        except (DecodeError, UsageError, UnicodeDecodeError):
            raise UsageError("the linking code is damaged") from None
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != body:
            raise UsageError("the linking code is damaged")
        if now_ms >= payload.expires_at_ms:
            raise LinkError("the linking code has expired; show a new one")
        if payload.expires_at_ms > now_ms + LINK_CODE_TTL_MS + 60_000:
            raise UsageError("the linking code claims an expiry too far ahead")
        return payload

    def __repr__(self) -> str:
        return f"QRPayload(server_url={self.server_url!r}, expires_at_ms={self.expires_at_ms})"
