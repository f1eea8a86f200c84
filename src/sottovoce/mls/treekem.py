"""TreeKEM (RFC 9420 §7.4–7.7): path secrets, UpdatePaths, and a member's private keys.

::

    committer at leaf L                        filtered direct path of L
    ------------------                         (blank nodes skipped, §4.1.2)
    path_secret[0] = rng(Nh)                   P0 -> P1 -> ... -> Pn-1
    path_secret[i+1] = DeriveSecret(path_secret[i], "path")
    node key i = DeriveKeyPair(DeriveSecret(path_secret[i], "node"))
    commit_secret = path_secret[n]

    UpdatePathNode i = (pk_i, [EncryptWithLabel(pk_r, "UpdatePathNode",
                                 provisional GroupContext, path_secret[i])
                              for r in resolution(copath child of Pi)
                              minus this commit's new leaves])

    receiver at leaf R: the first Pi whose copath child covers R, a node of
    that child's resolution R holds a key for -> path_secret[i] -> derive the
    rest up to the root, checking each derived public key against the path.

The public half of a merge lives in :mod:`sottovoce.mls.tree`
(:meth:`RatchetTree.merge_path_keys`); this module owns the secrets.

Division of work with the group layer:

* the group layer applies proposals to a *copy* of the tree first, then calls
  :func:`create_update_path` (committer) or :func:`apply_update_path`
  (receiver) on that copy, and keeps the copy only if everything succeeds;
* it validates ``path.leaf_node`` before :func:`apply_update_path`
  (:func:`~sottovoce.mls.tree.check_leaf_node` with ``group_id`` and the
  sender's leaf index, and :meth:`RatchetTree.check_leaf_fits` with
  ``replacing=sender``): signature and credential checks are policy-laden and
  stay with it. :func:`create_update_path` signs the new leaf with the
  signing key it is given.

Python cannot wipe memory: "deleting" an old key (§7.5) means every object we
return has dropped its reference to it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace

from sottovoce.crypto.hpke import KemKeyPair
from sottovoce.crypto.labels import decrypt_with_label, derive_secret, encrypt_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import DecryptionError, InvalidKey, UsageError
from sottovoce.mls import treemath
from sottovoce.mls.common import GroupContext
from sottovoce.mls.errors import MlsDecryptionError, ValidationError
from sottovoce.mls.messages import (
    HPKECiphertext,
    LeafNode,
    LeafNodeSource,
    UpdatePath,
    UpdatePathNode,
)
from sottovoce.mls.tree import DuplicateKey, RatchetTree
from sottovoce.secret import Secret

__all__ = [
    "CreatedUpdatePath",
    "PathSecretMismatch",
    "ProcessedUpdatePath",
    "TreeKemError",
    "TreeKemPrivate",
    "UpdatePathError",
    "apply_update_path",
    "create_update_path",
    "decrypt_update_path",
    "derive_node_key_pair",
    "derive_path_secret",
    "merge_update_path",
]

#: RFC 9420 §7.6 EncryptWithLabel label for path secrets.
UPDATE_PATH_NODE_LABEL = b"UpdatePathNode"


# --- errors ------------------------------------------------------------------


class TreeKemError(ValidationError):
    """TreeKEM input from a peer does not fit the tree or does not decrypt consistently."""

    code = "mls_treekem_error"


class UpdatePathError(TreeKemError):
    """RFC 9420 §7.5–7.6, §12.4.2: an UpdatePath is malformed for this tree."""

    code = "mls_invalid_update_path"


class PathSecretMismatch(TreeKemError):
    """A path secret (decrypted or from a Welcome) derives a key the tree does not hold."""

    code = "mls_path_secret_mismatch"


# --- derivations (§7.4) ----------------------------------------------------------


def derive_path_secret(suite: CipherSuite, path_secret: bytes) -> bytes:
    """path_secret[n+1] = DeriveSecret(path_secret[n], "path")."""
    return derive_secret(suite, path_secret, b"path")


def derive_node_key_pair(suite: CipherSuite, path_secret: bytes) -> KemKeyPair:
    """node_priv, node_pub = KEM.DeriveKeyPair(DeriveSecret(path_secret, "node"))."""
    return suite.derive_hpke_key_pair(derive_secret(suite, path_secret, b"node"))


# --- private state -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TreeKemPrivate:
    """The private half of one member's view of the tree (§4.2).

    ``keys`` maps node index -> HPKE private key: the member's own leaf (node
    ``2 * leaf_index``) and the parents on its direct path whose keys it knows.
    Instances are never changed in place: every operation returns a new one,
    so a staged commit can be dropped without touching the current state.
    """

    suite: CipherSuite
    leaf_index: int
    keys: Mapping[int, Secret]

    @classmethod
    def for_leaf(
        cls, suite: CipherSuite, leaf_index: int, leaf_private: Secret | bytes
    ) -> TreeKemPrivate:
        """State of a member that knows only its leaf key (e.g. just added)."""
        key = leaf_private if isinstance(leaf_private, Secret) else Secret(leaf_private)
        return cls(suite=suite, leaf_index=leaf_index, keys={2 * leaf_index: key})

    @property
    def leaf_private(self) -> Secret:
        return self.keys[2 * self.leaf_index]

    def private_key(self, node: int) -> Secret | None:
        return self.keys.get(node)

    def with_leaf_private(self, leaf_private: Secret) -> TreeKemPrivate:
        """After the member's own Update proposal is committed (§12.1.2): new leaf
        key, and its direct path is blank so no parent key survives."""
        return TreeKemPrivate.for_leaf(self.suite, self.leaf_index, leaf_private)

    def with_node_secret(self, tree: RatchetTree, node: int, path_secret: bytes) -> TreeKemPrivate:
        """Set one parent's key from its path secret, checked against the tree."""
        if node not in treemath.direct_path(2 * self.leaf_index, tree.n_leaves):
            raise UsageError("a member only holds keys on its own direct path")
        kp = derive_node_key_pair(self.suite, path_secret)
        parent = tree.parent_node(node)
        if parent is None or parent.encryption_key != kp.public:
            raise PathSecretMismatch("path secret does not match the tree's public key")
        return replace(self, keys={**self.keys, node: kp.private})

    def with_welcome_secret(
        self, tree: RatchetTree, sender: int, path_secret: bytes
    ) -> TreeKemPrivate:
        """RFC 9420 §12.4.3.1: a joiner's ``path_secret`` is for the lowest common
        ancestor of its leaf and the committer's; the keys of that node and of
        every node above it on the committer's filtered direct path follow."""
        if sender == self.leaf_index:
            raise UsageError("the committer does not welcome itself")
        ancestor = treemath.common_ancestor(2 * self.leaf_index, 2 * sender)
        path = tree.filtered_direct_path(sender)
        if ancestor not in path:
            raise PathSecretMismatch("welcome path secret for a node off the committer's path")
        keys = dict(self.keys)
        secret = path_secret
        for p in path[path.index(ancestor):]:
            kp = derive_node_key_pair(self.suite, secret)
            parent = tree.parent_node(p)
            if parent is None or parent.encryption_key != kp.public:
                raise PathSecretMismatch("welcome path secret does not match the tree")
            keys[p] = kp.private
            secret = derive_path_secret(self.suite, secret)
        return replace(self, keys=keys)

    def pruned(self, tree: RatchetTree) -> TreeKemPrivate:
        """Drop keys of nodes that are now blank or gone (after Update/Remove/truncate)."""
        width = tree.width
        keys = {x: k for x, k in self.keys.items() if x < width and tree.node(x) is not None}
        if len(keys) == len(self.keys):
            return self
        return replace(self, keys=keys)

    def check(self, tree: RatchetTree) -> None:
        """Every private key matches the public key in the tree (tree invariant, §4.2).

        Raises :class:`PathSecretMismatch` for a key the tree does not hold.
        """
        hpke = self.suite.hpke
        own_path = {2 * self.leaf_index, *treemath.direct_path(2 * self.leaf_index, tree.n_leaves)}
        for x, key in self.keys.items():
            if x not in own_path:
                raise PathSecretMismatch("private key for a node off the member's path")
            node = tree.node(x)
            try:
                public = hpke.public_from_private(key)
            except InvalidKey:
                raise PathSecretMismatch("malformed private key") from None
            if node is None or node.encryption_key != public:
                raise PathSecretMismatch("private key does not match the tree")

    def __repr__(self) -> str:
        return f"TreeKemPrivate(leaf_index={self.leaf_index}, nodes={sorted(self.keys)})"


