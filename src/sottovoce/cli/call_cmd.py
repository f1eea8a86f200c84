"""Call commands: `call USER`, `answer`, `decline` (docs/calls.md).

Each command is its own process, so the callee's side waits for the ring:
``sottovoce answer`` connects, waits (``--wait``) for the next incoming call and
accepts it; ``sottovoce decline`` declines it. Both sides then print each change
of the call's state until it ends::

    parse ──► options (media, ICE, recording) ──► start the account's calls
          ──► connect ──► dial | wait for the ring ──► follow the events
          ──► a summary of what the media did ──► exit code

Exit codes: 0 the call was answered (and ended); 3 it was not (declined, busy,
no answer, missed, cancelled, no call came); 1 an error; 2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sottovoce.cli import render
from sottovoce.cli.options import positive, subcommand, timed_account_options
from sottovoce.cli.session import CliError, Connect, unreachable, with_client

if TYPE_CHECKING:
    from sottovoce.calls.effects import EndReason, StateChanged
    from sottovoce.client import Client

if TYPE_CHECKING:  # the media stack (aiortc, PyAV) is imported when a call command runs
    from sottovoce.client.calls import CallOptions, MediaSession, MediaSpec, TurnServer

T = TypeVar("T")

#: The call did not happen: declined, busy, no answer, missed, cancelled, no call came.
EXIT_NOT_ANSWERED = 3
#: How long `answer` and `decline` wait for a call by default.
DEFAULT_WAIT_S = 60.0
#: A signal's way out after the call ended (the hang-up, a missed-call entry).
FLUSH_TIMEOUT_S = 10.0


# =============================================================================
# Options
# =============================================================================


def media_spec(args: argparse.Namespace) -> MediaSpec:
    """What a call sends: --media FILE (checked), --audio-only, --screen."""
    from sottovoce.client.calls import MediaSpec

    media = getattr(args, "media", None)
    # Headless: a tone and numbered test-pattern frames.
    source = "synthetic" if media is None else _media_file(media)
    # The screen of this machine's display where there is one; else a test pattern.
    screen = ("device" if os.environ.get("DISPLAY") else "synthetic") if args.screen else None
    return MediaSpec(source=source, video=not args.audio_only, screen=screen)


def record_path(args: argparse.Namespace) -> Path | None:
    """--record-to FILE, its directory checked."""
    if not getattr(args, "record_to", None):
        return None
    record_to = Path(args.record_to).expanduser()
    if not record_to.parent.is_dir():
        raise CliError(f"cannot record to {args.record_to}: no such directory")
    return record_to


def call_options(args: argparse.Namespace) -> CallOptions:
    """What this device sends and how it connects, from the command line (files checked)."""
    from sottovoce.client.calls import CallOptions, IceConfig

    ring_ms = int(getattr(args, "ring_timeout", 45.0) * 1000)
    return CallOptions(
        media=media_spec(args),
        ice=IceConfig(relay_only=args.relay_only, loopback=args.loopback),
        record_to=record_path(args),
        recording_consent="grant" if args.allow_recording else "refuse",
        ring_timeout_ms=ring_ms,
    )


def _media_file(name: str) -> str:
    """--media FILE, opened once now: a file that is not there or holds no audio or video
    is a plain error before anything rings (the call opens it only once answered)."""
    from sottovoce.client.calls.errors import MediaSourceUnavailable
    from sottovoce.client.calls.sources import check_media_file

    path = Path(name).expanduser()
    try:
        check_media_file(path)
    except MediaSourceUnavailable as exc:
        raise CliError(f"cannot use the media file {name}: {exc}") from None
    return str(path)


async def require_turn(client: Client) -> tuple[TurnServer, ...]:
    """--relay-only: the server must hand out TURN credentials, or the call cannot go."""
    from sottovoce.client import ServerError

    try:
        return await client.turn_servers()
    except ServerError as exc:
        if exc.code == "turn_unavailable":
            raise CliError(
                f"the server at {client.identity.server_url} has no TURN server, and "
                "--relay-only needs one\nits operator starts it with --turn-url and "
                "--turn-secret-file (docs/calls.md); or call without --relay-only"
            ) from None
        raise


# =============================================================================
# Following a call
# =============================================================================


@dataclass(slots=True)
class _Run:
    """What a command saw of its call."""

    answered: bool = False
    ended: EndReason | None = None
    session: MediaSession | None = None
    peer: str = ""
    problems: list[str] = field(default_factory=list)


def say(line: str, *, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def stop_on_signals() -> asyncio.Event:
    """An event that Ctrl-C (and SIGTERM) sets, in place of KeyboardInterrupt."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def next_or_stop(events: asyncio.Queue[T], stop: asyncio.Event) -> T | None:
    """The next event, or ``None`` once ``stop`` is set (Ctrl-C, a timer)."""
    getter = asyncio.ensure_future(events.get())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if getter in done:
        return getter.result()
    getter.cancel()
    return None


