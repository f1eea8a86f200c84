"""The 1:1 call state machine, two (or more) devices in memory (docs/calls.md)."""

from __future__ import annotations

import pytest

from sottovoce.calls.effects import (
    CallState,
    CreateDescription,
    EndReason,
    MediaRole,
    PeerMediaState,
    PeerRinging,
    RecordingPermission,
    RecordingRequested,
    RecordMissedCall,
    SendSignal,
    SetLocalMedia,
    StateChanged,
)
from sottovoce.calls.errors import (
    BindingError,
    CallUsageError,
    OutOfOrderSignal,
    StaleSignal,
    UnknownCall,
)
from sottovoce.calls.machine import TRANSITIONS, Event
from sottovoce.calls.signals import (
    Accept,
    Answer,
    AnsweredElsewhere,
    Cancel,
    CancelReason,
    Fingerprint,
    Hangup,
    HangupReason,
    HashAlgorithm,
    IceCandidate,
    IceCandidates,
    IceRestartAnswer,
    IceRestartOffer,
    Invite,
    Offer,
    Ringing,
)
from sottovoce.errors import DecodeError
from sottovoce.limits import CALL_RING_GRACE_MS, CALL_RING_TIMEOUT_MS, CALL_SETUP_TIMEOUT_MS
from tests.unit.call_sim import Device, World, fake_sdp, state


def world(**kw: object) -> tuple[World, Device, Device, Device]:
    w = World(**kw)  # type: ignore[arg-type]
    return w, w.add("alice", "a1"), w.add("bob", "b1"), w.add("bob", "b2")


def dial(w: World, caller: Device, callee: str, **kw: object) -> bytes:
    call_id = caller.machine.dial(
        w.now,
        peer=callee,
        peer_devices=w.devices_of(callee),
        own_devices=w.devices_of(caller.user),
        **kw,  # type: ignore[arg-type]
    )
    w.pump()
    return call_id


def accept(w: World, d: Device) -> None:
    d.machine.accept(w.now, own_devices=w.devices_of(d.user))
    w.pump()


def reasons(*devices: Device) -> list[EndReason | None]:
    return [d.machine.call.reason if d.machine.call else None for d in devices]


# --- the table ------------------------------------------------------------------


def test_table_is_literal_and_every_state_is_reachable() -> None:
    reached = {CallState.IDLE} | set(TRANSITIONS.values())
    assert reached == set(CallState)
    # ENDED accepts exactly what IDLE accepts: a finished call never blocks the next one.
    idle = {e for (s, e) in TRANSITIONS if s is CallState.IDLE}
    ended = {e for (s, e) in TRANSITIONS if s is CallState.ENDED}
    assert idle == ended == {
        Event.DIAL, Event.INVITE, Event.ANSWERED_EARLY, Event.CANCELLED_EARLY
    }
    # Every event is used somewhere.
    assert {e for (_, e) in TRANSITIONS} == set(Event)


# --- the happy path -----------------------------------------------------------------


def test_call_rings_every_callee_device_first_accept_wins_media_comes_up() -> None:
    w, a1, b1, b2 = world()
    call_id = dial(w, a1, "bob")
    invites = [e for e in a1.log if isinstance(e, SendSignal) and isinstance(e.signal, Invite)]
    assert {(e.user, e.device) for e in invites} == {("bob", "b1"), ("bob", "b2")}
    w.advance(100)
    assert state(a1) is CallState.OUTGOING_RINGING
    assert state(b1) is state(b2) is CallState.INCOMING_RINGING
    assert [e.device for e in a1.log if isinstance(e, PeerRinging)] == ["b1", "b2"]
    accept(w, b2)
    w.run()
    assert state(a1) is state(b2) is CallState.ACTIVE
    assert state(b1) is CallState.ENDED and reasons(b1) == [EndReason.ANSWERED_ELSEWHERE]
    # b1 heard "answered elsewhere" from bob's own device b2, never from alice.
    ae = [s for s in w.sent if isinstance(s.signal, AnsweredElsewhere)]
    assert [(s.signal.from_device, s.device, s.user) for s in ae] == [("b2", "b1", "bob")]
    # The offer (addresses, fingerprints) went only to the device that accepted.
    offers = [s for s in w.sent if isinstance(s.signal, Offer)]
    assert [(s.device, s.signal.call_id) for s in offers] == [("b2", call_id)]
    # Both learnt the other's media state when the call was set up.
    assert any(isinstance(e, PeerMediaState) for e in a1.log)
    assert any(isinstance(e, PeerMediaState) for e in b2.log)
    assert not a1.errors and not b1.errors and not b2.errors


