"""SFrame (RFC 9605) context, replay window, errors and MLS-derived track keys."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.crypto import suite as mls_suite
from sottovoce.crypto.kdf import Hash, hkdf
from sottovoce.errors import DecryptionError, RemoteError, UnsupportedError, UsageError
from sottovoce.mls.key_schedule import EpochSecrets
from sottovoce.secret import Secret
from sottovoce.sframe import (
    SUITES,
    CounterExhausted,
    FrameDecryptionError,
    HeaderDecodeError,
    KeyId,
    KeyUsageError,
    MediaKeyManager,
    ReplayError,
    ReplayWindow,
    SFrameContext,
    SFrameError,
    SFrameHeader,
    Track,
    UnknownKeyId,
    base_key,
    cipher_suite,
    encode_header,
    keys_for_epoch,
    make_kid,
    parse_header,
    parse_kid,
)
from sottovoce.sframe.mls_keys import EXPORTER_LABEL, exporter_context

GCM = 0x0004
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
FRAME = bytes(1200)


def pair(
    suite: int = GCM, kid: int = 7, key: bytes = KEY_A, window: int = 128
) -> tuple[SFrameContext, SFrameContext]:
    tx, rx = SFrameContext(suite), SFrameContext(suite, replay_window=window)
    tx.add_send_key(kid, key)
    rx.add_recv_key(kid, key)
    return tx, rx


# --- §4.3 header -----------------------------------------------------------------


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_rfc9605_4_3_header_roundtrip(kid: int, ctr: int) -> None:
    encoded = encode_header(kid, ctr)
    assert SFrameHeader.decode(encoded) == SFrameHeader(kid=kid, ctr=ctr)
    assert len(encoded) == 1 + (kid >= 8) * ((kid.bit_length() + 7) // 8) + (ctr >= 8) * (
        (ctr.bit_length() + 7) // 8
    )


@given(st.binary(max_size=20))
def test_rfc9605_4_3_header_decoder_accepts_or_raises_decode_error(data: bytes) -> None:
    try:
        kid, ctr, n = parse_header(data)
    except HeaderDecodeError:
        return
    assert encode_header(kid, ctr) == data[:n]  # only minimal (canonical) headers parse


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x05",  # KID 5 in extended form: must be in the config byte
        b"\x08\x07",  # CTR 7 likewise
        b"\x90\x00\x10",  # 2-byte KID with a leading zero byte
        b"\x09\x00\xff",  # 2-byte CTR with a leading zero byte
        b"\xf0\xff\xff",  # 8-byte KID, truncated
        b"\x0f",  # 8-byte CTR, absent
    ],
)
def test_rfc9605_4_3_non_minimal_or_truncated_header_rejected(data: bytes) -> None:
    with pytest.raises(HeaderDecodeError):
        parse_header(data)
    assert issubclass(HeaderDecodeError, RemoteError)


def test_rfc9605_4_3_values_beyond_64_bits_refused() -> None:
    assert SFrameHeader.decode(encode_header(2**64 - 1, 2**64 - 1)).ctr == 2**64 - 1
    with pytest.raises(UsageError):
        encode_header(0, 2**64)
    with pytest.raises(UsageError):
        SFrameHeader(kid=-1, ctr=0)


# --- §4.4 / §4.5 context ---------------------------------------------------------


@pytest.mark.parametrize("suite", [s.id for s in SUITES], ids=[s.name for s in SUITES])
def test_rfc9605_4_4_protect_unprotect_every_suite(suite: int) -> None:
    tx, rx = pair(suite, kid=0x1234)
    for i in range(20):
        frame = tx.protect(0x1234, FRAME, b"meta")
        assert len(frame) == len(FRAME) + cipher_suite(suite).nt + len(encode_header(0x1234, i))
        out = rx.unprotect(frame, b"meta")
        assert (out.kid, out.ctr, out.plaintext) == (0x1234, i, FRAME)


def test_rfc9605_4_4_1_counter_starts_at_zero_and_never_repeats() -> None:
    tx, _ = pair()
    headers = [parse_header(tx.protect(7, b"x"))[:2] for _ in range(1000)]
    assert headers == [(7, i) for i in range(1000)]
    assert tx.next_counter(7) == 1000


def test_rfc9605_4_4_3_metadata_is_authenticated() -> None:
    tx, rx = pair()
    frame = tx.protect(7, FRAME, b"rtp-ext")
    with pytest.raises(FrameDecryptionError):
        rx.unprotect(frame, b"rtp-exT")
    assert rx.unprotect(frame, b"rtp-ext").plaintext == FRAME


@pytest.mark.parametrize("suite", [s.id for s in SUITES], ids=[s.name for s in SUITES])
def test_rfc9605_4_4_4_tamper_rejected_state_unchanged(suite: int) -> None:
    tx, rx = pair(suite)
    frames = [tx.protect(7, FRAME) for _ in range(10)]
    first = frames[0]
    for pos in (1, len(first) // 2, len(first) - 1):  # ciphertext body, middle, tag
        bad = bytearray(first)
        bad[pos] ^= 0x80
        with pytest.raises(FrameDecryptionError):
            rx.unprotect(bytes(bad))
    # A header changed to another counter fails too (the header is AAD) ...
    forged = encode_header(7, 9) + frames[5][len(encode_header(7, 5)) :]
    with pytest.raises(FrameDecryptionError):
        rx.unprotect(forged)
    with pytest.raises(FrameDecryptionError):
        rx.unprotect(first[:3])  # shorter than a tag
    # ... and none of the failures moved the window: CTR 0 and 9 are still fresh.
    assert rx.unprotect(first).ctr == 0
    assert rx.unprotect(frames[9]).ctr == 9


def test_rfc9605_4_4_4_decryption_failure_is_opaque() -> None:
    tx, rx = pair()
    bad = bytearray(tx.protect(7, b"secret plaintext"))
    bad[-1] ^= 1
    with pytest.raises(FrameDecryptionError) as info:
        rx.unprotect(bytes(bad))
    assert isinstance(info.value, DecryptionError) and isinstance(info.value, SFrameError)
    assert "secret" not in str(info.value) and KEY_A.hex() not in str(info.value)


@pytest.mark.parametrize("suite", [s.id for s in SUITES], ids=[s.name for s in SUITES])
def test_design_5_wrong_key_decodes_no_frame_right_key_all(suite: int) -> None:
    tx = SFrameContext(suite)
    tx.add_send_key(7, KEY_A)
    right, wrong = SFrameContext(suite), SFrameContext(suite)
    right.add_recv_key(7, KEY_A)
    wrong.add_recv_key(7, KEY_B)
    ok_right = ok_wrong = 0
    for _ in range(1000):
        frame = tx.protect(7, FRAME)
        try:
            wrong.unprotect(frame)
            ok_wrong += 1
        except FrameDecryptionError:
            pass
        ok_right += right.unprotect(frame).plaintext == FRAME
    assert (ok_wrong, ok_right) == (0, 1000)


def test_rfc9605_4_4_4_unknown_kid() -> None:
    tx, rx = pair(kid=7)
    tx.add_send_key(8, KEY_A)
    with pytest.raises(UnknownKeyId):
        rx.unprotect(tx.protect(8, b"x"))
    assert UnknownKeyId.retryable  # §4.4.4: MAY buffer and retry when the key arrives


def test_rfc9605_4_4_1_key_is_send_or_receive_never_both() -> None:
    ctx = SFrameContext(GCM)
    ctx.add_send_key(1, KEY_A)
    with pytest.raises(KeyUsageError):
        ctx.add_recv_key(1, KEY_A)
    with pytest.raises(KeyUsageError):
        ctx.add_send_key(1, KEY_A)  # a second install would restart CTR at 0
    frame = ctx.protect(1, b"x")
    with pytest.raises(UnknownKeyId):
        ctx.unprotect(frame)  # own send key does not decrypt
    with pytest.raises(KeyUsageError):
        ctx.protect(2, b"x")


def test_rfc9605_7_4_retired_send_key_cannot_be_reinstalled() -> None:
    ctx = SFrameContext(GCM)
    ctx.add_send_key(1, KEY_A)
    ctx.protect(1, b"x")
    assert ctx.remove_key(1)
    with pytest.raises(KeyUsageError):
        ctx.add_send_key(1, KEY_A)  # same (KID, key): its nonces would repeat
    ctx.add_send_key(1, KEY_B)  # a new key under the same KID is fine
    assert ctx.next_counter(1) == 0


def test_rfc9605_7_4_counter_exhaustion() -> None:
    tx = SFrameContext(GCM, max_counter=3)
    tx.add_send_key(7, KEY_A)
    assert [parse_header(tx.protect(7, b"x"))[1] for _ in range(4)] == [0, 1, 2, 3]
    for _ in range(2):
        with pytest.raises(CounterExhausted):
            tx.protect(7, b"x")
    assert tx.next_counter(7) == 4  # the failed calls consumed nothing
    assert issubclass(CounterExhausted, UsageError)
    with pytest.raises(UsageError):
        SFrameContext(GCM, max_counter=2**64)


def test_rfc9605_4_5_unknown_suite() -> None:
    for bad in (0, 6, 0xF000):
        with pytest.raises(UnsupportedError):
            SFrameContext(bad)


# --- anti-replay (§7.5 / §9.5) ---------------------------------------------------


def test_replay_duplicate_rejected() -> None:
    tx, rx = pair()
    frame = tx.protect(7, FRAME)
    rx.unprotect(frame)
    with pytest.raises(ReplayError):
        rx.unprotect(frame)
    assert issubclass(ReplayError, RemoteError)


def test_replay_in_window_out_of_order_accepted() -> None:
    tx, rx = pair(window=128)
    frames = [tx.protect(7, bytes([i])) for i in range(200)]
    order = [199, *range(72, 199)]  # newest first, then back to the edge of the window
    for i in order:
        assert rx.unprotect(frames[i]).plaintext == bytes([i])
    for i in order:
        with pytest.raises(ReplayError):
            rx.unprotect(frames[i])


def test_replay_too_old_rejected_even_if_never_seen() -> None:
    tx, rx = pair(window=128)
    frames = [tx.protect(7, b"x") for _ in range(300)]
    rx.unprotect(frames[299])
    assert rx.unprotect(frames[172]).ctr == 172  # 299 - 127: last slot in the window
    with pytest.raises(ReplayError):
        rx.unprotect(frames[171])  # 299 - 128: one past it
    with pytest.raises(ReplayError):
        rx.unprotect(frames[0])
    assert not rx.would_accept(frames[0]) and rx.would_accept(frames[250])


def test_replay_window_large_jump_forgets_bitmap() -> None:
    w = ReplayWindow(16)
    for c in (0, 1, 2, 2**63, 2**64 - 1):
        w.check(c)
        w.accept(c)
    assert w.highest == 2**64 - 1
    for c in (2**64 - 1, 2**63, 2):
        with pytest.raises(ReplayError):
            w.check(c)
    w.check(2**64 - 2)  # in window, unseen
    with pytest.raises(UsageError):
        ReplayWindow(0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 150), max_size=120), st.integers(1, 40))
def test_replay_context_delivers_each_frame_at_most_once(order: list[int], size: int) -> None:
    """Two peers in memory, frames reordered and duplicated in between: the
    receiver's (inlined) window agrees with a plain model of RFC 3711 §3.3.2."""
    tx, rx = pair(window=size)
    frames = [tx.protect(7, i.to_bytes(2, "big")) for i in range(151)]
    seen: set[int] = set()
    top = -1
    for i in order:
        expected = i not in seen and i > top - size
        try:
            out = rx.unprotect(frames[i])
            assert out.plaintext == i.to_bytes(2, "big") and out.ctr == i
            accepted = True
        except ReplayError:
            accepted = False
        assert accepted == expected
        if accepted:
            seen.add(i)
            top = max(top, i)


