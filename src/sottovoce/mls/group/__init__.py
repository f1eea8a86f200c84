"""The MLS group state machine (RFC 9420 §8, §10–§14), sans-IO.

::

      generate_key_package()                    Group.create()  (epoch 0)
                                                       │
      Welcome ───── Group.join_from_welcome() ───────┐ │
      GroupInfo ─── Group.join_by_external_commit() ─┤ │
                                                     ▼ ▼
                         ┌───────────────────────────────────────────┐
                         │ Group (epoch n, trusted): context, tree,  │
                         │ private keys, epoch secrets, secret tree, │
                         │ proposal cache                            │
                         └─────┬──────────────────────────▲──────────┘
      process_message(bytes)   │ decode; group, epoch,    │ merge_staged_commit()
                               │ sender; membership tag   │ merge_pending_commit()
                               │ or decryption; signature │
                               ▼                          │
      ProcessedMessage.content:                           │
        ApplicationMessage   (key consumed)               │
        QueuedProposal       (cached by ProposalRef)      │
        StagedCommit ──── the caller inspects it ─────────┤
                                                          │
      commit(...) ──► CommitBundle(commit, welcome, staged = the pending commit)

Untrusted input becomes trusted only through validation: a commit is staged
on copies (``RatchetTree.copy()``, immutable ``TreeKemPrivate``, a new key
schedule) and nothing in the group changes until :meth:`Group.merge_staged_commit`.
Every failed operation leaves the group exactly as it was; the only state a
*successful* receive changes before a merge is the secret tree (a consumed
application or proposal key) and the proposal cache.

The package follows the RFC's nouns; each operation is a function over one
:class:`~sottovoce.mls.group.epoch_state.EpochState` value that :class:`Group`
holds, returning a new value (or a staged commit) so the façade swaps it whole::

    keypackage.py  §10        our KeyPackages and their private keys
    create.py      §11        a new group at epoch 0
    join.py        §12.4.3    joining by Welcome or by external commit
    send.py        §6, §12.1  application data and proposals
    commit.py      §12.4.1    creating a commit (and the Welcome)
    process.py     §6, §12.4.2 receiving; staging a received commit
    merge.py       §12.4.2    a staged commit becomes the current epoch
    resume.py      §11.2–3    reinit and branch

Persistence goes through :meth:`Group.snapshot` (a plain
:class:`~sottovoce.mls.snapshot.GroupSnapshot`) and :mod:`sottovoce.mls.state`,
which knows that type and nothing of this package.

Randomness (``rng``) and time (``now_ms``, Unix milliseconds) are parameters.
``now_ms=None`` on a receive path skips the lifetime checks of received leaves,
which RFC 9420 §7.3 only RECOMMENDS (a leaf may expire in transit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Required, TypedDict, Unpack

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import UsageError
from sottovoce.limits import MLS_KEY_PACKAGE_LIFETIME_MS
from sottovoce.mls.common import Extension, GroupContext, WireFormat
from sottovoce.mls.config import GroupConfig, PskLookup, PskStore
from sottovoce.mls.epoch import Member, StagedCommit
from sottovoce.mls.errors import (
    GroupError,
    GroupInactive,
    InvalidCommit,
    InvalidKeyPackage,
    InvalidProposal,
    InvalidProposalList,
    InvalidWelcome,
    MissingPsk,
    NoMatchingKeyPackage,
    OwnMessage,
    UnknownProposal,
    UnknownSender,
    UnsupportedCipherSuite,
    WrongEpoch,
    WrongGroup,
)
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import join, resume, send
from sottovoce.mls.group.commit import CommitBundle, create_commit
from sottovoce.mls.group.create import new_group
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.group.keypackage import (
    KeyPackagePrivate,
    default_capabilities,
    generate_key_package,
)
from sottovoce.mls.group.merge import merge_commit
from sottovoce.mls.group.process import ApplicationMessage, ProcessedMessage, process_message
from sottovoce.mls.key_schedule import PreSharedKeyID, ResumptionPSKUsage
from sottovoce.mls.messages import (
    Add,
    Capabilities,
    Credential,
    GroupContextExtensions,
    GroupInfo,
    KeyPackage,
    LeafNode,
    PreSharedKey,
    Proposal,
    ReInit,
    Remove,
    Welcome,
)
from sottovoce.mls.proposals import QueuedProposal, validate_key_package
from sottovoce.mls.snapshot import GroupSnapshot
from sottovoce.mls.state import decode_group_state, encode_group_state
from sottovoce.mls.tree import RatchetTree
from sottovoce.readonly import ReadOnly
from sottovoce.secret import Secret

__all__ = [
    "ApplicationMessage",
    "CommitBundle",
    "CommitOptions",
    "ExternalJoin",
    "Group",
    "GroupConfig",
    "GroupError",
    "GroupInactive",
    "GroupSnapshot",
    "InvalidCommit",
    "InvalidKeyPackage",
    "InvalidProposal",
    "InvalidProposalList",
    "InvalidWelcome",
    "KeyPackagePrivate",
    "Member",
    "MissingPsk",
    "NoMatchingKeyPackage",
    "OwnMessage",
    "ProcessedMessage",
    "PskLookup",
    "PskStore",
    "QueuedProposal",
    "StagedCommit",
    "UnknownProposal",
    "UnknownSender",
    "UnsupportedCipherSuite",
    "WrongEpoch",
    "WrongGroup",
    "default_capabilities",
    "generate_key_package",
    "validate_key_package",
]


class CommitOptions(TypedDict, total=False):
    """What the commit shortcuts (:meth:`Group.add_members`, ...) pass on to
    :meth:`Group.commit`."""

    rng: Required[Random]
    now_ms: int | None
    authenticated_data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalJoin:
    """The result of :meth:`Group.join_by_external_commit`: the joiner's group (already
    in the new epoch) and the commit to send. Use the group once the commit is accepted."""

    group: Group
    commit: bytes


class Group:
    """One member's state of an MLS group. Not thread-safe; one instance per group.

    Build with :meth:`create`, :meth:`join_from_welcome` or
    :meth:`join_by_external_commit` (or :meth:`restore` / :meth:`from_state`).
    """

    __slots__ = ("_state", "welcome_tree")

    def __init__(self, state: EpochState) -> None:
        """Internal; use the constructors above."""
        self._state = state
        #: Set: the Welcomes of this group's commits carry no ``ratchet_tree`` extension
        #: but the one this callable makes from the encoded tree (§12.4.3.3, the tree
        #: delivered out of band); see :func:`create_commit`.
        self.welcome_tree: Callable[[bytes], Extension] | None = None

    def __repr__(self) -> str:
        return (
            f"Group(epoch={self.epoch}, leaf={self.own_leaf_index}, "
            f"members={self._state.epoch.tree.member_count()}, active={self.is_active})"
        )

    # --- construction ---------------------------------------------------------------

    @classmethod
    def create(
        cls,
        suite: CipherSuite | int,
        *,
        credential: Credential,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] = (),
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        lifetime_ms: int = MLS_KEY_PACKAGE_LIFETIME_MS,
        config: GroupConfig | None = None,
    ) -> Group:
        """A one-member group at epoch 0 (§11).

        ``group_id`` defaults to ``Nh`` random bytes (§11). ``extensions`` are the
        GroupContext extensions, e.g. ``required_capabilities`` or
        ``external_senders``; our own leaf must support them.
        """
        return cls(new_group(
            suite, credential=credential, signing_key=signing_key, rng=rng, now_ms=now_ms,
            group_id=group_id, extensions=extensions, capabilities=capabilities,
            leaf_extensions=leaf_extensions, lifetime_ms=lifetime_ms, config=config,
        ))

    @classmethod
    def join_from_welcome(
        cls,
        welcome: bytes | MLSMessage | Welcome,
        key_package: KeyPackage,
        key_package_private: KeyPackagePrivate,
        *,
        signing_key: SigningKey,
        ratchet_tree: bytes | RatchetTree | None = None,
        psk_lookup: PskLookup | None = None,
        now_ms: int | None = None,
        config: GroupConfig | None = None,
        resumed_from: Group | None = None,
    ) -> Group:
        """Join a group from a Welcome addressed to ``key_package`` (§12.4.3.1).

        The ratchet tree comes from the GroupInfo's ``ratchet_tree`` extension
        or from ``ratchet_tree`` (encoded ``optional<Node> ratchet_tree<V>``).
        Checks: our entry decrypts with the init key; every PSK is known (via
        ``psk_lookup``, the config's, or ``resumed_from``'s resumption PSKs); the
        GroupInfo decrypts; the tree is valid and hashes to the GroupContext's
        ``tree_hash``; the GroupInfo is signed by the leaf ``signer``; our leaf
        is in the tree exactly as in the KeyPackage; the path secret derives the
        tree's keys; the confirmation tag matches; and for a reinit/branch
        resumption PSK, the §11.2/§11.3 rules (epoch 1, matching parameters).

        Raises :class:`InvalidWelcome`, :class:`NoMatchingKeyPackage`,
        :class:`MissingPsk`, :class:`UnsupportedCipherSuite`, tree errors or
        signature / confirmation-tag errors.
        """
        return cls(join.from_welcome(
            welcome, key_package, key_package_private, signing_key=signing_key,
            ratchet_tree=ratchet_tree, psk_lookup=psk_lookup, now_ms=now_ms, config=config,
            resumed_from=None if resumed_from is None else resumed_from._state,
        ))

    @staticmethod
    def welcome_group_info(
        welcome: Welcome, key_package: KeyPackage, key_package_private: KeyPackagePrivate
    ) -> GroupInfo:
        """The GroupInfo of a Welcome for ``key_package``, decrypted but not yet checked
        (no PSKs): what its extensions say before a join (e.g. where an out-of-band
        ratchet tree is). :meth:`join_from_welcome` checks it all."""
        return join.welcome_group_info(welcome, key_package, key_package_private)

    @classmethod
    def join_by_external_commit(
        cls,
        group_info: bytes | MLSMessage | GroupInfo,
        *,
        credential: Credential,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int | None = None,
        ratchet_tree: bytes | RatchetTree | None = None,
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] = (),
        psks: Sequence[PreSharedKeyID] = (),
        remove_leaf: int | None = None,
        authenticated_data: bytes = b"",
        config: GroupConfig | None = None,
    ) -> ExternalJoin:
        """Join by an external commit (§12.4.3.2) from a GroupInfo with ``external_pub``.

        The commit carries ExternalInit (and PSK proposals for ``psks``), and a
        Remove of ``remove_leaf`` to resync a previous appearance of ourselves
        (its credential must equal ``credential``). It is always a PublicMessage
        with an UpdatePath. Returns our group in the new epoch and the commit;
        the group is only real once the delivery service accepted the commit.

        Remote input that does not check out (bytes that do not decode, a tree or
        ``external_pub`` that does not decode or verify, a group we cannot
        support) raises :class:`InvalidWelcome`, a tree error,
        :class:`UnsupportedCipherSuite` or a signature error, never a bare
        ``DecodeError``; :class:`MissingPsk` when ``psks`` names a key the
        config's ``psk_lookup`` does not know.
        """
        state, commit = join.by_external_commit(
            group_info, credential=credential, signing_key=signing_key, rng=rng,
            now_ms=now_ms, ratchet_tree=ratchet_tree, capabilities=capabilities,
            leaf_extensions=leaf_extensions, psks=psks, remove_leaf=remove_leaf,
            authenticated_data=authenticated_data, config=config,
        )
        return ExternalJoin(group=cls(state), commit=commit)

    # --- reading the state -------------------------------------------------------------

    #: The group's cipher suite (§17.1).
    suite = ReadOnly[CipherSuite]("_state.suite")
    #: The group's id (§8.1).
    group_id = ReadOnly[bytes]("_state.group_id")
    #: The current epoch's number.
    epoch = ReadOnly[int]("_state.number")
    #: The current epoch's GroupContext (§8.1).
    group_context = ReadOnly[GroupContext]("_state.epoch.context")
    #: Our leaf's index in the ratchet tree.
    own_leaf_index = ReadOnly[int]("_state.own_index")
    #: Our LeafNode in the current tree.
    own_leaf = ReadOnly[LeafNode]("_state.own_leaf")
    #: §8.7: equal across members iff they share the epoch's view.
    epoch_authenticator = ReadOnly[Secret]("_state.epoch.secrets.epoch_authenticator")
    #: The tag of the commit or GroupInfo that started this epoch (§6.1).
    confirmation_tag = ReadOnly[bytes]("_state.epoch.confirmation_tag")
    #: The ratchet tree's hash, as in the GroupContext (§7.8).
    tree_hash = ReadOnly[bytes]("_state.epoch.context.tree_hash")
    #: False once we were removed or a ReInit was committed.
    is_active = ReadOnly[bool]("_state.active")
    #: True once a commit removed us (§12.4.2).
    removed = ReadOnly[bool]("_state.removed")
    #: The committed ReInit this group is waiting to be replaced by (§11.2).
    pending_reinit = ReadOnly[ReInit | None]("_state.reinit")
    #: Our own commit, sent but not merged yet.
    pending_commit = ReadOnly[StagedCommit | None]("_state.pending_commit")

    @property
    def pending_proposals(self) -> tuple[QueuedProposal, ...]:
        """This epoch's proposals, in arrival order (a commit takes them by reference)."""
        return tuple(self._state.proposals.values())

    def members(self) -> list[Member]:
        return [Member(i, leaf) for i, leaf in self._state.epoch.tree.leaves()]

    def member(self, index: int) -> Member | None:
        return self._state.epoch.member(index)

    def export_ratchet_tree(self) -> bytes:
        """The encoded ratchet tree, for joiners whose Welcome does not carry it."""
        return self._state.epoch.tree.encode()

    def export_secret(self, label: bytes, context: bytes, length: int) -> Secret:
        """MLS-Exporter(label, context, length) of the current epoch (§8.5)."""
        return self._state.epoch.secrets.exporter(label, context, length)

    def resumption_psk(self, epoch: int | None = None) -> Secret | None:
        """The resumption_psk of ``epoch`` (default: the current one) if still kept (§8.6)."""
        return self._state.resumption_psks.get(self.epoch if epoch is None else epoch)

    def find_psk(self, psk_id: PreSharedKeyID) -> Secret | None:
        """A :data:`PskLookup` for this group's resumption PSKs."""
        return self._state.find_psk(psk_id)

    def group_info(
        self,
        *,
        with_ratchet_tree: bool = True,
        with_external_pub: bool = True,
        extensions: Sequence[Extension] = (),
    ) -> bytes:
        """A signed MLSMessage(GroupInfo) for the current epoch (§12.4.3), for external
        joins (``external_pub``) or to publish the state."""
        st = self._state
        gi = st.epoch.group_info(
            st.signing_key,
            with_ratchet_tree=with_ratchet_tree,
            with_external_pub=with_external_pub,
            extensions=extensions,
        )
        return MLSMessage(body=gi).encode()

    def staged_group_info(
        self,
        staged: StagedCommit,
        *,
        with_ratchet_tree: bool = True,
        with_external_pub: bool = True,
    ) -> bytes | None:
        """A signed MLSMessage(GroupInfo) for the epoch ``staged`` starts, signed by us.

        A committer publishes it with its commit so external joiners see the new
        epoch before anyone merged. ``staged`` must be this group's (our pending
        commit or one we processed) for the current epoch; ``None`` when the commit
        removes us (no new epoch to describe).
        """
        st = self._state
        st.check_staged(staged)
        if staged._next is None:
            return None
        gi = staged._next.group_info(
            st.signing_key,
            with_ratchet_tree=with_ratchet_tree,
            with_external_pub=with_external_pub,
        )
        return MLSMessage(body=gi).encode()

    # --- persistence (sottovoce.mls.snapshot, sottovoce.mls.state) -------------------

    def snapshot(self) -> GroupSnapshot:
        """Everything this member holds, as a plain value later operations do not
        change (it is secret: private keys, epoch secrets)."""
        return self._state.snapshot()

    @classmethod
    def restore(cls, snapshot: GroupSnapshot, *, psk_lookup: PskLookup | None = None) -> Group:
        """The member :meth:`snapshot` (or :func:`~sottovoce.mls.state.decode_group_state`)
        described, as a new instance; ``psk_lookup`` replaces the config's when given.
        Staged commits of another instance do not merge into it."""
        config = snapshot.config
        if psk_lookup is not None:
            config = replace(config, psk_lookup=psk_lookup)
        return cls(EpochState.restore(snapshot, config))

    def use_handshake_wire_format(self, wire_format: WireFormat) -> None:
        """Send our later proposals and commits as ``wire_format`` (a policy change of
        the application's, e.g. for a group saved under an older policy)."""
        self._state = replace(
            self._state,
            config=replace(self._state.config, handshake_wire_format=wire_format),
        )

    def to_state(self) -> bytes:
        """Everything this member holds, as bytes to seal and store (they are secret).

        :meth:`from_state` continues exactly here; the config's ``psk_lookup``
        is not stored. See :mod:`sottovoce.mls.state`.
        """
        return encode_group_state(self.snapshot())

    @classmethod
    def from_state(cls, data: bytes, *, psk_lookup: PskLookup | None = None) -> Group:
        """The group :meth:`to_state` saved; raises only ``InvalidGroupState`` (a
        ``DecodeError``) on damaged or inconsistent input."""
        return cls.restore(decode_group_state(data), psk_lookup=psk_lookup)

    # --- sending -----------------------------------------------------------------------

    def encrypt_application(
        self, data: bytes, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        """Encrypt application data as an MLSMessage(PrivateMessage) (§6.3).

        RFC 9420 §12.4: a member that has seen valid proposals in this epoch
        must commit them before sending application data.
        """
        return send.encrypt_application(
            self._state, data, rng=rng, authenticated_data=authenticated_data
        )

    def propose(
        self, proposal: Proposal, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        """Send ``proposal`` by itself (to be committed by reference); returns the message.

        The proposal is checked like a received one and cached, so our own next
        commit includes it.
        """
        self._state, message = send.propose(
            self._state, proposal, rng=rng, authenticated_data=authenticated_data
        )
        return message

    def propose_add(
        self, key_package: KeyPackage, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(Add(key_package=key_package), rng=rng,
                            authenticated_data=authenticated_data)

    def propose_remove(
        self, leaf_index: int, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(Remove(removed=leaf_index), rng=rng,
                            authenticated_data=authenticated_data)

    def leave(self, *, rng: Random) -> bytes:
        """Propose our own removal; another member must commit it (§12.2)."""
        return self.propose_remove(self.own_leaf_index, rng=rng)

    def propose_psk(
        self, psk_id: PreSharedKeyID, *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(PreSharedKey(psk=psk_id), rng=rng,
                            authenticated_data=authenticated_data)

    def external_psk_id(self, psk_id: bytes, *, rng: Random) -> PreSharedKeyID:
        """A PreSharedKeyID for an external PSK with a fresh nonce (§8.4)."""
        return PreSharedKeyID.external(psk_id, rng(self.suite.nh))

    def resumption_psk_id(self, epoch: int | None = None, *, rng: Random) -> PreSharedKeyID:
        """An application-usage resumption PSK id of this group (§8.6)."""
        e = self.epoch if epoch is None else epoch
        if e not in self._state.resumption_psks:
            raise UsageError("that epoch's resumption PSK is no longer kept")
        return PreSharedKeyID.resumption(
            ResumptionPSKUsage.APPLICATION, self.group_id, e, rng(self.suite.nh)
        )

    def propose_group_context_extensions(
        self, extensions: Sequence[Extension], *, rng: Random, authenticated_data: bytes = b""
    ) -> bytes:
        return self.propose(
            GroupContextExtensions(extensions=tuple(extensions)), rng=rng,
            authenticated_data=authenticated_data,
        )

    def propose_reinit(
        self,
        *,
        rng: Random,
        group_id: bytes | None = None,
        cipher_suite_id: int | None = None,
        extensions: Sequence[Extension] | None = None,
        authenticated_data: bytes = b"",
    ) -> bytes:
        """Propose reinitializing into a new group (§12.1.5, §11.2)."""
        return self.propose(self.reinit_proposal(
            rng=rng, group_id=group_id, cipher_suite_id=cipher_suite_id, extensions=extensions
        ), rng=rng, authenticated_data=authenticated_data)

    def reinit_proposal(
        self,
        *,
        rng: Random,
        group_id: bytes | None = None,
        cipher_suite_id: int | None = None,
        extensions: Sequence[Extension] | None = None,
    ) -> ReInit:
        suite_id = self.suite.id if cipher_suite_id is None else cipher_suite_id
        return ReInit(
            group_id=group_id if group_id is not None else rng(cipher_suite(suite_id).nh),
            cipher_suite=suite_id,
            extensions=tuple(self.group_context.extensions if extensions is None else extensions),
        )

    def propose_update(
        self,
        *,
        rng: Random,
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] | None = None,
        authenticated_data: bytes = b"",
    ) -> bytes:
        """Propose a fresh leaf encryption key for ourselves (§12.1.2)."""
        self._state, message = send.propose_update(
            self._state, rng=rng, capabilities=capabilities, leaf_extensions=leaf_extensions,
            authenticated_data=authenticated_data,
        )
        return message

    def commit(
        self,
        *,
        rng: Random,
        now_ms: int | None = None,
        proposals: Sequence[Proposal] = (),
        include_pending: bool = True,
        with_path: bool = True,
        authenticated_data: bytes = b"",
        capabilities: Capabilities | None = None,
        leaf_extensions: Sequence[Extension] | None = None,
    ) -> CommitBundle:
        """Create a commit (§12.4.1) over ``proposals`` (by value) and, if
        ``include_pending``, the cached proposals of this epoch (by reference).

        Cached proposals are filtered as §12.2 suggests (Removes win over
        Updates, the latest Update per leaf, no duplicate Adds/PSKs, a ReInit
        only alone, none that removes us). ``with_path=False`` omits the
        UpdatePath when no covered proposal requires one (§12.4; a
        ``UsageError`` otherwise). ``capabilities``/``leaf_extensions`` change
        our leaf in the path. The result becomes the pending commit: merge it
        with :meth:`merge_pending_commit` once the delivery service accepted it.
        """
        self._state, bundle = create_commit(
            self._state,
            rng=rng,
            now_ms=now_ms,
            proposals=proposals,
            include_pending=include_pending,
            with_path=with_path,
            authenticated_data=authenticated_data,
            capabilities=capabilities,
            leaf_extensions=leaf_extensions,
            welcome_tree=self.welcome_tree,
        )
        return bundle

    def add_members(
        self, key_packages: Sequence[KeyPackage], **options: Unpack[CommitOptions]
    ) -> CommitBundle:
        return self.commit(proposals=[Add(key_package=kp) for kp in key_packages], **options)

    def remove_members(
        self, leaf_indices: Sequence[int], **options: Unpack[CommitOptions]
    ) -> CommitBundle:
        return self.commit(proposals=[Remove(removed=i) for i in leaf_indices], **options)

    def self_update(self, **options: Unpack[CommitOptions]) -> CommitBundle:
        """An empty commit with a path: fresh keys on our whole direct path (§12.4)."""
        return self.commit(include_pending=False, **options)

    def merge_pending_commit(self) -> StagedCommit:
        """Apply our own pending commit (after the delivery service accepted it)."""
        staged = self._state.pending_commit
        if staged is None:
            raise UsageError("no pending commit")
        self.merge_staged_commit(staged)
        return staged

    def clear_pending_commit(self) -> None:
        """Drop our pending commit (the delivery service took another one)."""
        self._state = replace(self._state, pending_commit=None)

    # --- receiving -----------------------------------------------------------------------

    def process_message(
        self, message: bytes | MLSMessage, *, now_ms: int | None = None
    ) -> ProcessedMessage:
        """Authenticate and interpret a PublicMessage or PrivateMessage of this group.

        Application data comes back decrypted (its key consumed); a proposal is
        checked and cached for the epoch's commits; a commit comes back as a
        :class:`StagedCommit` to inspect and then :meth:`merge_staged_commit`.
        On any error the group is unchanged. Raises :class:`MlsDecodeError` (a
        ``DecodeError``),
        :class:`WrongGroup`, :class:`WrongEpoch`, :class:`UnknownSender`,
        :class:`OwnMessage`, membership-tag, decryption, replay and signature
        errors, and the proposal/commit validation errors.
        """
        self._state, processed = process_message(self._state, message, now_ms)
        return processed

    def merge_staged_commit(self, staged: StagedCommit) -> None:
        """Move to the epoch ``staged`` starts (§12.4.2 "consider the new GroupContext
        the current state"). Only a commit staged by this group for its current
        epoch can be merged."""
        self._state = merge_commit(self._state, staged)

    # --- reinit and branch (§11.2, §11.3) -----------------------------------------------

    def reinit(
        self,
        key_packages: Sequence[KeyPackage],
        *,
        rng: Random,
        now_ms: int,
        signing_key: SigningKey | None = None,
        capabilities: Capabilities | None = None,
        config: GroupConfig | None = None,
    ) -> tuple[Group, CommitBundle]:
        """Create the group a committed ReInit asks for (§11.2): same members
        (by their new ``key_packages``), the ReInit's parameters, and a
        ``reinit`` resumption PSK of this group's current epoch. Returns the new
        group (epoch 0, with a pending commit to epoch 1) and the commit/Welcome.
        """
        state, bundle = resume.reinit(
            self._state, key_packages, rng=rng, now_ms=now_ms, signing_key=signing_key,
            capabilities=capabilities, config=config,
        )
        return Group(state), bundle

    def branch(
        self,
        key_packages: Sequence[KeyPackage],
        *,
        rng: Random,
        now_ms: int,
        group_id: bytes | None = None,
        extensions: Sequence[Extension] | None = None,
        config: GroupConfig | None = None,
    ) -> tuple[Group, CommitBundle]:
        """A subgroup of some members (§11.3): same version and suite, a ``branch``
        resumption PSK of this epoch. Returns the new group (with a pending
        commit to epoch 1) and the commit/Welcome for ``key_packages``."""
        state, bundle = resume.branch(
            self._state, key_packages, rng=rng, now_ms=now_ms, group_id=group_id,
            extensions=extensions, config=config,
        )
        return Group(state), bundle
