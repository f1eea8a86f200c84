"""The secret tree and per-sender hash ratchets (RFC 9420 §9), plus sender-data keys (§6.3.2).

::

    encryption_secret (root)            node secrets, derived lazily downwards:
          |                             left  = ExpandWithLabel(s, "tree", "left",  Nh)
        .-+-.                           right = ExpandWithLabel(s, "tree", "right", Nh)
       /     \\
      E       F         a node is deleted as soon as its children exist
     / \\     / \\
    A   B   C   D ----+--> "handshake"   -> HR0 -> HR1 -> ...   (proposals, commits)
                      +--> "application" -> AR0 -> AR1 -> ...   (application data)

    ratchet_secret[j] --+--> DeriveTreeSecret(., "key",    j, Nk) = key[j]
                        +--> DeriveTreeSecret(., "nonce",  j, Nn) = nonce[j]
                        +--> DeriveTreeSecret(., "secret", j, Nh) = ratchet_secret[j+1]

Forward secrecy (§9.2): a ratchet secret is dropped once the next one exists;
a key is dropped once used; a skipped key is kept (bounded by
``MLS_MAX_SKIPPED_KEYS``) only until it is used. Python cannot wipe memory, so
"deleted" means every reference we hold is dropped.

Receiving is transactional (check, then commit): :meth:`SecretTree.peek` computes a
key without changing the tree; :meth:`PendingKey.consume` commits the change
once the message has authenticated. A message that fails to decrypt therefore
leaves the tree exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from sottovoce.crypto.labels import expand_with_label
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import InternalError, UsageError
from sottovoce.limits import MLS_MAX_FORWARD_RATCHET, MLS_MAX_GENERATION, MLS_MAX_SKIPPED_KEYS
from sottovoce.mls import treemath
from sottovoce.mls.common import ContentType
from sottovoce.mls.errors import MlsError
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret

__all__ = [
    "GenerationExpired",
    "GenerationTooFar",
    "PendingKey",
    "RatchetSnapshot",
    "RatchetType",
    "ReplayedGeneration",
    "SecretTree",
    "SecretTreeError",
    "SecretTreeSnapshot",
    "derive_tree_secret",
    "sender_data_key_nonce",
]


# --- errors ------------------------------------------------------------------


class SecretTreeError(MlsError):
    """A PrivateMessage names a (sender, generation) we cannot or must not decrypt."""

    code = "mls_generation_rejected"


class ReplayedGeneration(SecretTreeError):
    """The key for this generation was already used: the message is a replay or duplicate."""

    code = "mls_replayed_generation"


class GenerationTooFar(SecretTreeError):
    """The generation is more than ``MLS_MAX_FORWARD_RATCHET`` ahead of the sender's ratchet."""

    code = "mls_generation_too_far"


class GenerationExpired(SecretTreeError):
    """The generation is older than the skipped keys we keep (used or evicted)."""

    code = "mls_generation_expired"


# --- primitives ----------------------------------------------------------------


class RatchetType(IntEnum):
    """Which of a sender's two hash ratchets (§9) protects a message."""

    HANDSHAKE = 1
    APPLICATION = 2

    @classmethod
    def for_content(cls, content_type: int) -> RatchetType:
        # RFC 9420 §6.3.1: application data uses the application ratchet;
        # proposals and commits use the handshake ratchet.
        if content_type == ContentType.APPLICATION:
            return cls.APPLICATION
        if content_type in (ContentType.PROPOSAL, ContentType.COMMIT):
            return cls.HANDSHAKE
        raise UsageError("unknown content type")


_RATCHET_LABEL = {RatchetType.HANDSHAKE: b"handshake", RatchetType.APPLICATION: b"application"}


def derive_tree_secret(
    suite: CipherSuite, secret: bytes, label: bytes, generation: int, length: int
) -> bytes:
    """DeriveTreeSecret (§9.1): ExpandWithLabel with the generation as a big-endian uint32."""
    if not 0 <= generation <= MLS_MAX_GENERATION:
        raise UsageError("generation is not a uint32")
    return expand_with_label(suite, secret, label, generation.to_bytes(4, "big"), length)


