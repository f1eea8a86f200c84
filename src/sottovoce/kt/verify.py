"""The client side of key transparency: verify a lookup, and monitor one's own account.

    lookup(bob) ──► LookupResponse
      1. checkpoint: the pinned log key signed it; >= K known witnesses cosigned it;
         its newest cosignature is recent enough                     (kt/checkpoint.py)
      2. consistency with the last checkpoint this client kept       (RFC 9162 §2.1.4.2)
      3. the latest log leaf is in the checkpoint's tree             (RFC 9162 §2.1.3.2)
      4. the VRF proof turns "bob" into the label                    (RFC 9381 §5.3)
      5. the map proof: under the leaf's map root, the label holds (n versions, root)
      6. the version tree: version n-1 (the latest) is its last leaf, and the state
         plus opening reproduce that version's commitment
      ──► LookupResult(state of version n-1, the new checkpoint to keep)

Every check must pass before anything is returned: the caller stores the new
checkpoint only from a result (check, then commit). Each failure is a typed
:class:`~sottovoce.kt.errors.KTError`.

The monitor (:func:`monitor_own_account`) fetches every version of its own
account, checks them against the map as above, checks that the versions it saw
at its last poll are unchanged, and raises :class:`MonitorAlert` for any
version holding a device or key its owner did not add -- including one that was
added and removed again between two polls, since every version stays.

A long history does not fit one answer, so the monitor also reads it a page at a
time (:func:`monitor_page`): it keeps the compact range (:class:`LogWriter`
border) of the version tree it checked, appends a page's versions to it, and
checks two RFC 9162 consistency proofs in the version tree against the root the
map commits to: from the versions checked before (else they were rewritten: an
alert) and from the page's end (else the page is not the account's). Each page
is thus fully verified on its own, and a poll downloads only new versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from sottovoce.codec.tls import Reader, WireStruct, Writer, varint_bytes
from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt import vrf
from sottovoce.kt.checkpoint import (
    NoteKey,
    SignedNote,
    VerifiedCheckpoint,
    known,
    open_checkpoint,
)
from sottovoce.kt.errors import (
    LogForked,
    LogShrank,
    MalformedProof,
    MonitorAlert,
    ProofMismatch,
)
from sottovoce.kt.map import (
    AccountState,
    LogLeaf,
    MapProof,
    account_value,
    commit,
    map_key,
    verify_map_proof,
)
from sottovoce.kt.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    LogWriter,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from sottovoce.limits import KT_DEFAULT_MAX_CHECKPOINT_AGE_MS, KT_MAX_VERSIONS

_MAX_PROOF_HASHES = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class KTPolicy:
    """What a client pins and requires: the log's note key and VRF key, the witness
    keys it knows, how many of them must cosign, and how old a checkpoint may be
    (``None``: not checked, for a policy that requires no witness, since only a
    cosignature says when a checkpoint was seen)."""

    log_key: NoteKey
    vrf_key: bytes
    witnesses: tuple[NoteKey, ...] = ()
    min_cosignatures: int = 1
    max_age_ms: int | None = KT_DEFAULT_MAX_CHECKPOINT_AGE_MS

    def __post_init__(self) -> None:
        known(self.witnesses)  # one key per witness name: K of N counts names
        if not 0 <= self.min_cosignatures <= len(self.witnesses):
            raise UsageError("the policy requires more cosignatures than it knows witnesses")

    def open(self, note: bytes | SignedNote, now_ms: int) -> VerifiedCheckpoint:
        return open_checkpoint(
            note,
            log_key=self.log_key,
            witnesses=self.witnesses,
            min_cosignatures=self.min_cosignatures,
            now_ms=now_ms,
            max_age_ms=self.max_age_ms,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TrustedHead:
    """The last checkpoint a client verified (size and root), and its note as received."""

    size: int
    root: bytes
    note: bytes


def check_extension(last: TrustedHead | None, new: VerifiedCheckpoint, proof: list[bytes]) -> None:
    """Raise unless ``new`` extends ``last``: :class:`LogShrank` if it is smaller,
    :class:`LogForked` if the consistency proof fails."""
    cp = new.checkpoint
    if last is None:
        return
    if cp.size < last.size:
        raise LogShrank(f"the log shrank from {last.size} to {cp.size} leaves")
    try:
        if last.size == 0:
            # Every tree extends the empty one, and RFC 9162 has no proof for it: a
            # device that first saw the log empty (a new log, or a server node that had
            # not seen the newest checkpoint yet) takes any later one with no proof.
            if proof or last.root != EMPTY_ROOT or (cp.size == 0 and cp.root != EMPTY_ROOT):
                raise ProofMismatch("the empty tree has one root and no proof")
        elif cp.size == last.size:
            if proof or cp.root != last.root:
                raise ProofMismatch("same size, different root")
        else:
            verify_consistency(last.size, cp.size, last.root, cp.root, proof)
    except (ProofMismatch, MalformedProof):
        raise LogForked("the new checkpoint is not consistent with the last one") from None


def _write_hashes(w: Writer, hashes: tuple[bytes, ...]) -> None:
    w.opaque_v(b"".join(hashes))  # a vector of raw 32-byte hashes: its bytes, length first


def _read_hashes(r: Reader) -> tuple[bytes, ...]:
    out = tuple(r.vector_v(lambda r2: r2.raw(HASH_SIZE)))
    if len(out) > _MAX_PROOF_HASHES:
        raise DecodeError("proof has too many hashes")
    return out


def log_part_bytes(checkpoint: bytes, consistency: tuple[bytes, ...], leaf: bytes,
                   leaf_proof: tuple[bytes, ...]) -> bytes:
    """How an :class:`EntryProof` begins: the log's part, the same in every answer at one
    checkpoint to clients at one size (a server encodes it once)."""
    w = Writer()
    w.opaque_v(checkpoint)
    _write_hashes(w, consistency)
    w.opaque_v(leaf)
    _write_hashes(w, leaf_proof)
    return w.getvalue()


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryProof(WireStruct):
    """Everything that ties one account's map entry to a checkpoint: the latest log
    leaf and its inclusion proof, the consistency proof from the client's last size,
    the VRF proof of the label, and the map proof of the label's entry."""

    checkpoint: bytes
    consistency: tuple[bytes, ...]
    leaf: bytes
    leaf_proof: tuple[bytes, ...]
    vrf_proof: bytes
    map_proof: MapProof
    versions: int
    version_root: bytes

    def write(self, w: Writer) -> None:
        w.raw(log_part_bytes(self.checkpoint, self.consistency, self.leaf, self.leaf_proof))
        self.write_rest(w)

    def write_rest(self, w: Writer) -> None:
        """What follows the log's part (:func:`log_part_bytes`)."""
        w.opaque8(self.vrf_proof)
        self.map_proof.write(w)
        w.u32(self.versions)
        w.opaque8(self.version_root)

    @classmethod
    def read(cls, r: Reader) -> EntryProof:
        return cls(
            checkpoint=r.opaque_v(),
            consistency=_read_hashes(r),
            leaf=r.opaque_v(),
            leaf_proof=_read_hashes(r),
            vrf_proof=r.opaque8(),
            map_proof=MapProof.read(r),
            versions=r.u32(),
            version_root=r.opaque8(),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResponse(WireStruct):
    """A lookup's answer: the entry proof, and for a present account the latest
    version's inclusion proof in its version tree, its state and opening."""

    entry: EntryProof
    version_proof: tuple[bytes, ...] = ()
    state: bytes = b""
    opening: bytes = b""

    def write(self, w: Writer) -> None:
        self.entry.write(w)
        self._write_rest(w)

    def _write_rest(self, w: Writer) -> None:
        _write_hashes(w, self.version_proof)
        w.opaque_v(self.state)
        w.opaque8(self.opening)

    def encode_after(self, log_part: bytes) -> bytes:
        """:meth:`encode`, given the entry's :func:`log_part_bytes` (encoded once per
        checkpoint and client size): the rest made in one join, not a :class:`Writer`
        call per field (a server encodes one per lookup)."""
        e = self.entry
        proof = b"".join(self.version_proof)
        try:
            return b"".join((
                log_part,
                len(e.vrf_proof).to_bytes(1, "big"), e.vrf_proof,
                e.map_proof.encoded(),
                e.versions.to_bytes(4, "big"),
                len(e.version_root).to_bytes(1, "big"), e.version_root,
                varint_bytes(len(proof)), proof,
                varint_bytes(len(self.state)), self.state,
                len(self.opening).to_bytes(1, "big"), self.opening,
            ))
        except OverflowError:
            raise UsageError("a field does not fit its length") from None

    @classmethod
    def read(cls, r: Reader) -> LookupResponse:
        return cls(entry=EntryProof.read(r), version_proof=_read_hashes(r), state=r.opaque_v(),
                   opening=r.opaque8())


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedEntry:
    head: TrustedHead
    leaf: LogLeaf
    key: bytes
    versions: int
    version_root: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class LookupResult:
    """A verified lookup: the account's latest state (None if there is no account),
    its version number, and the checkpoint the client should now keep."""

    head: TrustedHead
    username: str
    version: int | None
    state: AccountState | None


def _verify_entry(
    policy: KTPolicy, last: TrustedHead | None, username: str, entry: EntryProof, now_ms: int
) -> VerifiedEntry:
    verified = policy.open(entry.checkpoint, now_ms)
    check_extension(last, verified, list(entry.consistency))
    cp = verified.checkpoint
    if cp.size == 0:
        raise MalformedProof("the log is empty")
    try:
        leaf = LogLeaf.decode(entry.leaf)
    except DecodeError:
        raise MalformedProof("the log leaf does not decode") from None
    if leaf.epoch != cp.size - 1:
        raise MalformedProof("the leaf is not the checkpoint's latest")
    verify_inclusion(cp.size - 1, cp.size, leaf.hash(), entry.leaf_proof, cp.root)
    label = vrf.verify_cached(policy.vrf_key, username.encode("utf-8"), entry.vrf_proof)
    key = map_key(label)
    value = verify_map_proof(leaf.map_root, key, entry.map_proof)
    if value is None:
        if entry.versions != 0:
            raise ProofMismatch("the map proof shows no account, the response claims one")
    elif not (
        0 < entry.versions <= KT_MAX_VERSIONS
        and len(entry.version_root) == HASH_SIZE
        and value == account_value(entry.versions, entry.version_root)
    ):
        raise ProofMismatch("the account's version count or root does not match the map")
    head = TrustedHead(size=cp.size, root=cp.root, note=verified.note.encode())
    return VerifiedEntry(head=head, leaf=leaf, key=key, versions=entry.versions,
                         version_root=entry.version_root)


def _state(data: bytes) -> AccountState:
    try:
        return AccountState.decode(data)
    except DecodeError:
        raise MalformedProof("an account state does not decode") from None


def verify_lookup(
    policy: KTPolicy,
    last: TrustedHead | None,
    username: str,
    response: LookupResponse,
    *,
    now_ms: int,
) -> LookupResult:
    """Steps 1-6 above; raises a :class:`~sottovoce.kt.errors.KTError` on any failure."""
    e = _verify_entry(policy, last, username, response.entry, now_ms)
    if e.versions == 0:
        return LookupResult(head=e.head, username=username, version=None, state=None)
    version = e.versions - 1
    if len(response.opening) != 32:
        raise MalformedProof("the commitment opening has the wrong length")
    commitment = commit(e.key, version, response.state, response.opening)
    verify_inclusion(version, e.versions, leaf_hash(commitment), response.version_proof,
                     e.version_root)
    return LookupResult(head=e.head, username=username, version=version,
                        state=_state(response.state))


# --- monitoring one's own account ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryResponse(WireStruct):
    """Every version of one account (the owner's own), with the entry proof."""

    entry: EntryProof
    states: tuple[bytes, ...]
    openings: tuple[bytes, ...]

    def write(self, w: Writer) -> None:
        self.entry.write(w)
        w.vector_v(self.states, lambda w2, s: w2.opaque_v(s))
        w.vector_v(self.openings, lambda w2, o: w2.opaque8(o))

    @classmethod
    def read(cls, r: Reader) -> HistoryResponse:
        return cls(entry=EntryProof.read(r), states=tuple(r.vector_v(lambda r2: r2.opaque_v())),
                   openings=tuple(r.vector_v(lambda r2: r2.opaque8())))


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnKeys:
    """What the owner's devices know they did: every device they ever added (revoked
    ones included), every account key and recovery key they made, and whether they
    deleted the account."""

    devices: frozenset[tuple[str, bytes]]
    account_keys: frozenset[bytes]
    recovery_keys: frozenset[bytes]
    deleted: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorState:
    """What the monitor keeps between polls: how many versions it has checked, the
    version tree's root at that count, and (for :func:`monitor_page`) its compact range;
    ``border`` is empty for a state kept before pages, which is checked again from the
    first version."""

    versions: int = 0
    version_root: bytes = b""
    border: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorResult:
    head: TrustedHead
    state: MonitorState
    new_versions: tuple[AccountState, ...]
    #: More versions than this page held (:func:`monitor_page`): ask for the next page.
    more: bool = False


def _unexpected(state: AccountState, own: OwnKeys) -> list[str]:
    out = [
        f"device {d.device_id!r}"
        for d in state.devices
        if (d.device_id, d.signing_key) not in own.devices
    ]
    if state.account_key not in own.account_keys:
        out.append("an account key")
    if state.recovery_key not in own.recovery_keys:
        out.append("a recovery key")
    if state.deleted and not own.deleted:
        out.append("an account deletion")
    return out


def monitor_own_account(
    policy: KTPolicy,
    last: TrustedHead | None,
    username: str,
    own: OwnKeys,
    previous: MonitorState,
    response: HistoryResponse,
    *,
    now_ms: int,
) -> MonitorResult:
    """Check every version of one's own account; raise :class:`MonitorAlert` naming the
    first version that holds something its owner did not add, or if a version seen
    before was changed or the history shrank."""
    e = _verify_entry(policy, last, username, response.entry, now_ms)
    if len(response.states) != e.versions or len(response.openings) != e.versions:
        raise MalformedProof("the history does not list every version")
    if e.versions < previous.versions:
        raise MonitorAlert("versions of this account disappeared since the last poll")
    writer = LogWriter()
    for i, (raw, opening) in enumerate(zip(response.states, response.openings, strict=True)):
        if i == previous.versions and previous.versions and writer.root() != previous.version_root:
            raise MonitorAlert("earlier versions of this account were rewritten")
        if len(opening) != 32:
            raise MalformedProof("a commitment opening has the wrong length")
        writer.append(leaf_hash(commit(e.key, i, raw, opening)))
    if e.versions == previous.versions and previous.versions and (
        writer.root() != previous.version_root
    ):
        raise MonitorAlert("earlier versions of this account were rewritten")
    if e.versions and writer.root() != e.version_root:
        raise ProofMismatch("the listed versions do not make the version root")
    new_states = tuple(_state(s) for s in response.states[previous.versions :])
    for offset, state in enumerate(new_states):
        unexpected = _unexpected(state, own)
        if unexpected:
            version = previous.versions + offset
            raise MonitorAlert(
                f"version {version} of your account shows {', '.join(unexpected)} "
                "that none of your devices added"
            )
    return MonitorResult(
        head=e.head,
        state=MonitorState(versions=e.versions, version_root=writer.root() if e.versions else b"",
                           border=writer.border),
        new_versions=new_states,
    )



# --- the history a page at a time ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPage(WireStruct):
    """Versions [start, start + len(states)) of the owner's account, with the entry
    proof, the version tree's consistency proof from ``start`` (the versions the
    device checked before) and the one from the page's end, both to the entry's count
    (each empty where RFC 9162 has none: from 0, or to the same size)."""

    entry: EntryProof
    start: int
    states: tuple[bytes, ...]
    openings: tuple[bytes, ...]
    checked_proof: tuple[bytes, ...] = ()
    rest_proof: tuple[bytes, ...] = ()

    def write(self, w: Writer) -> None:
        self.entry.write(w)
        w.u32(self.start)
        w.vector_v(self.states, lambda w2, s: w2.opaque_v(s))
        w.vector_v(self.openings, lambda w2, o: w2.opaque8(o))
        _write_hashes(w, self.checked_proof)
        _write_hashes(w, self.rest_proof)

    @classmethod
    def read(cls, r: Reader) -> HistoryPage:
        return cls(entry=EntryProof.read(r), start=r.u32(),
                   states=tuple(r.vector_v(lambda r2: r2.opaque_v())),
                   openings=tuple(r.vector_v(lambda r2: r2.opaque8())),
                   checked_proof=_read_hashes(r), rest_proof=_read_hashes(r))


def _consistent(first: int, second: int, first_root: bytes, second_root: bytes,
                proof: tuple[bytes, ...]) -> bool:
    if first == 0 or first == second:
        return not proof and (first == 0 or first_root == second_root)
    try:
        verify_consistency(first, second, first_root, second_root, list(proof))
    except (ProofMismatch, MalformedProof):
        return False
    return True


def monitor_page(
    policy: KTPolicy,
    last: TrustedHead | None,
    username: str,
    own: OwnKeys,
    previous: MonitorState,
    page: HistoryPage,
    *,
    now_ms: int,
    checked: MonitorState | None = None,
) -> MonitorResult:
    """Check one page of one's own account's versions, from ``previous`` (the versions
    checked so far and their compact range) on; the result's state is where the next
    page starts (``more``: there is one). ``checked``: a state kept before pages (no
    compact range), whose versions are checked again from the first one: the root at
    its count must be the one kept, and its versions raise no alert again."""
    e = _verify_entry(policy, last, username, page.entry, now_ms)
    n, start = e.versions, previous.versions
    if page.start != start:
        raise MalformedProof("the history page does not start at the version asked for")
    if n < start:
        raise MonitorAlert("versions of this account disappeared since the last poll")
    if len(page.states) != len(page.openings) or start + len(page.states) > n or (
        start < n and not page.states
    ):
        raise MalformedProof("the history page lists the wrong versions")
    try:
        writer = LogWriter(start, previous.border)
    except UsageError:
        raise MalformedProof("the kept compact range does not fit its size") from None
    if start and not _consistent(start, n, writer.root(), e.version_root, page.checked_proof):
        raise MonitorAlert("earlier versions of this account were rewritten")
    for i, (raw, opening) in enumerate(zip(page.states, page.openings, strict=True)):
        if checked is not None and writer.size == checked.versions and checked.versions and (
            writer.root() != checked.version_root
        ):
            raise MonitorAlert("earlier versions of this account were rewritten")
        if len(opening) != 32:
            raise MalformedProof("a commitment opening has the wrong length")
        writer.append(leaf_hash(commit(e.key, start + i, raw, opening)))
    end = writer.size
    root = writer.root() if end else b""
    if end and not _consistent(end, n, root, e.version_root, page.rest_proof):
        raise ProofMismatch("the listed versions are not the account's")
    if checked is not None and end == checked.versions and end and root != checked.version_root:
        raise MonitorAlert("earlier versions of this account were rewritten")
    new_states = tuple(_state(s) for s in page.states)
    seen = checked.versions if checked is not None else 0
    for offset, state in enumerate(new_states):
        unexpected = _unexpected(state, own)
        if unexpected and start + offset >= seen:
            raise MonitorAlert(
                f"version {start + offset} of your account shows {', '.join(unexpected)} "
                "that none of your devices added"
            )
    return MonitorResult(
        head=e.head,
        state=MonitorState(versions=end, version_root=root, border=writer.border),
        new_versions=new_states[max(0, seen - start):],
        more=end < n,
    )
