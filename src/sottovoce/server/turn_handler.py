"""``sottovoce.turn.credentials``: hand an authenticated device short-lived TURN credentials.

    device ──sottovoce.turn.credentials {}──► authenticated? (the dispatcher: else
            "unauthorized") ──► TURN configured? (else "turn_unavailable")
            ──► under this device's rate? (else "rate_limited", retryable)
            ──► sottovoce.turn.result {urls, username, credential, expiresAt}

The credentials are made by :func:`sottovoce.server.turn.turn_credentials`
(coturn's TURN REST scheme: the username is "expiry:random id", naming nobody).
Nothing about the request is stored or logged: not the device, not its address,
not the credentials; calls themselves never pass through here (their signals are
end-to-end encrypted 1:1 messages).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from sottovoce.limits import TURN_REQUESTS_BURST, TURN_REQUESTS_PER_MINUTE
from sottovoce.protocol.events import TURN_RESULT, TurnCredentialsRequest
from sottovoce.server.config import ServerConfig
from sottovoce.server.errors import RateLimited, WireFailure
from sottovoce.server.ratelimit import KeyedBuckets
from sottovoce.server.session import Session
from sottovoce.server.turn import TurnConfig, read_turn_secret, turn_credentials


def turn_config(config: ServerConfig) -> TurnConfig | None:
    """The TURN part of the server's configuration, its secret read now (``None``: no TURN).

    A missing, unreadable or too short secret file raises a plain ``UsageError``
    before the server listens.
    """
    if not config.turn_url:
        return None
    if config.turn_secret_file is None:  # pragma: no cover - ServerConfig refuses it
        return None
    return TurnConfig(urls=config.turn_url, secret=read_turn_secret(config.turn_secret_file))


class TurnHandler:
    """The one request handler; registered in the app's dispatch table by :meth:`handlers`."""

    def __init__(
        self,
        turn: TurnConfig | None,
        *,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._turn = turn
        self._clock = clock_s
        self._buckets = KeyedBuckets(TURN_REQUESTS_PER_MINUTE / 60, TURN_REQUESTS_BURST)

    @classmethod
    def from_config(cls, config: ServerConfig) -> TurnHandler:
        return cls(turn_config(config))

    def handlers(self) -> dict[type[Any], Callable[..., None]]:
        return {TurnCredentialsRequest: self.credentials}

    def credentials(
        self,
        session: Session,
        ev: TurnCredentialsRequest,
        data: dict[str, Any],
        rid: str | None,
    ) -> None:
        # The dispatcher lets only authenticated sessions this far (not in PRE_AUTH);
        # session.key raises for any other, so this never answers an anonymous one.
        device = session.key
        if self._turn is None:
            raise WireFailure("turn_unavailable", "this server has no TURN server configured")
        wait = self._buckets.take(device)
        if wait:
            raise RateLimited("too many TURN credential requests", wait)
        creds = turn_credentials(self._turn, now_s=int(self._clock()), rng=secrets.token_bytes)
        session.reply(TURN_RESULT, creds.to_wire(), rid)