@given(st.lists(st.integers(0, 400), max_size=200), st.integers(1, 64))
def test_replay_window_matches_model(counters: list[int], size: int) -> None:
    w, seen, top = ReplayWindow(size), set(), -1
    for c in counters:
        expected = c not in seen and c > top - size
        try:
            w.check(c)
            accepted = True
        except ReplayError:
            accepted = False
        assert accepted == expected
        if accepted:
            w.accept(c)
            seen.add(c)
            top = max(top, c)


# --- the cached fast paths (context.py "Per-frame cost") agree with the full parser --------


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(["next", "skip", "dup", "back"]), min_size=1, max_size=150),
    st.integers(0, 2),
    st.integers(1, 40),
)
def test_fast_path_mostly_in_order_stream_matches_model(
    steps: list[str], start_width: int, size: int
) -> None:
    """A stream that is mostly in order, with losses, duplicates and late frames,
    across a CTR width change (255 -> 256 or 65535 -> 65536): every decision equals
    the RFC 3711 model, so the in-order shortcut and the header cache change nothing."""
    tx, rx = pair(window=size)
    start = (0, 250, 65_530)[start_width]
    tx._send[7].next_ctr = start  # test-only: jump ahead without 65k encryptions
    frames = {start + i: tx.protect(7, (start + i).to_bytes(4, "big")) for i in range(320)}
    seen: set[int] = set()
    top, ctr = -1, start
    for step in steps:
        if step == "skip":
            ctr += 2
        elif step == "back":
            ctr = max(start, ctr - 3)
        elif step == "next":
            ctr += 1
        ctr = min(ctr, start + 319)
        expected = ctr not in seen and ctr > top - size
        try:
            out = rx.unprotect(frames[ctr])
            assert (out.kid, out.ctr, out.plaintext) == (7, ctr, ctr.to_bytes(4, "big"))
            accepted = True
        except ReplayError:
            accepted = False
        assert accepted == expected, (step, ctr)
        if accepted:
            seen.add(ctr)
            top = max(top, ctr)


