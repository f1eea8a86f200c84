"""What the command line shows: pure functions from domain objects to terminal-safe text.

No Client, no I/O: every function takes values and returns a ``str``. Anything
another person chose -- message text, usernames, room names, file names, error
messages relayed from a peer or the server -- passes through :func:`safe`
before it reaches a terminal. Without it a contact could send ECMA-48 control
sequences (CSI to rewrite the screen, OSC 0 to set the window title, OSC 52 to
write the clipboard, their 8-bit C1 forms) or Unicode bidirectional overrides
(the "Trojan Source" trick, CVE-2021-42574) that make a line read as something
it is not. The chat screen shows the same strings as rich ``Text`` objects,
never as console markup, so "[bold]" or "[@click=...]" stays literal.
"""

from __future__ import annotations

import io
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sottovoce.cli.terminal import error as error
from sottovoce.cli.terminal import safe as safe
from sottovoce.errors import DecodeError

if TYPE_CHECKING:
    from sottovoce.calls.effects import StateChanged
    from sottovoce.client.conversation import MessageView
    from sottovoce.client.device_notices import DeviceNotice
    from sottovoce.client.events import (
        ErrorEvent,
        MessageUpdated,
        RoomInvited,
        RoomMembershipChanged,
    )
    from sottovoce.client.kt import Alert, WitnessPolicy
    from sottovoce.client.rooms import Room
    from sottovoce.client.store import StoredMessage
    from sottovoce.identity import SafetyNumber
    from sottovoce.protocol.audit import AuditEntry, AuditTrail

if TYPE_CHECKING:  # the media stack is imported by call commands only
    from sottovoce.client.calls.media import CallStats

#: Continuation lines of a multi-line message are indented, so none can pass for a new line.
_INDENT = "    "


def _body(text: str) -> str:
    return safe(text, multiline=True).replace("\n", "\n" + _INDENT)


def clock(ms: int) -> str:
    return time.strftime("%H:%M", time.localtime(ms / 1000))


def presence(state: str, last_seen_ms: int | None, now_ms: int) -> str:
    """A contact's presence as ``contacts`` and the chat header show it ("" if unknown)."""
    if state in ("online", "away"):
        return state
    if last_seen_ms is None:
        return ""
    day = time.strftime("%Y-%m-%d", time.localtime(last_seen_ms / 1000))
    today = time.strftime("%Y-%m-%d", time.localtime(now_ms / 1000))
    return f"last seen {clock(last_seen_ms) if day == today else day + ' ' + clock(last_seen_ms)}"


def quoted_room(label: str) -> str:
    """How to name a room on a command line: ``'#team'`` (the shell would eat a bare #)."""
    return shlex.quote("#" + label)


# =============================================================================
# Messages
# =============================================================================


def _notice_text(m: StoredMessage, me: str) -> str:
    from sottovoce.client.room_notice import InviteNotice

    try:
        notice = InviteNotice.decode(m.text.encode("utf-8"))
    except (DecodeError, UnicodeEncodeError):
        return "[an invitation notice that could not be read]"
    inviter = "you" if m.sender == me else safe(m.sender)
    invited = "you" if notice.invited == me else safe(notice.invited)
    return f"— {inviter} invited {invited} to '{safe(notice.name)}'"


