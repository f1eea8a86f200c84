"""The page's SFrame (static/sframe.js, WebCrypto) in Chromium: RFC 9605's test vectors,
and frames in the call layout that Python seals and JavaScript opens, and back.

sframe.js is served by Playwright's router from the package's static files on an
origin of 127.0.0.1 (a secure context, so WebCrypto is there); nothing listens.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sottovoce.calls.frames import Codec
from sottovoce.calls.media_keys import CallKeys, EpochKeys
from sottovoce.client.calls.e2ee import FrameCrypto
from sottovoce.sframe import Track
from tests.browser.app_helpers import chromium, need_chromium
from tests.vectors.loader import load

STATIC = Path(__file__).resolve().parents[2] / "src" / "sottovoce" / "app" / "static"
ORIGIN = "http://127.0.0.1:9"  # routed by Playwright, never connected to
VECTORS = "sframe/test-vectors.json"


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    need_chromium()
    async with chromium(tmp_path / "profile") as (context,):
        async def serve(route: Any) -> None:
            name = route.request.url.removeprefix(ORIGIN + "/")
            if name == "t.html":
                await route.fulfill(body="<!doctype html><title>t</title>",
                                    content_type="text/html")
            elif name.startswith("static/") and (STATIC / name[7:]).is_file():
                await route.fulfill(body=(STATIC / name[7:]).read_bytes(),
                                    content_type="text/javascript")
            else:
                await route.fulfill(status=404, body="")

        await context.route(f"{ORIGIN}/**", serve)
        p = await context.new_page()
        await p.goto(f"{ORIGIN}/t.html")
        yield p


HEADER_JS = """async (vectors) => {
  const s = await import("/static/sframe.js");
  const hex = (b) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  const from = (t) => Uint8Array.from(t.match(/../g) || [], (x) => parseInt(x, 16));
  const bad = [];
  for (const v of vectors) {
    const kid = BigInt(v.kid), ctr = BigInt(v.ctr);
    if (hex(s.encodeHeader(kid, ctr)) !== v.encoded) bad.push(["encode", v]);
    const p = s.parseHeader(from(v.encoded + "ffff"));
    if (p.kid !== kid || p.ctr !== ctr || p.length * 2 !== v.encoded.length) bad.push(["parse", v]);
    if (v.encoded.length > 2) {  // one byte short is a truncated header
      try { s.parseHeader(from(v.encoded.slice(0, -2))); bad.push(["truncated", v]); } catch {}
    }
  }
  // Non-minimal forms are refused: KID 5 in one appended byte, CTR 0 in two.
  for (const t of ["8805", "090000"]) {
    try { s.parseHeader(from(t)); bad.push(["non-minimal", t]); } catch {}
  }
  return bad;
}"""

SFRAME_JS = """async (v) => {
  const s = await import("/static/sframe.js");
  const hex = (b) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  const from = (t) => Uint8Array.from(t.match(/../g) || [], (x) => parseInt(x, 16));
  const { key, salt } = await s.deriveKeySalt(BigInt(v.kid), from(v.base_key), v.cipher_suite);
  const fk = await s.frameKey(BigInt(v.kid), from(v.base_key), v.cipher_suite);
  const ct = await s.protect(fk, from(v.pt), from(v.metadata), BigInt(v.ctr));
  const opened = await s.unprotect(fk, from(v.ct), from(v.metadata));
  let replay = "accepted";
  try { await s.unprotect(fk, from(v.ct), from(v.metadata)); } catch (e) { replay = e.message; }
  const other = await s.frameKey(BigInt(v.kid), from("ff" + v.base_key.slice(2)), v.cipher_suite);
  let wrong = "accepted";
  try { await s.unprotect(other, from(v.ct), from(v.metadata)); } catch (e) { wrong = e.message; }
  return { key: hex(key), salt: hex(salt), ct: hex(ct), pt: hex(opened.plaintext),
           ctr: String(opened.ctr), replay, wrong };
}"""


async def test_the_pages_sframe_headers_match_rfc9605_c1(page: Any) -> None:
    vectors = load(VECTORS)["header"]
    assert len(vectors) > 200
    data = [{"kid": str(v["kid"]), "ctr": str(v["ctr"]), "encoded": v["encoded"]}
            for v in vectors]
    assert await page.evaluate(HEADER_JS, data) == []


async def test_the_pages_sframe_matches_rfc9605_c3_for_the_aes_gcm_suites(page: Any) -> None:
    vectors = [v for v in load(VECTORS)["sframe"] if v["cipher_suite"] in (4, 5)]
    assert {v["cipher_suite"] for v in vectors} == {4, 5}  # a missing vector fails
    for v in vectors:
        got = await page.evaluate(SFRAME_JS, {**v, "kid": str(v["kid"]), "ctr": str(v["ctr"])})
        assert got["key"] == v["sframe_key"] and got["salt"] == v["sframe_salt"]
        assert got["ct"] == v["ct"], v["cipher_suite"]
        assert got["pt"] == v["pt"] and got["ctr"] == str(v["ctr"])
        assert got["replay"] == "replayed frame"
        assert got["wrong"] == "frame authentication failed"


CALL_JS = """async ({ base, kid, frames, plain, codec }) => {
  const s = await import("/static/sframe.js");
  const b64 = (t) => Uint8Array.from(atob(t), (c) => c.charCodeAt(0));
  const out = (b) => btoa(String.fromCharCode(...b));
  const fk = await s.frameKey(BigInt(kid), b64(base));
  const opened = [];
  for (const f of frames) {  // Python's frames: clear bytes ‖ SFrame(rest)
    const data = b64(f);
    const n = s.clearBytes(codec, data);
    try {
      const r = await s.unprotect(fk, data.subarray(n), data.subarray(0, n));
      opened.push(out(Uint8Array.from([...data.subarray(0, n), ...r.plaintext])));
    } catch (e) { opened.push(e.message); }
  }
  const sealed = [];
  const mine = await s.frameKey(BigInt(kid), b64(base));
  for (const f of plain) {  // and ours, sealed the same way, for Python to open
    const data = b64(f);
    const n = s.clearBytes(codec, data);
    sealed.push(out(Uint8Array.from([...data.subarray(0, n),
      ...await s.protect(mine, data.subarray(n), data.subarray(0, n))])));
  }
  // The worker's path (sealFrame: all frames in flight at once) under a fresh key of
  // the same KID: the same bytes as protect's.
  const fast = await s.frameKey(BigInt(kid), b64(base));
  const pending = plain.map((f) => {
    const data = b64(f);
    return s.sealFrame(fast, data, s.clearBytes(codec, data)).ready;
  });
  const sealedFast = (await Promise.all(pending)).map(out);
  return { opened, sealed, sealedFast };
}"""


def _keys(own_leaf: int) -> EpochKeys:
    return EpochKeys.derive(
        epoch=3, exporter=lambda label, ctx, n: hashlib.shake_256(label + ctx).digest(n),
        roster={0: ("alice", "a1"), 1: ("bob", "b1")}, own_leaf=own_leaf,
    )


@pytest.mark.parametrize("codec", [Codec.VP8, Codec.OPUS])
async def test_python_and_the_page_open_each_others_call_frames(page: Any, codec: Codec) -> None:
    """Alice (Python, leaf 0) seals; the page, holding alice's key as bob would, opens
    them; the page seals under the same key and Python opens those. A tampered clear
    byte fails in the page like in Python."""
    alice = FrameCrypto(CallKeys())
    alice.begin_epoch(_keys(0))
    track = Track.VIDEO if codec is Codec.VP8 else Track.AUDIO
    keyframe = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01, 0xF0, 0x00]) + b"K" * 500
    delta = bytes([0x31, 0x05, 0x00]) + b"d" * 120
    plain = [keyframe, delta, delta] if codec is Codec.VP8 else [b"\x78" + b"o" * 80] * 3
    sealed = [alice.seal(track, codec, p) for p in plain]
    tampered = bytearray(sealed[0])
    tampered[1] ^= 0x01  # a clear byte: authenticated as the SFrame metadata
    keys = _keys(0)
    kid = next(k for k in keys.base_keys if k >> 8 == 0 and (k >> 4) & 0xF == track)
    got = await page.evaluate(CALL_JS, {
        "base": base64.b64encode(keys.base_keys[kid].expose()).decode(), "kid": str(kid),
        "frames": [base64.b64encode(f).decode() for f in [bytes(tampered), *sealed]],
        "plain": [base64.b64encode(p).decode() for p in plain], "codec": codec.value,
    })
    assert got["opened"][0] == "frame authentication failed"
    assert got["opened"][1:] == [base64.b64encode(p).decode() for p in plain]
    # The same key, counter and bytes give the same frame as Python's, byte for byte.
    assert got["sealed"] == [base64.b64encode(f).decode() for f in sealed]
    assert got["sealedFast"] == got["sealed"]
    bob = FrameCrypto(CallKeys())
    bob.begin_epoch(_keys(1))
    for i, frame in enumerate(got["sealed"]):
        data = base64.b64decode(frame)
        assert bob.open(codec, data, sender=("alice", "a1"), track=track) == plain[i], i


FAST_JS = """async ({ kids, ctrs }) => {
  const s = await import("/static/sframe.js");
  const hex = (b) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  const base = Uint8Array.from({ length: 16 }, (_, i) => i * 7 + 1);
  const meta = Uint8Array.of(0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00);
  const bad = [];
  let checked = 0;
  for (const kidText of kids) {
    const kid = BigInt(kidText);
    const ref = await s.frameKey(kid, base);
    const fast = await s.frameKey(kid, base);
    for (const ctrText of ctrs) {
      for (const n of [0, 3, 10]) {
        const data = new Uint8Array(40 + n);
        data.set(meta.subarray(0, n));
        for (let i = n; i < data.length; i++) data[i] = (i * 13 + ctrText.length) & 0xff;
        const want = await s.sealInto(ref, data.subarray(n), data.subarray(0, n),
          data.subarray(0, n), BigInt(ctrText));
        fast.ctr = Number(ctrText);
        const { out, ready } = s.sealFrame(fast, data, n);
        data.fill(0);  // the caller's buffer is free once sealFrame returns
        const got = await ready;
        if (got !== out || hex(got) !== hex(want)) bad.push([kidText, ctrText, n]);
        if (fast.ctr !== Number(ctrText) + 1) bad.push(["ctr", kidText, ctrText]);
        checked++;
      }
    }
  }
  const fk = await s.frameKey(1n, base);
  fk.ctr = Number.MAX_SAFE_INTEGER;
  let refused = "";
  try { s.sealFrame(fk, new Uint8Array(20), 1); } catch (e) { refused = e.message; }
  return { bad, checked, refused, after: fk.ctr === Number.MAX_SAFE_INTEGER };
}"""


async def test_the_workers_seal_gives_the_same_frames_as_the_reference_seal(page: Any) -> None:
    """sealFrame (the worker's seal: prebuilt header, scratch nonce and AAD) against
    sealInto (RFC 9605 step by step, BigInt counters) for KIDs and CTRs of every header
    length, with 0, 3 and 10 clear bytes; and a counter at its end is refused, unused."""
    kids = [0, 7, 8, 255, 256, 0x1234, 2**40 + 3, 2**64 - 1]
    ctrs = [0, 1, 7, 8, 255, 256, 65535, 65536, 2**24, 2**32 - 1, 2**32, 2**40 + 5,
            2**48, 2**53 - 2]
    got = await page.evaluate(FAST_JS, {"kids": [str(k) for k in kids],
                                        "ctrs": [str(c) for c in ctrs]})
    assert got["bad"] == []
    assert got["checked"] == len(kids) * len(ctrs) * 3
    assert got["refused"] == "SFrame counter exhausted"
    assert got["after"] is True
