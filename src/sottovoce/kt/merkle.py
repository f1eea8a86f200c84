"""RFC 9162 §2.1 Merkle tree hashing, tree heads and proofs for an append-only log.

    MTH({})     = SHA-256()                         the empty tree
    MTH({d0})   = SHA-256(0x00 || d0)               a leaf
    MTH(D[n])   = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                  k = the largest power of two smaller than n

Storage model: a log of a million leaves cannot be held in memory for every
proof, so the writer (:class:`LogWriter`) keeps only the *compact range* -- the
hashes of the perfect subtrees along the right border, at most log2(n) of them
-- and hands back, for each appended leaf, the perfect-subtree nodes it
completed. The server stores those nodes keyed by (level, index): node (l, i)
is the hash of leaves [i*2^l, (i+1)*2^l). Every tree head and proof is a
function of such nodes, so generating one needs O(log n) lookups (O(log^2 n) in
the worst case for a proof), never the leaves.

Each step is split in two so an asynchronous store can fetch in one query:
``*_nodes(...)`` names the nodes needed, and the matching function builds the
result from a mapping of those nodes (:class:`NodeSource`). Verification
(:func:`verify_inclusion`, :func:`verify_consistency`) follows the algorithms of
RFC 9162 §2.1.3.2 and §2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from sottovoce.errors import UsageError
from sottovoce.kt.errors import MalformedProof, ProofMismatch
from sottovoce.limits import KT_MAX_LOG_SIZE

HASH_SIZE = 32
#: RFC 9162 §2.1.1: the hash of an empty tree is the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: A perfect subtree: (level, index) covers leaves [index << level, (index + 1) << level).
NodeId = tuple[int, int]


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d}) = HASH(0x00 || d)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: HASH(0x01 || MTH(left) || MTH(right))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n`` > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_size(size: int) -> None:
    if not 0 <= size <= KT_MAX_LOG_SIZE:
        raise UsageError("tree size out of range")


# --- perfect-subtree decomposition ----------------------------------------------


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The perfect subtrees whose concatenation is leaves [start, end), left to right.

    ``start`` must be aligned as in every range RFC 9162's recursion visits
    (a multiple of the largest power of two not above ``end - start``), which
    holds for the ranges the proof functions below ask for.
    """
    out: list[NodeId] = []
    while start < end:
        size = end - start
        level = size.bit_length() - 1
        # The largest aligned perfect subtree starting at ``start`` that fits.
        while start & ((1 << level) - 1):
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


def fold_range(nodes: Sequence[bytes]) -> bytes:
    """MTH of a range from its perfect subtrees (left to right): RFC 9162 §2.1.1 folds
    the smaller, later subtrees first because the tree is left-balanced."""
    if not nodes:
        return EMPTY_ROOT
    acc = nodes[-1]
    for left in reversed(nodes[:-1]):
        acc = node_hash(left, acc)
    return acc


class NodeSource(Protocol):
    """Where proof generation reads perfect-subtree hashes (a dict in tests, a table
    keyed by (level, index) on the server)."""

    def __getitem__(self, key: NodeId, /) -> bytes: ...


def _range_hash(start: int, end: int, nodes: NodeSource) -> bytes:
    return fold_range([nodes[n] for n in range_nodes(start, end)])


# --- tree heads ---------------------------------------------------------------------


def root_nodes(size: int) -> list[NodeId]:
    _check_size(size)
    return range_nodes(0, size)


def root_hash(size: int, nodes: NodeSource) -> bytes:
    """MTH(D[size]) from stored nodes."""
    return _range_hash(0, size, nodes) if size else EMPTY_ROOT


# --- inclusion proofs: RFC 9162 §2.1.3.1 ----------------------------------------------


def _inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """PATH(m, D[n]) as the leaf ranges whose MTHs form it, from the leaf upwards."""
    out: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        mid = start + k
        if index < mid:
            out.append((mid, end))
            end = mid
        else:
            out.append((start, mid))
            start = mid
    out.reverse()
    return out


