"""Signed notes, checkpoints and cosignatures (c2sp.org/signed-note,
c2sp.org/tlog-checkpoint, c2sp.org/tlog-cosignature; all v1, Ed25519 only).

    example.com/sottovoce-kt            <- origin
    20852163                            <- tree size, decimal, no leading zeros
    CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=   <- base64 root hash
                                        <- one empty line
    — example.com/sottovoce-kt base64(key ID[4] || Ed25519 signature[64])
    — witness.example/w1 base64(key ID[4] || timestamp u64 || Ed25519 signature[64])

* the log signs the note text (signature type 0x01);
* a witness signs "cosignature/v1\\ntime <seconds>\\n" followed by the note text
  (signature type 0x04), after checking the checkpoint is consistent with the
  last one it saw (kt/witness.py);
* key ID = SHA-256(key name || 0x0A || type || public key)[:4]; a verifier key
  (vkey) is "<name>+<hex key ID>+<base64(type || public key)>".

Parsing is strict: anything the specifications forbid is a
:class:`~sottovoce.kt.errors.MalformedProof`. Signature lines from unknown keys
are ignored, as c2sp.org/signed-note requires; a known key whose signature does
not verify rejects the whole note (its SHOULD, which we follow).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sottovoce.crypto.sign import SignatureScheme, SigningKey, VerifyKey
from sottovoce.errors import InvalidKey, SignatureError, UsageError
from sottovoce.kt.errors import (
    BadCheckpointSignature,
    MalformedProof,
    NotEnoughCosignatures,
    StaleCheckpoint,
)
from sottovoce.kt.merkle import HASH_SIZE
from sottovoce.limits import (
    CLOCK_SKEW_MS,
    KT_MAX_KEY_NAME_BYTES,
    KT_MAX_LOG_SIZE,
    KT_MAX_NOTE_BYTES,
    KT_MAX_NOTE_SIGNATURES,
)

#: c2sp.org/signed-note §Signature types.
TYPE_ED25519 = 0x01
TYPE_COSIGNATURE_V1 = 0x04
_DASH = "\u2014 "
_ED25519_SIG = 64
_COSIG_HEADER = "cosignature/v1\n"
#: At most 20 digits (a uint64): int() of a longer run is slow, and past 4,300 digits it
#: raises ValueError instead of the MalformedProof a peer's bad note must end in.
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
#: Unicode spaces (category Zs plus the ASCII whitespace) and "+" are not allowed in names.
_BAD_NAME_CHARS = re.compile(r"[\s+\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
#: The control characters a note may not hold (all but the newline), and DEL.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _b64decode(text: str, what: str) -> bytes:
    """Strict RFC 4648 §4 base64: only canonical encodings (unused bits zero), so one
    note has exactly one encoding."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise MalformedProof(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedProof(f"{what} is not canonical base64")
    return raw


