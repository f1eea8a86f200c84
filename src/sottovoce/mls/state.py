"""Group state persistence: one member's whole group state as bytes.

::

    Group ──snapshot()──► GroupSnapshot ──encode_group_state()──► GroupState bytes
                                                                  (client seals, stores;
    Group ◄──restore()─── GroupSnapshot ◄──decode_group_state()───┘ sans-IO here)
                                          decode, check every invariant

This module knows :class:`~sottovoce.mls.snapshot.GroupSnapshot` and nothing of
the group package (``Group.to_state()`` / ``Group.from_state()`` go through it).

    GroupState = "svMG" || uint16 version || opaque body<V> || SHA-256(all before)

    body = suite, config (without psk_lookup), signing key,
           current epoch (GroupContext, ratchet tree, own private keys,
                          epoch secrets, interim transcript hash, confirmation tag),
           current secret tree (held node secrets, per-sender ratchets with
                                generations and skipped keys),
           proposal cache, private keys of our own pending Updates,
           past epochs (context, tree, sender_data_secret, secret tree),
           resumption PSKs, committed ReInit, removed/active flags,
           our own pending commit (its next epoch) if any

Everything a member holds is kept, so a restored member continues exactly where
it stopped: it derives the same keys, rejects a generation it already used as
a replay, reads late messages of past epochs, and can still merge a commit it
sent before saving (a crash between sending a commit and its acceptance must
not strand the member). Past epochs' and the pending epoch's trees are stored
as differences from the current tree: at 1,000 members (basic credentials) a
full tree is ~170 KB, the difference after a commit a few KB.

When to save (the caller's job, and it matters): every send consumes a key
generation, every receive consumes one too. Save the state *before* sending
what :meth:`~Group.encrypt_application`, ``propose*`` or ``commit`` returned:
a member restored from an older state would reuse a generation, which its
peers reject as a replay and which repeats an AEAD nonce. Save after each
receive too, or a replayed message would be accepted again after a crash. A
commit received but not yet merged is not part of the state: its handshake key
is consumed only by the merge, so after a crash the commit is simply processed
again. :class:`StagedCommit` objects from before a restore belong to the old
instance and cannot be merged into the restored one.

The bytes are secret (private keys, epoch secrets, ratchet secrets): seal them
before storing (the client does); nothing here encrypts. The trailing digest
only catches corruption (a truncated or damaged record), it authenticates
nothing. Decoding trusts nothing either way: it consumes exactly the input,
re-checks every structural invariant the group relies on (tree hash against
the GroupContext, private keys against the tree, signing key against our leaf,
secret-tree coverage, ratchet windows, bounds) and raises only
:class:`InvalidGroupState` (a ``DecodeError``). ``psk_lookup`` is a callable
and is not stored: pass it again to ``Group.from_state`` (or ``Group.restore``).
"""

from __future__ import annotations

import hashlib

from sottovoce.codec.tls import READER_ERRORS, Reader, Writer, write_struct
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import DecodeError, SottovoceError
from sottovoce.limits import MLS_MAX_GENERATION, MLS_MAX_PENDING_PROPOSALS, MLS_MAX_SKIPPED_KEYS
from sottovoce.mls import treemath
from sottovoce.mls.common import (
    Extension,
    GroupContext,
    WireFormat,
    read_extensions,
    write_extensions,
)
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.epoch import Epoch, Member, StagedCommit
from sottovoce.mls.framing import Sender
from sottovoce.mls.key_schedule import EpochSecrets, PreSharedKeyID
from sottovoce.mls.messages import (
    LeafNode,
    Node,
    ReInit,
    read_node,
    read_optional_node,
    read_proposal,
    write_node,
    write_optional_node,
    write_proposal,
)
from sottovoce.mls.proposals import QueuedProposal
from sottovoce.mls.secret_tree import RatchetSnapshot, RatchetType, SecretTreeSnapshot
from sottovoce.mls.snapshot import GroupSnapshot, PastEpochSnapshot
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate
from sottovoce.secret import Secret

__all__ = [
    "STATE_MAGIC",
    "STATE_VERSION",
    "InvalidGroupState",
    "decode_group_state",
    "encode_group_state",
]

