"""The storage interface every adapter implements (docs/architecture.md §Server).

Rules every adapter keeps (the conformance suite checks them through the wire):

* a send's serverSeq (per conversation) and each recipient device's
  globalInboxSeq are assigned in the same transaction as the inbox rows;
* ``append`` resolves only after that transaction is durable;
* (sender device, idempotencyKey) maps to the first outcome forever (within
  retention): a retry returns it with ``duplicate=True`` and writes nothing;
* one inbox row per recipient device (1:1 ciphertexts differ per device);
* ``ack_read`` deletes a device's rows up to a seq; ``expire`` deletes rows older
  than the retention; ``drop_expired`` deletes the rows of disappearing messages
  whose ``expiresAtMs`` passed, and ``read_inbox`` never returns one;
* a one-time prekey is handed out at most once.

Envelopes are stored as their JSON text (built once by :meth:`SendRequest.envelope`)
so that replay and live delivery never re-encode them.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from sottovoce.errors import RemoteError
from sottovoce.identity.succession import ChainHead, Genesis, Statement
from sottovoce.kt.map import ChangeKind


class UsernameTaken(RemoteError):
    pass


class DeviceExists(RemoteError):
    pass


class UnknownAccount(RemoteError):
    pass


class PrekeysFull(RemoteError):
    pass


class StatementsFull(RemoteError):
    pass


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    certificate: bytes
    revoked: bool
    push_endpoint: str | None


@dataclass(frozen=True, slots=True)
class AccountRecord:
    user_id: str
    account_key: bytes
    devices: tuple[DeviceRecord, ...]
    #: A deleted account's tombstone: its name stays taken, nothing else answers for it.
    deleted: bool = False
    #: Two successions by one account key and no recovery settling it yet: nothing signed
    #: by an account key is acted on (storage/statements.py).
    forked: bool = False
    #: The keys it was registered with (identity/succession.py ``Genesis``); the recovery
    #: key is empty for accounts registered before recovery codes.
    genesis_key: bytes = b""
    recovery_key: bytes = b""
    #: The accounts this one blocked: nothing they send is stored for its devices.
    blocked: frozenset[str] = frozenset()

    def active(self) -> tuple[DeviceRecord, ...]:
        return tuple(d for d in self.devices if not d.revoked)

    def device(self, device_id: str) -> DeviceRecord | None:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        return None


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`Storage.apply_statements` made of an account."""

    head: ChainHead
    #: Devices that were active and are not any more (their connections must close).
    revoked: tuple[str, ...]
    #: Their internal ids: the engine forgets what it cached of their inboxes.
    devs: tuple[int, ...]
    #: Why the certificates and revocations were not kept (``stale_account_key``: not
    #: signed by the ruling key; ``account_forked``), or None.
    refused: str | None = None
    #: What the key-transparency log is to record of it (storage/statements.py), or None.
    change: ChangeKind | None = None


@dataclass(frozen=True, slots=True)
class ClaimedPrekey:
    device_id: str
    certificate: bytes
    prekey: bytes
    remaining: int


class SendRequest(msgspec.Struct, gc=False):
    """One logical message, validated by the delivery layer, ready to store.

    A msgspec Struct, like :class:`StoredFrame` and :class:`SendOutcome`: one is built per
    send, and its constructor runs in C (a dataclass's ``__init__`` is Python code).
    ``gc=False``: its fields are strings, numbers and tuples of strings, never a cycle, so
    the cycle collector need not track one (nor count it towards its next pass).

    Every string field was checked against the protocol id alphabet
    (``[A-Za-z0-9_.:@/+=-]``) or a fixed set, and ciphertexts are validated
    base64, so none needs JSON escaping: :meth:`envelope` joins strings.
    """

    sender_user: str
    sender_device: str
    conversation_id: str
    message_id: str
    idempotency_key: str
    recipient_user: str
    content_type: str
    client_created_at_ms: int
    #: (userId, deviceId, ciphertext as base64) per target device.
    targets: Sequence[tuple[str, str, str]]
    ephemeral: bool = False
    #: A disappearing message: its inbox rows are dropped at this time (Unix ms; 0: never).
    expires_at_ms: int = 0

    def envelope_parts(self) -> tuple[str, str]:
        """The envelope JSON before and after the per-device ciphertext (serialize once)."""
        head = (
            f'{{"protocol":"ksmpv3","conversationId":"{self.conversation_id}",'
            f'"messageId":"{self.message_id}","senderUserId":"{self.sender_user}",'
            f'"senderDeviceId":"{self.sender_device}",'
            f'"recipientUserId":"{self.recipient_user}","ciphertext":"'
        )
        # An ephemeral message has no serverSeq: its own counter, its own name.
        seq = "ephemeralSeq" if self.ephemeral else "serverSeq"
        tail = (
            f'","contentType":"{self.content_type}",'
            f'"clientCreatedAtMs":{self.client_created_at_ms},"{seq}":'
        )
        return head, tail

    def envelope(self, ciphertext_b64: str, server_seq: int, received_at_ms: int) -> str:
        head, tail = self.envelope_parts()
        return envelope_text(self, head, tail, ciphertext_b64, server_seq, received_at_ms)

    def stored(
        self, server_seq: int, received_at_ms: int, frames: tuple[StoredFrame, ...]
    ) -> SendOutcome:
        """The outcome of this send, just stored at ``server_seq`` with its ``frames``."""
        return SendOutcome(self.conversation_id, self.message_id, self.idempotency_key,
                           server_seq, received_at_ms, False, frames)

    def retried(
        self, conversation_id: str, message_id: str, server_seq: int, received_at_ms: int
    ) -> SendOutcome:
        """The outcome of a retry of this send: the original's, as it was stored."""
        return SendOutcome(conversation_id, message_id, self.idempotency_key,
                           server_seq, received_at_ms, True, ())


