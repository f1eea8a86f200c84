"""The public ratchet tree (RFC 9420 §4, §7.1–7.3, §7.7–7.9, §12.1, §12.4.3.3).

A :class:`RatchetTree` is the array of optional nodes every member agrees on
(leaf ``i`` at node ``2*i``, parents at odd indices, RFC 9420 appendix C),
plus two per-node caches::

         node  _nodes[x]      _th[x]            _res[x]
          3    ParentNode     tree hash of 3    resolution of 3
        .-+-.                 (None = stale)    (None = stale)
       1     5
      / \\   / \\      a change at node x clears _th/_res for x and its
     0   2 4   6     ancestors only: the next tree hash costs O(log n)
                     hashes, not O(n) (fast at 1,000 members)

Key indexes (encryption key and signature key -> use count) are kept up to date
on every change too, so the uniqueness checks of §7.3 / §12.4.2 are O(1).

The tree is mutable and cheap to :meth:`~RatchetTree.copy` (list copies, no
hashing): the group layer stages a commit on a copy and keeps it only once every
check has passed (check, then commit). Validation of remote trees is explicit:
:meth:`~RatchetTree.decode` checks only the structure, :meth:`~RatchetTree.validate`
checks the RFC rules (parent hashes, leaf signatures, key uniqueness, credential
and capability compatibility, unmerged leaves).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from sottovoce.codec.tls import Writer, write_struct
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls import treemath
from sottovoce.mls.common import Extension, ExtensionType
from sottovoce.mls.errors import (
    DuplicateKey,
    InvalidLeafIndex,
    InvalidLeafNode,
    InvalidParentHash,
    InvalidUnmergedLeaves,
    TreeError,
    TreeHashMismatch,
)
from sottovoce.mls.messages import (
    LeafNode,
    Node,
    NodeType,
    ParentNode,
    RequiredCapabilities,
    decode_ratchet_tree,
    encode_ratchet_tree,
)
from sottovoce.mls.public import check_leaf_node as check_leaf_node

__all__ = [
    "DuplicateKey",
    "InvalidLeafIndex",
    "InvalidLeafNode",
    "InvalidParentHash",
    "InvalidUnmergedLeaves",
    "RatchetTree",
    "TreeError",
    "TreeHashMismatch",
    "check_leaf_node",
]


@dataclass(slots=True)
class _CredentialSummary:
    """Counts over the non-blank leaves, for the §7.3 credential-compatibility rule."""

    members: int
    in_use: dict[int, int]  # credential type -> leaves using it
    supported: dict[int, int]  # credential type -> leaves listing it in capabilities


class RatchetTree:
    """The public state of an MLS ratchet tree, always full (``n_leaves`` a power of two)."""

    __slots__ = ("_creds", "_enc", "_n_leaves", "_nodes", "_res", "_sig", "_th", "suite")

    suite: CipherSuite
    _n_leaves: int
    _nodes: list[Node | None]
    _th: list[bytes | None]
    _res: list[tuple[int, ...] | None]
    _enc: dict[bytes, int]
    _sig: dict[bytes, int]
    _creds: _CredentialSummary | None

    def __init__(self, suite: CipherSuite, nodes: Sequence[Node | None]) -> None:
        """A tree from nodes in array order, padded with blanks to a full tree.

        Leaves must sit at even and parents at odd indices (a ``UsageError``
        otherwise: wire input goes through :meth:`decode`, which reports a
        ``DecodeError``). Nothing else is checked here; see :meth:`validate`.
        """
        if not nodes:
            raise UsageError("a ratchet tree has at least one leaf")
        for i, node in enumerate(nodes):
            if node is not None and isinstance(node, LeafNode) != (i % 2 == 0):
                raise UsageError("leaves sit at even node indices, parents at odd ones")
        n = 1
        while 2 * n - 1 < len(nodes):
            n *= 2
        treemath.node_width(n)  # enforces MLS_MAX_LEAVES
        self.suite = suite
        self._n_leaves = n
        self._nodes = list(nodes) + [None] * (2 * n - 1 - len(nodes))
        self._th = [None] * (2 * n - 1)
        self._res = [None] * (2 * n - 1)
        self._enc = {}
        self._sig = {}
        self._creds = None
        for node in self._nodes:
            if node is not None:
                self._index(node, 1)

    # --- construction, encoding ----------------------------------------------------

    @classmethod
    def create(cls, suite: CipherSuite, leaf: LeafNode) -> RatchetTree:
        """The one-leaf tree of a new group (RFC 9420 §11)."""
        return cls(suite, [leaf])

    @classmethod
    def decode(cls, suite: CipherSuite, data: bytes) -> RatchetTree:
        """Decode ``optional<Node> ratchet_tree<V>`` (§12.4.3.3); structure only.

        Raises ``DecodeError`` (an empty tree or a trailing blank is a decode
        error too). Call :meth:`validate` before trusting the result.
        """
        return cls(suite, decode_ratchet_tree(data))

    @classmethod
    def from_extension(cls, suite: CipherSuite, extension: Extension) -> RatchetTree:
        if extension.extension_type != ExtensionType.RATCHET_TREE:
            raise UsageError("not a ratchet_tree extension")
        return cls.decode(suite, extension.extension_data)

    def encode(self) -> bytes:
        """The ``ratchet_tree`` extension payload; trailing blank nodes are not sent."""
        return encode_ratchet_tree(self._nodes)

    def to_extension(self) -> Extension:
        return Extension(extension_type=ExtensionType.RATCHET_TREE, extension_data=self.encode())

    def copy(self) -> RatchetTree:
        """An independent tree sharing the (immutable) nodes and the caches' values."""
        other = object.__new__(RatchetTree)
        other.suite = self.suite
        other._n_leaves = self._n_leaves
        other._nodes = list(self._nodes)
        other._th = list(self._th)
        other._res = list(self._res)
        other._enc = dict(self._enc)
        other._sig = dict(self._sig)
        other._creds = self._creds
        return other

    # --- reading ---------------------------------------------------------------------

    @property
    def n_leaves(self) -> int:
        """Leaf slots (a power of two), blank ones included."""
        return self._n_leaves

    @property
    def width(self) -> int:
        return 2 * self._n_leaves - 1

    @property
    def root(self) -> int:
        return self._n_leaves - 1

    def nodes(self) -> tuple[Node | None, ...]:
        """All nodes in array order (padded to the full width)."""
        return tuple(self._nodes)

    def node(self, x: int) -> Node | None:
        self._check_node(x)
        return self._nodes[x]

    def leaf(self, index: int) -> LeafNode | None:
        self._check_leaf(index)
        node = self._nodes[2 * index]
        return node if isinstance(node, LeafNode) else None

    def parent_node(self, x: int) -> ParentNode | None:
        self._check_node(x)
        if not x & 1:
            raise UsageError("node is a leaf")
        node = self._nodes[x]
        return node if isinstance(node, ParentNode) else None

    def leaves(self) -> Iterator[tuple[int, LeafNode]]:
        """``(leaf index, LeafNode)`` for every non-blank leaf, left to right."""
        nodes = self._nodes
        for i in range(self._n_leaves):
            node = nodes[2 * i]
            if isinstance(node, LeafNode):
                yield i, node

    def member_count(self) -> int:
        return sum(1 for _ in self.leaves())

    def has_encryption_key(self, key: bytes) -> bool:
        """Whether any node (leaf or parent) holds ``key`` (§12.4.2 uniqueness)."""
        return key in self._enc

    def has_signature_key(self, key: bytes) -> bool:
        return key in self._sig

    def find_leaf_by_signature_key(self, key: bytes) -> int | None:
        if key not in self._sig:
            return None
        for i, leaf in self.leaves():
            if leaf.signature_key == key:
                return i
        return None

    def leftmost_blank_leaf(self) -> int:
        """Where the next Add goes (§12.1.1): ``n_leaves`` if the tree must be extended."""
        nodes = self._nodes
        for i in range(self._n_leaves):
            if nodes[2 * i] is None:
                return i
        return self._n_leaves

    # --- resolution and paths (§4.1.1, §4.1.2) -----------------------------------

    def resolution(self, x: int) -> tuple[int, ...]:
        """Node indices of the resolution of node ``x`` (unmerged leaves included)."""
        self._check_node(x)
        return self._resolution(x)

    def _resolution(self, x: int) -> tuple[int, ...]:
        r = self._res[x]
        if r is not None:
            return r
        node = self._nodes[x]
        if node is not None:
            if isinstance(node, ParentNode) and node.unmerged_leaves:
                r = (x, *(2 * u for u in node.unmerged_leaves))
            else:
                r = (x,)
        elif not x & 1:
            r = ()
        else:
            k = treemath.level(x)
            r = self._resolution(x ^ (1 << (k - 1))) + self._resolution(x ^ (3 << (k - 1)))
        self._res[x] = r
        return r

    def filtered_path_with_copath(self, leaf_index: int) -> tuple[tuple[int, int], ...]:
        """``(filtered direct path node, its copath child)`` pairs from leaf to root (§4.1.2)."""
        self._check_leaf(leaf_index)
        return tuple(
            (p, c)
            for p, c in treemath.path_with_copath(2 * leaf_index, self._n_leaves)
            if self._resolution(c)
        )

    def filtered_direct_path(self, leaf_index: int) -> tuple[int, ...]:
        return tuple(p for p, _ in self.filtered_path_with_copath(leaf_index))

    # --- tree hash (§7.8) ---------------------------------------------------------

    def tree_hash(self, x: int | None = None) -> bytes:
        """Tree hash of node ``x`` (the root by default), cached per node."""
        if x is None:
            x = self._n_leaves - 1
        else:
            self._check_node(x)
        return self._hash(x)

    def _hash(self, x: int) -> bytes:
        h = self._th[x]
        if h is None:
            node = self._nodes[x]
            if not x & 1:
                h = self._leaf_hash(x, node)
            else:
                k = treemath.level(x)
                h = self._parent_hash_input(
                    node, self._hash(x ^ (1 << (k - 1))), self._hash(x ^ (3 << (k - 1)))
                )
            self._th[x] = h
        return h

    def _leaf_hash(self, x: int, node: Node | None) -> bytes:
        # TreeHashInput{leaf, LeafNodeHashInput{leaf_index, optional<LeafNode>}}
        w = Writer()
        w.u8(NodeType.LEAF)
        w.u32(x >> 1)
        w.optional(node, write_struct)
        return self.suite.digest(w.getvalue())

    def _parent_hash_input(self, node: Node | None, left: bytes, right: bytes) -> bytes:
        # TreeHashInput{parent, ParentNodeHashInput{optional<ParentNode>, left, right}}
        w = Writer()
        w.u8(NodeType.PARENT)
        w.optional(node, write_struct)
        w.opaque_v(left)
        w.opaque_v(right)
        return self.suite.digest(w.getvalue())

    def _hash_without(self, x: int, removed: frozenset[int]) -> bytes:
        """Tree hash of ``x`` with the leaves in ``removed`` blanked and dropped from
        every unmerged_leaves list (§7.9 original sibling tree hash)."""
        leaves = treemath.subtree_leaves(x)
        if not any(u in leaves for u in removed):
            return self._hash(x)
        if not x & 1:
            return self._leaf_hash(x, None)
        node = self._nodes[x]
        if isinstance(node, ParentNode):
            node = replace(
                node, unmerged_leaves=tuple(u for u in node.unmerged_leaves if u not in removed)
            )
        k = treemath.level(x)
        return self._parent_hash_input(
            node,
            self._hash_without(x ^ (1 << (k - 1)), removed),
            self._hash_without(x ^ (3 << (k - 1)), removed),
        )

    # --- parent hash (§7.9) -------------------------------------------------------

    def parent_hash(self, p: int, s: int) -> bytes:
        """Parent hash of non-blank parent ``p`` with copath child ``s`` (§7.9)."""
        self._check_node(s)
        node = self.parent_node(p)
        if node is None:
            raise UsageError("parent hash of a blank node")
        if s not in (treemath.left(p), treemath.right(p)):
            raise UsageError("s is not a child of p")
        return self._parent_hash(node, s)

    def _parent_hash(self, node: ParentNode, s: int) -> bytes:
        if node.unmerged_leaves:
            osth = self._hash_without(s, frozenset(node.unmerged_leaves))
        else:
            osth = self._hash(s)
        return self._ph(node.encryption_key, node.parent_hash, osth)

    def _ph(self, encryption_key: bytes, parent_hash: bytes, osth: bytes) -> bytes:
        # ParentHashInput{encryption_key, parent_hash, original_sibling_tree_hash}
        w = Writer()
        w.opaque_v(encryption_key)
        w.opaque_v(parent_hash)
        w.opaque_v(osth)
        return self.suite.digest(w.getvalue())

    def verify_parent_hashes(self) -> None:
        """RFC 9420 §7.9.2, top down: every non-blank parent P has exactly one
        descendant D whose parent_hash links it to P.

        D is the single node of the resolution of one child C of P that is not
        an unmerged leaf of P (and the other resolution entries are exactly P's
        unmerged leaves under C); the link holds if D.parent_hash is the parent
        hash of P with copath child S (the other child). Since every non-blank
        parent has its link, each chains down to a leaf. Raises
        :class:`InvalidParentHash`.
        """
        nodes = self._nodes
        for p in range(1, self.width, 2):
            node = nodes[p]
            if not isinstance(node, ParentNode):
                continue
            k = treemath.level(p)
            left, right = p ^ (1 << (k - 1)), p ^ (3 << (k - 1))
            links = 0
            for c, s in ((left, right), (right, left)):
                res_c = self._resolution(c)
                leaves_c = treemath.subtree_leaves(c)
                unmerged_c = {2 * u for u in node.unmerged_leaves if u in leaves_c}
                rest = [d for d in res_c if d not in unmerged_c]
                if len(rest) != 1 or len(res_c) != len(unmerged_c) + 1:
                    continue
                d_node = nodes[rest[0]]
                if d_node is None or not d_node.parent_hash:
                    continue
                if d_node.parent_hash == self._parent_hash(node, s):
                    links += 1
            if links != 1:
                raise InvalidParentHash(f"parent node {p} is not parent-hash valid")

    # --- changes -------------------------------------------------------------------

    def _set(self, x: int, node: Node | None) -> None:
        old = self._nodes[x]
        if old is not None:
            self._index(old, -1)
            if not x & 1:
                self._creds = None
        self._nodes[x] = node
        if node is not None:
            self._index(node, 1)
            if not x & 1:
                self._creds = None
        # Only x and its ancestors summarise x: clear their caches, nothing else.
        th, res, r = self._th, self._res, self._n_leaves - 1
        while True:
            th[x] = None
            res[x] = None
            if x == r:
                return
            k = ((x ^ (x + 1)).bit_length()) - 1
            x = (x | (1 << k)) ^ (((x >> (k + 1)) & 1) << (k + 1))

    def _index(self, node: Node, delta: int) -> None:
        for table, key in ((self._enc, node.encryption_key),) + (
            ((self._sig, node.signature_key),) if isinstance(node, LeafNode) else ()
        ):
            count = table.get(key, 0) + delta
            if count:
                table[key] = count
            else:
                del table[key]

    def set_leaf(self, index: int, leaf: LeafNode | None) -> None:
        """Replace leaf ``index`` as is (no path blanking); for TreeKEM merges."""
        self._check_leaf(index)
        self._set(2 * index, leaf)

    def set_parent(self, x: int, node: ParentNode | None) -> None:
        self._check_node(x)
        if not x & 1:
            raise UsageError("node is a leaf")
        self._set(x, node)

    def blank_path(self, index: int) -> None:
        """Blank the parents on leaf ``index``'s direct path (not the leaf itself)."""
        self._check_leaf(index)
        for p in treemath.direct_path(2 * index, self._n_leaves):
            if self._nodes[p] is not None:
                self._set(p, None)

    def add_leaf(self, leaf: LeafNode) -> int:
        """RFC 9420 §12.1.1: place ``leaf`` in the leftmost blank leaf (extending the
        tree if there is none) and mark it unmerged at every non-blank ancestor.
        Returns the new leaf index."""
        index = self.leftmost_blank_leaf()
        if index == self._n_leaves:
            self._extend()
        for p in treemath.direct_path(2 * index, self._n_leaves):
            node = self._nodes[p]
            if isinstance(node, ParentNode):
                unmerged = tuple(sorted({*node.unmerged_leaves, index}))
                self._set(p, replace(node, unmerged_leaves=unmerged))
        self._set(2 * index, leaf)
        return index

    def update_leaf(self, index: int, leaf: LeafNode) -> None:
        """RFC 9420 §12.1.2: replace the sender's leaf and blank its direct path."""
        self._check_member(index)
        self._set(2 * index, leaf)
        self.blank_path(index)

    def remove_leaf(self, index: int) -> None:
        """RFC 9420 §12.1.3: blank the leaf and its direct path, then truncate."""
        self._check_member(index)
        self._set(2 * index, None)
        self.blank_path(index)
        self.truncate()

    def truncate(self) -> None:
        """Drop right subtrees with no non-blank leaf (§7.7): 2^d leaves remain, with
        d the smallest value such that 2^d exceeds the rightmost non-blank leaf."""
        last = self._n_leaves - 1
        while last > 0 and self._nodes[2 * last] is None:
            last -= 1
        n = 1
        while n <= last:
            n *= 2
        if n == self._n_leaves:
            return
        width = 2 * n - 1
        for node in self._nodes[width:]:
            if node is not None:
                self._index(node, -1)
        del self._nodes[width:], self._th[width:], self._res[width:]
        self._n_leaves = n
        self._creds = None

    def _extend(self) -> None:
        # §7.7: a new blank root whose left subtree is the old tree; in the array
        # this only appends blanks, and every cached value stays valid.
        n = self._n_leaves
        treemath.node_width(2 * n)  # refuses to grow past MLS_MAX_LEAVES
        self._nodes.extend([None] * (2 * n))
        self._th.extend([None] * (2 * n))
        self._res.extend([None] * (2 * n))
        self._n_leaves = 2 * n

    def path_parent_hash(self, index: int, public_keys: Sequence[bytes]) -> bytes:
        """The parent hash leaf ``index`` must carry once ``public_keys`` are merged
        onto its filtered direct path (§7.9), computed without changing the tree."""
        pairs = self.filtered_path_with_copath(index)
        if len(pairs) != len(public_keys):
            raise UsageError("one public key per filtered direct path node is needed")
        return self._path_parent_hashes(pairs, public_keys)[0]

    def _path_parent_hashes(
        self, pairs: Sequence[tuple[int, int]], public_keys: Sequence[bytes]
    ) -> tuple[bytes, list[bytes]]:
        # §7.9: hashes chain root to leaf. Each copath child S is off the
        # sender's path and the new nodes have no unmerged leaves, so the
        # original sibling tree hash is S's current (cached) tree hash.
        above = b""
        fields = [b""] * len(pairs)
        for i in range(len(pairs) - 1, -1, -1):
            fields[i] = above
            above = self._ph(public_keys[i], above, self._hash(pairs[i][1]))
        return above, fields

    def merge_path_keys(
        self,
        index: int,
        public_keys: Sequence[bytes],
        *,
        leaf_parent_hash: bytes | None = None,
    ) -> bytes:
        """RFC 9420 §7.5 merge, public keys only: blank leaf ``index``'s direct path,
        put ``public_keys`` on its filtered direct path (no unmerged leaves, parent
        hashes chained root to leaf) and return the parent hash the new leaf must
        carry (``b""`` if the filtered direct path is empty).

        If ``leaf_parent_hash`` (a received leaf's) is given and differs, raise
        :class:`InvalidParentHash` before changing anything (§7.9.2). The caller
        then sets the leaf itself with :meth:`set_leaf`.
        """
        pairs = self.filtered_path_with_copath(index)
        if len(pairs) != len(public_keys):
            raise UsageError("one public key per filtered direct path node is needed")
        leaf_hash, fields = self._path_parent_hashes(pairs, public_keys)
        if leaf_parent_hash is not None and leaf_parent_hash != leaf_hash:
            raise InvalidParentHash("leaf parent_hash does not match the merged path")
        self.blank_path(index)
        for (p, _), key, ph in zip(pairs, public_keys, fields, strict=True):
            self._set(p, ParentNode(encryption_key=key, parent_hash=ph))
        return leaf_hash

    # --- validation (§7.3, §7.9.2, §12.4.3.3) --------------------------------------

    def validate(
        self,
        group_id: bytes,
        *,
        tree_hash: bytes | None = None,
        required_capabilities: RequiredCapabilities | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Everything a joiner checks on a tree received from a peer.

        * the root tree hash equals ``tree_hash`` if given (§12.4.3.3);
        * every leaf passes :func:`check_leaf_node` (signatures bound to
          ``group_id`` and the leaf index for update/commit leaves);
        * credential types in use are supported by every member (§7.3);
        * encryption keys are unique over all nodes, signature keys over the
          leaves (§7.3, §16.8);
        * unmerged leaves are sorted, below their parent, non-blank, and also
          unmerged at every non-blank node in between (§7.1, §4.2);
        * every non-blank parent is parent-hash valid (§7.9.2).
        """
        if tree_hash is not None and tree_hash != self.tree_hash():
            raise TreeHashMismatch("ratchet tree hash does not match the group context")
        last = self._n_leaves - 1
        while last > 0 and self._nodes[2 * last] is None:
            last -= 1
        if self._nodes[2 * last] is None:
            raise TreeError("ratchet tree has no member")
        if self._n_leaves > 1 and 2 * last < self._n_leaves:
            # §7.7: a blank right subtree is truncated away, never sent.
            raise TreeError("ratchet tree has a blank right subtree")
        if any(count > 1 for count in self._enc.values()):
            raise DuplicateKey("an encryption key appears in two tree nodes")
        if any(count > 1 for count in self._sig.values()):
            raise DuplicateKey("a signature key appears in two leaves")
        for i, leaf in self.leaves():
            check_leaf_node(
                self.suite,
                leaf,
                group_id=group_id,
                leaf_index=i,
                required_capabilities=required_capabilities,
                now_ms=now_ms,
            )
        summary = self._credential_summary()
        for i, leaf in self.leaves():
            caps = leaf.capabilities.credentials
            if any(t not in caps for t in summary.in_use):
                raise InvalidLeafNode(f"leaf {i} does not support a credential type in use")
        self._validate_unmerged()
        self.verify_parent_hashes()

    def _validate_unmerged(self) -> None:
        nodes = self._nodes
        for p in range(1, self.width, 2):
            node = nodes[p]
            if not isinstance(node, ParentNode) or not node.unmerged_leaves:
                continue
            um = node.unmerged_leaves
            if any(a >= b for a, b in itertools.pairwise(um)):
                raise InvalidUnmergedLeaves(f"unmerged leaves of node {p} are not sorted")
            below = treemath.subtree_leaves(p)
            for u in um:
                if u not in below or nodes[2 * u] is None:
                    raise InvalidUnmergedLeaves(f"node {p} lists a leaf it does not cover")
                # A leaf added after P was set was added after every node between
                # it and P was set too, unless that node was set later (which
                # would have reset P as well).
                for q in treemath.direct_path(2 * u, self._n_leaves):
                    if q == p:
                        break
                    between = nodes[q]
                    if isinstance(between, ParentNode) and u not in between.unmerged_leaves:
                        raise InvalidUnmergedLeaves(
                            f"leaf {u} is unmerged at node {p} but not at node {q}"
                        )

    def check_leaf_fits(self, leaf: LeafNode, *, replacing: int | None = None) -> None:
        """Tree-relative checks of RFC 9420 §7.3 for a leaf about to enter the tree.

        ``replacing`` is the leaf index it replaces (Update, UpdatePath), or
        ``None`` for an Add. Checks: its encryption key is in no node at all (so
        it also differs from the replaced leaf's), its signature key in no other
        leaf, its credential type is supported by every other member, and it
        supports every credential type the other members use.
        """
        old: LeafNode | None = None
        if replacing is not None:
            self._check_member(replacing)
            old = self.leaf(replacing)
        if leaf.encryption_key in self._enc:
            raise DuplicateKey("leaf encryption key is already in the tree")
        sig_uses = self._sig.get(leaf.signature_key, 0)
        if old is not None and old.signature_key == leaf.signature_key:
            sig_uses -= 1
        if sig_uses:
            raise DuplicateKey("leaf signature key is used by another member")
        summary = self._credential_summary()
        members = summary.members
        in_use = dict(summary.in_use)
        supported = dict(summary.supported)
        if old is not None:
            members -= 1
            in_use[int(old.credential.credential_type)] -= 1
            for t in set(old.capabilities.credentials):
                supported[t] -= 1
        ctype = int(leaf.credential.credential_type)
        if supported.get(ctype, 0) != members:
            raise InvalidLeafNode("another member does not support this credential type")
        caps = leaf.capabilities.credentials
        if any(n and t not in caps for t, n in in_use.items()):
            raise InvalidLeafNode("leaf does not support a credential type in use")

    def _credential_summary(self) -> _CredentialSummary:
        if self._creds is None:
            in_use: dict[int, int] = {}
            supported: dict[int, int] = {}
            members = 0
            for _, leaf in self.leaves():
                members += 1
                t = int(leaf.credential.credential_type)
                in_use[t] = in_use.get(t, 0) + 1
                for c in set(leaf.capabilities.credentials):
                    supported[c] = supported.get(c, 0) + 1
            self._creds = _CredentialSummary(members, in_use, supported)
        return self._creds

    # --- index checks -------------------------------------------------------------

    def _check_node(self, x: int) -> None:
        if not 0 <= x < 2 * self._n_leaves - 1:
            raise UsageError("node index outside the tree")

    def _check_leaf(self, index: int) -> None:
        if not 0 <= index < self._n_leaves:
            raise UsageError("leaf index outside the tree")

    def _check_member(self, index: int) -> None:
        # Leaf indices in proposals come from peers: a bad one is their fault.
        if not 0 <= index < self._n_leaves or self._nodes[2 * index] is None:
            raise InvalidLeafIndex("leaf index does not name a member")

    def __repr__(self) -> str:
        return f"RatchetTree(n_leaves={self._n_leaves}, members={self.member_count()})"

