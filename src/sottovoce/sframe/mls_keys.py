"""Per-sender, per-track SFrame base keys from a room's MLS exporter.

::

    MLS epoch n ── exporter_secret_n (RFC 9420 §8.5)
         │
         │  base_key(n, leaf, track) = MLS-Exporter("sottovoce sframe", ctx, Nh)
         │      ctx = struct {                      (RFC 9420 §2.1 presentation language)
         │          opaque track_label<0..255>;     "chat" | "audio" | "video" | "screen"
         │          uint32 sender_leaf;             the sender's LeafIndex in epoch n
         │          uint16 sframe_cipher_suite;     RFC 9605 §8.1 registry value
         │      }
         │      Nh = hash size of the SFrame suite (32 or 64 bytes)
         ▼
    base_key ── RFC 9605 §4.4.2 derive_key_salt(KID, base_key) ──► sframe_key, sframe_salt

    KID (u64), the layout of RFC 9605 §5.2 with a track field added:

      63 ...................... 8 7 ...... 4 3 ...... 0
     +--------------------------+-----------+-----------+
     |  sender leaf index       |  track id | epoch mod |
     |  (up to 56 bits)         |  (4 bits) | 16 (4 b.) |
     +--------------------------+-----------+-----------+

Why this shape:

* One exporter output per (epoch, sender, track): each key has exactly one
  sender (RFC 9605 §4.4.1: a base_key MUST NOT be used by several senders),
  the tracks are independent, and a member removed at epoch n+1 lacks
  exporter_secret_{n+1}, so it derives no key of any later epoch (docs/architecture.md §Rooms).
  The context is length-prefixed and fixed-width after the label, so no two
  (track, leaf, suite) triples give the same bytes; binding the SFrame suite
  keeps a key from ever serving two suites.
* The KID alone names the key: the low byte is two hex digits (track, epoch),
  and the leaf index sits on top where it needs no group-size parameter (the
  RFC's S) and costs no bytes when small: leaf 0-255 gives a 1-2 byte KID.
* E = 4 epoch bits: a receiver keeps at most 16 epochs apart; RFC 9605 §5.2
  requires dropping an old epoch when a new one with the same low bits comes,
  which :class:`MediaKeyManager` does.

Epoch changes (:class:`MediaKeyManager`): sending moves to the new epoch at
once and the old send keys are dropped (a member removed by that commit still
holds the old epoch's keys). Receive keys of older epochs stay for a grace
period counted in frames authenticated under the current epoch (no clocks),
or until :meth:`MediaKeyManager.drop_old_epochs` / the end of a
:meth:`MediaKeyManager.transition` block. Receive keys are derived lazily,
on the first frame from a member of a retained epoch, so a large room costs
nothing up front; the exporter of an epoch is released when the epoch is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

from sottovoce.codec.tls import Writer
from sottovoce.errors import UsageError
from sottovoce.limits import (
    MLS_MAX_LEAVES,
    SFRAME_EPOCH_GRACE_FRAMES,
    SFRAME_MAX_COUNTER,
    SFRAME_REPLAY_WINDOW,
)
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret
from sottovoce.sframe.context import SFrameContext
from sottovoce.sframe.errors import UnknownKeyId
from sottovoce.sframe.header import parse_header
from sottovoce.sframe.suites import SFrameSuite, cipher_suite

#: The MLS exporter label for SFrame base keys.
EXPORTER_LABEL = b"sottovoce sframe"
#: KID bit widths (see the module diagram).
EPOCH_BITS = 4
TRACK_BITS = 4
_EPOCH_MASK = (1 << EPOCH_BITS) - 1
_TRACK_MASK = (1 << TRACK_BITS) - 1
_LEAF_SHIFT = EPOCH_BITS + TRACK_BITS

#: MLS-Exporter(label, context, length) of one epoch, e.g.
#: ``EpochSecrets.exporter`` (returns a Secret) or any function returning bytes.
Exporter = Callable[[bytes, bytes, int], bytes | Secret]


class Track(IntEnum):
    """Media tracks of a room; each has its own keys. Ids 4-15 are reserved."""

    CHAT = 0
    AUDIO = 1
    VIDEO = 2
    SCREEN = 3

    @property
    def label(self) -> bytes:
        return self.name.lower().encode("ascii")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyId:
    """The three fields of a sottovoce SFrame KID."""

    epoch_bits: int
    leaf: int
    track: Track

    def __post_init__(self) -> None:
        if not 0 <= self.epoch_bits <= _EPOCH_MASK:
            raise UsageError("KID epoch field out of range")
        if not 0 <= self.leaf < MLS_MAX_LEAVES:
            raise UsageError("leaf index out of range")

    @classmethod
    def for_epoch(cls, epoch: int, leaf: int, track: Track) -> KeyId:
        if epoch < 0:
            raise UsageError("epoch must be non-negative")
        return cls(epoch_bits=epoch & _EPOCH_MASK, leaf=leaf, track=Track(track))

    def encode(self) -> int:
        return (self.leaf << _LEAF_SHIFT) | (int(self.track) << EPOCH_BITS) | self.epoch_bits

    @classmethod
    def decode(cls, kid: int) -> KeyId:
        """Split a KID from a frame header; :class:`UnknownKeyId` if no key can have it."""
        track = (kid >> EPOCH_BITS) & _TRACK_MASK
        leaf = kid >> _LEAF_SHIFT
        if kid < 0 or track > max(Track) or leaf >= MLS_MAX_LEAVES:
            raise UnknownKeyId("KID names no sottovoce track key")
        return cls(epoch_bits=kid & _EPOCH_MASK, leaf=leaf, track=Track(track))


def make_kid(epoch: int, leaf: int, track: Track) -> int:
    """KID = leaf ‖ track (4 bits) ‖ epoch mod 16 (4 bits)."""
    return KeyId.for_epoch(epoch, leaf, track).encode()


def parse_kid(kid: int) -> KeyId:
    return KeyId.decode(kid)


def exporter_context(leaf: int, track: Track, suite: SFrameSuite) -> bytes:
    """The MLS-Exporter context for one (sender, track) key (see module diagram)."""
    if not 0 <= leaf < MLS_MAX_LEAVES:
        raise UsageError("leaf index out of range")
    w = Writer()
    w.opaque8(Track(track).label)
    w.u32(leaf)
    w.u16(int(suite.id))
    return w.getvalue()


def base_key(exporter: Exporter, leaf: int, track: Track, suite: SFrameSuite) -> Secret:
    """base_key(epoch, leaf, track) from that epoch's MLS exporter."""
    out = exporter(EXPORTER_LABEL, exporter_context(leaf, track, suite), suite.nh)
    secret = out if isinstance(out, Secret) else Secret(out)
    if len(secret) != suite.nh:
        raise UsageError("exporter returned a secret of the wrong length")
    return secret