def envelope_text(
    req: SendRequest, head: str, tail: str, ct: str, server_seq: int, received_at_ms: int
) -> str:
    # One f-string: the text is built once, where a chain of "+" copies it at every step.
    return (
        f'{head}{ct}{tail}{server_seq},"serverReceivedAtMs":{received_at_ms},'
        f'"idempotencyKey":"{req.idempotency_key}",'
        f'"ephemeral":{"true" if req.ephemeral else "false"}}}'
    )


def received_part(received_at_ms: int) -> str:
    """The envelope text between the serverSeq and the idempotency key, the same for every
    send stored at ``received_at_ms`` (the SQLite writer builds it once per batch)."""
    return f',"serverReceivedAtMs":{received_at_ms},"idempotencyKey":"'


def envelope_one(req: SendRequest, ct: str, server_seq: int, received: str) -> str:
    """:func:`envelope_text` for one ciphertext, built in one step (no head and tail first);
    ``received`` is :func:`received_part` of the time stored. The same text."""
    return (
        f'{{"protocol":"ksmpv3","conversationId":"{req.conversation_id}",'
        f'"messageId":"{req.message_id}","senderUserId":"{req.sender_user}",'
        f'"senderDeviceId":"{req.sender_device}",'
        f'"recipientUserId":"{req.recipient_user}","ciphertext":"{ct}",'
        f'"contentType":"{req.content_type}","clientCreatedAtMs":{req.client_created_at_ms},'
        f'"{"ephemeralSeq" if req.ephemeral else "serverSeq"}":{server_seq}{received}'
        f'{req.idempotency_key}","ephemeral":{"true" if req.ephemeral else "false"}}}'
    )


class StoredFrame(msgspec.Struct, frozen=True, gc=False):
    """One inbox row just written: who gets it, its globalInboxSeq and envelope text.

    One is built per delivered frame on the writer thread: a msgspec Struct costs about
    a fifth of a NamedTuple to construct (whose ``__new__`` is Python code), and a frozen
    dataclass more still. (``gc=False``: it holds strings and an int, never a cycle.)
    """

    user_id: str
    device_id: str
    global_seq: int
    envelope: str


class SendOutcome(msgspec.Struct, frozen=True, gc=False):
    """A stored send (one per message; a Struct for the same reason as StoredFrame, and
    untracked by the cycle collector as it is: it holds strings, numbers and those)."""

    conversation_id: str
    message_id: str
    idempotency_key: str
    server_seq: int
    received_at_ms: int
    duplicate: bool
    frames: tuple[StoredFrame, ...]


#: Called on the event loop once a send is durable (outcome) or has failed (error).
AppendCallback = Callable[[SendOutcome | None, BaseException | None], None]


