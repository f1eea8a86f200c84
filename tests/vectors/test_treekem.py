"""RFC 9420 §7.4–7.6, §12.4.2 TreeKEM against mls/treekem.json.

For each vector: every member's private state is loaded and checked against the
tree; each given UpdatePath is merged (parent hash checked) and decrypted by
every other member, who must find the vector's path secret and commit secret,
and the merged tree's hash is compared; then each sender makes a fresh
UpdatePath that every other member must process to the same commit secret.
"""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.common import GroupContext
from sottovoce.mls.messages import UpdatePath
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate, apply_update_path, create_update_path
from tests.conftest import deterministic_rng
from tests.vectors.loader import params

VECTOR_FILE = "mls/treekem.json"
VECTORS = params(VECTOR_FILE)


def _setup(
    vector: dict[str, Any],
) -> tuple[RatchetTree, dict[int, TreeKemPrivate], GroupContext]:
    suite = cipher_suite(vector["cipher_suite"])
    tree = RatchetTree.decode(suite, bytes.fromhex(vector["ratchet_tree"]))
    privates: dict[int, TreeKemPrivate] = {}
    for entry in vector["leaves_private"]:
        private = TreeKemPrivate.for_leaf(
            suite, entry["index"], bytes.fromhex(entry["encryption_priv"])
        )
        for ps in entry["path_secrets"]:
            private = private.with_node_secret(tree, ps["node"], bytes.fromhex(ps["path_secret"]))
        # Every private key matches a non-blank node's public key (the vector's
        # consistency check).
        private.check(tree)
        privates[entry["index"]] = private
    context = GroupContext(
        cipher_suite=suite.id,
        group_id=bytes.fromhex(vector["group_id"]),
        epoch=vector["epoch"],
        tree_hash=tree.tree_hash(),
        confirmed_transcript_hash=bytes.fromhex(vector["confirmed_transcript_hash"]),
    )
    return tree, privates, context


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_7_5_receivers_decrypt_update_paths(vector: dict[str, Any]) -> None:
    tree, privates, context = _setup(vector)
    for entry in vector["update_paths"]:
        sender = entry["sender"]
        path = UpdatePath.decode(bytes.fromhex(entry["update_path"]))
        for j, private in privates.items():
            if j == sender:
                continue
            staged = tree.copy()
            result = apply_update_path(staged, private, sender, path, group_context=context)
            assert result.path_secret.expose().hex() == entry["path_secrets"][j]
            assert result.commit_secret.expose().hex() == entry["commit_secret"]
            assert staged.tree_hash().hex() == entry["tree_hash_after"]
            assert result.group_context.tree_hash == staged.tree_hash()
            assert result.node in staged.filtered_direct_path(sender)
        # The merged tree is parent-hash valid along the new path (§7.9.2).
        staged.verify_parent_hashes()
        result.private.check(staged)
        # Merging never touched the tree the copies came from.
        assert tree.encode().hex() == vector["ratchet_tree"]


@pytest.mark.parametrize("vector", VECTORS)
def test_rfc9420_7_4_fresh_update_path_is_processed_by_every_member(
    vector: dict[str, Any],
) -> None:
    tree, privates, context = _setup(vector)
    suite = tree.suite
    rng = deterministic_rng(f"treekem-{vector['cipher_suite']}-{vector['ratchet_tree']}".encode())
    for entry in vector["update_paths"]:
        sender = entry["sender"]
        signature_priv = next(
            e["signature_priv"] for e in vector["leaves_private"] if e["index"] == sender
        )
        sender_tree = tree.copy()
        template = tree.leaf(sender)
        assert template is not None
        created = create_update_path(
            sender_tree,
            sender,
            leaf_node=template,
            signing_key=suite.signing_key(bytes.fromhex(signature_priv)),
            group_context=context,
            rng=rng,
        )
        created.private.check(sender_tree)
        sender_tree.verify_parent_hashes()
        assert created.group_context.tree_hash == sender_tree.tree_hash()
        created.update_path.leaf_node.verify_signature(suite, context.group_id, sender)
        wire = UpdatePath.decode(created.update_path.encode())
        for j, private in privates.items():
            if j == sender:
                continue
            staged = tree.copy()
            result = apply_update_path(staged, private, sender, wire, group_context=context)
            assert result.commit_secret == created.commit_secret
            assert result.path_secret == created.path_secret_for(j)
            assert staged.encode() == sender_tree.encode()
            assert staged.tree_hash() == sender_tree.tree_hash()