# --- committer (§7.4–7.6) ----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CreatedUpdatePath:
    """What the committer gets from :func:`create_update_path`."""

    update_path: UpdatePath
    commit_secret: Secret
    #: The committer's new private state (new leaf key + filtered-path keys).
    private: TreeKemPrivate
    #: Path secret per filtered direct path node, for joiners' GroupSecrets.
    path_secrets: Mapping[int, Secret]
    #: The provisional GroupContext the path secrets were encrypted under.
    group_context: GroupContext

    def path_secret_for(self, joiner: int) -> Secret:
        """GroupSecrets.path_secret for new member ``joiner`` (§12.4.3.1): the
        secret of the lowest common ancestor of the joiner and the committer."""
        node = treemath.common_ancestor(2 * joiner, 2 * self.private.leaf_index)
        try:
            return self.path_secrets[node]
        except KeyError:
            raise UsageError("joiner is not below the committer's filtered direct path") from None


def create_update_path(
    tree: RatchetTree,
    leaf_index: int,
    *,
    leaf_node: LeafNode,
    signing_key: SigningKey,
    group_context: GroupContext,
    excluded_leaves: Collection[int] = (),
    rng: Random,
) -> CreatedUpdatePath:
    """Refresh leaf ``leaf_index``'s path and encrypt the new path secrets (§7.4–7.6).

    ``tree`` is the staged tree *after* this commit's proposals; it is updated
    in place (direct path blanked, new keys and parent hashes on the filtered
    direct path, new leaf). For an external commit, first place the joiner's
    leaf with :meth:`RatchetTree.add_leaf` (it is replaced here).

    ``leaf_node`` is the template of the new leaf: its credential,
    capabilities, extensions and signature key are kept; the encryption key,
    source (``commit``), parent hash and signature are set here, the signature
    with ``signing_key`` over ``group_context.group_id`` and ``leaf_index``.

    ``group_context`` is the provisional context (new epoch, new extensions,
    old confirmed transcript hash, §12.4.1); its ``tree_hash`` is replaced by
    the new tree's hash. ``excluded_leaves`` are the leaves added by this
    commit, which get no ciphertext (§12.4.2).
    """
    suite = tree.suite
    if tree.leaf(leaf_index) is None:
        raise UsageError("the committer's leaf must be in the tree")
    if signing_key.verify_key.data != leaf_node.signature_key:
        raise UsageError("signing key does not match the leaf's signature key")
    leaf_kp = suite.generate_hpke_key_pair(rng)
    pairs = tree.filtered_path_with_copath(leaf_index)

    keys: dict[int, Secret] = {2 * leaf_index: leaf_kp.private}
    secrets: dict[int, Secret] = {}
    public_keys: list[bytes] = []
    path_secret = rng(suite.nh)
    for p, _ in pairs:
        kp = derive_node_key_pair(suite, path_secret)
        keys[p] = kp.private
        secrets[p] = Secret(path_secret)
        public_keys.append(kp.public)
        path_secret = derive_path_secret(suite, path_secret)
    # §12.4.1: commit_secret is path_secret[n+1], one step past the last node.
    commit_secret = Secret(path_secret)

    parent_hash = tree.merge_path_keys(leaf_index, public_keys)
    new_leaf = replace(
        leaf_node,
        encryption_key=leaf_kp.public,
        leaf_node_source=LeafNodeSource.COMMIT,
        lifetime=None,
        parent_hash=parent_hash,
        signature=b"",
    ).signed(signing_key, group_context.group_id, leaf_index)
    tree.set_leaf(leaf_index, new_leaf)

    context = replace(group_context, tree_hash=tree.tree_hash())
    context_bytes = context.encode()
    excluded = {2 * u for u in excluded_leaves}
    path_nodes: list[UpdatePathNode] = []
    for (p, c), public in zip(pairs, public_keys, strict=True):
        plaintext = secrets[p].expose()
        ciphertexts: list[HPKECiphertext] = []
        for r in tree.resolution(c):
            if r in excluded:
                continue
            target = tree.node(r)
            if target is None:  # a resolution holds only non-blank nodes
                raise UsageError("resolution names a blank node")
            kem_output, ciphertext = encrypt_with_label(
                suite, target.encryption_key, UPDATE_PATH_NODE_LABEL, context_bytes, plaintext, rng
            )
            ciphertexts.append(HPKECiphertext(kem_output=kem_output, ciphertext=ciphertext))
        path_nodes.append(
            UpdatePathNode(encryption_key=public, encrypted_path_secret=tuple(ciphertexts))
        )
    return CreatedUpdatePath(
        update_path=UpdatePath(leaf_node=new_leaf, nodes=tuple(path_nodes)),
        commit_secret=commit_secret,
        private=TreeKemPrivate(suite=suite, leaf_index=leaf_index, keys=keys),
        path_secrets=secrets,
        group_context=context,
    )