def test_offer_and_answer_are_bound_to_devices_nonces_and_fingerprints() -> None:
    w, a1, _b1, b2 = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b2)
    w.run()
    offer = next(s.signal for s in w.sent if isinstance(s.signal, Offer))
    answer = next(s.signal for s in w.sent if isinstance(s.signal, Answer))
    assert (offer.from_device, offer.to_device) == ("a1", "b2")
    assert (answer.from_device, answer.to_device) == ("b2", "a1")
    assert answer.offer_nonce == offer.nonce and answer.nonce != offer.nonce
    assert offer.fingerprints == (a1.fingerprint,)
    assert answer.fingerprints == (b2.fingerprint,)
    assert a1.fingerprint.sdp_value() in offer.sdp


def test_hangup_from_either_side_ends_both() -> None:
    for hanger in ("caller", "callee"):
        w, a1, b1, b2 = world()
        dial(w, a1, "bob")
        w.advance(100)
        accept(w, b1)
        w.run()
        who, other = (a1, b1) if hanger == "caller" else (b1, a1)
        who.machine.hangup(w.now)
        w.run()
        assert state(a1) is state(b1) is state(b2) is CallState.ENDED
        assert who.machine.call and who.machine.call.reason is EndReason.HUNG_UP
        assert other.machine.call and other.machine.call.reason is EndReason.PEER_HUNG_UP


# --- the states a person expects ------------------------------------------------------


def test_declined_stops_every_device() -> None:
    w, a1, b1, b2 = world()
    dial(w, a1, "bob")
    w.advance(100)
    b1.machine.decline(w.now)
    w.run()
    assert reasons(a1, b1, b2) == [
        EndReason.PEER_DECLINED,
        EndReason.DECLINED,
        EndReason.DECLINED_ELSEWHERE,
    ]
    assert not a1.missed


def test_busy_when_the_callee_is_in_another_call() -> None:
    w, a1, b1, b2 = world()
    carol = w.add("carol", "c1")
    dial(w, carol, "bob")  # carol rings both of bob's devices
    w.advance(100)
    accept(w, b1)
    w.run()
    assert state(b1) is CallState.ACTIVE and state(b2) is CallState.ENDED
    # b2 is idle again, b1 is busy: alice's call ends busy and b2 stops ringing.
    dial(w, a1, "bob")
    w.run()
    assert reasons(a1) == [EndReason.BUSY]
    assert state(b2) is CallState.ENDED and reasons(b2) == [EndReason.MISSED]
    assert state(b1) is CallState.ACTIVE and state(carol) is CallState.ACTIVE


def test_no_answer_after_45_seconds_is_a_missed_call_recorded_once() -> None:
    w, a1, b1, b2 = world()
    start = w.now
    call_id = dial(w, a1, "bob")
    w.advance(CALL_RING_TIMEOUT_MS - 1)
    assert state(a1) is CallState.OUTGOING_RINGING  # the clock is injected: no sleeping
    w.run()
    assert reasons(a1, b1, b2) == [EndReason.NO_ANSWER, EndReason.MISSED, EndReason.MISSED]
    assert a1.missed == [
        RecordMissedCall(
            call_id=call_id, peer="bob", at_ms=start + CALL_RING_TIMEOUT_MS, video=True
        )
    ]
    assert not b1.missed and not b2.missed  # one durable record, from the caller


