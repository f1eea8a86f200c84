"""The room audit trail (docs/protocol.md §Audit trail): a hash-chained, signed, epoch-bound log.

Every membership change, token change, call start/stop and recording on/off in a
room appends one :class:`AuditEntry`. Entries carry who did what to whom, and when;
never message content, never the token::

    entry #0            entry #1                    entry #n
    ┌───────────┐       ┌──────────────────┐        ┌──────────────────┐
    │prev = 0^32│◄──h───│prev = H(#0 bytes)│◄─ … ◄──│prev = H(#n-1)    │
    │epoch, …   │       │epoch ≥ #0.epoch  │        │…                 │
    │binding    │       │binding           │        │binding           │
    │signature  │       │signature         │        │signature         │
    └───────────┘       └──────────────────┘        └──────────────────┘

    H(data)   = SHA-256("sottovoce audit entry hash v1" ‖ data)           (entry_hash)
    tbs       = version … time_ms                 (every field before binding)
    bk        = ExpandWithLabel(epoch_authenticator, "sottovoce audit binding", "", 32)
    binding   = HMAC-SHA256(bk, tbs)
    signature = SignWithLabel(actor's MLS signature key, "sottovoce audit entry", tbs ‖ binding)

Who can check what:

* the **server** stores the chain and checks, before appending, its linkage
  (``index``, ``prev_hash``, ``room_id``, :func:`entry_hash`) and its author: the
  actor is the sending device, the stated key is the MLS signature key of that
  device's certificate (which the account key signed), and the signature verifies
  (:func:`check_signature`). It cannot edit an entry (signature and binding break),
  nor reorder or drop one from the middle (the hash links break). It could drop
  entries from the tail: a member detects that by passing the head it saw before
  (``known_head`` of :func:`verify_chain`).
* the **binding** is a MAC under a key derived from the epoch authenticator (RFC 9420
  §8.7), which only the members of that epoch know. The server sees the binding but
  learns nothing about the authenticator from it and cannot compute one; a member who
  knows the epoch's authenticator checks that the entry was made by someone sharing
  its view of that epoch (a forked group fails here). The binding is what stops a
  server from appending an entry signed with a key of its own: ``strict=True``
  refuses entries bound to epochs the member has not seen, and an entry whose binding
  verifies vouches, through the hash links, for every entry before it.
* the **signature** uses the actor's MLS leaf signature key with the RFC 9420 §5.1.2
  SignWithLabel construction, under a label no MLS structure uses; ``member_keys``
  checks that this key is the actor leaf's key in that epoch.

``epoch`` is the epoch the entry is bound to: for a commit, the epoch it creates;
otherwise the epoch current when the action happened. The actor's leaf index and
signature key are those of that epoch.

A trail with a bad entry in it (:func:`verify_trail`) stays usable. A server that
did not yet check authors let members append entries with bad signatures, and every
later entry chains onto them. The rule:

* the **chain** must hold: every entry decodes, sits at its index, names the room,
  links by hash to the entry stored before it, and keeps the head the member saw
  before. Any break is fatal (:class:`AuditChainError`): a server rewrote history;
* an entry that is in the chain but not **authentic** (signature, key, binding,
  strict epoch, member key, or an epoch older than the last authentic entry's) is
  reported and skipped, not trusted, and does not taint the entries after it, which
  are judged on their own. It is only skippable if the next entry links to it as it
  is stored, i.e. it was in the chain when that entry was made; an entry that fails
  and whose successor does not link to it was changed afterwards, and the error names
  it. The last entry has no successor: if it fails it is reported (a changed head is
  still caught through ``known_head``).

:func:`verify_chain` is the strict form: the first entry that is not authentic fails
the whole chain, for whoever needs every entry to hold (an exported trail).

This module is deliberately importable by the server: it depends on the codec, the
signature schemes and the hash/KDF only, never on AEAD, HPKE or ``mls`` (a test
checks). A suite id's signature scheme and hash come from
:mod:`sottovoce.crypto.mls_suites`, the table ``crypto.suite`` is built on too.
"""

