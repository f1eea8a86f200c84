"""Errors of key transparency (docs/architecture.md §Planned: kt/).

Every failure a log, a map, a checkpoint or a VRF proof from the network can
cause is a :class:`KTError` (a :class:`~sottovoce.errors.RemoteError`), with one
subclass per thing a client must tell apart: a malformed proof, a bad signature,
a log that shrank or forked, a checkpoint that is too old, a VRF proof that does
not verify, and a monitor alert about one's own entry. Messages name what failed,
never key material or account state.
"""

from __future__ import annotations

from sottovoce.errors import DecodeError, RemoteError


class KTError(RemoteError):
    """Root of the key-transparency errors caused by input from the network."""

    code = "kt_error"


class MalformedProof(KTError, DecodeError):
    """A proof, checkpoint or leaf does not decode, or has the wrong shape for its sizes."""

    code = "kt_malformed"


class ProofMismatch(KTError):
    """A well-formed proof does not lead to the root it claims (RFC 9162 §2.1.3.2, §2.1.4.2)."""

    code = "kt_proof_mismatch"


class BadCheckpointSignature(KTError):
    """A checkpoint lacks a valid signature of the pinned log key, or a known
    witness's cosignature on it does not verify (c2sp.org/signed-note)."""

    code = "kt_bad_signature"


class NotEnoughCosignatures(KTError):
    """Fewer than the required number of known witnesses cosigned the checkpoint."""

    code = "kt_not_enough_cosignatures"


class LogShrank(KTError):
    """A checkpoint is smaller than one already seen: the log was rolled back."""

    code = "kt_log_shrank"


class LogForked(KTError):
    """Two checkpoints of one log are not consistent (a split view or a rewrite)."""

    code = "kt_log_forked"


class NoWitnessPinned(KTError):
    """The device requires witness cosignatures but pins fewer witnesses than it
    requires (a server with no witness): nothing the log shows can be verified."""

    code = "kt_no_witness"


class StaleCheckpoint(KTError):
    """The newest cosignature timestamp on a checkpoint is older than allowed."""

    code = "kt_stale_checkpoint"


class VRFError(KTError):
    """An ECVRF proof is invalid (RFC 9381 §5.3 outputs "INVALID")."""

    code = "kt_bad_vrf_proof"


class MapMismatch(KTError):
    """The map root recomputed from the log's leaves differs from the one a leaf commits to."""

    code = "kt_map_mismatch"


class MonitorAlert(KTError):
    """One's own entry shows a change its owner did not make (a device or key not added)."""

    code = "kt_monitor_alert"