def test_a_callee_that_never_hears_the_cancel_stops_ringing_by_itself() -> None:
    w, a1, b1, _b2 = world(drop=lambda s: isinstance(s.signal, Cancel))
    dial(w, a1, "bob")
    w.run()
    assert reasons(a1, b1) == [EndReason.NO_ANSWER, EndReason.MISSED]
    ended_at = next(
        e for e in reversed(b1.log) if isinstance(e, StateChanged) and e.state is CallState.ENDED
    )
    assert ended_at.reason is EndReason.MISSED
    assert w.now >= 1_000_000 + CALL_RING_TIMEOUT_MS + CALL_RING_GRACE_MS


def test_a_redial_replaces_a_ringing_call_whose_cancel_was_lost() -> None:
    w, a1, b1, _b2 = world(drop=lambda s: isinstance(s.signal, Cancel))
    first = dial(w, a1, "bob")
    w.advance(100)
    a1.machine.hangup(w.now)  # the cancel never arrives
    w.advance(100)
    assert state(b1) is CallState.INCOMING_RINGING
    second = dial(w, a1, "bob")
    w.advance(100)
    assert b1.machine.call is not None and b1.machine.call.call_id == second != first
    assert state(b1) is CallState.INCOMING_RINGING  # not "busy": the same caller
    accept(w, b1)
    w.run()
    assert state(a1) is state(b1) is CallState.ACTIVE


def test_caller_cancels() -> None:
    w, a1, b1, b2 = world()
    dial(w, a1, "bob")
    w.advance(100)
    a1.machine.hangup(w.now)
    w.run()
    assert reasons(a1, b1, b2) == [EndReason.CANCELLED, EndReason.MISSED, EndReason.MISSED]
    assert not a1.missed  # a cancelled call is not a missed-call record


def test_glare_resolves_to_the_lower_call_id_on_both_sides() -> None:
    w = World()
    a1, b1 = w.add("alice", "a1"), w.add("bob", "b1")
    # Both dial before either hears the other.
    ca = a1.machine.dial(w.now, peer="bob", peer_devices=["b1"], own_devices=["a1"])
    cb = b1.machine.dial(w.now, peer="alice", peer_devices=["a1"], own_devices=["b1"])
    w.run()
    survivor = min(ca, cb)
    assert state(a1) is state(b1) is CallState.ACTIVE
    assert a1.machine.call and b1.machine.call
    assert a1.machine.call.call_id == b1.machine.call.call_id == survivor
    loser = b1 if survivor == ca else a1
    assert any(isinstance(e, StateChanged) and e.reason is EndReason.SUPERSEDED for e in loser.log)


def test_answered_elsewhere_before_the_invite_never_rings() -> None:
    # b2 hears b1's "answered elsewhere" before alice's invite (different paths).
    w, a1, b1, b2 = world(
        delay=lambda s: 500 if (isinstance(s.signal, Invite) and s.device == "b2") else 0
    )
    dial(w, a1, "bob")
    w.advance(60)
    accept(w, b1)
    w.run()
    assert state(a1) is state(b1) is CallState.ACTIVE
    assert state(b2) is CallState.IDLE  # never rang
    assert [type(e) for e in b2.errors] == [StaleSignal]  # the late invite, refused


def test_a_cancel_that_overtakes_its_invite_means_the_call_never_rings() -> None:
    # The caller hangs up at once; its cancel reaches bob's devices before the invite.
    w, a1, b1, b2 = world(delay=lambda s: 300 if isinstance(s.signal, Invite) else 0)
    dial(w, a1, "bob")
    a1.machine.hangup(w.now)
    w.run()
    assert reasons(a1) == [EndReason.CANCELLED]
    for late in (b1, b2):
        assert state(late) is CallState.IDLE  # never rang, so nothing to accept or miss
        assert [type(e) for e in late.errors] == [StaleSignal]  # the late invite, refused
        assert not late.missed