def test_fast_path_rejects_a_non_minimal_ctr_under_a_cached_prefix() -> None:
    tx, rx = pair(kid=0x312)
    for _ in range(300):  # caches the 1- and 2-byte CTR prefixes of KID 0x312
        rx.unprotect(tx.protect(0x312, b"x"))
    assert len(rx._prefixes) == 2
    # CTR 5 in a 2-byte field under the cached 2-byte-CTR prefix: non-minimal.
    cached = bytes([0x99, 0x03, 0x12])
    for ctr_bytes in (b"\x00\x05", b"\x00\xff"):
        with pytest.raises(HeaderDecodeError):
            rx.unprotect(cached + ctr_bytes + bytes(20))
    # Truncated inside the CTR, under the cached prefix.
    for frame in (cached, cached + b"\x01"):
        with pytest.raises(HeaderDecodeError):
            rx.unprotect(frame)
    with pytest.raises(HeaderDecodeError):
        rx.unprotect(b"")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fast_path_header_decisions_equal_the_full_parser(data: st.DataObject) -> None:
    """With the prefix cache warm, a frame whose header the full parser rejects is
    rejected with HeaderDecodeError, and an accepted frame has the parser's (KID, CTR)."""
    tx, rx = SFrameContext(GCM), SFrameContext(GCM)
    for kid in (5, 0x312):
        tx.add_send_key(kid, KEY_A)
        rx.add_recv_key(kid, KEY_A)
    for _ in range(300):  # cache the 1- and 2-byte CTR widths of both KIDs
        for kid in (5, 0x312):
            rx.unprotect(tx.protect(kid, b"x"))
    frame = bytearray(tx.protect(data.draw(st.sampled_from([5, 0x312])), b"payload"))
    mutation = data.draw(st.sampled_from(["truncate", "byte", "none"]))
    if mutation == "truncate":
        del frame[data.draw(st.integers(0, len(frame))) :]
    elif mutation == "byte":
        frame[data.draw(st.integers(0, min(4, len(frame) - 1)))] = data.draw(st.integers(0, 255))
    raw = bytes(frame)
    try:
        expected: tuple[int, int] | None = parse_header(raw)[:2]
    except HeaderDecodeError:
        expected = None
    try:
        out = rx.unprotect(raw)
    except HeaderDecodeError:
        assert expected is None
        return
    except (UnknownKeyId, ReplayError, FrameDecryptionError):
        assert expected is not None
        return
    assert expected == (out.kid, out.ctr)


