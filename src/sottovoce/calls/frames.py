"""The layout of an SFrame-protected media frame in a room call (RFC 9605 §4.2, §9.3).

Defined on the *encoded frame* -- what an encoder outputs before RTP
packetization, and what a browser's ``RTCRtpScriptTransform`` hands to script
(``RTCEncodedVideoFrame.data``, ``RTCEncodedAudioFrame.data``) -- so Python and
browser participants produce and accept the same bytes::

    encoded frame:   | clear codec bytes (n) | rest of the frame                  |
    on the wire:     | clear codec bytes (n) | SFrame header | AEAD(rest) ‖ tag   |
                                               └── RFC 9605 §4.4.3, with the clear
                                                   bytes as its metadata (AAD)

The clear bytes are the ones the SFU and the packetizers must read, and no more:

* **VP8** (RFC 6386 §9.1): the 3-byte frame tag of every frame (keyframe flag,
  version, show-frame, first-partition size), and on a keyframe also the
  3-byte start code and the 4 bytes of width and height: 10 bytes of a
  keyframe, 3 of a delta frame. The SFU finds keyframes and picture sizes in
  them (Janus forwards a new subscriber's video from a keyframe and switches
  simulcast layers on one); nothing of the picture is in them.
* **Opus** (RFC 6716 §3.1): the TOC byte (mode, bandwidth, frame size, frame
  count code), 1 byte. Constant-bitrate Opus at a fixed frame size makes it
  the same byte in every packet, so it tells nothing about speech.

The clear bytes are authenticated (they are the SFrame metadata): changing one,
or flipping the keyframe flag so that the receiver cuts the frame elsewhere,
fails authentication, and the frame is never decoded. The VP8 RTP payload
descriptor (RFC 7741 §4.2) is added by packetization *outside* the frame and
stays in the clear like any RTP header; it carries picture ids, not content.
"""

from __future__ import annotations

from enum import Enum

#: VP8 keyframe: frame tag (3) + start code 9d 01 2a (3) + width and height (4).
VP8_KEYFRAME_CLEAR = 10
#: VP8 delta frame: the frame tag.
VP8_DELTA_CLEAR = 3
#: Opus: the TOC byte.
OPUS_CLEAR = 1


class Codec(Enum):
    """The codecs a room call sends; each has its own clear-byte rule."""

    OPUS = "opus"
    VP8 = "vp8"

    @classmethod
    def from_name(cls, name: str) -> Codec | None:
        """The codec of an SDP/RTP codec name (``opus``, ``VP8``), or None."""
        try:
            return cls(name.lower())
        except ValueError:
            return None


def clear_bytes(codec: Codec, frame: bytes) -> int:
    """How many leading bytes of ``frame`` stay in the clear (see the module docstring).

    On a received frame the same rule reads the (authenticated) clear prefix, so
    sender and receiver always cut at the same place or the frame fails.
    """
    if not frame:
        return 0
    if codec is Codec.VP8:
        # RFC 6386 §9.1: bit 0 of the first byte is 0 for a keyframe.
        n = VP8_DELTA_CLEAR if frame[0] & 0x01 else VP8_KEYFRAME_CLEAR
    else:
        n = OPUS_CLEAR
    return min(n, len(frame))


def is_vp8_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: an intra frame (readable in the clear bytes)."""
    return (
        len(frame) >= VP8_KEYFRAME_CLEAR and not frame[0] & 0x01 and frame[3:6] == b"\x9d\x01\x2a"
    )
