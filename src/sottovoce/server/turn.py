"""Short-lived TURN credentials in coturn's ``use-auth-secret`` (TURN REST) scheme.

The server and coturn share one secret. For an authenticated device the server
makes::

    username = "{expiry_unix}:{opaque random id}"
    password = base64(HMAC-SHA1(secret, username))

and coturn, holding the same secret, recomputes the password and refuses the
username once ``expiry_unix`` has passed (401). The username names no user and
no device: the random id is fresh per request, so coturn's logs cannot tell who
relays (docs/calls.md says what a TURN server still sees). Credentials live at
most :data:`~sottovoce.limits.TURN_CREDENTIAL_MAX_TTL_S`.

Configuration (the server's ``--turn-url`` and ``--turn-secret-file``)::

    --turn-url turn:turn.example.org:3478,turn:turn.example.org:3478?transport=tcp
    --turn-secret-file /etc/sottovoce/turn-secret    # the coturn static-auth-secret
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from sottovoce.calls.turn import parse_turn_url
from sottovoce.crypto.rng import Random
from sottovoce.errors import UsageError
from sottovoce.limits import (
    TURN_CREDENTIAL_MAX_TTL_S,
    TURN_ID_BYTES,
    TURN_MAX_URLS,
    TURN_SECRET_MIN_BYTES,
)
from sottovoce.secret import Secret
from sottovoce.server.secret_file import read_secret_line


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnConfig:
    """Where the TURN servers are and the secret shared with them."""

    urls: tuple[str, ...]
    secret: Secret
    ttl_s: int = TURN_CREDENTIAL_MAX_TTL_S

    def __post_init__(self) -> None:
        if not self.urls or len(self.urls) > TURN_MAX_URLS:
            raise UsageError(f"give 1-{TURN_MAX_URLS} TURN URLs")
        for url in self.urls:
            parse_turn_url(url)
        if len(self.secret) < TURN_SECRET_MIN_BYTES:
            raise UsageError(f"the TURN secret must be at least {TURN_SECRET_MIN_BYTES} bytes")
        if not 60 <= self.ttl_s <= TURN_CREDENTIAL_MAX_TTL_S:
            raise UsageError(f"TURN credentials live 60-{TURN_CREDENTIAL_MAX_TTL_S} s")


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnCredentials:
    """What a device gets: the servers, a username and a password, valid until ``expires_s``."""

    urls: tuple[str, ...]
    username: str
    password: Secret
    expires_s: int

    def to_wire(self) -> dict[str, object]:
        """The RTCIceServer shape (W3C WebRTC §4.2.4) a client passes to its ICE agent."""
        return {
            "urls": list(self.urls),
            "username": self.username,
            "credential": self.password.expose().decode("ascii"),
            "expiresAt": self.expires_s,
        }


def turn_credentials(config: TurnConfig, *, now_s: int, rng: Random) -> TurnCredentials:
    """Fresh credentials valid for ``config.ttl_s`` from ``now_s`` (unix seconds)."""
    expires = now_s + config.ttl_s
    opaque = base64.urlsafe_b64encode(rng(TURN_ID_BYTES)).rstrip(b"=").decode("ascii")
    username = f"{expires}:{opaque}"
    return TurnCredentials(
        urls=config.urls,
        username=username,
        password=turn_password(config.secret, username),
        expires_s=expires,
    )


def turn_password(secret: Secret, username: str) -> Secret:
    """coturn's REST password: base64(HMAC-SHA1(secret, username)).

    SHA-1 is what coturn computes (its ``use-auth-secret``); as an HMAC it is not
    open to SHA-1's collision attacks.
    """
    mac = hmac.new(secret.expose(), username.encode("ascii"), hashlib.sha1).digest()
    return Secret(base64.b64encode(mac))


def parse_turn_urls(value: str) -> tuple[str, ...]:
    """The ``--turn-url`` option: one or more URLs separated by commas."""
    urls = tuple(u.strip() for u in value.split(",") if u.strip())
    if not urls or len(urls) > TURN_MAX_URLS:
        raise UsageError(f"--turn-url takes 1-{TURN_MAX_URLS} URLs separated by commas")
    for url in urls:
        parse_turn_url(url)
    return urls


def read_turn_secret(path: Path) -> Secret:
    """The ``--turn-secret-file`` option: the coturn ``static-auth-secret``, one line."""
    return read_secret_line(path, "TURN secret file", TURN_SECRET_MIN_BYTES)
