"""Structured JSON-lines logs that cannot carry content (docs/threat-model.md: no ciphertext).

The logger accepts only whitelisted field names with scalar values; strings
are cut to a short length and must look like identifiers, so a base64
ciphertext or a plaintext cannot slip into a line even by mistake (a field
not on the list raises :class:`UsageError` in development and is dropped).

    {"ts":1732370000123,"level":"info","event":"send","userId":"alice","count":2}
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO

from sottovoce.errors import UsageError

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}

#: Field name -> longest string value allowed (ints and bools have no length).
FIELDS: dict[str, int] = {
    "event": 64,
    "userId": 64,
    "deviceId": 64,
    "requestId": 128,
    "conversationId": 128,
    "messageId": 128,
    "code": 64,
    "closeCode": 0,
    "reason": 128,
    "size": 0,
    "count": 0,
    "seq": 0,
    "durationMs": 0,
    "remote": 64,
    "url": 256,
    "path": 256,
    "version": 32,
    "status": 0,
    "batch": 0,
    "remaining": 0,
    "deleted": 0,
    "forked": 0,
    "revoked": 0,
    "error": 128,
    "node": 128,
}
#: Strings must be identifiers, paths, URLs or short phrases: no base64 blobs
#: longer than an id, no JSON, no newlines.
_SAFE = re.compile(r"[A-Za-z0-9 _.:@/+=,()'\[\]-]*")


class JsonLogger:
    """Writes one JSON object per line; thread-safe; no global state."""

    def __init__(self, stream: IO[str] | None = None, *, level: str = "info") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._level = LEVELS[level]
        self._lock = threading.Lock()
        self._owned = False
        #: Set when several nodes share a deployment: every line then names its node.
        self.node: str | None = None

    @classmethod
    def to_file(cls, path: Path, *, level: str = "info") -> JsonLogger:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            stream = path.open("a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise UsageError(f"cannot write the log file {path}: {exc.strerror or exc}") from None
        logger = cls(stream, level=level)
        logger._owned = True
        return logger

    def close(self) -> None:
        if self._owned:
            self._stream.close()

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self._level

    def log(self, level: str, event: str, **fields: str | int | float | bool | None) -> None:
        if LEVELS[level] < self._level:
            return
        line: dict[str, object] = {"ts": time.time_ns() // 1_000_000, "level": level}
        line["event"] = _clean("event", event)
        if self.node is not None:
            line["node"] = _clean("node", self.node)
        for name, value in fields.items():
            if value is None:
                continue
            if name not in FIELDS:
                raise UsageError(f"log field {name!r} is not whitelisted")
            line[name] = _clean(name, value)
        text = json.dumps(line, separators=(",", ":"))
        with self._lock:
            self._stream.write(text + "\n")

    def debug(self, event: str, **fields: str | int | float | bool | None) -> None:
        self.log("debug", event, **fields)

    def info(self, event: str, **fields: str | int | float | bool | None) -> None:
        self.log("info", event, **fields)

    def warning(self, event: str, **fields: str | int | float | bool | None) -> None:
        self.log("warning", event, **fields)

    def error(self, event: str, **fields: str | int | float | bool | None) -> None:
        self.log("error", event, **fields)


def _clean(name: str, value: str | int | float | bool) -> str | int | float | bool:
    if isinstance(value, bool | int | float):
        return value
    limit = FIELDS[name]
    text = str(value)[:limit]
    if not _SAFE.fullmatch(text):
        return "<redacted>"
    return text
