"""`room call ROOM`: start or join a call of a room and follow it (docs/calls.md).

::

    parse ──► options (media, ICE, recording) ──► start the account's room calls
          ──► connect, catch up on the room ──► join the call last started in it
              (or start one: --new, or none seen) ──► follow the events
          ──► leave (Ctrl-C, --seconds) ──► what the media did ──► exit code

Every line it prints comes from the call's own MLS group (participants, its
epoch) or this device's media: never from the SFU or the server.

Exit codes: 0 the call was joined (and left); 1 an error, the join refused (for
example a fifth participant of a call without an SFU); 2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.call_cmd import (
    add_path_options,
    add_source_options,
    connect,
    media_spec,
    next_or_stop,
    quiet,
    record_path,
    require_turn,
    say,
    stop_on_signals,
)
from sottovoce.cli.options import positive, subcommand
from sottovoce.cli.session import CliError, Connect, with_client
from sottovoce.errors import SottovoceError

if TYPE_CHECKING:
    from sottovoce.client import Client
    from sottovoce.protocol.fields import Device

if TYPE_CHECKING:  # the media stack (aiortc, PyAV) is imported when the command runs
    from sottovoce.client.calls.room_calls import RoomCalls
    from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions

#: A join the call's members did not answer (the call may have ended).
JOIN_TIMEOUT_S = 20.0
#: The leave signal's way out before the account closes.
FLUSH_TIMEOUT_S = 10.0


def who(device: Device) -> str:
    return render.participant(device)


def room_call_options(args: argparse.Namespace) -> RoomCallOptions:
    """What this device sends, how it connects and records, from the command line."""
    from sottovoce.client.calls.media import IceConfig
    from sottovoce.client.calls.room_controller import RoomCallOptions

    record_to = record_path(args)
    if record_to is not None and record_to.exists():
        raise CliError(f"{args.record_to} exists already: give a new file")
    if args.record and record_to is None:
        raise CliError("--record needs --record-to FILE: where the sealed recording goes")
    return RoomCallOptions(
        media=media_spec(args),
        ice=IceConfig(relay_only=args.relay_only, loopback=args.loopback),
        recording_consent="grant" if args.allow_recording else "refuse",
        record_to=record_to,
    )


async def _enter(client: Client, hub: RoomCalls, room_id: str, new: bool) -> RoomCallController:
    seen = None if new else hub.seen.get(room_id)
    if seen is not None:
        say(f"joining the call {who(seen.starter)} started")
        return hub.join(room_id)
    ctl = await hub.start(room_id)
    how = "through the server's SFU" if ctl.call.mode.name == "SFU" else "as a mesh (at most 4)"
    say(f"started a call {how}")
    return ctl


async def _follow(
    ctl: RoomCallController, args: argparse.Namespace, others: set[Device]
) -> bool:
    """Print the call's changes until it is left; whether this device got in. Adds
    everyone else who was in the call meanwhile to ``others``."""
    from sottovoce.calls import room_effects as fx
    from sottovoce.client.calls.media import MediaProblem

    loop = asyncio.get_running_loop()
    stop = stop_on_signals()
    timer = loop.call_later(JOIN_TIMEOUT_S, stop.set)
    joined = False
    while True:
        event = await next_or_stop(ctl.events, stop)
        if event is None:
            if not joined:
                raise CliError(
                    f"the call did not let this device in within {JOIN_TIMEOUT_S:g} s (it "
                    "may have ended); start a new one with --new"
                )
            return True
        # The starter is in from the start (no Welcome): its first participant list says so.
        if not joined and (
            isinstance(event, fx.Joined)
            or (isinstance(event, fx.ParticipantsChanged) and ctl.call.me in event.participants)
        ):
            joined = True
            timer.cancel()
            say(f"in the call: E2EE on, epoch {ctl.call.epoch}")
            if args.seconds is not None:
                loop.call_later(args.seconds, stop.set)
            if args.record:
                ctl.request_recording()
                say("asked everyone in the call to consent to recording")
        if isinstance(event, fx.ParticipantsChanged):
            others.update(d for d in event.participants if d != ctl.call.me)
            epoch = ctl.call.epoch
            names = ", ".join(who(d) for d in event.participants)
            say(f"participants ({len(event.participants)}, epoch {epoch}): {names}")
        elif isinstance(event, fx.JoinRefused):
            raise CliError(str(event.error))
        elif isinstance(event, fx.RecordingState):
            mark = "" if event.consented else " (not consented!)"
            say(f"REC {'on' if event.on else 'off'}: recorded by {who(event.by)}{mark}")
        elif isinstance(event, fx.RecordingRefused):
            by = ", ".join(who(d) for d in event.refused_by) or "nobody answered in time"
            say(f"recording refused ({by})", err=True)
        elif isinstance(event, MediaProblem):
            say(f"call problem ({render.safe(event.where)}): {render.safe(event.error)}",
                 err=True)
        elif isinstance(event, fx.Left):
            say("removed from the call (this device left the room)" if event.removed
                 else "left the call")
            return joined


def _summary(ctl: RoomCallController, others: set[Device]) -> None:
    """Frames received from each participant (the test pattern's are numbered)."""
    media = ctl.media
    if media is None:
        return
    for device in sorted(others):
        camera = media.sink(device, "camera")
        unkeyed = media.unkeyed(device)
        say(
            f"received {camera.frames} camera frames and "
            f"{media.sink(device, 'audio').frames} audio frames from {who(device)}"
            f"; {media.failed(device)} did not open"
            + (f", {unkeyed} came under a key this device did not hold" if unkeyed else "")
        )


def cmd_room_call(args: argparse.Namespace) -> int:
    """start or join a call of ROOM and follow it

    Join the call last started in ROOM, or start one (--new, or when none is
    going on). The call has its own MLS group: its signals are end-to-end encrypted
    room messages, every audio and video frame is SFrame-encrypted under its keys,
    and the participants shown come from that group. Through the server's SFU when
    it runs one; otherwise a mesh of at most 4. Headless, it sends a tone and
    numbered test frames. Ctrl-C leaves.

    exit codes: 0 joined (and left); 1 error or refused (e.g. a fifth participant
    without an SFU); 2 wrong usage

    example:
      sottovoce room call friends --data-dir ~/.sottovoce-alice
      sottovoce room call friends --audio-only --seconds 60 --data-dir ~/.sottovoce-bob
      sottovoce room call friends --record --record-to call.rec --data-dir ~/.sottovoce-carol
    """
    quiet(args)
    options = room_call_options(args)
    # ROOM as the room commands take it: its name, '#NAME' or its id.
    ref = args.room[1:] if args.room.startswith("#") else args.room

    async def work(client: Client) -> int:
        hub = client.start_room_calls(options)  # before connecting: a start is not missed
        await connect(client, args)
        if args.relay_only:  # the server's TURN credentials, or a plain error
            ice = dataclasses.replace(hub.options.ice, turn=await require_turn(client))
            hub.options = dataclasses.replace(hub.options, ice=ice)
        try:
            room_id = client.rooms.get(ref).room_id
        except SottovoceError:
            raise CliError(f"no room {ref!r} on this device (sottovoce room list)") from None
        await client.rooms.sync(room_id)  # every signal it missed: a call going on
        ctl = await _enter(client, hub, room_id, args.new)
        others: set[Device] = set()
        try:
            await _follow(ctl, args, others)
            _summary(ctl, others)
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hub.end(room_id), FLUSH_TIMEOUT_S)
            await client.drain_outbox(FLUSH_TIMEOUT_S)
        if options.record_to is not None and options.record_to.exists():
            out = options.record_to.parent
            for path in hub.export_recording(options.record_to, out):
                say(f"recording written: {path}")
        return 0

    return with_client(args, work, connect=Connect.NO)


def add_command(rs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`room call`: registered by the room commands."""
    p = subcommand(rs, "call", func=cmd_room_call,
                   args=[("ROOM", "the room: its name on this device, '#NAME' or its id")])
    p.add_argument("--new", action="store_true",
                   help="start a new call even if one was started in the room")
    add_source_options(p)
    add_path_options(p)
    p.add_argument("--record", action="store_true",
                   help="ask everyone in the call to consent, then record what this device "
                   "receives (needs --record-to)")
    p.add_argument("--record-to", metavar="FILE",
                   help="write the recording sealed with this account's key to FILE, and "
                   "WebM files (one per participant) beside it when the call ends")
    p.add_argument("--allow-recording", action="store_true",
                   help="consent when someone asks to record (default: refuse)")
    p.add_argument("--seconds", type=positive(float), metavar="N",
                   help="leave N seconds after joining (default: at Ctrl-C)")
