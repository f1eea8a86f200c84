"""The room-call engine: the call's own MLS group, joins and leaves as commits in it,
authorized by room membership; participants and keys from that group (docs/calls.md)."""

from __future__ import annotations

import secrets

import pytest

from sottovoce.calls.errors import (
    CommitRefused,
    NotARoomMember,
    SframeUnsupported,
    SfuRequired,
)
from sottovoce.calls.media_keys import CALL_TRACKS, CallKeys
from sottovoce.calls.room_call import CALL_ID_EXTENSION, RoomCall
from sottovoce.calls.room_effects import (
    AppendAudit,
    FeedAnnounced,
    Joined,
    JoinRefused,
    Left,
    MeshDescription,
    ParticipantsChanged,
    PeerMediaState,
    RecordingPermission,
    RecordingRefused,
    RecordingRequested,
    RecordingState,
    SendersRevoked,
)
from sottovoce.calls.room_signals import (
    CallMode,
    Commit,
    Join,
    Leave,
    LeaveProof,
    Recording,
    RecordingStep,
    RoomCallSignal,
    Sealed,
    Start,
)
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError
from sottovoce.limits import (
    CALL_COMMIT_STAGGER_MS,
    CALL_RECORDING_CONSENT_MS,
    MESH_MAX_PARTICIPANTS,
)
from sottovoce.mls.common import Extension
from sottovoce.mls.group import generate_key_package
from sottovoce.mls.messages import Capabilities, Credential, KeyPackage
from sottovoce.protocol.audit import AuditAction
from sottovoce.sframe import Track, UnknownKeyId
from tests.unit.room_call_sim import Room, dev

A, B, C, D, E = "alice/a1", "bob/b1", "carol/c1", "dave/d1", "erin/e1"


def call_kp(name: str, key: SigningKey, call_id: bytes, now_ms: int) -> KeyPackage:
    """A KeyPackage for ``call_id`` as RoomCall.join makes it, signed with ``key``."""
    credential = Credential.basic(name.encode())
    kp, _ = generate_key_package(
        cipher_suite(1),
        credential,
        key,
        secrets.token_bytes,
        now_ms,
        extensions=(Extension(extension_type=CALL_ID_EXTENSION, extension_data=call_id),),
        capabilities=Capabilities(
            cipher_suites=(1,),
            extensions=(CALL_ID_EXTENSION,),
            credentials=(int(credential.credential_type),),
        ),
    )
    return kp


def call_of(room: Room, *names: str, starter: str = A) -> bytes:
    """Start a call at ``starter`` and have ``names`` join it, one after another."""
    call = room.start(starter)
    room.pump()
    for name in names:
        room.join(name, call.call_id)
        room.pump()
    return call.call_id


def frame_from(room: Room, sender: str, track: Track = Track.VIDEO) -> bytes:
    return room.member(sender).keys.protect(track, b"payload of " + sender.encode(), b"hdr")


def decodes(keys: CallKeys, frame: bytes, now_ms: int) -> bool:
    try:
        keys.unprotect(frame, b"hdr", now_ms)
    except (UnknownKeyId, DecodeError, Exception):
        return False
    return True


# --- joining ------------------------------------------------------------------------


def test_joins_are_commits_in_the_call_group_and_everyone_sees_the_same_participants() -> None:
    room = Room([A, B, C, D])
    call_of(room, B, C)
    expected = (dev(A), dev(B), dev(C))
    for name in (A, B, C):
        assert room.participants(name) == expected
        assert room.call(name).epoch == 2
        assert not room.member(name).errors
    assert room.member(D).call is None  # a room member who is not in the call
    # Participants come from the call group, as an effect for the UI.
    last = room.effects_of(C, ParticipantsChanged)[-1]
    assert last.participants == expected and last.epoch == 2
    assert room.effects_of(C, Joined) == [Joined(epoch=2)]
    # One member commits each change: the call's starter is the lowest leaf.
    commits = [RoomCallSignal.decode(p) for _, p in room.log]
    assert [c.sender for c in commits if isinstance(c, Commit)] == [dev(A), dev(A)]
    assert room.effects_of(A, AppendAudit) == [AppendAudit(action=AuditAction.CALL_STARTED)]


def test_every_member_derives_the_same_keys_and_frames_decode_across_the_call() -> None:
    room = Room([A, B, C])
    call_of(room, B, C)
    for sender in (A, B, C):
        for track in CALL_TRACKS:
            frame = frame_from(room, sender, track)
            for receiver in (A, B, C):
                if receiver != sender:
                    out = room.member(receiver).keys.unprotect(frame, b"hdr", room.now_ms)
                    assert out.sender == dev(sender) and out.track is track


