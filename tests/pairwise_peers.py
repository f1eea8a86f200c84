"""Two devices in memory for the pairwise layer (docs/architecture.md §Testing).

Builds everything a device publishes -- account key, device signing key, Olm
account, device certificate, signed one-time keys -- with no I/O, so that unit
tests and ``bench/pairwise.py`` wire two devices together the same way:

    alice = make_device("alice", "phone", rng)
    bob = make_device("bob", "laptop", rng)
    a_to_b, b_to_a = establish(alice, bob)

Randomness is passed in (tests: the seeded ``rng`` fixture; bench:
``secrets.token_bytes``); the clock is the fixed :data:`NOW_MS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sottovoce.crypto.rng import Random
from sottovoce.identity import AccountKey, DeviceCertificate, DevicePublicKeys, DeviceSigningKey
from sottovoce.limits import DEVICE_CERT_MAX_LIFETIME_MS
from sottovoce.pairwise import OlmAccount, PairwiseSession, PrekeyBundle, SignedPrekey

#: A fixed "now" (2023-11-14T22:13:20Z) so certificate windows are reproducible.
NOW_MS = 1_700_000_000_000
#: One day, for moving the clock in expiry tests.
DAY_MS = 24 * 3600 * 1000


@dataclass
class Device:
    """One device: its keys, its Olm account, its certificate and unpublished stock."""

    username: str
    device_id: str
    account_key: AccountKey
    device_key: DeviceSigningKey
    olm: OlmAccount
    certificate: DeviceCertificate
    one_time_keys: list[SignedPrekey] = field(default_factory=list)

    def bundle(self, prekey: SignedPrekey | None = None) -> PrekeyBundle:
        """What the directory would hand out: the certificate and one prekey.

        Without ``prekey``, hands out (and forgets) the next one-time key, as the
        directory does; a fresh batch is made when the stock is empty.
        """
        if prekey is None:
            if not self.one_time_keys:
                self.one_time_keys = self.olm.new_one_time_keys(self.device_key, 5)
            prekey = self.one_time_keys.pop(0)
        return PrekeyBundle(certificate=self.certificate, prekey=prekey)


def make_device(
    username: str,
    device_id: str,
    rng: Random,
    *,
    account_key: AccountKey | None = None,
    now_ms: int = NOW_MS,
    lifetime_ms: int = DEVICE_CERT_MAX_LIFETIME_MS,
    one_time_keys: int = 5,
) -> Device:
    """A device of ``username`` whose certificate ``account_key`` (fresh if None) signs."""
    ak = account_key if account_key is not None else AccountKey.generate(rng)
    device_key = DeviceSigningKey.generate(rng)
    olm = OlmAccount.create(username=username, device_id=device_id)
    keys = DevicePublicKeys(
        signing_key=device_key.public,
        olm_identity_key=olm.identity_key,
        olm_signing_key=olm.signing_key,
    )
    cert = DeviceCertificate.issue(
        ak,
        username=username,
        device_id=device_id,
        keys=keys,
        now_ms=now_ms,
        lifetime_ms=lifetime_ms,
    )
    otks = olm.new_one_time_keys(device_key, one_time_keys) if one_time_keys else []
    return Device(
        username=username,
        device_id=device_id,
        account_key=ak,
        device_key=device_key,
        olm=olm,
        certificate=cert,
        one_time_keys=otks,
    )


def establish(
    initiator: Device,
    responder: Device,
    *,
    bundle: PrekeyBundle | None = None,
    now_ms: int = NOW_MS,
) -> tuple[PairwiseSession, PairwiseSession]:
    """Open a session both ways: prekey message out, inbound session, one reply back.

    After the reply the initiator has seen the responder's ratchet key, so both
    sides send normal (non-prekey) messages from here on.
    """
    out = PairwiseSession.outbound(
        initiator.olm,
        bundle if bundle is not None else responder.bundle(),
        now_ms=now_ms,
        account_key=responder.account_key.public,
        username=responder.username,
    )
    first = out.encrypt(b"hello")
    inb, plaintext = PairwiseSession.inbound(
        responder.olm,
        initiator.certificate,
        first,
        now_ms=now_ms,
        account_key=initiator.account_key.public,
        username=initiator.username,
    )
    if plaintext != b"hello":  # pragma: no cover - would be a bug in the session layer
        raise RuntimeError("handshake plaintext mismatch")
    if out.decrypt(inb.encrypt(b"hello back")) != b"hello back":  # pragma: no cover
        raise RuntimeError("handshake reply mismatch")
    return out, inb
