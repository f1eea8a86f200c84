"""CPACE-X25519-SHA512 (identity/pake.py) against draft-irtf-cfrg-cpace's published
test vectors, and the linking word list against its upstream file.

* link/cpace-testvectors.json (G_25519): generator, both shares, K, ISK (initiator-
  responder) and the session-id output; X25519_points: the low-order and
  non-canonical u coordinates the draft lists;
* link/draft-irtf-cfrg-cpace.md: the string-utility vectors (prepend_len, lv_cat),
  the generator string, and the scalar_mult_vfy results for the points that must
  not abort (q6, q8-qb), which only the text gives;
* link/bip39-english.txt: identity/wordlist.py is exactly this list.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from sottovoce.identity import pake
from sottovoce.identity.wordlist import WORDS
from tests.vectors.loader import load, text

VECTORS = "link/cpace-testvectors.json"
DRAFT = "link/draft-irtf-cfrg-cpace.md"


def _h(v: str) -> bytes:
    return bytes.fromhex(v)


def _x25519_section() -> str:
    draft = text(DRAFT)
    start = draft.index("##  Test vector for CPace using group X25519 and hash SHA-512")
    return draft[start : draft.index("##  Test vector for CPace using group X448", start)]


def _hex_after(section: str, label: str) -> bytes:
    """The hex lines that follow ``label`` in a vector block of the draft."""
    tail = section[section.index(label) + len(label):]
    tail = tail[tail.index("\n") + 1 :]
    lines = []
    for line in tail.split("\n"):
        if not re.fullmatch(r"\s+[0-9a-f]+", line):
            break
        lines.append(line.strip())
    return bytes.fromhex("".join(lines))


def test_draft_string_utilities() -> None:
    draft = text(DRAFT)
    assert _hex_after(draft, 'prepend_len(b""): (length: 1 bytes)') == pake.prepend_len(b"")
    assert _hex_after(draft, 'prepend_len(b"1234"): (length: 5 bytes)') == pake.prepend_len(b"1234")
    for n in (127, 128):
        got = _hex_after(draft, f"prepend_len(bytes(range({n}))):")
        assert got == pake.prepend_len(bytes(range(n)))
    assert _hex_after(draft, 'lv_cat(b"1234",b"5",b"",b"678"): (length: 12 bytes)') == (
        pake.lv_cat(b"1234", b"5", b"", b"678")
    )


def test_g_x25519_generator_shares_k_and_isk() -> None:
    v = load(VECTORS)["G_25519"]
    prs, ci, sid = _h(v["PRS"]), _h(v["CI"]), _h(v["sid"])
    section = _x25519_section()
    assert pake.generator_string(prs, ci, sid) == _hex_after(
        section, "generator_string(G.DSI,PRS,CI,sid,H.s_in_bytes):\n    (length: 170 bytes)")
    g = pake.calculate_generator(prs, ci, sid)
    assert g == _h(v["g"])
    ya = pake.scalar_mult_vfy(_h(v["ya"]), g)
    yb = pake.scalar_mult_vfy(_h(v["yb"]), g)
    assert (ya, yb) == (_h(v["Ya"]), _h(v["Yb"]))
    k = pake.scalar_mult_vfy(_h(v["ya"]), yb)
    assert k == pake.scalar_mult_vfy(_h(v["yb"]), ya) == _h(v["K"])
    ada, adb = _h(v["ADa"]), _h(v["ADb"])
    assert pake.isk(sid, k, ya, ada, yb, adb) == _h(v["ISK_IR"])
    transcript = pake.lv_cat(ya, ada) + pake.lv_cat(yb, adb)
    assert hashlib.sha512(b"CPaceSidOutput" + transcript).digest() == _h(v["sid_output_ir"])


def test_g_x25519_low_order_points_abort() -> None:
    # The draft: u0-u5 and u7 MUST abort; the others give the listed results.
    points = load(VECTORS)["X25519_points"]
    section = _x25519_section()
    s = _h(re.search(r"\ns = ([0-9a-f]{64})", section).group(1))  # type: ignore[union-attr]
    expected = dict(re.findall(r"\nq([0-9a-b]): ([0-9a-f]{64})", section))
    assert len(points) == 12 and len(expected) == 12
    for i in range(12):
        u = _h(points[f"Invalid Y{i}"])
        q = _h(expected[format(i, "x")])
        if q == bytes(32):
            assert i in (0, 1, 2, 3, 4, 5, 7)
            with pytest.raises(pake.LinkError):
                pake.scalar_mult_vfy(s, u)
        else:
            assert pake.scalar_mult_vfy(s, u) == q


def test_wordlist_is_the_bip39_english_list() -> None:
    upstream = text("link/bip39-english.txt").split("\n")
    assert upstream[-1] == ""
    assert list(WORDS) == upstream[:-1]
    assert len({w[:4] for w in WORDS}) == 2048
