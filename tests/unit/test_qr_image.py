"""Reading a linking QR code from a picture (cli/qr_image.py): PNG and JPEG, large and
scaled down, with the code anywhere in the picture."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import segno
from PIL import Image

from sottovoce.cli.qr_image import read_link_qr
from sottovoce.cli.session import CliError
from sottovoce.client.ids import now_ms
from sottovoce.identity.pake import QRPayload


def _payload() -> str:
    qr = QRPayload.generate(secrets.token_bytes, device_signing_key=bytes(32),
                            server_url="ws://127.0.0.1:8765", now_ms=now_ms())
    return qr.encode()


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_link_code_in_a_larger_picture_is_read(tmp_path: Path, suffix: str) -> None:
    text = _payload()
    code = tmp_path / "code.png"
    segno.make(text, error="m", micro=False).save(str(code), scale=5, border=4)
    picture = Image.new("RGB", (1200, 900), (180, 200, 220))  # a screenshot, say
    with Image.open(code) as qr:
        picture.paste(qr.convert("RGB"), (400, 250))
    path = tmp_path / f"shot.{suffix}"
    picture.save(path, **({"quality": 85} if suffix == "jpg" else {}))
    assert read_link_qr(str(path)) == text
    assert QRPayload.decode(read_link_qr(str(path)), now_ms=now_ms()).server_url.startswith(
        "ws://127.0.0.1")


def test_a_directory_is_no_image(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no image file"):
        read_link_qr(str(tmp_path))
