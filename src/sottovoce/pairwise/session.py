"""One Olm session per device pair (docs/architecture.md §1:1 messages), wrapped in our own checks.

    outbound:  verify bundle (certificate + prekey signature) ──► Olm session
    inbound:   verify sender certificate, bind its Olm identity key ──► Olm session
    encrypt:   pad to bucket ──► Olm ──► OlmEnvelope bytes
    decrypt:   OlmEnvelope ──► duplicate check ──► Olm (authenticates; state
               unchanged on failure) ──► unpad ──► remember as seen

vodozemac keeps skipped message keys per chain and forgets a key once used;
we also remember a bounded window of message digests so that a duplicate gets
a typed :class:`DuplicateMessage` rather than a generic failure.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Unpack

import vodozemac

from sottovoce.codec.tls import Reader, Writer, decode, varint_bytes
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sealed import open_record, seal_record
from sottovoce.errors import (
    DecodeError,
    DecryptionError,
    DuplicateMessage,
    MessageDecryptionError,
    PairwiseError,
    PrekeyBundleError,
    SealedStateError,
    SessionMismatch,
)
from sottovoce.identity.certificates import CertificateChecks, DeviceCertificate
from sottovoce.limits import SEEN_MESSAGE_IDS_PER_SESSION
from sottovoce.pairwise.account import PICKLE_KEY, OlmAccount
from sottovoce.pairwise.padding import pad, unpad
from sottovoce.pairwise.prekeys import PrekeyBundle, verify_certificate
from sottovoce.secret import Secret

_ENVELOPE_VERSION = 1
PREKEY_MESSAGE = 0
NORMAL_MESSAGE = 1
_SESSION_KIND = b"olm-session"
_DIGEST_LEN = 16

_VODOZEMAC_ERRORS = (ValueError,)  # every vodozemac exception subclasses ValueError


@dataclass(frozen=True, slots=True, kw_only=True)
class OlmEnvelope:
    """Our wire form of one Olm message: version, type, body."""

    message_type: int
    body: bytes

    # Hand-rolled rather than through codec.tls: this runs twice per message and
    # the generic reader costs more than the Olm step it wraps (bench/pairwise.py).
    def encode(self) -> bytes:
        return (
            bytes((_ENVELOPE_VERSION, self.message_type)) + varint_bytes(len(self.body)) + self.body
        )

    @classmethod
    def decode(cls, data: bytes) -> OlmEnvelope:
        """``u8 version, u8 type, opaque body<V>``; exact length, minimal varint."""
        if len(data) < 3 or data[0] != _ENVELOPE_VERSION:
            raise DecodeError("unsupported or truncated pairwise message")
        kind = data[1]
        if kind not in (PREKEY_MESSAGE, NORMAL_MESSAGE):
            raise DecodeError("unknown pairwise message type")
        # RFC 9420 §2.1.2 varint, inlined: 1, 2 or 4 bytes, minimal encoding only.
        first = data[2]
        prefix = first >> 6
        if prefix == 0:
            length, start = first, 3
        elif prefix == 1 and len(data) >= 4:
            length, start = ((first & 0x3F) << 8) | data[3], 4
            if length < 0x40:
                raise DecodeError("non-minimal varint")
        elif prefix == 2 and len(data) >= 6:
            length, start = int.from_bytes(data[2:6], "big") & 0x3FFFFFFF, 6
            if length < 0x4000:
                raise DecodeError("non-minimal varint")
        else:
            raise DecodeError("invalid or truncated varint")
        if len(data) - start != length:
            raise DecodeError("pairwise message length mismatch")
        return cls(message_type=kind, body=bytes(data[start:]))

    @property
    def is_prekey(self) -> bool:
        return self.message_type == PREKEY_MESSAGE

    def _olm(self) -> vodozemac.AnyOlmMessage:
        try:
            return vodozemac.AnyOlmMessage.from_parts(self.message_type, self.body)
        except _VODOZEMAC_ERRORS:
            raise MessageDecryptionError("malformed Olm message") from None


def _message_digest(data: bytes) -> bytes:
    # hashlib, not crypto.kdf.digest: same SHA-256, a third of the cost per call.
    return hashlib.sha256(data).digest()[:_DIGEST_LEN]


class PairwiseSession:
    """An Olm session with one peer device."""

    __slots__ = ("_seen", "_session", "peer_device_id", "peer_identity_key", "peer_username")

    def __init__(
        self,
        session: vodozemac.Session,
        *,
        peer_username: str,
        peer_device_id: str,
        peer_identity_key: bytes,
        seen: OrderedDict[bytes, None] | None = None,
    ) -> None:
        self._session = session
        self.peer_username = peer_username
        self.peer_device_id = peer_device_id
        self.peer_identity_key = peer_identity_key
        self._seen: OrderedDict[bytes, None] = seen if seen is not None else OrderedDict()

    def __repr__(self) -> str:
        return f"PairwiseSession(peer={self.peer_username}/{self.peer_device_id}, <redacted>)"

    @property
    def session_id(self) -> str:
        return self._session.session_id

    # --- opening -------------------------------------------------------------------

    @classmethod
    def outbound(
        cls,
        account: OlmAccount,
        bundle: PrekeyBundle,
        *,
        now_ms: int,
        **checks: Unpack[CertificateChecks],
    ) -> PairwiseSession:
        """Open a session to the bundle's device; the bundle is verified first."""
        bundle.verify(now_ms=now_ms, **checks)
        cert = bundle.certificate
        try:
            session = account._vodozemac().create_outbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(cert.keys.olm_identity_key),
                vodozemac.Curve25519PublicKey.from_bytes(bundle.prekey.public_key),
            )
        except _VODOZEMAC_ERRORS:
            raise PrekeyBundleError("prekey bundle keys are unusable") from None
        return cls(
            session,
            peer_username=cert.username,
            peer_device_id=cert.device_id,
            peer_identity_key=cert.keys.olm_identity_key,
        )

    @classmethod
    def inbound(
        cls,
        account: OlmAccount,
        sender: DeviceCertificate,
        message: bytes,
        *,
        now_ms: int,
        **checks: Unpack[CertificateChecks],
    ) -> tuple[PairwiseSession, bytes]:
        """Accept a prekey message from ``sender``; returns the session and the plaintext.

        The sender's certificate is verified, and the message must come from the
        Olm identity key that certificate names. The account's one-time key is
        consumed: persist the account afterwards.
        """
        verify_certificate(sender, "sender", now_ms=now_ms, **checks)
        envelope = OlmEnvelope.decode(message)
        if not envelope.is_prekey:
            raise SessionMismatch("no session with this device and not a prekey message")
        prekey = envelope._olm().to_pre_key()
        if prekey is None:  # pragma: no cover - type byte checked above
            raise SessionMismatch("not a prekey message")
        try:
            session, padded = account._vodozemac().create_inbound_session(
                vodozemac.Curve25519PublicKey.from_bytes(sender.keys.olm_identity_key), prekey
            )
        except _VODOZEMAC_ERRORS:
            raise MessageDecryptionError("prekey message rejected") from None
        this = cls(
            session,
            peer_username=sender.username,
            peer_device_id=sender.device_id,
            peer_identity_key=sender.keys.olm_identity_key,
        )
        plaintext = this._finish(padded, _message_digest(message))
        return this, plaintext

    # --- messages --------------------------------------------------------------------

    def encrypt(self, plaintext: bytes) -> bytes:
        kind, body = self._session.encrypt(pad(plaintext)).to_parts()
        return OlmEnvelope(message_type=kind, body=body).encode()

    def matches(self, message: bytes) -> bool:
        """Whether a prekey message belongs to this session (for session selection)."""
        envelope = OlmEnvelope.decode(message)
        if not envelope.is_prekey:
            return False
        prekey = envelope._olm().to_pre_key()
        return prekey is not None and self._session.session_matches(prekey)

    def decrypt(self, message: bytes) -> bytes:
        """Decrypt one message. On any failure the session state is unchanged."""
        mdigest = _message_digest(message)
        if mdigest in self._seen:
            raise DuplicateMessage("message already decrypted")
        envelope = OlmEnvelope.decode(message)
        olm = envelope._olm()
        if envelope.is_prekey:
            # The outer fields of a prekey message (base key, one-time key, identity
            # key) are not covered by the inner MAC: a prekey message for this session
            # must name exactly this session's keys, or a relay could get a tampered
            # copy accepted and burn the genuine message's key.
            prekey = olm.to_pre_key()
            if prekey is None or not self._session.session_matches(prekey):
                raise MessageDecryptionError("message could not be decrypted")
        try:
            padded = self._session.decrypt(olm)
        except _VODOZEMAC_ERRORS:
            raise MessageDecryptionError("message could not be decrypted") from None
        return self._finish(padded, mdigest)

    def _finish(self, padded: bytes, mdigest: bytes) -> bytes:
        self._seen[mdigest] = None
        while len(self._seen) > SEEN_MESSAGE_IDS_PER_SESSION:
            self._seen.popitem(last=False)
        try:
            return unpad(padded)
        except DecodeError:
            # Authenticated but malformed: the peer's client is broken or hostile.
            raise PairwiseError("peer sent a malformed padded plaintext") from None

    # --- sealing ---------------------------------------------------------------------

    def _record_id(self) -> bytes:
        return f"{self.peer_username}/{self.peer_device_id}".encode("ascii")

    def seal(self, storage_key: Secret, rng: Random) -> bytes:
        w = Writer()
        w.opaque8(self.peer_username.encode("ascii"))
        w.opaque8(self.peer_device_id.encode("ascii"))
        w.opaque8(self.peer_identity_key)
        w.opaque_v(self._session.pickle(PICKLE_KEY).encode("ascii"))
        w.vector_v(self._seen, lambda w2, d: w2.opaque8(d))
        return seal_record(storage_key, _SESSION_KIND, self._record_id(), w.getvalue(), rng)

    @classmethod
    def restore(
        cls, storage_key: Secret, peer_username: str, peer_device_id: str, sealed: bytes
    ) -> PairwiseSession:
        record_id = f"{peer_username}/{peer_device_id}".encode("ascii")
        try:
            raw = open_record(storage_key, _SESSION_KIND, record_id, sealed)
        except DecryptionError:
            raise SealedStateError("sealed session could not be opened") from None

        def read(r: Reader) -> PairwiseSession:
            username = r.opaque8().decode("ascii")
            device_id = r.opaque8().decode("ascii")
            identity_key = r.opaque8()
            pickle = r.opaque_v().decode("ascii")
            seen = OrderedDict((d, None) for d in r.vector_v(lambda r2: r2.opaque8()))
            try:
                session = vodozemac.Session.from_pickle(pickle, PICKLE_KEY)
            except _VODOZEMAC_ERRORS:
                raise DecodeError("session pickle is invalid") from None
            return cls(
                session,
                peer_username=username,
                peer_device_id=device_id,
                peer_identity_key=identity_key,
                seen=seen,
            )

        try:
            return decode(read, raw)
        except DecodeError:
            raise SealedStateError("sealed session is corrupt") from None
