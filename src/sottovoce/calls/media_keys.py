"""SFrame keys of one device in a room call, epoch by epoch of the call's MLS group.

::

    call group epoch n ──EpochKeys.derive (sframe/mls_keys.py: one base key per
         │                 member leaf × track, from epoch n's MLS exporter)
         ▼
    CallKeys.begin_epoch(keys_n, now)
         ├─ send: this device's keys of epoch n, at once; its epoch n-1 keys are gone
         ├─ receive: every other member's keys of epoch n
         └─ epoch n-1 receive keys stay for a sender only while
              · that sender is still a member of epoch n (same user/device), and
              · its first epoch-n frame of that track has not arrived yet
                (tracks are separate streams: audio may overtake video), and
              · now <= switch time + CALL_EPOCH_GRACE_MS (2 s)

A sender removed by the commit loses every key at once: nothing it sends after
the commit is accepted, whichever epoch it claims. Each key has its own replay
window (RFC 9605 §7.5, kept by :class:`~sottovoce.sframe.SFrameContext`).

The KID of a frame names (epoch mod 16, sender leaf, track)
(:mod:`sottovoce.sframe.mls_keys`); :meth:`CallKeys.sender_of` maps it to the
sender's device through the epoch's roster, so a receiver can refuse a stream
whose frames name another sender than the one it subscribed to before spending
a decryption on it. Sans-IO: time is a parameter; not thread-safe (the media
layer holds a lock around it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sottovoce.errors import UsageError
from sottovoce.limits import CALL_EPOCH_GRACE_MS, SFRAME_REPLAY_WINDOW
from sottovoce.protocol.fields import Device as Device
from sottovoce.secret import Secret
from sottovoce.sframe import (
    CipherSuiteId,
    Exporter,
    KeyId,
    SFrameContext,
    Track,
    UnknownKeyId,
    keys_for_epoch,
    parse_header,
)
from sottovoce.sframe.mls_keys import EPOCH_BITS

#: The tracks of a call (chat keys are the room's business, not the call's).
CALL_TRACKS = (Track.AUDIO, Track.VIDEO, Track.SCREEN)
#: AES-128-GCM with SHA-256 (RFC 9605 §4.5): what browsers' SFrame implementations offer.
CALL_SFRAME_SUITE = int(CipherSuiteId.AES_128_GCM_SHA256_128)
_EPOCH_MASK = (1 << EPOCH_BITS) - 1


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class EpochKeys:
    """One epoch of the call group as the media layer needs it: who holds which leaf,
    and every member's base key per track (the exporter itself never leaves the group)."""

    epoch: int
    own_leaf: int
    roster: Mapping[int, Device]
    base_keys: Mapping[int, Secret]  # KID -> base key

    @classmethod
    def derive(
        cls,
        *,
        epoch: int,
        exporter: Exporter,
        roster: Mapping[int, Device],
        own_leaf: int,
        suite: int = CALL_SFRAME_SUITE,
    ) -> EpochKeys:
        if own_leaf not in roster:
            raise UsageError("this device is not in the epoch's roster")
        if len(set(roster.values())) != len(roster):
            raise UsageError("a device holds two leaves")
        keys = keys_for_epoch(exporter, epoch, roster, suite, CALL_TRACKS)
        return cls(epoch=epoch, own_leaf=own_leaf, roster=dict(roster), base_keys=keys)

    def __repr__(self) -> str:
        return f"EpochKeys(epoch={self.epoch}, members={len(self.roster)})"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class CallFrame:
    """A frame that authenticated, and whom it is from."""

    epoch: int
    sender: Device
    track: Track
    ctr: int
    plaintext: bytes

    def __repr__(self) -> str:
        return (
            f"CallFrame(epoch={self.epoch}, sender={self.sender}, track={self.track.name}, "
            f"ctr={self.ctr}, plaintext=<{len(self.plaintext)} bytes>)"
        )


@dataclass(slots=True)
class _Epoch:
    epoch: int
    roster: dict[int, Device]
    #: receive KIDs still held, by sender leaf
    kids: dict[int, set[int]] = field(default_factory=dict)
    #: None while current; then the end of its grace period
    deadline_ms: int | None = None


