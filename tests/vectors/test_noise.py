"""Noise KK (crypto/noise.py) against the cacophony vectors in noise/cacophony.txt:
every Noise_KK_25519_ChaChaPoly vector with SHA256 or BLAKE2s, every message, both the
handshake hash and each ciphertext byte for byte, read by the other side too."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.noise import HandshakeState, Transport
from sottovoce.errors import CryptoError
from tests.vectors.loader import load

VECTOR_FILE = "noise/cacophony.txt"
PROTOCOLS = ("Noise_KK_25519_ChaChaPoly_SHA256", "Noise_KK_25519_ChaChaPoly_BLAKE2s")


def _vectors() -> list[dict[str, Any]]:
    return [v for v in load(VECTOR_FILE)["vectors"] if v.get("protocol_name") in PROTOCOLS]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _sides(v: dict[str, Any]) -> tuple[HandshakeState, HandshakeState]:
    hash_name = v["protocol_name"].rsplit("_", 1)[1]
    init = HandshakeState(
        initiator=True, prologue=_h(v["init_prologue"]), static=_h(v["init_static"]),
        remote_static=_h(v["init_remote_static"]), ephemeral=_h(v["init_ephemeral"]),
        hash_name=hash_name,
    )
    resp = HandshakeState(
        initiator=False, prologue=_h(v["resp_prologue"]), static=_h(v["resp_static"]),
        remote_static=_h(v["resp_remote_static"]), ephemeral=_h(v["resp_ephemeral"]),
        hash_name=hash_name,
    )
    return init, resp


def test_the_file_holds_the_kk_vectors() -> None:
    names = sorted(v["protocol_name"] for v in _vectors())
    assert names == sorted(PROTOCOLS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_kk_vector_every_message(protocol: str) -> None:
    (v,) = [x for x in _vectors() if x["protocol_name"] == protocol]
    init, resp = _sides(v)
    messages = v["messages"]
    assert len(messages) >= 4
    for i, m in enumerate(messages[:2]):
        writer, reader = (init, resp) if i == 0 else (resp, init)
        wire = writer.write_message(_h(m["payload"]))
        assert wire.hex() == m["ciphertext"]
        assert reader.read_message(wire) == _h(m["payload"])
    ti, tr = init.transport(), resp.transport()
    assert ti.handshake_hash.hex() == v["handshake_hash"]
    assert tr.handshake_hash == ti.handshake_hash
    for i, m in enumerate(messages[2:]):
        writer_t: Transport = ti if i % 2 == 0 else tr
        reader_t: Transport = tr if i % 2 == 0 else ti
        wire = writer_t.encrypt(_h(m["payload"]))
        assert wire.hex() == m["ciphertext"]
        assert reader_t.decrypt(wire) == _h(m["payload"])


def test_a_changed_byte_fails_and_a_wrong_prologue_fails() -> None:
    v = next(x for x in _vectors() if x["protocol_name"].endswith("SHA256"))
    init, resp = _sides(v)
    wire = bytearray(init.write_message(b"hi"))
    wire[-1] ^= 1
    with pytest.raises(CryptoError):
        resp.read_message(bytes(wire))
    other = dict(v, resp_prologue=(b"x" + _h(v["resp_prologue"])).hex())
    init, resp = _sides(other)
    with pytest.raises(CryptoError):
        resp.read_message(init.write_message(b"hi"))