#: Leading bytes of every GroupState, so a wrong record is told apart from a damaged one.
STATE_MAGIC = b"svMG"
#: Bumped on any change to the layout; older versions are refused, not guessed at.
STATE_VERSION = 1
_DIGEST_SIZE = 32

# Tree node tags inside a tree stored as a difference from a base tree.
_BLANK = 0
_SAME = 1
_NODE = 2


class InvalidGroupState(DecodeError):
    """Stored group state is truncated, damaged, of another version, or inconsistent."""

    code = "mls_invalid_group_state"


# --- encoding ------------------------------------------------------------------------


def encode_group_state(snapshot: GroupSnapshot) -> bytes:
    """The whole state ``snapshot`` holds (see the module docstring). The result is secret."""
    body = Writer()
    _write_group(body, snapshot)
    w = Writer()
    w.raw(STATE_MAGIC)
    w.u16(STATE_VERSION)
    w.opaque_v(body.getvalue())
    head = w.getvalue()
    return head + hashlib.sha256(head).digest()


def _write_group(w: Writer, g: GroupSnapshot) -> None:
    tree = g.epoch.tree
    w.u16(g.suite.id)
    _write_config(w, g.config)
    w.opaque_v(g.signing_key.private_bytes().expose())
    _write_epoch(w, g.epoch, None)
    _write_secret_tree(w, g.secret_tree)
    w.vector_v(g.proposals, _write_cached_proposal)
    w.vector_v(g.own_update_keys, _write_key_pair)
    w.vector_v(g.past, lambda w2, p: _write_past(w2, p, tree))
    w.vector_v(g.resumption_psks, _write_epoch_secret)
    w.optional(g.reinit, write_struct)
    w.boolean(g.removed)
    w.boolean(g.active)
    w.optional(g.pending_commit, lambda w2, s: _write_pending_commit(w2, s, tree))


def _write_config(w: Writer, c: GroupConfig) -> None:
    w.u8(c.handshake_wire_format)
    w.boolean(c.ratchet_tree_in_welcome)
    w.u32(c.max_past_epochs)
    w.u32(c.max_resumption_psks)
    w.u32(c.padding)


def _write_epoch(w: Writer, e: Epoch, base: RatchetTree | None) -> None:
    e.context.write(w)
    _write_tree(w, e.tree, base)
    w.u32(e.private.leaf_index)
    w.vector_v(e.private.keys.items(), _write_node_secret)
    s = e.secrets
    for secret in (
        s.sender_data_secret,
        s.encryption_secret,
        s.exporter_secret,
        s.external_secret,
        s.confirmation_key,
        s.membership_key,
        s.resumption_psk,
        s.epoch_authenticator,
        s.init_secret,
    ):
        w.opaque_v(secret.expose())
    w.opaque_v(e.interim_transcript_hash)
    w.opaque_v(e.confirmation_tag)


def _write_tree(w: Writer, tree: RatchetTree, base: RatchetTree | None) -> None:
    """``uint32 n_leaves`` then every node slot (the full width, so the tree's size,
    and with it the secret tree's, survives even with blank slots at the end).
    Against a ``base``, a node equal to the base's at the same index is one octet."""
    w.u32(tree.n_leaves)
    nodes = tree.nodes()
    if base is None:
        w.vector_v(nodes, write_optional_node)
        return
    base_nodes = base.nodes()
    inner = Writer()
    for x, node in enumerate(nodes):
        if node is None:
            inner.u8(_BLANK)
        elif x < len(base_nodes) and (base_nodes[x] is node or base_nodes[x] == node):
            inner.u8(_SAME)
        else:
            inner.u8(_NODE)
            write_node(inner, node)
    w.opaque_v(inner.getvalue())


def _write_node_secret(w: Writer, item: tuple[int, Secret]) -> None:
    w.u32(item[0])
    w.opaque_v(item[1].expose())


def _write_key_pair(w: Writer, item: tuple[bytes, Secret]) -> None:
    w.opaque_v(item[0])
    w.opaque_v(item[1].expose())


def _write_epoch_secret(w: Writer, item: tuple[int, Secret]) -> None:
    w.u64(item[0])
    w.opaque_v(item[1].expose())