# --- receivers (§7.5, §12.4.2) ---------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessedUpdatePath:
    """What a receiver gets from :func:`apply_update_path`."""

    commit_secret: Secret
    #: The receiver's new private state.
    private: TreeKemPrivate
    #: The filtered direct path node whose secret was decrypted (the lowest
    #: common ancestor with the sender) and that secret.
    node: int
    path_secret: Secret
    #: The provisional GroupContext used for decryption.
    group_context: GroupContext


def merge_update_path(tree: RatchetTree, sender: int, path: UpdatePath) -> None:
    """The public half of processing an UpdatePath (§7.5 merge, §12.4.2 checks).

    Checks, before changing anything: the leaf's source is ``commit``; one
    path node per filtered direct path node of ``sender``; no key of the path
    (leaf included) is already in the tree or repeated; and the leaf's
    parent_hash is the one the merged path yields (§7.9.2). Then merges the
    keys and the leaf into ``tree``. The leaf's signature and credential are
    the group layer's to check first (see the module docstring).
    """
    if tree.leaf(sender) is None:
        raise UpdatePathError("update path sender is not a member")
    leaf = path.leaf_node
    if leaf.leaf_node_source != LeafNodeSource.COMMIT:
        raise UpdatePathError("update path leaf node source is not commit")
    public_keys = [n.encryption_key for n in path.nodes]
    if len(public_keys) != len(tree.filtered_direct_path(sender)):
        raise UpdatePathError("update path length does not match the filtered direct path")
    all_keys = [*public_keys, leaf.encryption_key]
    # §12.4.2: the committer's leaf key must change and no path key may already
    # be in the tree (§16.8 uniqueness of tree key pairs).
    if len(set(all_keys)) != len(all_keys) or any(tree.has_encryption_key(k) for k in all_keys):
        raise DuplicateKey("update path reuses an encryption key")
    tree.merge_path_keys(sender, public_keys, leaf_parent_hash=leaf.parent_hash)
    tree.set_leaf(sender, leaf)