async def _follow(client: Client, args: argparse.Namespace, run: _Run) -> None:
    """Print the call's state changes until it ends (Ctrl-C or --seconds hang up)."""
    from sottovoce.calls.effects import CallState, PeerRinging, RecordingPermission, StateChanged
    from sottovoce.client.calls import SignalFailed
    from sottovoce.client.calls.media import MediaProblem

    calls = client.calls
    stop = stop_on_signals()
    loop = asyncio.get_running_loop()
    ringing_said = False
    while run.ended is None:
        event = await next_or_stop(calls.events, stop)
        if event is None:
            stop.clear()
            await _end(client, run)
            continue
        if isinstance(event, StateChanged):
            if event.call_id != (calls.call.call_id if calls.call else event.call_id):
                continue  # an earlier call's last word
            run.peer = event.peer
            say(render.call_state(event))
            if event.state is CallState.ACTIVE and not run.answered:
                run.answered = True
                run.session = calls.session()
                if getattr(args, "screen", False) and run.session and calls.call:
                    # The screen track starts switched off, like a muted camera; turned on
                    # through the engine, so the peer is told of it too.
                    calls.set_media(
                        audio_muted=calls.call.audio_muted,
                        camera_on=run.session.camera_on,
                        screen_on=True,
                    )
                await calls.stats()  # the baseline of the rates the last line shows
                if args.seconds is not None:
                    loop.call_later(args.seconds, stop.set)
            elif event.state is CallState.ENDED:
                run.ended = event.reason
        elif isinstance(event, PeerRinging) and not ringing_said:
            ringing_said = True
            say("ringing")
        elif isinstance(event, SignalFailed):
            if event.code == "recipient_offline" and calls.state is CallState.OUTGOING_RINGING:
                run.problems.append("no device of theirs is online")
                say(f"no device of {render.safe(run.peer or args_peer(args))} is online", err=True)
                calls.hangup()
            elif calls.state not in (CallState.ENDED, CallState.IDLE):
                say(f"a call signal could not be sent ({render.safe(event.code)})", err=True)
        elif isinstance(event, MediaProblem):
            run.problems.append(event.error)
            say(f"call problem ({render.safe(event.where)}): {render.safe(event.error)}", err=True)
        elif isinstance(event, RecordingPermission):
            say("recording: the peer " + ("consents" if event.allowed else "does not consent"))


def args_peer(args: argparse.Namespace) -> str:
    return str(getattr(args, "name", "") or "the peer")


async def _end(client: Client, run: _Run) -> None:
    """Ctrl-C or --seconds: hang up (or decline a ring), after one last stats line."""
    from sottovoce.calls.effects import CallState

    calls = client.calls
    if calls.state is CallState.ACTIVE:
        await _print_stats(client, run)
    if calls.state in (CallState.OUTGOING_RINGING, CallState.CONNECTING, CallState.ACTIVE):
        calls.hangup()
    elif calls.state is CallState.INCOMING_RINGING:
        calls.decline()


async def _print_stats(client: Client, run: _Run) -> None:
    stats = await client.calls.stats()
    if stats is None:
        return
    say(render.call_stats(run.peer, stats))
    session = client.calls.session()
    path = session.path() if session is not None else None
    if path is not None:
        say(f"path: {path[0]} ↔ {path[1]}")