def test_two_devices_accept_at_once_one_wins_the_other_stops() -> None:
    w, a1, b1, b2 = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    accept(w, b2)
    w.run()
    assert state(a1) is CallState.ACTIVE
    assert sorted([state(b1).value, state(b2).value]) == ["active", "ended"]
    loser = b1 if state(b2) is CallState.ACTIVE else b2
    assert reasons(loser) == [EndReason.ANSWERED_ELSEWHERE]


def test_mute_and_camera_reach_the_peer() -> None:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    a1.machine.set_media(w.now, audio_muted=True, camera_on=False, screen_on=True)
    w.run()
    local = [e for e in a1.log if isinstance(e, SetLocalMedia)]
    assert [(e.audio_muted, e.camera_on, e.screen_on) for e in local] == [(True, False, True)]
    last = [e for e in b1.log if isinstance(e, PeerMediaState)][-1]
    assert (last.audio_muted, last.camera_on, last.screen_on) == (True, False, True)


def test_recording_needs_the_peers_consent() -> None:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    a1.machine.request_recording(w.now)
    w.run()
    assert any(isinstance(e, RecordingRequested) for e in b1.log)
    b1.machine.grant_recording(w.now)
    w.run()
    b1.machine.refuse_recording(w.now)  # withdrawn
    w.run()
    perms = [e.allowed for e in a1.log if isinstance(e, RecordingPermission)]
    assert perms == [True, False]


# --- ICE restart ---------------------------------------------------------------------


def test_ice_restart_keeps_the_call_and_the_certificate() -> None:
    w, a1, b1, _ = world()
    call_id = dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    b1.machine.restart_ice(w.now)  # the callee's network changed
    w.pump()
    assert state(b1) is CallState.CONNECTING
    w.run()
    assert state(a1) is state(b1) is CallState.ACTIVE
    assert a1.machine.call and a1.machine.call.call_id == call_id
    assert a1.machine.call.generation == b1.machine.call.generation == 1  # type: ignore[union-attr]
    restart = next(s.signal for s in w.sent if isinstance(s.signal, IceRestartOffer))
    assert restart.fingerprints == (b1.fingerprint,)


def test_lost_media_restarts_ice_and_restart_glare_picks_the_callers() -> None:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    # The path breaks for both at once: both start a restart; the caller's wins.
    for d in (a1, b1):
        d.machine.media_down(w.now, call_id=d.machine.call.call_id, generation=0)  # type: ignore[union-attr]
    w.run()
    assert state(a1) is state(b1) is CallState.ACTIVE
    assert a1.machine.call.generation == b1.machine.call.generation == 1  # type: ignore[union-attr]
    assert a1.machine.call.offerer and not b1.machine.call.offerer  # type: ignore[union-attr]


def test_a_path_that_never_comes_back_fails_the_call() -> None:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    w._drop = lambda s: True  # the network is gone for good
    a1.machine.media_down(w.now, call_id=a1.machine.call.call_id, generation=0)  # type: ignore[union-attr]
    w.run()
    assert reasons(a1) == [EndReason.FAILED]


def test_setup_that_never_completes_times_out() -> None:
    w, a1, b1, _ = world(drop=lambda s: isinstance(s.signal, Answer))
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.advance(CALL_SETUP_TIMEOUT_MS - 200)
    assert state(a1) is CallState.CONNECTING
    w.run()
    # The callee accepted first, so its timer fires first; the caller hears its hang-up.
    assert reasons(b1, a1) == [EndReason.FAILED, EndReason.PEER_HUNG_UP]


# --- bad, late and forged input: a typed error and no change --------------------------


def active_pair() -> tuple[World, Device, Device]:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    return w, a1, b1


def refuse(
    d: Device, error: type[Exception], data: bytes, *, user: str = "alice", device: str = "a1"
) -> None:
    before = d.machine.snapshot()
    with pytest.raises(error):
        d.machine.receive(0, from_user=user, from_device=device, data=data)
    assert d.machine.snapshot() == before


