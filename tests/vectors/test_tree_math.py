"""RFC 9420 appendix C array-based tree math against mls/tree-math.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sottovoce.errors import UsageError
from sottovoce.mls import treemath
from tests.vectors.loader import params

VECTOR_FILE = "mls/tree-math.json"


def _check(expected: int | None, fn: Callable[[], int]) -> None:
    # A null in the vector means "no such node": our function must refuse it.
    if expected is None:
        with pytest.raises(UsageError):
            fn()
    else:
        assert fn() == expected


@pytest.mark.parametrize("vector", params(VECTOR_FILE, lambda v: f"n{v['n_leaves']}"))
def test_rfc9420_appendix_c_tree_math(vector: dict[str, Any]) -> None:
    """n_nodes, root, and left/right/parent/sibling of every node match the vector."""
    n = vector["n_leaves"]
    width = treemath.node_width(n)
    assert width == vector["n_nodes"]
    root = treemath.root(n)
    assert root == vector["root"]
    for x in range(width):
        _check(vector["left"][x], lambda x=x: treemath.left(x))  # type: ignore[misc]
        _check(vector["right"][x], lambda x=x: treemath.right(x))  # type: ignore[misc]
        _check(vector["parent"][x], lambda x=x: treemath.parent(x, n))  # type: ignore[misc]
        _check(vector["sibling"][x], lambda x=x: treemath.sibling(x, n))  # type: ignore[misc]
        # §4.1.2: the direct path follows parent links to the root; the copath
        # is the sibling of x and of each direct-path node below the root.
        path = treemath.direct_path(x, n)
        chain: list[int] = []
        y = x
        while y != root:
            y = vector["parent"][y]
            chain.append(y)
        assert list(path) == chain
        below_root = (x, *path[:-1]) if path else ()
        assert list(treemath.copath(x, n)) == [vector["sibling"][z] for z in below_root]
    # Nodes just outside the tree are refused.
    with pytest.raises(UsageError):
        treemath.parent(width, n)
    with pytest.raises(UsageError):
        treemath.direct_path(width, n)
