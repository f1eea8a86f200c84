"""`recorder`: run the opt-in recorder device beside the server (docs/calls.md).

::

    no account in --data-dir ──► make one (NAME, device "recorder") on --server
    open it ──► start its room calls ──► connect ──► Recorder.run until Ctrl-C or
        --seconds: join the calls of rooms whose recorder setting is on, ask for
        recording, write it sealed to DATA_DIR/recordings/

Exit codes: 0 stopped (Ctrl-C, --seconds); 1 an error (server unreachable, name
taken, the account's device is not a recorder device); 2 wrong usage.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.cli import render
from sottovoce.cli.call_cmd import connect, quiet, say, stop_on_signals
from sottovoce.cli.options import positive, subcommand
from sottovoce.cli.program import command_name, dir_flag
from sottovoce.cli.session import (
    DEFAULT_SERVER,
    CliError,
    Connect,
    check_name_free,
    data_dir,
    new_passphrase,
    run,
    with_client,
)

if TYPE_CHECKING:
    from sottovoce.client import Client

#: The recorder account's name when --name is not given.
DEFAULT_RECORDER_NAME = "recorder"


def _create(args: argparse.Namespace, root: Path) -> None:
    """The recorder's account: a new name on the server, its device named "recorder"."""
    from sottovoce.client import Client
    from sottovoce.client.connection import ws_url
    from sottovoce.identity import validate_username
    from sottovoce.protocol.rooms import RECORDER_DEVICE_ID

    validate_username(args.name)
    ws_url(args.server)
    check_name_free(args.server, args.name, taken_hint="give another with --name")
    passphrase = new_passphrase(args, args.name)

    async def go() -> None:
        client = await Client.create_account(
            args.server, args.name, root, passphrase, device_id=RECORDER_DEVICE_ID
        )
        await client.close()

    run(go())
    program, flag = command_name(), dir_flag(args)
    say(f"created the recorder account '{render.safe(args.name)}' (device "
        f"{RECORDER_DEVICE_ID}) on {render.safe(args.server)}")
    say(f"a room's admin lets it record with: {program} room invite ROOM "
        f"{render.safe(args.name)}{flag} and {program} room set ROOM --recorder on{flag}")


def cmd_recorder(args: argparse.Namespace) -> int:
    """run the opt-in recorder device: it records the calls of rooms that ask for it

    Run a recorder device beside the server. The first run makes its account
    (--name, default 'recorder') with a device named 'recorder'; a room's admin
    invites that account like any member and turns the room's recorder setting on
    (`room set ROOM --recorder on`). In such a room it joins every call as a
    participant everyone sees, marked as the recorder, asks for recording under
    the same rule as anyone (every participant says yes; any no or 20 s of silence
    refuses), and writes what it receives sealed with its own key to
    DATA_DIR/recordings/. With the setting off it never joins, and it leaves a call
    when the setting is turned off. Ctrl-C stops.

    exit codes: 0 stopped; 1 error; 2 wrong usage

    example:
      sottovoce recorder --server ws://127.0.0.1:8765 --data-dir /var/lib/sottovoce-rec
    """
    from sottovoce.client.store import Store
    from sottovoce.protocol.rooms import RECORDER_DEVICE_ID

    quiet(args)
    root = data_dir(args)
    if not Store.exists(root):
        _create(args, root)
    out = root / "recordings"

    async def work(client: Client) -> int:
        from sottovoce.client.calls.media import IceConfig
        from sottovoce.client.calls.recorder import Recorder
        from sottovoce.client.calls.room_controller import RoomCallOptions
        from sottovoce.client.calls.sources import MediaSpec

        if client.device_id != RECORDER_DEVICE_ID:
            raise CliError(
                f"the account in {root} is not a recorder (its device is not named "
                f"'{RECORDER_DEVICE_ID}'): give the recorder its own --data-dir"
            )
        hub = client.start_room_calls(RoomCallOptions(  # before connecting: no start missed
            media=MediaSpec(audio=False, video=False),
            ice=IceConfig(loopback=args.loopback),
            recording_consent="grant",
            record_to=out / "pending.rec",  # each call gets its own file
        ))
        await connect(client, args)
        stop = stop_on_signals()
        if args.seconds is not None:
            asyncio.get_running_loop().call_later(args.seconds, stop.set)
        say(f"recorder '{render.safe(client.username)}' running; recordings go to "
            f"{render.safe(str(out))} (Ctrl-C stops)")
        recorder = Recorder(client, hub, out, say=lambda line: say(render.safe(line)))
        await recorder.run(stop)
        say(f"stopped; {len(recorder.recordings)} recording(s) written")
        return 0

    return with_client(args, work, connect=Connect.NO)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subcommand(sub, "recorder", func=cmd_recorder)
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="URL",
                   help=f"the relay server, for the first run (default {DEFAULT_SERVER})")
    p.add_argument("--name", default=DEFAULT_RECORDER_NAME, metavar="NAME",
                   help="the recorder account's name, for the first run (default "
                   f"'{DEFAULT_RECORDER_NAME}')")
    p.add_argument("--loopback", action="store_true",
                   help="gather 127.0.0.1 only (the server, the SFU and the recorder on one "
                   "machine: demos, tests)")
    p.add_argument("--seconds", type=positive(float), metavar="N",
                   help="stop after N seconds (default: at Ctrl-C)")
