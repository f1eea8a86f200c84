"""RFC 9420 §8 key schedule pieces the key-schedule vectors do not reach."""

from __future__ import annotations

import hashlib
import itertools

import pytest

from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import DecodeError, UsageError
from sottovoce.mls.common import GroupContext
from sottovoce.mls.key_schedule import (
    EpochSecrets,
    PreSharedKeyID,
    ResumptionPSKUsage,
    external_init_receive,
    external_init_send,
    psk_secret,
    start_epoch,
    zero_secret,
)

SUITE = cipher_suite(1)


def _rng(seed: bytes) -> Random:
    counter = itertools.count()
    return lambda n: hashlib.shake_256(seed + next(counter).to_bytes(8, "big")).digest(n)


def _epoch() -> EpochSecrets:
    gc = GroupContext(cipher_suite=1, group_id=b"g", epoch=1, tree_hash=b"t",
                      confirmed_transcript_hash=b"c")
    return start_epoch(SUITE, init_secret=bytes(32), commit_secret=zero_secret(SUITE),
                       psk_secret=zero_secret(SUITE), group_context=gc).epoch


def test_rfc9420_8_4_resumption_psk_id_round_trips() -> None:
    psk_id = PreSharedKeyID.resumption(ResumptionPSKUsage.BRANCH, b"group", 7, b"n" * 32)
    data = psk_id.encode()
    # psktype=2, usage=3, group_id<V>, epoch u64, nonce<V>
    assert data[:2] == b"\x02\x03"
    assert PreSharedKeyID.decode(data) == psk_id


def test_rfc9420_8_4_malformed_psk_ids_are_rejected() -> None:
    with pytest.raises(DecodeError):
        PreSharedKeyID.decode(b"\x03\x00\x00")  # unknown PSKType
    with pytest.raises(DecodeError):
        PreSharedKeyID.decode(b"\x02\x09\x00" + bytes(8) + b"\x00")  # unknown usage
    with pytest.raises(DecodeError):
        PreSharedKeyID.decode(PreSharedKeyID.external(b"id", b"n").encode() + b"\x00")
    with pytest.raises(UsageError):
        PreSharedKeyID(psktype=1, psk_nonce=b"n", usage=ResumptionPSKUsage.REINIT)  # type: ignore[arg-type]


def test_rfc9420_8_4_no_psks_give_the_zero_secret_and_order_matters() -> None:
    assert psk_secret(SUITE, []).expose() == bytes(32)
    a = (PreSharedKeyID.external(b"a", b"1" * 32), b"A" * 32)
    b = (PreSharedKeyID.external(b"b", b"2" * 32), b"B" * 32)
    assert psk_secret(SUITE, [a, b]) != psk_secret(SUITE, [b, a])


def test_rfc9420_8_3_external_init_secret_agrees_on_both_sides() -> None:
    epoch = _epoch()
    kem_output, joiner_init = external_init_send(SUITE, epoch.external_pub(), _rng(b"ext"))
    member_init = external_init_receive(SUITE, epoch.external_key_pair().private, kem_output)
    assert member_init == joiner_init
    assert len(joiner_init) == SUITE.nh


def test_epoch_secrets_never_print_key_material() -> None:
    epoch = _epoch()
    text = repr(epoch)
    assert epoch.encryption_secret.expose().hex() not in text
    assert "redacted" in text


def test_rfc9420_8_5_exporter_depends_on_label_context_and_length() -> None:
    epoch = _epoch()
    base = epoch.exporter(b"sottovoce test", b"ctx", 32)
    assert epoch.exporter(b"sottovoce test", b"ctx", 32) == base
    assert epoch.exporter(b"sottovoce other", b"ctx", 32) != base
    assert epoch.exporter(b"sottovoce test", b"ctx2", 32) != base
    assert len(epoch.exporter(b"sottovoce test", b"ctx", 16)) == 16


def test_key_schedule_refuses_wrong_length_inputs() -> None:
    with pytest.raises(UsageError):
        start_epoch(SUITE, init_secret=bytes(16), commit_secret=bytes(32),
                    psk_secret=bytes(32), group_context=b"")
