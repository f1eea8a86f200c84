"""The key-transparency map: every version of every account, and the log leaf that
commits to it (docs/architecture.md §Planned: kt/).

    map root ── sparse Merkle tree over map keys (256 bits; key = VRF label[:32])
                 │
                 └─ account value = (number of versions n, version root)
                                     │
                                     └─ RFC 9162 tree of n version leaves, one per
                                        version 0..n-1, each a commitment to that
                                        version's account state

This is the map (label, version) -> commitment, laid out in two levels so one
proof says "version v is the latest": the account value's n = v + 1 shows that
v is present and v + 1 absent, and the version tree is append-only, so every
version ever published stays, and a monitor walks them all. A key with no
account has a non-membership proof (the search ends in an empty subtree or at
another key's leaf).

Sparse tree hashing (a compressed sparse Merkle tree: a subtree holding one
entry is that entry's leaf, whatever its depth):

    empty subtree   = 32 zero bytes
    one entry       = SHA-256(0x10 || key || value hash)
    two or more     = SHA-256(0x11 || left || right)

The prefixes differ from RFC 9162's 0x00/0x01 so no map hash can pass for a
log hash. For one root, each key has exactly one answer (present with one
value, or absent): the leaf and node prefixes cannot collide, and zero bytes
are no hash output.

Commitments hide the state: commitment = HMAC-SHA-256(opening, label ||
version || state), with a fresh 32-byte opening per version that the server
gives only to those who look the account up.

Storage: nodes live behind :class:`MapStore` ((depth, prefix) -> record), one
record per non-empty node, about two per account; an update reads and writes
O(depth) records (about 21 at a million accounts), never rebuilds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from sottovoce.codec.tls import Reader, WireStruct, Writer
from sottovoce.crypto.rng import Random
from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt.errors import MalformedProof, ProofMismatch
from sottovoce.kt.merkle import HASH_SIZE, LogWriter, leaf_hash, root_hash, root_nodes
from sottovoce.limits import KT_MAX_DEVICES, KT_MAX_LOG_SIZE, KT_MAX_VERSIONS

KEY_BITS = 256
EMPTY = bytes(32)
_LEAF = b"\x10"
_NODE = b"\x11"
_VALUE_DOMAIN = b"sottovoce kt account value v1"
_COMMIT_DOMAIN = b"sottovoce kt commitment v1"
OPENING_SIZE = 32


def map_key(label: bytes) -> bytes:
    """The map key of a VRF label (RFC 9381 beta, 64 bytes): its first 32 bytes, which
    are as uniform as the whole."""
    if len(label) != 64:
        raise UsageError("a label is a 64-byte ECVRF output")
    return label[:32]


def entry_hash(key: bytes, value: bytes) -> bytes:
    return hashlib.sha256(_LEAF + key + value).digest()


def inner_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def account_value(versions: int, version_root: bytes) -> bytes:
    """The value hash a map entry holds: how many versions, and their tree's root."""
    return hashlib.sha256(
        _VALUE_DOMAIN + versions.to_bytes(8, "big") + version_root
    ).digest()


def commit(key: bytes, version: int, state: bytes, opening: bytes) -> bytes:
    """HMAC-SHA-256 commitment to one version's encoded account state."""
    if len(opening) != OPENING_SIZE:
        raise UsageError("a commitment opening is 32 bytes")
    msg = _COMMIT_DOMAIN + key + version.to_bytes(4, "big") + state
    return hmac.new(opening, msg, "sha256").digest()


def _bit(key: int, depth: int) -> int:
    return (key >> (KEY_BITS - 1 - depth)) & 1


def _prefix(key: int, depth: int) -> int:
    return key >> (KEY_BITS - depth)


# --- account state: what each version commits to -----------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEntry:
    device_id: str
    signing_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountState(WireStruct):
    """The directory state of one account at one version: its account key (AK), its
    recovery key (RK), its devices, and whether it is deleted. The monitor compares
    successive versions of its own account against what its owner did."""

    account_key: bytes
    recovery_key: bytes
    devices: tuple[DeviceEntry, ...] = ()
    deleted: bool = False

    def write(self, w: Writer) -> None:
        w.opaque8(self.account_key)
        w.opaque8(self.recovery_key)
        w.vector_v(self.devices, _write_device)
        w.boolean(self.deleted)

    @classmethod
    def read(cls, r: Reader) -> AccountState:
        ak, rk = r.opaque8(), r.opaque8()
        devices = tuple(r.vector_v(_read_device))
        if len(ak) != 32 or len(rk) != 32 or len(devices) > KT_MAX_DEVICES:
            raise DecodeError("account state has a bad key or too many devices")
        if len({d.device_id for d in devices}) != len(devices):
            raise DecodeError("account state lists a device twice")
        return cls(account_key=ak, recovery_key=rk, devices=devices, deleted=r.boolean())