def keys_for_epoch(
    exporter: Exporter,
    epoch: int,
    leaf_indices: Iterable[int],
    suite: SFrameSuite | int,
    tracks: Iterable[Track] = tuple(Track),
) -> dict[int, Secret]:
    """Every base key of an epoch, eagerly: ``{KID: base_key}`` for each leaf x track."""
    s = suite if isinstance(suite, SFrameSuite) else cipher_suite(suite)
    track_list = tuple(tracks)
    return {
        make_kid(epoch, leaf, track): base_key(exporter, leaf, track, s)
        for leaf in leaf_indices
        for track in track_list
    }


class MediaFrame(tuple[int, int, Track, int, bytes]):
    """An authenticated media frame and whom it is from:
    ``(epoch, sender_leaf, track, ctr, plaintext)``, also as attributes.

    A plain tuple subclass (built once per frame on the hot path without a
    Python-level ``__new__``); its repr never shows the plaintext.
    """

    __slots__ = ()

    epoch = ReadOnly[int](0, "the MLS epoch whose key decrypted the frame")
    sender_leaf = ReadOnly[int](1, "the sender's leaf index in that epoch")
    track = ReadOnly[Track](2, "the media track")
    ctr = ReadOnly[int](3, "the frame's SFrame CTR")
    plaintext = ReadOnly[bytes](4, "the decrypted frame")

    def __repr__(self) -> str:
        return (
            f"MediaFrame(epoch={self[0]}, sender_leaf={self[1]}, track={self[2].name}, "
            f"ctr={self[3]}, plaintext=<{len(self[4])} bytes>)"
        )


