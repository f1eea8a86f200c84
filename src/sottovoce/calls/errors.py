"""Errors of the call engine.

Remote side (a signal from the peer is bad, late or misbound): :class:`CallError`
and its subclasses. Every one of them leaves the call state exactly as it was,
so a client may log it (without the signal's content) and carry on.

Caller side: :class:`CallUsageError` -- the local application asked for
something the current state does not allow (accept when nothing rings, dial
while in a call).
"""

from __future__ import annotations

from sottovoce.errors import RemoteError, UsageError


class CallError(RemoteError):
    """Root of the errors caused by a call signal from a peer."""

    code = "call_error"


class UnknownCall(CallError):
    """The signal names a call this device never took part in."""

    code = "call_unknown"


class StaleSignal(CallError):
    """The signal belongs to a call that has already ended here (late or replayed)."""

    code = "call_stale"


class OutOfOrderSignal(CallError):
    """The signal is valid on its own but not in the call's current state."""

    code = "call_out_of_order"


class BindingError(CallError):
    """The signal is bound to other devices, another offer, or fingerprints the SDP
    does not carry; it may have been moved or forged and is refused."""

    code = "call_binding_mismatch"


class CallUsageError(UsageError):
    """The local application asked for a transition the current state does not allow."""

    code = "bad_request"


# --- room calls --------------------------------------------------------------------


class RoomCallRefused(CallError):
    """A call member refused this device's request to join (the subclass says why)."""

    code = "call_refused"


class SfuRequired(RoomCallRefused):
    """The call runs without an SFU, as a full mesh, and already has the most
    participants a mesh carries: more need an SFU."""

    code = "call_sfu_required"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this call already has {limit} participants, the most a call without an SFU "
            "can have; a larger call needs the server to run an SFU (sottovoce server --sfu)"
        )


class CallFull(RoomCallRefused):
    """The call has the most participants a call through an SFU may have."""

    code = "call_full"


class NotARoomMember(RoomCallRefused):
    """The device is not a current member of the room's MLS group (or its call
    KeyPackage is not signed with its room key): it may not join the call."""

    code = "call_not_member"


class SframeUnsupported(RoomCallRefused):
    """The device cannot protect media with the call's SFrame suite; calls have no
    unencrypted mode, so it cannot join."""

    code = "call_sframe_unsupported"


class CommitRefused(CallError):
    """A commit of the call group breaks the call's rules (adds a device that is not a
    room member or did not ask to join, removes one that did not leave, ...): void."""

    code = "call_commit_refused"


class StreamBindingError(CallError):
    """A media stream's SFrame key id names another sender than the participant it was
    subscribed as: the SFU (or someone) swapped streams; its frames are refused."""

    code = "call_stream_binding"
