"""What `device link` prints: the warning, a QR code (segno) of the linking text, the text
itself and the short code; --no-qr leaves the QR code out."""

from __future__ import annotations

import secrets

import pytest

from sottovoce.cli.device_cmd import WARNING, _show_invite
from sottovoce.client.linking import LinkInvite
from sottovoce.identity.pake import QRPayload, ShortCode


def invite() -> LinkInvite:
    qr = QRPayload.generate(secrets.token_bytes, device_signing_key=bytes(32),
                            server_url="ws://127.0.0.1:8765", now_ms=1_000)
    return LinkInvite(qr=qr, code=ShortCode.generate(secrets.token_bytes), expires_at_ms=2_000)


@pytest.mark.parametrize("qr", [True, False])
def test_the_invite_shows_the_warning_codes_and_a_qr_code(
    qr: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = invite()
    _show_invite(shown, qr=qr)
    out = capsys.readouterr().out
    assert WARNING in out and shown.qr.encode() in out and str(shown.code) in out
    assert ("▀" in out or "█" in out) == qr
    assert QRPayload.decode(shown.qr.encode(), now_ms=1_500).mailbox_id() == shown.qr.mailbox_id()
