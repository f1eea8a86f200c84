"""Errors of the call media layer (aiortc peer connections, TURN, media sources)."""

from __future__ import annotations

from sottovoce.errors import InternalError, RemoteError, UsageError


class MediaError(RemoteError):
    """The call's media could not be set up or kept up."""

    code = "call_media_error"


class FingerprintMismatch(MediaError):
    """The peer's DTLS handshake presented a certificate other than the one it signalled
    end to end: someone in the path (a relay, a TURN server) tried to sit in the middle."""

    code = "call_fingerprint_mismatch"


class TurnError(MediaError):
    """No relay candidate could be gathered from the TURN server."""

    code = "turn_error"


class TurnRefused(TurnError):
    """The TURN server refused the credentials (expired, or not made with its secret)."""

    code = "turn_refused"


class TurnUnreachable(TurnError):
    """The TURN server did not answer."""

    code = "turn_unreachable"


class MediaSourceUnavailable(UsageError):
    """A camera, microphone, screen or file asked for is not there or cannot be read."""

    code = "media_source_unavailable"


class CandidateLeak(InternalError):
    """Our own description holds a candidate the call's policy forbids (a host or
    server-reflexive address in relay-only mode, anything but 127.0.0.1 in loopback
    mode); it is never sent."""

    code = "internal_error"