def test_malformed_signals_raise_decode_error_and_change_nothing() -> None:
    _w, _a1, b1 = active_pair()
    good = Hangup(
        call_id=b1.machine.call.call_id,  # type: ignore[union-attr]
        from_device="a1",
        to_device="b1",
        reason=HangupReason.NORMAL,
    ).encode()
    for bad in (b"", b"\x02" + good[1:], good[:-1], good + b"\x00", good[:1] + b"\x63" + good[2:]):
        refuse(b1, DecodeError, bad)
    assert state(b1) is CallState.ACTIVE


def test_signals_bound_to_other_devices_or_senders_are_refused() -> None:
    _w, _a1, b1 = active_pair()
    call_id = b1.machine.call.call_id  # type: ignore[union-attr]
    hangup = {"call_id": call_id, "reason": HangupReason.NORMAL}
    # addressed to b2, delivered to b1 (moved by the relay)
    refuse(b1, BindingError, Hangup(from_device="a1", to_device="b2", **hangup).encode())
    # names a1 but Olm authenticated a2
    refuse(
        b1, BindingError, Hangup(from_device="a1", to_device="b1", **hangup).encode(), device="a2"
    )
    # from someone not in the call
    refuse(
        b1,
        BindingError,
        Hangup(from_device="a1", to_device="b1", **hangup).encode(),
        user="mallory",
    )
    # "answered elsewhere" from the caller instead of our own device
    ae = AnsweredElsewhere(call_id=call_id, from_device="a1", to_device="b1").encode()
    refuse(b1, BindingError, ae)


def test_out_of_order_and_late_signals_are_refused() -> None:
    w, a1, b1 = active_pair()
    call_id = b1.machine.call.call_id  # type: ignore[union-attr]
    fp = a1.fingerprint
    offer = Offer(
        call_id=call_id,
        from_device="a1",
        to_device="b1",
        nonce=b"n" * 16,
        fingerprints=(fp,),
        sdp=fake_sdp(fp, "x"),
    ).encode()
    refuse(b1, OutOfOrderSignal, offer)  # a second offer
    refuse(b1, OutOfOrderSignal, Accept(call_id=call_id, from_device="a1", to_device="b1").encode())
    cands = IceCandidates(
        call_id=call_id,
        from_device="a1",
        to_device="b1",
        generation=7,
        complete=True,
        candidates=(IceCandidate(mid="0", line="candidate:1 1 udp 1 127.0.0.1 9 typ host"),),
    ).encode()
    refuse(b1, OutOfOrderSignal, cands)  # another ICE generation
    other = Ringing(call_id=b"\x01" * 16, from_device="a1", to_device="b1").encode()
    refuse(b1, UnknownCall, other)
    a1.machine.hangup(w.now)
    w.run()
    late = Cancel(call_id=call_id, from_device="a1", to_device="b1", reason=CancelReason.CANCELLED)
    refuse(b1, StaleSignal, late.encode())
    replayed = Invite(call_id=call_id, from_device="a1", to_device="b1", video=True)
    refuse(b1, StaleSignal, replayed.encode())


def test_an_offer_whose_sdp_carries_another_fingerprint_is_refused() -> None:
    w, a1, b1, _ = world(drop=lambda s: isinstance(s.signal, Offer))
    call_id = dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.advance(100)
    assert state(b1) is CallState.CONNECTING
    mallory = Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=b"m" * 32)
    forged = Offer(
        call_id=call_id,
        from_device="a1",
        to_device="b1",
        nonce=b"n" * 16,
        fingerprints=(a1.fingerprint,),
        sdp=fake_sdp(mallory, "mitm"),
    )
    refuse(b1, BindingError, forged.encode())


def test_an_ice_restart_with_another_certificate_is_refused() -> None:
    _w, _a1, b1 = active_pair()
    call_id = b1.machine.call.call_id  # type: ignore[union-attr]
    mallory = Fingerprint(algorithm=HashAlgorithm.SHA_256, digest=b"m" * 32)
    restart = IceRestartOffer(
        call_id=call_id,
        from_device="a1",
        to_device="b1",
        generation=1,
        nonce=b"r" * 16,
        fingerprints=(mallory,),
        sdp=fake_sdp(mallory, "mitm"),
    )
    refuse(b1, BindingError, restart.encode())
    # Consistent with the SDP, but not the certificate pinned when the call was set up.
    assert state(b1) is CallState.ACTIVE