def message_line(
    m: StoredMessage, me: str, *, room: bool = False, expires_at_ms: int = 0,
    now_ms: int | None = None,
) -> str:
    """One message as a line: ``12:01 alice: hello``, ``12:02 you → bob: hi ✓``.

    ``room``: a room's line has no addressee (``m.peer`` is the room id).
    ``expires_at_ms``: a disappearing message ends with ``⏱ 59 min left``; a timer
    message reads ``alice set disappearing messages to 1 min``.
    """
    from sottovoce.client.expiry import TIMER_CONTENT_TYPE, remaining, timer_notice
    from sottovoce.client.room_notice import INVITE_CONTENT_TYPE
    from sottovoce.client.store import DeliveryStatus

    when = clock(m.client_created_ms or m.local_at_ms)
    if m.status is DeliveryStatus.FAILED and not m.text:
        return f"{when} {safe(m.sender)}: [message could not be decrypted]"
    if m.content_type == INVITE_CONTENT_TYPE:
        return f"{when} {_notice_text(m, me)}"
    who = "you" if m.sender == me else safe(m.sender)
    if m.content_type == TIMER_CONTENT_TYPE:
        return f"{when} — {timer_notice(who, m.text)}"
    if expires_at_ms:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return f"{_line(m, when, who, room)} ⏱ {remaining(expires_at_ms, now)} left"
    return _line(m, when, who, room)


def _line(m: StoredMessage, when: str, who: str, room: bool) -> str:
    from sottovoce.client.call_payloads import MISSED_CALL_CONTENT_TYPE, missed_call_line
    from sottovoce.client.file_body import FILE_CONTENT_TYPE

    tick = f" {m.status.tick}" if m.outgoing else ""
    to = f" → {safe(m.peer)}" if m.outgoing and not room else ""
    if m.content_type == MISSED_CALL_CONTENT_TYPE:
        return f"{when} {who}{to}: ☎ {missed_call_line(m.text, outgoing=m.outgoing)}{tick}"
    if m.content_type == FILE_CONTENT_TYPE:
        return f"{when} {who}{to}: {file_line(m.text, m.message_id)}{tick}"
    return f"{when} {who}{to}: {_body(m.text)}{tick}"


#: How many characters of a message id ``--ids`` shows (any unambiguous prefix is taken).
SHORT_ID = 8


def view_line(
    view: MessageView, me: str, *, room: bool = False, ids: bool = False,
    expires_at_ms: int = 0,
) -> str:
    """A message as :func:`message_line` shows it, with what control messages did: the
    quoted line of a reply, "(edited)", a tombstone, reactions with their counts, and
    for our own messages ✓✓ (delivered), "read", or "delivered to N", "read by N"
    (rooms). ``ids``: the start of its id first, to name it in `edit`, `delete`,
    `react` or `--reply-to`; ``expires_at_ms``: a disappearing message's time left,
    as :func:`message_line`."""
    from sottovoce.client.expiry import remaining
    from sottovoce.client.store import DeliveryStatus

    m = view.message
    prefix = f"[{m.message_id[:SHORT_ID]}] " if ids else ""
    if m.content_type not in ("text", "reply") or (
        m.status is DeliveryStatus.FAILED and not m.text and not view.deleted
    ):
        return prefix + message_line(m, me, room=room, expires_at_ms=expires_at_ms)
    left = ""
    if expires_at_ms:
        left = f" ⏱ {remaining(expires_at_ms, int(time.time() * 1000))} left"
    who = "you" if m.sender == me else safe(m.sender)
    to = f" → {safe(m.peer)}" if m.outgoing and not room else ""
    quote = ""
    if view.quote is not None:
        first = view.quote.splitlines()[0] if view.quote else ""
        quote = f"↪ “{safe(first[:40])}{'…' if len(first) > 40 else ''}” "
    text = "[deleted]" if view.deleted else _body(view.text)
    edited = " (edited)" if view.edited else ""
    reactions = "".join(f" {safe(e)}{n}" for e, n in sorted(view.reactions.items()))
    tick = f" {view.state}" if m.outgoing and view.state else ""
    when = clock(m.client_created_ms or m.local_at_ms)
    return f"{prefix}{when} {who}{to}: {quote}{text}{edited}{reactions}{tick}{left}"


def size_text(size: int) -> str:
    """``512 B``, ``3.1 KiB``, ``100.0 MiB``."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def duration_text(ms: int) -> str:
    """A voice note's length as ``M:SS`` (``0:07``, ``12:30``)."""
    return f"{ms // 60000}:{ms // 1000 % 60:02d}"