def _summary(run: _Run) -> None:
    """What the media did, for people and scripts (the test pattern's frames are numbered)."""
    session = run.session
    if session is None:
        return
    sent = session.camera_frames_sent()
    if sent is not None:
        say(f"sent {sent} camera frames")
    for role in ("camera", "screen"):
        sink = session.sinks[role]
        if sink.numbers:
            say(
                f"received {len(sink.numbers)} {role} frames, numbered "
                f"{min(sink.numbers)} to {max(sink.numbers)}"
            )
        elif role == "camera" or sink.frames:  # a screen only when one was shared
            say(f"received {sink.frames} {role} frames")
    say(f"received {session.sinks['audio'].frames} audio frames")
    if session.peer_candidate_types:
        say("the peer offered: " + ", ".join(sorted(session.peer_candidate_types)))


async def _finish(client: Client, run: _Run) -> int:
    # The last signals (hang-up, a missed-call entry) leave before the account closes.
    from sottovoce.calls.effects import EndReason

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(client.calls.close(), FLUSH_TIMEOUT_S)
    await client.drain_outbox(FLUSH_TIMEOUT_S)
    _summary(run)
    if run.answered:
        return 0
    if run.ended is EndReason.FAILED or run.problems:
        reason = client.calls.last_error
        if reason is not None and str(reason) not in run.problems:
            say(render.error(str(reason)), err=True)
        return 1
    return EXIT_NOT_ANSWERED


def quiet(args: argparse.Namespace) -> None:
    """The media stack's log lines are for --debug; what matters is said in plain lines."""
    if not getattr(args, "debug", False):
        logging.getLogger().addHandler(logging.NullHandler())


async def connect(client: Client, args: argparse.Namespace) -> None:
    """Connect once the account's calls are started (so no ring or call start is
    missed), or say plainly why the server cannot be reached."""
    from sottovoce.client import NotConnected

    try:
        await client.connect(timeout=args.timeout, fail_fast=True)
    except NotConnected as exc:
        raise unreachable(client.identity.server_url, exc) from None


async def _connect(client: Client, args: argparse.Namespace, options: CallOptions) -> None:
    client.start_calls(options)  # before connecting: no ring is missed
    await connect(client, args)
    if options.ice.relay_only:
        await require_turn(client)


# =============================================================================
# Commands
# =============================================================================


def cmd_call(args: argparse.Namespace) -> int:
    """call NAME: ring all of NAME's devices and follow the call

    Ring every device of NAME (end-to-end encrypted signals; the server never sees
    an SDP or an address) and print each change: ringing, answered, declined, busy,
    no answer, ended. Peer-to-peer media (DTLS-SRTP), or through the server's TURN
    relay with --relay-only. Headless, it sends a tone and numbered test frames.
    Ctrl-C hangs up.

    exit codes: 0 answered; 3 not answered (declined, busy, no answer); 1 error

    example:
      sottovoce call bob --data-dir ~/.sottovoce-alice
      sottovoce call bob --audio-only --relay-only --seconds 30 --data-dir ~/.sottovoce-alice
    """
    from sottovoce.identity import validate_username

    quiet(args)
    validate_username(args.name)
    options = call_options(args)

    async def work(client: Client) -> int:
        if args.name == client.username:
            raise CliError("that is you: call another user")
        await _connect(client, args, options)
        run = _Run(peer=args.name)
        await client.place_call(args.name, video=not args.audio_only)
        await _follow(client, args, run)
        return await _finish(client, run)

    return with_client(args, work, connect=Connect.NO)


async def _wait_for_ring(client: Client, wait_s: float) -> StateChanged | None:
    """The next incoming ring within ``wait_s`` (other events before it are dropped)."""
    from sottovoce.calls.effects import CallState, StateChanged

    calls = client.calls
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return None
        try:
            event = await asyncio.wait_for(calls.events.get(), left)
        except TimeoutError:
            return None
        if isinstance(event, StateChanged) and event.state is CallState.INCOMING_RINGING:
            return event