def decrypt_update_path(
    tree: RatchetTree,
    private: TreeKemPrivate,
    sender: int,
    path: UpdatePath,
    *,
    group_context: GroupContext,
    excluded_leaves: Collection[int] = (),
) -> ProcessedUpdatePath:
    """The private half (§7.5): decrypt one path secret and derive the rest.

    ``tree`` already has the path merged (:func:`merge_update_path`);
    ``group_context`` is the complete provisional context (its tree_hash is
    the merged tree's). Raises :class:`MlsDecryptionError` if the ciphertext
    does not open and :class:`PathSecretMismatch` if a derived key differs
    from the path's.
    """
    suite = tree.suite
    me = private.leaf_index
    if me == sender:
        raise UsageError("the committer does not process its own update path")
    if me in excluded_leaves:
        raise UsageError("a member added by this commit joins through the Welcome")
    pairs = tree.filtered_path_with_copath(sender)
    if len(pairs) != len(path.nodes):
        raise UpdatePathError("update path length does not match the filtered direct path")
    # The first copath child covering our leaf: its parent is the lowest
    # common ancestor with the sender on the filtered direct path.
    i = next((k for k, (_, c) in enumerate(pairs) if me in treemath.subtree_leaves(c)), -1)
    if i < 0:
        raise UsageError("receiver's leaf is blank or not in this tree")

    excluded = {2 * u for u in excluded_leaves}
    resolution = [r for r in tree.resolution(pairs[i][1]) if r not in excluded]
    encrypted = path.nodes[i].encrypted_path_secret
    if len(encrypted) != len(resolution):
        raise UpdatePathError("ciphertext count does not match the copath resolution")
    j = next((k for k, r in enumerate(resolution) if r in private.keys), -1)
    if j < 0:
        raise UpdatePathError("no key of the copath resolution is held by this member")
    key = private.keys[resolution[j]]

    ct = encrypted[j]
    try:
        secret = decrypt_with_label(
            suite, key, UPDATE_PATH_NODE_LABEL, group_context.encode(), ct.kem_output,
            ct.ciphertext,
        )
    except (DecryptionError, InvalidKey):
        raise MlsDecryptionError("update path secret does not decrypt") from None
    if len(secret) != suite.nh:
        raise UpdatePathError("path secret has the wrong length")

    # §7.5: keys replaced or blanked by this path go; keys of blank nodes go too.
    sender_path = set(treemath.direct_path(2 * sender, tree.n_leaves))
    width = tree.width
    keys = {
        x: k
        for x, k in private.keys.items()
        if x not in sender_path and x < width and tree.node(x) is not None
    }
    node = pairs[i][0]
    decrypted = Secret(secret)
    for (p, _), path_node in zip(pairs[i:], path.nodes[i:], strict=True):
        kp = derive_node_key_pair(suite, secret)
        if kp.public != path_node.encryption_key:
            raise PathSecretMismatch("derived node key does not match the update path")
        keys[p] = kp.private
        secret = derive_path_secret(suite, secret)
    return ProcessedUpdatePath(
        commit_secret=Secret(secret),
        private=replace(private, keys=keys),
        node=node,
        path_secret=decrypted,
        group_context=group_context,
    )


def apply_update_path(
    tree: RatchetTree,
    private: TreeKemPrivate,
    sender: int,
    path: UpdatePath,
    *,
    group_context: GroupContext,
    excluded_leaves: Collection[int] = (),
) -> ProcessedUpdatePath:
    """Merge then decrypt (§12.4.2) on the staged ``tree`` (after the proposals).

    ``group_context`` is the provisional context; its ``tree_hash`` is replaced
    by the merged tree's. ``excluded_leaves`` are the leaves this commit added.
    On error the tree may be half-changed only if the error came from
    decryption: stage on a copy (docs/architecture.md §Rules).
    """
    merge_update_path(tree, sender, path)
    context = replace(group_context, tree_hash=tree.tree_hash())
    return decrypt_update_path(
        tree, private, sender, path, group_context=context, excluded_leaves=excluded_leaves
    )
