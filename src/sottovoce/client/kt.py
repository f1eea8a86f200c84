"""Key transparency on this device (docs/protocol.md §Key transparency: client rules).

    account create ──► head ──► pin the log key, the VRF key and the witness keys
                                (or check them against --kt-key / --kt-witness)
    every lookup   ──► kt.lookup ──► verify_lookup (pinned keys, >= 1 witness, age,
                       consistency with the kept head) ──► the directory's keys must
                       be in the verified account state, else KeyNotInLog
    on connect and every KT_MONITOR_INTERVAL_S ──► kt.history pages ──► monitor_page
                       against every device this account's key certified
    every message  ──► carries our head (size, root); a peer's head of the same size
                       with another root, or one our log is not consistent with, is
                       a split view

Check, then commit: a new head, monitor state or pin is stored only after every
proof passed, so a malformed proof or a bad signature ends in a typed error and
nothing stored changes. What proves the log misbehaved (a different log key, a
log that shrank or forked, a foreign device in our own account, a split view)
is also stored as an alert that stays until acknowledged (``sottovoce kt ack``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sottovoce.client.errors import KeyNotInLog, KTAlertRaised, ServerError
from sottovoce.client.ports import Link
from sottovoce.client.store import Contact, Store
from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt.checkpoint import NoteKey, VerifiedCheckpoint, open_checkpoint
from sottovoce.kt.errors import (
    KTError,
    LogForked,
    LogShrank,
    MalformedProof,
    MonitorAlert,
    NoWitnessPinned,
)
from sottovoce.kt.map import AccountState
from sottovoce.kt.merkle import HASH_SIZE, verify_consistency
from sottovoce.kt.verify import (
    HistoryPage,
    KTPolicy,
    LookupResponse,
    MonitorResult,
    MonitorState,
    OwnKeys,
    TrustedHead,
    check_extension,
    monitor_page,
    verify_lookup,
)
from sottovoce.limits import (
    KT_CATCH_UP_PAUSES_S,
    KT_DEFAULT_MAX_CHECKPOINT_AGE_MS,
    KT_MAX_ALERTS,
)
from sottovoce.protocol import kt as pk
from sottovoce.protocol.fields import ProtocolError

_RECORD_VERSION = 1
R = TypeVar("R", bound=WireStruct)
_PINS, _EXPECT, _HEAD, _MONITOR, _OWN = "pins", "expect", "head", "monitor", "own"


# =============================================================================
# What the server answers, and where the answers come from
# =============================================================================


@dataclass(frozen=True, slots=True, kw_only=True)
class HeadAnswer:
    """``sottovoce.kt.head.result``, decoded."""

    checkpoint: bytes
    consistency: tuple[bytes, ...]
    log_key: str
    vrf_key: bytes
    witnesses: tuple[str, ...]


class KTSource(Protocol):
    """The three requests key transparency makes of the server."""

    async def head(self, since: int) -> HeadAnswer: ...

    async def lookup(self, username: str, since: int) -> LookupResponse: ...

    async def history_page(self, since: int, start: int) -> HistoryPage: ...


#: How long, in all, one key-transparency request waits out the server's rate limit (as
#: its refusal's retry hint says) before the refusal reaches the caller.
RATE_LIMIT_PATIENCE_S = 10.0


class LinkSource:
    """:class:`KTSource` over the authenticated connection."""

    def __init__(self, link: Link) -> None:
        self._link = link

    async def _request(self, event: Any, names: frozenset[str]) -> dict[str, Any]:
        """The answer to ``event``; a retryable ``rate_limited`` is waited out and asked
        again (a room invite looks up every member: a burst the server paces)."""
        waited = 0.0
        while True:
            try:
                _, data = await self._link.request(event, names)
                return data
            except ServerError as exc:
                delay = max(exc.retry_after_ms, 50) / 1000
                if (exc.code != "rate_limited" or not exc.retryable
                        or waited + delay > RATE_LIMIT_PATIENCE_S):
                    raise
            waited += delay
            await asyncio.sleep(delay)

    async def head(self, since: int) -> HeadAnswer:
        data = await self._request(pk.KTHead(since=since), frozenset({pk.KT_HEAD_RESULT}))
        try:
            r = pk.KTHeadResult.from_wire(data)
        except ProtocolError as exc:
            raise MalformedProof(f"the log's head answer is malformed: {exc}") from None
        return HeadAnswer(checkpoint=r.checkpoint.encode(), consistency=tuple(r.consistency),
                          log_key=r.log_key, vrf_key=r.vrf_key, witnesses=tuple(r.witnesses))

    async def _response(self, event: Any, name: str) -> bytes:
        data = await self._request(event, frozenset({name}))
        try:
            return pk.KTResponse.from_wire(data).response
        except ProtocolError as exc:
            raise MalformedProof(f"the log's answer is malformed: {exc}") from None

    async def lookup(self, username: str, since: int) -> LookupResponse:
        raw = await self._response(pk.KTLookup(username=username, since=since),
                                   pk.KT_LOOKUP_RESULT)
        return _decode(LookupResponse, raw)

    async def history_page(self, since: int, start: int) -> HistoryPage:
        raw = await self._response(pk.KTHistory(since=since, start=start), pk.KT_HISTORY_RESULT)
        return _decode(HistoryPage, raw)


def _decode(cls: type[R], raw: bytes) -> R:
    try:
        return cls.decode(raw)
    except DecodeError:
        raise MalformedProof(f"the log's {cls.__name__} does not decode") from None


# =============================================================================
# What is kept in the store (each record starts with its version)
# =============================================================================


def _versioned(r: Reader, what: str) -> None:
    if r.u8() != _RECORD_VERSION:
        raise DecodeError(f"unknown {what} record version")


@dataclass(frozen=True, slots=True, kw_only=True)
class Pins(WireStruct):
    """The keys this device trusts for the log: pinned once, never silently replaced."""

    log_key: str
    vrf_key: bytes
    witnesses: tuple[str, ...]
    min_cosignatures: int = 1
    max_age_ms: int = KT_DEFAULT_MAX_CHECKPOINT_AGE_MS

    def write(self, w: Writer) -> None:
        w.u8(_RECORD_VERSION)
        w.opaque_v(self.log_key.encode())
        w.opaque8(self.vrf_key)
        w.vector_v(self.witnesses, lambda w2, v: w2.opaque_v(v.encode()))
        w.u8(self.min_cosignatures)
        w.u64(self.max_age_ms)

    @classmethod
    def read(cls, r: Reader) -> Pins:
        _versioned(r, "pins")
        return cls(log_key=r.opaque_v().decode(), vrf_key=r.opaque8(),
                   witnesses=tuple(v.decode() for v in r.vector_v(lambda r2: r2.opaque_v())),
                   min_cosignatures=r.u8(), max_age_ms=r.u64())

    def policy(self) -> KTPolicy:
        """The policy these pins make (kept per pins: parsing the keys costs more than
        the rest of a lookup's check without its VRF proof)."""
        policy = _POLICIES.get(self)
        if policy is None:
            policy = self._policy()
            if len(_POLICIES) >= 16:
                _POLICIES.clear()
            _POLICIES[self] = policy
        return policy

    def _policy(self) -> KTPolicy:
        required = min(self.min_cosignatures, len(self.witnesses))
        return KTPolicy(log_key=NoteKey.from_vkey(self.log_key), vrf_key=self.vrf_key,
                        witnesses=tuple(NoteKey.from_vkey(v) for v in self.witnesses),
                        min_cosignatures=required,
                        # With no cosignature required, none dates a checkpoint.
                        max_age_ms=self.max_age_ms if required else None)


#: :meth:`Pins.policy` of the pins seen (both frozen: equal pins make equal policies).
_POLICIES: dict[Pins, KTPolicy] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Head(WireStruct):
    size: int
    root: bytes
    note: bytes

    def write(self, w: Writer) -> None:
        w.u8(_RECORD_VERSION)
        w.u64(self.size)
        w.opaque8(self.root)
        w.opaque_v(self.note)

    @classmethod
    def read(cls, r: Reader) -> _Head:
        _versioned(r, "head")
        return cls(size=r.u64(), root=r.opaque8(), note=r.opaque_v())


@dataclass(frozen=True, slots=True, kw_only=True)
class _Monitor(WireStruct):
    """Version 2 adds the version tree's compact range (version 1: checked again from
    the first version, a page at a time)."""

    versions: int
    version_root: bytes
    border: tuple[bytes, ...] = ()

    def write(self, w: Writer) -> None:
        w.u8(2)
        w.u32(self.versions)
        w.opaque8(self.version_root)
        w.vector_v(self.border, lambda w2, h: w2.opaque8(h))

    @classmethod
    def read(cls, r: Reader) -> _Monitor:
        version = r.u8()
        if version not in (1, 2):
            raise DecodeError("unknown monitor record version")
        versions, root = r.u32(), r.opaque8()
        border = tuple(r.vector_v(lambda r2: r2.opaque8())) if version == 2 else ()
        return cls(versions=versions, version_root=root, border=border)


def _write_device(w: Writer, device: tuple[str, bytes]) -> None:
    w.opaque8(device[0].encode())
    w.opaque8(device[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class _Own(WireStruct):
    """Every device this account's key ever certified that this device saw, and every
    account and recovery key it ever had: what the monitor accepts in our own entry."""

    devices: tuple[tuple[str, bytes], ...]
    account_keys: tuple[bytes, ...]
    recovery_keys: tuple[bytes, ...]

    def write(self, w: Writer) -> None:
        w.u8(_RECORD_VERSION)
        w.vector_v(self.devices, _write_device)
        w.vector_v(self.account_keys, lambda w2, k: w2.opaque8(k))
        w.vector_v(self.recovery_keys, lambda w2, k: w2.opaque8(k))

    @classmethod
    def read(cls, r: Reader) -> _Own:
        _versioned(r, "own keys")
        devices = tuple(r.vector_v(lambda r2: (r2.opaque8().decode(), r2.opaque8())))
        return cls(devices=devices, account_keys=tuple(r.vector_v(lambda r2: r2.opaque8())),
                   recovery_keys=tuple(r.vector_v(lambda r2: r2.opaque8())))


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert(WireStruct):
    """A stored alert: what kind, what happened (no key material), and when."""

    kind: str
    message: str
    at_ms: int
    id: int = 0

    def write(self, w: Writer) -> None:
        w.u8(_RECORD_VERSION)
        w.opaque8(self.kind.encode())
        w.opaque_v(self.message.encode())
        w.u64(self.at_ms)

    @classmethod
    def read(cls, r: Reader) -> Alert:
        _versioned(r, "alert")
        return cls(kind=r.opaque8().decode(), message=r.opaque_v().decode(), at_ms=r.u64())


class WitnessPolicy(enum.Enum):
    """What this device requires of witnesses (:attr:`KeyTransparency.witness_policy`)."""

    #: At least one pinned witness must cosign every checkpoint (the default).
    REQUIRED = "required"
    #: Cosignatures are required but fewer witnesses are pinned than required (a server
    #: with no witness): every lookup is refused, and the client says so at connect.
    MISSING = "missing"
    #: The user opted out (``--kt-min-cosignatures 0``): checkpoints are checked against
    #: the log key alone, which proves nothing against a server showing a forked log.
    OPTED_OUT = "opted-out"


def witness_policy_of(pins: Pins | None) -> WitnessPolicy | None:
    """What ``pins`` require of witnesses (``None`` for no pins)."""
    if pins is None:
        return None
    if pins.min_cosignatures == 0:
        return WitnessPolicy.OPTED_OUT
    if len(pins.witnesses) < pins.min_cosignatures:
        return WitnessPolicy.MISSING
    return WitnessPolicy.REQUIRED


#: The most cosignatures a device may require.
MAX_MIN_COSIGNATURES = 32

#: Alert kinds (``sottovoce kt status`` prints them as they are).
LOG_KEY_CHANGED = "log-key-changed"
LOG_INCONSISTENT = "log-inconsistent"
OWN_ACCOUNT = "own-account"
SPLIT_VIEW = "split-view"


def parse_vkey(text: str, *, witness: bool) -> str:
    """A ``--kt-key`` / ``--kt-witness`` value, checked; a plain error if it is not one."""
    try:
        key = NoteKey.from_vkey(text.strip())
    except MalformedProof as exc:
        raise UsageError(f"not a verifier key (name+keyid+base64): {exc}") from None
    if witness != (key.sig_type != 0x01):
        want = "a witness's cosignature key" if witness else "a log's signing key"
        raise UsageError(f"the key {key.name!r} is not {want}")
    return key.vkey()


def check_min_cosignatures(n: int) -> int:
    """A ``--kt-min-cosignatures`` value, checked; a plain error if it is not one."""
    if not 0 <= n <= MAX_MIN_COSIGNATURES:
        raise UsageError(f"the cosignatures required are 0-{MAX_MIN_COSIGNATURES}")
    return n


def expect_log(store: Store, log_key: str | None, witnesses: Sequence[str],
               min_cosignatures: int = 1) -> None:
    """Keys given from elsewhere (``--kt-key``, ``--kt-witness``), kept before the
    account is registered: the log is pinned only if the server's key is this one,
    and lookups are refused until it is. ``min_cosignatures`` other than 1 (0: the
    explicit opt-out of witnesses) is kept the same way."""
    if log_key is None and not witnesses and min_cosignatures == 1:
        return
    with store.transaction():
        store.put_kt(_EXPECT, Pins(log_key=log_key or "", vrf_key=b"",
                                   witnesses=tuple(witnesses),
                                   min_cosignatures=check_min_cosignatures(min_cosignatures)
                                   ).encode())


# =============================================================================
# The device's key-transparency state
# =============================================================================


class KeyTransparency:
    """Pins, the last verified head, the monitor and the alerts of one device."""

    def __init__(
        self, store: Store, source: KTSource, *, username: str, clock_ms: Callable[[], int],
        own_devices: Callable[[], Contact | None],
    ) -> None:
        self._store, self._source = store, source
        self._username, self._clock = username, clock_ms
        self._own_contact = own_devices
        #: peers' heads compared already (sender, size, root)
        self._compared: set[tuple[str, int, bytes]] = set()

    # --- reading the store ---------------------------------------------------------

    def _record(self, name: str, cls: type[R]) -> R | None:
        raw = self._store.get_kt(name)
        if raw is None:
            return None
        try:
            return cls.decode(raw)
        except (DecodeError, UnicodeDecodeError):
            raise UsageError(f"the key-transparency {name} record in the store is damaged") \
                from None

    @property
    def pins(self) -> Pins | None:
        return self._record(_PINS, Pins)

    @property
    def head(self) -> TrustedHead | None:
        h = self._record(_HEAD, _Head)
        return None if h is None else TrustedHead(size=h.size, root=h.root, note=h.note)

    @property
    def monitor_state(self) -> MonitorState:
        m = self._record(_MONITOR, _Monitor)
        return MonitorState() if m is None else MonitorState(
            versions=m.versions, version_root=m.version_root, border=m.border)

    def checkpoint_ref(self) -> tuple[int, bytes] | None:
        """What our messages carry: the last verified head's size and root."""
        h = self.head
        return None if h is None else (h.size, h.root)

    def verified_head(self) -> VerifiedCheckpoint | None:
        """The kept head re-opened (cosignatures for ``kt status``), without an age check."""
        pins, head = self.pins, self.head
        if pins is None or head is None:
            return None
        policy = pins.policy()
        return open_checkpoint(head.note, log_key=policy.log_key, witnesses=policy.witnesses)

    # --- alerts --------------------------------------------------------------------

    def alerts(self, *, acknowledged: bool = False) -> list[Alert]:
        out = []
        for row_id, raw in self._store.kt_alerts(acknowledged=acknowledged):
            try:
                a = Alert.decode(raw)
            except (DecodeError, UnicodeDecodeError):
                a = Alert(kind="damaged", message="an alert record is damaged", at_ms=0)
            out.append(Alert(kind=a.kind, message=a.message, at_ms=a.at_ms, id=row_id))
        return out

    def acknowledge(self) -> int:
        with self._store.transaction():
            return self._store.acknowledge_kt_alerts()

    def _alert(self, kind: str, message: str) -> KTAlertRaised:
        """Store an alert (once per kind and message while not acknowledged) and return
        the error to raise."""
        with self._store.transaction():
            pending = self._store.kt_alerts()
            if not any(_same(raw, kind, message) for _, raw in pending) and (
                len(self._store.kt_alerts(acknowledged=True)) < KT_MAX_ALERTS
            ):
                self._store.add_kt_alert(Alert(kind=kind, message=message,
                                               at_ms=self._clock()).encode())
        return KTAlertRaised(kind, message)

    # --- pinning -------------------------------------------------------------------

    def expected_by_new_device(self) -> tuple[str | None, tuple[str, ...], int]:
        """What a device this one adds should pin: our log key and witnesses, and how
        many cosignatures we require."""
        pins = self.pins
        return ((None, (), 1) if pins is None
                else (pins.log_key, pins.witnesses, pins.min_cosignatures))

    @property
    def witness_policy(self) -> WitnessPolicy | None:
        """What this device requires of witnesses (``None`` while no log is pinned)."""
        return witness_policy_of(self.pins)

    def require(self, min_cosignatures: int) -> Pins:
        """Require ``min_cosignatures`` pinned witnesses' cosignatures on every checkpoint
        (0 opts out of witnesses: the user's explicit choice, never a default)."""
        pins = self.pins
        if pins is None:
            raise UsageError("no log is pinned on this device yet")
        new = Pins(log_key=pins.log_key, vrf_key=pins.vrf_key, witnesses=pins.witnesses,
                   min_cosignatures=check_min_cosignatures(min_cosignatures),
                   max_age_ms=pins.max_age_ms)
        with self._store.transaction():
            self._store.put_kt(_PINS, new.encode())
        return new

    @property
    def required(self) -> bool:
        """Lookups must be verified: a log is pinned, or keys for one were given."""
        return self.pins is not None or self._store.get_kt(_EXPECT) is not None

    async def pin_from_server(self) -> Pins:
        """Fetch the head and :meth:`pin` it (with the keys given earlier, if any); an
        empty log (``kt_unavailable``, just after the first registration) is waited for."""
        for pause in (*KT_CATCH_UP_PAUSES_S, None):
            try:
                return self.pin(await self._source.head(0))
            except ServerError as exc:
                if pause is None or exc.code != "kt_unavailable":
                    raise
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    def pin(self, answer: HeadAnswer) -> Pins:
        """Pin the log of ``answer`` (its keys, or the ones given to :meth:`expect`, which
        must match), after its checkpoint verified under them."""
        if self.pins is not None:
            raise UsageError("the log's keys are already pinned on this device")
        expected = self._record(_EXPECT, Pins)
        log_key = expected.log_key if expected and expected.log_key else None
        witnesses = expected.witnesses if expected else ()
        served = _vkey(answer.log_key, "log key")
        if log_key is not None and log_key != served:
            raise self._alert(LOG_KEY_CHANGED, "the server's log key is not the one given "
                                               "with --kt-key; nothing was pinned")
        chosen = tuple(witnesses) if witnesses else tuple(
            _vkey(w, "witness key") for w in answer.witnesses
        )
        # With no witness the log is pinned all the same: lookups are refused until one is
        # (WitnessPolicy.MISSING), unless the user opted out of witnesses.
        pins = Pins(log_key=served, vrf_key=answer.vrf_key, witnesses=chosen,
                    min_cosignatures=expected.min_cosignatures if expected else 1)
        verified = self._open_under(pins, answer.checkpoint)
        with self._store.transaction():
            self._store.put_kt(_PINS, pins.encode())
            self._keep(verified)
        return pins

    def _open_under(self, pins: Pins, checkpoint: bytes) -> VerifiedCheckpoint:
        """``checkpoint`` verified under the keys and witness policy of ``pins``."""
        try:
            policy = pins.policy()
        except (MalformedProof, UsageError) as exc:
            raise MalformedProof(f"the log's keys are unusable: {exc}") from None
        return policy.open(checkpoint, self._clock())

    async def repin(self, log_key: str) -> Pins:
        """Pin the log key ``log_key`` (checked by :func:`parse_vkey`) in place of the
        pinned one, after a legitimate rotation the user checked out of band: the server
        must name that very key and its checkpoint must verify under it (and the pinned
        witnesses, or the server's if none is). The head and the monitor start over on
        the new log, and the log-key-changed alerts are acknowledged. Never automatic."""
        answer = await self._source.head(0)
        served = _vkey(answer.log_key, "log key")
        if served != log_key:
            shown = NoteKey.from_vkey(served)
            raise UsageError(f"the server names another log key ({shown.name}, fingerprint "
                             f"{shown.fingerprint()}); nothing was pinned")
        old = self.pins or self._record(_EXPECT, Pins)
        witnesses = old.witnesses if old is not None and old.witnesses else tuple(
            _vkey(w, "witness key") for w in answer.witnesses)
        pins = Pins(log_key=served, vrf_key=answer.vrf_key, witnesses=witnesses,
                    min_cosignatures=old.min_cosignatures if old is not None else 1,
                    max_age_ms=old.max_age_ms if old is not None
                    else KT_DEFAULT_MAX_CHECKPOINT_AGE_MS)
        verified = self._open_under(pins, answer.checkpoint)
        with self._store.transaction():
            self._store.put_kt(_PINS, pins.encode())
            self._keep(verified)  # another log: the old head proves nothing about it
            self._store.put_kt(_MONITOR, _Monitor(versions=0, version_root=b"").encode())
            for alert in self.alerts():
                if alert.kind == LOG_KEY_CHANGED:
                    self._store.acknowledge_kt_alert(alert.id)
        return pins

    def pin_witness(self, vkey: str) -> Pins:
        """Add one witness key to the pins (a key checked by :func:`parse_vkey`)."""
        pins = self.pins
        if pins is None:
            raise UsageError("no log is pinned on this device yet")
        if vkey in pins.witnesses:
            return pins
        new = Pins(log_key=pins.log_key, vrf_key=pins.vrf_key,
                   witnesses=(*pins.witnesses, vkey), min_cosignatures=pins.min_cosignatures,
                   max_age_ms=pins.max_age_ms)
        new.policy()  # two keys of one witness name are refused (UsageError)
        with self._store.transaction():
            self._store.put_kt(_PINS, new.encode())
        return new

    def _keep(self, verified: VerifiedCheckpoint) -> None:
        cp = verified.checkpoint
        self._store.put_kt(_HEAD, _Head(size=cp.size, root=cp.root,
                                        note=verified.note.encode()).encode())

    def _keep_head(self, head: TrustedHead) -> None:
        current = self.head
        if current is None or head.size >= current.size:
            self._store.put_kt(_HEAD, _Head(size=head.size, root=head.root,
                                            note=head.note).encode())

    def _policy(self) -> KTPolicy:
        pins = self.pins
        if pins is None:
            raise KTError("no transparency log is pinned on this device, so its lookups "
                          "cannot be verified (see sottovoce kt status)")
        if self.witness_policy is WitnessPolicy.MISSING:
            raise NoWitnessPinned(
                f"{len(pins.witnesses)} witness(es) pinned and {pins.min_cosignatures} "
                "cosignature(s) required, so no checkpoint of the log can be verified: "
                "pin an independent witness (sottovoce kt pin-witness VKEY), or opt out "
                "knowingly (sottovoce kt require 0)")
        return pins.policy()

    def _inconsistent(self, exc: KTError) -> KTAlertRaised:
        return self._alert(LOG_INCONSISTENT, f"{exc} (the server rolled back or forked the "
                                             "log, or shows different users different logs)")

    # --- the head ------------------------------------------------------------------

    async def refresh(self) -> TrustedHead:
        """Fetch the newest head and check it extends the kept one."""
        policy = self._policy()
        last = self.head
        answer = await self._source.head(last.size if last else 0)
        self._check_log_key(answer)
        verified = policy.open(answer.checkpoint, self._clock())
        try:
            check_extension(last, verified, list(answer.consistency))
        except (LogShrank, LogForked) as exc:
            raise self._inconsistent(exc) from None
        cp = verified.checkpoint
        head = TrustedHead(size=cp.size, root=cp.root, note=verified.note.encode())
        with self._store.transaction():
            self._keep_head(head)  # never backwards, whatever ran meanwhile
        return head

    def _check_log_key(self, answer: HeadAnswer) -> None:
        pins = self.pins
        if pins is not None and answer.log_key.strip() != pins.log_key:
            raise self._alert(LOG_KEY_CHANGED, "the server now names another log key than "
                                               "the one pinned on this device")

    # --- lookups -------------------------------------------------------------------

    async def verify_contact(self, contact: Contact) -> AccountState:
        """Verify ``contact``'s keys against the log: KeyNotInLog unless the verified
        account state holds its account key and every device it lists. A change the
        log does not show yet is waited for (KT_CATCH_UP_PAUSES_S) before refusing."""
        for pause in (*KT_CATCH_UP_PAUSES_S, None):
            try:
                return await self._verify_contact(contact)
            except (KeyNotInLog, ServerError) as exc:
                late = isinstance(exc, KeyNotInLog) or exc.code == "kt_unavailable"
                if pause is None or not late:
                    raise
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _verify_contact(self, contact: Contact) -> AccountState:
        policy = self._policy()
        last = self.head
        response = await self._source.lookup(contact.username, last.size if last else 0)
        try:
            result = verify_lookup(policy, last, contact.username, response,
                                   now_ms=self._clock())
        except (LogShrank, LogForked) as exc:
            raise self._inconsistent(exc) from None
        with self._store.transaction():
            self._keep_head(result.head)  # verified, whatever the keys turn out to be
        state = result.state
        if state is None or state.deleted:
            raise KeyNotInLog(contact.username, "the log holds no such account")
        if state.account_key != contact.account_key:
            raise KeyNotInLog(contact.username, "the log holds another account key")
        logged = {(d.device_id, d.signing_key) for d in state.devices}
        for device_id, cert in contact.certificates.items():
            if (device_id, cert.keys.signing_key) not in logged:
                raise KeyNotInLog(contact.username, f"device {device_id!r} is not in the log")
        return state

    # --- monitoring our own account -------------------------------------------------

    def _own_keys(self, page: HistoryPage | None = None) -> tuple[OwnKeys, _Own]:
        kept = self._record(_OWN, _Own) or _Own(devices=(), account_keys=(), recovery_keys=())
        devices = set(kept.devices)
        account_keys = set(kept.account_keys)
        contact = self._own_contact()
        if contact is not None:
            devices |= {(d, c.keys.signing_key) for d, c in contact.certificates.items()}
            account_keys.add(contact.account_key)
        recovery = set(kept.recovery_keys) or _first_recovery_key(page)
        record = _Own(devices=tuple(sorted(devices)), account_keys=tuple(sorted(account_keys)),
                      recovery_keys=tuple(sorted(recovery)))
        own = OwnKeys(devices=frozenset(devices), account_keys=frozenset(account_keys),
                      recovery_keys=frozenset(recovery))
        return own, record

    async def poll_own(self, refresh_own: Callable[[], Awaitable[None]] | None = None) -> int:
        """Check every version of our own account since the last poll, a page at a time
        (``sottovoce.kt.history`` with ``start``); returns how many were new. A version
        we did not make raises (and stores) an alert; before that, ``refresh_own`` (a
        fresh directory lookup of our own account) is awaited once, since another of our
        devices may have certified a device this one has not seen."""
        policy = self._policy()
        previous, checked = self.monitor_state, None
        if previous.versions and not previous.border:
            # Kept before pages: checked again from the first version, with no alert
            # for the versions it had checked, and kept only once past them.
            previous, checked = MonitorState(), previous
        new = 0
        while True:
            last = self.head
            page = await self._source.history_page(last.size if last else 0, previous.versions)
            result, record = await self._check_page(policy, last, previous, page, checked,
                                                    refresh_own)
            if checked is None or result.state.versions >= checked.versions:
                self._kept_poll(result, record)
                checked = None
            new += len(result.new_versions)
            previous = result.state
            if not result.more:
                return new

    async def _check_page(
        self, policy: KTPolicy, last: TrustedHead | None, previous: MonitorState,
        page: HistoryPage, checked: MonitorState | None,
        refresh_own: Callable[[], Awaitable[None]] | None,
    ) -> tuple[MonitorResult, _Own]:
        for attempt in range(2):
            own, record = self._own_keys(page)
            try:
                return monitor_page(policy, last, self._username, own, previous, page,
                                    now_ms=self._clock(), checked=checked), record
            except (LogShrank, LogForked) as exc:
                raise self._inconsistent(exc) from None
            except MonitorAlert as exc:
                if attempt or refresh_own is None:
                    alert = self._alert(OWN_ACCOUNT, str(exc))
                    self._move_past(policy, last, previous, page)
                    raise alert from None
                await refresh_own()
        raise AssertionError("unreachable")  # pragma: no cover

    def _kept_poll(self, result: MonitorResult, record: _Own | None) -> None:
        with self._store.transaction():
            self._keep_head(result.head)
            self._store.put_kt(_MONITOR, _Monitor(versions=result.state.versions,
                                                  version_root=result.state.version_root,
                                                  border=result.state.border).encode())
            if record is not None:
                self._store.put_kt(_OWN, record.encode())

    def _move_past(self, policy: KTPolicy, last: TrustedHead | None, previous: MonitorState,
                   page: HistoryPage) -> None:
        """After an own-account alert is stored: the monitor moves past the versions it
        flagged (the alert stays), so the next poll checks only newer ones. A history
        that was rewritten or shrank is not moved past: it keeps failing."""
        states = []
        for raw in page.states:
            try:
                states.append(AccountState.decode(raw))
            except DecodeError:
                return
        everything = OwnKeys(
            devices=frozenset((d.device_id, d.signing_key) for st in states for d in st.devices),
            account_keys=frozenset(st.account_key for st in states),
            recovery_keys=frozenset(st.recovery_key for st in states),
            deleted=any(st.deleted for st in states),
        )
        try:
            result = monitor_page(policy, last, self._username, everything, previous, page,
                                  now_ms=self._clock())
        except KTError:
            return
        self._kept_poll(result, None)

    def remember_own_device(self, device_id: str, signing_key: bytes) -> None:
        """A device this one certified (Client.add_device): the monitor accepts it."""
        _, record = self._own_keys()
        devices = tuple(sorted({*record.devices, (device_id, signing_key)}))
        with self._store.transaction():
            self._store.put_kt(_OWN, _Own(devices=devices, account_keys=record.account_keys,
                                          recovery_keys=record.recovery_keys).encode())

    # --- comparing views with peers ---------------------------------------------------

    async def compare(self, peer: str, size: int, root: bytes) -> None:
        """A peer's message carried its head (``size``, ``root``): raise (and store) the
        split-view alert unless the log the server shows us now extends it. Each head
        is compared once, unless the comparison failed (it is tried again later)."""
        key = (peer, size, root)
        if self.pins is None or size <= 0 or len(root) != HASH_SIZE or key in self._compared:
            return
        self._compared.add(key)
        try:
            await self._compare(peer, size, root)
        except BaseException:
            self._compared.discard(key)
            raise

    async def _compare(self, peer: str, size: int, root: bytes) -> None:
        for _ in range(2):  # the log may grow between the two requests: try once more
            latest = await self.refresh()
            if size >= latest.size:
                if size > latest.size or root != latest.root:
                    raise self._split(peer)
                return
            answer = await self._source.head(size)
            cp = self._policy().open(answer.checkpoint, self._clock()).checkpoint
            if (cp.size, cp.root) != (latest.size, latest.root):
                continue
            try:
                verify_consistency(size, cp.size, root, cp.root, list(answer.consistency))
            except KTError:
                raise self._split(peer) from None
            return
        raise KTError("the log grew while this device compared views; it will compare again")

    def _split(self, peer: str) -> KTAlertRaised:
        return self._alert(SPLIT_VIEW, f"'{peer}' was shown a log that is not consistent "
                                       "with this device's: the server shows different "
                                       "users different directories")


def _same(raw: bytes, kind: str, message: str) -> bool:
    try:
        a = Alert.decode(raw)
    except (DecodeError, UnicodeDecodeError):
        return False
    return a.kind == kind and a.message == message


def _vkey(text: str, what: str) -> str:
    try:
        return NoteKey.from_vkey(text.strip()).vkey()
    except MalformedProof:
        raise MalformedProof(f"the server's {what} is not a verifier key") from None


def _first_recovery_key(page: HistoryPage | None) -> set[bytes]:
    """Devices make no recovery key yet, so the one the registration version shows is
    taken as ours (checked with the rest of the history before it is kept); the
    monitor then flags any other one in a later version."""
    if page is None or page.start != 0 or not page.states:
        return set()
    try:
        return {AccountState.decode(page.states[0]).recovery_key}
    except DecodeError:
        return set()
