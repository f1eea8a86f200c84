"""RFC 9420 §12.1.1–12.1.3 Add/Update/Remove on the ratchet tree against
mls/tree-operations.json (tree after byte-exact, tree hashes before and after)."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.messages import Add, Remove, Update, decode_proposal
from sottovoce.mls.tree import RatchetTree
from tests.vectors.loader import params

VECTOR_FILE = "mls/tree-operations.json"


def _id(vector: dict[str, Any]) -> str:
    kind = type(decode_proposal(bytes.fromhex(vector["proposal"]))).__name__.lower()
    return f"suite{vector['cipher_suite']}-{kind}"


@pytest.mark.parametrize("vector", params(VECTOR_FILE, _id))
def test_rfc9420_12_1_proposal_applied_to_tree(vector: dict[str, Any]) -> None:
    suite = cipher_suite(vector["cipher_suite"])
    tree = RatchetTree.decode(suite, bytes.fromhex(vector["tree_before"]))
    assert tree.tree_hash().hex() == vector["tree_hash_before"]
    before = tree.copy()

    proposal = decode_proposal(bytes.fromhex(vector["proposal"]))
    if isinstance(proposal, Add):
        index = tree.add_leaf(proposal.key_package.leaf_node)
        assert tree.leaf(index) == proposal.key_package.leaf_node
    elif isinstance(proposal, Update):
        tree.update_leaf(vector["proposal_sender"], proposal.leaf_node)
    elif isinstance(proposal, Remove):
        tree.remove_leaf(proposal.removed)
        assert proposal.removed >= tree.n_leaves or tree.leaf(proposal.removed) is None
    else:
        pytest.fail(f"unexpected proposal {type(proposal).__name__}")

    assert tree.encode().hex() == vector["tree_after"]
    assert tree.tree_hash().hex() == vector["tree_hash_after"]
    # The cached hash after the change equals a from-scratch computation, and
    # the copy taken before the change was not touched by it.
    fresh = RatchetTree.decode(suite, bytes.fromhex(vector["tree_after"]))
    assert fresh.tree_hash() == tree.tree_hash()
    assert before.encode().hex() == vector["tree_before"]
    assert before.tree_hash().hex() == vector["tree_hash_before"]
