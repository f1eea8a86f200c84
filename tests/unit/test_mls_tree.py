"""RFC 9420 §7 ratchet tree and TreeKEM rules beyond the vectors: rejections with
typed errors, whole commits with joiners, and cache consistency."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.crypto.labels import encrypt_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import RemoteError, UsageError
from sottovoce.mls import treemath
from sottovoce.mls.common import CredentialType, GroupContext
from sottovoce.mls.errors import InvalidSignature, MlsDecryptionError
from sottovoce.mls.messages import (
    Capabilities,
    Credential,
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ParentNode,
    RequiredCapabilities,
    UpdatePath,
    UpdatePathNode,
)
from sottovoce.mls.tree import (
    DuplicateKey,
    InvalidLeafIndex,
    InvalidLeafNode,
    InvalidParentHash,
    InvalidUnmergedLeaves,
    RatchetTree,
    TreeHashMismatch,
    check_leaf_node,
)
from sottovoce.mls.treekem import (
    PathSecretMismatch,
    TreeKemPrivate,
    UpdatePathError,
    apply_update_path,
    create_update_path,
    decrypt_update_path,
    merge_update_path,
)
from sottovoce.secret import Secret
from tests.conftest import deterministic_rng
from tests.vectors.loader import load

SUITE = cipher_suite(1)
GROUP_ID = b"unit-test-group"


@dataclass
class Member:
    leaf: LeafNode
    hpke_private: Secret
    signing_key: SigningKey


def _member(rng: Random, name: str, credentials: tuple[int, ...] = (1,)) -> Member:
    sk = SUITE.generate_signing_key(rng)
    kp = SUITE.generate_hpke_key_pair(rng)
    leaf = LeafNode(
        encryption_key=kp.public,
        signature_key=sk.verify_key.data,
        credential=Credential.basic(name.encode()),
        capabilities=Capabilities(cipher_suites=(1,), credentials=credentials),
        leaf_node_source=LeafNodeSource.KEY_PACKAGE,
        lifetime=Lifetime(not_before=1_000, not_after=2_000),
    ).signed(sk)
    return Member(leaf=leaf, hpke_private=kp.private, signing_key=sk)


def _context(epoch: int) -> GroupContext:
    return GroupContext(
        cipher_suite=SUITE.id,
        group_id=GROUP_ID,
        epoch=epoch,
        tree_hash=b"",  # replaced by treekem with the provisional tree's hash
        confirmed_transcript_hash=bytes(32),
    )


class Group:
    """Just enough of a group to run commits through tree + treekem."""

    def __init__(self, rng: Random, creator: Member) -> None:
        self.rng = rng
        self.tree = RatchetTree.create(SUITE, creator.leaf)
        self.signers = {0: creator.signing_key}
        self.privates = {0: TreeKemPrivate.for_leaf(SUITE, 0, creator.hpke_private)}
        self.epoch = 0

    def commit(
        self, committer: int, *, adds: tuple[Member, ...] = (), removes: tuple[int, ...] = ()
    ) -> Secret:
        def proposals(tree: RatchetTree) -> list[int]:
            for r in removes:
                tree.remove_leaf(r)
            return [tree.add_leaf(m.leaf) for m in adds]

        self.epoch += 1
        staged = self.tree.copy()
        added = proposals(staged)
        template = staged.leaf(committer)
        assert template is not None
        created = create_update_path(
            staged,
            committer,
            leaf_node=template,
            signing_key=self.signers[committer],
            group_context=_context(self.epoch),
            excluded_leaves=added,
            rng=self.rng,
        )
        privates = {committer: created.private}
        for j, private in self.privates.items():
            if j == committer or j in removes:
                continue
            theirs = self.tree.copy()
            assert proposals(theirs) == added
            result = apply_update_path(
                theirs,
                private,
                committer,
                UpdatePath.decode(created.update_path.encode()),
                group_context=_context(self.epoch),
                excluded_leaves=added,
            )
            assert result.commit_secret == created.commit_secret
            assert theirs.encode() == staged.encode()
            privates[j] = result.private
        for r in removes:
            self.signers.pop(r)
        for member, index in zip(adds, added, strict=True):
            # RFC 9420 §12.4.3.1: the joiner gets the common ancestor's path secret.
            joiner = TreeKemPrivate.for_leaf(SUITE, index, member.hpke_private)
            privates[index] = joiner.with_welcome_secret(
                staged, committer, created.path_secret_for(index).expose()
            )
            self.signers[index] = member.signing_key
        self.tree, self.privates = staged, privates
        self.tree.validate(GROUP_ID)
        for private in privates.values():
            private.check(self.tree)
        return created.commit_secret

    def add_without_path(self, member: Member) -> int:
        """An add-only commit with no path (§12.4): the joiner is unmerged above."""
        index = self.tree.add_leaf(member.leaf)
        self.privates[index] = TreeKemPrivate.for_leaf(SUITE, index, member.hpke_private)
        self.signers[index] = member.signing_key
        self.tree.validate(GROUP_ID)
        return index


@pytest.fixture
def group(rng: Random) -> Group:
    """Eight members after four commits: blanks, unmerged leaves, real parent hashes."""
    g = Group(rng, _member(rng, "m0"))
    g.commit(0, adds=(_member(rng, "m1"), _member(rng, "m2")))
    g.commit(1, adds=(_member(rng, "m3"), _member(rng, "m4"), _member(rng, "m5")))
    g.commit(4, removes=(2,), adds=(_member(rng, "m6"), _member(rng, "m7")))
    g.add_without_path(_member(rng, "m8"))
    return g


def _vector_tree(index: int = 2) -> tuple[RatchetTree, bytes]:
    vector: dict[str, Any] = load("mls/tree-validation.json")[index]
    tree = RatchetTree.decode(cipher_suite(vector["cipher_suite"]), bytes.fromhex(vector["tree"]))
    return tree, bytes.fromhex(vector["group_id"])


# --- §7.9.2 parent hashes ------------------------------------------------------------


@pytest.mark.parametrize("field", ["parent_hash", "encryption_key"])
def test_rfc9420_7_9_2_tampered_parent_node_is_rejected(field: str) -> None:
    tree, group_id = _vector_tree()
    tree.validate(group_id)
    for x in range(1, tree.width, 2):
        node = tree.parent_node(x)
        if node is None:
            continue
        junk = bytes(32 * [7 + x])
        if field == "parent_hash":
            changed = replace(node, parent_hash=junk)
        else:
            changed = replace(node, encryption_key=junk)
        tampered = tree.copy()
        tampered.set_parent(x, changed)
        with pytest.raises(InvalidParentHash):
            tampered.validate(group_id)
    assert issubclass(InvalidParentHash, RemoteError)


def test_rfc9420_7_9_2_blank_parent_with_key_out_of_nowhere_is_rejected() -> None:
    # A parent populated without any UpdatePath behind it has no parent-hash chain.
    tree, _ = _vector_tree(0)  # two leaves, root set by a commit
    root = tree.parent_node(1)
    assert root is not None
    forged = tree.copy()
    forged.set_parent(1, ParentNode(encryption_key=b"\x01" * 32))
    with pytest.raises(InvalidParentHash):
        forged.verify_parent_hashes()


def test_rfc9420_12_4_3_3_tree_hash_must_match_the_group_context() -> None:
    tree, group_id = _vector_tree()
    with pytest.raises(TreeHashMismatch):
        tree.validate(group_id, tree_hash=bytes(32))


# --- §7.3 leaf validation -------------------------------------------------------------


def test_rfc9420_7_3_bad_leaf_signature_is_rejected() -> None:
    tree, group_id = _vector_tree()
    index, leaf = next(iter(tree.leaves()))
    sig = bytearray(leaf.signature)
    sig[0] ^= 1
    tree.set_leaf(index, replace(leaf, signature=bytes(sig)))
    with pytest.raises(InvalidSignature):
        tree.validate(group_id)


def test_rfc9420_7_2_commit_leaf_signature_is_bound_to_group_id(group: Group) -> None:
    with pytest.raises(InvalidSignature):
        group.tree.validate(b"another group")
    group.tree.validate(GROUP_ID)


def test_rfc9420_7_3_duplicate_encryption_key_is_rejected(rng: Random, group: Group) -> None:
    tree = group.tree
    (_, first), (j, second) = list(tree.leaves())[:2]
    dup = replace(second, encryption_key=first.encryption_key)
    if dup.leaf_node_source == LeafNodeSource.KEY_PACKAGE:
        dup = dup.signed(group.signers[j])
    else:
        dup = dup.signed(group.signers[j], GROUP_ID, j)
    tree.set_leaf(j, dup)
    with pytest.raises(DuplicateKey):
        tree.validate(GROUP_ID)


def test_rfc9420_7_3_duplicate_keys_refused_for_new_leaves(rng: Random, group: Group) -> None:
    tree = group.tree
    i, first = next(iter(tree.leaves()))
    newcomer = _member(rng, "new")
    tree.check_leaf_fits(newcomer.leaf)
    with pytest.raises(DuplicateKey):
        tree.check_leaf_fits(replace(newcomer.leaf, encryption_key=first.encryption_key))
    with pytest.raises(DuplicateKey):
        tree.check_leaf_fits(replace(newcomer.leaf, signature_key=first.signature_key))
    # Replacing its own leaf, a member may keep its signature key but never its
    # encryption key (§12.1.2, §12.4.2).
    tree.check_leaf_fits(replace(newcomer.leaf, signature_key=first.signature_key), replacing=i)
    with pytest.raises(DuplicateKey):
        tree.check_leaf_fits(first, replacing=i)


def test_rfc9420_7_3_credential_type_must_be_supported_by_all(rng: Random, group: Group) -> None:
    x509_capable = _member(rng, "x", credentials=(1, 2))
    x509_leaf = replace(
        x509_capable.leaf, credential=Credential.x509([b"cert"])
    ).signed(x509_capable.signing_key)
    # Nobody else lists x509: such a member may not join.
    with pytest.raises(InvalidLeafNode):
        group.tree.check_leaf_fits(x509_leaf)
    # A newcomer that does not support the basic credentials in use may not either.
    basic_less = _member(rng, "y", credentials=(2,))
    with pytest.raises(InvalidLeafNode):
        group.tree.check_leaf_fits(basic_less.leaf)
    group.tree.check_leaf_fits(x509_capable.leaf)


def test_rfc9420_7_3_leaf_local_checks(rng: Random) -> None:
    m = _member(rng, "solo")
    check_leaf_node(SUITE, m.leaf, group_id=None, leaf_index=None, now_ms=1_500_000)
    with pytest.raises(InvalidLeafNode):
        check_leaf_node(SUITE, m.leaf, group_id=None, leaf_index=None, now_ms=3_000_000)
    required = RequiredCapabilities(credential_types=(CredentialType.X509,))
    with pytest.raises(InvalidLeafNode):
        check_leaf_node(
            SUITE, m.leaf, group_id=None, leaf_index=None, required_capabilities=required
        )
    # A default extension type needs no listing; an unknown one does.
    required = RequiredCapabilities(extension_types=(2,), proposal_types=(1, 2))
    check_leaf_node(SUITE, m.leaf, group_id=None, leaf_index=None, required_capabilities=required)
    with pytest.raises(InvalidLeafNode):
        check_leaf_node(
            SUITE,
            m.leaf,
            group_id=None,
            leaf_index=None,
            required_capabilities=RequiredCapabilities(extension_types=(0xFF00,)),
        )


def test_rfc9420_7_1_unmerged_leaves_must_be_consistent(group: Group) -> None:
    tree = group.tree
    # Leaf 7 was added without a path: unmerged at its non-blank ancestors.
    holders = [
        p for p in treemath.direct_path(14, tree.n_leaves)
        if (node := tree.parent_node(p)) is not None and 7 in node.unmerged_leaves
    ]
    assert holders
    x = holders[-1]
    node = tree.parent_node(x)
    assert node is not None

    def tampered(node_index: int, unmerged: tuple[int, ...]) -> RatchetTree:
        bad = tree.copy()
        target = bad.parent_node(node_index)
        assert target is not None
        bad.set_parent(node_index, replace(target, unmerged_leaves=unmerged))
        return bad

    # A leaf the node does not cover, a repeated (unsorted) entry.
    for unmerged in ((*node.unmerged_leaves, tree.n_leaves), (7, 7)):
        with pytest.raises(InvalidUnmergedLeaves):
            tampered(x, unmerged).validate(GROUP_ID)
    # Unmerged high up but merged at a non-blank node in between.
    if len(holders) > 1:
        low = holders[0]
        low_node = tree.parent_node(low)
        assert low_node is not None
        without = tuple(u for u in low_node.unmerged_leaves if u != 7)
        with pytest.raises(InvalidUnmergedLeaves):
            tampered(low, without).validate(GROUP_ID)


# --- §12.1 operations ---------------------------------------------------------------


def test_rfc9420_12_1_3_remove_truncates_and_bad_indices_are_remote_errors(
    rng: Random,
) -> None:
    members = [_member(rng, f"m{i}") for i in range(5)]
    tree = RatchetTree.create(SUITE, members[0].leaf)
    for m in members[1:]:
        tree.add_leaf(m.leaf)
    assert tree.n_leaves == 8
    tree.remove_leaf(4)
    assert tree.n_leaves == 4
    tree.remove_leaf(1)
    assert tree.n_leaves == 4 and tree.leaf(1) is None
    assert tree.add_leaf(members[1].leaf) == 1  # leftmost blank leaf first
    with pytest.raises(InvalidLeafIndex):
        tree.remove_leaf(9)
    tree.remove_leaf(3)
    with pytest.raises(InvalidLeafIndex):
        tree.update_leaf(3, members[3].leaf)
    with pytest.raises(UsageError):
        tree.node(tree.width)


def test_rfc9420_12_1_1_add_marks_leaf_unmerged_at_non_blank_ancestors(group: Group) -> None:
    tree = group.tree
    newcomer = _member(deterministic_rng(b"newcomer"), "n")
    index = tree.add_leaf(newcomer.leaf)
    for p in treemath.direct_path(2 * index, tree.n_leaves):
        node = tree.parent_node(p)
        if node is not None:
            assert index in node.unmerged_leaves
            assert list(node.unmerged_leaves) == sorted(node.unmerged_leaves)
            assert 2 * index in tree.resolution(p)


# --- TreeKEM: commits and rejected paths ------------------------------------------------


def test_rfc9420_12_4_commits_with_joiners_and_removes(rng: Random, group: Group) -> None:
    """Every member (joiners through the Welcome path secret) agrees on each commit."""
    secrets = {group.commit(i).expose() for i in sorted(group.privates)}
    assert len(secrets) == len(group.privates)
    group.commit(5, removes=(0, 7))
    assert group.tree.n_leaves == 8
    group.commit(1, adds=(_member(rng, "late"),))


def _one_path(group: Group, committer: int = 3) -> tuple[RatchetTree, UpdatePath]:
    staged = group.tree.copy()
    template = staged.leaf(committer)
    assert template is not None
    created = create_update_path(
        staged,
        committer,
        leaf_node=template,
        signing_key=group.signers[committer],
        group_context=_context(99),
        rng=group.rng,
    )
    return staged, created.update_path


def test_rfc9420_12_4_2_tampered_update_paths_are_rejected(group: Group) -> None:
    _, path = _one_path(group)
    receiver = 0
    private = group.privates[receiver]
    before = group.tree.encode()

    def process(p: UpdatePath) -> None:
        apply_update_path(group.tree.copy(), private, 3, p, group_context=_context(99))

    first = path.nodes[0]
    # A changed node key breaks the leaf's parent hash (§7.9.2).
    swapped = replace(path, nodes=(replace(first, encryption_key=b"\x09" * 32), *path.nodes[1:]))
    with pytest.raises(InvalidParentHash):
        process(swapped)
    # Too few nodes for the filtered direct path.
    with pytest.raises(UpdatePathError):
        process(replace(path, nodes=path.nodes[:-1]))
    # A key already in the tree (the committer's own current leaf key).
    old_leaf = group.tree.leaf(3)
    assert old_leaf is not None
    with pytest.raises(DuplicateKey):
        reused = replace(path.leaf_node, encryption_key=old_leaf.encryption_key)
        process(replace(path, leaf_node=reused))
    # The leaf must be a commit leaf.
    with pytest.raises(UpdatePathError):
        process(replace(path, leaf_node=replace(
            path.leaf_node, leaf_node_source=LeafNodeSource.UPDATE, parent_hash=b""
        )))
    # A corrupted ciphertext does not decrypt.
    for k, node in enumerate(path.nodes):
        if node.encrypted_path_secret:
            ct = node.encrypted_path_secret[0]
            broken = replace(
                node,
                encrypted_path_secret=(
                    HPKECiphertext(
                        kem_output=ct.kem_output,
                        ciphertext=ct.ciphertext[:-1] + bytes([ct.ciphertext[-1] ^ 1]),
                    ),
                    *node.encrypted_path_secret[1:],
                ),
            )
            nodes = list(path.nodes)
            nodes[k] = broken
            receivers = [
                j for j in group.privates
                if j != 3 and group.tree.resolution(
                    group.tree.filtered_path_with_copath(3)[k][1]
                )[0] in group.privates[j].keys
            ]
            assert receivers
            for j in receivers:
                with pytest.raises(MlsDecryptionError):
                    apply_update_path(
                        group.tree.copy(), group.privates[j], 3,
                        replace(path, nodes=tuple(nodes)), group_context=_context(99),
                    )
            break
    # The wrong provisional context (another epoch) does not decrypt either.
    with pytest.raises(MlsDecryptionError):
        apply_update_path(group.tree.copy(), private, 3, path, group_context=_context(98))
    assert group.tree.encode() == before


def test_rfc9420_7_5_merge_checks_before_changing_the_tree(group: Group) -> None:
    _, path = _one_path(group)
    tree = group.tree.copy()
    before = (tree.encode(), tree.tree_hash())
    bad = replace(path, leaf_node=replace(path.leaf_node, parent_hash=b"\0" * 32))
    with pytest.raises(InvalidParentHash):
        merge_update_path(tree, 3, bad)
    assert (tree.encode(), tree.tree_hash()) == before


def test_rfc9420_7_5_wrong_derived_key_is_detected(group: Group) -> None:
    # An UpdatePath whose ciphertext holds a path secret that does not derive
    # the advertised node key (a malicious committer) is rejected.
    _, path = _one_path(group)
    private = group.privates[0]
    tree = group.tree.copy()
    merge_update_path(tree, 3, path)
    forged_secret = bytes(32)
    pairs = tree.filtered_path_with_copath(3)
    k = next(k for k, (_, c) in enumerate(pairs) if 0 in treemath.subtree_leaves(c))
    context = replace(_context(99), tree_hash=tree.tree_hash())
    resolution = tree.resolution(pairs[k][1])
    cts = []
    for r in resolution:
        node = tree.node(r)
        assert node is not None
        kem, ct = encrypt_with_label(
            SUITE, node.encryption_key, b"UpdatePathNode", context.encode(), forged_secret,
            deterministic_rng(b"x"),
        )
        cts.append(HPKECiphertext(kem_output=kem, ciphertext=ct))
    nodes = list(path.nodes)
    nodes[k] = UpdatePathNode(
        encryption_key=nodes[k].encryption_key, encrypted_path_secret=tuple(cts)
    )

    with pytest.raises(PathSecretMismatch):
        decrypt_update_path(
            tree, private, 3, replace(path, nodes=tuple(nodes)), group_context=context
        )


def test_rfc9420_12_4_3_1_welcome_path_secret_must_match(group: Group) -> None:
    private = TreeKemPrivate.for_leaf(SUITE, 6, group.privates[6].leaf_private)
    with pytest.raises(PathSecretMismatch):
        private.with_welcome_secret(group.tree, 4, bytes(32))


# --- cache consistency -------------------------------------------------------------------

_POOL_RNG = deterministic_rng(b"leaf-pool")
_POOL = [_member(_POOL_RNG, f"p{i}").leaf for i in range(24)]

_op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, len(_POOL) - 1)),
    st.tuples(st.just("remove"), st.integers(0, 63)),
    st.tuples(st.just("update"), st.integers(0, 63), st.integers(0, len(_POOL) - 1)),
    st.tuples(st.just("path"), st.integers(0, 63), st.integers(0, 2**32)),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_op, min_size=1, max_size=30))
def test_cached_tree_hash_equals_recomputation(ops: list[tuple[Any, ...]]) -> None:
    """After any add/remove/update/path sequence, the cached tree hashes and
    resolutions equal a from-scratch computation, and earlier copies are intact."""
    tree = RatchetTree.create(SUITE, _POOL[0])
    snapshots: list[tuple[RatchetTree, bytes]] = []
    for op in ops:
        members = [i for i, _ in tree.leaves()]
        kind = op[0]
        if kind == "add":
            tree.add_leaf(_POOL[op[1]])
        elif kind == "remove" and len(members) > 1:
            tree.remove_leaf(members[op[1] % len(members)])
        elif kind == "update":
            tree.update_leaf(members[op[1] % len(members)], _POOL[op[2]])
        elif kind == "path":
            sender = members[op[1] % len(members)]
            width = len(tree.filtered_direct_path(sender))
            keys = [op[2].to_bytes(5, "big") + bytes([sender, k]) for k in range(width)]
            tree.merge_path_keys(sender, keys)
        tree.tree_hash()
        snapshots.append((tree.copy(), tree.tree_hash()))
        fresh = RatchetTree(SUITE, tree.nodes())
        assert tree.tree_hash() == fresh.tree_hash()
        for x in range(tree.width):
            assert tree.resolution(x) == fresh.resolution(x)
            assert tree.tree_hash(x) == fresh.tree_hash(x)
    for snap, h in snapshots:
        assert RatchetTree(SUITE, snap.nodes()).tree_hash() == h == snap.tree_hash()
