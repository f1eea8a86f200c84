"""TURN REST credentials (coturn use-auth-secret) and their configuration helpers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from sottovoce.calls.turn import parse_turn_url
from sottovoce.crypto.rng import Random
from sottovoce.errors import UsageError
from sottovoce.limits import TURN_CREDENTIAL_MAX_TTL_S
from sottovoce.secret import Secret
from sottovoce.server.turn import (
    TurnConfig,
    parse_turn_urls,
    read_turn_secret,
    turn_credentials,
)

SECRET = Secret(b"0123456789abcdef0123456789abcdef")
URLS = ("turn:127.0.0.1:3478",)


def test_credentials_follow_coturn_rest_scheme(rng: Random) -> None:
    creds = turn_credentials(TurnConfig(urls=URLS, secret=SECRET), now_s=1_700_000_000, rng=rng)
    expiry, opaque = creds.username.split(":")
    assert int(expiry) == creds.expires_s == 1_700_000_000 + TURN_CREDENTIAL_MAX_TTL_S
    # What coturn recomputes from the shared secret.
    expected = base64.b64encode(
        hmac.new(SECRET.expose(), creds.username.encode(), hashlib.sha1).digest()
    )
    assert creds.password.expose() == expected
    assert len(base64.urlsafe_b64decode(opaque + "==")) == 12
    wire = creds.to_wire()
    assert wire == {
        "urls": list(URLS),
        "username": creds.username,
        "credential": expected.decode(),
        "expiresAt": creds.expires_s,
    }
    assert "0123456789abcdef" not in repr(creds)


def test_usernames_are_fresh_and_name_nobody(rng: Random) -> None:
    config = TurnConfig(urls=URLS, secret=SECRET, ttl_s=120)
    names = {turn_credentials(config, now_s=10**9, rng=rng).username for _ in range(50)}
    assert len(names) == 50
    assert all(n.startswith(f"{10**9 + 120}:") for n in names)


@pytest.mark.parametrize("ttl", [59, TURN_CREDENTIAL_MAX_TTL_S + 1])
def test_ttl_is_at_most_ten_minutes(ttl: int) -> None:
    with pytest.raises(UsageError):
        TurnConfig(urls=URLS, secret=SECRET, ttl_s=ttl)


def test_short_secrets_and_bad_url_lists_are_refused() -> None:
    with pytest.raises(UsageError):
        TurnConfig(urls=URLS, secret=Secret(b"short"))
    with pytest.raises(UsageError):
        TurnConfig(urls=(), secret=SECRET)


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("turn:127.0.0.1:3478", ("turn", "127.0.0.1", 3478, "udp")),
        ("turn:turn.example.org", ("turn", "turn.example.org", 3478, "udp")),
        ("turn:[::1]:3479?transport=tcp", ("turn", "[::1]", 3479, "tcp")),
        ("turns:relay.example.org", ("turns", "relay.example.org", 5349, "tcp")),
    ],
)
def test_turn_urls_parse(url: str, parsed: tuple[str, str, int, str]) -> None:
    assert parse_turn_url(url) == parsed


@pytest.mark.parametrize(
    "bad",
    ["stun:127.0.0.1", "turn:", "turn:host:0", "turn:host:70000", "turns:h?transport=udp",
     "turn:host:3478?transport=sctp", "turn:user@host", "http://host"],
)  # fmt: skip
def test_bad_turn_urls_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_turn_url(bad)


def test_turn_url_option_takes_a_comma_list() -> None:
    assert parse_turn_urls("turn:a.example:3478, turn:b.example:3478?transport=tcp") == (
        "turn:a.example:3478",
        "turn:b.example:3478?transport=tcp",
    )
    with pytest.raises(UsageError):
        parse_turn_urls(" , ")
    with pytest.raises(UsageError):
        parse_turn_urls(",".join(["turn:h"] * 9))


def test_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "turn-secret"
    f.write_bytes(b"0123456789abcdef0123\n")
    assert read_turn_secret(f) == Secret(b"0123456789abcdef0123")
    f.write_bytes(b"short\n")
    with pytest.raises(UsageError):
        read_turn_secret(f)
    with pytest.raises(UsageError, match="cannot read"):
        read_turn_secret(tmp_path / "missing")
