"""`cli/render.py`: what reaches a terminal, with hostile strings from peers.

A contact controls message text, and with rooms also names; the server
controls error messages. None of them may move the cursor, clear the screen,
set the window title (OSC 0), write the clipboard (OSC 52), hide text behind
bidi overrides, or forge a line that looks like another message.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest
from rich.text import Text

from sottovoce.cli import render
from sottovoce.cli.client_cmd import parse_target
from sottovoce.cli.main import build_parser, redacted_traceback
from sottovoce.cli.passphrase_strength import weak_passphrase
from sottovoce.client.events import ErrorEvent, RoomInvited, RoomMembershipChanged
from sottovoce.client.room_notice import INVITE_CONTENT_TYPE, InviteNotice, free_label
from sottovoce.client.store import DeliveryStatus, StoredMessage
from sottovoce.errors import DecodeError

HOSTILE = {
    "csi clear screen": "\x1b[2J\x1b[H",
    "csi colour": "\x1b[31mred\x1b[0m",
    "osc 0 title": "\x1b]0;you have been pwned\x07",
    "osc 52 clipboard": "\x1b]52;c;cm0gLXJmIH4K\x1b\\",
    "c1 csi": "\x9b2J",
    "c1 osc": "\x9d0;title\x9c",
    "bell and backspace": "ok\x07\x08\x08",
    "carriage return overwrite": "harmless\rEVIL",
    "bidi override": "abc\u202edcba",
    "bidi isolate": "\u2066x\u2069",
    "line separator": "a\u2028b",
    "del": "a\x7fb",
    "lone surrogate": "a\udcffb",
}
#: Characters that must never reach the terminal raw.
FORBIDDEN = (
    {chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}
    | {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068"}
    | {"\u2069", "\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\udcff"}
)


def _clean(text: str, *, newlines: bool = False) -> bool:
    allowed = {"\n"} if newlines else set()
    return not any(c in FORBIDDEN and c not in allowed for c in text)


def _message(**fields: object) -> StoredMessage:
    base: dict[str, object] = {
        "local_id": 1,
        "message_id": "m1",
        "peer": "alice",
        "sender": "alice",
        "sender_device": "d1",
        "outgoing": False,
        "status": DeliveryStatus.SENT,
        "text": "hello",
        "client_created_ms": 1_700_000_000_000,
    }
    base.update(fields)
    return StoredMessage(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_safe_escapes_every_control_sequence(name: str) -> None:
    out = render.safe(HOSTILE[name])
    assert _clean(out), repr(out)
    assert "\\x" in out or "\\u" in out  # visible, not silently dropped


def test_safe_keeps_ordinary_text_and_escapes_visibly() -> None:
    for text in ("héllo wörld", "日本語", "👩‍👩‍👧 family (ZWJ)", "tab-free text", "[bold]x[/]"):
        assert render.safe(text) == text
    assert render.safe("\x1b[2J") == "\\x1b[2J"
    assert render.safe("\u202e") == "\\u202e"
    assert render.safe("a\nb") == "a\\x0ab"
    assert render.safe("a\nb", multiline=True) == "a\nb"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_message_line_is_safe_in_every_peer_field(name: str) -> None:
    bad = HOSTILE[name]
    line = render.message_line(_message(text=bad, sender="alice"), "bob")
    assert _clean(line), repr(line)
    out = render.message_line(
        _message(text=bad, sender="bob", peer="x" + bad, outgoing=True), "bob"
    )
    assert _clean(out), repr(out)
    assert _clean(render.room_message_line(_message(text="hi"), "bob", bad))


def test_a_multi_line_message_cannot_forge_another_line() -> None:
    forged = "hi\n12:00 bank: your code is 1234"
    line = render.message_line(_message(text=forged), "bob")
    first, second = line.split("\n")
    assert first.endswith("alice: hi")
    assert second.startswith("    ")  # indented: never at the start of a line


def test_textual_markup_stays_literal() -> None:
    # The chat screen shows lines as rich Text objects: markup is not parsed.
    markup = "[bold]x[/bold] [@click=app.quit]y[/]"
    line = render.message_line(_message(text=markup), "bob")
    assert Text(line).plain == line
    assert markup in line


def test_rooms_invitations_errors_and_audit_are_escaped() -> None:
    bad = HOSTILE["osc 52 clipboard"]
    invited = RoomInvited(room_id="room:" + "0" * 32, label=bad, name=bad, inviter=bad)
    assert _clean(render.invitation(invited))
    changed = RoomMembershipChanged(room_id="r", epoch=2, committer=bad, added=(bad,))
    assert _clean(render.membership(changed, bad))
    assert _clean(render.error_event(ErrorEvent(code=bad, message=bad)))
    assert _clean(render.error(f"server said {bad}\nsecond line"), newlines=True)
    assert _clean(render.offline(bad, bad))
    assert _clean(render.queued(bad)) and _clean(render.sent(bad, 3))
    notices = render.notices([invited], "bob", {})
    assert notices and all(_clean(n) for n in notices)


def test_invitation_notice_line() -> None:
    notice = InviteNotice(name="team", invited="bob").encode().decode()
    m = _message(text=notice, content_type=INVITE_CONTENT_TYPE)
    assert render.message_line(m, "bob").endswith("— alice invited you to 'team'")
    assert render.message_line(m, "carol").endswith("— alice invited bob to 'team'")
    broken = _message(text="{", content_type=INVITE_CONTENT_TYPE)
    assert "could not be read" in render.message_line(broken, "bob")


def test_invite_notice_round_trip_and_refusals() -> None:
    notice = InviteNotice(name="équipe ☕", invited="bob")
    assert InviteNotice.decode(notice.encode()) == notice
    for raw in (
        b"not json",
        b"[]",
        b'{"v":1,"name":"team"}',
        b'{"v":2,"name":"team","invited":"bob"}',
        b'{"v":1,"name":"team","invited":"Bob!"}',
        b'{"v":1,"name":"","invited":"bob"}',
        b'{"v":1,"name":"a\\u202eb","invited":"bob"}',
        b'{"v":1,"name":"\\u001b]0;x\\u0007","invited":"bob"}',
        b'{"v":1,"name":"' + b"x" * 201 + b'","invited":"bob"}',
        b'{"v":1,"name":"team","invited":"bob","extra":1}',
        b"\xff",
    ):
        with pytest.raises(DecodeError):
            InviteNotice.decode(raw)


def test_free_label_never_reuses_another_rooms_name() -> None:
    taken = {"team", "team-2"}
    assert free_label("club", taken.__contains__) == "club"
    assert free_label("team", taken.__contains__) == "team-3"


def test_safety_number_text_mentions_the_qr_code_only_when_shown() -> None:
    from sottovoce.identity import safety_number

    sn = safety_number(b"\x01" * 32, b"\x02" * 32)
    digits_only = render.safety_number("alice", "bob", sn, qr=False)
    assert "QR" not in digits_only and "scan" not in digits_only
    assert sn.grouped() in digits_only
    with_qr = render.safety_number("alice", "bob", sn, qr=True)
    assert "scan the QR code" in with_qr


@pytest.mark.parametrize(
    ("passphrase", "weak"),
    [
        ("1234567", True),  # 7 characters
        ("short", True),
        ("password", True),
        ("PASSWORD", True),
        ("aaaaaaaaaaaa", True),
        ("alice", True),
        ("alicealice", True),  # the username, repeated
        ("alice2026!", True),  # the username and a year
        ("Password1!", True),  # a common password, decorated
        ("qwertyuiop12", True),  # a keyboard walk
        ("abcdefghijk", True),  # a sequence
        ("8 chars!", True),  # long enough, but a few million guesses
        ("correct horse", False),
        ("violet lantern orbit", False),
        ("x" * 200 + " orbit lantern violet", True),  # scored by its start: repeats
        ("lantern violet orbit " * 5, False),  # longer than zxcvbn scores
    ],
)
def test_weak_passphrases_are_refused_at_creation(passphrase: str, weak: bool) -> None:
    why = weak_passphrase(passphrase, "alice")
    assert (why is not None) is weak
    if why is not None:  # why, and what would do
        assert "\n" not in why and "four unrelated words will do" in why
    assert weak_passphrase("bobsmith99", "bobsmith99") is not None  # the username itself
    said = weak_passphrase("alice2026!", "alice")
    assert said is not None and "contains the username" in said


def test_connection_failures_are_worded_for_people() -> None:
    import ssl

    import websockets

    from sottovoce.connect_failure import describe_failure

    refused = describe_failure(ConnectionRefusedError(111, "Connection refused"))
    assert "nothing listens" in refused
    assert "without TLS" in describe_failure(ConnectionResetError())  # wss:// at ws://
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    assert "not trusted" in describe_failure(cert)
    assert "wss://" in describe_failure(websockets.InvalidMessage("not HTTP"))  # ws:// at wss://
    assert describe_failure(TimeoutError()) == "timed out"


def test_join_tokens_never_look_like_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from sottovoce.client.rooms import tokens as rooms

    draws = iter([b"\xf8" + bytes(31), b"\x00" + bytes(31)])  # the first encodes to "-…"
    monkeypatch.setattr(rooms.secrets, "token_bytes", lambda n: next(draws))
    token = rooms.new_token()
    assert not token.startswith("-") and len(token) == 43
    args = build_parser().parse_args(["room", "join", "--", "-Hd44Shl"])
    assert args.token == "-Hd44Shl"  # an older one still works after --


def test_chat_target_syntax() -> None:
    assert parse_target("#team") == ("room", "team")
    assert parse_target("@bob") == ("user", "bob")
    assert parse_target("bob") == ("either", "bob")
    rid = "room:" + "a" * 32
    assert parse_target(rid) == ("room", rid)


def test_debug_traceback_blots_out_secrets_and_escapes() -> None:
    canary = "CANARY-passphrase-7f3a"
    text = "CANARY-message-text-91c2"
    try:
        raise ValueError(f"boom {canary} {text} \x1b]0;title\x07")
    except ValueError as exc:
        out = redacted_traceback(exc, [canary, text, ""])
    assert "Traceback" in out and "ValueError" in out
    assert canary not in out and text not in out and "[redacted]" in out
    assert _clean(out, newlines=True)


def test_debug_is_accepted_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["--debug", "send", "bob", "hi"])
    after = parser.parse_args(["send", "bob", "hi", "--debug"])
    plain = parser.parse_args(["send", "bob", "hi"])
    assert before.debug and after.debug and not plain.debug
    assert isinstance(before, argparse.Namespace)


def _cli_imports() -> dict[str, set[str]]:
    """Which cli modules each cli module imports (any import, TYPE_CHECKING included)."""
    root = Path(__file__).resolve().parents[2] / "src" / "sottovoce" / "cli"
    names = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((root / f"{name}.py").read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "sottovoce.cli":
                    found |= {a.name for a in node.names if a.name in names}
                elif node.module.startswith("sottovoce.cli."):
                    found.add(node.module.rsplit(".", 1)[1])
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.rsplit(".", 1)[1] for a in node.names
                    if a.name.startswith("sottovoce.cli.")
                }
        graph[name] = found - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_ring_among_cli_modules() -> None:
    graph = _cli_imports()
    assert "render" in graph and "session" in graph
    assert _cycle(graph) is None, _cycle(graph)
    # Pure: render imports no other cli module but its terminal-safe text, which imports none.
    assert graph["render"] == {"terminal"}
    assert graph["terminal"] == set()
    # The checker itself finds a planted ring.
    assert _cycle({**graph, "render": {"tui"}, "tui": {"render"}}) is not None


def test_the_recorder_is_marked_in_every_participant_list() -> None:
    assert render.participant(("rec", "recorder")) == "rec/recorder (recorder)"
    assert render.participant(("rec", "recorder"), with_device=False) == "rec (recorder)"
    assert render.participant(("alice", "d1")) == "alice/d1"
    assert render.participant(("alice", "d1"), with_device=False) == "alice"
    assert render.participant(("\x1b[2J", "recorder")) == "\\x1b[2J/recorder (recorder)"


def test_room_settings_and_info_as_shown() -> None:
    assert render.room_setting("residency", "eu") == "data residency: eu"
    assert render.room_setting("residency", "none") == "data residency: none (any SFU)"
    assert render.room_setting("recorder", "on") == "recorder: on"
    state = {
        "roomId": "room:" + "0" * 32, "epoch": 3, "admin": "alice", "residency": None,
        "recorder": True, "members": [{"userId": "alice", "deviceId": "d1"}, "junk"],
    }
    lines = render.room_info("team", "", state)
    assert lines == [
        f"team  room:{'0' * 32}  epoch 3", "admin: alice", "data residency: none (any SFU)",
        "recorder: on", "members: alice/d1",
    ]
    # A shared topic shows under the name, made safe like every peer's text.
    topic = render.room_info("team", "friday \x1b[2J", state)
    assert topic[:2] == [f"team  room:{'0' * 32}  epoch 3", "topic: friday \\x1b[2J"]


def test_a_new_accounts_name_is_checked_before_any_passphrase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`account create` and the recorder's first run ask the server first: a taken name and
    an unreachable server are each one plain error saying what to do."""
    from sottovoce.cli import session
    from sottovoce.client import NotConnected

    async def available(server: str, name: str, on_pow: object = None) -> bool:
        if server == "ws://127.0.0.1:9":
            raise NotConnected("cannot reach the server: connection refused")
        return name == "bob"

    monkeypatch.setattr("sottovoce.client.username_available", available)
    session.check_name_free("ws://127.0.0.1:8765", "bob")  # free: nothing to say
    with pytest.raises(session.CliError) as taken:
        session.check_name_free("ws://127.0.0.1:8765", "alice")
    assert str(taken.value) == "the name 'alice' is taken on ws://127.0.0.1:8765: choose another"
    with pytest.raises(session.CliError) as hinted:
        session.check_name_free(
            "ws://127.0.0.1:8765", "alice", taken_hint="give another with --name"
        )
    assert str(hinted.value).endswith(": give another with --name")
    with pytest.raises(session.CliError) as down:
        session.check_name_free("ws://127.0.0.1:9", "bob")
    assert str(down.value).startswith(
        "cannot reach the server at ws://127.0.0.1:9: connection refused\n"
    )


def test_a_new_account_goes_only_into_a_directory_without_one(tmp_path: Path) -> None:
    """`account create`, `account link` and `account recover NAME` refuse a directory that
    holds an account, each saying where the new one goes instead."""
    from sottovoce.cli import session
    from sottovoce.client.store import STORE_FILE

    args = argparse.Namespace(data_dir=str(tmp_path / "new"))
    assert session.new_account_dir(args, hint="unused") == tmp_path / "new"
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / STORE_FILE).write_bytes(b"")
    with pytest.raises(session.CliError) as taken:
        session.new_account_dir(args, hint="use another --data-dir")
    assert str(taken.value) == f"there is already an account in {tmp_path / 'new'}\n" \
        "use another --data-dir"