def _write_device(w: Writer, d: DeviceEntry) -> None:
    w.opaque8(d.device_id.encode("ascii"))
    w.opaque8(d.signing_key)


def _read_device(r: Reader) -> DeviceEntry:
    raw_id, key = r.opaque8(), r.opaque8()
    if not raw_id or len(key) != 32:
        raise DecodeError("device entry is malformed")
    return DeviceEntry(device_id=raw_id.decode("ascii"), signing_key=key)


# --- the log leaf ----------------------------------------------------------------------------


class ChangeKind(IntEnum):
    """What a directory change did (one log leaf each)."""

    REGISTRATION = 1
    DEVICE_ADDED = 2
    DEVICE_REVOKED = 3
    SUCCESSION = 4
    RECOVERY = 5
    DELETION = 6


LEAF_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class LogLeaf(WireStruct):
    """One log leaf: a directory change and the map root after it.

        struct {
            uint8  leaf_version = 1;
            uint64 epoch;            // the leaf's index in the log
            uint64 timestamp_ms;
            uint8  kind;             // ChangeKind
            opaque map_key[32];      // which (pseudonymous) account changed
            uint32 account_version;  // the version this change appended
            opaque commitment[32];   // that version's commitment
            opaque map_root[32];     // the map root after the change
        } LogLeaf;

    An auditor replays the leaves: each must append exactly the next version of its
    account, and the map root it computes must equal ``map_root``.
    """

    epoch: int
    timestamp_ms: int
    kind: ChangeKind
    map_key: bytes
    account_version: int
    commitment: bytes
    map_root: bytes

    def write(self, w: Writer) -> None:
        w.u8(LEAF_VERSION)
        w.u64(self.epoch)
        w.u64(self.timestamp_ms)
        w.u8(self.kind)
        w.raw(self.map_key)
        w.u32(self.account_version)
        w.raw(self.commitment)
        w.raw(self.map_root)

    @classmethod
    def read(cls, r: Reader) -> LogLeaf:
        if r.u8() != LEAF_VERSION:
            raise DecodeError("unsupported log leaf version")
        epoch, ts, kind = r.u64(), r.u64(), r.u8()
        try:
            change = ChangeKind(kind)
        except ValueError:
            raise DecodeError("unknown change kind") from None
        return cls(
            epoch=epoch,
            timestamp_ms=ts,
            kind=change,
            map_key=r.raw(32),
            account_version=r.u32(),
            commitment=r.raw(32),
            map_root=r.raw(32),
        )

    def hash(self) -> bytes:
        """The RFC 9162 leaf hash of the encoded leaf."""
        return leaf_hash(self.encode())


# --- the sparse tree --------------------------------------------------------------------------

#: (depth, prefix of the key's first ``depth`` bits)
NodeId = tuple[int, int]
#: A record: b"\x10" + key + value for a one-entry subtree, b"\x11" + hash otherwise.
MapStore = MutableMapping[NodeId, bytes]


def _record_hash(record: bytes | None) -> bytes:
    if record is None:
        return EMPTY
    if record[:1] == _LEAF:
        return entry_hash(record[1:33], record[33:65])
    return record[1:]


