"""A room call: its own MLS group, whose members are the devices in the call (sans-IO).

::

     room (MLS group R, totally ordered by the server)      call (MLS group C)
     ──────────────────────────────────────────────────      ──────────────────
     Start ........ a member creates C (epoch 0, alone)      members = devices
     Join(KeyPackage for C, SFrame suites) .......┐          in the call now
     Commit(epoch n, commit, Welcome) ◄───────────┘ first valid one for epoch n
     Leave / removed from R ..... Commit(Remove) ......      in R's order wins
     Sealed(MLS message of C) ... media state, SFU feed, recording consent, mesh SDPs

Everything travels as MLS application messages of the room (the server reads
none of it); the engine only sees them decrypted, in the room's order, its own
included (``receive``). Rules every call member applies identically:

* **Who may join.** A join request names a KeyPackage for the call group whose
  basic credential is the sender's ``user/device`` and whose signature key is
  the one of that device's leaf in the room's group (RFC 9420 §5.3, §10): only a
  current room member can produce it, so the request proves room membership.
  The joiner must offer the call's SFrame suite (there is no unencrypted mode);
  a call without an SFU takes at most 4 participants.
* **Who commits.** The members not leaving, in leaf order: the first commits
  pending joins and leaves at once, the r-th once they waited r × 3 s (a quiet
  committer is replaced without two commits racing for every change). The first
  valid commit for an epoch in the room's order wins; a committer merges its own
  only when it comes back in that order, and drops it if another came first.
* **What a commit may do.** Every member checks a commit before merging it
  (``CommitRefused`` otherwise, state unchanged): a room member commits; it adds
  only devices that asked to join with exactly that KeyPackage and are room
  members; it removes only devices that left the call or the room; no other
  proposals; the size limits hold.
* **Keys.** Each epoch's per-sender, per-track SFrame keys come from the call
  group's exporter (:class:`~sottovoce.calls.media_keys.EpochKeys`); a room
  member outside the call, a late joiner (for earlier epochs) and a leaver (for
  later ones) hold none of them.
* **Participants** shown to the user are the call group's members, never a
  list from the SFU or the server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from sottovoce.calls.errors import (
    CallError,
    CallFull,
    CallUsageError,
    CommitRefused,
    NotARoomMember,
    RoomCallRefused,
    SframeUnsupported,
    SfuRequired,
    StaleSignal,
    UnknownCall,
)
from sottovoce.calls.media_keys import CALL_SFRAME_SUITE, Device, EpochKeys
from sottovoce.calls.recording import RecordingConsent
from sottovoce.calls.room_effects import (
    AppendAudit,
    EpochChanged,
    FeedAnnounced,
    Joined,
    JoinRefused,
    Left,
    MeshDescription,
    ParticipantsChanged,
    PeerMediaState,
    RoomCallEffect,
    SendersRevoked,
    SendRoomSignal,
)
from sottovoce.calls.room_signals import (
    CallMode,
    CallPayload,
    Commit,
    Feed,
    Join,
    Leave,
    LeaveProof,
    MediaState,
    MeshAnswer,
    MeshOffer,
    Recording,
    Refuse,
    RefuseReason,
    RoomCallSignal,
    Sealed,
    Start,
)
from sottovoce.crypto.labels import sign_with_label, verify_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError, InvalidKey, RemoteError, SignatureError, UsageError
from sottovoce.limits import (
    CALL_COMMIT_STAGGER_MS,
    CALL_ID_BYTES,
    CALL_NONCE_BYTES,
    MAX_CALL_PENDING_CHANGES,
    MESH_MAX_PARTICIPANTS,
    ROOM_CALL_MAX_PARTICIPANTS,
)
from sottovoce.mls.common import Extension
from sottovoce.mls.group import (
    ApplicationMessage,
    Group,
    GroupConfig,
    KeyPackagePrivate,
    StagedCommit,
    WrongEpoch,
    generate_key_package,
)
from sottovoce.mls.messages import Add, Capabilities, Credential, KeyPackage, LeafNode, Remove
from sottovoce.mls.proposals import validate_key_package
from sottovoce.protocol.audit import AuditAction
from sottovoce.protocol.rooms import member_identity

#: The call group's MLS cipher suite unless the room's is given: the mandatory one (RFC
#: 9420 §17.1, 0x0001). A call in a room of the hybrid X-Wing suite runs in that suite.
CALL_MLS_SUITE = 1
#: SFrame suites this implementation offers when joining.
OFFERED_SFRAME_SUITES = (CALL_SFRAME_SUITE,)
#: A KeyPackage extension (RFC 9420 §13.3, private-use range) naming the call the
#: KeyPackage is for: a committer cannot add a room member to a call it never asked
#: to join, with a KeyPackage of another call.
CALL_ID_EXTENSION = 0xF5A1
#: SignWithLabel label of a leave (RFC 9420 §5.1.2).
LEAVE_LABEL = b"sottovoce call leave"

#: The room's members as the room's MLS group has them now: device -> the signature
#: key of its leaf. Given with every input, at that input's place in the room's order.
RoomView = Mapping[Device, bytes]

_REFUSALS: dict[RefuseReason, Callable[[], RoomCallRefused]] = {
    RefuseReason.SFU_REQUIRED: lambda: SfuRequired(MESH_MAX_PARTICIPANTS),
    RefuseReason.FULL: lambda: CallFull("the call has the most participants it may have"),
    RefuseReason.NOT_A_MEMBER: lambda: NotARoomMember(
        "the call's members do not see this device as a member of the room"
    ),
    RefuseReason.NO_SFRAME: lambda: SframeUnsupported(
        "this device cannot encrypt media with the call's SFrame suite"
    ),
}


class Phase(Enum):
    JOINING = "joining"
    IN_CALL = "in_call"
    LEFT = "left"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class _PendingJoin:
    key_package: KeyPackage
    since_ms: int


@dataclass(frozen=True, slots=True)
class _PendingLeave:
    since_ms: int
    signature: bytes | None  # None: it left the room, no word of its own needed


def device_of(credential: Credential) -> Device | None:
    """(user, device) of a basic credential ``user/device``, or None."""
    try:
        user, sep, device = credential.identity.decode("ascii").partition("/")
    except UnicodeDecodeError:
        return None
    return (user, device) if sep and user and device else None


class RoomCall:
    """One device's part in one room call (see the module docstring).

    Build with :meth:`start` or :meth:`join`; feed it every room-call signal of the
    room with :meth:`receive`, room membership changes with :meth:`room_changed`,
    and time with :meth:`tick`; carry out :meth:`effects` in order.
    """

    def __init__(
        self,
        *,
        room_id: str,
        call_id: bytes,
        mode: CallMode,
        me: Device,
        signing_key: SigningKey,
        rng: Random,
        suite: int = CALL_MLS_SUITE,
    ) -> None:
        if not isinstance(call_id, bytes) or len(call_id) != CALL_ID_BYTES:
            raise UsageError(f"a call id is {CALL_ID_BYTES} bytes")
        self.room_id = room_id
        self.call_id = call_id
        self.mode = mode
        self.me = me
        self.phase = Phase.JOINING
        self._signing_key = signing_key
        self._rng = rng
        self._suite = cipher_suite(suite)
        self.group: Group | None = None
        self._kp: tuple[KeyPackage, KeyPackagePrivate] | None = None
        #: A joiner: the highest epoch a commit was seen for (later ones for it lost).
        self._last_taken: int | None = None
        self._pending_joins: dict[Device, _PendingJoin] = {}
        self._pending_leaves: dict[Device, _PendingLeave] = {}
        self._refused: set[Device] = set()
        #: Our commit on its way through the room (merged when it comes back first).
        self._own_commit: bytes | None = None
        self._consent = RecordingConsent(me)
        self._effects: list[RoomCallEffect] = []

    def __repr__(self) -> str:
        epoch = None if self.group is None else self.group.epoch
        return f"RoomCall(call={self.call_id.hex()[:8]}, {self.phase.value}, epoch={epoch})"

    # --- construction -------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        room_id: str,
        mode: CallMode,
        me: Device,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int,
        call_id: bytes | None = None,
        suite: int = CALL_MLS_SUITE,
    ) -> RoomCall:
        """Start a call in the room: this device is the call group's first member
        (``call_id``: one drawn already, e.g. to ask the server for an SFU grant first;
        ``suite``: the room's MLS cipher suite, which the call group runs in too)."""
        if call_id is not None and len(call_id) != CALL_ID_BYTES:
            raise UsageError(f"a call id is {CALL_ID_BYTES} bytes")
        call = cls(
            room_id=room_id,
            call_id=rng(CALL_ID_BYTES) if call_id is None else call_id,
            mode=mode,
            me=me,
            signing_key=signing_key,
            rng=rng,
            suite=suite,
        )
        call.group = Group.create(
            call._suite,
            credential=call._credential(),
            signing_key=signing_key,
            rng=rng,
            now_ms=now_ms,
            config=_GROUP_CONFIG,
        )
        call.phase = Phase.IN_CALL
        call._send(Start(call_id=call.call_id, from_user=me[0], from_device=me[1], mode=mode))
        call._effects.append(AppendAudit(action=AuditAction.CALL_STARTED))
        call._entered()
        return call

    @classmethod
    def join(
        cls,
        *,
        room_id: str,
        call_id: bytes,
        mode: CallMode,
        me: Device,
        signing_key: SigningKey,
        rng: Random,
        now_ms: int,
        sframe_suites: tuple[int, ...] = OFFERED_SFRAME_SUITES,
        suite: int = CALL_MLS_SUITE,
    ) -> RoomCall:
        """Ask to join the call announced by a :class:`Start` signal (``suite``: the room's
        MLS cipher suite, the call group's too)."""
        call = cls(
            room_id=room_id, call_id=call_id, mode=mode, me=me, signing_key=signing_key, rng=rng,
            suite=suite,
        )
        credential = call._credential()
        kp, private = generate_key_package(
            call._suite,
            credential,
            signing_key,
            rng,
            now_ms,
            extensions=(Extension(extension_type=CALL_ID_EXTENSION, extension_data=call_id),),
            capabilities=Capabilities(
                cipher_suites=(suite,),
                extensions=(CALL_ID_EXTENSION,),
                credentials=(int(credential.credential_type),),
            ),
        )
        call._kp = (kp, private)
        call._send(
            Join(
                call_id=call_id,
                from_user=me[0],
                from_device=me[1],
                key_package=kp.encode(),
                sframe_suites=sframe_suites,
            )
        )
        return call

    def _credential(self) -> Credential:
        return Credential.basic(member_identity(*self.me))

    # --- reading the state ----------------------------------------------------------

    @property
    def epoch(self) -> int | None:
        return None if self.group is None or self.phase is not Phase.IN_CALL else self.group.epoch

    def participants(self) -> tuple[Device, ...]:
        """The devices in the call: the call group's members (sorted)."""
        if self.group is None or self.phase is not Phase.IN_CALL:
            return ()
        return tuple(sorted(d for d in self._roster().values()))

    @property
    def recording_by(self) -> Device | None:
        return self._consent.recording_by

    def effects(self) -> list[RoomCallEffect]:
        out, self._effects = self._effects, []
        return out

    def next_deadline(self) -> int | None:
        """When :meth:`tick` has something to do (a staggered commit, a consent timeout)."""
        times = []
        if self.phase is Phase.IN_CALL:
            first = self._first_pending()
            rank = self._rank()
            if first is not None and rank is not None:
                times.append(first + rank * CALL_COMMIT_STAGGER_MS)
        consent = self._consent.next_deadline()
        if consent is not None:
            times.append(consent)
        return min(times) if times else None

    # --- inputs ---------------------------------------------------------------------

    def receive(self, data: bytes, *, sender: Device, room: RoomView, now_ms: int) -> None:
        """A room-call signal of this call, decrypted by the room's MLS layer, whose
        authenticated sender is ``sender`` -- every one, in the room's order, this
        device's own included. Raises a :class:`CallError` (or ``DecodeError``) for a
        bad or misbound one; the call's state is then unchanged."""
        signal = RoomCallSignal.decode(data)
        if signal.call_id != self.call_id:
            raise UnknownCall("the signal is for another call")
        if signal.sender != sender:
            raise CommitRefused("the signal names another sender than the room's MLS layer")
        if self.phase in (Phase.LEFT, Phase.REFUSED):
            raise StaleSignal("this device is out of the call")
        if sender not in room:
            raise NotARoomMember("the sender is not a member of the room")
        if isinstance(signal, Commit):
            self._on_commit(signal, room, now_ms)
        elif sender == self.me:
            pass  # our own join, leave, refusal or sealed message, back in order
        elif isinstance(signal, Join):
            self._on_join(signal, room, now_ms)
        elif isinstance(signal, Leave):
            if self.phase is Phase.IN_CALL and sender in self._roster().values():
                self._pending_leaves.setdefault(sender, _PendingLeave(now_ms, signal.signature))
            self._pending_joins.pop(sender, None)
        elif isinstance(signal, Refuse):
            if (signal.to_user, signal.to_device) == self.me and self.phase is Phase.JOINING:
                self.phase = Phase.REFUSED
                self._kp = None
                self._effects.append(JoinRefused(error=_REFUSALS[signal.reason]()))
        elif isinstance(signal, Sealed):
            if self.phase is Phase.IN_CALL:
                self._on_sealed(signal, sender, now_ms)
        elif isinstance(signal, Start) and sender in self._roster().values():
            raise CallError("a second start for this call")
        # (A joiner may still see the start it reacted to: nothing to do.)
        self._maybe_commit(room, now_ms)

    def room_changed(self, room: RoomView, now_ms: int) -> None:
        """The room's group changed: a participant no longer in the room is cut off now
        (its media refused) and removed from the call by the next commit."""
        if self.phase is not Phase.IN_CALL:
            return
        if self.me not in room:
            self._leave_now(removed=True)
            return
        gone = tuple(d for d in self._roster().values() if d not in room)
        for device in gone:
            self._pending_leaves[device] = _PendingLeave(now_ms, None)
        for device in [d for d in self._pending_joins if d not in room]:
            del self._pending_joins[device]
        if gone:
            self._effects.append(SendersRevoked(devices=gone))
        self._maybe_commit(room, now_ms)

    def tick(self, room: RoomView, now_ms: int) -> None:
        self._consent.tick(now_ms)
        self._flush_consent()
        self._maybe_commit(room, now_ms)

    def signal_lost(self, payload: bytes, room: RoomView, now_ms: int) -> None:
        """The room refused or lost a signal this engine asked to send (it will never
        come back in the room's order). A lost commit of ours is dropped, and the
        changes it carried are committed again."""
        if self._own_commit is not None and self.group is not None:
            try:
                signal = RoomCallSignal.decode(payload)
            except DecodeError:
                return
            if isinstance(signal, Commit) and signal.commit == self._own_commit:
                self.group.clear_pending_commit()
                self._own_commit = None
                self._maybe_commit(room, now_ms)

    # --- local actions --------------------------------------------------------------

    def leave(self) -> None:
        """Leave the call: tell the room, stop media and forget the keys now."""
        if self.phase is not Phase.IN_CALL:
            raise CallUsageError("not in the call")
        group = self.group
        if group is None:  # pragma: no cover - IN_CALL has a group
            raise CallUsageError("not in the call")
        last = len(self._roster()) == 1
        signature = sign_with_label(
            self._signing_key, LEAVE_LABEL, self.call_id + group.own_leaf.encryption_key
        )
        self._send(
            Leave(
                call_id=self.call_id,
                from_user=self.me[0],
                from_device=self.me[1],
                signature=signature,
            )
        )
        if last:
            self._effects.append(AppendAudit(action=AuditAction.CALL_STOPPED))
        self._leave_now(removed=False)

    def set_media(self, *, audio_muted: bool, camera_on: bool, screen_on: bool) -> None:
        self._seal(MediaState(audio_muted=audio_muted, camera_on=camera_on, screen_on=screen_on))

    def announce_feed(self, feed_id: str) -> None:
        """Tell the call under which SFU publisher id this device publishes."""
        self._seal(Feed(feed_id=feed_id))

    def mesh_offer(self, to: Device, nonce: bytes, sdp: str) -> None:
        self._seal(MeshOffer(to_user=to[0], to_device=to[1], nonce=nonce, sdp=sdp))

    def mesh_answer(self, to: Device, offer_nonce: bytes, sdp: str) -> None:
        self._seal(MeshAnswer(to_user=to[0], to_device=to[1], nonce=offer_nonce, sdp=sdp))

    def request_recording(self, now_ms: int) -> None:
        """Ask every present participant to consent to this device recording the call."""
        self._require_in_call()
        self._consent.request(self._rng(CALL_NONCE_BYTES), self.participants(), now_ms)
        self._flush_consent()

    def answer_recording(self, grant: bool) -> None:
        """Answer the current recording request (``False`` also withdraws consent)."""
        self._require_in_call()
        self._consent.answer(grant)
        self._flush_consent()

    def stop_recording(self) -> None:
        self._require_in_call()
        self._consent.stop()
        self._flush_consent()

    # --- internals: membership ------------------------------------------------------

    def _require_in_call(self) -> None:
        if self.phase is not Phase.IN_CALL or self.group is None:
            raise CallUsageError("not in the call")

    def _roster(self) -> dict[int, Device]:
        if self.group is None:
            return {}
        out = {}
        for member in self.group.members():
            device = device_of(member.credential)
            if device is not None:
                out[member.index] = device
        return out

    def _entered(self) -> None:
        group = self.group
        if group is None:  # pragma: no cover - callers set it
            raise UsageError("no call group")
        roster = self._roster()
        keys = EpochKeys.derive(
            epoch=group.epoch,
            exporter=group.export_secret,
            roster=roster,
            own_leaf=group.own_leaf_index,
        )
        self._effects += [
            EpochChanged(keys=keys),
            ParticipantsChanged(epoch=group.epoch, participants=self.participants()),
        ]

    def _leave_now(self, *, removed: bool) -> None:
        self.phase = Phase.LEFT
        self.group = None
        self._kp = None
        self._pending_joins.clear()
        self._pending_leaves.clear()
        self._own_commit = None
        self._effects.append(Left(removed=removed))

    def _on_join(self, signal: Join, room: RoomView, now_ms: int) -> None:
        if self.phase is not Phase.IN_CALL:
            return
        sender = signal.sender
        if sender in self._roster().values():
            return  # already in (a late duplicate)
        try:
            kp = KeyPackage.decode(signal.key_package)
        except DecodeError:
            self._refuse(sender, RefuseReason.NOT_A_MEMBER)
            return
        if self._key_package_problem(kp, sender, room, now_ms) is not None:
            self._refuse(sender, RefuseReason.NOT_A_MEMBER)
            return
        if CALL_SFRAME_SUITE not in signal.sframe_suites:
            self._refuse(sender, RefuseReason.NO_SFRAME)
            return
        if len(self._pending_joins) >= MAX_CALL_PENDING_CHANGES:
            self._refuse(sender, RefuseReason.FULL)
            return
        self._refused.discard(sender)
        self._pending_joins[sender] = _PendingJoin(kp, now_ms)

    def _key_package_problem(
        self, kp: KeyPackage, device: Device | None, room: RoomView, now_ms: int | None
    ) -> str | None:
        """Why ``kp`` may not add ``device`` to this call, or None: it must be valid
        (RFC 9420 §10.1), name ``device``, be signed with that device's key in the
        room's group, and be made for this call."""
        if device is None or device not in room:
            return "not a member of the room"
        try:
            validate_key_package(kp, cipher_suite_id=self._suite.id, now_ms=now_ms)
        except (DecodeError, RemoteError):
            return "not a valid KeyPackage"
        leaf = kp.leaf_node
        if leaf.credential != Credential.basic(member_identity(*device)):
            return "the KeyPackage names another device"
        if leaf.signature_key != room[device]:
            return "the KeyPackage is not signed with the device's room key"
        calls = [e.extension_data for e in kp.extensions if e.extension_type == CALL_ID_EXTENSION]
        if calls != [self.call_id]:
            return "the KeyPackage is not for this call"
        return None

    def _refuse(self, device: Device, reason: RefuseReason) -> None:
        """Only the first committer in line says no (everyone decides the same)."""
        if self._rank() == 0 and device not in self._refused:
            self._refused.add(device)
            self._send(
                Refuse(
                    call_id=self.call_id,
                    from_user=self.me[0],
                    from_device=self.me[1],
                    to_user=device[0],
                    to_device=device[1],
                    reason=reason,
                )
            )

    def _committers(self) -> list[int]:
        roster = self._roster()
        return sorted(leaf for leaf, d in roster.items() if d not in self._pending_leaves)

    def _rank(self) -> int | None:
        if self.group is None or self.phase is not Phase.IN_CALL:
            return None
        try:
            return self._committers().index(self.group.own_leaf_index)
        except ValueError:
            return None

    def _first_pending(self) -> int | None:
        times = [p.since_ms for p in self._pending_joins.values()]
        times += [p.since_ms for p in self._pending_leaves.values()]
        return min(times) if times else None

    def _maybe_commit(self, room: RoomView, now_ms: int) -> None:
        group = self.group
        rank = self._rank()
        first = self._first_pending()
        if (
            group is None
            or rank is None
            or first is None
            or self._own_commit is not None
            or now_ms < first + rank * CALL_COMMIT_STAGGER_MS
        ):
            return
        roster = self._roster()
        leaves = {d: leaf for leaf, d in roster.items()}
        proposals: list[Add | Remove] = []
        proofs = []
        for device, leave in self._pending_leaves.items():
            if device in leaves:
                proposals.append(Remove(removed=leaves[device]))
                if leave.signature is not None and device in room:
                    proofs.append(LeaveProof(leaf=leaves[device], signature=leave.signature))
        size = len(roster) - len(proposals)
        limit = MESH_MAX_PARTICIPANTS if self.mode is CallMode.MESH else ROOM_CALL_MAX_PARTICIPANTS
        for device, pending in list(self._pending_joins.items()):
            if device not in room:
                del self._pending_joins[device]
            elif size >= limit:
                del self._pending_joins[device]
                mesh = self.mode is CallMode.MESH
                self._refuse(device, RefuseReason.SFU_REQUIRED if mesh else RefuseReason.FULL)
            else:
                proposals.append(Add(key_package=pending.key_package))
                size += 1
        if not proposals:
            return
        bundle = group.commit(rng=self._rng, now_ms=now_ms, proposals=proposals)
        self._own_commit = bundle.commit
        self._send(
            Commit(
                call_id=self.call_id,
                from_user=self.me[0],
                from_device=self.me[1],
                epoch=group.epoch,
                commit=bundle.commit,
                welcome=bundle.welcome or b"",
                leaves=tuple(proofs),
            )
        )

    # --- internals: commits ---------------------------------------------------------

    def _on_commit(self, signal: Commit, room: RoomView, now_ms: int) -> None:
        if self.phase is Phase.JOINING:
            self._commit_while_joining(signal, room, now_ms)
            return
        group = self.group
        if group is None or signal.epoch != group.epoch:
            return  # a commit for an epoch already decided: void
        if signal.sender == self.me:
            if self._own_commit is not None and self._own_commit == signal.commit:
                self._own_commit = None
                self._merged(group.merge_pending_commit(), room)
            return
        staged = group.process_message(signal.commit, now_ms=now_ms).content
        if not isinstance(staged, StagedCommit):
            raise CommitRefused("not a commit")
        self._check_commit(staged, signal, room)
        if self._own_commit is not None:
            group.clear_pending_commit()  # theirs came first in the room's order
            self._own_commit = None
        group.merge_staged_commit(staged)
        self._merged(staged, room)

    def _check_commit(self, staged: StagedCommit, signal: Commit, room: RoomView) -> None:
        """Every rule of the module docstring, on the staged commit (nothing merged yet).

        The rules depend only on the commit, the call group and the room's members at
        this point of the room's order, so every member decides the same."""
        group = self.group
        if group is None:  # pragma: no cover - IN_CALL has a group
            raise CommitRefused("not in the call")
        roster = self._roster()
        if roster.get(staged.sender.index) != signal.sender or staged.external:
            raise CommitRefused("the commit's MLS sender is not the room sender")
        proofs = {p.leaf: p.signature for p in signal.leaves}
        size = len(roster)
        for queued in staged.proposals:
            proposal = queued.proposal
            if isinstance(proposal, Add):
                kp = proposal.key_package
                problem = self._key_package_problem(
                    kp, device_of(kp.leaf_node.credential), room, None
                )
                if problem is not None:
                    raise CommitRefused(f"the commit adds a device that may not join: {problem}")
                size += 1
            elif isinstance(proposal, Remove):
                removed = roster.get(proposal.removed)
                member = group.member(proposal.removed)
                if removed is None or member is None:
                    raise CommitRefused("the commit removes an empty leaf")
                if removed in room:
                    self._check_leave(member.leaf, proofs.get(proposal.removed))
                size -= 1
            else:
                raise CommitRefused("the commit carries a proposal calls do not use")
        limit = MESH_MAX_PARTICIPANTS if self.mode is CallMode.MESH else ROOM_CALL_MAX_PARTICIPANTS
        if size > limit:
            raise CommitRefused("the commit makes the call larger than it may be")

    def _check_leave(self, leaf: LeafNode, signature: bytes | None) -> None:
        """A device still in the room is removed only with its own signed leave."""
        if signature is None:
            raise CommitRefused("the commit removes a device that did not leave")
        try:
            key = self._suite.verify_key(leaf.signature_key)
            verify_with_label(key, LEAVE_LABEL, self.call_id + leaf.encryption_key, signature)
        except (SignatureError, InvalidKey):
            raise CommitRefused("the commit removes a device that did not leave") from None

    def _merged(self, staged: StagedCommit, room: RoomView) -> None:
        added = []
        removed = []
        for member in staged.removes:
            device = device_of(member.credential)
            if device is not None:
                removed.append(device)
                self._pending_leaves.pop(device, None)
        for member in staged.adds:
            device = device_of(member.credential)
            if device is not None:
                added.append(device)
                self._pending_joins.pop(device, None)
        if staged.self_removed or self.group is None or not self.group.is_active:
            self._leave_now(removed=True)
            return
        self._entered()
        self._consent.members_changed(added, removed)
        self._flush_consent()

    def _commit_while_joining(self, signal: Commit, room: RoomView, now_ms: int) -> None:
        """A joiner takes the Welcome of the first commit (in the room's order) for an
        epoch, and only if it is for our KeyPackage; a later commit for that epoch lost."""
        epoch = signal.epoch
        if self._last_taken is not None and epoch <= self._last_taken:
            return
        self._last_taken = epoch
        if not signal.welcome or self._kp is None:
            return
        kp, private = self._kp
        try:
            group = Group.join_from_welcome(
                signal.welcome,
                kp,
                private,
                signing_key=self._signing_key,
                now_ms=now_ms,
                config=_GROUP_CONFIG,
            )
        except (DecodeError, RemoteError, UsageError):
            return  # not for us (another joiner's Welcome) or broken: keep waiting
        if group.epoch != epoch + 1:
            raise CommitRefused("the Welcome is not for the epoch its commit starts")
        for member in group.members():
            device = device_of(member.credential)
            if device is None or room.get(device) != member.leaf.signature_key:
                raise CommitRefused("the call group has a member that is not in the room")
        if signal.sender not in self._devices(group):
            raise CommitRefused("the Welcome's committer is not in the call group")
        self.group = group
        self._kp = None
        self.phase = Phase.IN_CALL
        self._effects.append(Joined(epoch=group.epoch))
        self._entered()

    @staticmethod
    def _devices(group: Group) -> set[Device]:
        return {d for m in group.members() if (d := device_of(m.credential)) is not None}

    # --- internals: sealed messages ---------------------------------------------------

    def _send(self, signal: RoomCallSignal) -> None:
        self._effects.append(SendRoomSignal(payload=signal.encode()))

    def _seal(self, payload: CallPayload) -> None:
        self._require_in_call()
        group = self.group
        if group is None:  # pragma: no cover - checked above
            return
        message = group.encrypt_application(payload.encode(), rng=self._rng)
        self._send(
            Sealed(
                call_id=self.call_id, from_user=self.me[0], from_device=self.me[1], message=message
            )
        )

    def _flush_consent(self) -> None:
        outbox, self._consent.outbox = self._consent.outbox, []
        for payload in outbox:
            self._seal(payload)
        self._effects += self._consent.effects
        self._consent.effects = []

    def _on_sealed(self, signal: Sealed, sender: Device, now_ms: int) -> None:
        group = self.group
        if group is None:  # pragma: no cover - IN_CALL has a group
            return
        try:
            processed = group.process_message(signal.message, now_ms=now_ms)
        except WrongEpoch:
            return  # sealed before this device joined (or too long ago): not for us
        content = processed.content
        inner = self._roster().get(processed.sender.index)
        if not isinstance(content, ApplicationMessage) or inner != sender:
            raise CommitRefused("a sealed call message from another sender than the room's")
        payload = CallPayload.decode(content.data)
        if isinstance(payload, MediaState):
            self._effects.append(
                PeerMediaState(
                    device=sender,
                    audio_muted=payload.audio_muted,
                    camera_on=payload.camera_on,
                    screen_on=payload.screen_on,
                )
            )
        elif isinstance(payload, Feed):
            self._effects.append(FeedAnnounced(device=sender, feed_id=payload.feed_id))
        elif isinstance(payload, Recording):
            self._consent.receive(sender, payload, frozenset(self.participants()), now_ms)
            self._flush_consent()
        elif isinstance(payload, MeshOffer) and (payload.to_user, payload.to_device) == self.me:
            # (a MeshAnswer is a MeshOffer too)
            self._effects.append(
                MeshDescription(
                    device=sender,
                    offer=not isinstance(payload, MeshAnswer),
                    nonce=payload.nonce,
                    sdp=payload.sdp,
                )
            )


_GROUP_CONFIG = GroupConfig()