def file_line(body: str, message_id: str) -> str:
    """A file message: ``[image] cat.jpg (3.1 KiB, image/jpeg) id ABC`` (the id is what
    ``sottovoce save`` takes), ``[voice note 0:07] ...`` for a voice note,
    ``[image, view once] ...`` for a view-once file, and a placeholder once it was
    opened."""
    from sottovoce.client.file_body import FileInfo, is_opened

    if is_opened(body):
        return "[view-once file, opened: nothing of it kept]"
    try:
        info = FileInfo.decode(body)
    except DecodeError:
        return "[file that cannot be read]"
    extra = "" if info.duration_ms is None else " " + duration_text(info.duration_ms)
    if info.view_once:
        extra += ", view once"
    kind = "voice note" if info.kind == "voice" else info.kind
    return (f"[{kind}{extra}] {safe(info.name)} ({size_text(info.size)}, "
            f"{safe(info.media_type)}) id {safe(message_id)}")


def update_line(view: MessageView, me: str, event: MessageUpdated, label: str | None) -> str:
    """An edit, delete or reaction as it arrives (``listen``), then the message as it
    shows now: ``~ alice edited: 12:01 alice: new text (edited)``; ``label``: a room's."""
    who = "you" if event.sender == me else safe(event.sender)
    if event.kind == "reaction":
        did = f"reacted {safe(event.emoji)}" if event.on else f"took back {safe(event.emoji)}"
    else:
        did = "deleted" if event.kind == "delete" else "edited"
    where = "" if label is None else f"#{safe(label)} "
    return f"{where}~ {who} {did}: {view_line(view, me, room=label is not None)}"


def room_message_line(m: StoredMessage, me: str, label: str) -> str:
    """A room message among other conversations (``listen``): ``#team 12:01 alice: hi``."""
    return f"#{safe(label)} {message_line(m, me, room=True)}"


def sent(peer: str, seq: int) -> str:
    return f"✓ sent to {safe(peer)} (serverSeq {seq})"


def queued(peer: str) -> str:
    return (
        f"queued for {safe(peer)}; will send when the server is reachable "
        "(any sottovoce command that connects sends it; do not send it again)"
    )


def messages(count: int, kind: str = "") -> str:
    """``1 new message``, ``3 queued messages``: the count with its noun in the right number."""
    return f"{count} {kind}{' ' if kind else ''}message{'s' if count != 1 else ''}"


def flushed(count: int) -> str:
    return f"sent {messages(count)} queued earlier"


def still_queued(count: int) -> str:
    return (
        f"{messages(count, 'queued')} not acknowledged yet; "
        "the next command that connects sends them again (never twice)"
    )


# =============================================================================
# Rooms
# =============================================================================


def room_row(room: Room) -> str:
    """``team  room:…  epoch 2  members: alice, bob  topic: …``: the room's shared name
    (the id once when it has none), then ``[label]`` when this device calls it
    otherwise; the shared topic last, when there is one."""
    from sottovoce.client.rooms.names import display_name, topic

    state = "removed" if room.removed else f"epoch {room.epoch}"
    members = ", ".join(sorted({safe(u) for u, _ in room.members()}))
    shown = display_name(room)
    name = "" if shown == room.room_id else f"{safe(shown)}  "
    if room.label not in (shown, room.room_id):
        name = f"{safe(shown)} [{safe(room.label)}]  "
    shared_topic = topic(room)
    about = f"  topic: {safe(shared_topic)}" if shared_topic else ""
    return f"{name}{room.room_id}  {state}  members: {members}{about}"


def participant(device: tuple[str, str], *, with_device: bool = True) -> str:
    """A call participant as every list shows it: ``user/device``, and ``(recorder)``
    after the opt-in recorder device."""
    from sottovoce.protocol.rooms import RECORDER_DEVICE_ID

    name = f"{safe(device[0])}/{safe(device[1])}" if with_device else safe(device[0])
    return name + (" (recorder)" if device[1] == RECORDER_DEVICE_ID else "")


