"""Linking by short code or QR (identity/pake.py): two devices in memory, a relay in
between that may drop, reorder, tamper with or splice messages."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from sottovoce.errors import UsageError
from sottovoce.identity.pake import (
    LinkError,
    LinkSession,
    QRPayload,
    Role,
    ShortCode,
    confirmation_words,
)
from sottovoce.secret import Secret

NOW = 1_800_000_000_000
SID = bytes(range(16))


class Rng:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return hashlib.sha512(self.seed + self.n.to_bytes(4, "big")).digest()[:size]


def _pair(code_a: str, code_b: str, sid_b: bytes = SID) -> tuple[LinkSession, LinkSession]:
    a = LinkSession(Role.EXISTING, prs=ShortCode.parse(code_a).prs(), sid=SID, device_id="laptop")
    b = LinkSession(Role.NEW, prs=ShortCode.parse(code_b).prs(), sid=sid_b, device_id="phone")
    return a, b


CODE = "1234-5678 abandon-zoo"


def test_the_same_code_links_and_both_screens_show_the_same_words() -> None:
    a, b = _pair(CODE, "12345678 ABANDON ZOO")
    msg1 = a.start(Rng(b"a"))
    msg2 = b.respond(msg1, Rng(b"b"))
    msg3, ra = a.confirm(msg2)
    rb = b.finish(msg3)
    assert ra.session_key == rb.session_key
    assert ra.words == rb.words and len(ra.words) == 4
    assert (ra.peer_device_id, rb.peer_device_id) == ("phone", "laptop")
    assert "Secret" in repr(ra.session_key) and ra.session_key.expose().hex() not in repr(ra)


def test_a_wrong_code_ends_the_attempt_on_both_sides() -> None:
    a, b = _pair(CODE, "1234-5679 abandon-zoo")
    msg2 = b.respond(a.start(Rng(b"a")), Rng(b"b"))
    with pytest.raises(LinkError, match="does not match"):
        a.confirm(msg2)
    # One try: the session refuses everything afterwards, even the right message.
    with pytest.raises(LinkError, match="already failed"):
        a.confirm(msg2)
    # B never gets a valid tag: anything it is sent fails and ends it.
    with pytest.raises(LinkError):
        b.finish(bytes(64))
    with pytest.raises(LinkError, match="already failed"):
        b.finish(bytes(64))


def test_messages_out_of_order_or_tampered_end_the_attempt() -> None:
    a, b = _pair(CODE, CODE)
    with pytest.raises(LinkError, match="out of order"):
        a.confirm(b"x" * 40)
    a, b = _pair(CODE, CODE)
    msg1 = a.start(Rng(b"a"))
    with pytest.raises(LinkError, match="out of order"):
        b.finish(msg1)
    a, b = _pair(CODE, CODE)
    msg1 = a.start(Rng(b"a"))
    msg2 = b.respond(msg1, Rng(b"b"))
    # The relay swaps the new device's id: the tag binds both ids, so A refuses.
    swapped = msg2[:32] + bytes([len(b"evil")]) + b"evil" + msg2[32 + 1 + len(b"phone"):]
    with pytest.raises(LinkError):
        a.confirm(swapped)


def test_a_different_session_id_or_a_low_order_share_fails() -> None:
    a, b = _pair(CODE, CODE, sid_b=bytes(range(1, 17)))
    msg2 = b.respond(a.start(Rng(b"a")), Rng(b"b"))
    with pytest.raises(LinkError):
        a.confirm(msg2)
    a, b = _pair(CODE, CODE)
    msg1 = a.start(Rng(b"a"))
    with pytest.raises(LinkError, match="invalid key share"):
        b.respond(bytes(32) + msg1[32:], Rng(b"b"))
    with pytest.raises(LinkError, match="malformed"):
        _pair(CODE, CODE)[1].respond(b"short", Rng(b"b"))


def test_sessions_never_print_or_pickle_secrets() -> None:
    a, _ = _pair(CODE, CODE)
    assert "abandon" not in repr(a)
    with pytest.raises(TypeError):
        pickle.dumps(a)


def test_short_codes_parse_generate_and_refuse_junk() -> None:
    code = ShortCode.parse("1234 5678 aban zoo")
    assert str(code) == CODE and code.nameplate == "1234"
    generated = ShortCode.generate(Rng(b"c"))
    assert ShortCode.parse(str(generated)) == generated
    for bad in ("1234-567 abandon-zoo", "1234-5678 abandon", "1234-5678 abandon-zzzz", ""):
        with pytest.raises(UsageError):
            ShortCode.parse(bad)


def test_qr_payload_round_trip_expiry_and_tampering() -> None:
    qr = QRPayload.generate(Rng(b"q"), device_signing_key=bytes(32),
                            server_url="https://chat.example:8443", now_ms=NOW)
    text = qr.encode()
    assert text.startswith("sottovoce-link:")
    back = QRPayload.decode(text, now_ms=NOW + 1)
    assert back.secret == qr.secret and back.device_fingerprint == qr.device_fingerprint
    assert back.server_url == qr.server_url and back.mailbox_id() == qr.mailbox_id()
    assert qr.secret.expose().hex() not in repr(qr)
    with pytest.raises(LinkError, match="expired"):
        QRPayload.decode(text, now_ms=qr.expires_at_ms)
    for bad in ("nonsense", text[:-3], text + "A", text.replace("sottovoce-link:", "x:")):
        with pytest.raises(UsageError):
            QRPayload.decode(bad, now_ms=NOW)
    with pytest.raises(UsageError):
        QRPayload(secret=Secret(bytes(32)), device_fingerprint=bytes(32),
                  server_url="file:///etc/passwd", expires_at_ms=NOW)


def test_qr_secret_runs_the_same_protocol() -> None:
    qr = QRPayload.generate(Rng(b"q"), device_signing_key=bytes(32),
                            server_url="https://chat.example", now_ms=NOW)
    sid = bytes.fromhex(qr.mailbox_id())
    a = LinkSession(Role.EXISTING, prs=qr.secret, sid=sid, device_id="laptop")
    b = LinkSession(Role.NEW, prs=QRPayload.decode(qr.encode(), now_ms=NOW).secret, sid=sid,
                    device_id="phone")
    msg3, ra = a.confirm(b.respond(a.start(Rng(b"a")), Rng(b"b")))
    assert b.finish(msg3).words == ra.words


def test_confirmation_words_depend_on_the_key() -> None:
    assert confirmation_words(bytes(32)) != confirmation_words(bytes(31) + b"\x01")