def test_a_room_member_not_in_the_call_a_late_joiner_and_a_wrong_key_decode_nothing() -> None:
    room = Room([A, B, C, D])
    call_of(room, B)
    early = frame_from(room, A)
    room.join(C, room.call(A).call_id)
    room.pump()
    # Carol joined after the frame was sent: none of her keys opens it.
    assert not decodes(room.member(C).keys, early, room.now_ms)
    # Dave is in the room but not in the call: he holds no call key at all.
    assert room.member(D).keys.current_epoch is None
    assert not decodes(room.member(D).keys, frame_from(room, A), room.now_ms)
    # Keys of another call (same people, another call group) are wrong keys.
    other = Room([A, B])
    call_of(other, B)
    assert not decodes(other.member(B).keys, frame_from(room, A), room.now_ms)


def test_a_join_from_a_device_that_is_not_in_the_room_is_refused() -> None:
    room = Room([A, B])
    call_id = call_of(room)
    # An outsider signs its KeyPackage with its own key, not a room leaf's key:
    # it claims to be bob's second device.
    key = cipher_suite(1).generate_signing_key(secrets.token_bytes)
    kp = call_kp("bob/b2", key, call_id, room.now_ms)
    forged = Join(
        call_id=call_id,
        from_user="bob",
        from_device="b1",
        key_package=kp.encode(),
        sframe_suites=(4,),
    )
    room.queue.append((dev(B), forged.encode()))
    room.pump()
    refusals = [RoomCallSignal.decode(p) for _, p in room.log][-1]
    assert refusals.describe().startswith("Refuse")
    assert room.participants(A) == (dev(A),)
    # A signal whose named sender is not the room sender is refused outright.
    call = room.call(A)
    with pytest.raises(CommitRefused):
        call.receive(forged.encode(), sender=dev(A), room=room.view(), now_ms=room.now_ms)


def test_a_kp_of_a_room_member_signed_with_another_key_gets_not_a_member() -> None:
    room = Room([A, B])
    call_id = call_of(room)
    key = cipher_suite(1).generate_signing_key(secrets.token_bytes)  # not bob's room key
    kp = call_kp("bob/b1", key, call_id, room.now_ms)
    bob = room.member(B)
    bob.call = RoomCall.join(
        room_id="room1",
        call_id=call_id,
        mode=room.mode,
        me=bob.device,
        signing_key=bob.signing_key,
        rng=secrets.token_bytes,
        now_ms=room.now_ms,
    )
    bob.call.effects()  # drop its own (valid) join; send the forged one instead
    room.queue.append(
        (
            dev(B),
            Join(
                call_id=call_id,
                from_user="bob",
                from_device="b1",
                key_package=kp.encode(),
                sframe_suites=(4,),
            ).encode(),
        )
    )
    room.pump()
    refused = room.effects_of(B, JoinRefused)
    assert len(refused) == 1 and isinstance(refused[0].error, NotARoomMember)
    assert room.participants(A) == (dev(A),)


def test_a_device_without_sframe_cannot_join() -> None:
    room = Room([A, B])
    call_id = call_of(room)
    room.join(B, call_id, sframe_suites=())
    room.pump()
    refused = room.effects_of(B, JoinRefused)
    assert len(refused) == 1 and isinstance(refused[0].error, SframeUnsupported)
    assert room.participants(A) == (dev(A),)


def test_a_mesh_call_takes_four_and_a_fifth_gets_the_clear_sfu_error() -> None:
    room = Room([A, B, C, D, E], mode=CallMode.MESH)
    call_id = call_of(room, B, C, D)
    assert len(room.participants(A)) == MESH_MAX_PARTICIPANTS
    room.join(E, call_id)
    room.pump()
    refused = room.effects_of(E, JoinRefused)
    assert len(refused) == 1 and isinstance(refused[0].error, SfuRequired)
    assert "SFU" in str(refused[0].error) and "4 participants" in str(refused[0].error)
    assert refused[0].error.code == "call_sfu_required"
    assert room.call(E).participants() == ()
    assert len(room.participants(A)) == MESH_MAX_PARTICIPANTS


# --- leaving --------------------------------------------------------------------------


def test_a_leaver_decodes_nothing_sent_after_the_commit_that_removed_it() -> None:
    room = Room([A, B, C])
    call_of(room, B, C)
    bob_keys = room.member(B).keys
    room.call(B).leave()
    room.pump()
    assert room.effects_of(B, Left) == [Left(removed=False)]
    assert room.participants(A) == (dev(A), dev(C)) == room.participants(C)
    assert room.call(A).epoch == 3
    after = frame_from(room, A)
    assert not decodes(bob_keys, after, room.now_ms)
    assert decodes(room.member(C).keys, after, room.now_ms)


