"""Before an account exists: registering a device and asking whether a name is free.

Each is one short connection of its own (challenge, one request, one reply); the
device key signs the server's challenge (``auth_message``) to prove it holds the
key its certificate names.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from sottovoce.client.connection import (
    Connector,
    Transport,
    TransportClosed,
    expect_reply,
    read_challenge,
    sign_challenge,
    websocket_connector,
    ws_url,
)
from sottovoce.client.errors import NotConnected, ServerError
from sottovoce.client.identity import LocalIdentity
from sottovoce.client.proof_of_work import ATTEMPTS, difficulty_of, solve, with_proof
from sottovoce.protocol import events as ev


@contextlib.asynccontextmanager
async def _short_connection(url: str, connector: Connector) -> AsyncIterator[Transport]:
    """One connection for one exchange; a closed transport becomes ``NotConnected``."""
    try:
        transport = await connector(url)
    except TransportClosed as exc:
        raise NotConnected(f"cannot reach the server: {exc}") from None
    try:
        yield transport
    except TransportClosed as exc:
        raise NotConnected(f"the server closed the connection: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            await transport.close()


async def register_device(
    url: str,
    identity: LocalIdentity,
    *,
    add: bool = False,
    connector: Connector = websocket_connector,
    recovery_key: bytes | None = None,
    statements: tuple[ev.SignedStatement, ...] = (),
    on_pow: Callable[[int], None] | None = None,
) -> None:
    """Register a new account (``sottovoce.register``, with the public ``recovery_key``) or
    device (``sottovoce.device.add``; with ``statements``: a recovery or a renewal that
    logs an already known device in under its new certificate).

    A registration pays a proof of work (it tells whether the name is taken): on
    ``pow_required`` it is solved with the connection closed (it may take longer than
    the server waits for a login; ``on_pow(difficulty)`` is called first, e.g. to say
    so) and sent on a new connection, signed over its challenge. The proof is bound to
    our address and the name, not to the connection."""
    cert = identity.certificate.encode()
    proof: bytes | None = None
    for attempt in range(ATTEMPTS):
        try:
            async with _short_connection(url, connector) as transport:
                nonce = await read_challenge(transport)
                signature = sign_challenge(
                    identity.device_key, nonce, identity.username, identity.device_id
                )
                request: ev.ClientEvent = (
                    ev.AddDevice(certificate=cert, signature=signature, statements=statements)
                    if add
                    else ev.Register(certificate=cert, signature=signature,
                                     recoveryKey=recovery_key, pow=proof)
                )
                await transport.send(request.to_frame("register"))
                await expect_reply(transport, frozenset({ev.REGISTERED}))  # the one reply
                return
        except ServerError as exc:
            if add or exc.code != "pow_required" or attempt == ATTEMPTS - 1:
                raise
            if on_pow is not None:
                on_pow(difficulty_of(exc))
            proof = await solve(exc)


async def username_available(
    server_url: str, username: str, *, connector: Connector = websocket_connector,
    on_pow: Callable[[int], None] | None = None,
) -> bool:
    """Whether ``username`` is free (a proof of work first: ``on_pow`` as in
    :func:`register_device`; a name paid for here registers without one for a day)."""
    async with _short_connection(ws_url(server_url), connector) as transport:
        await read_challenge(transport)

        async def ask(check: ev.UsernameCheck) -> dict[str, Any]:
            await transport.send(check.to_frame("check"))
            _, data = await expect_reply(transport, frozenset({ev.USERNAME_RESULT}))
            return data

        data = await with_proof(ev.UsernameCheck(username=username), ask, on_pow)
        return bool(data.get("available"))