def room_setting(name: str, value: str) -> str:
    """``data residency: eu`` / ``recorder: on``."""
    if name == "residency":
        return "data residency: " + ("none (any SFU)" if value == "none" else safe(value))
    return f"{safe(name)}: {safe(value)}"


def room_info(
    name: str, shared_topic: str, state: dict[str, Any], suite: int | None = None
) -> list[str]:
    """``room info``: the room's shared name, topic and MLS cipher suite (members'
    view), then the server's view of it, its settings first."""
    from sottovoce.crypto.mls_suites import describe_suite

    residency = state.get("residency")
    members = state.get("members") or []
    return [
        f"{safe(name)}  {safe(str(state.get('roomId')))}  epoch {state.get('epoch')}",
        *([f"topic: {safe(shared_topic)}"] if shared_topic else []),
        *([f"suite: {describe_suite(suite)}"] if suite is not None else []),
        f"admin: {safe(str(state.get('admin') or '?'))}",
        room_setting("residency", residency if isinstance(residency, str) else "none"),
        room_setting("recorder", "on" if state.get("recorder") is True else "off"),
        "members: " + ", ".join(
            f"{safe(str(m.get('userId')))}/{safe(str(m.get('deviceId')))}"
            for m in members if isinstance(m, dict)
        ),
    ]


def room_name(room: Room) -> str:
    """The room as a person refers to it: its name, else its id."""
    return safe(room.label)


def invitation(event: RoomInvited, program: str = "sottovoce", flag: str = "") -> str:
    """Who invited us to which room, and the command that opens it (``program`` and the
    ``--data-dir`` ``flag`` as they can be pasted)."""
    return (
        f"{safe(event.inviter)} invited you to the room '{safe(event.name)}'; "
        f"open it with: {program} chat {quoted_room(safe(event.label))}{flag}"
    )


def membership(event: RoomMembershipChanged, label: str) -> str:
    """``#team alice: added bob/3f…, removed carol/9a…`` (or that we were removed)."""
    if event.self_removed:
        return f"#{safe(label)} you were removed from the room by {safe(event.committer)}"
    changes = [f"added {safe(d)}" for d in event.added]
    changes += [f"removed {safe(d)}" for d in event.removed]
    what = ", ".join(changes) or "updated the room's keys"
    return f"#{safe(label)} {safe(event.committer)}: {what}"


def audit_entry(entry: AuditEntry) -> str:
    from sottovoce.protocol.audit import AuditAction

    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.time_ms / 1000))
    subjects = ", ".join(f"{safe(s.user_id)}/{safe(s.device_id)}" for s in entry.subjects)
    action = entry.action.name.lower().replace("_", " ")
    if entry.action is AuditAction.ROOM_SETTING:  # the subject is (setting, value)
        subjects = ", ".join(room_setting(s.user_id, s.device_id) for s in entry.subjects)
    who = f"{safe(entry.actor_user_id)}/{safe(entry.actor_device_id)}"
    return f"#{entry.index:<4} {when}  epoch {entry.epoch:<4} {who}: {action} {subjects}".rstrip()


def audit_skipped(index: int, reason: str) -> str:
    """An entry in the chain that is not authentic: reported and skipped, not fatal."""
    return f"! audit entry #{index} skipped: {safe(reason)}"


def audit_summary(trail: AuditTrail) -> str:
    skipped = f", {len(trail.rejected)} skipped" if trail.rejected else ""
    return f"✓ {len(trail)} entries verified (links, signatures, epoch bindings){skipped}"


# =============================================================================
# Safety numbers
# =============================================================================


def qr_text(sn: SafetyNumber) -> str:
    """The safety-number QR code as terminal text (segno, two modules per character)."""
    return qr_terminal(sn.qr_payload())


