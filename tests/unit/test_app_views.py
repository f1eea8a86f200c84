"""The app's account views (app/bridge_views.py): the QR codes it sends decode to what
they carry, and what the page sends is refused before it reaches the SDK."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sottovoce.app.bridge import Bridge
from sottovoce.app.bridge_views import AccountViews, fingerprint, qr_rows
from sottovoce.app.page_input import PageError


def _decode(rows: list[str]) -> bytes:
    import zxingcpp
    from PIL import Image

    scale = 4
    n = len(rows)
    image = Image.new("L", (n * scale, n * scale), 255)
    for y, row in enumerate(rows):
        for x, cell in enumerate(row):
            if cell == "1":
                image.paste(0, (x * scale, y * scale, (x + 1) * scale, (y + 1) * scale))
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1
    return bytes(found[0].bytes)


def test_qr_rows_decode_to_their_payload() -> None:
    payload = b"SVSN\x01" + bytes(range(64))
    rows = qr_rows(payload)
    assert len({len(r) for r in rows}) == 1 and len(rows) == len(rows[0])
    assert set("".join(rows)) == {"0", "1"}
    assert _decode(rows) == payload
    assert _decode(qr_rows("sottovoce-link:abc")) == b"sottovoce-link:abc"


def test_fingerprint_is_device_lists() -> None:
    from sottovoce.cli.device_cmd import _fingerprint

    assert fingerprint(b"k") == _fingerprint(b"k") == "8254 c329 a928 50f6"


class _Controls:
    settings = SimpleNamespace(read_receipts=True, typing=True)

    def set_settings(self, **_: Any) -> None:
        raise AssertionError("must not be reached")


def _views(tmp_path: Path) -> AccountViews:
    client = SimpleNamespace(
        username="vera", device_id="d1", connected=False, controls=_Controls(),
        presence=SimpleNamespace(enabled=True), known_safety_number=lambda _: None,
        mark_verified=lambda *_: False, own_contact=lambda: None,
        identity=SimpleNamespace(certificate=SimpleNamespace(
            created_at_ms=1, keys=SimpleNamespace(signing_key=b"k"))),
    )
    bridge = Bridge(tmp_path)
    bridge.client = client  # type: ignore[assignment]
    return AccountViews(bridge)


@pytest.mark.parametrize(("op", "req", "message"), [
    ("settings_set", {"key": "nope", "value": True}, "no such setting"),
    ("settings_set", {"key": "readReceipts", "value": "off"}, "not true or false"),
    ("settings_set", {"key": "discovery", "value": "everyone"}, "public, default or strict"),
    ("settings_set", {"key": "theme", "value": "url(x)"}, "system, light or dark"),
    ("mark_verified", {"peer": "vera", "verified": True}, "that is you"),
    ("mark_verified", {"peer": "Not A Name!", "verified": True}, "not a username"),
    ("mark_verified", {"peer": "walt", "verified": True}, "not known here yet"),
    ("device_revoke", {"device": "d2", "confirmed": True}, "no such device"),
    ("device_revoke", {"device": "d1", "confirmed": True}, "the device you are using"),
    ("device_rename", {"device": "d1", "name": "   "}, "cannot be empty"),
    ("link_confirm", {"accept": True}, "no new device is waiting"),
    ("link_start", {"nameHint": 5}, "'nameHint' is not text"),
])
def test_page_requests_are_checked(tmp_path: Path, op: str, req: dict[str, Any],
                                   message: str) -> None:
    views = _views(tmp_path)
    with pytest.raises(PageError, match=message):
        asyncio.run(views.ops()[op](req))


def test_the_theme_is_kept_beside_the_store(tmp_path: Path) -> None:
    views = _views(tmp_path)
    assert views.theme() == "system"
    asyncio.run(views.ops()["settings_set"]({"key": "theme", "value": "dark"}))
    assert views.theme() == "dark"
    assert (tmp_path / "app-settings.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "app-settings.json").write_text("not json")
    assert views.theme() == "system"


def test_no_linking_under_way_is_none_and_cancel_is_harmless(tmp_path: Path) -> None:
    views = _views(tmp_path)
    assert asyncio.run(views.ops()["link_state"]({})) is None
    assert asyncio.run(views.ops()["link_cancel"]({})) is None
    with pytest.raises(PageError, match="linking needs it"):  # not connected
        asyncio.run(views.ops()["link_start"]({"nameHint": "phone"}))
