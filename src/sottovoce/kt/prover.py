"""The server's key-transparency core: one log, one map, one VRF key, one log key.

    change(username, state, kind) ──► Directory.append (map + version tree)
                                  ──► LogLeaf appended to the log (LogWriter)
    checkpoint()                  ──► signed note of the current size and root
    lookup(username, since)       ──► LookupResponse (kt/verify.py checks it)
    history(username, since)      ──► HistoryResponse for the owner's monitor

Sans-I/O: every store is a mapping passed in (dicts in tests and benchmarks;
tables on the server), time and randomness are parameters. Wiring it into the
server means backing the mappings by storage and calling :meth:`change` in the
transaction that changes the directory.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

from sottovoce.crypto.rng import Random
from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import Checkpoint, NoteSigner, SignedNote
from sottovoce.kt.map import (
    ChangeKind,
    Directory,
    LogLeaf,
    MapStore,
    ProofTops,
    VersionRecord,
    map_key,
)
from sottovoce.kt.merkle import (
    LogWriter,
    NodeId,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    root_nodes,
)
from sottovoce.kt.verify import (
    EntryProof,
    HistoryPage,
    HistoryResponse,
    LookupResponse,
    log_part_bytes,
)
from sottovoce.kt.vrf import VRFSecretKey


@dataclass(slots=True, kw_only=True)
class KTStores:
    """Every mapping the core reads and writes."""

    log_nodes: MutableMapping[NodeId, bytes]
    leaves: MutableMapping[int, bytes]
    map_nodes: MapStore
    version_nodes: MutableMapping[tuple[bytes, int, int], bytes]
    records: MutableMapping[tuple[bytes, int], VersionRecord]
    sizes: MutableMapping[bytes, int]
    labels: MutableMapping[str, tuple[bytes, bytes]]

    @classmethod
    def memory(cls) -> KTStores:
        return cls(log_nodes={}, leaves={}, map_nodes={}, version_nodes={}, records={},
                   sizes={}, labels={})


class KTLog:
    __slots__ = ("_dir", "_log", "_signer", "_stores", "_vrf")

    def __init__(self, stores: KTStores, *, vrf_key: VRFSecretKey, log_signer: NoteSigner) -> None:
        self._stores = stores
        self._vrf = vrf_key
        self._signer = log_signer
        self._dir = Directory(stores.map_nodes, stores.version_nodes, stores.records, stores.sizes)
        size = len(stores.leaves)
        self._log = LogWriter(size, [stores.log_nodes[n] for n in root_nodes(size)])

    @property
    def size(self) -> int:
        return self._log.size

    def label(self, username: str) -> tuple[bytes, bytes]:
        """(VRF output, VRF proof) of ``username``, computed once and kept."""
        cached = self._stores.labels.get(username)
        if cached is None:
            cached = self._vrf.evaluate(username.encode("utf-8"))
            self._stores.labels[username] = cached
        return cached

    def change(
        self, username: str, state: bytes, *, kind: ChangeKind, now_ms: int, rng: Random
    ) -> LogLeaf:
        """Record one directory change: a new version in the map and a new log leaf."""
        key = map_key(self.label(username)[0])
        return self.change_key(key, state, kind=kind, now_ms=now_ms, rng=rng)

    def change_key(
        self, key: bytes, state: bytes, *, kind: ChangeKind, now_ms: int, rng: Random
    ) -> LogLeaf:
        """:meth:`change` for an account whose map key is already known (the server
        keeps each username's label, as :attr:`KTStores.labels` does)."""
        leaf = self._dir.append(key, state, kind=kind, epoch=self._log.size,
                                timestamp_ms=now_ms, rng=rng)
        data = leaf.encode()
        for node, h in self._log.append(leaf.hash()):
            self._stores.log_nodes[node] = h
        self._stores.leaves[leaf.epoch] = data
        return leaf

    def checkpoint(self) -> SignedNote:
        cp = Checkpoint(origin=self._signer.public.name, size=self._log.size, root=self._log.root())
        return cp.sign(self._signer)

    def _entry(self, username: str, note: SignedNote, since: int) -> tuple[EntryProof, bytes]:
        size = Checkpoint.parse(note.text).size
        # The map is read as it is now, so the checkpoint must be of the current size.
        if not 0 < size == self._log.size or not 0 <= since <= size:
            raise UsageError("the checkpoint is not the current one, or since is past it")
        part = log_proof(note.encode(), size, since, self._stores.leaves[size - 1],
                         self._stores.log_nodes)
        return entry_proof(part, self._stores, username)

    def lookup(self, username: str, note: SignedNote, *, since: int = 0) -> LookupResponse:
        """The lookup answer at the current checkpoint ``note`` (as cosigned by the
        witnesses), with a consistency proof from the client's last size ``since``."""
        self.label(username)
        entry, key = self._entry(username, note, since)
        return lookup_response(entry, key, self._stores)

    def history(self, username: str, note: SignedNote, *, since: int = 0) -> HistoryResponse:
        self.label(username)
        entry, key = self._entry(username, note, since)
        return history_response(entry, key, self._stores)

    def history_page(self, username: str, note: SignedNote, *, since: int = 0, start: int = 0,
                     limit: int) -> HistoryPage:
        """At most ``limit`` versions of ``username`` from ``start`` on (:class:`HistoryPage`)."""
        self.label(username)
        entry, key = self._entry(username, note, since)
        start = min(start, entry.versions)
        return history_page(entry, key, self._stores, start, min(entry.versions, start + limit))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogProof:
    """What every answer at one checkpoint, for clients at one ``since``, shares: the
    note, the consistency proof, the latest leaf and its inclusion proof. A server
    builds it once per checkpoint and size a client comes from."""

    checkpoint: bytes
    consistency: tuple[bytes, ...]
    leaf: bytes
    leaf_proof: tuple[bytes, ...]
    #: The four above as every answer's entry proof begins (:func:`log_part_bytes`).
    encoded: bytes = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", log_part_bytes(
            self.checkpoint, self.consistency, self.leaf, self.leaf_proof))