class Storage(abc.ABC):
    """Abstract storage; all methods are coroutines run on the server's event loop."""

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- accounts and devices ------------------------------------------------------

    @abc.abstractmethod
    async def create_account(
        self, user_id: str, account_key: bytes, device_id: str, certificate: bytes, now_ms: int,
        recovery_key: bytes | None = None,
    ) -> None:
        """Raises :class:`UsernameTaken`. ``recovery_key``: the RK the account is registered
        with (the genesis of identity/succession.py, with ``account_key``)."""

    @abc.abstractmethod
    async def add_device(
        self, user_id: str, device_id: str, certificate: bytes, now_ms: int
    ) -> None:
        """Raises :class:`UnknownAccount`, :class:`DeviceExists`."""

    @abc.abstractmethod
    async def revoke_device(self, user_id: str, device_id: str, now_ms: int) -> None:
        """Mark one device revoked without a statement (the server itself revokes through
        :meth:`apply_statements`, which keeps the signed revocation)."""

    @abc.abstractmethod
    async def apply_statements(
        self, user_id: str, statements: Sequence[Statement], now_ms: int
    ) -> Applied:
        """Keep the account's new signed statements and resolve it (storage/statements.py).
        Raises :class:`UnknownAccount`, :class:`StatementsFull`; :attr:`Applied.refused`
        names a refusal."""

    @abc.abstractmethod
    async def account_chain(self, user_id: str) -> tuple[Genesis, list[Statement]] | None:
        """The genesis keys and the succession and recovery statements of a live account."""

    @abc.abstractmethod
    async def correspondents(self, user_id: str) -> list[str]:
        """The accounts that exchanged 1:1 messages with ``user_id``."""

    @abc.abstractmethod
    async def delete_account(self, user_id: str, now_ms: int) -> tuple[str, ...]:
        """Delete an account in one transaction; returns the device ids it revoked.

        Every device is marked revoked (push endpoint cleared) and loses its
        prekeys, KeyPackages and inbox rows. The account row stays as a
        *tombstone* (``deleted_at`` set, :attr:`AccountRecord.deleted`): the
        username can never be registered again, so nobody can take over the
        name and be mistaken by old contacts and rooms for the person who left.
        Device rows stay too: rooms still name the devices until members commit
        their Removes. Raises :class:`UnknownAccount` if there is no such
        account or it is already deleted.
        """

    @abc.abstractmethod
    async def get_account(self, user_id: str) -> AccountRecord | None:
        """The account, or its tombstone (``deleted``) when it was deleted."""

    @abc.abstractmethod
    async def set_block(self, user_id: str, peer: str, blocked: bool) -> None:
        """Record (or lift) ``user_id``'s block of ``peer`` (idempotent)."""

    @abc.abstractmethod
    async def set_push_endpoint(self, user_id: str, device_id: str, endpoint: str | None) -> None:
        ...

    # --- prekeys -------------------------------------------------------------------

    @abc.abstractmethod
    async def store_prekeys(
        self,
        user_id: str,
        device_id: str,
        one_time: Sequence[tuple[str, bytes]],
        fallback: bytes | None,
        max_stored: int,
    ) -> int:
        """Store keys; returns the one-time keys now stored. Raises :class:`PrekeysFull`."""

    @abc.abstractmethod
    async def count_prekeys(self, user_id: str, device_id: str) -> int: ...

    @abc.abstractmethod
    async def claim_prekeys(
        self, user_id: str, exclude_device: tuple[str, str] | None, *, one_time: bool = True
    ) -> list[ClaimedPrekey]:
        """Atomically take one one-time key (else the fallback) per active device;
        ``one_time=False``: the fallback only, consuming nothing (a limited requester)."""

    # --- delivery ------------------------------------------------------------------

    @abc.abstractmethod
    def append(self, req: SendRequest, callback: AppendCallback) -> None:
        """Store a send; ``callback(outcome, error)`` runs on the loop after the commit."""

    @abc.abstractmethod
    async def latest_inbox_seq(self, user_id: str, device_id: str) -> int: ...

    @abc.abstractmethod
    async def read_inbox(
        self, user_id: str, device_id: str, after_seq: int, limit: int
    ) -> list[tuple[int, str]]:
        """(globalInboxSeq, envelope JSON) after ``after_seq``, ascending."""

    @abc.abstractmethod
    async def ack_read(self, user_id: str, device_id: str, up_to_seq: int) -> int:
        """Delete the device's frames up to ``up_to_seq``; returns how many."""

    @abc.abstractmethod
    async def drop_expired(self, now_ms: int) -> int:
        """Delete the inbox frames and room messages of disappearing messages expired
        at ``now_ms``; returns how many."""

    @abc.abstractmethod
    async def expire(self, before_ms: int) -> int:
        """Delete inbox frames and idempotency records received before ``before_ms``.

        Returns the number of inbox frames deleted.
        """
