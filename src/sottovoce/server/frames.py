"""The hot-path frames, built as strings around already-serialized envelopes.

A send's ack and each inbox frame are written once per message and device; building
them as f-strings (one allocation each) instead of with ``json.dumps`` keeps the
group-commit callback cheap (docs/architecture.md §Hot path). Every id placed here
passed the protocol's id alphabet check, so none needs JSON escaping.
"""

from __future__ import annotations

from typing import Protocol


class Stored(Protocol):
    """What a durable send's ack reports (a 1:1 SendOutcome or a room's RoomStored)."""

    @property
    def message_id(self) -> str: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def server_seq(self) -> int: ...
    @property
    def received_at_ms(self) -> int: ...
    @property
    def duplicate(self) -> bool: ...


def inbox_frame_text(global_seq: int, envelope: str) -> str:
    """``ksmpv3.inbox.frame`` around an already-serialized envelope (serialize once)."""
    return (
        f'{{"event":"ksmpv3.inbox.frame","data":{{"globalInboxSeq":{global_seq},'
        f'"envelope":{envelope}}}}}'
    )


def ack_text(
    request_id: str | None,
    *,
    message_id: str,
    idempotency_key: str,
    conversation_id: str,
    server_seq: int,
    received_at_ms: int,
    duplicate: bool,
    ephemeral: bool = False,
) -> str:
    """``ksmpv3.send.ack``; ``server_seq`` is the ephemeralSeq for an ephemeral send
    (and named so)."""
    rid = f'"requestId":"{request_id}",' if request_id is not None else ""
    seq = "ephemeralSeq" if ephemeral else "serverSeq"
    return (
        f'{{"event":"ksmpv3.send.ack",{rid}"data":{{"messageId":"{message_id}",'
        f'"idempotencyKey":"{idempotency_key}","conversationId":"{conversation_id}",'
        f'"{seq}":{server_seq},"serverReceivedAtMs":{received_at_ms},'
        f'"duplicate":{"true" if duplicate else "false"}}}}}'
    )


def stored_ack_text(request_id: str | None, conversation_id: str, stored: Stored) -> str:
    """The ack of a send once it is durable (a 1:1 conversation's or a room's): the text
    of :func:`ack_text`, built in one f-string (one per stored send, on the loop)."""
    rid = f'"requestId":"{request_id}",' if request_id is not None else ""
    return (
        f'{{"event":"ksmpv3.send.ack",{rid}"data":{{"messageId":"{stored.message_id}",'
        f'"idempotencyKey":"{stored.idempotency_key}","conversationId":"{conversation_id}",'
        f'"serverSeq":{stored.server_seq},"serverReceivedAtMs":{stored.received_at_ms},'
        f'"duplicate":{"true" if stored.duplicate else "false"}}}}}'
    )