def qr_terminal(payload: str | bytes) -> str:
    """A QR code of ``payload`` as terminal text (segno, two modules per character)."""
    import segno

    out = io.StringIO()
    segno.make(payload, error="m", micro=False).terminal(out=out, compact=True, border=2)
    return out.getvalue()


def device_notices(notices: Iterable[DeviceNotice], names: Mapping[str, str],
                   program: str = "sottovoce") -> list[str]:
    """What every command prints of the changes of the account's devices not shown yet
    (client/device_notices.py), and `listen` as they happen."""
    from sottovoce.client.device_notices import LINKED, REVOKED

    lines = []
    for n in notices:
        device = safe(n.device_id)
        label = f"{safe(names[n.device_id])} (id {device})" if n.device_id in names else (
            f"(id {device})")
        if n.kind == LINKED:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(n.at_ms / 1000))
            lines.append(f"! a device was linked to your account: {label} on {when}; if this "
                         f"was not you, revoke it with '{program} device revoke {device}'")
        elif n.kind == REVOKED:
            lines.append(f"! device {label} was revoked from your account")
        else:
            lines.append(f"! device {label} is no longer a device of your account")
    return lines


def safety_number(me: str, peer: str, sn: SafetyNumber, *, qr: bool) -> str:
    lines = [f"Safety number for you ({safe(me)}) and {safe(peer)}:", "", sn.grouped(), ""]
    if qr:
        lines.append(qr_text(sn))
    how = "in person or by a call"
    ending = f", or scan the QR code with {safe(peer)}'s device" if qr else ""
    lines.append(f"Compare these 60 digits with what {safe(peer)} sees ({how}){ending}.")
    return "\n".join(lines)


def notices(
    events: Iterable[object],
    me: str,
    labels: Mapping[str, str],
    program: str = "sottovoce",
    flag: str = "",
) -> list[str]:
    """What a command that is not `listen` mentions of the events of its run: invitations,
    and who wrote (the messages are stored; `listen` and `chat` show them). The commands
    it suggests start with ``program`` and end with ``flag`` (the ``--data-dir``)."""
    from sottovoce.client.events import (
        KeysChanged,
        MessageReceived,
        RoomInvited,
        RoomMessageReceived,
    )
    from sottovoce.client.room_notice import INVITE_CONTENT_TYPE

    lines: list[str] = []
    senders: dict[str, int] = {}
    rooms: dict[str, int] = {}
    for event in events:
        if isinstance(event, RoomInvited):
            lines.append(invitation(event, program, flag))
        elif isinstance(event, KeysChanged):
            lines.append(f"! {safe(event.message)}")
        elif isinstance(event, MessageReceived) and event.message.sender != me:
            senders[event.message.sender] = senders.get(event.message.sender, 0) + 1
        elif (
            isinstance(event, RoomMessageReceived)
            and event.message.sender != me
            and event.message.content_type != INVITE_CONTENT_TYPE
        ):
            rooms[event.room_id] = rooms.get(event.room_id, 0) + 1
    for sender, n in senders.items():
        lines.append(_unread(n, f"from {safe(sender)}", f"{program} chat {safe(sender)}{flag}"))
    for room_id, n in rooms.items():
        label = safe(labels.get(room_id, room_id))
        lines.append(_unread(n, f"in {label}", f"{program} chat {quoted_room(label)}{flag}"))
    return lines


def _unread(count: int, where: str, command: str) -> str:
    return f"{messages(count, 'new')} {where} ({command} shows {'them' if count != 1 else 'it'})"


# =============================================================================
# Calls
# =============================================================================