def _write_secret_tree(w: Writer, t: SecretTreeSnapshot) -> None:
    w.u32(t.n_leaves)
    w.vector_v(t.nodes, _write_node_secret)
    w.vector_v(t.ratchets, _write_ratchet)


def _write_ratchet(w: Writer, r: RatchetSnapshot) -> None:
    w.u32(r.leaf)
    w.u8(r.ratchet_type)
    # The next generation can be 2^32 once the last one is used, hence uint64.
    w.u64(r.generation)
    w.opaque_v(r.secret.expose())
    w.u64(r.expired_below)
    w.vector_v(r.skipped, _write_skipped)


def _write_skipped(w: Writer, item: tuple[int, Secret, Secret]) -> None:
    generation, key, nonce = item
    w.u32(generation)
    w.opaque_v(key.expose())
    w.opaque_v(nonce.expose())


def _write_cached_proposal(w: Writer, item: tuple[bytes, QueuedProposal]) -> None:
    ref, q = item
    w.opaque_v(ref)
    q.sender.write(w)
    write_proposal(w, q.proposal)


def _write_queued(w: Writer, q: QueuedProposal) -> None:
    w.optional(q.ref, Writer.opaque_v)
    q.sender.write(w)
    write_proposal(w, q.proposal)


def _write_past(w: Writer, p: PastEpochSnapshot, base: RatchetTree) -> None:
    w.u64(p.context.epoch)
    p.context.write(w)
    _write_tree(w, p.tree, base)
    w.opaque_v(p.sender_data_secret.expose())
    _write_secret_tree(w, p.secret_tree)


def _write_member(w: Writer, m: Member) -> None:
    w.u32(m.index)
    m.leaf.write(w)


def _write_pending_commit(w: Writer, s: StagedCommit, base: RatchetTree) -> None:
    # Our own commit: the PrivateMessage key it used is already consumed, so
    # there is no pending receive key to keep (it is only set on received ones).
    s.sender.write(w)
    w.u32(s.committer)
    w.vector_v(s.proposals, _write_queued)
    w.vector_v(s.adds, _write_member)
    w.vector_v(s.removes, _write_member)
    w.vector_v(s.updates, _write_member)
    w.vector_v(s.psks, lambda w2, p: p.write(w2))
    w.optional(s.new_extensions, write_extensions)
    w.optional(s.reinit, write_struct)
    w.boolean(s.external)
    w.boolean(s.has_path)
    w.boolean(s.self_removed)
    w.opaque_v(s.authenticated_data)
    w.optional(s._next, lambda w2, e: _write_epoch(w2, e, base))


# --- decoding ------------------------------------------------------------------------