def sender_data_key_nonce(
    suite: CipherSuite, sender_data_secret: bytes | Secret, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """§6.3.2: key and nonce for SenderData, from the first ``Nh`` bytes of the ciphertext."""
    secret = _raw(sender_data_secret)
    sample = ciphertext[: suite.nh]  # the whole ciphertext if it is shorter
    key = expand_with_label(suite, secret, b"key", sample, suite.aead_key_size)
    nonce = expand_with_label(suite, secret, b"nonce", sample, suite.aead_nonce_size)
    return key, nonce


def _raw(value: bytes | Secret) -> bytes:
    return value.expose() if isinstance(value, Secret) else bytes(value)


# --- one hash ratchet --------------------------------------------------------------


class _Ratchet:
    """One sender ratchet: the next unused generation, its secret, and skipped keys."""

    __slots__ = ("expired_below", "generation", "secret", "skipped")

    def __init__(
        self,
        generation: int,
        secret: Secret,
        skipped: dict[int, tuple[Secret, Secret]],
        expired_below: int,
    ) -> None:
        self.generation = generation  # next generation the chain itself will produce
        self.secret = secret  # ratchet_secret[generation]
        # generation -> (key, nonce), ascending; unused keys below ``generation``.
        self.skipped = skipped
        # Every generation below this that is not in ``skipped`` was evicted or used.
        self.expired_below = expired_below

    def copy(self) -> _Ratchet:
        return _Ratchet(self.generation, self.secret, dict(self.skipped), self.expired_below)

    def __repr__(self) -> str:
        return f"_Ratchet(generation={self.generation}, skipped={len(self.skipped)})"

    def _step(self, suite: CipherSuite, keep: bool) -> tuple[Secret, Secret] | None:
        """Derive key/nonce for ``generation`` (if ``keep``) and move the chain one step on."""
        j, s = self.generation, self.secret.expose()
        out = None
        if keep:
            out = (
                Secret(derive_tree_secret(suite, s, b"key", j, suite.aead_key_size)),
                Secret(derive_tree_secret(suite, s, b"nonce", j, suite.aead_nonce_size)),
            )
        self.secret = Secret(derive_tree_secret(suite, s, b"secret", j, suite.nh))
        self.generation = j + 1
        return out

    def take(self, suite: CipherSuite, generation: int) -> tuple[Secret, Secret]:
        """Return and forget the key/nonce of ``generation`` (mutates ``self``)."""
        if generation < self.generation:
            found = self.skipped.pop(generation, None)
            if found is not None:
                return found
            if generation < self.expired_below:
                raise GenerationExpired("generation older than the skipped-key window")
            raise ReplayedGeneration("key for this generation was already used")
        if generation - self.generation > MLS_MAX_FORWARD_RATCHET:
            raise GenerationTooFar("generation too far ahead of the sender ratchet")
        while self.generation < generation:
            # Only the newest MLS_MAX_SKIPPED_KEYS skipped keys could be kept;
            # older ones are never derived, just stepped over.
            keep = generation - self.generation <= MLS_MAX_SKIPPED_KEYS
            j = self.generation
            kn = self._step(suite, keep)
            if kn is None:
                self.expired_below = j + 1
            else:
                self.skipped[j] = kn
        while len(self.skipped) > MLS_MAX_SKIPPED_KEYS:
            # Insertion order is ascending generation: evict the oldest.
            oldest = next(iter(self.skipped))
            del self.skipped[oldest]
            self.expired_below = max(self.expired_below, oldest + 1)
        out = self._step(suite, True)
        if out is None:  # pragma: no cover - _step(keep=True) always returns
            raise InternalError("ratchet step produced no key")
        return out


# --- staged changes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything one key use changes in the tree, computed without changing it."""

    version: int
    leaf: int
    ratchet_type: RatchetType
    generation: int
    key: Secret
    nonce: Secret
    node_writes: tuple[tuple[int, Secret], ...]
    node_deletes: tuple[int, ...]
    ratchets: tuple[tuple[RatchetType, _Ratchet], ...]


class PendingKey:
    """A key/nonce computed by :meth:`SecretTree.peek`, not yet consumed.

    Use :attr:`key` and :attr:`nonce` to try decryption; call :meth:`consume`
    only after the content authenticated. Dropping a pending key without
    consuming it leaves the tree unchanged.
    """

    __slots__ = ("_plan", "_tree")

    def __init__(self, tree: SecretTree, plan: _Plan) -> None:
        self._tree = tree
        self._plan = plan

    leaf = ReadOnly[int]("_plan.leaf")
    ratchet_type = ReadOnly[RatchetType]("_plan.ratchet_type")
    generation = ReadOnly[int]("_plan.generation")

    @property
    def key(self) -> bytes:
        return self._plan.key.expose()

    @property
    def nonce(self) -> bytes:
        return self._plan.nonce.expose()

    def consume(self) -> None:
        """Mark the key used and delete it (and what it was derived from) from the tree.

        Raises :class:`ReplayedGeneration` if the same generation was consumed
        meanwhile (for example by another pending key for it).
        """
        self._tree._commit(self._plan)

    def __repr__(self) -> str:
        p = self._plan
        return f"PendingKey(leaf={p.leaf}, {p.ratchet_type.name}, generation={p.generation})"


# --- the tree ------------------------------------------------------------------------


class SecretTree:
    """RFC 9420 §9 secret tree for one epoch, over ``n_leaves`` leaves.

    Not thread-safe; one instance per epoch, owned by the group state.
    """

    __slots__ = ("_nodes", "_ratchets", "_suite", "_version", "n_leaves")

    def __init__(
        self, suite: CipherSuite, encryption_secret: bytes | Secret, n_leaves: int
    ) -> None:
        root = treemath.root(n_leaves)  # validates n_leaves (a power of two)
        secret = _raw(encryption_secret)
        if len(secret) != suite.nh:
            raise UsageError("encryption_secret must be Nh bytes")
        self._suite = suite
        self.n_leaves = n_leaves
        # Node secrets not yet consumed: initially only the root (§9).
        self._nodes: dict[int, Secret] = {root: Secret(secret)}
        self._ratchets: dict[tuple[int, RatchetType], _Ratchet] = {}
        # Bumped on every change, so a stale PendingKey replans before committing.
        self._version = 0

    def __repr__(self) -> str:
        return f"SecretTree(n_leaves={self.n_leaves}, held_nodes={len(self._nodes)})"

    # --- sending ---------------------------------------------------------------------

    def next_key(self, leaf: int, ratchet_type: RatchetType) -> tuple[int, bytes, bytes]:
        """Our own next ``(generation, key, nonce)``, consumed at once (§6.3.1)."""
        ratchet = self._ratchets.get((leaf, ratchet_type))
        generation = 0 if ratchet is None else ratchet.generation
        if generation > MLS_MAX_GENERATION:
            raise UsageError("sender ratchet exhausted; a new epoch is needed")
        plan = self._plan(leaf, ratchet_type, generation)
        self._apply(plan)
        return generation, plan.key.expose(), plan.nonce.expose()

    # --- receiving -------------------------------------------------------------------

    def peek(self, leaf: int, ratchet_type: RatchetType, generation: int) -> PendingKey:
        """Key and nonce for ``(leaf, ratchet_type, generation)`` without consuming them.

        Raises :class:`ReplayedGeneration`, :class:`GenerationExpired` or
        :class:`GenerationTooFar`; :class:`UsageError` for a leaf outside the tree.
        """
        return PendingKey(self, self._plan(leaf, ratchet_type, generation))

    def key_for(self, leaf: int, ratchet_type: RatchetType, generation: int) -> tuple[bytes, bytes]:
        """Peek and consume in one step; for callers with nothing left to authenticate."""
        pending = self.peek(leaf, ratchet_type, generation)
        pending.consume()
        return pending.key, pending.nonce

    # --- persistence -----------------------------------------------------------------

    def snapshot(self) -> SecretTreeSnapshot:
        """Everything the tree holds, as a value later changes to the tree do not touch."""
        return SecretTreeSnapshot(
            n_leaves=self.n_leaves,
            nodes=tuple(self._nodes.items()),
            ratchets=tuple(
                RatchetSnapshot(
                    leaf=leaf,
                    ratchet_type=rtype,
                    generation=r.generation,
                    secret=r.secret,
                    expired_below=r.expired_below,
                    skipped=tuple((g, key, nonce) for g, (key, nonce) in r.skipped.items()),
                )
                for (leaf, rtype), r in self._ratchets.items()
            ),
        )

    @classmethod
    def restore(cls, suite: CipherSuite, snapshot: SecretTreeSnapshot) -> SecretTree:
        """The tree :meth:`snapshot` described. The snapshot is trusted: a decoder
        checks a stored one first (coverage, windows, sizes; ``mls.state``)."""
        tree = cls.__new__(cls)
        tree._suite = suite
        tree.n_leaves = snapshot.n_leaves
        tree._nodes = dict(snapshot.nodes)
        tree._ratchets = {
            (r.leaf, r.ratchet_type): _Ratchet(
                r.generation,
                r.secret,
                {g: (key, nonce) for g, key, nonce in r.skipped},
                r.expired_below,
            )
            for r in snapshot.ratchets
        }
        tree._version = 0
        return tree

    # --- introspection (tests, forward-secrecy audits) --------------------------------

    def held_nodes(self) -> frozenset[int]:
        """Node indices whose tree secrets are still held."""
        return frozenset(self._nodes)

    def ratchet_position(self, leaf: int, ratchet_type: RatchetType) -> tuple[int, tuple[int, ...]]:
        """``(next chain generation, skipped generations still held)`` for one ratchet."""
        ratchet = self._ratchets.get((leaf, ratchet_type))
        if ratchet is None:
            return 0, ()
        return ratchet.generation, tuple(ratchet.skipped)

    # --- internals -------------------------------------------------------------------

    def _plan(self, leaf: int, ratchet_type: RatchetType, generation: int) -> _Plan:
        if not 0 <= leaf < self.n_leaves:
            raise UsageError("leaf index outside the secret tree")
        if not 0 <= generation <= MLS_MAX_GENERATION:
            raise UsageError("generation is not a uint32")
        rtype = RatchetType(ratchet_type)
        writes: tuple[tuple[int, Secret], ...] = ()
        deletes: tuple[int, ...] = ()
        existing = self._ratchets.get((leaf, rtype))
        if existing is None:
            leaf_secret, writes, deletes = self._derive_leaf(leaf)
            fresh = {
                t: _Ratchet(0, Secret(expand_with_label(
                    self._suite, leaf_secret, label, b"", self._suite.nh)), {}, 0)
                for t, label in _RATCHET_LABEL.items()
            }
            target = fresh[rtype]
            key, nonce = target.take(self._suite, generation)
            ratchets = tuple(fresh.items())
        else:
            target = existing.copy()
            key, nonce = target.take(self._suite, generation)
            ratchets = ((rtype, target),)
        return _Plan(
            version=self._version,
            leaf=leaf,
            ratchet_type=rtype,
            generation=generation,
            key=key,
            nonce=nonce,
            node_writes=writes,
            node_deletes=deletes,
            ratchets=ratchets,
        )

    def _derive_leaf(
        self, leaf: int
    ) -> tuple[bytes, tuple[tuple[int, Secret], ...], tuple[int, ...]]:
        """Leaf secret, plus the node writes/deletes that deriving it implies (pure)."""
        x = treemath.leaf_to_node(leaf)
        path = (x, *treemath.direct_path(x, self.n_leaves))
        # Exactly one node on the leaf's path is still held: the lowest derived one.
        i = next((k for k, n in enumerate(path) if n in self._nodes), None)
        if i is None:
            raise InternalError("secret tree lost the ancestor of an unopened leaf")
        node = path[i]
        secret = self._nodes[node].expose()
        writes: list[tuple[int, Secret]] = []
        deletes = [node]
        # Walk down from the held ancestor; keep each off-path child, drop each parent.
        for child in reversed(path[:i]):
            parent = node
            left, right = treemath.left(parent), treemath.right(parent)
            left_s = expand_with_label(self._suite, secret, b"tree", b"left", self._suite.nh)
            right_s = expand_with_label(self._suite, secret, b"tree", b"right", self._suite.nh)
            if child == left:
                writes.append((right, Secret(right_s)))
                secret = left_s
            else:
                writes.append((left, Secret(left_s)))
                secret = right_s
            node = child
        return secret, tuple(writes), tuple(deletes)

    def _commit(self, plan: _Plan) -> None:
        if plan.version != self._version:
            # The tree changed since the peek: replan against the current state.
            # Deterministic derivation gives the same key, or a typed error if
            # that generation was consumed in between.
            fresh = self._plan(plan.leaf, plan.ratchet_type, plan.generation)
            if fresh.key != plan.key:  # pragma: no cover - would be our bug
                raise InternalError("replanned key differs")
            plan = fresh
        self._apply(plan)

    def _apply(self, plan: _Plan) -> None:
        for node in plan.node_deletes:
            del self._nodes[node]
        for node, secret in plan.node_writes:
            self._nodes[node] = secret
        for rtype, ratchet in plan.ratchets:
            self._ratchets[(plan.leaf, rtype)] = ratchet
        self._version += 1


# --- the tree as a value ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RatchetSnapshot:
    """One sender ratchet as a value (see :class:`_Ratchet`)."""

    leaf: int
    ratchet_type: RatchetType
    #: The next generation the chain itself will produce.
    generation: int
    secret: Secret
    #: Every generation below this that is not in ``skipped`` was evicted or used.
    expired_below: int
    #: ``(generation, key, nonce)`` of unused keys below ``generation``, ascending.
    skipped: tuple[tuple[int, Secret, Secret], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretTreeSnapshot:
    """A :class:`SecretTree` as a value, detached from the live tree (for persistence)."""

    n_leaves: int
    #: ``(node index, tree secret)`` of the node secrets still held.
    nodes: tuple[tuple[int, Secret], ...]
    ratchets: tuple[RatchetSnapshot, ...]