def test_a_device_removed_from_the_room_is_cut_off_at_once_and_removed_from_the_call() -> None:
    room = Room([A, B, C])
    call_of(room, B, C)
    room.remove_from_room(C)
    assert room.effects_of(A, SendersRevoked) == [SendersRevoked(devices=(dev(C),))]
    room.pump()
    assert room.participants(A) == (dev(A), dev(B))
    assert room.effects_of(C, Left) == [Left(removed=True)]


def test_when_the_committer_goes_quiet_the_next_in_line_commits_after_the_stagger() -> None:
    room = Room([A, B, C])
    call_id = call_of(room, B)
    # Alice (leaf 0) stops sending anything.
    room.drop = lambda sender, payload: sender == dev(A)
    room.join(C, call_id)
    room.pump()
    assert room.participants(B) == (dev(A), dev(B))
    room.tick(CALL_COMMIT_STAGGER_MS)
    room.pump()
    assert room.participants(B) == (dev(A), dev(B), dev(C))
    assert room.participants(C) == (dev(A), dev(B), dev(C))


def test_two_commits_for_one_epoch_the_first_in_room_order_wins() -> None:
    room = Room([A, B, C, D])
    call_id = call_of(room, B)
    room.join(C, call_id)
    room.join(D, call_id)
    # Alice commits carol at once; before her commit is delivered, bob has waited
    # long enough to take over and commits carol and dave: both are for epoch 1.
    alice, bob = room.call(A), room.call(B)
    for sender, payload in list(room.queue):
        for call in (alice, bob):
            call.receive(payload, sender=sender, room=room.view(), now_ms=room.now_ms)
    room.queue.clear()
    room.now_ms += 2 * CALL_COMMIT_STAGGER_MS
    alice.tick(room.view(), room.now_ms)
    bob.tick(room.view(), room.now_ms)
    for name in (A, B):
        room.collect(room.member(name))
    commits = [(s, RoomCallSignal.decode(p)) for s, p in room.queue]
    assert {s for s, c in commits if isinstance(c, Commit)} == {dev(A), dev(B)}
    room.pump()
    # Everyone agrees on one history and ends with all four in.
    for name in (A, B, C, D):
        assert room.participants(name) == (dev(A), dev(B), dev(C), dev(D)), name
    assert len({room.call(n).group.epoch_authenticator.expose() for n in (A, B, C, D)}) == 1  # type: ignore[union-attr]


def test_a_commit_that_adds_someone_with_a_key_package_not_for_this_call_is_refused() -> None:
    room = Room([A, B, C])
    call_id = call_of(room, B)
    carol = room.member(C)
    alice, bob = room.call(A), room.call(B)
    for kp in (
        # carol's KeyPackage for another call: she never asked to join this one
        call_kp("carol/c1", carol.signing_key, bytes(16), room.now_ms),
        # one for this call, but not signed with carol's room key
        call_kp(
            "carol/c1",
            cipher_suite(1).generate_signing_key(secrets.token_bytes),
            call_id,
            room.now_ms,
        ),
    ):
        bundle = alice.group.add_members([kp], rng=secrets.token_bytes)  # type: ignore[union-attr]
        alice.group.clear_pending_commit()  # type: ignore[union-attr]
        signal = Commit(
            call_id=call_id,
            from_user="alice",
            from_device="a1",
            epoch=1,
            commit=bundle.commit,
            welcome=bundle.welcome or b"",
        )
        before = bob.group.epoch_authenticator  # type: ignore[union-attr]
        with pytest.raises(CommitRefused):
            bob.receive(signal.encode(), sender=dev(A), room=room.view(), now_ms=room.now_ms)
        assert bob.group.epoch_authenticator == before  # type: ignore[union-attr]
        assert bob.participants() == (dev(A), dev(B))


def test_a_removal_of_someone_still_here_needs_its_own_signed_leave() -> None:
    room = Room([A, B, C])
    call_id = call_of(room, B, C)
    alice = room.call(A)
    bundle = alice.group.remove_members([2], rng=secrets.token_bytes)  # type: ignore[union-attr]
    alice.group.clear_pending_commit()  # type: ignore[union-attr]
    bob_proof = RoomCallSignal.decode(
        Leave(call_id=call_id, from_user="bob", from_device="b1", signature=b"x" * 64).encode()
    )
    for leaves in ((), (LeaveProof(leaf=2, signature=bob_proof.signature),)):  # type: ignore[attr-defined]
        signal = Commit(
            call_id=call_id,
            from_user="alice",
            from_device="a1",
            epoch=2,
            commit=bundle.commit,
            welcome=b"",
            leaves=leaves,
        )
        with pytest.raises(CommitRefused):
            room.call(B).receive(
                signal.encode(), sender=dev(A), room=room.view(), now_ms=room.now_ms
            )
        assert room.participants(B) == (dev(A), dev(B), dev(C))