#: Hot path: map track ids by index rather than through the Enum constructor.
_TRACKS = tuple(Track)


class _Epoch:
    __slots__ = ("epoch", "exporter", "grace_left", "kids", "members")

    def __init__(self, epoch: int, exporter: Exporter, members: frozenset[int]) -> None:
        self.epoch = epoch
        self.exporter: Exporter | None = exporter
        self.members = members
        self.kids: set[int] = set()
        self.grace_left: int | None = None  # None while current


class MediaKeyManager:
    """One member's SFrame keys for a room across MLS epochs.

    ``own_leaf`` is this member's leaf index; ``grace_frames`` how many frames
    authenticated under the current epoch keep older epochs' receive keys
    alive (0: drop at once). The SFrame context is :attr:`context`.
    """

    def __init__(
        self,
        suite: SFrameSuite | int,
        own_leaf: int,
        *,
        grace_frames: int = SFRAME_EPOCH_GRACE_FRAMES,
        replay_window: int = SFRAME_REPLAY_WINDOW,
        max_counter: int = SFRAME_MAX_COUNTER,
    ) -> None:
        if not 0 <= own_leaf < MLS_MAX_LEAVES:
            raise UsageError("leaf index out of range")
        if grace_frames < 0:
            raise UsageError("grace_frames must be non-negative")
        self.context = SFrameContext(suite, replay_window=replay_window, max_counter=max_counter)
        self._suite = self.context.suite
        self._own_leaf = own_leaf
        self._grace_frames = grace_frames
        self._current: _Epoch | None = None
        self._by_bits: dict[int, _Epoch] = {}
        self._grace: list[_Epoch] = []
        self._send_kids: dict[Track, int] = {}

    def __repr__(self) -> str:
        return f"MediaKeyManager(leaf={self._own_leaf}, epochs={self.epochs()})"

    @property
    def own_leaf(self) -> int:
        return self._own_leaf

    @property
    def current_epoch(self) -> int | None:
        return None if self._current is None else self._current.epoch

    def epochs(self) -> tuple[int, ...]:
        """Epochs whose receive keys are retained, oldest first."""
        return tuple(sorted(e.epoch for e in self._by_bits.values()))

    # --- epochs ----------------------------------------------------------------

    def begin_epoch(self, epoch: int, exporter: Exporter, leaf_indices: Iterable[int]) -> None:
        """Switch to ``epoch``: send under it now, receive its members' frames.

        Older epochs enter (or continue) their grace period; an older epoch with
        the same low 4 bits is dropped now (RFC 9605 §5.2).
        """
        members = frozenset(leaf_indices)
        if self._own_leaf not in members:
            raise UsageError("own leaf is not a member of the new epoch")
        if any(not 0 <= leaf < MLS_MAX_LEAVES for leaf in members):
            raise UsageError("leaf index out of range")
        if self._current is not None and epoch <= self._current.epoch:
            raise UsageError("epochs must increase")
        if epoch < 0:
            raise UsageError("epoch must be non-negative")
        # Stop sending under the old epoch at once: whoever the commit removed
        # still holds its keys.
        for kid in self._send_kids.values():
            self.context.remove_key(kid)
        self._send_kids = {}
        old = self._current
        if old is not None:
            old.grace_left = self._grace_frames
            self._grace.append(old)
        for e in self._grace:
            left = e.grace_left if e.grace_left is not None else self._grace_frames
            e.grace_left = min(left, self._grace_frames)
        clash = self._by_bits.get(epoch & _EPOCH_MASK)
        if clash is not None:
            self._drop(clash)
        new = _Epoch(epoch, exporter, members)
        self._by_bits[epoch & _EPOCH_MASK] = new
        self._current = new
        for e in [e for e in self._grace if e.grace_left == 0]:
            self._drop(e)

    def drop_epoch(self, epoch: int) -> bool:
        """Forget every key of ``epoch`` now; False if it was not retained."""
        e = self._by_bits.get(epoch & _EPOCH_MASK)
        if e is None or e.epoch != epoch:
            return False
        self._drop(e)
        return True

    def drop_old_epochs(self) -> None:
        """End every grace period now: keep only the current epoch."""
        for e in list(self._grace):
            self._drop(e)

    @contextmanager
    def transition(
        self, epoch: int, exporter: Exporter, leaf_indices: Iterable[int]
    ) -> Iterator[MediaKeyManager]:
        """``with mgr.transition(n, exporter, leaves): ...`` -- begin epoch ``n``;
        older epochs stay decodable inside the block and are dropped when it ends
        (even on error)."""
        self.begin_epoch(epoch, exporter, leaf_indices)
        try:
            yield self
        finally:
            self.drop_old_epochs()

    def _drop(self, e: _Epoch) -> None:
        for kid in e.kids:
            self.context.remove_key(kid)
        e.kids.clear()
        e.exporter = None  # release the epoch's exporter secret (forward secrecy)
        if self._by_bits.get(e.epoch & _EPOCH_MASK) is e:
            del self._by_bits[e.epoch & _EPOCH_MASK]
        if e in self._grace:
            self._grace.remove(e)
        if self._current is e:
            self._current = None
            self._send_kids = {}

    # --- frames ----------------------------------------------------------------

    def protect(self, track: Track, plaintext: bytes, metadata: bytes = b"") -> bytes:
        """Encrypt a frame of ``track`` from this member under the current epoch."""
        kid = self._send_kids.get(track)
        if kid is None:
            kid = self._install_send(track)
        return self.context.protect(kid, plaintext, metadata)

    def _install_send(self, track: Track) -> int:
        cur = self._current
        if cur is None or cur.exporter is None:
            raise UsageError("no current epoch to send in")
        track = Track(track)
        kid = make_kid(cur.epoch, self._own_leaf, track)
        self.context.add_send_key(kid, base_key(cur.exporter, self._own_leaf, track, self._suite))
        cur.kids.add(kid)
        self._send_kids[track] = kid
        return kid

    def unprotect(self, frame: bytes, metadata: bytes = b"") -> MediaFrame:
        """Decrypt a frame from another member. Raises the errors of
        :meth:`SFrameContext.unprotect`; :class:`UnknownKeyId` also for a KID of
        an epoch not (or no longer) held, or of a leaf not in that epoch."""
        try:
            kid, ctr, plaintext = self.context.unprotect(frame, metadata)
        except UnknownKeyId:
            kid, _, _ = parse_header(frame)
            if not self._install_recv(kid):
                raise
            kid, ctr, plaintext = self.context.unprotect(frame, metadata)
        e = self._by_bits[kid & _EPOCH_MASK]
        if self._grace and e is self._current:
            self._tick_grace()
        # The KID authenticated (it is AAD) and has a key, so its track field is valid.
        return MediaFrame(
            (
                e.epoch,
                kid >> _LEAF_SHIFT,
                _TRACKS[(kid >> EPOCH_BITS) & _TRACK_MASK],
                ctr,
                plaintext,
            )
        )

    def _install_recv(self, kid: int) -> bool:
        kid_fields = KeyId.decode(kid)
        e = self._by_bits.get(kid_fields.epoch_bits)
        leaf = kid_fields.leaf
        if e is None or e.exporter is None or leaf not in e.members or leaf == self._own_leaf:
            return False
        self.context.add_recv_key(kid, base_key(e.exporter, leaf, kid_fields.track, self._suite))
        e.kids.add(kid)
        return True

    def _tick_grace(self) -> None:
        for e in list(self._grace):
            left = (e.grace_left if e.grace_left is not None else 0) - 1
            e.grace_left = left
            if left <= 0:
                self._drop(e)
