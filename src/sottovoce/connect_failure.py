"""Why a connection attempt failed, in words a person can act on.

Used by the client's connection and by ``sottovoce kt witness`` (which talks
HTTP to the server and imports no client code).
"""

from __future__ import annotations

import ssl

import websockets


def describe_failure(exc: BaseException) -> str:
    """Why a connection attempt failed, in words a person can act on (no stack, no data)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted here ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or 'no detail'})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens on that port"
    if isinstance(exc, ConnectionResetError):
        return "the connection was reset (wss:// at a server without TLS?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, websockets.InvalidStatus):
        return f"the server answered HTTP {exc.response.status_code}, not a WebSocket"
    if isinstance(exc, websockets.InvalidHandshake):
        # E.g. ws:// at a TLS port: what comes back is not an HTTP response.
        return "no valid WebSocket handshake (ws:// at a wss:// server?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