def test_fast_path_cache_is_dropped_with_the_key_and_bounded() -> None:
    tx, rx = pair(kid=0x312)
    frames = [tx.protect(0x312, b"x") for _ in range(20)]
    for f in frames[:10]:
        rx.unprotect(f)
    assert rx._prefixes
    assert rx.remove_key(0x312)
    assert not rx._prefixes
    with pytest.raises(UnknownKeyId):
        rx.unprotect(frames[10])
    rx.add_recv_key(0x312, KEY_B)  # same KID, another key: nothing stale is used
    with pytest.raises(FrameDecryptionError):
        rx.unprotect(frames[10])
    # Headers with unknown KIDs never enter the cache.
    for kid in (k for k in range(8, 2000) if k != 0x312):
        with pytest.raises(UnknownKeyId):
            rx.unprotect(encode_header(kid, 300) + bytes(20))
    assert not rx._prefixes


def test_fast_path_accepts_bytearray_and_memoryview_frames() -> None:
    tx, rx = pair(kid=0x312)
    for i in range(30):
        frame = tx.protect(0x312, FRAME, b"md")
        view = (bytes, bytearray, memoryview)[i % 3](frame)
        assert rx.unprotect(view, b"md").plaintext == FRAME  # type: ignore[arg-type]


def test_results_are_tuples_whose_repr_hides_the_plaintext() -> None:
    tx, rx = pair()
    out = rx.unprotect(tx.protect(7, b"secret words"))
    assert out == (7, 0, b"secret words") and tuple(out) == (7, 0, b"secret words")
    assert "secret" not in repr(out) and "12 bytes" in repr(out)
    mgr_a, mgr_b = MediaKeyManager(GCM, 0), MediaKeyManager(GCM, 1)
    for m in (mgr_a, mgr_b):
        m.begin_epoch(3, epoch_exporter(3), [0, 1])
    media = mgr_b.unprotect(mgr_a.protect(Track.AUDIO, b"secret words"))
    assert (media.epoch, media.sender_leaf, media.track, media.ctr) == (3, 0, Track.AUDIO, 0)
    assert media.plaintext == b"secret words" and "secret" not in repr(media)


