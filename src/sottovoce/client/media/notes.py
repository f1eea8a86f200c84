"""``client.voice``: voice notes sent and played through ``client.files``.

    send(to, FILE) ──► transcoded (client/media/voice.py, in a thread) into this run's
        private area of the data directory ──► sent as a ``voice`` file whose body
        carries the measured duration ──► the transcoded copy deleted
    play(ID) ──► fetched and checked like any file ──► decrypted into the viewing area
        (wiped on close, client/files.py) ──► decoded in memory ──► the audio output

PyAV is loaded only when a voice note is made or played, so a client that never
touches one does not pay for it.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.client.files import Files, Progress
from sottovoce.errors import UsageError
from sottovoce.private_files import private_dir

if TYPE_CHECKING:
    from sottovoce.client.media.voice import Device

#: ``progress(done_ms, total_ms)`` while a note is encoded.
EncodeProgress = Callable[[int, int], None]


class VoiceNotes:
    """Making, sending and playing voice notes for one client."""

    def __init__(self, files: Files) -> None:
        self._files = files

    async def send(
        self, to: str, source: str | Path, *, room: bool = False,
        progress: Progress | None = None, encoding: EncodeProgress | None = None,
    ) -> str:
        """Transcode the audio file ``source`` to an Opus voice note and send it to the
        user ``to`` (``room``: to the room ``to``); returns the messageId."""
        from sottovoce.client.media import voice

        path = Path(source)
        if not path.is_file():
            raise UsageError(f"cannot read {path}: no such file")
        name = f"{path.stem or 'voice'}.ogg"
        return await self._send_made(
            to, name, room, progress,
            lambda dest: asyncio.to_thread(voice.transcode, path, dest, encoding))

    async def record(
        self, to: str, seconds: float, *, room: bool = False,
        progress: Progress | None = None, encoding: EncodeProgress | None = None,
        microphone: Device | None = None,
    ) -> str:
        """Record ``seconds`` from the microphone and send them as a voice note
        (``microphone``: a :class:`~sottovoce.client.media.voice.Device` to use instead of
        the platform's, e.g. FFmpeg's ``lavfi`` sine source)."""
        from sottovoce.client.media import voice

        return await self._send_made(
            to, "voice.ogg", room, progress,
            lambda dest: asyncio.to_thread(voice.record, seconds, dest, microphone, encoding))

    async def _send_made(
        self, to: str, name: str, room: bool, progress: Progress | None,
        make: Callable[[Path], Awaitable[int]],
    ) -> str:
        private_dir(self._files.view_dir)
        folder = self._files.view_dir / f".voice-{secrets.token_hex(8)}"
        folder.mkdir(mode=0o700)
        try:
            dest = folder / name
            duration = await make(dest)
            if room:
                return await self._files.room_send_file(to, dest, progress=progress,
                                                        voice_ms=duration)
            return await self._files.send_file(to, dest, progress=progress, voice_ms=duration)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def play(self, message_id: str, *, progress: Progress | None = None,
                   speaker: Device | None = None) -> int:
        """Fetch (if needed) and play the voice note of ``message_id``; the milliseconds
        played. ``speaker``: a :class:`~sottovoce.client.media.voice.Device` to play to
        instead of the platform's output."""
        from sottovoce.client.media import voice

        info = self._files.info(message_id)
        if info.kind != "voice":
            raise UsageError(f"message {message_id} is not a voice note")
        path = await self._files.view(message_id, progress=progress)
        return await asyncio.to_thread(voice.play, path, speaker)
