"""Witnesses: cosign a log's checkpoints after checking it only grew
(c2sp.org/tlog-cosignature), and the auditing witness, which also replays the
log's leaves and recomputes the map before it cosigns.

    Witness.cosign(note, consistency proof, now)
        log signature ok?  size >= last size?  consistent with the last one?
        ──► cosignature/v1 line (timestamped) and the new state to keep

    AuditingWitness.cosign(note, new leaves, now)
        each leaf: its epoch is its index; it appends exactly the next version of
        its account; the map root recomputed after it equals the leaf's map root;
        the log rebuilt from the leaves has the checkpoint's size and root
        ──► cosignature, or MapMismatch / LogForked and no cosignature

A plain witness says nothing about the map: it only stops a log from showing
two histories. The auditor holds no account state (commitments hide it), only
the map's structure, so it can run anywhere.

Both work on copies and keep their new state only once every check passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.errors import DecodeError, UsageError
from sottovoce.kt.checkpoint import NoteKey, NoteSignature, NoteSigner, SignedNote, open_checkpoint
from sottovoce.kt.errors import LogForked, MalformedProof, MapMismatch
from sottovoce.kt.map import Directory, LogLeaf, Overlay
from sottovoce.kt.merkle import LogWriter
from sottovoce.kt.verify import TrustedHead, check_extension


@dataclass(frozen=True, slots=True, kw_only=True)
class WitnessState:
    """The largest checkpoint this witness has cosigned for the log."""

    head: TrustedHead | None = None


class Witness:
    __slots__ = ("_log_key", "_signer", "state")

    def __init__(
        self, signer: NoteSigner, log_key: NoteKey, state: WitnessState | None = None
    ) -> None:
        self._signer = signer
        self._log_key = log_key
        self.state = state or WitnessState()

    def _check(self, note: bytes | SignedNote, consistency: Sequence[bytes]) -> TrustedHead:
        verified = open_checkpoint(note, log_key=self._log_key)
        check_extension(self.state.head, verified, list(consistency))
        cp = verified.checkpoint
        return TrustedHead(size=cp.size, root=cp.root, note=verified.note.encode())

    def _sign(self, head: TrustedHead, now_ms: int) -> NoteSignature:
        sig = self._signer.cosign(SignedNote.decode(head.note).text, timestamp_s=now_ms // 1000)
        self.state = WitnessState(head=head)
        return sig

    def cosign(
        self, note: bytes | SignedNote, consistency: Sequence[bytes], *, now_ms: int
    ) -> NoteSignature:
        """Cosign ``note`` if it extends the last checkpoint cosigned; raise
        :class:`LogShrank` or :class:`LogForked` (and keep the old state) if not."""
        head = self._check(note, consistency)
        return self._sign(head, now_ms)


class AuditingWitness(Witness):
    """A witness that replays every leaf into its own copy of the log and the map.

    ``log`` and ``directory`` are its replica (rebuilt from the leaves it has seen);
    pass fresh ones to audit from the start.
    """

    __slots__ = ("_directory", "_log", "_map_stores")

    def __init__(
        self,
        signer: NoteSigner,
        log_key: NoteKey,
        *,
        map_nodes: dict[tuple[int, int], bytes] | None = None,
        version_nodes: dict[tuple[bytes, int, int], bytes] | None = None,
        sizes: dict[bytes, int] | None = None,
        log: LogWriter | None = None,
        state: WitnessState | None = None,
    ) -> None:
        super().__init__(signer, log_key, state)
        self._map_stores = (map_nodes or {}, version_nodes or {}, sizes or {})
        self._log = log or LogWriter()

    @property
    def size(self) -> int:
        return self._log.size

    def cosign_audited(
        self, note: bytes | SignedNote, new_leaves: Sequence[bytes], *, now_ms: int
    ) -> NoteSignature:
        """Replay ``new_leaves`` (the leaves after the ones already audited, up to the
        checkpoint's size), then cosign; raise :class:`MapMismatch` if a leaf's map
        root is not what the replay computes, :class:`LogForked` if the leaves do not
        make the checkpoint's tree."""
        verified = open_checkpoint(note, log_key=self._log_key)
        cp = verified.checkpoint
        if cp.size != self._log.size + len(new_leaves):
            raise MalformedProof("the leaves do not reach the checkpoint's size")
        stores = [Overlay(s) for s in self._map_stores]
        replica = Directory(stores[0], stores[1], {}, stores[2])
        log = self._log.copy()
        for data in new_leaves:
            try:
                leaf = LogLeaf.decode(data)
            except DecodeError:
                raise MalformedProof("a log leaf does not decode") from None
            if leaf.epoch != log.size:
                raise MapMismatch(f"leaf {log.size} claims epoch {leaf.epoch}")
            if leaf.account_version != replica.versions(leaf.map_key):
                raise MapMismatch(f"leaf {log.size} does not append the account's next version")
            _, root = replica.append_commitment(leaf.map_key, leaf.commitment)
            if root != leaf.map_root:
                raise MapMismatch(f"leaf {log.size} commits to a map root no replay gives")
            log.append(leaf.hash())
        if log.root() != cp.root:
            raise LogForked("the leaves do not make the checkpoint's root")
        head = TrustedHead(size=cp.size, root=cp.root, note=verified.note.encode())
        # The consistency a plain witness checks follows from the replay: the old tree
        # is a prefix of the one the leaves rebuilt.
        sig = self._sign(head, now_ms)
        for overlay in stores:
            overlay.commit()
        self._log = log
        return sig

    def cosign(
        self, note: bytes | SignedNote, consistency: Sequence[bytes], *, now_ms: int
    ) -> NoteSignature:
        raise UsageError("an auditing witness cosigns with cosign_audited()")