# --- MLS-derived track keys ----------------------------------------------------------


def fake_exporter(epoch_secret: bytes) -> Callable[[bytes, bytes, int], bytes]:
    """An MLS-Exporter stand-in: HKDF of one epoch's secret."""

    def exporter(label: bytes, context: bytes, length: int) -> bytes:
        info = len(label).to_bytes(2, "big") + label + context
        return hkdf(Hash.SHA256, epoch_secret, b"", info, length)

    return exporter


def epoch_exporter(epoch: int) -> Callable[[bytes, bytes, int], bytes]:
    return fake_exporter(b"epoch secret %d" % epoch)


@given(st.integers(0, 2**40), st.integers(0, 2**31 - 1), st.sampled_from(list(Track)))
def test_kid_layout_roundtrip(epoch: int, leaf: int, track: Track) -> None:
    kid = make_kid(epoch, leaf, track)
    assert kid < 2**64
    assert parse_kid(kid) == KeyId(epoch_bits=epoch % 16, leaf=leaf, track=track)
    assert kid == (leaf << 8) | (int(track) << 4) | (epoch % 16)


def test_kid_layout_examples_and_reserved_tracks() -> None:
    assert make_kid(0, 0, Track.CHAT) == 0  # fits the config byte
    assert make_kid(18, 3, Track.VIDEO) == 0x322
    assert encode_header(make_kid(5, 200, Track.AUDIO), 0) == bytes([0x90, 200, 0x15])
    for reserved in (4, 15):
        with pytest.raises(UnknownKeyId):
            parse_kid((1 << 8) | (reserved << 4))