#: What a call that ended says, by the name of its :class:`~sottovoce.calls.effects.EndReason`
#: (names, so that rendering other things loads no call code).
_ENDED = {
    "HUNG_UP": "ended (you hung up)",
    "PEER_HUNG_UP": "ended ({peer} hung up)",
    "CANCELLED": "cancelled",
    "DECLINED": "declined",
    "PEER_DECLINED": "declined by {peer}",
    "DECLINED_ELSEWHERE": "declined on another of your devices",
    "BUSY": "busy: {peer} is in another call",
    "NO_ANSWER": "no answer",
    "MISSED": "missed call from {peer}",
    "ANSWERED_ELSEWHERE": "answered on another of your devices",
    "SUPERSEDED": "{peer} called you at the same moment: taking that call",
    "FAILED": "failed: the call's media could not connect (or reconnect)",
}


def call_state(change: StateChanged) -> str:
    """One line per call state: ``calling bob…``, ``answered``, ``no answer`` …"""
    from sottovoce.calls.effects import CallState, Role

    peer = safe(change.peer)
    kind = "video call" if change.video else "call"
    if change.state is CallState.OUTGOING_RINGING:
        return f"calling {peer} ({kind})…"
    if change.state is CallState.INCOMING_RINGING:
        return f"incoming {kind} from {peer}"
    if change.state is CallState.CONNECTING:
        return "answered; connecting…" if change.role is Role.CALLER else "accepted; connecting…"
    if change.state is CallState.ACTIVE:
        return f"connected: in a {kind} with {peer} (end-to-end encrypted)"
    if change.state is CallState.ENDED and change.reason is not None:
        return _ENDED[change.reason.name].format(peer=peer)
    return str(change.state.value)


def _number(value: float | None, unit: str) -> str:
    return "–" if value is None else f"{value:g} {unit}"


def call_stats(peer: str, stats: CallStats) -> str:
    """The in-call status line; "–" for what is not known (yet: a rate needs two samples)."""
    codecs = "/".join(c for c in (stats.video_codec, stats.audio_codec) if c) or "–"
    path = "–" if stats.relayed is None else ("relayed" if stats.relayed else "direct")
    return (
        f"{safe(peer)} · {safe(codecs)} · ↑ {_number(stats.send_kbps or None, 'kbit/s')} "
        f"↓ {_number(stats.recv_kbps or None, 'kbit/s')} · RTT {_number(stats.rtt_ms, 'ms')} · "
        f"loss {_number(stats.loss_pct, '%')} · {path} · E2EE on"
    )


# =============================================================================
# Connection state and errors
# =============================================================================


def connected(url: str) -> str:
    return f"● connected to {safe(url)}"


def offline(url: str, reason: str | None) -> str:
    why = f" ({safe(reason)})" if reason else ""
    return f"○ offline: cannot reach {safe(url)}{why}; reconnecting…"


def error_event(event: ErrorEvent) -> str:
    """A problem reported while running (the text may come from the server or a peer)."""
    return f"! {safe(event.code)}: {safe(event.message)}"


def kt_alerts(alerts: Sequence[Alert], program: str = "sottovoce") -> list[str]:
    """What every command prints while alerts are not acknowledged (empty: nothing)."""
    if not alerts:
        return []
    lines = [f"KEY-TRANSPARENCY ALERT: {len(alerts)} not acknowledged "
             f"(the server may be showing you forged keys)"]
    for a in alerts:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.at_ms / 1000))
        lines.append(f"  [{when} UTC] {safe(a.kind)}: {safe(a.message)}")
    lines.append(f"  details: {program} kt status; when dealt with: {program} kt ack")
    return lines


def kt_witness_warning(policy: WitnessPolicy | None, program: str = "sottovoce") -> list[str]:
    """What every command prints while the device pins fewer witnesses than it requires
    (a server with no witness): empty otherwise, and after an explicit opt-out."""
    from sottovoce.client.kt import WitnessPolicy

    if policy is not WitnessPolicy.MISSING:
        return []
    return [
        "KEY-TRANSPARENCY WARNING: no pinned witness can cosign the log, so no lookup "
        "can be verified and every one is refused",
        f"  pin an independent witness: {program} kt pin-witness VKEY; or opt out "
        f"knowingly: {program} kt require 0",
    ]
