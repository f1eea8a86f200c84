"""TURN server URLs (RFC 7065), shared by the server's configuration and the client."""

from __future__ import annotations

import re

from sottovoce.errors import UsageError

#: RFC 7065 §3.1 ``turn:`` / ``turns:`` URIs, with an IPv4, a bracketed IPv6 or a
#: DNS host, an optional port and an optional transport.
_TURN_URL_RE = re.compile(
    r"(?P<scheme>turns?):"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>udp|tcp))?"
)


def parse_turn_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, transport) of one ``turn:`` / ``turns:`` URL."""
    m = _TURN_URL_RE.fullmatch(url.strip())
    if m is None:
        raise UsageError(f"not a TURN URL (turn:HOST:PORT or turns:HOST:PORT): {url!r}")
    scheme = m.group("scheme")
    port = int(m.group("port") or (5349 if scheme == "turns" else 3478))
    if not 1 <= port <= 65535:
        raise UsageError(f"TURN port out of range: {url!r}")
    transport = m.group("transport") or ("tcp" if scheme == "turns" else "udp")
    if scheme == "turns" and transport != "tcp":
        raise UsageError(f"turns: runs over TCP (RFC 7065 §3): {url!r}")
    return scheme, m.group("host"), port, transport