def test_exporter_context_is_unambiguous() -> None:
    suite = cipher_suite(GCM)
    contexts = {exporter_context(leaf, t, suite) for leaf in (0, 1, 255, 256) for t in Track}
    assert len(contexts) == 16
    assert exporter_context(3, Track.AUDIO, suite) == b"\x05audio" + bytes([0, 0, 0, 3, 0, 4])


def test_base_keys_distinct_per_sender_track_epoch_and_from_real_mls_exporter() -> None:
    suite = cipher_suite(GCM)
    keys = keys_for_epoch(epoch_exporter(1), 1, [0, 1, 2], suite)
    keys.update(keys_for_epoch(epoch_exporter(2), 2, [0, 1, 2], suite))
    assert len(keys) == 24
    assert len({k.expose() for k in keys.values()}) == 24
    # EpochSecrets.exporter (RFC 9420 §8.5, returns a Secret) plugs in directly.
    epoch = EpochSecrets.from_epoch_secret(mls_suite.cipher_suite(1), bytes(32))
    k = base_key(epoch.exporter, 1, Track.VIDEO, suite)
    assert isinstance(k, Secret) and len(k) == suite.nh
    expected = epoch.exporter(EXPORTER_LABEL, exporter_context(1, Track.VIDEO, suite), 32)
    assert k == expected


def room(
    leaves: list[int], epoch: int = 1, grace: int = 512, suite: int = GCM
) -> dict[int, MediaKeyManager]:
    members = {leaf: MediaKeyManager(suite, leaf, grace_frames=grace) for leaf in leaves}
    for m in members.values():
        m.begin_epoch(epoch, epoch_exporter(epoch), leaves)
    return members


def count_decoded(m: MediaKeyManager, frames: list[bytes]) -> int:
    n = 0
    for f in frames:
        try:
            m.unprotect(f)
            n += 1
        except SFrameError:
            pass
    return n


def test_design_5_tracks_and_senders_round_trip() -> None:
    r = room([0, 1, 5])
    for sender in (0, 1, 5):
        for track in Track:
            frame = r[sender].protect(track, b"%d/%d" % (sender, track))
            for receiver in {0, 1, 5} - {sender}:
                out = r[receiver].unprotect(frame)
                assert (out.epoch, out.sender_leaf, out.track) == (1, sender, track)
                assert out.plaintext == b"%d/%d" % (sender, track)


def test_design_5_removed_member_decodes_no_frame_of_new_epoch() -> None:
    r = room([0, 1, 2], epoch=1)
    removed = r.pop(2)
    for m in r.values():  # the commit removing leaf 2 starts epoch 2
        m.begin_epoch(2, epoch_exporter(2), [0, 1])
    frames = [r[0].protect(Track.VIDEO, FRAME) for _ in range(1000)]
    assert count_decoded(r[1], frames) == 1000
    assert count_decoded(removed, frames) == 0  # it has no key for epoch 2 at all
    # Even guessing: it "begins" epoch 2 with the only exporter it has.
    removed.begin_epoch(2, epoch_exporter(1), [0, 1, 2])
    with pytest.raises(FrameDecryptionError):
        removed.unprotect(r[0].protect(Track.VIDEO, FRAME))
    assert count_decoded(removed, frames) == 0


def test_design_5_own_leaf_must_be_member_and_epochs_increase() -> None:
    m = MediaKeyManager(GCM, 3)
    with pytest.raises(UsageError):
        m.begin_epoch(1, epoch_exporter(1), [0, 1])
    m.begin_epoch(1, epoch_exporter(1), [3])
    with pytest.raises(UsageError):
        m.begin_epoch(1, epoch_exporter(1), [3])
    with pytest.raises(UsageError):
        MediaKeyManager(GCM, 0).protect(Track.AUDIO, b"x")  # no epoch yet