def inclusion_nodes(index: int, size: int) -> set[NodeId]:
    """The stored nodes :func:`inclusion_proof` reads."""
    _check_size(size)
    if not 0 <= index < size:
        raise UsageError("leaf index out of range")
    return {n for a, b in _inclusion_ranges(index, size) for n in range_nodes(a, b)}


def inclusion_proof(index: int, size: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 §2.1.3.1: the audit path of leaf ``index`` in the tree of ``size`` leaves."""
    inclusion_nodes(index, size)  # validates the arguments
    return [_range_hash(a, b, nodes) for a, b in _inclusion_ranges(index, size)]


# --- consistency proofs: RFC 9162 §2.1.4.1 --------------------------------------------


def _consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true) as leaf ranges, in proof order.

    SUBPROOF puts its recursive part before the sibling it adds, so the proof
    lists the innermost subtree first and the top-level sibling last.
    """
    siblings: list[tuple[int, int]] = []
    m, start, end, whole_tree = first, 0, second, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            siblings.append((start + k, end))
            end = start + k
        else:
            siblings.append((start, start + k))
            m -= k
            start += k
            whole_tree = False
    siblings.reverse()
    # SUBPROOF(m, D[m], b): nothing when the old tree is this subtree (b true), else its MTH.
    return siblings if whole_tree else [(start, end), *siblings]


def consistency_nodes(first: int, second: int) -> set[NodeId]:
    _check_size(second)
    if not 0 <= first <= second:
        raise UsageError("consistency proof sizes out of order")
    if first in (0, second):
        return set()
    return {n for a, b in _consistency_ranges(first, second) for n in range_nodes(a, b)}


def consistency_proof(first: int, second: int, nodes: NodeSource) -> list[bytes]:
    """RFC 9162 §2.1.4.1: the proof that the tree of ``second`` leaves extends the one
    of ``first`` leaves. Empty when ``first`` is 0 or equals ``second``."""
    consistency_nodes(first, second)
    if first in (0, second):
        return []
    return [_range_hash(a, b, nodes) for a, b in _consistency_ranges(first, second)]


# --- verification: RFC 9162 §2.1.3.2 and §2.1.4.2 ---------------------------------------


def _check_hashes(what: str, hashes: Iterable[bytes]) -> None:
    for h in hashes:
        if not isinstance(h, bytes) or len(h) != HASH_SIZE:
            raise MalformedProof(f"{what} has a hash of the wrong length")


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _walk(fn: int, sn: int, path: Sequence[bytes], what: str) -> Iterator[tuple[bytes, bool]]:
    """The index walk RFC 9162 §2.1.3.2 and §2.1.4.2 share: each hash of ``path`` with
    whether it is a left sibling (``fn`` odd, or ``fn == sn``: hash it in on the left).
    Raises :class:`MalformedProof` once the path proves longer or shorter than the walk."""
    for p in path:
        if sn == 0:
            raise MalformedProof(f"{what} proof is too long")
        left = bool(fn & 1) or fn == sn
        yield p, left
        if left and not fn & 1:
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MalformedProof(f"{what} proof is too short")


def root_from_inclusion_proof(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes:
    """Steps 1-4 of RFC 9162 §2.1.3.2: the root the proof leads to.

    Raises :class:`MalformedProof` when the proof's shape cannot fit (index out
    of range, too many or too few hashes, hashes of the wrong length).
    """
    _check_hashes("inclusion proof", [leaf, *proof])
    if not 0 <= index < size or size > KT_MAX_LOG_SIZE:
        raise MalformedProof("leaf index is outside the tree")
    r = leaf
    for p, left in _walk(index, size - 1, proof, "inclusion"):
        r = node_hash(p, r) if left else node_hash(r, p)
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise unless ``leaf`` (a leaf hash) is leaf ``index`` of the
    tree of ``size`` leaves whose root is ``root``."""
    _check_hashes("root", [root])
    if not _equal(root_from_inclusion_proof(index, size, leaf, proof), root):
        raise ProofMismatch("inclusion proof does not lead to the root")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: raise unless the tree (``second``, ``second_root``) extends
    (``first``, ``first_root``).

    Equal sizes need an empty proof and equal roots. A proof from the empty tree
    is refused: it says nothing, and a client that has seen no checkpoint has
    nothing to check (as in transparency-dev/merkle).
    """
    _check_hashes("consistency proof", proof)
    if not 0 <= first <= second or second > KT_MAX_LOG_SIZE:
        raise MalformedProof("consistency proof sizes are out of order")
    if first == 0:
        raise MalformedProof("a consistency proof from the empty tree proves nothing")
    if first == second:
        if proof:
            raise MalformedProof("equal tree sizes take an empty consistency proof")
        if not _equal(first_root, second_root):
            raise ProofMismatch("two roots of the same tree size differ")
        return
    _check_hashes("tree head", [first_root, second_root])
    # Step 1: an empty path fails.
    if not proof:
        raise MalformedProof("consistency proof is empty")
    path = list(proof)
    # Step 2: if first is an exact power of 2, prepend first_hash to the path.
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    # Step 3: fn = first - 1, sn = second - 1.
    fn, sn = first - 1, second - 1
    # Step 4: if LSB(fn) is set, right-shift both until it is not.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5: fr = sr = the first value in the path.
    fr = sr = path[0]
    # Step 6: for each subsequent value c in the path; step 7: sn must end at 0 ...
    for c, left in _walk(fn, sn, path[1:], "consistency"):
        if left:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
        else:
            sr = node_hash(sr, c)
    # ... and both roots must match.
    if not (_equal(fr, first_root) and _equal(sr, second_root)):
        raise ProofMismatch("consistency proof does not lead to both roots")


# --- the writer: compact range plus the nodes to store ------------------------------------


class LogWriter:
    """Appends leaves to a log, keeping only its compact range in memory.

    ``append`` returns the perfect-subtree nodes the new leaf completed
    (level 0 first); the caller stores them, in the same transaction as the
    leaf, in a table keyed by (level, index). ``root`` needs no lookup.
    To resume after a restart, pass the size and its :func:`root_nodes` hashes.
    """

    __slots__ = ("_border", "_size")

    def __init__(self, size: int = 0, border: Sequence[bytes] = ()) -> None:
        _check_size(size)
        if len(border) != size.bit_count():
            raise UsageError("the compact range needs one hash per set bit of the size")
        _check_hashes("compact range", border)
        self._size = size
        self._border = list(border)

    @property
    def size(self) -> int:
        return self._size

    @property
    def border(self) -> tuple[bytes, ...]:
        """The hashes of :func:`root_nodes` of the current size, left to right."""
        return tuple(self._border)

    def root(self) -> bytes:
        return fold_range(self._border)

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Append one leaf hash; return the new nodes to store."""
        _check_hashes("leaf", [leaf])
        if self._size >= KT_MAX_LOG_SIZE:
            raise UsageError("the log is full")
        index, level, h = self._size, 0, leaf
        written = [((0, index), h)]
        # Every trailing 1 bit of the old size is a perfect subtree that now pairs up.
        while index & 1:
            h = node_hash(self._border.pop(), h)
            index >>= 1
            level += 1
            written.append(((level, index), h))
        self._border.append(h)
        self._size += 1
        return written

    def copy(self) -> LogWriter:
        return LogWriter(self._size, self._border)


class MemoryNodes(dict[NodeId, bytes]):
    """A :class:`NodeSource` in memory, for tests, benchmarks and auditing witnesses."""

    def store(self, written: Iterable[tuple[NodeId, bytes]]) -> None:
        for node, h in written:
            self[node] = h


def nodes_for(wanted: Iterable[NodeId], nodes: Mapping[NodeId, bytes]) -> dict[NodeId, bytes]:
    """The subset of ``nodes`` a proof needs; raises :class:`UsageError` naming none of
    them if one is missing (the store is behind the size it was asked about)."""
    try:
        return {n: nodes[n] for n in wanted}
    except KeyError:
        raise UsageError("a stored node the proof needs is missing") from None