def log_proof(
    note: bytes, size: int, since: int, leaf: bytes, nodes: Mapping[NodeId, bytes]
) -> LogProof:
    """The log's part of an answer at tree size ``size`` (``note`` is its checkpoint):
    ``nodes`` holds at least :func:`log_proof_nodes` of it."""
    return LogProof(
        checkpoint=note,
        consistency=tuple(consistency_proof(since, size, nodes)) if since else (),
        leaf=leaf,
        leaf_proof=tuple(inclusion_proof(size - 1, size, nodes)),
    )


def log_proof_nodes(size: int, since: int) -> set[NodeId]:
    """The log nodes :func:`log_proof` reads."""
    return inclusion_nodes(size - 1, size) | consistency_nodes(since, size)


def entry_proof(
    part: LogProof, stores: KTStores, username: str, tops: ProofTops | None = None
) -> tuple[EntryProof, bytes]:
    """``username``'s entry proof (and map key) over ``stores``, which hold its label,
    its map path and its version tree as of the checkpoint of ``part``; ``tops``: what
    the map proofs of that checkpoint share (:meth:`SparseMap.prove`)."""
    _, pi = stores.labels[username]
    key = map_key(stores.labels[username][0])
    directory = Directory(stores.map_nodes, stores.version_nodes, stores.records, stores.sizes)
    return EntryProof(
        checkpoint=part.checkpoint,
        consistency=part.consistency,
        leaf=part.leaf,
        leaf_proof=part.leaf_proof,
        vrf_proof=pi,
        map_proof=directory.prove(key, tops),
        versions=directory.versions(key),
        version_root=directory.version_root(key),
    ), key


def lookup_response(entry: EntryProof, key: bytes, stores: KTStores) -> LookupResponse:
    if entry.versions == 0:
        return LookupResponse(entry=entry)
    directory = Directory(stores.map_nodes, stores.version_nodes, stores.records, stores.sizes)
    latest = directory.record(key, entry.versions - 1)
    proof = inclusion_proof(latest.version, entry.versions, directory.version_nodes(key))
    return LookupResponse(entry=entry, version_proof=tuple(proof), state=latest.state,
                          opening=latest.opening)


def history_response(entry: EntryProof, key: bytes, stores: KTStores) -> HistoryResponse:
    directory = Directory(stores.map_nodes, stores.version_nodes, stores.records, stores.sizes)
    records = [directory.record(key, v) for v in range(entry.versions)]
    return HistoryResponse(entry=entry, states=tuple(r.state for r in records),
                           openings=tuple(r.opening for r in records))


def history_page(entry: EntryProof, key: bytes, stores: KTStores, start: int,
                 end: int) -> HistoryPage:
    """Versions [start, end) of the entry's account, with the version tree's consistency
    proofs from ``start`` and from ``end`` to its size; ``stores`` holds those records and
    :func:`history_page_nodes` of the version tree."""
    directory = Directory(stores.map_nodes, stores.version_nodes, stores.records, stores.sizes)
    n, nodes = entry.versions, directory.version_nodes(key)
    records = [directory.record(key, v) for v in range(start, end)]
    return HistoryPage(
        entry=entry, start=start, states=tuple(r.state for r in records),
        openings=tuple(r.opening for r in records),
        checked_proof=tuple(consistency_proof(start, n, nodes)) if 0 < start < n else (),
        rest_proof=tuple(consistency_proof(end, n, nodes)) if 0 < end < n else (),
    )


def history_page_nodes(versions: int, start: int, end: int) -> set[NodeId]:
    """The version-tree nodes :func:`history_page` reads (besides the root's)."""
    return consistency_nodes(start, versions) | consistency_nodes(end, versions)
