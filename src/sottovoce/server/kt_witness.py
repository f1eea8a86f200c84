"""Witnesses of the key-transparency log: the add-checkpoint exchange (c2sp.org/tlog-witness),
the witness's own state file, and the witness side that checks and cosigns.

The log pushes each new checkpoint to every witness it is configured with::

    POST <witness URL>/add-checkpoint
        old <size of the last checkpoint the log believes this witness cosigned>
        <base64 consistency proof hash, one per line>
        <empty line>
        <the signed checkpoint note>
    200: the witness's cosignature line(s)
    409: "<size>\\n" the witness's real last size (the log retries from it)
    403: not signed by the log key this witness follows   422: not consistent / not audited
    400: malformed

A plain witness checks the log signature and the consistency proof from the last
checkpoint it cosigned (kt/witness.py Witness). An auditing one also fetches the new
leaves from the log's ``/kt/leaves`` and replays them (AuditingWitness): it refuses a
checkpoint whose map no leaf justifies. Its state (the last checkpoint it cosigned, the
log key it follows) is a JSON file it alone writes, replaced atomically.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sottovoce.errors import UsageError
from sottovoce.kt.checkpoint import NoteKey, NoteSignature, NoteSigner, SignedNote, open_checkpoint
from sottovoce.kt.errors import (
    BadCheckpointSignature,
    KTError,
    LogShrank,
    MalformedProof,
)
from sottovoce.kt.witness import AuditingWitness, Witness, WitnessState
from sottovoce.limits import KT_MAX_NOTE_BYTES
from sottovoce.private_files import PRIVATE_FILE_MODE

if TYPE_CHECKING:  # the verifier is loaded by the first state file read
    from sottovoce.kt.verify import TrustedHead

#: The most proof lines an add-checkpoint body may carry, and its largest size.
MAX_PROOF_LINES = 100
MAX_BODY_BYTES = KT_MAX_NOTE_BYTES + MAX_PROOF_LINES * 46 + 64
#: Leaves fetched per request by an auditing witness (the log serves at most 1000).
LEAVES_PER_FETCH = 1000


class Conflict(Exception):
    """The witness's last size is not the ``old`` the log sent."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the witness is at size {size}")
        self.size = size


def add_checkpoint_body(old: int, proof: Sequence[bytes], note: bytes) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n").encode() + note


def parse_add_checkpoint(body: bytes) -> tuple[int, list[bytes], bytes]:
    """(old size, consistency proof, note) of an add-checkpoint body; raises
    :class:`MalformedProof`."""
    if len(body) > MAX_BODY_BYTES:
        raise MalformedProof("add-checkpoint body is too large")
    head, sep, note = body.partition(b"\n\n")
    if not sep:
        raise MalformedProof("add-checkpoint body has no checkpoint")
    try:
        lines = head.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise MalformedProof("add-checkpoint header is not ASCII") from None
    first = lines[0].split(" ")
    if (len(first) != 2 or first[0] != "old" or not first[1].isdigit()
            or len(lines) > 1 + MAX_PROOF_LINES):
        raise MalformedProof("add-checkpoint header is malformed")
    proof = []
    for line in lines[1:]:
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedProof("a consistency proof line is not base64") from None
        if len(h) != 32:
            raise MalformedProof("a consistency proof hash is not 32 bytes")
        proof.append(h)
    return int(first[1]), proof, note


# --- the witnesses a log pushes to -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemoteWitness:
    """``--kt-witness URL=VKEY``: where a witness listens and the key it cosigns with."""

    url: str
    key: NoteKey


def parse_kt_witnesses(text: str) -> tuple[RemoteWitness, ...]:
    """``URL=VKEY`` items separated by spaces (the flag may also be repeated)."""
    out = []
    for item in text.split():
        url, sep, vkey = item.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ValueError("each witness is URL=VKEY with an http(s) URL")
        try:
            key = NoteKey.from_vkey(vkey)
        except KTError:
            raise ValueError("a witness's VKEY is not a verifier key") from None
        if key.sig_type != 0x04:
            raise ValueError("a witness's VKEY must be a cosignature (type 0x04) key")
        out.append(RemoteWitness(url=url.rstrip("/"), key=key))
    return tuple(out)


# --- the witness's state file -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SavedState:
    log_key: str | None
    head: TrustedHead | None


def load_state(path: Path) -> SavedState:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return SavedState(None, None)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the witness state file {path}: {exc}") from None
    from sottovoce.kt.verify import TrustedHead

    try:
        head = None
        if raw.get("size") is not None:
            head = TrustedHead(size=int(raw["size"]), root=base64.b64decode(raw["root"]),
                               note=base64.b64decode(raw["note"]))
        log_key = raw.get("log_key")
        return SavedState(str(log_key) if log_key else None, head)
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise UsageError(f"the witness state file {path} is damaged") from None


