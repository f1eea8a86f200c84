"""The key-transparency log and map in tables, written once for every engine (:mod:`.txn`).

    kt_leaves        idx -> encoded LogLeaf                     (append-only)
    kt_log_nodes     node -> hash  (node = level << 56 | index)  (append-only)
    kt_versions      (map key, version) -> epoch, state, opening, commitment (append-only)
    kt_version_nodes (map key, node) -> hash                     (append-only)
    kt_map_nodes     (node, epoch) -> record                     (insert-only, versioned)
    kt_labels        username -> VRF output and proof            (insert-only)
    kt_checkpoints   size -> the log-signed note                 (insert-only)
    kt_cosignatures  (size, witness, time) -> cosignature line   (insert-only)
    kt_pending       seq -> a queued change and the state it left (inserted, folded, deleted)

Nothing is rewritten in place. A map node changes with every account under it, so
each change inserts the node's new record under the epoch (the leaf index) that
wrote it, and a read "as of tree size S" takes, for each node, the record of the
largest epoch below S. So a crash before the commit leaves the previous head whole,
and a lookup answers at exactly the checkpoint it serves while later appends land.

:func:`record` is the one call that logs a directory change: it runs inside the
transaction that changes the directory (registration, device added or revoked,
deletion, and the account-key succession / recovery statements) and only queues the
change, with the account's state as it left it: a cheap insert on the request's path.
:func:`fold` appends queued changes in batches, once per checkpoint round, under one
lock so folds from several server nodes take consecutive leaf indexes; each change
still gets its own version and leaf, but a batch shares its reads and writes. The
sans-I/O core (kt/map.py, kt/merkle.py, kt/prover.py) works on the dicts the reads
below fill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from sottovoce.crypto.rng import Random
from sottovoce.errors import DecodeError
from sottovoce.identity import DeviceCertificate
from sottovoce.kt.map import (
    KEY_BITS,
    PROOF_TOP,
    AccountState,
    ChangeKind,
    DeviceEntry,
    Directory,
    LogLeaf,
    MapStore,
    Overlay,
    ProofTops,
    SparseMap,
    VersionRecord,
    map_key,
)
from sottovoce.kt.merkle import (
    LogWriter,
    NodeId,
    consistency_nodes,
    inclusion_nodes,
    leaf_hash,
    root_nodes,
)
from sottovoce.kt.prover import (
    KTStores,
    LogProof,
    entry_proof,
    history_response,
    lookup_response,
)
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.server.storage.txn import Lock, Txn, blob, execute, many, one, rows, val

#: Serializes folds (several server nodes on one PostgreSQL database).
_LOCK = Lock("kt_append", 1)
#: Serializes queued changes, so that they commit in the order of their numbers.
_QUEUE_LOCK = Lock("kt_queue", 1)
#: Statement parameters per IN list (well under every engine's limit).
_CHUNK = 512
#: Map depths fetched in the first round trip while walking down to a key's entry, at
#: most.
_DEPTH_STEP = 32
#: The first round trip reads down to depth log2(size) + _PAST_LOG2: a map of N
#: random keys ends about 60 % of its paths by depth log2(N) + 1 (a key's entry sits
#: one below the longest prefix it shares, and P(no other key shares d bits) =
#: exp(-N / 2^d)); each depth read past a path's end costs two wasted index probes.
_PAST_LOG2 = 1
#: Depths per later round trip, for the paths that go on (one statement for all the
#: keys still walking: an extra statement costs far less than wasted probes).
_CACHED_STEP = 2
#: The "no recovery key registered" value of an account state: an account registered
#: before its owner committed a recovery key.
NO_RECOVERY_KEY = bytes(32)


#: Map depths whose nodes the append cache keeps (every append reads the top ones): at
#: most 2^(depth+1) nodes, a few tens of MB at most.
CACHE_DEPTH = 16
#: The depth of the paths :class:`AppendCache` keeps whole (2^TOP_DEPTH of them).
TOP_DEPTH = 12
#: VRF labels computed ahead of their registration's transaction, kept at most.
_MAX_LABELS = 4096
#: Queued changes one fold appends, at most (one write transaction: on SQLite, other
#: writes wait for it, about 0.1-0.2 ms per change).
FOLD_BATCH = 1024


class AppendCache:
    """This process's copy of what appends read again and again: the log's border
    (:func:`root_nodes` hashes) and the upper map nodes' records, as of tree size
    ``size``. It is used only when the log in the database has that very size and
    border, so another node's append, or an append of ours whose transaction rolled
    back, makes it start over (equal borders mean equal logs, hence equal leaves and
    map roots). ``None`` records a node known to be absent."""

    __slots__ = ("border", "labels", "leaf", "log", "nodes", "proofs", "size", "tops")

    def __init__(self, size: int = -1) -> None:
        self.size = size
        self.border: tuple[bytes, ...] = ()
        self.nodes: dict[NodeId, bytes | None] = {}
        #: For lookups at ``size``: log nodes (written once, never changed), the last
        #: leaf, and VRF labels (a name's label never changes).
        self.log: dict[NodeId, bytes] = {}
        self.leaf: bytes | None = None
        self.labels: dict[str, tuple[bytes, bytes]] = {}
        #: What :func:`_cached_path` found of the paths through each node at depths
        #: TOP_DEPTH // 2 and TOP_DEPTH (a path's first depths are shared by thousands
        #: of keys).
        self.tops: dict[NodeId, tuple[tuple[tuple[NodeId, bytes], ...], int]] = {}
        #: What lookups' map proofs at ``size`` share (kt/map.py ``SparseMap.prove``).
        self.proofs: ProofTops = {}

    def check(self, size: int, border: tuple[bytes, ...]) -> None:
        if size != self.size or border != self.border:
            self.size, self.border = size, border
            self.nodes.clear()
            self.tops.clear()
            self.proofs.clear()

    def carry(self, old: AppendCache, changed: Iterable[bytes]) -> None:
        """Take what ``old`` (of an earlier size) knows and is still true at this size:
        every map node but those the leaves between the two sizes may have changed --
        the nodes on their keys' paths, and the nodes beside them (where an entry is
        pushed down to make room) -- the lookup memos' lower parts those leaves did not
        reach, and the names' labels, which never change. Nodes and memos this cache
        made meanwhile stay as they are (they are of this size)."""
        nodes = old.nodes.copy()  # one step: reads of the old size may still add to it
        ks = {int.from_bytes(key, "big") for key in changed}
        for depth in range(CACHE_DEPTH + 1):
            for prefix in {k >> (KEY_BITS - depth) for k in ks}:  # upper depths: shared
                nodes.pop((depth, prefix), None)
                nodes.pop((depth, prefix ^ 1), None)
        # One C call and a swap, not a Python loop over some 100,000 nodes: a node a
        # reader thread adds to the replaced dict meanwhile is only read again later.
        nodes.update(self.nodes)
        self.nodes = nodes
        # The memos' lower parts (below TOP_DEPTH // 2 and PROOF_TOP // 2) of the nodes
        # no changed key's path goes through: a change alters the nodes on its path
        # and beside it, so at depths below d only under its depth d - 1 node.
        _carry_lower(old.tops, self.tops, ks, TOP_DEPTH)
        _carry_lower(old.proofs, self.proofs, ks, PROOF_TOP)
        for user, found in old.labels.copy().items():
            if len(self.labels) >= _MAX_LABELS:
                break
            self.labels.setdefault(user, found)

    def advance(self, size: int, border: tuple[bytes, ...],
                writes: dict[NodeId, bytes]) -> None:
        self.size, self.border = size, border
        self.nodes.update((n, r) for n, r in writes.items() if n[0] <= CACHE_DEPTH)
        self.tops.clear()
        self.proofs.clear()


def _carry_lower(old: dict[NodeId, Any], new: dict[NodeId, Any], changed: set[int],
                 top: int) -> None:
    """Copy into ``new`` the memos of ``old`` kept by nodes at depth ``top`` that are
    below no node at depth ``top // 2`` a ``changed`` key goes through."""
    mid = top // 2
    reached = {k >> (KEY_BITS - mid) for k in changed}
    for node, memo in old.copy().items():  # a reader thread may add to it meanwhile
        if node[0] == top and node[1] >> (top - mid) not in reached:
            new.setdefault(node, memo)