def _incoming(decline: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from sottovoce.calls.effects import EndReason
        from sottovoce.client.calls import CallOptions

        quiet(args)

        options = CallOptions() if decline else call_options(args)

        async def work(client: Client) -> int:
            await _connect(client, args, options)
            say(f"waiting up to {args.wait:g} s for a call (Ctrl-C to stop)")
            ring = await _wait_for_ring(client, args.wait)
            if ring is None:
                say(f"no call came within {args.wait:g} s", err=True)
                await client.calls.close()
                return EXIT_NOT_ANSWERED
            say(render.call_state(ring))
            run = _Run(peer=ring.peer)
            if decline:
                client.calls.decline()
            else:
                client.answer_call()
            await _follow(client, args, run)
            code = await _finish(client, run)
            return 0 if decline and run.ended is EndReason.DECLINED else code

        return with_client(args, work, connect=Connect.NO)

    return command


# =============================================================================
# Parsers
# =============================================================================


def add_path_options(parser: argparse.ArgumentParser) -> None:
    """--relay-only and --loopback: how a call's media find their way (`chat` takes them too)."""
    parser.add_argument(
        "--relay-only", action="store_true",
        help="connect calls through the server's TURN relay only, so the peer never learns "
        "your address (the server must have TURN configured)",
    )
    parser.add_argument(
        "--loopback", action="store_true",
        help="calls use 127.0.0.1 only (both devices on this machine: demos and tests)",
    )


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """--audio-only, --screen and --media: what a call sends, as :func:`media_spec` reads
    it (`room call` takes them too)."""
    parser.add_argument(
        "--audio-only", action="store_true", help="send no camera video (an audio call)"
    )
    parser.add_argument(
        "--screen", action="store_true", help="share the screen too (a test pattern when headless)"
    )
    parser.add_argument(
        "--media", metavar="FILE",
        help="send this audio/video file instead of the default synthetic tone and pattern",
    )


def _media_options(parser: argparse.ArgumentParser) -> None:
    add_source_options(parser)
    add_path_options(parser)
    parser.add_argument(
        "--record-to", metavar="FILE",
        help="write the peer's audio and camera to FILE (WebM), once the peer consents",
    )
    parser.add_argument(
        "--allow-recording", action="store_true",
        help="consent if the peer asks to record this call (default: refuse)",
    )
    parser.add_argument(
        "--seconds", type=positive(float), metavar="N",
        help="hang up N seconds after the call connects (default: at Ctrl-C or the peer's)",
    )
    timed_account_options(parser)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    call = subcommand(sub, "call", func=cmd_call, args=[("NAME", "the username to call")],
                      options=_media_options)
    call.add_argument(
        "--ring-timeout", type=positive(float), default=45.0, metavar="S",
        help="give up after S seconds of ringing (default and most 45); both histories "
        "then show the missed call",
    )

    for name, decline, verb in (("answer", False, "accept"), ("decline", True, "decline")):
        parser = subcommand(
            sub,
            name,
            help=f"wait for the next incoming call and {verb} it",
            description=(
                f"Connect, wait (up to --wait seconds) for the next incoming call and {verb} "
                "it, printing each change of the call until it ends. Run it in place of "
                "`listen` when you expect a call; Ctrl-C "
                + ("hangs up." if not decline else "stops waiting.")
                + "\n\nexit codes: 0 "
                + ("the call was answered" if not decline else "a call was declined")
                + "; 3 no call came (or it was cancelled); 1 error"
            ),
            example=(
                f"  sottovoce {name} --data-dir ~/.sottovoce-bob\n"
                f"  sottovoce {name} --wait 120 --record-to call.webm --data-dir ~/.sottovoce-bob"
                if not decline
                else f"  sottovoce {name} --wait 30 --data-dir ~/.sottovoce-bob"
            ),
            func=_incoming(decline),
            options=timed_account_options if decline else _media_options,
        )
        parser.add_argument(
            "--wait", type=positive(float), default=DEFAULT_WAIT_S, metavar="SECONDS",
            help=f"how long to wait for a call (default {DEFAULT_WAIT_S:g})",
        )
        if decline:
            parser.set_defaults(seconds=None)
