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

Per-frame cost (bench/sframe.py). The checks above are all made for every
frame; what is cached is only what cannot change between frames:

* send: the header is ``base | CTR`` as one integer, with ``base`` (config
  byte and KID) cached per CTR width; the cache is re-made when CTR crosses a
  power of 256 and the counter limit is checked there, so the common frame
  does one comparison;
* receive: the header is read as one integer (its length comes from the
  config byte); its prefix (config byte + KID bytes), once a frame with it
  parsed and authenticated, maps to (key, KID, least minimal CTR of that
  width), so a frame costs one dict lookup and one comparison for the CTR's
  minimal encoding; any frame that misses (new KID or width, CTR < 8,
  truncated) or is non-minimal takes the full parser, which raises the
  precise error;
* the replay bitmap tracks *missing* counters, so in-order frames leave it 0;
* ``AESGCM`` objects are built once per key; the nonce is ``salt ^ CTR``
  on integers; results are plain tuple subclasses (no dataclass per frame).
"""

from __future__ import annotations

from sottovoce.crypto import kdf
from sottovoce.crypto.kdf import Hash
from sottovoce.errors import UsageError
from sottovoce.limits import (
    SFRAME_MAX_COUNTER,
    SFRAME_MAX_KID,
    SFRAME_MAX_REPLAY_WINDOW,
    SFRAME_REPLAY_WINDOW,
)
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret
from sottovoce.sframe.errors import (
    CounterExhausted,
    FrameDecryptionError,
    KeyUsageError,
    ReplayError,
    UnknownKeyId,
)
from sottovoce.sframe.header import _LAYOUTS, encode_header, parse_header
from sottovoce.sframe.suites import RAW_OPEN_ERRORS, FrameCipher, SFrameSuite, cipher_suite

_RETIRED_LABEL = b"sottovoce sframe retired send key"


def _fast_layout(config: int) -> tuple[int, int, int]:
    """(header length, CTR bits, CTR mask) for the fast path of a config byte.

    The fast path only serves headers with an appended CTR, whose prefix --
    config byte and KID, ``header >> CTR bits`` -- is fixed for a (KID, width);
    such a prefix is at least 8 (its config byte has the 0x08 flag). A CTR in
    the config byte (CTR < 8) gets (0, 0, 0): the empty header, prefix 0, which
    is never cached, so those frames always take the slow path.
    """
    if not config & 0x08:
        return 0, 0, 0
    hlen = _LAYOUTS[config][0]
    bits = 8 * ((config & 0x07) + 1)
    return hlen, bits, (1 << bits) - 1


_FAST = tuple(_fast_layout(c) for c in range(256))
#: Fast-path cache entries per context (a receive KID uses at most 8, one per
#: CTR width, so this covers 1,024 KIDs). Past it, frames still decrypt, by the
#: slow path.
_MAX_PREFIXES = 8 * 1024
_from_bytes = int.from_bytes


class ReplayWindow:
    """A sliding anti-replay window over one KID's counters (RFC 3711 §3.3.2 style).

    The window holds the highest counter accepted and the ``size - 1`` below it.
    Bit ``i`` of the bitmap is set while counter ``highest - i`` is inside the
    window and has *not* been received yet. Tracking the missing counters rather
    than the seen ones makes the common case free: frames in order leave the
    bitmap at 0, so :meth:`accept` only moves ``highest``. A counter is accepted
    once, and only if it is newer than ``highest - size``.

    :meth:`check` only looks; :meth:`accept` records, and is called after
    authentication.
    """

    __slots__ = ("_full", "_missing", "_top", "size")

    def __init__(self, size: int = SFRAME_REPLAY_WINDOW) -> None:
        if not 1 <= size <= SFRAME_MAX_REPLAY_WINDOW:
            raise UsageError("replay window size out of range")
        self.size = size
        self._full = (1 << size) - 1
        self._top = -1  # nothing seen yet: any counter is new
        self._missing = 0

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
        if not (self._missing >> d) & 1:
            raise ReplayError("SFrame counter already received")

    def accept(self, ctr: int) -> None:
        """Record ``ctr``; call only after :meth:`check` passed and the frame authenticated."""
        top = self._top
        if ctr > top:
            d = ctr - top
            if d < self.size:
                # Shift the window up by d; the d - 1 counters skipped over
                # (top+1 .. ctr-1, bits 1 .. d-1) are now missing.
                self._missing = ((self._missing << d) | ((1 << d) - 2)) & self._full
            else:
                # A jump past the window: every counter in it but ctr is missing.
                # Never shift by a huge attacker-chosen amount (an authenticated
                # CTR may still be 2^64-1).
                self._missing = self._full ^ 1
            self._top = ctr
        else:
            self._missing &= ~(1 << (top - ctr))


class DecryptedFrame(tuple[int, int, bytes]):
    """A frame that authenticated: ``(kid, ctr, plaintext)``, also as attributes.

    A plain tuple subclass built as ``DecryptedFrame((kid, ctr, plaintext))``:
    unlike a NamedTuple it is made without a Python-level ``__new__`` (it is
    built once per frame on the hot path), and its repr never shows the plaintext.
    """

    __slots__ = ()

    kid = ReadOnly[int](0, "the frame's KID (authenticated: part of the AAD)")
    ctr = ReadOnly[int](1, "the frame's CTR")
    plaintext = ReadOnly[bytes](2, "the decrypted frame")

    def __repr__(self) -> str:
        return f"DecryptedFrame(kid={self[0]}, ctr={self[1]}, plaintext=<{len(self[2])} bytes>)"


class _SendKey:
    """A send key, its counter, and its header cached per counter width.

    The KID half of the header is fixed per key and the CTR width changes only
    when the counter crosses a power of 256, so the header is built as one
    integer: ``base | CTR`` written in ``hlen`` bytes, valid while
    ``CTR < limit``. Crossing ``limit`` (a new width, the short CTR < 8 form,
    or ``max_counter``) takes :meth:`header_slow`, which re-caches or raises.
    """

    __slots__ = (
        "base",
        "ctr_shift",
        "fingerprint",
        "hdr_base",
        "hdr_kid_len",
        "hdr_short",
        "hlen",
        "limit",
        "max_ctr",
        "next_ctr",
        "salt",
        "seal",
    )

    def __init__(
        self, kid: int, cipher: FrameCipher, salt: int, fingerprint: bytes, max_ctr: int
    ) -> None:
        self.seal = cipher.raw_seal
        self.salt = salt
        self.next_ctr = 0
        self.fingerprint = fingerprint
        self.max_ctr = max_ctr
        # Headers as integers: hdr_short | CTR << ctr_shift for CTR < 8 (CTR in
        # the config byte), hdr_base[n] | CTR for a CTR of n bytes.
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
        # CTR 0-7 use the short form: no cached width yet (limit 0 -> slow path).
        self.base, self.hlen, self.limit = 0, 0, 0

    def header_slow(self, ctr: int) -> bytes:
        """The header for ``ctr`` outside the cached width; caches the new width."""
        if ctr > self.max_ctr:
            # RFC 9605 §7.4: never encrypt twice with the same key and nonce.
            raise CounterExhausted("SFrame send counter exhausted for this KID; rekey")
        if ctr < 8:
            return (self.hdr_short | (ctr << self.ctr_shift)).to_bytes(self.hdr_kid_len, "big")
        n = (ctr.bit_length() + 7) >> 3
        # Counters only grow, so every CTR from here to the next power of 256
        # (or max_counter) has this width and is minimally encoded.
        self.base = self.hdr_base[n]
        self.hlen = self.hdr_kid_len + n
        self.limit = min(1 << (8 * n), self.max_ctr + 1)
        return (self.base | ctr).to_bytes(self.hlen, "big")


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

    __slots__ = (
        "_max_counter",
        "_prefixes",
        "_recv",
        "_retired",
        "_send",
        "_suite",
        "_window_size",
    )

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
        if self._suite.nn != 12:  # pragma: no cover - every RFC 9605 suite has Nn = 12
            raise UsageError("SFrame nonce size must be 12 bytes")
        self._window_size = replay_window
        self._max_counter = max_counter
        self._send: dict[int, _SendKey] = {}
        self._recv: dict[int, _RecvKey] = {}
        # Fast-path cache of unprotect: header prefix (config byte ‖ KID bytes as
        # an integer) -> (key, KID, least minimally encoded CTR of that width).
        self._prefixes: dict[int, tuple[_RecvKey, int, int]] = {}
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
        self._send[kid] = _SendKey(kid, cipher, salt, fingerprint, self._max_counter)

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
        if self._recv.pop(kid, None) is None:
            return False
        self._prefixes.clear()  # it may point at the removed key
        return True

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
        # Below key.limit the cached CTR width applies (and CTR <= max_counter);
        # header_slow re-caches the width, or raises CounterExhausted. Big-endian
        # is to_bytes' default since Python 3.11 (pyproject's floor); leaving the
        # argument out saves parsing it per call.
        header = (key.base | ctr).to_bytes(key.hlen) if ctr < key.limit else key.header_slow(ctr)
        # Nn is 12 for every RFC 9605 suite (checked in __init__).
        ct = key.seal(
            (key.salt ^ ctr).to_bytes(12),
            plaintext,
            header + metadata if metadata else header,
        )
        key.next_ctr = ctr + 1
        return header + ct

    def unprotect(self, frame: bytes, metadata: bytes = b"") -> DecryptedFrame:
        """RFC 9605 §4.4.4 ``decrypt``. Raises :class:`HeaderDecodeError`,
        :class:`UnknownKeyId`, :class:`ReplayError` or :class:`FrameDecryptionError`;
        state changes only on success."""
        # Fast path (the per-frame hot path): the config byte and KID bytes of the
        # frame name a (receive key, CTR width) whose header parsed and
        # authenticated before, so only the CTR is left to read and check for
        # minimal encoding. Anything else -- an empty frame, a CTR below 8, an
        # unknown KID, a truncated or non-minimal header -- takes _unprotect_slow,
        # which parses in full and raises the precise error.
        try:
            hlen, ctr_bits, ctr_mask = _FAST[frame[0]]
        except IndexError:  # empty
            return self._unprotect_slow(frame, metadata)
        header = frame[:hlen]
        value = _from_bytes(header)  # config ‖ KID ‖ CTR, big-endian
        try:
            key, kid, cmin = self._prefixes[value >> ctr_bits]
        except KeyError:
            return self._unprotect_slow(frame, metadata)
        # A hit implies the whole header is present: a truncated one yields a
        # shorter prefix, and prefixes that start with this config byte all have
        # the length it declares, so it misses. Minimal CTR encoding is checked here.
        ctr = value & ctr_mask
        if ctr < cmin:
            return self._unprotect_slow(frame, metadata)
        # From here on the same as _unprotect_slow, inlined (a call costs ~5%).
        # ReplayWindow.check, inlined.
        top = key._top
        if ctr <= top:
            key.check(ctr)
        try:
            plaintext = key.open(
                (key.salt ^ ctr).to_bytes(12),  # Nn = 12 (checked in __init__), big-endian
                frame[hlen:],
                # bytes() is free on bytes and makes a memoryview frame work too.
                bytes(header) + metadata if metadata else header,
            )
        except RAW_OPEN_ERRORS:
            raise FrameDecryptionError("frame authentication failed") from None
        # ReplayWindow.accept, inlined for the common case: the next counter.
        if ctr == top + 1:
            missing = key._missing
            if missing:  # 0 while frames arrive in order and none is lost
                key._missing = (missing << 1) & key._full
            key._top = ctr
        else:
            key.accept(ctr)
        return DecryptedFrame((kid, ctr, plaintext))

    def _unprotect_slow(self, frame: bytes, metadata: bytes) -> DecryptedFrame:
        kid, ctr, hlen = parse_header(frame)
        key = self._recv.get(kid)
        if key is None:
            raise UnknownKeyId("no receive key for the frame's KID")
        key.check(ctr)
        header = bytes(frame[:hlen])
        try:
            plaintext = key.open(
                (key.salt ^ ctr).to_bytes(12, "big"),
                frame[hlen:],
                header + metadata if metadata else header,
            )
        except RAW_OPEN_ERRORS:
            raise FrameDecryptionError("frame authentication failed") from None
        key.accept(ctr)
        # Remember this (KID, CTR width) for the fast path, once the header is known
        # good and authenticated. Bounded: at most 8 CTR widths per receive key, and
        # the cache is cleared whenever a receive key goes.
        _, ctr_bits, _ = _FAST[header[0]]
        if ctr_bits and len(self._prefixes) < _MAX_PREFIXES:
            prefix = _from_bytes(header) >> ctr_bits
            self._prefixes[prefix] = (key, kid, _LAYOUTS[header[0]][6])
        return DecryptedFrame((kid, ctr, plaintext))

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
