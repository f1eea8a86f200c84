"""Calls on this device: aiortc media driven by the sans-IO engine of :mod:`sottovoce.calls`.

This package (and the tests) is the only place that imports aiortc, aioice or
PyAV; ``tests/unit/test_media_imports.py`` enforces it.
"""

from sottovoce.client.calls.controller import (
    CallController,
    CallEvent,
    CallOptions,
    SignalFailed,
)
from sottovoce.client.calls.errors import (
    FingerprintMismatch,
    MediaError,
    MediaSourceUnavailable,
    TurnError,
    TurnRefused,
    TurnUnreachable,
)
from sottovoce.client.calls.media import CallStats, IceConfig, MediaSession, TurnServer
from sottovoce.client.calls.sources import MediaSpec

__all__ = [
    "CallController",
    "CallEvent",
    "CallOptions",
    "CallStats",
    "FingerprintMismatch",
    "IceConfig",
    "MediaError",
    "MediaSession",
    "MediaSourceUnavailable",
    "MediaSpec",
    "SignalFailed",
    "TurnError",
    "TurnRefused",
    "TurnServer",
    "TurnUnreachable",
]