def test_a_restart_answer_for_another_restart_offer_is_refused() -> None:
    w, a1, b1 = active_pair()
    w._drop = lambda s: isinstance(s.signal, IceRestartAnswer)
    a1.machine.restart_ice(w.now)
    w.run(w.now + 1000)
    restart = next(s.signal for s in w.sent if isinstance(s.signal, IceRestartOffer))
    assert state(a1) is CallState.CONNECTING and a1.machine.call.generation == 1  # type: ignore[union-attr]

    def answer(offer_nonce: bytes, generation: int = 1) -> bytes:
        return IceRestartAnswer(
            call_id=restart.call_id,
            from_device="b1",
            to_device="a1",
            generation=generation,
            offer_nonce=offer_nonce,
            nonce=b"y" * 16,
            fingerprints=(b1.fingerprint,),
            sdp=fake_sdp(b1.fingerprint, "t"),
        ).encode()

    refuse(a1, BindingError, answer(b"x" * 16), user="bob", device="b1")  # a forged echo
    first = next(s.signal for s in w.sent if isinstance(s.signal, Offer))
    refuse(a1, BindingError, answer(first.nonce), user="bob", device="b1")  # the first offer's
    refuse(a1, OutOfOrderSignal, answer(restart.nonce, 2), user="bob", device="b1")
    assert state(a1) is CallState.CONNECTING


def test_answer_for_another_offer_is_refused() -> None:
    w, a1, b1, _ = world(drop=lambda s: isinstance(s.signal, Answer))
    call_id = dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.advance(200)
    answer = Answer(
        call_id=call_id,
        from_device="b1",
        to_device="a1",
        offer_nonce=b"x" * 16,
        nonce=b"y" * 16,
        fingerprints=(b1.fingerprint,),
        sdp=fake_sdp(b1.fingerprint, "t"),
    )
    refuse(a1, BindingError, answer.encode(), user="bob", device="b1")


def test_local_misuse_is_a_usage_error_and_changes_nothing() -> None:
    w, a1, _b1, _ = world()
    for action in (
        lambda: a1.machine.accept(w.now),
        lambda: a1.machine.decline(w.now),
        lambda: a1.machine.hangup(w.now),
        lambda: a1.machine.restart_ice(w.now),
        lambda: a1.machine.dial(w.now, peer="alice", peer_devices=["a1"]),
        lambda: a1.machine.dial(w.now, peer="bob", peer_devices=[]),
    ):
        before = a1.machine.snapshot()
        with pytest.raises(CallUsageError):
            action()
        assert a1.machine.snapshot() == before
    dial(w, a1, "bob")
    with pytest.raises(CallUsageError):
        dial(w, a1, "bob")  # already in a call


def test_the_engine_refuses_a_local_sdp_with_the_audio_level_extension() -> None:
    w, a1, _b1, _ = world()
    call_id = dial(w, a1, "bob")
    sdp = fake_sdp(a1.fingerprint, "t").replace(
        "a=rtpmap", "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\na=rtpmap"
    )
    before = a1.machine.snapshot()
    with pytest.raises(CallUsageError):
        a1.machine.local_description(
            w.now, call_id=call_id, generation=0, role=MediaRole.OFFER, sdp=sdp
        )
    assert a1.machine.snapshot() == before


def test_remote_sdps_reach_the_media_layer_without_the_audio_level_extension() -> None:
    w, a1, b1, _ = world()
    dial(w, a1, "bob")
    w.advance(100)
    accept(w, b1)
    w.run()
    answer_effects = [e for e in b1.log if isinstance(e, CreateDescription) and e.remote_sdp]
    assert answer_effects and all("audio-level" not in (e.remote_sdp or "") for e in answer_effects)