def decode_group_state(data: bytes) -> GroupSnapshot:
    """The snapshot :func:`encode_group_state` saved (its config without ``psk_lookup``).

    Raises :class:`InvalidGroupState` (a ``DecodeError``) and nothing else on
    truncated, damaged, foreign or inconsistent input.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidGroupState("group state must be bytes")
    raw = bytes(data)
    if len(raw) < len(STATE_MAGIC) + 2 + 1 + _DIGEST_SIZE:
        raise InvalidGroupState("group state is truncated")
    head, digest = raw[:-_DIGEST_SIZE], raw[-_DIGEST_SIZE:]
    if raw[: len(STATE_MAGIC)] != STATE_MAGIC:
        raise InvalidGroupState("not a sottovoce group state")
    if hashlib.sha256(head).digest() != digest:
        # Not secret-dependent: the digest is over stored bytes, no oracle to protect.
        raise InvalidGroupState("group state is truncated or damaged")
    r = Reader(head, len(STATE_MAGIC))
    try:
        version = r.u16()
        if version != STATE_VERSION:
            raise InvalidGroupState(f"unsupported group state version {version}")
        body = r.block(r.varint())
        r.finish()
        group = _read_group(body)
        body.finish()
    except InvalidGroupState:
        raise
    except (SottovoceError, *READER_ERRORS) as exc:
        # Any typed error from a constructor (UsageError, InvalidKey, a tree
        # error, ...) means the stored state is inconsistent; report it as one kind.
        raise InvalidGroupState(f"group state is inconsistent ({type(exc).__name__})") from None
    return group


def _read_group(r: Reader) -> GroupSnapshot:
    suite = cipher_suite(r.u16())
    config = _read_config(r)
    signing_key = suite.signing_key(r.opaque_v())
    epoch = _read_epoch(r, suite, None)
    _check(epoch.context.cipher_suite == suite.id, "epoch suite differs from the state's")
    own = epoch.tree.leaf(epoch.private.leaf_index)
    _check(
        own is not None and own.signature_key == signing_key.verify_key.data,
        "signing key does not match our leaf",
    )
    number = epoch.context.epoch

    secret_tree = _read_secret_tree(r, suite, epoch.tree.n_leaves)

    proposals: dict[bytes, QueuedProposal] = {}
    for ref, q in r.vector_v(_read_cached_proposal):
        _check(len(ref) == suite.nh and ref not in proposals, "bad or duplicate ProposalRef")
        proposals[ref] = q
    _check(len(proposals) <= MLS_MAX_PENDING_PROPOSALS, "too many cached proposals")

    update_keys: dict[bytes, Secret] = {}
    for public, private in r.vector_v(_read_key_pair):
        _check(suite.hpke.public_from_private(private) == public, "update key pair mismatch")
        _check(public not in update_keys, "duplicate update key")
        update_keys[public] = private

    past = r.vector_v(lambda r2: _read_past(r2, suite, epoch.tree))
    epochs = [p.context.epoch for p in past]
    _check(epochs == sorted(set(epochs)), "past epochs out of order")
    _check(len(past) <= config.max_past_epochs, "more past epochs than configured")
    for p in past:
        _check(p.context.epoch < number, "bad past epoch")
        _check(p.context.group_id == epoch.context.group_id, "past epoch of another group")
        _check(p.context.cipher_suite == suite.id, "past epoch of another suite")

    psks = r.vector_v(_read_epoch_secret)
    psk_epochs = [e for e, _ in psks]
    _check(
        bool(psk_epochs)
        and psk_epochs == sorted(set(psk_epochs))
        and psk_epochs[-1] == number
        and len(psk_epochs) <= config.max_resumption_psks,
        "bad resumption PSK list",
    )
    _check(
        psks[-1][1] == epoch.secrets.resumption_psk,
        "resumption PSK differs from the epoch's",
    )

    reinit = r.optional(ReInit.read)
    removed = r.boolean()
    active = r.boolean()
    _check(
        active == (not removed and reinit is None),
        "active flag contradicts removed/reinit",
    )
    pending_commit = r.optional(lambda r2: _read_pending_commit(r2, suite, epoch))
    _check(pending_commit is None or active, "pending commit in an inactive group")
    return GroupSnapshot(
        suite=suite,
        config=config,
        signing_key=signing_key,
        epoch=epoch,
        secret_tree=secret_tree,
        proposals=tuple(proposals.items()),
        own_update_keys=tuple(update_keys.items()),
        past=tuple(past),
        resumption_psks=tuple(psks),
        reinit=reinit,
        removed=removed,
        active=active,
        pending_commit=pending_commit,
    )


def _check(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidGroupState(f"group state is inconsistent: {reason}")


def _read_config(r: Reader) -> GroupConfig:
    return GroupConfig(
        handshake_wire_format=WireFormat(r.u8()),
        ratchet_tree_in_welcome=r.boolean(),
        max_past_epochs=r.u32(),
        max_resumption_psks=r.u32(),
        padding=r.u32(),
    )


def _read_secret(r: Reader, size: int) -> Secret:
    value = r.opaque_v()
    _check(len(value) == size, "secret of the wrong size")
    return Secret(value)


def _read_epoch(r: Reader, suite: CipherSuite, base: RatchetTree | None) -> Epoch:
    context = GroupContext.read(r)
    _check(context.cipher_suite == suite.id, "epoch of another suite")
    tree = _read_tree(r, suite, base)
    # Recomputes the whole tree hash: checks the tree and warms its caches.
    _check(tree.tree_hash() == context.tree_hash, "tree hash differs from the GroupContext")
    leaf_index = r.u32()
    _check(leaf_index < tree.n_leaves, "our leaf index is outside the tree")
    keys: dict[int, Secret] = {}
    for node, key in r.vector_v(_read_node_secret):
        _check(node not in keys, "duplicate private key")
        keys[node] = key
    _check(2 * leaf_index in keys, "our leaf private key is missing")
    private = TreeKemPrivate(suite=suite, leaf_index=leaf_index, keys=keys)
    private.check(tree)
    nh = suite.nh
    secrets = EpochSecrets(
        suite=suite,
        sender_data_secret=_read_secret(r, nh),
        encryption_secret=_read_secret(r, nh),
        exporter_secret=_read_secret(r, nh),
        external_secret=_read_secret(r, nh),
        confirmation_key=_read_secret(r, nh),
        membership_key=_read_secret(r, nh),
        resumption_psk=_read_secret(r, nh),
        epoch_authenticator=_read_secret(r, nh),
        init_secret=_read_secret(r, nh),
    )
    return Epoch(
        context=context,
        tree=tree,
        private=private,
        secrets=secrets,
        interim_transcript_hash=r.opaque_v(),
        confirmation_tag=r.opaque_v(),
    )


def _read_tree(r: Reader, suite: CipherSuite, base: RatchetTree | None) -> RatchetTree:
    n_leaves = r.u32()
    width = treemath.node_width(n_leaves)  # a power of two within MLS_MAX_LEAVES
    nodes: list[Node | None]
    if base is None:
        nodes = r.vector_v(read_optional_node)
    else:
        base_nodes = base.nodes()
        sub = r.block(r.varint())
        nodes = []
        while not sub.eof() and len(nodes) < width:
            tag = sub.u8()
            if tag == _BLANK:
                nodes.append(None)
            elif tag == _SAME:
                x = len(nodes)
                _check(x < len(base_nodes) and base_nodes[x] is not None, "no base node")
                nodes.append(base_nodes[x])
            elif tag == _NODE:
                nodes.append(read_node(sub))
            else:
                raise InvalidGroupState("bad tree node tag")
        sub.finish()
    _check(len(nodes) == width, "tree width differs from its leaf count")
    tree = RatchetTree(suite, nodes)
    _check(tree.n_leaves == n_leaves, "tree size differs from its leaf count")
    return tree


def _read_node_secret(r: Reader) -> tuple[int, Secret]:
    return r.u32(), Secret(r.opaque_v())


def _read_key_pair(r: Reader) -> tuple[bytes, Secret]:
    return r.opaque_v(), Secret(r.opaque_v())


def _read_epoch_secret(r: Reader) -> tuple[int, Secret]:
    return r.u64(), Secret(r.opaque_v())


def _read_secret_tree(r: Reader, suite: CipherSuite, tree_leaves: int) -> SecretTreeSnapshot:
    n_leaves = r.u32()
    # Checked first: the coverage walk below is O(n_leaves). The secret tree
    # covers the epoch's ratchet tree exactly (EpochSecrets.secret_tree).
    _check(n_leaves == tree_leaves, "secret tree size differs from the tree")
    width = treemath.node_width(n_leaves)
    nodes: dict[int, Secret] = {}
    for x, secret in r.vector_v(_read_node_secret):
        _check(x < width and x not in nodes, "bad secret tree node")
        _check(len(secret) == suite.nh, "secret tree node of the wrong size")
        nodes[x] = secret
    ratchets: dict[tuple[int, RatchetType], RatchetSnapshot] = {}
    for ratchet in r.vector_v(lambda r2: _read_ratchet(r2, suite)):
        leaf, rtype = ratchet.leaf, ratchet.ratchet_type
        _check(leaf < n_leaves and (leaf, rtype) not in ratchets, "bad ratchet leaf")
        ratchets[(leaf, rtype)] = ratchet
    # §9 coverage: a sender's two ratchets exist together, and then no node on
    # its path is held; otherwise exactly one node on its path is (the lowest
    # derived one). Anything else would fail later, mid-conversation.
    for leaf in range(n_leaves):
        has = [(leaf, t) in ratchets for t in RatchetType]
        _check(all(has) or not any(has), "a sender has only one ratchet")
        x = treemath.leaf_to_node(leaf)
        held = sum(1 for n in (x, *treemath.direct_path(x, n_leaves)) if n in nodes)
        _check(held == (0 if all(has) else 1), "secret tree does not cover a sender once")
    return SecretTreeSnapshot(
        n_leaves=n_leaves, nodes=tuple(nodes.items()), ratchets=tuple(ratchets.values())
    )


def _read_ratchet(r: Reader, suite: CipherSuite) -> RatchetSnapshot:
    ratchet = RatchetSnapshot(
        leaf=r.u32(),
        ratchet_type=RatchetType(r.u8()),
        generation=r.u64(),
        secret=_read_secret(r, suite.nh),
        expired_below=r.u64(),
        skipped=tuple(r.vector_v(_read_skipped)),
    )
    generation, expired_below = ratchet.generation, ratchet.expired_below
    _check(generation <= MLS_MAX_GENERATION + 1, "ratchet generation out of range")
    _check(expired_below <= generation, "ratchet window out of range")
    previous = -1
    for g, key, nonce in ratchet.skipped:
        _check(previous < g and expired_below <= g < generation, "skipped keys out of order")
        _check(
            len(key) == suite.aead_key_size and len(nonce) == suite.aead_nonce_size,
            "skipped key of the wrong size",
        )
        previous = g
    _check(len(ratchet.skipped) <= MLS_MAX_SKIPPED_KEYS, "too many skipped keys")
    return ratchet


def _read_skipped(r: Reader) -> tuple[int, Secret, Secret]:
    return r.u32(), Secret(r.opaque_v()), Secret(r.opaque_v())


def _read_cached_proposal(r: Reader) -> tuple[bytes, QueuedProposal]:
    ref = r.opaque_v()
    sender = Sender.read(r)
    return ref, QueuedProposal(proposal=read_proposal(r), sender=sender, ref=ref)


def _read_queued(r: Reader) -> QueuedProposal:
    ref = r.optional(Reader.opaque_v)
    sender = Sender.read(r)
    return QueuedProposal(proposal=read_proposal(r), sender=sender, ref=ref)


def _read_past(r: Reader, suite: CipherSuite, base: RatchetTree) -> PastEpochSnapshot:
    epoch = r.u64()
    context = GroupContext.read(r)
    _check(context.epoch == epoch, "bad past epoch")
    # The tree of a past epoch serves only to find senders' leaves; its hash
    # is not recomputed (that would cost as much as the current tree's).
    tree = _read_tree(r, suite, base)
    sender_data_secret = _read_secret(r, suite.nh)
    secret_tree = _read_secret_tree(r, suite, tree.n_leaves)
    return PastEpochSnapshot(
        context=context, tree=tree, sender_data_secret=sender_data_secret, secret_tree=secret_tree
    )


def _read_member(r: Reader) -> Member:
    return Member(r.u32(), LeafNode.read(r))


def _read_pending_commit(r: Reader, suite: CipherSuite, epoch: Epoch) -> StagedCommit:
    number, group_id = epoch.context.epoch, epoch.context.group_id
    sender = Sender.read(r)
    committer = r.u32()
    proposals = tuple(r.vector_v(_read_queued))
    adds = tuple(r.vector_v(_read_member))
    removes = tuple(r.vector_v(_read_member))
    updates = tuple(r.vector_v(_read_member))
    psks = tuple(r.vector_v(PreSharedKeyID.read))
    new_extensions: tuple[Extension, ...] | None = r.optional(read_extensions)
    reinit = r.optional(ReInit.read)
    external, has_path, self_removed = r.boolean(), r.boolean(), r.boolean()
    authenticated_data = r.opaque_v()
    nxt = r.optional(lambda r2: _read_epoch(r2, suite, epoch.tree))
    _check((nxt is None) == self_removed, "pending commit epoch contradicts self_removed")
    if nxt is not None:
        _check(
            nxt.context.epoch == number + 1 and nxt.context.group_id == group_id,
            "pending commit is not for the next epoch",
        )
    return StagedCommit(
        group_id=group_id,
        epoch=number + 1,
        sender=sender,
        committer=committer,
        proposals=proposals,
        adds=adds,
        removes=removes,
        updates=updates,
        psks=psks,
        new_extensions=new_extensions,
        reinit=reinit,
        external=external,
        has_path=has_path,
        self_removed=self_removed,
        authenticated_data=authenticated_data,
        # Owned by no group yet: Group.restore() hands it to the restored one.
        _owner=None,
        _base_epoch=number,
        _next=nxt,
        _pending_key=None,
    )