class CallKeys:
    """See the module docstring."""

    def __init__(
        self,
        suite: int = CALL_SFRAME_SUITE,
        *,
        replay_window: int = SFRAME_REPLAY_WINDOW,
        grace_ms: int = CALL_EPOCH_GRACE_MS,
    ) -> None:
        if not 0 <= grace_ms <= CALL_EPOCH_GRACE_MS:
            raise UsageError(f"the epoch grace is at most {CALL_EPOCH_GRACE_MS} ms")
        self.context = SFrameContext(suite, replay_window=replay_window)
        self._grace_ms = grace_ms
        self._epochs: dict[int, _Epoch] = {}
        self._current: _Epoch | None = None
        self._send: dict[Track, int] = {}
        self._next_deadline: int | None = None

    def __repr__(self) -> str:
        return f"CallKeys(epoch={self.current_epoch}, held={sorted(self.epochs())})"

    @property
    def current_epoch(self) -> int | None:
        return None if self._current is None else self._current.epoch

    def epochs(self) -> tuple[int, ...]:
        """Epochs of which some receive key is still held."""
        return tuple(sorted(e.epoch for e in self._epochs.values()))

    # --- epochs -------------------------------------------------------------------

    def begin_epoch(self, keys: EpochKeys, now_ms: int) -> None:
        """Send under ``keys.epoch`` from now on; keep the previous epoch's keys of
        senders still present for the grace period (see the module docstring)."""
        current = self._current
        if current is not None and keys.epoch <= current.epoch:
            raise UsageError("call epochs only move forward")
        if keys.own_leaf not in keys.roster:
            raise UsageError("this device is not in the epoch's roster")
        for kid in self._send.values():
            self.context.remove_key(kid)
        self._send = {}
        present = set(keys.roster.values())
        for e in list(self._epochs.values()):
            if e is current:
                e.deadline_ms = now_ms + self._grace_ms
            for leaf in [leaf for leaf in e.kids if e.roster[leaf] not in present]:
                self._drop_leaf(e, leaf)
        clash = self._epochs.get(keys.epoch & _EPOCH_MASK)
        if clash is not None:  # RFC 9605 §5.2: 16 epochs later the KID bits repeat
            self._drop_epoch(clash)
        new = _Epoch(epoch=keys.epoch, roster=dict(keys.roster))
        for kid, base in keys.base_keys.items():
            fields = KeyId.decode(kid)
            if fields.leaf == keys.own_leaf:
                self.context.add_send_key(kid, base)
                self._send[fields.track] = kid
            else:
                self.context.add_recv_key(kid, base)
                new.kids.setdefault(fields.leaf, set()).add(kid)
        self._epochs[keys.epoch & _EPOCH_MASK] = new
        self._current = new
        if self._grace_ms == 0:
            self.expire(now_ms + 1)
        self._tidy()

    def revoke(self, device: Device) -> None:
        """Accept nothing more from ``device`` (it left the room): drop its receive keys
        of every epoch now, without waiting for the commit that removes it."""
        for e in list(self._epochs.values()):
            for leaf in [leaf for leaf in e.kids if e.roster[leaf] == device]:
                self._drop_leaf(e, leaf)
        self._tidy()

    def expire(self, now_ms: int) -> None:
        """End the grace periods that ran out by ``now_ms``."""
        for e in list(self._epochs.values()):
            if e.deadline_ms is not None and now_ms > e.deadline_ms:
                self._drop_epoch(e)
        self._tidy()

    def _drop_leaf(self, e: _Epoch, leaf: int) -> None:
        for kid in e.kids.pop(leaf, ()):
            self.context.remove_key(kid)

    def _drop_track(self, e: _Epoch, leaf: int, track: Track) -> None:
        held = e.kids.get(leaf, set())
        for kid in [k for k in held if KeyId.decode(k).track is track]:
            held.discard(kid)
            self.context.remove_key(kid)
        if not held:
            e.kids.pop(leaf, None)

    def _drop_epoch(self, e: _Epoch) -> None:
        for leaf in list(e.kids):
            self._drop_leaf(e, leaf)
        if self._epochs.get(e.epoch & _EPOCH_MASK) is e:
            del self._epochs[e.epoch & _EPOCH_MASK]
        if self._current is e:
            self._current = None
            for kid in self._send.values():
                self.context.remove_key(kid)
            self._send = {}

    def _tidy(self) -> None:
        for e in list(self._epochs.values()):
            if e is not self._current and not e.kids:
                del self._epochs[e.epoch & _EPOCH_MASK]
        deadlines = [e.deadline_ms for e in self._epochs.values() if e.deadline_ms is not None]
        self._next_deadline = min(deadlines) if deadlines else None

    def wipe(self) -> None:
        """Forget every key (the device left the call)."""
        for e in list(self._epochs.values()):
            self._drop_epoch(e)
        self._epochs.clear()
        self._current = None
        self._next_deadline = None

    # --- frames -------------------------------------------------------------------

    def protect(self, track: Track, payload: bytes, metadata: bytes = b"") -> bytes:
        """SFrame-protect ``payload`` of ``track`` under the current epoch's send key."""
        kid = self._send.get(track)
        if kid is None:
            raise UsageError("not in a call epoch: nothing to send under")
        return self.context.protect(kid, payload, metadata)

    def sender_of(self, frame: bytes) -> tuple[Device, Track]:
        """The sender and track a frame's KID names, without decrypting it.

        Raises :class:`~sottovoce.sframe.HeaderDecodeError` or
        :class:`~sottovoce.sframe.UnknownKeyId` (no held epoch has that sender).
        """
        kid, _, _ = parse_header(frame)
        fields = KeyId.decode(kid)
        e = self._epochs.get(fields.epoch_bits)
        if e is None or fields.leaf not in e.kids:
            raise UnknownKeyId("no held key for the frame's KID")
        return e.roster[fields.leaf], fields.track

    def unprotect(self, frame: bytes, metadata: bytes, now_ms: int) -> CallFrame:
        """Authenticate and decrypt a frame; raises the SFrame errors
        (:class:`~sottovoce.sframe.UnknownKeyId` also for an expired grace)."""
        if self._next_deadline is not None and now_ms > self._next_deadline:
            self.expire(now_ms)
        kid, ctr, plaintext = self.context.unprotect(frame, metadata)
        fields = KeyId.decode(kid)
        e = self._epochs[fields.epoch_bits]
        sender = e.roster[fields.leaf]
        if e is self._current and self._next_deadline is not None:
            # The sender's first frame of the new epoch on this track: its old key of
            # this track goes now. Each track is its own stream, so a video frame sealed
            # before the switch may still arrive after the first new audio frame.
            for old in list(self._epochs.values()):
                if old is not e:
                    for old_leaf in [x for x in old.kids if old.roster[x] == sender]:
                        self._drop_track(old, old_leaf, fields.track)
            self._tidy()
        return CallFrame(
            epoch=e.epoch, sender=sender, track=fields.track, ctr=ctr, plaintext=plaintext
        )
