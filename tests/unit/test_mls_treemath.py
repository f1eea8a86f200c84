"""RFC 9420 §4.1 paths and appendix C helpers beyond the tree-math vectors."""

from __future__ import annotations

import pytest

from sottovoce.errors import UsageError
from sottovoce.mls import treemath


def _common_ancestor_semantic(x: int, y: int, n: int) -> int:
    # Appendix C common_ancestor_semantic, written out as the reference.
    dx = {x, *treemath.direct_path(x, n)}
    dy = {y, *treemath.direct_path(y, n)}
    return min(dx & dy, key=treemath.level)


def test_appendix_c_common_ancestor_matches_the_semantic_definition() -> None:
    n = 16
    for x in range(treemath.node_width(n)):
        for y in range(treemath.node_width(n)):
            assert treemath.common_ancestor(x, y) == _common_ancestor_semantic(x, y, n)


def test_rfc9420_4_1_2_filtered_direct_path_example() -> None:
    # The five-member tree of §4.1.2: leaves A B _ _ E F G _, no unmerged leaves,
    # so a node's resolution is empty exactly when no member sits below it.
    n = 8
    members = {0, 1, 4, 5, 6}

    def resolution_is_empty(node: int) -> bool:
        return members.isdisjoint(treemath.subtree_leaves(node))

    a, e, g = (treemath.leaf_to_node(i) for i in (0, 4, 6))
    assert treemath.direct_path(a, n) == (1, 3, 7)  # T, U, W
    assert treemath.copath(a, n) == (2, 5, 11)  # B, V, Y
    assert treemath.filtered_direct_path(a, n, resolution_is_empty) == (1, 7)  # T, W
    assert treemath.filtered_direct_path(e, n, resolution_is_empty) == (9, 11, 7)  # X, Y, W
    assert treemath.filtered_direct_path(g, n, resolution_is_empty) == (11, 7)  # Y, W
    assert treemath.path_with_copath(g, n) == ((13, 14), (11, 9), (7, 3))


def test_leaf_node_conversions_and_subtrees() -> None:
    assert treemath.leaf_to_node(5) == 10
    assert treemath.node_to_leaf(10) == 5
    assert treemath.is_leaf(10) and not treemath.is_leaf(11)
    assert treemath.subtree_leaves(7) == range(0, 8)
    assert treemath.subtree_leaves(11) == range(4, 8)
    assert treemath.subtree_leaves(6) == range(3, 4)
    with pytest.raises(UsageError):
        treemath.node_to_leaf(3)
    with pytest.raises(UsageError):
        treemath.left(4)
    with pytest.raises(UsageError):
        treemath.root(6)  # not a full tree
    with pytest.raises(UsageError):
        treemath.parent(-1, 4)
    assert treemath.node_width(0) == 0