def save_state(path: Path, state: SavedState) -> None:
    head = state.head
    body = {
        "log_key": state.log_key,
        "size": None if head is None else head.size,
        "root": None if head is None else base64.b64encode(head.root).decode(),
        "note": None if head is None else base64.b64encode(head.note).decode(),
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(body, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --- the witness --------------------------------------------------------------------------------

#: (start, count) -> encoded leaves, from the log's /kt/leaves.
LeafSource = Callable[[int, int], list[bytes]]


class WitnessService:
    """One witness: checks and cosigns checkpoints of one log, keeping its state file.

    ``log_key`` None: the key of the first checkpoint's log is fetched by ``first_key``
    and kept (trust on first use, saved in the state file). ``leaves``: audit (replay
    every leaf) with leaves from this source. Thread-safe: one request at a time.
    """

    def __init__(
        self,
        signer: NoteSigner,
        state_file: Path,
        *,
        log_key: NoteKey | None = None,
        first_key: Callable[[], str] | None = None,
        leaves: LeafSource | None = None,
        clock_ms: Callable[[], int],
    ) -> None:
        self.signer = signer
        self._file = state_file
        self._first_key = first_key
        self._leaves = leaves
        self._clock = clock_ms
        self._lock = threading.Lock()
        saved = load_state(state_file)
        if log_key is not None and saved.log_key not in (None, log_key.vkey()):
            raise UsageError("the witness state file follows another log key")
        pinned = log_key.vkey() if log_key is not None else saved.log_key
        self._log_key = NoteKey.from_vkey(pinned) if pinned else None
        self._head = saved.head
        self._witness: Witness | None = None

    @property
    def size(self) -> int:
        return 0 if self._head is None else self._head.size

    def _ready(self) -> tuple[Witness, NoteKey]:
        if self._witness is not None and self._log_key is not None:
            return self._witness, self._log_key
        log_key = self._log_key
        if log_key is None:
            if self._first_key is None:
                raise BadCheckpointSignature("this witness follows no log key yet")
            log_key = self._log_key = NoteKey.from_vkey(self._first_key())
            save_state(self._file, SavedState(log_key.vkey(), self._head))
        state = WitnessState(head=self._head)
        if self._leaves is None:
            self._witness = Witness(self.signer, log_key, state)
            return self._witness, log_key
        # Rebuild the replica from every leaf up to the last checkpoint cosigned: the
        # replay must make that checkpoint's root, or the log changed its past.
        auditor = AuditingWitness(self.signer, log_key)
        if self._head is not None and self._head.size:
            auditor.cosign_audited(self._head.note, self._fetch(0, self._head.size),
                                   now_ms=self._clock())
        auditor.state = state
        self._witness = auditor
        return auditor, log_key

    def _fetch(self, start: int, end: int) -> list[bytes]:
        source = self._leaves
        if source is None:  # pragma: no cover - only auditing witnesses fetch leaves
            raise UsageError("this witness does not audit")
        out: list[bytes] = []
        while start + len(out) < end:
            got = source(start + len(out), min(LEAVES_PER_FETCH, end - start - len(out)))
            if not got:
                raise MalformedProof("the log did not serve the leaves of its checkpoint")
            out.extend(got)
        return out

    def add_checkpoint(self, old: int, proof: list[bytes], note: bytes) -> NoteSignature:
        """Check and cosign; raises :class:`Conflict` or a :class:`KTError`."""
        with self._lock:
            witness, log_key = self._ready()
            if old != self.size:
                raise Conflict(self.size)
            size = open_checkpoint(note, log_key=log_key).checkpoint.size
            now = self._clock()
            if self.size == 0:  # every tree extends the empty one (RFC 9162 has no proof)
                witness.state = WitnessState()
            if isinstance(witness, AuditingWitness):
                if size < self.size:
                    raise LogShrank("the checkpoint is smaller than the last one cosigned")
                sig = witness.cosign_audited(note, self._fetch(self.size, size), now_ms=now)
            else:
                sig = witness.cosign(note, proof, now_ms=now)
            self._head = witness.state.head
            save_state(self._file, SavedState(log_key.vkey(), self._head))
            return sig

    def handle(self, body: bytes) -> tuple[int, bytes]:
        """One add-checkpoint request: (HTTP status, body)."""
        try:
            old, proof, note = parse_add_checkpoint(body)
            sig = self.add_checkpoint(old, proof, note)
        except Conflict as c:
            return 409, f"{c.size}\n".encode()
        except BadCheckpointSignature as exc:
            return 403, f"{exc}\n".encode()
        except MalformedProof as exc:
            return 400, f"{exc}\n".encode()
        except KTError as exc:
            return 422, f"{exc}\n".encode()
        except UsageError as exc:  # the log's endpoints failed this witness (audit)
            return 502, f"{exc}\n".encode()
        return 200, sig.line().encode()


def parse_cosignature(
    body: bytes, witness: NoteKey, note: bytes, log_key: NoteKey
) -> NoteSignature:
    """The witness's cosignature line from its reply, checked over ``note``'s text
    (raises :class:`KTError`)."""
    if len(body) > KT_MAX_NOTE_BYTES or not body.endswith(b"\n"):
        raise MalformedProof("the witness's reply is not signature lines")
    found = [s for s in SignedNote.decode(note + body).signatures if witness.matches(s)]
    if not found:
        raise MalformedProof("the witness's reply holds no cosignature of its key")
    signed = SignedNote.decode(note)
    open_checkpoint(SignedNote(text=signed.text, signatures=(*signed.signatures, found[-1])),
                    log_key=log_key, witnesses=(witness,), min_cosignatures=1)
    return found[-1]