def test_frames_from_non_members_and_own_echo_are_unknown() -> None:
    r = room([0, 1])
    outsider = MediaKeyManager(GCM, 9)
    outsider.begin_epoch(1, epoch_exporter(1), [0, 1, 9])  # knows the exporter, not a member
    with pytest.raises(UnknownKeyId):
        r[0].unprotect(outsider.protect(Track.AUDIO, b"x"))
    with pytest.raises(UnknownKeyId):
        r[0].unprotect(r[0].protect(Track.AUDIO, b"x"))  # SFU echo of our own frame


def test_epoch_change_grace_period_in_frames() -> None:
    r = room([0, 1], epoch=1, grace=3)
    in_flight = [r[0].protect(Track.AUDIO, b"old") for _ in range(2)]
    for m in r.values():
        m.begin_epoch(2, epoch_exporter(2), [0, 1])
    new = r[0].protect(Track.AUDIO, b"new")
    assert parse_kid(parse_header(new)[0]).epoch_bits == 2  # sending moved at once
    assert r[1].unprotect(in_flight[0]).epoch == 1  # old epoch still decodes
    assert r[1].epochs() == (1, 2)
    for _ in range(3):  # three frames of the new epoch end the grace period
        assert r[1].unprotect(r[0].protect(Track.AUDIO, b"new")).epoch == 2
    assert r[1].epochs() == (2,)
    with pytest.raises(UnknownKeyId):
        r[1].unprotect(in_flight[1])


def test_epoch_change_explicit_drop_and_transition_block() -> None:
    r = room([0, 1], epoch=1)
    old = r[0].protect(Track.SCREEN, b"old")
    r[0].begin_epoch(2, epoch_exporter(2), [0, 1])
    with r[1].transition(2, epoch_exporter(2), [0, 1]) as m:
        assert m.unprotect(old).plaintext == b"old"
        assert m.epochs() == (1, 2)
    assert r[1].epochs() == (2,)
    assert r[1].drop_epoch(2) and not r[1].drop_epoch(2)
    assert r[1].current_epoch is None


def test_epoch_change_zero_grace_drops_at_once() -> None:
    r = room([0, 1], epoch=1, grace=0)
    old = r[0].protect(Track.AUDIO, b"old")
    r[1].begin_epoch(2, epoch_exporter(2), [0, 1])
    with pytest.raises(UnknownKeyId):
        r[1].unprotect(old)


def test_rfc9605_5_2_epoch_rollover_drops_epoch_with_same_low_bits() -> None:
    r = room([0, 1], epoch=1, grace=10_000)
    old = r[0].protect(Track.AUDIO, b"epoch 1")
    for m in r.values():
        m.begin_epoch(16, epoch_exporter(16), [0, 1])
    assert r[1].unprotect(old).epoch == 1
    for m in r.values():
        m.begin_epoch(17, epoch_exporter(17), [0, 1])  # 17 % 16 == 1: epoch 1 goes
    assert r[1].epochs() == (16, 17)
    # Leaf 0 sends under the same KID as in epoch 1, with epoch 17's key.
    frame = r[0].protect(Track.AUDIO, b"epoch 17")
    assert parse_header(frame)[0] == parse_header(old)[0]
    out = r[1].unprotect(frame)
    assert (out.epoch, out.plaintext) == (17, b"epoch 17")


def test_keys_for_epoch_interoperates_with_manager_ctr_hmac_audio() -> None:
    suite = 0x0003  # AES_128_CTR_HMAC_SHA256_32: short tags for audio
    r = room([0, 4], epoch=7, suite=suite)
    plain = SFrameContext(suite)
    for kid, key in keys_for_epoch(epoch_exporter(7), 7, [4], suite, [Track.AUDIO]).items():
        plain.add_recv_key(kid, key)
    for i in range(50):
        frame = r[4].protect(Track.AUDIO, b"opus %d" % i, b"rtp")
        header = encode_header(make_kid(7, 4, Track.AUDIO), i)
        assert len(frame) == len(header) + len(b"opus %d" % i) + 4  # 32-bit tag
        assert plain.unprotect(frame, b"rtp").plaintext == b"opus %d" % i
        assert r[0].unprotect(frame, b"rtp").plaintext == b"opus %d" % i
