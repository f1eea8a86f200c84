"""Read a linking QR code from an image file (`account link --qr-image FILE`).

Pillow loads the PNG, JPEG or other image; zxing-cpp finds and decodes the QR codes in
it. Every way this can go wrong (no file, not an image, no QR code, a QR code that is
not a sottovoce linking code) ends in a :class:`CliError` with a plain message; the
payload itself is checked afterwards by ``NewDevice.from_qr`` like pasted text.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from sottovoce.cli import render
from sottovoce.cli.session import CliError
from sottovoce.identity.pake import QR_PREFIX

#: Larger files are refused before decoding (a photo of a screen is a few MB).
QR_IMAGE_MAX_BYTES = 32 * 1024 * 1024
#: Larger images are refused before decoding (Pillow's guard against decompression bombs).
QR_IMAGE_MAX_PIXELS = 64 * 1024 * 1024


def read_link_qr(path: str) -> str:
    """The sottovoce linking text of the QR code in the image at ``path``."""
    shown = render.safe(path)
    file = Path(path)
    try:
        if not file.is_file():
            raise CliError(f"no image file {shown}")
        if file.stat().st_size > QR_IMAGE_MAX_BYTES:
            raise CliError(f"{shown} is too large for a QR code image "
                           f"(over {QR_IMAGE_MAX_BYTES // (1024 * 1024)} MB)")
        data = file.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {shown}: {render.safe(exc.strerror or 'error')}") from None
    texts = _decode(data, shown)
    if not texts:
        raise CliError(f"found no QR code in {shown}: take a sharper picture of the whole "
                       "code, or use the linking text or the short code (--code)")
    for text in texts:
        if text.strip().startswith(QR_PREFIX):
            return text.strip()
    raise CliError(f"the QR code in {shown} is not a sottovoce linking code: show the one "
                   "from 'sottovoce device link' on the existing device")


def _decode(data: bytes, shown: str) -> list[str]:
    """The texts of every QR code Pillow and zxing-cpp find in the image ``data``."""
    import zxingcpp
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > QR_IMAGE_MAX_PIXELS:
                    raise CliError(f"{shown} is too large an image for a QR code "
                                   f"({width}x{height})")
                image = opened.convert("L")
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning):
        raise CliError(f"{shown} is not an image this program can read "
                       "(PNG or JPEG, say)") from None
    except (OSError, ValueError, SyntaxError):
        raise CliError(f"{shown} is a damaged image") from None
    qr_only = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    found = zxingcpp.read_barcodes(image, formats=qr_only)
    return [b.text for b in found if b.valid and b.text]