def test_a_member_who_joined_after_a_leave_still_accepts_its_removal() -> None:
    room = Room([A, B, C, D])
    call_id = call_of(room, B, C)
    # Alice goes quiet; carol leaves; dave joins; bob commits both after the stagger.
    room.drop = lambda sender, payload: sender == dev(A)
    room.call(C).leave()
    room.pump()
    room.join(D, call_id)
    room.pump()
    room.tick(CALL_COMMIT_STAGGER_MS)
    room.pump()
    assert room.participants(B) == (dev(A), dev(B), dev(D)) == room.participants(D)
    # Alice hears everything (only her own sends are lost) and agrees.
    assert room.participants(A) == (dev(A), dev(B), dev(D))
    assert not room.member(D).errors and not room.member(A).errors


# --- in-call messages -------------------------------------------------------------------


def test_media_state_feeds_and_mesh_sdps_travel_sealed_in_the_call_group() -> None:
    room = Room([A, B, C])
    call_of(room, B, C)
    room.call(B).set_media(audio_muted=True, camera_on=False, screen_on=True)
    room.call(B).announce_feed("f0123")
    room.call(A).mesh_offer(dev(C), b"n" * 16, "v=0\r\n")
    room.pump()
    assert room.effects_of(A, PeerMediaState)[-1] == PeerMediaState(
        device=dev(B), audio_muted=True, camera_on=False, screen_on=True
    )
    assert room.effects_of(C, FeedAnnounced) == [FeedAnnounced(device=dev(B), feed_id="f0123")]
    assert [e.device for e in room.effects_of(C, MeshDescription)] == [dev(A)]
    assert room.effects_of(B, MeshDescription) == []  # not for bob
    # In the room's stream these are opaque sealed messages of the call group.
    sealed = [RoomCallSignal.decode(p) for _, p in room.log[-3:]]
    assert all(isinstance(s, Sealed) for s in sealed)
    assert b"f0123" not in b"".join(p for _, p in room.log)


def test_a_sealed_message_moved_to_another_room_sender_is_refused() -> None:
    room = Room([A, B, C])
    call_id = call_of(room, B, C)
    room.call(B).announce_feed("bobfeed")
    room.collect(room.member(B))
    _sender, payload = room.queue.pop()
    moved = Sealed(
        call_id=call_id,
        from_user="carol",
        from_device="c1",
        message=RoomCallSignal.decode(payload).message,
    )  # type: ignore[attr-defined]
    with pytest.raises(CommitRefused):
        room.call(A).receive(moved.encode(), sender=dev(C), room=room.view(), now_ms=room.now_ms)


def test_malformed_and_misdirected_signals_raise_typed_errors() -> None:
    room = Room([A, B])
    call_id = call_of(room, B)
    alice = room.call(A)
    for data in (b"", b"\x01", b"\x09" + bytes(40), bytes(600_000)):
        with pytest.raises(DecodeError):
            alice.receive(data, sender=dev(B), room=room.view(), now_ms=room.now_ms)
    other = Leave(call_id=bytes(16), from_user="bob", from_device="b1", signature=b"s").encode()
    with pytest.raises(Exception, match="another call"):
        alice.receive(other, sender=dev(B), room=room.view(), now_ms=room.now_ms)
    again = Start(call_id=call_id, from_user="bob", from_device="b1", mode=CallMode.SFU)
    with pytest.raises(Exception, match="second start"):
        alice.receive(again.encode(), sender=dev(B), room=room.view(), now_ms=room.now_ms)
    assert alice.participants() == (dev(A), dev(B))


# --- recording consent ------------------------------------------------------------------


def consent_call(policy: dict[str, bool | None]) -> Room:
    room = Room([A, B, C])
    call_of(room, B, C)
    room.call(A).request_recording(room.now_ms)
    room.pump()
    for name, answer in policy.items():
        asked = room.effects_of(name, RecordingRequested)
        assert asked and asked[-1].by == dev(A)
        if answer is not None:
            room.call(name).answer_recording(answer)
    room.pump()
    return room