def _check_name(name: str) -> str:
    if not name or _BAD_NAME_CHARS.search(name) or len(name.encode()) > KT_MAX_KEY_NAME_BYTES:
        raise MalformedProof("a key name is empty, too long, or has a space or '+'")
    return name


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """c2sp.org/signed-note: SHA-256(name || 0x0A || type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes((sig_type,)) + public_key).digest()[:4]


# --- the note -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteSignature:
    """One signature line: the key name and base64(key ID || signature bytes)."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_DASH}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedNote:
    """A note text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        if not self.signatures:
            raise UsageError("a signed note needs at least one signature")
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()

    @classmethod
    def decode(cls, data: bytes) -> SignedNote:
        """Parse a signed note strictly (c2sp.org/signed-note §Format)."""
        if not isinstance(data, bytes) or len(data) > KT_MAX_NOTE_BYTES:
            raise MalformedProof("signed note is too large")
        try:
            note = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedProof("signed note is not UTF-8") from None
        if _CONTROL.search(note):
            raise MalformedProof("signed note contains a control character")
        split = note.rfind("\n\n")
        if split < 0 or not note.endswith("\n"):
            raise MalformedProof("signed note has no signature block")
        text, block = note[: split + 1], note[split + 2 :]
        lines = block[:-1].split("\n")
        if not block or len(lines) > KT_MAX_NOTE_SIGNATURES:
            raise MalformedProof("signed note has no or too many signatures")
        signatures = []
        for line in lines:
            if not line.startswith(_DASH):
                raise MalformedProof("malformed signature line")
            name, sep, b64 = line[len(_DASH) :].partition(" ")
            if not sep or " " in b64:
                raise MalformedProof("malformed signature line")
            raw = _b64decode(b64, "signature")
            if len(raw) < 5:
                raise MalformedProof("signature is too short")
            signatures.append(
                NoteSignature(name=_check_name(name), key_id=raw[:4], signature=raw[4:])
            )
        return cls(text=text, signatures=tuple(signatures))


# --- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteKey:
    """A public key that signs notes: the log's (type 0x01) or a witness's (type 0x04)."""

    name: str
    public_key: bytes
    sig_type: int = TYPE_ED25519

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.sig_type not in (TYPE_ED25519, TYPE_COSIGNATURE_V1):
            raise UsageError("unsupported note signature type")
        try:
            VerifyKey(SignatureScheme.ED25519, self.public_key)
        except InvalidKey:
            raise UsageError("not an Ed25519 public key") from None

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.sig_type, self.public_key)

    def vkey(self) -> str:
        """c2sp.org/signed-note §Verifier keys."""
        payload = base64.b64encode(bytes((self.sig_type,)) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{payload}"

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteKey:
        """Parse a vkey; its key ID must match its name and key (raises MalformedProof)."""
        parts = vkey.split("+", 2)  # the base64 key may hold "+" too
        if len(parts) != 3 or not re.fullmatch(r"[0-9a-f]{8}", parts[1]):
            raise MalformedProof("malformed verifier key")
        raw = _b64decode(parts[2], "verifier key")
        if len(raw) != 33 or raw[0] not in (TYPE_ED25519, TYPE_COSIGNATURE_V1):
            raise MalformedProof("verifier key is not an Ed25519 note key")
        try:
            key = cls(name=_check_name(parts[0]), public_key=raw[1:], sig_type=raw[0])
        except UsageError:
            raise MalformedProof("verifier key holds an invalid public key") from None
        if key.key_id.hex() != parts[1]:
            raise MalformedProof("verifier key's ID does not match its name and key")
        return key

    def fingerprint(self) -> str:
        """A short hex fingerprint users can compare: SHA-256 of the vkey, 16 bytes."""
        return hashlib.sha256(self.vkey().encode()).hexdigest()[:32]

    def matches(self, sig: NoteSignature) -> bool:
        return sig.name == self.name and sig.key_id == self.key_id


def _cosigned_message(timestamp: int, text: str) -> bytes:
    """c2sp.org/tlog-cosignature §Ed25519 signed message."""
    return f"{_COSIG_HEADER}time {timestamp}\n{text}".encode()


class NoteSigner:
    """A private note key: the log's signer, or (``cosigner=True``) a witness's."""

    __slots__ = ("_key", "public")

    def __init__(self, name: str, key: SigningKey, *, cosigner: bool = False) -> None:
        if key.scheme is not SignatureScheme.ED25519:
            raise UsageError("note keys are Ed25519")
        self._key = key
        self.public = NoteKey(
            name=name,
            public_key=key.verify_key.data,
            sig_type=TYPE_COSIGNATURE_V1 if cosigner else TYPE_ED25519,
        )

    def sign(self, text: str) -> NoteSignature:
        if self.public.sig_type != TYPE_ED25519:
            raise UsageError("a cosigner signs with cosign()")
        return NoteSignature(
            name=self.public.name,
            key_id=self.public.key_id,
            signature=self._key.sign(text.encode()),
        )

    def cosign(self, text: str, *, timestamp_s: int) -> NoteSignature:
        if self.public.sig_type != TYPE_COSIGNATURE_V1:
            raise UsageError("a log key signs with sign()")
        if not 0 <= timestamp_s < 2**63:
            raise UsageError("cosignature timestamp out of range")
        sig = self._key.sign(_cosigned_message(timestamp_s, text))
        return NoteSignature(
            name=self.public.name,
            key_id=self.public.key_id,
            signature=timestamp_s.to_bytes(8, "big") + sig,
        )

    def __repr__(self) -> str:
        return f"NoteSigner({self.public.vkey()})"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("key objects cannot be pickled")


#: Signatures that verified, as (public key, message, signature): a client checks the same
#: checkpoint once per lookup until the next one, so each of its signatures is verified
#: once. Only successes are kept, keyed by every input of the check, so a hit is exactly
#: as strong as a verification; when full, it starts again empty.
_VERIFIED: dict[tuple[bytes, bytes, bytes], None] = {}
_VERIFIED_MAX = 64


def _verify_ed25519(key: NoteKey, message: bytes, signature: bytes) -> None:
    entry = (key.public_key, message, signature)
    if entry in _VERIFIED:
        return
    try:
        VerifyKey(SignatureScheme.ED25519, key.public_key).verify(message, signature)
    except SignatureError:
        raise BadCheckpointSignature(f"signature by {key.name!r} does not verify") from None
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()  # one step, safe beside other threads
    _VERIFIED[entry] = None


def verify_note_signature(key: NoteKey, text: str, sig: NoteSignature) -> int | None:
    """Check one signature line of ``key`` over ``text``; return the cosignature timestamp
    (seconds) for a witness key, None for a log key."""
    if key.sig_type == TYPE_ED25519:
        if len(sig.signature) != _ED25519_SIG:
            raise BadCheckpointSignature(f"signature by {key.name!r} has the wrong length")
        _verify_ed25519(key, text.encode(), sig.signature)
        return None
    if len(sig.signature) != 8 + _ED25519_SIG:
        raise BadCheckpointSignature(f"cosignature by {key.name!r} has the wrong length")
    timestamp = int.from_bytes(sig.signature[:8], "big")
    if timestamp >= 2**63:
        raise BadCheckpointSignature(f"cosignature by {key.name!r} has an invalid timestamp")
    _verify_ed25519(key, _cosigned_message(timestamp, text), sig.signature[8:])
    return timestamp


# --- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """c2sp.org/tlog-checkpoint §Note text: origin, tree size, root hash (+ extensions)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise UsageError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size <= KT_MAX_LOG_SIZE or len(self.root) != HASH_SIZE:
            raise UsageError("checkpoint size or root out of range")
        if any(not e or "\n" in e for e in self.extensions):
            raise UsageError("checkpoint extension lines must be non-empty single lines")

    def text(self) -> str:
        root = base64.b64encode(self.root).decode()
        return "\n".join([self.origin, str(self.size), root, *self.extensions]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise MalformedProof("checkpoint has fewer than three lines")
        origin, size, root, *extensions = lines[:-1]
        if not origin or any(not e for e in extensions):
            raise MalformedProof("checkpoint has an empty line")
        if not _DECIMAL.fullmatch(size) or int(size) > KT_MAX_LOG_SIZE:
            raise MalformedProof("checkpoint tree size is not a canonical decimal")
        raw_root = _b64decode(root, "checkpoint root")
        if len(raw_root) != HASH_SIZE:
            raise MalformedProof("checkpoint root hash is not 32 bytes")
        return cls(origin=origin, size=int(size), root=raw_root, extensions=tuple(extensions))

    def sign(self, log: NoteSigner) -> SignedNote:
        if log.public.name != self.origin:
            raise UsageError("the log key's name must be the checkpoint origin")
        text = self.text()
        return SignedNote(text=text, signatures=(log.sign(text),))


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified, with the known witnesses' cosignature
    timestamps (seconds) and the note, so it can be passed on as it was received."""

    checkpoint: Checkpoint
    cosignatures: dict[str, int]
    note: SignedNote


def add_cosignature(note: SignedNote, sig: NoteSignature) -> SignedNote:
    """The note with one more signature line, replacing an older line of the same key."""
    kept = tuple(s for s in note.signatures if (s.name, s.key_id) != (sig.name, sig.key_id))
    return SignedNote(text=note.text, signatures=(*kept, sig))


#: Notes :func:`open_checkpoint` opened, as (note bytes, log key, witness keys) -> (its
#: checkpoint, the known witnesses' cosignature times, the note): a client opens the same
#: checkpoint for every lookup until the next one. Parsing and the signature checks depend
#: on nothing but the key, so a hit is exactly as strong as doing them again; the checks
#: that depend on the call (how many cosignatures, the clock, the age) run every time.
#: Only successes are kept; when full, it starts again empty.
_OPENED: dict[tuple[bytes, NoteKey, tuple[NoteKey, ...]],
              tuple[Checkpoint, dict[str, int], SignedNote]] = {}
_OPENED_MAX = 16


def open_checkpoint(
    data: bytes | SignedNote,
    *,
    log_key: NoteKey,
    witnesses: Sequence[NoteKey] = (),
    min_cosignatures: int = 0,
    now_ms: int | None = None,
    max_age_ms: int | None = None,
) -> VerifiedCheckpoint:
    """Verify a checkpoint note: the pinned log key's signature, every known witness's
    cosignature, at least ``min_cosignatures`` of them, and (when ``max_age_ms`` is
    given) that the newest cosignature is no older than that at ``now_ms``.

    Raises :class:`BadCheckpointSignature`, :class:`NotEnoughCosignatures`,
    :class:`StaleCheckpoint` or :class:`MalformedProof`.
    """
    if log_key.sig_type != TYPE_ED25519 or any(
        w.sig_type != TYPE_COSIGNATURE_V1 for w in witnesses
    ):
        raise UsageError("the log key signs notes; witness keys sign cosignatures")
    entry = (data, log_key, tuple(witnesses)) if type(data) is bytes else None
    opened = _OPENED.get(entry) if entry is not None else None
    if opened is None:
        opened = _open(data, log_key, witnesses)
        if entry is not None:
            if len(_OPENED) >= _OPENED_MAX:
                _OPENED.clear()  # one step, safe beside other threads
            _OPENED[entry] = opened
    checkpoint, signed, note = opened
    cosignatures = dict(signed)
    if now_ms is not None:
        future = [n for n, ts in cosignatures.items() if ts * 1000 > now_ms + CLOCK_SKEW_MS]
        if future:
            raise BadCheckpointSignature("a cosignature is dated in the future")
    if len(cosignatures) < min_cosignatures:
        raise NotEnoughCosignatures(
            f"{len(cosignatures)} known witness cosignature(s), {min_cosignatures} required"
        )
    if max_age_ms is not None:
        if now_ms is None:
            raise UsageError("a maximum age needs now_ms")
        newest = max(cosignatures.values(), default=None)
        if newest is None or newest * 1000 < now_ms - max_age_ms:
            raise StaleCheckpoint("the checkpoint's newest cosignature is too old")
    return VerifiedCheckpoint(checkpoint=checkpoint, cosignatures=cosignatures, note=note)


def _open(
    data: bytes | SignedNote, log_key: NoteKey, witnesses: Sequence[NoteKey]
) -> tuple[Checkpoint, dict[str, int], SignedNote]:
    """Parse a note and check its signatures: the log key's, which must be there, and
    each known witness's; return the checkpoint and the witnesses' cosignature times."""
    note = data if isinstance(data, SignedNote) else SignedNote.decode(data)
    checkpoint = Checkpoint.parse(note.text)
    if checkpoint.origin != log_key.name:
        raise BadCheckpointSignature("checkpoint is from another log")
    log_signed = False
    cosignatures: dict[str, int] = {}
    for sig in note.signatures:
        if log_key.matches(sig):
            verify_note_signature(log_key, note.text, sig)
            log_signed = True
            continue
        for w in witnesses:
            if w.matches(sig):
                ts = verify_note_signature(w, note.text, sig)
                if ts is not None:
                    cosignatures[w.name] = max(ts, cosignatures.get(w.name, 0))
    if not log_signed:
        raise BadCheckpointSignature("checkpoint is not signed by the pinned log key")
    return checkpoint, cosignatures, note


def known(witnesses: Iterable[NoteKey]) -> tuple[NoteKey, ...]:
    """Witness keys, each name once (a policy of K of N counts names, not lines)."""
    seen: dict[str, NoteKey] = {}
    for w in witnesses:
        if w.name in seen and seen[w.name] != w:
            raise UsageError(f"two different keys for witness {w.name!r}")
        seen[w.name] = w
    return tuple(seen.values())
