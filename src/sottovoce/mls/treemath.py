"""Array-based tree math on node indices (RFC 9420 §4.1, §7.8, appendix C).

Leaves sit at even node indices (leaf ``i`` at node ``2*i``), parents at odd
ones; a node's level is the number of trailing one bits of its index::

    level 2                 3
                        .---+---.
    level 1             1       5
                       / \\     / \\
    level 0           0   2   4   6
    leaf index        0   1   2   3

RFC 9420 trees are always full (§7.7): ``n_leaves`` is a power of two, so the
root is ``n_leaves - 1`` and every parent has two children inside the tree.
Every function here works on plain ``int``s with bit operations; the per-leaf
paths are cached because the group state asks for them on every commit.
Out-of-range input (a node outside the tree, a tree size that is not a power of
two, a leaf asked for its children, the root asked for its parent) raises
:class:`UsageError`: indices from the wire must be checked against the tree by
the caller before they reach this module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from sottovoce.errors import UsageError
from sottovoce.limits import MLS_MAX_LEAVES

__all__ = [
    "common_ancestor",
    "copath",
    "direct_path",
    "filtered_direct_path",
    "is_leaf",
    "leaf_to_node",
    "left",
    "level",
    "node_to_leaf",
    "node_width",
    "parent",
    "path_with_copath",
    "right",
    "root",
    "sibling",
    "subtree_leaves",
]


# --- validation ----------------------------------------------------------------


def _check_n_leaves(n_leaves: int) -> None:
    # RFC 9420 §7.7: the tree is always full, so its size is a power of two.
    if not 0 < n_leaves <= MLS_MAX_LEAVES or n_leaves & (n_leaves - 1):
        raise UsageError("tree size must be a power of two within MLS_MAX_LEAVES")


def _check_node(x: int, n_leaves: int) -> None:
    _check_n_leaves(n_leaves)
    if not 0 <= x < 2 * n_leaves - 1:
        raise UsageError("node index outside the tree")


def _check_any_node(x: int) -> None:
    if not 0 <= x < 2 * MLS_MAX_LEAVES - 1:
        raise UsageError("node index out of range")


# --- single nodes ----------------------------------------------------------------


def level(x: int) -> int:
    """Leaves are level 0; a parent is one above its children (count of trailing 1 bits)."""
    _check_any_node(x)
    return ((x ^ (x + 1)).bit_length()) - 1


def is_leaf(x: int) -> bool:
    _check_any_node(x)
    return x & 1 == 0


def leaf_to_node(leaf: int) -> int:
    """Node index of leaf ``leaf`` (RFC 9420 appendix C: the n-th leaf is node 2n)."""
    if not 0 <= leaf < MLS_MAX_LEAVES:
        raise UsageError("leaf index out of range")
    return 2 * leaf


def node_to_leaf(x: int) -> int:
    """Leaf index of leaf node ``x``; a parent node is a usage error."""
    _check_any_node(x)
    if x & 1:
        raise UsageError("node is not a leaf")
    return x >> 1


def node_width(n_leaves: int) -> int:
    """Number of nodes in a tree of ``n_leaves`` leaves (0 for the empty tree)."""
    if n_leaves == 0:
        return 0
    _check_n_leaves(n_leaves)
    return 2 * n_leaves - 1


def root(n_leaves: int) -> int:
    # For a full tree, (1 << log2(width)) - 1 is simply n_leaves - 1.
    _check_n_leaves(n_leaves)
    return n_leaves - 1


def left(x: int) -> int:
    k = level(x)
    if k == 0:
        raise UsageError("a leaf has no children")
    return x ^ (1 << (k - 1))


def right(x: int) -> int:
    k = level(x)
    if k == 0:
        raise UsageError("a leaf has no children")
    return x ^ (3 << (k - 1))


def parent(x: int, n_leaves: int) -> int:
    _check_node(x, n_leaves)
    if x == n_leaves - 1:
        raise UsageError("the root has no parent")
    return _parent(x)


def _parent(x: int) -> int:
    # Appendix C: set bit k, then clear bit k+1 if it was set (x = 0b..b01..1).
    k = ((x ^ (x + 1)).bit_length()) - 1
    b = (x >> (k + 1)) & 1
    return (x | (1 << k)) ^ (b << (k + 1))


def sibling(x: int, n_leaves: int) -> int:
    """The other child of ``x``'s parent."""
    p = parent(x, n_leaves)
    # The sibling mirrors x across its parent.
    return 2 * p - x


def subtree_leaves(x: int) -> range:
    """Leaf indices below (or at) node ``x``, in order."""
    k = level(x)
    # The low k bits of a level-k node are all ones; clearing them gives its leftmost leaf.
    first = (x - ((1 << k) - 1)) >> 1
    return range(first, first + (1 << k))


def common_ancestor(x: int, y: int) -> int:
    """Lowest node that is ``x`` or ``y`` or in both direct paths (appendix C).

    In a full tree this does not depend on the tree size.
    """
    _check_any_node(x)
    _check_any_node(y)
    lx, ly = level(x) + 1, level(y) + 1
    if lx <= ly and x >> ly == y >> ly:
        return y
    if ly <= lx and x >> lx == y >> lx:
        return x
    k = 0
    while x != y:
        x, y = x >> 1, y >> 1
        k += 1
    return (x << k) + (1 << (k - 1)) - 1


# --- paths --------------------------------------------------------------------


@lru_cache(maxsize=8192)
def _direct_path(x: int, n_leaves: int) -> tuple[int, ...]:
    r = n_leaves - 1
    out: list[int] = []
    while x != r:
        x = _parent(x)
        out.append(x)
    return tuple(out)


@lru_cache(maxsize=8192)
def _copath(x: int, n_leaves: int) -> tuple[int, ...]:
    out: list[int] = []
    prev = x
    for p in _direct_path(x, n_leaves):
        out.append(2 * p - prev)
        prev = p
    return tuple(out)


def direct_path(x: int, n_leaves: int) -> tuple[int, ...]:
    """Ancestors of ``x`` from its parent up to the root (empty for the root)."""
    _check_node(x, n_leaves)
    return _direct_path(x, n_leaves)


def copath(x: int, n_leaves: int) -> tuple[int, ...]:
    """Sibling of ``x`` then siblings of each direct-path node below the root."""
    _check_node(x, n_leaves)
    return _copath(x, n_leaves)


def path_with_copath(x: int, n_leaves: int) -> tuple[tuple[int, int], ...]:
    """``(direct-path node, its child on x's copath)`` pairs, from leaf to root.

    This is the index skeleton of the filtered direct path (§4.1.2): the tree
    module drops each pair whose copath child has an empty resolution.
    """
    _check_node(x, n_leaves)
    return tuple(zip(_direct_path(x, n_leaves), _copath(x, n_leaves), strict=True))


def filtered_direct_path(
    x: int, n_leaves: int, resolution_is_empty: Callable[[int], bool]
) -> tuple[int, ...]:
    """RFC 9420 §4.1.2 filtered direct path, given a resolution oracle from the tree.

    ``resolution_is_empty(node)`` must count unmerged leaves toward the
    resolution, as the RFC requires; only the tree holds that information.
    """
    return tuple(p for p, c in path_with_copath(x, n_leaves) if not resolution_is_empty(c))