def test_recording_starts_only_when_every_present_participant_said_yes() -> None:
    room = consent_call({B: True, C: True})
    assert room.effects_of(A, RecordingPermission) == [RecordingPermission(allowed=True)]
    assert room.effects_of(A, AppendAudit)[-1] == AppendAudit(action=AuditAction.RECORDING_ON)
    for name in (A, B, C):
        assert room.effects_of(name, RecordingState) == [RecordingState(on=True, by=dev(A))]
    room.call(A).stop_recording()
    room.pump()
    for name in (A, B, C):
        assert room.effects_of(name, RecordingState)[-1] == RecordingState(on=False, by=dev(A))
    assert room.effects_of(A, AppendAudit)[-1] == AppendAudit(action=AuditAction.RECORDING_OFF)


def test_recording_is_refused_when_one_participant_says_no() -> None:
    room = consent_call({B: True, C: False})
    assert room.effects_of(A, RecordingPermission) == []
    assert room.effects_of(A, RecordingRefused) == [RecordingRefused(refused_by=(dev(C),))]
    for name in (A, B, C):
        assert room.effects_of(name, RecordingState) == []
    assert AppendAudit(action=AuditAction.RECORDING_ON) not in room.effects_of(A, AppendAudit)


def test_recording_is_refused_when_someone_does_not_answer_in_20_s() -> None:
    room = consent_call({B: True, C: None})
    room.tick(CALL_RECORDING_CONSENT_MS - 1)
    assert room.effects_of(A, RecordingRefused) == []
    room.tick(1)
    room.pump()
    assert room.effects_of(A, RecordingRefused) == [RecordingRefused(refused_by=())]
    assert room.effects_of(A, RecordingPermission) == []


def test_withdrawn_consent_or_a_newcomer_stops_a_running_recording() -> None:
    room = consent_call({B: True, C: True})
    room.call(C).answer_recording(False)
    room.pump()
    assert room.effects_of(A, RecordingPermission)[-1] == RecordingPermission(allowed=False)
    assert room.effects_of(B, RecordingState)[-1].on is False
    # Again, then someone joins: the newcomer was never asked, so it stops.
    room = consent_call({B: True, C: True})
    room.members[dev(D)] = Room([D]).members[dev(D)]
    room.join(D, room.call(A).call_id)
    room.pump()
    assert room.effects_of(A, RecordingPermission)[-1] == RecordingPermission(allowed=False)
    assert room.effects_of(C, RecordingState)[-1] == RecordingState(on=False, by=dev(A))


def test_rec_shows_even_without_consent_and_goes_off_when_the_requester_leaves() -> None:
    room = consent_call({B: None, C: None})
    request = room.effects_of(B, RecordingRequested)[-1].request_id
    # Alice breaks the rule and says the recording runs although nobody agreed:
    # every client still shows REC, marked as not consented.
    room.call(A)._seal(Recording(request_id=request, step=RecordingStep.START))
    room.pump()
    for name in (B, C):
        assert room.effects_of(name, RecordingState)[-1] == RecordingState(
            on=True, by=dev(A), consented=False
        )
    room.call(A).leave()
    room.pump()
    for name in (B, C):
        assert room.effects_of(name, RecordingState)[-1] == RecordingState(on=False, by=dev(A))


def test_the_last_one_out_stops_the_call_in_the_audit_trail() -> None:
    room = Room([A, B])
    call_of(room, B)
    room.call(B).leave()
    room.pump()
    assert AppendAudit(action=AuditAction.CALL_STOPPED) not in room.effects_of(B, AppendAudit)
    room.call(A).leave()
    room.collect(room.member(A))
    assert room.effects_of(A, AppendAudit)[-1] == AppendAudit(action=AuditAction.CALL_STOPPED)


def test_a_call_in_an_xwing_room_runs_its_group_in_that_suite() -> None:
    room = Room([A, B, C], suite=XWING_SUITE_ID)
    call_of(room, B, C)
    for name in (A, B, C):
        group = room.call(name).group
        assert group is not None and group.suite.id == XWING_SUITE_ID
        assert room.participants(name) == (dev(A), dev(B), dev(C))
    frame = frame_from(room, B)
    assert room.member(C).keys.unprotect(frame, b"hdr", room.now_ms).sender == dev(B)
    # A suite-1 KeyPackage (a device that ignored the room's suite) is refused.
    dave = Room([A, D], suite=XWING_SUITE_ID)
    call_id = call_of(dave)
    dave.join(D, call_id, suite=1)
    dave.pump()
    assert dave.effects_of(D, JoinRefused) and dave.member(D).call.group is None  # type: ignore[union-attr]