from __future__ import annotations

import hmac as _hmac
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import NamedTuple, TypedDict, Unpack

from sottovoce.codec.tls import Reader, Writer, decode
from sottovoce.crypto import kdf
from sottovoce.crypto.kdf import Hash
from sottovoce.crypto.mls_suites import PublicSuite, suite_entry
from sottovoce.crypto.sign import SignatureScheme, SigningKey, VerifyKey
from sottovoce.errors import (
    DecodeError,
    InvalidKey,
    RemoteError,
    SignatureError,
    UnsupportedError,
    UsageError,
)
from sottovoce.limits import (
    AUDIT_MAX_ENTRY_BYTES,
    AUDIT_MAX_KEY_BYTES,
    AUDIT_MAX_SIGNATURE_BYTES,
    AUDIT_MAX_SUBJECTS,
    MAX_ID_LEN,
)
from sottovoce.protocol.fields import ID_RE
from sottovoce.secret import Secret

__all__ = [
    "AUDIT_VERSION",
    "HASH_SIZE",
    "ZERO_HASH",
    "AuditAction",
    "AuditChainError",
    "AuditEntry",
    "AuditSubject",
    "AuditTrail",
    "binding_key",
    "chain_head",
    "check_signature",
    "compute_binding",
    "entry_hash",
    "make_entry",
    "verify_chain",
    "verify_trail",
]

AUDIT_VERSION = 1
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)

# Domain separation: each string is used for exactly one purpose.
_HASH_DOMAIN = b"sottovoce audit entry hash v1"
_SIGN_LABEL = b"sottovoce audit entry"  # SignWithLabel prefixes "MLS 1.0 "
_BINDING_LABEL = b"sottovoce audit binding"  # ExpandWithLabel prefixes "MLS 1.0 "
_MLS_LABEL_PREFIX = b"MLS 1.0 "  # RFC 9420 §5.1.2 / §8

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


class AuditAction(IntEnum):
    """What happened. Values are wire code points: never renumber, only append."""

    ROOM_CREATED = 1
    MEMBER_ADDED = 2
    MEMBER_REMOVED = 3
    MEMBER_UPDATED = 4
    DEVICE_REVOKED = 5
    #: joined by external commit, or by token request answered with a Welcome
    MEMBER_JOINED = 6
    TOKEN_CREATED = 7
    TOKEN_ROTATED = 8
    TOKEN_REVOKED = 9
    CALL_STARTED = 10
    CALL_STOPPED = 11
    RECORDING_ON = 12
    RECORDING_OFF = 13
    #: A room setting changed (admins only); the one subject is (setting, value):
    #: ("residency", REGION or "none"), ("recorder", "on" or "off").
    ROOM_SETTING = 14


class AuditSubject(NamedTuple):
    """A device an action applies to (added, removed, revoked …)."""

    user_id: str
    device_id: str


class AuditChainError(RemoteError):
    """The audit chain fails verification; ``index`` names the first bad entry.

    ``index`` is the entry's position in the chain (0-based), which for a missing
    entry is the index that should have been there.
    """

    code = "audit_chain_invalid"

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"audit entry #{index}: {reason}")
        self.index = index
        self.reason = reason


