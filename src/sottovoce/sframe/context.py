"""An SFrame context (RFC 9605 §4.4, appendix A): per-KID keys, send counters,
receive replay windows.

::

    protect(kid, pt, metadata)                 unprotect(frame, metadata)
      key  = send[kid]                           kid, ctr, n = parse_header(frame)
      ctr  = key.next  (raise if exhausted)      key = recv[kid]      (else UnknownKeyId)
      hdr  = header(kid, ctr)                    key.window.check(ctr) (else ReplayError)
      nonce = salt XOR ctr                       nonce = salt XOR ctr
      ct   = AEAD.Encrypt(nonce, hdr ‖ md, pt)   pt = AEAD.Decrypt(nonce, hdr ‖ md, frame[n:])
      key.next = ctr + 1      <- commit          key.window.accept(ctr)  <- commit
      return hdr ‖ ct                            return (kid, ctr, pt)

Nothing changes on failure: the counter advances only after a successful
seal, and the replay window records a counter only after authentication.

Keys are one-way (§4.4.1: "usable for encryption or decryption, never both").
A send KID cannot be installed twice while present, nor re-installed later
with the same key (its counter would restart at 0 and reuse nonces): the
context remembers a one-way fingerprint of every retired send key.

Anti-replay (§7.5, left to the application by the RFC) follows RFC 3711
§3.3.2: per KID, the highest counter seen and a bitmap of the ``window``
counters below it. A counter is accepted once, and only if it is newer than
``highest - window``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

from sottovoce.crypto import kdf
from sottovoce.crypto.kdf import Hash
from sottovoce.errors import UsageError
from sottovoce.limits import (
    SFRAME_MAX_COUNTER,
    SFRAME_MAX_KID,
    SFRAME_MAX_REPLAY_WINDOW,
    SFRAME_REPLAY_WINDOW,
)
from sottovoce.secret import Secret
from sottovoce.sframe.errors import (
    CounterExhausted,
    FrameDecryptionError,
    KeyUsageError,
    ReplayError,
    UnknownKeyId,
)
from sottovoce.sframe.header import encode_header, parse_header
from sottovoce.sframe.suites import RAW_OPEN_ERRORS, FrameCipher, SFrameSuite, cipher_suite

_RETIRED_LABEL = b"sottovoce sframe retired send key"


class ReplayWindow:
    """A sliding anti-replay window over one KID's counters (RFC 3711 §3.3.2 style).

    Bit ``i`` of the bitmap stands for counter ``highest - i``. :meth:`check` only
    looks; :meth:`accept` records, and is called after authentication.
    """

    __slots__ = ("_full", "_mask", "_top", "size")

    def __init__(self, size: int = SFRAME_REPLAY_WINDOW) -> None:
        if not 1 <= size <= SFRAME_MAX_REPLAY_WINDOW:
            raise UsageError("replay window size out of range")
        self.size = size
        self._full = (1 << size) - 1
        self._top = -1  # nothing seen yet: any counter is new
        self._mask = 0

    @property
    def highest(self) -> int | None:
        """The highest counter accepted so far, or None."""
        return None if self._top < 0 else self._top

    def check(self, ctr: int) -> None:
        """Raise :class:`ReplayError` if ``ctr`` was seen or is older than the window."""
        top = self._top
        if ctr > top:
            return
        d = top - ctr
        if d >= self.size:
            raise ReplayError("SFrame counter older than the replay window")
        if (self._mask >> d) & 1:
            raise ReplayError("SFrame counter already received")

    def accept(self, ctr: int) -> None:
        """Record ``ctr``; call only after :meth:`check` passed and the frame authenticated."""
        top = self._top
        if ctr > top:
            shift = ctr - top
            # A jump past the window forgets everything; never shift by a huge
            # attacker-chosen amount (an authenticated CTR may still be 2^64-1).
            self._mask = ((self._mask << shift) | 1) & self._full if shift < self.size else 1
            self._top = ctr
        else:
            self._mask |= 1 << (top - ctr)


class DecryptedFrame(NamedTuple):
    """A frame that authenticated: its KID and CTR (from the header) and plaintext."""

    kid: int
    ctr: int
    plaintext: bytes


#: Builds a DecryptedFrame without NamedTuple's Python-level __new__ (hot path).
_new_frame = partial(tuple.__new__, DecryptedFrame)


class _SendKey:
    __slots__ = (
        "ctr_shift",
        "fingerprint",
        "hdr_base",
        "hdr_kid_len",
        "hdr_short",
        "next_ctr",
        "salt",
        "seal",
    )

    def __init__(self, kid: int, cipher: FrameCipher, salt: int, fingerprint: bytes) -> None:
        self.seal = cipher.raw_seal
        self.salt = salt
        self.next_ctr = 0
        self.fingerprint = fingerprint
        # The KID half of the header is fixed per key, so headers are built as
        # integers: hdr_short | CTR << ctr_shift for CTR < 8 (CTR in the config
        # byte), hdr_base[n] | CTR for a CTR of n bytes; then one to_bytes.
        if kid < 8:
            config, klen, kid_part = kid << 4, 0, 0
        else:
            klen = (kid.bit_length() + 7) >> 3
            config, kid_part = 0x80 | ((klen - 1) << 4), kid
        self.hdr_kid_len = 1 + klen
        self.ctr_shift = 8 * klen
        self.hdr_short = (config << (8 * klen)) | kid_part
        self.hdr_base = [0] + [
            ((((config | 0x08 | (n - 1)) << (8 * klen)) | kid_part) << (8 * n)) for n in range(1, 9)
        ]


class _RecvKey(ReplayWindow):
    """A receive key and its replay window (the window's state inlined for speed)."""

    __slots__ = ("open", "salt")

    def __init__(self, cipher: FrameCipher, salt: int, window_size: int) -> None:
        super().__init__(window_size)
        self.open = cipher.raw_open
        self.salt = salt


class SFrameContext:
    """Keys by KID for one cipher suite; encrypts and decrypts whole frames.

    ``replay_window`` is the per-KID anti-replay window in counters;
    ``max_counter`` the last counter a send key may use (default 2^64 - 1,
    the most an SFrame header can carry; lower it to rekey earlier).
    """

    __slots__ = ("_max_counter", "_nn", "_recv", "_retired", "_send", "_suite", "_window_size")

    def __init__(
        self,
        suite: SFrameSuite | int,
        *,
        replay_window: int = SFRAME_REPLAY_WINDOW,
        max_counter: int = SFRAME_MAX_COUNTER,
    ) -> None:
        self._suite = suite if isinstance(suite, SFrameSuite) else cipher_suite(suite)
        if not 1 <= replay_window <= SFRAME_MAX_REPLAY_WINDOW:
            raise UsageError("replay window size out of range")
        if not 0 <= max_counter <= SFRAME_MAX_COUNTER:
            raise UsageError("max_counter must fit in 64 bits")
        self._window_size = replay_window
        self._max_counter = max_counter
        self._nn = self._suite.nn
        self._send: dict[int, _SendKey] = {}
        self._recv: dict[int, _RecvKey] = {}
        self._retired: set[bytes] = set()

    def __repr__(self) -> str:
        return f"SFrameContext({self._suite.name}, send={len(self._send)}, recv={len(self._recv)})"

    @property
    def suite(self) -> SFrameSuite:
        return self._suite

    # --- keys ------------------------------------------------------------------

    def _derive(self, kid: int, base_key: bytes | Secret) -> tuple[FrameCipher, int, bytes]:
        if not 0 <= kid <= SFRAME_MAX_KID:
            raise UsageError("SFrame KID must fit in 64 bits")
        key, salt = self._suite.derive_key_salt(kid, base_key)
        raw = key.expose()
        fingerprint = kdf.digest(Hash.SHA256, _RETIRED_LABEL + kid.to_bytes(8, "big") + raw)
        return self._suite.cipher(raw), int.from_bytes(salt.expose(), "big"), fingerprint

    def add_send_key(self, kid: int, base_key: bytes | Secret) -> None:
        """RFC 9605 §4.4.1: install ``base_key`` for sending under ``kid``, CTR from 0."""
        if kid in self._send or kid in self._recv:
            raise KeyUsageError("KID already has a key in this context")
        cipher, salt, fingerprint = self._derive(kid, base_key)
        if fingerprint in self._retired:
            raise KeyUsageError("this send key was used before; its counters would repeat")
        self._send[kid] = _SendKey(kid, cipher, salt, fingerprint)

    def add_recv_key(self, kid: int, base_key: bytes | Secret) -> None:
        """RFC 9605 §4.4.1: install ``base_key`` for receiving under ``kid``."""
        if kid in self._send or kid in self._recv:
            raise KeyUsageError("KID already has a key in this context")
        cipher, salt, _ = self._derive(kid, base_key)
        self._recv[kid] = _RecvKey(cipher, salt, self._window_size)

    def remove_key(self, kid: int) -> bool:
        """Forget the key of ``kid`` (either direction); False if there was none."""
        send = self._send.pop(kid, None)
        if send is not None:
            self._retired.add(send.fingerprint)
            return True
        return self._recv.pop(kid, None) is not None

    def has_send_key(self, kid: int) -> bool:
        return kid in self._send

    def has_recv_key(self, kid: int) -> bool:
        return kid in self._recv

    def send_kids(self) -> frozenset[int]:
        return frozenset(self._send)

    def recv_kids(self) -> frozenset[int]:
        return frozenset(self._recv)

    def next_counter(self, kid: int) -> int:
        """The CTR the next :meth:`protect` under ``kid`` will use."""
        key = self._send.get(kid)
        if key is None:
            raise KeyUsageError("no send key for this KID")
        return key.next_ctr

    # --- frames ----------------------------------------------------------------

    def protect(self, kid: int, plaintext: bytes, metadata: bytes = b"") -> bytes:
        """RFC 9605 §4.4.3 ``encrypt``: header ‖ AEAD.Encrypt(key, nonce, header ‖ metadata, pt)."""
        key = self._send.get(kid)
        if key is None:
            raise KeyUsageError("no send key for this KID")
        ctr = key.next_ctr
        if ctr > self._max_counter:
            # §7.4: never encrypt twice with the same key and nonce.
            raise CounterExhausted("SFrame send counter exhausted for this KID; rekey")
        if ctr < 8:
            header = (key.hdr_short | (ctr << key.ctr_shift)).to_bytes(key.hdr_kid_len, "big")
        else:
            n = (ctr.bit_length() + 7) >> 3
            header = (key.hdr_base[n] | ctr).to_bytes(key.hdr_kid_len + n, "big")
        nonce = (key.salt ^ ctr).to_bytes(self._nn, "big")
        ct = key.seal(nonce, plaintext, header + metadata if metadata else header)
        key.next_ctr = ctr + 1
        return header + ct

    def unprotect(self, frame: bytes, metadata: bytes = b"") -> DecryptedFrame:
        """RFC 9605 §4.4.4 ``decrypt``. Raises :class:`HeaderDecodeError`,
        :class:`UnknownKeyId`, :class:`ReplayError` or :class:`FrameDecryptionError`;
        state changes only on success."""
        kid, ctr, n = parse_header(frame)
        key = self._recv.get(kid)
        if key is None:
            raise UnknownKeyId("no receive key for the frame's KID")
        # ReplayWindow.check, inlined (this is the per-frame hot path).
        top = key._top
        if ctr <= top:
            key.check(ctr)
        header = frame[:n]
        nonce = (key.salt ^ ctr).to_bytes(self._nn, "big")
        try:
            plaintext = key.open(nonce, frame[n:], header + metadata if metadata else header)
        except RAW_OPEN_ERRORS:
            raise FrameDecryptionError("frame authentication failed") from None
        # ReplayWindow.accept, inlined for the common case (a new highest counter).
        if ctr > top and ctr - top < key.size:
            key._mask = ((key._mask << (ctr - top)) | 1) & key._full
            key._top = ctr
        else:
            key.accept(ctr)
        return _new_frame((kid, ctr, plaintext))

    def would_accept(self, frame: bytes) -> bool:
        """Whether the header names a receive key and a fresh counter (no decryption)."""
        kid, ctr, _ = parse_header(frame)
        key = self._recv.get(kid)
        if key is None:
            return False
        try:
            key.check(ctr)
        except ReplayError:
            return False
        return True


def encrypt_frame(
    suite: SFrameSuite,
    kid: int,
    ctr: int,
    base_key: bytes | Secret,
    plaintext: bytes,
    metadata: bytes = b"",
) -> bytes:
    """Stateless RFC 9605 §4.4.3 ``encrypt`` at a caller-chosen CTR.

    For test vectors and tools only: the caller must never repeat (KID, CTR)
    under one base_key. Applications use :class:`SFrameContext`, which owns
    the counter.
    """
    key, salt = suite.derive_key_salt(kid, base_key)
    header = encode_header(kid, ctr)
    nonce = (int.from_bytes(salt.expose(), "big") ^ ctr).to_bytes(suite.nn, "big")
    return header + suite.cipher(key).seal(nonce, plaintext, header + metadata)
