"""`sottovoce demo` (README command 1 until the server exists)."""

from __future__ import annotations

import base64
import re

from sottovoce.cli.demo import run_demo
from sottovoce.cli.main import main

PLAINTEXTS = (
    "Hi Bob! Nobody but you can read this.",
    "Hi Alice. The relay only sees padded ciphertext.",
)


def test_demo_messages_arrive_and_safety_numbers_are_equal() -> None:
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    text = "\n".join(lines)
    for plaintext in PLAINTEXTS:
        assert f"-> bob   {plaintext}" in text or f"-> alice {plaintext}" in text
    assert "Equal on both sides: yes" in text
    alice = text.split("alice's screen:")[1].split("Safety number on bob's")[0]
    bob = text.split("bob's screen:")[1].split("Equal on both")[0]
    digits_a, digits_b = re.sub(r"\D", "", alice), re.sub(r"\D", "", bob)
    assert len(digits_a) == 60
    assert digits_a == digits_b


def test_demo_relay_view_holds_no_plaintext() -> None:
    lines: list[str] = []
    run_demo(lines.append)
    relay_view = "\n".join(lines).split("What the relay saw")[1].split("Safety number")[0]
    for plaintext in PLAINTEXTS:
        assert plaintext not in relay_view
        assert base64.b64encode(plaintext.encode()[:12]).decode()[:12] not in relay_view
    sizes = [int(m) for m in re.findall(r"(\d+) bytes  ", relay_view)]
    assert len(sizes) == 4
    # Normal messages of different plaintext lengths share one padded size.
    assert len(set(sizes[1:])) == 1


def test_main_without_command_prints_help(capsys: object) -> None:
    assert main([]) == 2