def _check_id(value: str, what: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise UsageError(f"{what} must be a string of 1-{MAX_ID_LEN} characters")
    if not ID_RE.fullmatch(value):
        raise UsageError(f"{what} contains characters outside the id alphabet")


def _check_uint(value: int, maximum: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise UsageError(f"{what} out of range")


def _scheme_and_hash(suite_id: int) -> tuple[SignatureScheme, Hash]:
    _, hash_, scheme = suite_entry(suite_id)
    return scheme, hash_


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One audit entry. Validates its fields when constructed.

    Wire form (RFC 8446 presentation language, RFC 9420 varint vectors)::

        struct {
            uint16 version;                 // 1
            uint64 index;
            opaque prev_hash[32];
            opaque room_id<V>;
            uint64 epoch;
            uint8  action;                  // AuditAction
            Subject subjects<V>;            // Subject = {opaque user_id<V>; opaque device_id<V>}
            opaque actor_user_id<V>;
            opaque actor_device_id<V>;
            uint32 actor_leaf_index;
            uint16 cipher_suite;
            opaque actor_signature_key<V>;
            uint64 time_ms;
            opaque binding[32];
            opaque signature<V>;
        } AuditEntry;
    """

    index: int
    prev_hash: bytes
    room_id: str
    epoch: int
    action: AuditAction
    subjects: tuple[AuditSubject, ...] = ()
    actor_user_id: str
    actor_device_id: str
    actor_leaf_index: int
    cipher_suite: int
    actor_signature_key: bytes
    time_ms: int
    binding: bytes
    signature: bytes
    version: int = AUDIT_VERSION

    def __post_init__(self) -> None:
        if self.version != AUDIT_VERSION:
            raise UsageError(f"unsupported audit entry version {self.version}")
        _check_uint(self.index, _U64, "index")
        _check_uint(self.epoch, _U64, "epoch")
        _check_uint(self.actor_leaf_index, _U32, "actor leaf index")
        _check_uint(self.cipher_suite, 0xFFFF, "cipher suite")
        _check_uint(self.time_ms, _U64, "time_ms")
        if not isinstance(self.prev_hash, bytes) or len(self.prev_hash) != HASH_SIZE:
            raise UsageError("prev_hash must be 32 bytes")
        if not isinstance(self.binding, bytes) or len(self.binding) != HASH_SIZE:
            raise UsageError("binding must be 32 bytes")
        # Normalise plain ints and tuples to the enum / NamedTuple (frozen: via object).
        object.__setattr__(self, "action", AuditAction(self.action))
        subjects = tuple(AuditSubject(*s) for s in self.subjects)
        object.__setattr__(self, "subjects", subjects)
        if len(subjects) > AUDIT_MAX_SUBJECTS:
            raise UsageError(f"at most {AUDIT_MAX_SUBJECTS} subjects per entry")
        _check_id(self.room_id, "room id")
        for s in subjects:
            _check_id(s.user_id, "subject user id")
            _check_id(s.device_id, "subject device id")
        _check_id(self.actor_user_id, "actor user id")
        _check_id(self.actor_device_id, "actor device id")
        if not isinstance(self.actor_signature_key, bytes) or not (
            0 < len(self.actor_signature_key) <= AUDIT_MAX_KEY_BYTES
        ):
            raise UsageError(f"actor signature key must be 1-{AUDIT_MAX_KEY_BYTES} bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) > AUDIT_MAX_SIGNATURE_BYTES:
            raise UsageError(f"signature must be at most {AUDIT_MAX_SIGNATURE_BYTES} bytes")

    # --- encoding ------------------------------------------------------------------

    def _write_tbs(self, w: Writer) -> None:
        w.u16(self.version)
        w.u64(self.index)
        w.raw(self.prev_hash)
        w.opaque_v(self.room_id.encode("ascii"))
        w.u64(self.epoch)
        w.u8(int(self.action))
        w.vector_v(self.subjects, _write_subject)
        w.opaque_v(self.actor_user_id.encode("ascii"))
        w.opaque_v(self.actor_device_id.encode("ascii"))
        w.u32(self.actor_leaf_index)
        w.u16(self.cipher_suite)
        w.opaque_v(self.actor_signature_key)
        w.u64(self.time_ms)

    def tbs(self) -> bytes:
        """The bytes the binding MACs: every field before ``binding``."""
        w = Writer()
        self._write_tbs(w)
        return w.getvalue()

    def signed_content(self) -> bytes:
        """The bytes the signature covers: everything but the signature."""
        return self.tbs() + self.binding

    def encode(self) -> bytes:
        w = Writer()
        self._write_tbs(w)
        w.raw(self.binding)
        w.opaque_v(self.signature)
        return w.getvalue()

    @classmethod
    def read(cls, r: Reader) -> AuditEntry:
        version = r.u16()
        if version != AUDIT_VERSION:
            raise DecodeError(f"unsupported audit entry version {version}")
        index = r.u64()
        prev_hash = r.raw(HASH_SIZE)
        room_id = _read_id(r)
        epoch = r.u64()
        action_value = r.u8()
        try:
            action = AuditAction(action_value)
        except ValueError:
            raise DecodeError(f"unknown audit action {action_value}") from None
        subjects = r.vector_v(_read_subject)
        actor_user_id = _read_id(r)
        actor_device_id = _read_id(r)
        leaf = r.u32()
        suite_id = r.u16()
        key = r.opaque_v()
        time_ms = r.u64()
        binding = r.raw(HASH_SIZE)
        signature = r.opaque_v()
        try:
            return cls(
                version=version,
                index=index,
                prev_hash=prev_hash,
                room_id=room_id,
                epoch=epoch,
                action=action,
                subjects=tuple(subjects),
                actor_user_id=actor_user_id,
                actor_device_id=actor_device_id,
                actor_leaf_index=leaf,
                cipher_suite=suite_id,
                actor_signature_key=key,
                time_ms=time_ms,
                binding=binding,
                signature=signature,
            )
        except UsageError as exc:  # a field out of its allowed range
            raise DecodeError(f"invalid audit entry: {exc}") from None

    @classmethod
    def decode(cls, data: bytes) -> AuditEntry:
        """Decode exactly one entry; raises only :class:`DecodeError` on bad input."""
        if isinstance(data, bytes | bytearray | memoryview) and len(data) > AUDIT_MAX_ENTRY_BYTES:
            raise DecodeError("audit entry too large")
        return decode(cls.read, data)

    def __repr__(self) -> str:
        return (
            f"AuditEntry(#{self.index}, {self.room_id}, epoch={self.epoch}, "
            f"{self.action.name}, actor={self.actor_user_id}/{self.actor_device_id})"
        )


def _write_subject(w: Writer, s: AuditSubject) -> None:
    w.opaque_v(s.user_id.encode("ascii"))
    w.opaque_v(s.device_id.encode("ascii"))


def _read_id(r: Reader) -> str:
    raw = r.opaque_v()
    try:
        value = raw.decode("ascii")
    except UnicodeDecodeError:
        raise DecodeError("identifier is not ASCII") from None
    if not 0 < len(value) <= MAX_ID_LEN or not ID_RE.fullmatch(value):
        raise DecodeError("identifier outside the id alphabet or too long")
    return value


def _read_subject(r: Reader) -> AuditSubject:
    return AuditSubject(_read_id(r), _read_id(r))


# --- hashing, binding, signing -----------------------------------------------------------


def entry_hash(data: bytes) -> bytes:
    """SHA-256 over the exact encoded entry bytes, domain-separated (the chain link)."""
    return kdf.digest(Hash.SHA256, _HASH_DOMAIN + bytes(data))


def _opaque_v(data: bytes) -> bytes:
    w = Writer()
    w.opaque_v(data)
    return w.getvalue()


def binding_key(suite_id: int, epoch_authenticator: bytes | Secret) -> Secret:
    """ExpandWithLabel(epoch_authenticator, "sottovoce audit binding", "", 32) (RFC 9420 §8).

    Uses the suite's KDF, like every MLS derivation; the authenticator itself never
    leaves the member (a one-way derivation, and the MAC below does not reveal its key).
    """
    _, hash_ = _scheme_and_hash(suite_id)
    secret = (
        epoch_authenticator.expose()
        if isinstance(epoch_authenticator, Secret)
        else epoch_authenticator
    )
    if not secret:
        raise UsageError("empty epoch authenticator")
    w = Writer()
    w.u16(HASH_SIZE)
    w.opaque_v(_MLS_LABEL_PREFIX + _BINDING_LABEL)
    w.opaque_v(b"")
    return Secret(kdf.hkdf_expand(hash_, secret, w.getvalue(), HASH_SIZE))


def compute_binding(suite_id: int, epoch_authenticator: bytes | Secret, tbs: bytes) -> bytes:
    """HMAC-SHA256(binding_key, tbs)."""
    key = binding_key(suite_id, epoch_authenticator)
    return kdf.hmac(Hash.SHA256, key.expose(), tbs)


def _sign_content(content: bytes) -> bytes:
    # RFC 9420 §5.1.2 SignContent: opaque label<V> = "MLS 1.0 " + Label; opaque content<V>.
    # Same bytes as crypto.labels.sign_with_label (a test checks), without importing it.
    return _opaque_v(_MLS_LABEL_PREFIX + _SIGN_LABEL) + _opaque_v(content)


def make_entry(
    *,
    signing_key: SigningKey,
    suite: int | PublicSuite,
    prev: bytes | None,
    room_id: str,
    epoch: int,
    epoch_authenticator: bytes | Secret,
    action: AuditAction,
    actor_user_id: str,
    actor_device_id: str,
    actor_leaf_index: int,
    now_ms: int,
    subjects: Sequence[tuple[str, str]] = (),
) -> AuditEntry:
    """Build and sign the entry that follows ``prev`` (the encoded head; None for #0).

    ``epoch``/``epoch_authenticator`` are those of the epoch the entry is bound to (for
    a commit: the new epoch). ``signing_key`` is the actor's MLS leaf signature key in
    that epoch. Send ``entry.encode()``.
    """
    suite_id = suite if isinstance(suite, int) else suite.id
    scheme, _ = _scheme_and_hash(suite_id)
    if signing_key.scheme is not scheme:
        raise UsageError("signing key does not match the cipher suite's signature scheme")
    if prev is None:
        index, prev_hash = 0, ZERO_HASH
    else:
        try:
            previous = AuditEntry.decode(prev)
        except DecodeError:
            raise UsageError("prev is not an encoded audit entry") from None
        if previous.room_id != room_id:
            raise UsageError("prev belongs to another room")
        # No check of ``epoch`` against prev's: prev is the stored head, not yet known
        # to be authentic (one with a made-up epoch must not stop the next entry).
        index, prev_hash = previous.index + 1, entry_hash(prev)
    unsigned = AuditEntry(
        index=index,
        prev_hash=prev_hash,
        room_id=room_id,
        epoch=epoch,
        action=action,
        subjects=tuple(AuditSubject(*s) for s in subjects),
        actor_user_id=actor_user_id,
        actor_device_id=actor_device_id,
        actor_leaf_index=actor_leaf_index,
        cipher_suite=suite_id,
        actor_signature_key=signing_key.verify_key.data,
        time_ms=now_ms,
        binding=ZERO_HASH,
        signature=b"",
    )
    tbs = unsigned.tbs()
    binding = compute_binding(suite_id, epoch_authenticator, tbs)
    signature = signing_key.sign(_sign_content(tbs + binding))
    if len(tbs) + HASH_SIZE + 2 + len(signature) > AUDIT_MAX_ENTRY_BYTES:
        # Never emit an entry that no one (server included) would decode.
        raise UsageError("audit entry too large: split the change over several entries")
    return replace(unsigned, binding=binding, signature=signature)


# --- verification ------------------------------------------------------------------------


def chain_head(entries: Sequence[bytes]) -> tuple[int, bytes] | None:
    """``(index, entry_hash)`` of the last entry, to pass later as ``known_head``."""
    if not entries:
        return None
    return len(entries) - 1, entry_hash(entries[-1])


@dataclass(frozen=True, slots=True)
class AuditTrail:
    """A verified trail: the authentic entries, and the ones reported and skipped.

    Iterating, indexing and ``len`` give the authentic entries (chain order)."""

    entries: tuple[AuditEntry, ...]
    #: Entries in the chain that are not authentic (module docstring: the rule).
    rejected: tuple[AuditChainError, ...] = ()

    def __iter__(self) -> Iterator[AuditEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> AuditEntry:
        return self.entries[index]


class TrailChecks(TypedDict, total=False):
    """What :func:`verify_trail` and :func:`verify_chain` check a chain against besides
    its room: ``authenticators``, ``known_head``, ``member_keys``, ``strict`` (none by
    default; :func:`verify_trail` says what each proves)."""

    authenticators: Mapping[int, bytes | Secret] | None
    known_head: tuple[int, bytes] | None
    member_keys: Mapping[int, Mapping[int, bytes]] | None
    strict: bool


def verify_chain(
    entries: Sequence[bytes], *, room_id: str, **checks: Unpack[TrailChecks]
) -> list[AuditEntry]:
    """Verify a whole chain in which every entry must hold; return the decoded entries.

    :func:`verify_trail`'s checks, with the first entry that is not authentic failing
    the chain instead of being skipped. Raises :class:`AuditChainError` naming it.
    """
    return list(_walk(entries, room_id=room_id, skip=False, **checks).entries)


def verify_trail(
    entries: Sequence[bytes], *, room_id: str, **checks: Unpack[TrailChecks]
) -> AuditTrail:
    """Verify a chain (entry #0 first): fail on a broken chain, skip what is not authentic.

    The chain (fatal): each entry decodes; its index is its position; its prev_hash is
    the hash of the entry stored before (zeros for #0); it names ``room_id``; the chain
    still holds ``known_head`` ``(index, entry_hash)``, the head this member verified
    before (so a server that truncates or rewrites what the member already saw is
    caught). Each entry (reported and skipped when it fails, see the module docstring):
    the cipher suite is known and the signature verifies under the stated key; its
    epoch is not older than the last authentic entry's; if ``authenticators`` has its
    epoch, the binding matches; if ``member_keys`` has its epoch (epoch → leaf index →
    signature public key, as the member saw that epoch's tree), the actor's leaf is a
    member then and holds that key. ``time_ms`` is the actor's clock, signed but not
    checked (device clocks disagree).

    What the binding proves, and ``strict``: the signature alone only shows that
    *someone* holding the stated key signed; a server could sign an entry with a key
    of its own. The binding is what it cannot make, so an entry is authentic once its
    binding verifies -- and, through the hash chain, so is every entry before it. An
    entry bound to an epoch the member does not know can be a server forgery. With
    ``strict=True`` every entry from the member's first known epoch
    (``min(authenticators)``) on must be bound to an epoch in ``authenticators``;
    pass it when the member keeps every epoch's authenticator since it joined and has
    processed the room's commits. Entries before that epoch are authenticated only by
    the chain link to a later bound entry.

    Raises :class:`AuditChainError` naming the first break of the chain.
    """
    return _walk(entries, room_id=room_id, skip=True, **checks)


def _walk(
    entries: Sequence[bytes],
    *,
    room_id: str,
    skip: bool,
    authenticators: Mapping[int, bytes | Secret] | None = None,
    known_head: tuple[int, bytes] | None = None,
    member_keys: Mapping[int, Mapping[int, bytes]] | None = None,
    strict: bool = False,
) -> AuditTrail:
    if known_head is not None and (
        known_head[0] < 0 or not isinstance(known_head[1], bytes) or len(known_head[1]) != HASH_SIZE
    ):
        raise UsageError("known_head must be (index >= 0, 32-byte entry hash)")
    if strict and not authenticators:
        raise UsageError("strict verification needs the member's epoch authenticators")
    first_known = min(authenticators) if authenticators else 0
    out: list[AuditEntry] = []
    rejected: list[AuditChainError] = []
    suspect: AuditChainError | None = None  # not authentic; skippable once its successor links
    prev_hash = ZERO_HASH
    prev_epoch = 0
    for position, data in enumerate(entries):
        try:
            entry = AuditEntry.decode(data)
        except DecodeError:
            raise AuditChainError(position, "does not decode") from None
        if entry.index != position:
            if entry.index > position:
                raise AuditChainError(
                    position, f"missing (the chain skips to entry #{entry.index})"
                )
            raise AuditChainError(position, f"out of order (found entry #{entry.index})")
        if entry.prev_hash != prev_hash:
            # A failing entry the next one does not link to was changed afterwards.
            raise suspect or AuditChainError(position, "does not link to the previous entry")
        if suspect is not None:
            rejected.append(suspect)
            suspect = None
        if entry.room_id != room_id:
            raise AuditChainError(position, "belongs to another room")
        this_hash = entry_hash(data)
        if (
            known_head is not None
            and known_head[0] == position
            and not _hmac.compare_digest(known_head[1], this_hash)
        ):
            raise AuditChainError(position, "differs from the entry this member verified before")
        try:
            _check_authentic(
                position, entry, prev_epoch, authenticators, member_keys,
                strict=strict, first_known=first_known,
            )
        except AuditChainError as bad:
            if not skip:
                raise
            suspect = bad
        else:
            out.append(entry)
            prev_epoch = entry.epoch
        prev_hash = this_hash
    if suspect is not None:
        rejected.append(suspect)
    if known_head is not None and known_head[0] >= len(entries):
        raise AuditChainError(
            len(entries), "missing (the chain ends before the head this member saw)"
        )
    return AuditTrail(tuple(out), tuple(rejected))


def _check_authentic(
    position: int,
    entry: AuditEntry,
    prev_epoch: int,
    authenticators: Mapping[int, bytes | Secret] | None,
    member_keys: Mapping[int, Mapping[int, bytes]] | None,
    *,
    strict: bool,
    first_known: int,
) -> None:
    _verify_signature(position, entry)
    if entry.epoch < prev_epoch:
        raise AuditChainError(position, "epoch goes backwards")
    if authenticators is not None and entry.epoch in authenticators:
        expected = compute_binding(entry.cipher_suite, authenticators[entry.epoch], entry.tbs())
        if not _hmac.compare_digest(expected, entry.binding):
            raise AuditChainError(
                position, f"not bound to this member's view of epoch {entry.epoch}"
            )
    elif strict and entry.epoch >= first_known:
        raise AuditChainError(
            position,
            f"bound to epoch {entry.epoch}, which this member has not seen (unverifiable)",
        )
    if member_keys is not None and entry.epoch in member_keys:
        key = member_keys[entry.epoch].get(entry.actor_leaf_index)
        if key is None:
            raise AuditChainError(
                position,
                f"actor leaf {entry.actor_leaf_index} is not a member at epoch {entry.epoch}",
            )
        if not _hmac.compare_digest(key, entry.actor_signature_key):
            raise AuditChainError(
                position,
                f"signature key is not that of leaf {entry.actor_leaf_index} "
                f"at epoch {entry.epoch}",
            )


def check_signature(entry: AuditEntry) -> None:
    """The entry's signature verifies under its stated key and suite (what the server
    checks before appending, beside the key being the actor device's certified one).
    Raises :class:`AuditChainError`."""
    _verify_signature(entry.index, entry)


def _verify_signature(position: int, entry: AuditEntry) -> None:
    try:
        scheme, _ = _scheme_and_hash(entry.cipher_suite)
    except UnsupportedError:
        raise AuditChainError(position, "unsupported cipher suite") from None
    try:
        key = VerifyKey(scheme, entry.actor_signature_key)
    except InvalidKey:
        raise AuditChainError(position, "signature key is malformed") from None
    try:
        key.verify(_sign_content(entry.signed_content()), entry.signature)
    except SignatureError:
        raise AuditChainError(position, "signature does not verify") from None