@dataclass(frozen=True, slots=True)
class KTWriter:
    """What an append needs besides the database: the VRF key (a new account's label),
    randomness (each version's commitment opening), labels computed before their
    transaction (:meth:`remember`), and the :class:`AppendCache`."""

    vrf: VRFSecretKey
    rng: Random
    labels: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    cache: AppendCache = field(default_factory=AppendCache)

    def remember(self, user: str, label: tuple[bytes, bytes]) -> None:
        """``user``'s VRF output and proof, computed outside the append's transaction
        (a VRF evaluation costs about as much as the rest of the append)."""
        if len(self.labels) >= _MAX_LABELS:
            self.labels.clear()
        self.labels[user] = label


def node_id(node: NodeId) -> int:
    """A log or version-tree node (level, index) as one integer column."""
    level, index = node
    return level << 56 | index


def _from_id(n: int) -> NodeId:
    return n >> 56, n & ((1 << 56) - 1)


def map_node_id(node: NodeId) -> bytes:
    depth, prefix = node
    return depth.to_bytes(2, "big") + prefix.to_bytes((depth + 7) // 8, "big")


def _chunks(items: list[int] | list[bytes]) -> Iterator[list[int] | list[bytes]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _padded(part: list[Any]) -> list[Any]:
    """``part`` with its last item repeated up to the next power of two (up to 32) or
    multiple of 32: a statement sized by its list then has a few texts, not one per
    length, so the engine's cache of prepared statements keeps them (a 200-probe
    statement costs milliseconds to prepare), for at most 31 repeated probes.
    Repeated probes return repeated rows, which every caller merges."""
    k = len(part)
    n = 1 << (k - 1).bit_length() if 0 < k <= 32 else -(-k // 32) * 32
    return part + [part[-1]] * (n - k)


# --- reads --------------------------------------------------------------------------------


def log_size() -> Txn[int]:
    last = yield val("SELECT max(idx) FROM kt_leaves")
    return 0 if last is None else int(last) + 1


def changed_keys(start: int, end: int) -> Txn[list[bytes]]:
    """The map keys the leaves [start, end) changed (each leaf names its key)."""
    found = yield rows("SELECT leaf FROM kt_leaves WHERE idx>=? AND idx<?", start, end)
    return [LogLeaf.decode(blob(r[0])).map_key for r in found]


def leaves(start: int, count: int) -> Txn[list[bytes]]:
    found = yield rows("SELECT leaf FROM kt_leaves WHERE idx>=? AND idx<? ORDER BY idx",
                       start, start + count)
    return [blob(r[0]) for r in found]


def log_nodes(wanted: Iterable[NodeId]) -> Txn[dict[NodeId, bytes]]:
    ids = sorted({node_id(n) for n in wanted})
    out: dict[NodeId, bytes] = {}
    for part in _chunks(ids):
        part = _padded(part)
        found = yield rows(
            f"SELECT node, hash FROM kt_log_nodes WHERE node IN ({_marks(len(part))})",  # noqa: S608
            *part,
        )
        out.update((_from_id(int(r[0])), blob(r[1])) for r in found)
    return out


VersionNodeMap = dict[tuple[bytes, int, int], bytes]


def _version_nodes(key: bytes, wanted: Iterable[NodeId]) -> Txn[VersionNodeMap]:
    ids = sorted({node_id(n) for n in wanted})
    out: VersionNodeMap = {}
    for part in _chunks(ids):
        part = _padded(part)
        found = yield rows(
            "SELECT node, hash FROM kt_version_nodes "  # noqa: S608 -- placeholders only
            f"WHERE map_key=? AND node IN ({_marks(len(part))})",
            key, *part,
        )
        out.update(((key, *_from_id(int(r[0]))), blob(r[1])) for r in found)
    return out


_NEWEST: dict[int, str] = {}


def _newest_records(n: int) -> str:
    """SQL for the newest record below a size of each of ``n`` map nodes (cached by n)."""
    sql = _NEWEST.get(n)
    if sql is None:
        sql = _NEWEST[n] = " UNION ALL ".join(
            "SELECT * FROM (SELECT node, record FROM kt_map_nodes WHERE node=? AND epoch<? "  # noqa: S608
            f"ORDER BY epoch DESC LIMIT 1) AS n{i}"  # an alias per probe, numbers only
            for i in range(n)
        )
    return sql



def _newest_of(wanted: dict[bytes, NodeId], size: int) -> Txn[dict[NodeId, bytes]]:
    """The newest record below ``size`` of each node in ``wanted`` (its id -> the node),
    keyed by the node; a node with none is absent. One index probe per node (a node near
    the root has a record per epoch, so scanning them would grow with the log)."""
    got: dict[NodeId, bytes] = {}
    ids = list(wanted)
    for i in range(0, len(ids), _CHUNK // 2):
        part = _padded(ids[i:i + _CHUNK // 2])
        found = yield rows(_newest_records(len(part)),
                           *(p for node in part for p in (node, size)))
        got.update((wanted[blob(r[0])], blob(r[1])) for r in found)
    return got


def _map_path(
    key: bytes, size: int, cache: AppendCache | None = None
) -> Txn[dict[NodeId, bytes]]:
    """Every map node on ``key``'s path and beside it, as of tree size ``size``: all
    that the sparse map reads to prove or update ``key``. ``cache`` (of that size):
    the upper nodes come from it, and what is read of them goes into it."""
    return (yield from _map_paths([key], size, cache))[key]


def _cached_path(k: int, cache: AppendCache, out: dict[NodeId, bytes]) -> int:
    """Fill ``out`` with key ``k``'s path from the cache; return the first depth the
    cache cannot give, or -1 if the path ended within it. Its first TOP_DEPTH depths
    come from ``cache.tops`` once walks found them all, in two parts (the depths down
    to TOP_DEPTH // 2, and those below down to TOP_DEPTH): the lower part is carried
    over to the next checkpoint's cache where no change reached it."""
    mid = TOP_DEPTH // 2
    start = _memo_walk(k, cache, out, 0, mid)
    if start == mid + 1:
        start = _memo_walk(k, cache, out, start, TOP_DEPTH)
    if start == TOP_DEPTH + 1:
        start = _walk(k, cache.nodes, out, start, CACHE_DEPTH)
    return start


def _memo_walk(k: int, cache: AppendCache, out: dict[NodeId, bytes], first: int,
               last: int) -> int:
    """:func:`_walk` of key ``k`` at depths ``first`` .. ``last``, kept in ``cache.tops``
    by the path's node at ``last`` if complete (the same for every key below it)."""
    node = (last, k >> (KEY_BITS - last))
    memo = cache.tops.get(node)
    if memo is None:
        found: dict[NodeId, bytes] = {}
        start = _walk(k, cache.nodes, found, first, last)
        if first <= start <= last:  # incomplete: the cache lacks a node
            out.update(found)
            return start
        memo = cache.tops[node] = (tuple(found.items()), start)
    out.update(memo[0])
    return memo[1]


#: The nodes :func:`build_tops` makes memos for: those at depth TOP_DEPTH (PROOF_TOP).
TOPS = 1 << max(TOP_DEPTH, PROOF_TOP)


def build_tops(cache: AppendCache, first: int, count: int) -> None:
    """Make the memos lookups share for the nodes ``first`` .. ``first + count - 1`` at
    depth TOP_DEPTH (and PROOF_TOP): each node's path walk (``cache.tops``) and its map
    proofs' upper siblings (``cache.proofs``), as the first lookup below it would.
    Only for a cache that holds every map node down to CACHE_DEPTH (a node it records
    as absent, None, is absent: a proof takes a node it lacks for an empty one)."""
    prover = SparseMap(cast(MapStore, cache.nodes))  # absent nodes: None, as from get
    for top in range(first, first + count):
        if top < 1 << TOP_DEPTH and not _has_memos(cache.tops, top, TOP_DEPTH):
            _cached_path(top << (KEY_BITS - TOP_DEPTH), cache, {})
        if top < 1 << PROOF_TOP and not _has_memos(cache.proofs, top, PROOF_TOP):
            prover.prove((top << (KEY_BITS - PROOF_TOP)).to_bytes(32, "big"), cache.proofs)


def _has_memos(memos: dict[NodeId, Any], top: int, depth: int) -> bool:
    """Whether ``memos`` has both parts for node ``top`` at ``depth``."""
    mid = depth // 2
    return (depth, top) in memos and (mid, top >> (depth - mid)) in memos


def _walk(k: int, known: dict[NodeId, bytes | None], out: dict[NodeId, bytes], start: int,
          last: int) -> int:
    """Key ``k``'s path at depths ``start`` .. ``last`` from ``known`` into ``out``; the
    first depth not known, -1 if the path ended, else ``last + 1``."""
    while start <= last:
        here = (start, k >> (KEY_BITS - start))
        beside = (start, here[1] ^ 1)
        if here not in known or (start and beside not in known):
            return start
        rec = known[here]
        if rec is not None:
            out[here] = rec
        if start and (sib := known[beside]) is not None:
            out[beside] = sib
        if rec is None or rec[:1] == b"\x10":
            return -1
        start += 1
    return start


def _map_paths(
    keys: list[bytes], size: int, cache: AppendCache | None
) -> Txn[dict[bytes, dict[NodeId, bytes]]]:
    """:func:`_map_path` of several keys, their index probes sent together (one
    statement per step down, for all the keys still walking)."""
    paths: dict[bytes, dict[NodeId, bytes]] = {}
    walking: dict[bytes, tuple[int, int]] = {}  # key -> (first depth to read, step)
    # A map of at most ``size`` accounts ends most paths by depth log2(size) + 1: the
    # first step reads down to there (each depth read past a path's end is a wasted
    # probe), a path that goes on takes further steps of _CACHED_STEP.
    deep = min(size.bit_length() + _PAST_LOG2, _DEPTH_STEP)
    for key in keys:
        out = paths[key] = {}
        start = 0 if cache is None else _cached_path(int.from_bytes(key, "big"), cache, out)
        if start >= 0:
            walking[key] = (start, max(1, deep - start))
    while walking:
        wanted: dict[bytes, NodeId] = {}
        for key, (start, step) in walking.items():
            k = int.from_bytes(key, "big")
            for depth in range(start, min(start + step, KEY_BITS + 1)):
                prefix = k >> (KEY_BITS - depth)
                wanted[map_node_id((depth, prefix))] = (depth, prefix)
                if depth:
                    wanted[map_node_id((depth, prefix ^ 1))] = (depth, prefix ^ 1)
        got = yield from _newest_of(wanted, size)
        if cache is not None:
            cache.nodes.update((n, got.get(n)) for n in wanted.values() if n[0] <= CACHE_DEPTH)
        going: dict[bytes, tuple[int, int]] = {}
        for key, (start, step) in walking.items():
            k = int.from_bytes(key, "big")
            out = paths[key]
            ended = False
            for depth in range(start, min(start + step, KEY_BITS + 1)):
                prefix = k >> (KEY_BITS - depth)
                for node in ((depth, prefix), (depth, prefix ^ 1)) if depth else ((0, 0),):
                    if node in got:
                        out[node] = got[node]
            # Stop at the first depth of this step where the path ends (empty or an entry).
            for depth in range(start, min(start + step, KEY_BITS + 1)):
                rec = out.get((depth, k >> (KEY_BITS - depth)))
                if rec is None or rec[:1] == b"\x10":
                    ended = True
                    break
            if not ended and start + step <= KEY_BITS:
                going[key] = (start + step, _CACHED_STEP)
        walking = going
    return paths


def fill_upper(size: int, nodes: list[NodeId], cache: AppendCache) -> Txn[list[NodeId]]:
    """Read into ``cache`` (of tree size ``size``) those of ``nodes`` (map nodes down to
    CACHE_DEPTH) it does not hold, one index probe each, in one statement per _CHUNK / 2;
    return the children of the inner ones, down to CACHE_DEPTH: the next nodes to read.
    Called depth by depth from the root, it fills the cache with the map's upper
    depths, so that every lookup's path then starts below them."""
    if cache.size != size:  # the cache was replaced meanwhile: nothing to fill
        return []
    known = cache.nodes
    missing = [n for n in nodes if n not in known]
    for i in range(0, len(missing), _CHUNK // 2):
        part = missing[i:i + _CHUNK // 2]
        ids = _padded([map_node_id(n) for n in part])
        found = yield rows(_newest_records(len(ids)), *(p for x in ids for p in (x, size)))
        got = {blob(r[0]): blob(r[1]) for r in found}
        for node, nid in zip(part, ids, strict=False):  # ids may be padded
            known[node] = got.get(nid)
    below: list[NodeId] = []
    for depth, prefix in nodes:
        rec = known.get((depth, prefix))
        if depth < CACHE_DEPTH and rec is not None and rec[:1] == b"\x11":
            below += ((depth + 1, 2 * prefix), (depth + 1, 2 * prefix + 1))
    return below


def path_nodes(keys: Iterable[bytes]) -> list[NodeId]:
    """The map nodes down to CACHE_DEPTH on ``keys``' paths and beside them: those
    :meth:`AppendCache.carry` leaves out for keys that changed."""
    out: dict[NodeId, None] = {}
    for key in keys:
        k = int.from_bytes(key, "big")
        out[(0, 0)] = None
        for depth in range(1, CACHE_DEPTH + 1):
            prefix = k >> (KEY_BITS - depth)
            out[(depth, prefix)] = out[(depth, prefix ^ 1)] = None
    return list(out)


def _versions(key: bytes, size: int) -> Txn[int]:
    last = yield val("SELECT max(version) FROM kt_versions WHERE map_key=? AND epoch<?",
                     key, size)
    return 0 if last is None else int(last) + 1


def _records(key: bytes, first: int, end: int) -> Txn[dict[tuple[bytes, int], VersionRecord]]:
    found = yield rows(
        "SELECT version, state, opening, commitment FROM kt_versions "
        "WHERE map_key=? AND version>=? AND version<? ORDER BY version",
        key, first, end,
    )
    return {
        (key, int(r[0])): VersionRecord(version=int(r[0]), state=blob(r[1]), opening=blob(r[2]),
                                        commitment=blob(r[3]))
        for r in found
    }


def label(
    vrf: VRFSecretKey, user: str, *, keep: bool, known: tuple[bytes, bytes] | None = None
) -> Txn[tuple[bytes, bytes]]:
    """``user``'s VRF output and proof: the stored ones, else ``known`` (computed ahead)
    or computed now (and, if ``keep``, stored: only for a name that has an account, so
    lookups cannot fill the table)."""
    found = yield one("SELECT label, proof FROM kt_labels WHERE username=?", user)
    if found is not None:
        return blob(found[0]), blob(found[1])
    beta, pi = known if known is not None else vrf.evaluate(user.encode("utf-8"))
    if keep:
        yield execute("INSERT INTO kt_labels(username, label, proof) VALUES (?, ?, ?)",
                      user, beta, pi)
    return beta, pi


def store_labels(found: list[tuple[str, bytes, bytes]]) -> Txn[None]:
    """Keep (username, VRF output, proof) computed ahead, in bulk (a bulk load computes
    a million of them in a process pool): :func:`fold` then reads them like any stored
    label. A name already labelled keeps its row (a name's label never changes)."""
    for i in range(0, len(found), _BULK_ROWS):
        yield many("INSERT INTO kt_labels(username, label, proof) VALUES (?, ?, ?) "
                   "ON CONFLICT DO NOTHING", sorted(found[i:i + _BULK_ROWS]))


#: Rows per statement of :func:`store_labels`.
_BULK_ROWS = 65_536


class _Sized(dict[int, bytes]):
    """The leaves a proof reads, reporting the tree's size as its length (KTLog sizes
    its log by ``len(leaves)``)."""

    def __init__(self, size: int, known: dict[int, bytes]) -> None:
        super().__init__(known)
        self.size = size

    def __len__(self) -> int:
        return self.size


def snapshots(
    vrf: VRFSecretKey, asks: list[tuple[str, bool]], size: int, cache: AppendCache | None,
) -> Txn[list[KTStores]]:
    """:func:`snapshot` of several (user, every_version) at tree size ``size`` without
    the log's part (the caller keeps that per checkpoint), in one reader round trip
    and with the same statements for all: each name's label, latest version and its
    key's neighbours in one (:func:`_entries`), the map paths below the cache in one
    more (:func:`_planned_paths`); names without an account, and paths the cache
    does not reach yet, one statement per step down (:func:`_map_paths`)."""
    c = cache if cache is not None and cache.size == size else None
    users = list(dict.fromkeys(user for user, _ in asks))
    labels, latest, depths = yield from _entries(users, size)
    missing = [u for u in users if u not in labels]  # no stored label: no account
    for u in missing:
        labels[u] = c.labels[u] if c is not None and u in c.labels else vrf.evaluate(
            u.encode("utf-8"))
    if c is not None:
        for u in missing:
            if len(c.labels) >= _MAX_LABELS:
                break
            c.labels.setdefault(u, labels[u])
    keys = {u: map_key(labels[u][0]) for u in users}
    unique = list(dict.fromkeys(keys.values()))
    paths = yield from _planned_paths(unique, depths, size, c)
    rest = [k for k in unique if k not in paths]
    if rest:
        paths.update((yield from _map_paths(rest, size, c)))
    out = []
    for user, every_version in asks:
        key = keys[user]
        last = latest.get(key)
        n = 0 if last is None else last.version + 1
        if every_version:
            records = yield from _records(key, 0, n)
        else:
            records = {} if last is None else {(key, n - 1): last}
        if n == 1:  # a one-leaf tree's only node is its leaf
            vnodes = {(key, 0, 0): leaf_hash(records[(key, 0)].commitment)}
        else:
            vwanted = set(root_nodes(n)) | (inclusion_nodes(n - 1, n) if n else set())
            vnodes = yield from _version_nodes(key, vwanted)
        out.append(KTStores(
            log_nodes={}, leaves=_Sized(size, {}), map_nodes=dict(paths[key]),
            version_nodes=vnodes, records=records, sizes={key: n},
            labels={user: labels[user]},
        ))
    return out


_ENTRIES: dict[int, str] = {}
#: A name's label, its key's latest version below a size and the keys beside it.
_ENTRY_ROWS = (
    "SELECT l.username, l.label, l.proof, "
    "(SELECT p.map_key FROM kt_versions AS p WHERE p.map_key < substr(l.label, 1, 32) "
    "AND p.epoch < ? ORDER BY p.map_key DESC LIMIT 1), "
    "(SELECT s.map_key FROM kt_versions AS s WHERE s.map_key > substr(l.label, 1, 32) "
    "AND s.epoch < ? ORDER BY s.map_key LIMIT 1), "
    "v.version, v.state, v.opening, v.commitment "
    "FROM kt_labels AS l LEFT JOIN kt_versions AS v "
    "ON v.map_key = substr(l.label, 1, 32) AND v.version = ("
    "SELECT max(m.version) FROM kt_versions AS m "
    "WHERE m.map_key = substr(l.label, 1, 32) AND m.epoch < ?)"
)


def _entries(
    users: list[str], size: int
) -> Txn[tuple[dict[str, tuple[bytes, bytes]], dict[bytes, VersionRecord], dict[bytes, int]]]:
    """The stored label of each of ``users`` that has one, in one statement with its map
    key's latest version below ``size`` and the keys next to it in the map as of
    ``size`` (the index of ``kt_versions`` has them on the same pages): (labels, latest
    versions by key, the depth of each such key's entry). A key's entry sits one depth
    below the longest prefix it shares with another key (the map only ever pushes
    an entry down to where it parts from a new one), and the keys sharing the longest
    prefix with it are its neighbours in key order."""
    labels: dict[str, tuple[bytes, bytes]] = {}
    latest: dict[bytes, VersionRecord] = {}
    depths: dict[bytes, int] = {}
    for i in range(0, len(users), _CHUNK):
        part = _padded(users[i:i + _CHUNK])
        sql = _ENTRIES.get(len(part))
        if sql is None:
            sql = _ENTRIES[len(part)] = (
                f"{_ENTRY_ROWS} WHERE l.username IN ({_marks(len(part))})")
        found = yield rows(sql, size, size, size, *part)
        for r in found:
            beta = blob(r[1])
            labels[str(r[0])] = (beta, blob(r[2]))
            if r[5] is None:
                continue
            key = map_key(beta)
            latest[key] = VersionRecord(version=int(r[5]), state=blob(r[6]),
                                        opening=blob(r[7]), commitment=blob(r[8]))
            k, shared = int.from_bytes(key, "big"), -1
            for other in (r[3], r[4]):
                if other is not None:
                    diff = int.from_bytes(blob(other), "big") ^ k
                    shared = max(shared, KEY_BITS - diff.bit_length())
            depths[key] = shared + 1
    return labels, latest, depths


#: A path node's record where only its kind matters: :meth:`SparseMap.prove` reads the
#: nodes on a key's own path only to go down past them (their hashes are not in a
#: proof, their siblings' are).
_INNER = b"\x11"


def _planned_paths(
    keys: list[bytes], depths: dict[bytes, int], size: int, cache: AppendCache | None,
) -> Txn[dict[bytes, dict[NodeId, bytes]]]:
    """The paths of those ``keys`` whose entry depth is known (:func:`_entries`), all in
    one statement: from the first depth ``cache`` does not hold, each node on the path
    and beside it down to CACHE_DEPTH (for the cache), then only the siblings down to
    the entry and the entry itself. A path the cache ends is whole at once. A key whose
    entry is not where it was expected (it cannot be, on a map the folds wrote) is left
    out, for :func:`_map_paths`."""
    paths: dict[bytes, dict[NodeId, bytes]] = {}
    if cache is None:
        return paths
    plans: dict[bytes, tuple[dict[NodeId, bytes], int, int]] = {}
    wanted: dict[bytes, NodeId] = {}
    top = CACHE_DEPTH
    for key in keys:
        k = int.from_bytes(key, "big")
        out: dict[NodeId, bytes] = {}
        start = _cached_path(k, cache, out)
        if start < 0:
            paths[key] = out
            continue
        end = depths.get(key, -1)
        if end < start:
            continue
        plans[key] = (out, start, end)
        for depth in range(start, end + 1):
            prefix = k >> (KEY_BITS - depth)
            if depth <= top or depth == end:
                wanted[map_node_id((depth, prefix))] = (depth, prefix)
            if depth:
                wanted[map_node_id((depth, prefix ^ 1))] = (depth, prefix ^ 1)
    got = yield from _newest_of(wanted, size)
    cache.nodes.update((n, got.get(n)) for n in wanted.values() if n[0] <= top)
    for key, (out, start, end) in plans.items():
        k = int.from_bytes(key, "big")
        entry = got.get((end, k >> (KEY_BITS - end)))
        if entry is None or entry[:33] != b"\x10" + key:
            continue
        for depth in range(start, end):
            here = (depth, k >> (KEY_BITS - depth))
            rec = got.get(here) if depth <= top else _INNER
            if rec is None or rec[:1] != _INNER:
                break
            out[here] = rec
        else:
            for depth in range(max(start, 1), end + 1):
                beside = (depth, (k >> (KEY_BITS - depth)) ^ 1)
                if (sib := got.get(beside)) is not None:
                    out[beside] = sib
            out[(end, k >> (KEY_BITS - end))] = entry
            paths[key] = out
    return paths


def answers(
    vrf: VRFSecretKey, asks: list[tuple[str, bool, LogProof]], size: int,
    cache: AppendCache | None,
) -> Txn[list[bytes]]:
    """The encoded answers (a lookup, or with ``True`` a history) of ``asks`` at tree
    size ``size``, each built on its log proof: read as :func:`snapshots` reads, built
    where they are read (no hand-off of the rows between threads)."""
    found = yield from snapshots(vrf, [(u, h) for u, h, _ in asks], size, cache)
    tops = cache.proofs if cache is not None and cache.size == size else None
    out = []
    for (user, history, part), stores in zip(asks, found, strict=True):
        entry, key = entry_proof(part, stores, user, tops)
        if history:
            out.append(history_response(entry, key, stores).encode())
        else:  # the log's part encoded once per checkpoint and client size
            out.append(lookup_response(entry, key, stores).encode_after(part.encoded))
    return out


_LATEST: dict[int, str] = {}


def _latest_records(keys: list[bytes], size: int) -> Txn[dict[bytes, VersionRecord]]:
    """The latest version below ``size`` of each of ``keys`` that has one."""
    out: dict[bytes, VersionRecord] = {}
    for i in range(0, len(keys), _CHUNK // 2):
        part = _padded(keys[i:i + _CHUNK // 2])
        sql = _LATEST.get(len(part))
        if sql is None:
            sql = _LATEST[len(part)] = " UNION ALL ".join(
                "SELECT * FROM (SELECT map_key, version, state, opening, commitment "  # noqa: S608
                "FROM kt_versions WHERE map_key=? AND epoch<? "
                f"ORDER BY version DESC LIMIT 1) AS v{j}"  # an alias per probe, numbers only
                for j in range(len(part))
            )
        found = yield rows(sql, *(p for key in part for p in (key, size)))
        for r in found:
            out[blob(r[0])] = VersionRecord(version=int(r[1]), state=blob(r[2]),
                                            opening=blob(r[3]), commitment=blob(r[4]))
    return out


def snapshot(
    vrf: VRFSecretKey, user: str, size: int, since: int, *, every_version: bool,
    cache: AppendCache | None = None, with_log: bool = True,
) -> Txn[KTStores]:
    """What kt/prover.py's KTLog reads to answer a lookup (``every_version``: a history)
    of ``user`` at tree size ``size`` with a consistency proof from ``since``; the upper
    map nodes from ``cache`` if it is of that size (lookups at one checkpoint share it).
    Without ``with_log``: no log leaf or node (for kt/prover.py's ``entry_proof``)."""
    c = cache if cache is not None and cache.size == size else None
    known = c.labels.get(user) if c is not None else None
    beta, pi = known if known is not None else (yield from label(vrf, user, keep=False))
    if c is not None and known is None and len(c.labels) < _MAX_LABELS:
        c.labels[user] = (beta, pi)
    key = map_key(beta)
    leaf: bytes | None = None
    nodes: dict[NodeId, bytes] = {}
    if with_log:
        leaf, nodes = yield from _log_part(size, since, c)
    path = yield from _map_path(key, size, c)
    if every_version:
        n = yield from _versions(key, size)
        records = yield from _records(key, 0, n)
    else:  # the latest version only: its number and record in one probe
        last = yield one(
            "SELECT version, state, opening, commitment FROM kt_versions "
            "WHERE map_key=? AND epoch<? ORDER BY version DESC LIMIT 1", key, size)
        n = 0 if last is None else int(last[0]) + 1
        records = {} if last is None else {(key, n - 1): VersionRecord(
            version=n - 1, state=blob(last[1]), opening=blob(last[2]),
            commitment=blob(last[3]))}
    vwanted = set(root_nodes(n)) | (inclusion_nodes(n - 1, n) if n else set())
    vnodes = yield from _version_nodes(key, vwanted)
    return KTStores(
        log_nodes=nodes, leaves=_Sized(size, {} if leaf is None else {size - 1: leaf}),
        map_nodes=path, version_nodes=vnodes, records=records, sizes={key: n},
        labels={user: (beta, pi)},
    )


def _log_part(
    size: int, since: int, c: AppendCache | None
) -> Txn[tuple[bytes | None, dict[NodeId, bytes]]]:
    """The last leaf at ``size`` and the log nodes of its proofs (from ``c`` if known)."""
    leaf = c.leaf if c is not None else None
    if leaf is None:
        found = yield one("SELECT leaf FROM kt_leaves WHERE idx=?", size - 1)
        leaf = None if found is None else blob(found[0])
        if c is not None:
            c.leaf = leaf
    wanted = set(root_nodes(size)) | inclusion_nodes(size - 1, size)
    wanted |= consistency_nodes(since, size)
    nodes = {n: c.log[n] for n in wanted if n in c.log} if c is not None else {}
    if len(nodes) < len(wanted):
        nodes.update((yield from log_nodes(wanted - nodes.keys())))
        if c is not None:
            c.log.update(nodes)
    return leaf, nodes


def log_part(
    size: int, since: int, cache: AppendCache | None
) -> Txn[tuple[bytes | None, dict[NodeId, bytes]]]:
    """The last leaf at ``size`` (None if there is none) and every log node of its
    inclusion proof and of the consistency proof from ``since``."""
    c = cache if cache is not None and cache.size == size else None
    return (yield from _log_part(size, since, c))


# --- the append ---------------------------------------------------------------------------


def _device(raw: bytes) -> DeviceEntry:
    cert = DeviceCertificate.decode(raw)
    return DeviceEntry(device_id=cert.device_id, signing_key=cert.keys.signing_key)


def account_state(
    user: str, previous: bytes | None, account_key: bytes | None, recovery_key: bytes | None
) -> Txn[AccountState]:
    """The account's state as the directory holds it now: its account key, its recovery
    key (given, else the previous version's, else none yet) and its active devices'
    signing keys; a deleted account lists no device."""
    found = yield one("SELECT account_key, deleted_at FROM accounts WHERE user_id=?", user)
    devices = yield rows(
        "SELECT certificate FROM devices WHERE user_id=? AND revoked_at IS NULL ORDER BY dev",
        user,
    )
    rk = recovery_key
    if rk is None and previous is not None:
        try:
            rk = AccountState.decode(previous).recovery_key
        except DecodeError:  # pragma: no cover - every stored state was encoded here
            rk = None
    deleted = found is None or found[1] is not None
    return AccountState(
        account_key=account_key if account_key is not None else blob(found[0]) if found else b"",
        recovery_key=rk if rk is not None else NO_RECOVERY_KEY,
        devices=() if deleted else tuple(_device(blob(r[0])) for r in devices),
        deleted=deleted,
    )


def record(
    writer: KTWriter, user: str, kind: ChangeKind, now_ms: int, *,
    account_key: bytes | None = None, recovery_key: bytes | None = None,
) -> Txn[None]:
    """Queue ``user``'s directory change for the log, inside the caller's transaction,
    after its change to the accounts and devices tables: one ``kt_pending`` row with the
    account's state as those tables hold it now. :func:`fold` appends it (a new version
    of the account and one log leaf) with the other changes queued before the next
    checkpoint; the row is as durable as the change, so a crash before the fold loses
    nothing (the next fold takes it).

    ``account_key`` / ``recovery_key``: the keys a succession or recovery statement
    installs (default: the account row's key, and the recovery key of the previous
    version, filled in by the fold).
    """
    # One queue for every node: rows commit in the order of their numbers, so the
    # fold's ``ORDER BY seq`` is the order the changes were made in.
    yield _QUEUE_LOCK
    state = yield from account_state(user, None, account_key, recovery_key)
    yield execute(
        "INSERT INTO kt_pending(username, kind, ts, state, inherit_rk) VALUES (?, ?, ?, ?, ?)",
        user, int(kind), now_ms, state.encode(), int(recovery_key is None),
    )


def pending_unlabelled(limit: int) -> Txn[list[str]]:
    """Names among the first ``limit`` queued changes that have no stored VRF label yet
    (new accounts): :func:`fold` needs them, and a caller computes them before its
    transaction (a VRF evaluation costs more than the rest of a change's fold)."""
    found = yield rows(
        "SELECT DISTINCT p.username FROM (SELECT username FROM kt_pending ORDER BY seq "
        "LIMIT ?) AS p LEFT JOIN kt_labels AS l ON l.username = p.username "
        "WHERE l.username IS NULL",
        limit,
    )
    return [str(r[0]) for r in found]


def pending_count() -> Txn[int]:
    n = yield val("SELECT count(*) FROM kt_pending")
    return int(n or 0)


def fold(writer: KTWriter, limit: int) -> Txn[list[LogLeaf]]:
    """Append the first ``limit`` queued changes to the log and the map in one
    transaction, in the order they were queued; return their leaves.

    Each change still gets its own version and its own leaf, whose map root is the
    map's root right after that change (so an auditor replays the leaves one by one as
    before), but the reads and writes are shared: every key's map path is read once,
    a map node several changes rewrote is stored once (its last record, under the
    batch's last epoch: a checkpoint is only ever taken between two folds, so no read
    is ever made at a size inside the batch), and each statement runs once for all.
    """
    yield _LOCK
    queued = yield rows(
        "SELECT seq, username, kind, ts, state, inherit_rk FROM kt_pending ORDER BY seq LIMIT ?",
        limit,
    )
    if not queued:
        return []
    size = yield from log_size()
    users = list(dict.fromkeys(str(r[1]) for r in queued))
    labels: dict[str, tuple[bytes, bytes]] = {}
    for i in range(0, len(users), _CHUNK):
        part = _padded(users[i:i + _CHUNK])
        found = yield rows(
            f"SELECT username, label FROM kt_labels WHERE username IN ({_marks(len(part))})",  # noqa: S608
            *part,
        )
        labels.update((str(r[0]), (blob(r[1]), b"")) for r in found)
    new_labels = []
    for u in users:
        if u not in labels:
            known = writer.labels.pop(u, None)
            labels[u] = known if known is not None else writer.vrf.evaluate(u.encode("utf-8"))
            new_labels.append((u, *labels[u]))
    if new_labels:
        yield many("INSERT INTO kt_labels(username, label, proof) VALUES (?, ?, ?)", new_labels)
    keys = {u: map_key(labels[u][0]) for u in users}
    unique = list(dict.fromkeys(keys.values()))
    latest = (yield from _latest_records(unique, size)) if size else {}
    sizes = {k: r.version + 1 for k, r in latest.items()}
    states = {k: r.state for k, r in latest.items()}
    nodes = yield from log_nodes(root_nodes(size))
    border = tuple(nodes[x] for x in root_nodes(size))
    cache = writer.cache
    cache.check(size, border)
    # An empty log has an empty map and no versions: nothing to read (a bulk load's
    # first fold).
    paths = (yield from _map_paths(unique, size, cache)) if size else {k: {} for k in unique}
    # The map's nodes in a plain dict (the hot loop reads it ~40 times per change);
    # what changed is found by comparing with what was read.
    work: dict[NodeId, bytes] = {}
    for p in paths.values():
        work.update(p)
    read = dict(work)
    vbase: VersionNodeMap = {}
    for k, n in sizes.items():
        vbase.update((yield from _version_nodes(k, root_nodes(n))))
    vnodes = Overlay(vbase)
    records: Overlay[tuple[bytes, int], VersionRecord] = Overlay({})
    directory = Directory(work, vnodes, records, sizes)
    log = LogWriter(size, border)
    leaves: list[LogLeaf] = []
    log_writes: list[tuple[int, bytes]] = []
    for i, (_, user, kind, ts, raw, inherit) in enumerate(queued):
        key = keys[str(user)]
        state = blob(raw)
        previous = states.get(key)
        if inherit and previous is not None:
            state = _inherit_recovery_key(state, previous)
        leaf = directory.append(key, state, kind=ChangeKind(int(kind)), epoch=size + i,
                                timestamp_ms=int(ts), rng=writer.rng)
        states[key] = state
        leaves.append(leaf)
        log_writes.extend((node_id(x), h) for x, h in log.append(leaf.hash()))
    end = size + len(queued)
    yield many("INSERT INTO kt_leaves(idx, leaf) VALUES (?, ?)",
               [(leaf.epoch, leaf.encode()) for leaf in leaves])
    yield many("INSERT INTO kt_log_nodes(node, hash) VALUES (?, ?)", log_writes)
    # As of the new size, if this transaction commits (else the next fold sees the
    # log's size or border differ, and starts over).
    writes = {x: rec for x, rec in work.items() if read.get(x) != rec}
    cache.advance(end, log.border, writes)
    # Each table's rows in its key's order: the B-tree pages are filled in turn.
    yield many("INSERT INTO kt_map_nodes(node, epoch, record) VALUES (?, ?, ?)",
               sorted((map_node_id(x), end - 1, rec) for x, rec in writes.items()))
    yield many("INSERT INTO kt_version_nodes(map_key, node, hash) VALUES (?, ?, ?)",
               sorted((k, node_id((lv, i)), h) for (k, lv, i), h in vnodes.writes.items()))
    epochs = {(leaf.map_key, leaf.account_version): leaf.epoch for leaf in leaves}
    yield many(
        "INSERT INTO kt_versions(map_key, version, epoch, state, opening, commitment) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        sorted((k, v, epochs[(k, v)], r.state, r.opening, r.commitment)
               for (k, v), r in records.writes.items()),
    )
    yield execute("DELETE FROM kt_pending WHERE seq<=?", int(queued[-1][0]))
    return leaves


def _inherit_recovery_key(state: bytes, previous: bytes) -> bytes:
    """``state`` with the recovery key of the account's previous version (a change that
    installs none keeps the one there was)."""
    try:
        rk = AccountState.decode(previous).recovery_key
    except DecodeError:  # pragma: no cover - every stored state was encoded here
        return state
    return dataclasses.replace(AccountState.decode(state), recovery_key=rk).encode()


# --- checkpoints and cosignatures -----------------------------------------------------------


def store_checkpoint(size: int, note: bytes, now_ms: int) -> Txn[None]:
    yield execute(
        "INSERT INTO kt_checkpoints(size, signed_note, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        size, note, now_ms,
    )


def store_cosignature(size: int, witness: str, timestamp_s: int, line: str) -> Txn[None]:
    yield execute(
        "INSERT INTO kt_cosignatures(size, witness, ts, line) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        size, witness, timestamp_s, line,
    )


def latest_checkpoint() -> Txn[tuple[int, bytes, list[str]] | None]:
    """The largest stored checkpoint: (size, the log-signed note, the newest cosignature
    line of each witness that cosigned it)."""
    found = yield one("SELECT size, signed_note FROM kt_checkpoints ORDER BY size DESC LIMIT 1")
    if found is None:
        return None
    size = int(found[0])
    lines = yield rows(
        "SELECT witness, line FROM kt_cosignatures WHERE size=? ORDER BY witness, ts", size
    )
    newest = {str(r[0]): str(r[1]) for r in lines}  # later ts overwrite earlier ones
    return size, blob(found[1]), list(newest.values())
