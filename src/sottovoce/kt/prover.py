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

from collections.abc import MutableMapping
from dataclasses import dataclass

from sottovoce.crypto.rng import Random
from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import Checkpoint, NoteSigner, SignedNote
from sottovoce.kt.map import (
    ChangeKind,
    Directory,
    LogLeaf,
    MapStore,
    VersionRecord,
    map_key,
)
from sottovoce.kt.merkle import (
    LogWriter,
    NodeId,
    consistency_proof,
    inclusion_proof,
    root_nodes,
)
from sottovoce.kt.verify import EntryProof, HistoryResponse, LookupResponse
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
        beta, pi = self.label(username)
        key = map_key(beta)
        nodes = self._stores.log_nodes
        entry = EntryProof(
            checkpoint=note.encode(),
            consistency=tuple(consistency_proof(since, size, nodes)) if since else (),
            leaf=self._stores.leaves[size - 1],
            leaf_proof=tuple(inclusion_proof(size - 1, size, nodes)),
            vrf_proof=pi,
            map_proof=self._dir.prove(key),
            versions=self._dir.versions(key),
            version_root=self._dir.version_root(key),
        )
        return entry, key

    def lookup(self, username: str, note: SignedNote, *, since: int = 0) -> LookupResponse:
        """The lookup answer at the current checkpoint ``note`` (as cosigned by the
        witnesses), with a consistency proof from the client's last size ``since``."""
        entry, key = self._entry(username, note, since)
        if entry.versions == 0:
            return LookupResponse(entry=entry)
        latest = self._dir.record(key, entry.versions - 1)
        proof = inclusion_proof(latest.version, entry.versions, self._dir.version_nodes(key))
        return LookupResponse(entry=entry, version_proof=tuple(proof), state=latest.state,
                              opening=latest.opening)

    def history(self, username: str, note: SignedNote, *, since: int = 0) -> HistoryResponse:
        entry, key = self._entry(username, note, since)
        records = [self._dir.record(key, v) for v in range(entry.versions)]
        return HistoryResponse(entry=entry, states=tuple(r.state for r in records),
                               openings=tuple(r.opening for r in records))
