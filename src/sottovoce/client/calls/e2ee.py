"""SFrame on every encoded frame of a room call, in aiortc (docs/calls.md "Frame layout").

::

    send:    encoder ── whole frame ──► FrameCrypto.seal ──► RTP packetizer ──► SRTP
               (VP8: hooks.FrameSealingVp8Encoder; Opus: SealingOpusEncoder)
    receive: SRTP ──► depacketizer / jitter buffer ── whole frame ──► StreamGuard
               ──► FrameCrypto.open (KID names the expected sender? authentic? fresh?)
               ──► decoder           (anything else is dropped, never decoded)

:class:`FrameCrypto` is the one object both directions share: the call's
:class:`~sottovoce.calls.media_keys.CallKeys` behind a lock (encoders run in
aiortc's worker threads, receivers on the event loop, epoch changes come from
the call engine). There is no switch that turns it off: a frame that fails is
dropped and a participant that cannot do SFrame does not get into the call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame

from sottovoce.calls.errors import StreamBindingError
from sottovoce.calls.frames import Codec, clear_bytes
from sottovoce.calls.media_keys import CallKeys, Device, EpochKeys
from sottovoce.client.calls import hooks
from sottovoce.client.calls.media import CbrOpusEncoder
from sottovoce.errors import SottovoceError
from sottovoce.sframe import SFrameError, Track, UnknownKeyId

log = logging.getLogger(__name__)

#: After a dropped video frame, ask the sender for a keyframe at most this often.
KEYFRAME_REQUEST_INTERVAL_S = 0.5


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class KeysWiped(MediaStreamError):
    """The call's keys are gone (this device left): the stream ends, nothing more is sent.

    aiortc ends a sender's RTP loop quietly on a ``MediaStreamError``; keys are wiped at
    once when the device leaves, while its media close a moment later."""


#: What :meth:`FrameCrypto.watch` hands on: new keys, a revoked sender, or None (wiped).
KeyWatcher = Callable[[EpochKeys | Device | None], None]


class FrameTransform(Protocol):
    """What the media layer needs of the frame protection (``FrameCrypto``)."""

    def seal(self, track: Track, codec: Codec, frame: bytes) -> bytes: ...

    def open(self, codec: Codec, data: bytes, *, sender: Device, track: Track) -> bytes: ...


class FrameCrypto:
    """SFrame protection of one device's call media, thread-safe (see the module docstring)."""

    def __init__(
        self, keys: CallKeys | None = None, *, clock_ms: Callable[[], int] = monotonic_ms
    ) -> None:
        self._keys = keys or CallKeys()
        self._lock = threading.Lock()
        self._clock = clock_ms
        self._current: EpochKeys | None = None
        self._wiped = False
        self._watchers: list[KeyWatcher] = []

    def __repr__(self) -> str:
        return f"FrameCrypto({self._keys!r})"

    @property
    def epoch(self) -> int | None:
        return self._keys.current_epoch

    def begin_epoch(self, keys: EpochKeys) -> None:
        with self._lock:
            self._keys.begin_epoch(keys, self._clock())
            self._current = keys
            self._wiped = False
        for watch in list(self._watchers):
            watch(keys)

    def revoke(self, device: Device) -> None:
        with self._lock:
            self._keys.revoke(device)
        for watch in list(self._watchers):
            watch(device)

    def wipe(self) -> None:
        with self._lock:
            self._keys.wipe()
            self._current = None
            self._wiped = True
        for watch in list(self._watchers):
            watch(None)

    def watch(self, watcher: KeyWatcher) -> None:
        """Hand every key change to ``watcher`` too, the current epoch's keys at once: a
        new epoch's :class:`EpochKeys`, a revoked sender's device, or None when wiped
        (a browser's encoded-transform worker seals and opens with them)."""
        self._watchers.append(watcher)
        if self._current is not None:
            watcher(self._current)

    def seal(self, track: Track, codec: Codec, frame: bytes) -> bytes:
        """``clear codec bytes ‖ SFrame(rest, metadata = the clear bytes)``; raises
        :class:`KeysWiped` once the keys were wiped (never a frame unsealed). An epoch
        change swaps the keys under the lock: there is no moment without a send key
        while in the call."""
        n = clear_bytes(codec, frame)
        head = frame[:n]
        with self._lock:
            if self._wiped:
                raise KeysWiped("the call's keys are gone: this stream ends")
            return head + self._keys.protect(track, frame[n:], head)

    def open(self, codec: Codec, data: bytes, *, sender: Device, track: Track) -> bytes:
        """The encoded frame inside ``data``, if it is ``sender``'s frame of ``track``,
        authentic and fresh. Raises :class:`StreamBindingError` when its key id names
        another sender or track, else the SFrame errors; nothing is returned then."""
        n = clear_bytes(codec, data)
        head, body = data[:n], data[n:]
        with self._lock:
            named = self._keys.sender_of(body)
            if named != (sender, track):
                raise StreamBindingError(
                    "a stream's frames name another sender or track than it was subscribed as"
                )
            out = self._keys.unprotect(body, head, self._clock())
        return head + out.plaintext


