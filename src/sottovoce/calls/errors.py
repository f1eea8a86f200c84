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
