"""The opt-in recorder device against the real server and a real Janus (docs/calls.md,
"Recorder device"): with the room's setting off it never joins (and gets no SFU grant);
with it on it joins every call as a visible participant, asks for recording under the
same consent rule as anyone, and writes the recording sealed with its own key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sottovoce.calls.room_effects import RecordingState
from sottovoce.client import Client, ServerError
from sottovoce.client.calls.media import IceConfig
from sottovoce.client.calls.recorder import Recorder, is_recorder
from sottovoce.client.calls.recording import RecordingDamaged, read_recording
from sottovoce.client.calls.room_controller import RoomCallController, RoomCallOptions
from sottovoce.client.calls.sources import MediaSpec
from sottovoce.client.store import TEST_KDF
from sottovoce.protocol.audit import AuditAction
from sottovoce.secret import Secret
from tests.integration.client_helpers import PASSPHRASE, make_account
from tests.integration.room_calls_helpers import LOOPBACK, events_of
from tests.integration.serverproc import ServerProcess

SAYS_YES = dataclasses.replace(LOOPBACK, recording_consent="grant")
SAYS_NO = dataclasses.replace(LOOPBACK, recording_consent="refuse")


async def until(
    predicate: Callable[[], bool], timeout: float = 30.0, said: object = None
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met in time; the recorder said {said}")
        await asyncio.sleep(0.05)


def recording_states(ctl: RoomCallController) -> list[RecordingState]:
    return [e for e in events_of(ctl) if isinstance(e, RecordingState)]


async def test_the_recorder_joins_only_opted_in_rooms_visibly_and_records_with_consent(
    sfu_server: ServerProcess, tmp_path: Path
) -> None:
    alice = await make_account(sfu_server, "alice", tmp_path)
    bob = await make_account(sfu_server, "bob", tmp_path)
    rec = await Client.create_account(sfu_server.url, "rec", tmp_path / "rec", PASSPHRASE,
                                      kdf=TEST_KDF, device_id="recorder")
    out = tmp_path / "rec" / "recordings"
    rec_hub = rec.start_room_calls(RoomCallOptions(
        media=MediaSpec(audio=False, video=False), ice=IceConfig(loopback=True),
        recording_consent="grant", record_to=out / "unused.rec",
    ))
    storage_key = rec_hub.options.storage_key
    assert isinstance(storage_key, Secret)
    said: list[str] = []
    recorder = Recorder(rec, rec_hub, out, say=said.append)
    stop = asyncio.Event()
    running = asyncio.ensure_future(recorder.run(stop))
    a_hub = alice.start_room_calls(SAYS_YES)
    b_hub = bob.start_room_calls(SAYS_YES)
    me_rec = ("rec", "recorder")
    try:
        room = await alice.rooms.create_room("recorded")
        for name in ("bob", "rec"):
            await alice.rooms.invite(room.room_id, name)
        for c in (bob, rec):
            await c.rooms.wait_epoch(room.room_id, 2, timeout=20)
        room_id = room.room_id

        async def a_call() -> tuple[RoomCallController, RoomCallController]:
            a = await a_hub.start(room_id)
            await until(lambda: b_hub.seen.get(room_id) is not None
                        and b_hub.seen[room_id].call_id == a.call.call_id)
            return a, b_hub.join(room_id)

        async def hang_up() -> None:
            await a_hub.end(room_id)
            await b_hub.end(room_id)
            await until(lambda: room_id not in recorder.attending)

        # The setting is off: a call goes on without the recorder, whose grant is refused.
        a, b = await a_call()
        await until(lambda: len(a.participants) == 2 and len(b.participants) == 2)
        await until(lambda: any("recorder setting is off: not joining" in line
                                for line in said), 30, said)
        assert room_id not in rec_hub.active and me_rec not in a.participants
        with pytest.raises(ServerError) as off:
            await rec._ask_sfu_grant(room_id, secrets.token_bytes(16))
        assert off.value.code == "recorder_off"
        await hang_up()

        await alice.rooms.set_setting(room_id, "recorder", "on")
        # On, and bob says no: the recorder is in the call, visible, and records nothing.
        b_hub.options = SAYS_NO
        a, b = await a_call()
        await until(lambda: all(me_rec in c.participants and len(c.participants) == 3
                                for c in (a, b)))
        assert [d for d in a.participants if is_recorder(d)] == [me_rec]
        await until(lambda: any("recording refused: bob/" in line for line in said), 40)
        assert not recording_states(a) and not recording_states(b)
        await hang_up()
        assert recorder.recordings == []

        # Everyone says yes: REC on every screen, a sealed file only its key opens.
        b_hub.options = SAYS_YES
        a, b = await a_call()
        call_id = a.call.call_id
        await until(lambda: all(me_rec in c.participants for c in (a, b)))
        await until(lambda: all(any(s.on and s.by == me_rec and s.consented
                                    for s in recording_states(c)) for c in (a, b)), 40)
        # Frames to record: 20 more of each of them reach the recorder.
        heard = recorder.attending[room_id].ctl
        speakers = [(alice.username, alice.device_id), (bob.username, bob.device_id)]

        def frames_of(device: tuple[str, str]) -> int:
            return 0 if heard.media is None else heard.media.sink(device, "camera").frames

        before = {d: frames_of(d) for d in speakers}
        await until(lambda: all(frames_of(d) >= before[d] + 20 for d in speakers), 40, said)
        await hang_up()
        (path,) = recorder.recordings
        assert path.parent == out and call_id.hex() in path.name
        frames = read_recording(path, storage_key)
        senders = {f.sender for f in frames}
        assert (alice.username, alice.device_id) in senders
        assert (bob.username, bob.device_id) in senders
        with pytest.raises(RecordingDamaged):
            read_recording(path, Secret(secrets.token_bytes(32)))

        trail = await bob.rooms.audit(room_id)
        rec_entries = [e.action for e in trail if (e.actor_user_id, e.actor_device_id) == me_rec]
        assert AuditAction.RECORDING_ON in rec_entries
        assert AuditAction.RECORDING_OFF in rec_entries
        settings = [e.subjects for e in trail if e.action is AuditAction.ROOM_SETTING]
        assert settings == [(("recorder", "on"),)]

        # Turned off during a call: the recorder leaves it (within its 5 s re-read).
        b_hub.options = SAYS_NO  # no second recording of this call
        a, b = await a_call()
        await until(lambda: all(me_rec in c.participants for c in (a, b)))
        await alice.rooms.set_setting(room_id, "recorder", "off")
        await until(lambda: all(me_rec not in c.participants for c in (a, b)), 30)
        await until(lambda: room_id not in recorder.attending)
        assert any("recorder setting was turned off: leaving" in line for line in said)
        await a_hub.end(room_id)
        await b_hub.end(room_id)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await asyncio.gather(*(c.close() for c in (alice, bob, rec)), return_exceptions=True)


def _cli(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "sottovoce", *args, "--data-dir", str(home)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOTTOVOCE_")}
    env["SOTTOVOCE_PASSPHRASE"] = PASSPHRASE
    return env


async def test_the_recorder_command_makes_its_account_then_records_an_opted_in_call(
    sfu_server: ServerProcess, tmp_path: Path
) -> None:
    home = tmp_path / "rec"
    proc = subprocess.Popen(
        _cli("recorder", "--server", sfu_server.url, "--name", "rec", "--loopback",
             "--seconds", "90", home=home),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = asyncio.get_running_loop().run_in_executor(None, read)
    alice = await make_account(sfu_server, "alice", tmp_path)
    bob = await make_account(sfu_server, "bob", tmp_path)
    me_rec = ("rec", "recorder")
    try:
        await until(lambda: any("recorder 'rec' running" in x for x in lines), 60)
        assert any("created the recorder account 'rec' (device recorder)" in x for x in lines)
        assert any("room set ROOM --recorder on" in x for x in lines)
        room = await alice.rooms.create_room("recorded")
        for name in ("bob", "rec"):
            await alice.rooms.invite(room.room_id, name)
        await bob.rooms.wait_epoch(room.room_id, 2, timeout=20)
        await alice.rooms.set_setting(room.room_id, "recorder", "on")
        a_hub, b_hub = alice.start_room_calls(SAYS_YES), bob.start_room_calls(SAYS_YES)
        a = await a_hub.start(room.room_id)
        await until(lambda: room.room_id in b_hub.seen)
        b = b_hub.join(room.room_id)
        await until(lambda: all(me_rec in c.participants for c in (a, b)), 40)
        await until(lambda: all(any(s.on and s.by == me_rec for s in recording_states(c))
                                for c in (a, b)), 40, lines)
        await asyncio.sleep(2.0)
        await a_hub.end(room.room_id)
        await b_hub.end(room.room_id)
        await until(lambda: any("recording sealed in" in x for x in lines), 30)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = await asyncio.to_thread(proc.wait, 30)
        finally:
            if proc.poll() is None:
                proc.kill()
        await reader
        await asyncio.gather(alice.close(), bob.close(), return_exceptions=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert code == 0, (lines, err)
    assert any("1 recording(s) written" in x for x in lines), lines
    (written,) = (home / "recordings").glob("*.rec")
    assert written.stat().st_size > 0 and written.name.startswith(room.room_id[5:])

    # The command on another account's directory, and its --help.
    not_rec = subprocess.run(_cli("recorder", "--seconds", "1", home=tmp_path / "alice"),
                             env=_env(), capture_output=True, text=True, timeout=60)
    assert not_rec.returncode == 1 and "is not a recorder" in not_rec.stderr
    assert "Traceback" not in not_rec.stderr
    shown = subprocess.run(_cli("recorder", "--help", home=home), env=_env(),
                           capture_output=True, text=True, timeout=60, check=True).stdout
    flat = " ".join(shown.split())
    for promise in ("--server URL", "--name NAME", "default 'recorder'", "--loopback",
                    "--seconds N", "With the setting off it never joins",
                    "it leaves a call when the setting is turned off",
                    "marked as the recorder", "DATA_DIR/recordings/",
                    "sottovoce recorder --server ws://127.0.0.1:8765"):
        assert promise in flat, promise