class SealingOpusEncoder(CbrOpusEncoder):
    """Constant-bitrate Opus whose every frame (one per RTP payload) is sealed."""

    def __init__(self, transform: FrameTransform, track: Track = Track.AUDIO) -> None:
        super().__init__()
        self._transform = transform
        self._track = track

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        payloads, timestamp = super().encode(frame, force_keyframe)
        return [self._transform.seal(self._track, Codec.OPUS, p) for p in payloads], timestamp


def sealing_vp8_encoder(transform: FrameTransform, track: Track) -> hooks.FrameSealingVp8Encoder:
    return hooks.FrameSealingVp8Encoder(lambda frame: transform.seal(track, Codec.VP8, frame))


@dataclass(slots=True)
class StreamCounters:
    """What happened to one received stream's frames."""

    opened: int = 0
    #: every frame kept from the decoder, whatever the reason
    dropped: int = 0
    #: of those, frames whose stream names another sender or track
    misbound: int = 0
    #: of those, frames under a key this device does not hold: sealed before it joined,
    #: before it had processed the commit the sender had, or after their grace ended
    unkeyed: int = 0

    @property
    def failed(self) -> int:
        """Frames that did not open under a key this device holds (forged, replayed,
        malformed, or misbound)."""
        return self.dropped - self.unkeyed


class StreamGuard:
    """The check between one receiver's depacketizer and its decoder: only frames that
    open as ``sender``'s frames of ``track`` reach the decoder."""

    def __init__(
        self,
        transform: FrameTransform,
        *,
        sender: Device,
        track: Track,
        receiver: RTCRtpReceiver,
        on_frame: Callable[[Device, Track, Codec, int, bytes], None] | None = None,
        on_misbound: Callable[[StreamBindingError], None] | None = None,
    ) -> None:
        self.sender = sender
        self.track = track
        self.counters = StreamCounters()
        self._transform = transform
        self._receiver = receiver
        self._on_frame = on_frame
        self._on_misbound = on_misbound
        self._last_pli = 0.0
        hooks.filter_frames(receiver, self)

    def __call__(self, codec_name: str, frame: JitterFrame) -> JitterFrame | None:
        codec = Codec.from_name(codec_name)
        if codec is None:
            self.counters.dropped += 1
            return None
        try:
            frame.data = self._transform.open(
                codec, frame.data, sender=self.sender, track=self.track
            )
        except StreamBindingError as exc:
            self.counters.misbound += 1
            self.counters.dropped += 1
            if self.counters.misbound == 1 and self._on_misbound is not None:
                self._on_misbound(exc)
            return None
        except (SFrameError, SottovoceError) as exc:
            self.counters.dropped += 1
            if isinstance(exc, UnknownKeyId):
                self.counters.unkeyed += 1
            self._ask_keyframe(codec)
            return None
        except Exception as exc:  # never let a bug reach aiortc's packet loop
            log.warning("call media: frame check failed: %s", type(exc).__name__)
            self.counters.dropped += 1
            return None
        self.counters.opened += 1
        if self._on_frame is not None:
            self._on_frame(self.sender, self.track, codec, frame.timestamp, frame.data)
        return frame

    def request_keyframe(self) -> None:
        hooks.request_keyframe(self._receiver)

    def _ask_keyframe(self, codec: Codec) -> None:
        # A dropped video frame leaves the decoder without a reference: ask for a
        # keyframe (PLI) rather than decode the following frames against nothing.
        now = time.monotonic()
        if codec is Codec.VP8 and now - self._last_pli >= KEYFRAME_REQUEST_INTERVAL_S:
            self._last_pli = now
            hooks.request_keyframe(self._receiver)