@dataclass(frozen=True, slots=True, kw_only=True)
class MapProof(WireStruct):
    """The path to where a key's search ends, siblings from the root down (empty
    siblings left out; ``present`` marks which depths have one)."""

    depth: int
    terminal_key: bytes | None  # the entry found at the end, None if the subtree is empty
    terminal_value: bytes | None
    present: bytes  # bitmap, one bit per depth < depth, MSB first
    siblings: tuple[bytes, ...]

    def write(self, w: Writer) -> None:
        w.raw(self.encoded())

    def encoded(self) -> bytes:
        """What :meth:`write` writes, made in one join (a server encodes one per lookup)."""
        try:
            depth = self.depth.to_bytes(2, "big")
        except OverflowError:
            raise UsageError("value does not fit in uint16") from None
        tkey, tval = self.terminal_key, self.terminal_value
        if tkey is None or tval is None:
            return b"".join((depth, b"\x00", self.present, *self.siblings))
        return b"".join((depth, b"\x01", tkey, tval, self.present, *self.siblings))

    @classmethod
    def read(cls, r: Reader) -> MapProof:
        depth = r.u16()
        if depth > KEY_BITS:
            raise DecodeError("map proof is deeper than the key")
        kind = r.u8()
        if kind > 1:
            raise DecodeError("unknown map proof terminal")
        tkey, tval = (r.raw(32), r.raw(32)) if kind else (None, None)
        present = r.raw((depth + 7) // 8)
        count = sum(bin(b).count("1") for b in present)
        if depth % 8 and present[-1] & ((1 << (8 - depth % 8)) - 1):
            raise DecodeError("map proof bitmap has bits past its depth")
        siblings = tuple(r.raw(HASH_SIZE) for _ in range(count))
        return cls(depth=depth, terminal_key=tkey, terminal_value=tval, present=present,
                   siblings=siblings)


def verify_map_proof(root: bytes, key: bytes, proof: MapProof) -> bytes | None:
    """The value hash ``key`` holds under ``root``, or None if it is absent; raises
    :class:`ProofMismatch` if the proof does not lead to ``root``."""
    if len(key) != 32 or len(root) != HASH_SIZE:
        raise MalformedProof("map key or root has the wrong length")
    # A proof built in memory has not been through read(): check its shape here too.
    if not 0 <= proof.depth <= KEY_BITS or len(proof.present) != (proof.depth + 7) // 8:
        raise MalformedProof("map proof depth or bitmap is out of range")
    if any(len(t) != 32 for t in (proof.terminal_key, proof.terminal_value) if t is not None):
        raise MalformedProof("map proof terminal has the wrong length")
    k = int.from_bytes(key, "big")
    if proof.terminal_key is None or proof.terminal_value is None:
        if proof.terminal_key is not None or proof.terminal_value is not None:
            raise MalformedProof("map proof terminal is half an entry")
        h = EMPTY
        found = None
    else:
        tk = int.from_bytes(proof.terminal_key, "big")
        # The entry found must lie in the subtree the search reached.
        if _prefix(tk, proof.depth) != _prefix(k, proof.depth):
            raise MalformedProof("map proof ends at an entry outside the key's subtree")
        h = entry_hash(proof.terminal_key, proof.terminal_value)
        found = proof.terminal_value if proof.terminal_key == key else None
    siblings = list(proof.siblings)
    for depth in range(proof.depth - 1, -1, -1):
        has = proof.present[depth // 8] >> (7 - depth % 8) & 1
        sib = siblings.pop() if has else EMPTY
        h = inner_hash(sib, h) if _bit(k, depth) else inner_hash(h, sib)
    if siblings:
        raise MalformedProof("map proof has unused siblings")
    if not hmac.compare_digest(h, root):
        raise ProofMismatch("map proof does not lead to the map root")
    return found


#: The depth above which :meth:`SparseMap.prove` can reuse a proof's siblings (at most
#: 16: the bitmap of a proof's first 16 depths is kept as a 16-bit number).
PROOF_TOP = 12
#: Proofs' siblings above a node, in two parts: by the node at depth PROOF_TOP // 2
#: those of the depths above it, by the node at PROOF_TOP those between the two
#: ((depth, prefix) -> (bitmap bits of those depths, siblings)). The upper part is
#: shared by more keys and changes with more changes to the map: a caller may keep the
#: lower part of the nodes the changes did not reach when the map changes.
ProofTops = dict[tuple[int, int], tuple[int, tuple[bytes, ...]]]


def _from_tops(k: int, tops: ProofTops, present: bytearray, siblings: list[bytes]) -> int:
    """Start key ``k``'s proof from ``tops``: the depth it reaches (0, PROOF_TOP // 2
    or PROOF_TOP)."""
    mid = PROOF_TOP // 2
    upper = tops.get((mid, k >> (KEY_BITS - mid)))
    if upper is None:
        return 0
    lower = tops.get((PROOF_TOP, k >> (KEY_BITS - PROOF_TOP)))
    bits = upper[0] if lower is None else upper[0] | lower[0]
    present[:2] = bits.to_bytes(2, "big")
    siblings += upper[1]
    if lower is None:
        return mid
    siblings += lower[1]
    return PROOF_TOP


def _to_tops(k: int, depth: int, tops: ProofTops, present: bytearray,
             siblings: list[bytes]) -> None:
    """Keep in ``tops`` what key ``k``'s proof found above ``depth`` (PROOF_TOP // 2 or
    PROOF_TOP), for the other keys below that node."""
    node = (depth, k >> (KEY_BITS - depth))
    if node in tops:
        return
    mid = PROOF_TOP // 2
    bits = int.from_bytes(present[:2], "big")
    if depth == mid:
        tops[node] = (bits, tuple(siblings))
        return
    upper = tops.get((mid, k >> (KEY_BITS - mid)))
    if upper is not None:  # the depths below ``mid``: their bits and siblings
        tops[node] = (bits & ((0x8000 >> (mid - 1)) - 1 if mid else 0xFFFF),
                      tuple(siblings[len(upper[1]):]))


class SparseMap:
    """The sparse tree over a :class:`MapStore`. Updates are incremental: O(depth)
    records read and written per change."""

    __slots__ = ("_store",)

    def __init__(self, store: MapStore) -> None:
        self._store = store

    def root(self) -> bytes:
        return _record_hash(self._store.get((0, 0)))

    def prove(self, key: bytes, tops: ProofTops | None = None) -> MapProof:
        """``key``'s proof. ``tops``: proofs' first PROOF_TOP depths (:data:`ProofTops`),
        kept by a caller that proves many keys of this very map (every key below one
        node has the same siblings above it)."""
        if len(key) != 32:
            raise UsageError("a map key is 32 bytes")
        k = int.from_bytes(key, "big")
        present = bytearray(32)
        siblings: list[bytes] = []
        get = self._store.get  # the loop runs ~20 times per proof: names bound once
        depth = 0 if tops is None else _from_tops(k, tops, present, siblings)
        marks = (PROOF_TOP // 2, PROOF_TOP) if tops is not None else ()
        rec = get((depth, k >> (KEY_BITS - depth)))
        while rec is not None and rec[:1] != _LEAF:  # an inner node: go down
            if depth in marks and tops is not None:
                _to_tops(k, depth, tops, present, siblings)
            child = k >> (KEY_BITS - 1 - depth)
            sib = get((depth + 1, child ^ 1))
            if sib is not None:
                present[depth >> 3] |= 0x80 >> (depth & 7)
                siblings.append(sib[1:] if sib[:1] == _NODE else _record_hash(sib))
            depth += 1
            rec = get((depth, child))
        tkey = rec[1:33] if rec is not None else None
        tval = rec[33:65] if rec is not None else None
        return MapProof(depth=depth, terminal_key=tkey, terminal_value=tval,
                        present=bytes(present[: (depth + 7) // 8]), siblings=tuple(siblings))

    def set(self, key: bytes, value: bytes) -> bytes:
        """Insert or replace ``key``'s value hash; return the new root."""
        if len(key) != 32 or len(value) != HASH_SIZE:
            raise UsageError("map key and value are 32 bytes")
        k = int.from_bytes(key, "big")
        store = self._store
        depth = 0
        while True:
            node = (depth, _prefix(k, depth))
            rec = store.get(node)
            if rec is None or (rec[:1] == _LEAF and rec[1:33] == key):
                store[node] = _LEAF + key + value
                break
            if rec[:1] == _LEAF:
                # Push the other entry down to where the two keys' bits part.
                other = int.from_bytes(rec[1:33], "big")
                split = depth
                while _bit(other, split) == _bit(k, split):
                    split += 1
                store[(split + 1, _prefix(other, split + 1))] = rec
                store[(split + 1, _prefix(k, split + 1))] = _LEAF + key + value
                for d in range(split, depth - 1, -1):
                    store[(d, _prefix(k, d))] = _NODE + EMPTY  # rehashed below
                depth = split + 1
                break
            depth += 1
        # Rehash every inner node on the path, bottom up: the child on the path is the
        # one just hashed, so only its sibling is read.
        h = entry_hash(key, value)
        get, sha256 = store.get, hashlib.sha256
        for d in range(depth - 1, -1, -1):
            child = k >> (KEY_BITS - 1 - d)
            sib = get((d + 1, child ^ 1))
            s = EMPTY if sib is None else sib[1:] if sib[:1] == _NODE else entry_hash(
                sib[1:33], sib[33:65])
            h = sha256(_NODE + s + h if child & 1 else _NODE + h + s).digest()
            store[(d, child >> 1)] = _NODE + h
        return h


# --- per-account version trees ------------------------------------------------------------------


class VersionNodes:
    """One account's version tree nodes inside a shared store keyed by (map key, level,
    index): a :class:`~sottovoce.kt.merkle.NodeSource` for that account."""

    __slots__ = ("_key", "_store")

    def __init__(self, store: MutableMapping[tuple[bytes, int, int], bytes], key: bytes) -> None:
        self._store, self._key = store, key

    def __getitem__(self, node: tuple[int, int]) -> bytes:
        return self._store[(self._key, *node)]

    def put(self, written: list[tuple[tuple[int, int], bytes]]) -> None:
        for (level, index), h in written:
            self._store[(self._key, level, index)] = h


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionRecord:
    """What the server keeps per version and hands to a lookup requester."""

    version: int
    state: bytes
    opening: bytes
    commitment: bytes


class Directory:
    """The server's map core: appends versions, keeps the map and version trees, and
    builds each change's :class:`LogLeaf`. All storage is passed in (dicts in tests,
    tables on the server); work on an overlay and keep it only if the whole change
    succeeded (:class:`Overlay`)."""

    __slots__ = ("_map", "_records", "_sizes", "_versions")

    def __init__(
        self,
        map_store: MapStore,
        version_nodes: MutableMapping[tuple[bytes, int, int], bytes],
        records: MutableMapping[tuple[bytes, int], VersionRecord],
        sizes: MutableMapping[bytes, int],
    ) -> None:
        self._map = SparseMap(map_store)
        self._versions = version_nodes
        self._records = records
        self._sizes = sizes

    def root(self) -> bytes:
        return self._map.root()

    def versions(self, key: bytes) -> int:
        return self._sizes.get(key, 0)

    def version_root(self, key: bytes) -> bytes:
        n = self.versions(key)
        return root_hash(n, VersionNodes(self._versions, key))

    def append_commitment(self, key: bytes, commitment: bytes) -> tuple[int, bytes]:
        """Append one version leaf to ``key``'s version tree and update the map; return
        (the new version's number, the new map root). What an auditor replays."""
        n = self.versions(key)
        if n >= KT_MAX_VERSIONS or len(commitment) != HASH_SIZE:
            raise UsageError("too many versions, or a malformed commitment")
        nodes = VersionNodes(self._versions, key)
        writer = LogWriter(n, [nodes[x] for x in root_nodes(n)])
        nodes.put(writer.append(leaf_hash(commitment)))
        self._sizes[key] = n + 1
        return n, self._map.set(key, account_value(n + 1, writer.root()))

    def append(
        self,
        key: bytes,
        state: bytes,
        *,
        kind: ChangeKind,
        epoch: int,
        timestamp_ms: int,
        rng: Random,
    ) -> LogLeaf:
        """Append the next version of ``key``'s account; return the log leaf to append
        at index ``epoch``."""
        if not 0 <= epoch < KT_MAX_LOG_SIZE:
            raise UsageError("epoch out of range")
        opening = rng(OPENING_SIZE)
        commitment = commit(key, self.versions(key), state, opening)
        version, root = self.append_commitment(key, commitment)
        self._records[(key, version)] = VersionRecord(
            version=version, state=state, opening=opening, commitment=commitment
        )
        return LogLeaf(epoch=epoch, timestamp_ms=timestamp_ms, kind=kind, map_key=key,
                       account_version=version, commitment=commitment, map_root=root)

    def prove(self, key: bytes, tops: ProofTops | None = None) -> MapProof:
        return self._map.prove(key, tops)

    def record(self, key: bytes, version: int) -> VersionRecord:
        try:
            return self._records[(key, version)]
        except KeyError:
            raise UsageError("no such version") from None

    def version_nodes(self, key: bytes) -> VersionNodes:
        return VersionNodes(self._versions, key)


K = TypeVar("K")
V = TypeVar("V")


class Overlay(MutableMapping[K, V]):
    """A write layer over a mapping: reads fall through, writes stay here until
    :meth:`commit`, so a change that fails half-way leaves the base untouched.
    The map never deletes, so neither does this."""

    def __init__(self, base: MutableMapping[K, V]) -> None:
        self.base = base
        self.writes: dict[K, V] = {}

    def __getitem__(self, key: K) -> V:
        if key in self.writes:
            return self.writes[key]
        return self.base[key]

    def __setitem__(self, key: K, value: V) -> None:
        self.writes[key] = value

    def __delitem__(self, key: K) -> None:
        raise UsageError("the map never deletes")

    def __iter__(self) -> Iterator[K]:
        yield from self.writes
        yield from (k for k in self.base if k not in self.writes)

    def __len__(self) -> int:
        return len(self.base) + sum(1 for k in self.writes if k not in self.base)

    def commit(self) -> None:
        self.base.update(self.writes)
        self.writes.clear()
