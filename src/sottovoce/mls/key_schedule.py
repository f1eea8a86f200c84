"""The MLS key schedule (RFC 9420 §8), pre-shared keys (§8.4) and exporters (§8.5).

::

                 init_secret[n-1]
                       |
    commit_secret --> Extract
                       |
                 ExpandWithLabel(., "joiner", GroupContext[n], Nh)
                       |
                 joiner_secret  ---------------------- (sent in Welcome GroupSecrets)
                       |
    psk_secret    --> Extract
    (or 0)             |
                       +--> DeriveSecret(., "welcome") = welcome_secret
                       |                                 (Welcome key/nonce, §12.4.3.1)
                 ExpandWithLabel(., "epoch", GroupContext[n], Nh)
                       |
                 epoch_secret --+--> DeriveSecret(., "sender data")    sender_data_secret
                       |        +--> DeriveSecret(., "encryption")     encryption_secret
                       |        +--> DeriveSecret(., "exporter")       exporter_secret
                       |        +--> DeriveSecret(., "external")       external_secret
                       |        +--> DeriveSecret(., "confirm")        confirmation_key
                       |        +--> DeriveSecret(., "membership")     membership_key
                       |        +--> DeriveSecret(., "resumption")     resumption_psk
                       |        +--> DeriveSecret(., "authentication") epoch_authenticator
                       |
                 DeriveSecret(., "init") = init_secret[n]

KDF.Extract takes its salt from above and its IKM from the left. Every stored
secret is a :class:`Secret`; ``epoch_secret`` itself is never kept (§9.2: it is
consumed once the epoch secrets exist). The committer keeps the
:class:`EpochTransition`'s ``joiner_secret``/``welcome_secret`` only while it
builds Welcome messages; the group state keeps only :class:`EpochSecrets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.codec.tls import Writer
from sottovoce.crypto.hpke import KemKeyPair
from sottovoce.crypto.labels import derive_secret, expand_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls.common import GroupContext
from sottovoce.mls.common import PreSharedKeyID as PreSharedKeyID
from sottovoce.mls.common import PSKType as PSKType
from sottovoce.mls.common import ResumptionPSKUsage as ResumptionPSKUsage
from sottovoce.mls.secret_tree import SecretTree
from sottovoce.secret import Secret

__all__ = [
    "EXTERNAL_INIT_EXPORT_LABEL",
    "EpochSecrets",
    "EpochTransition",
    "PSKType",
    "PreSharedKeyID",
    "ResumptionPSKUsage",
    "external_init_receive",
    "external_init_send",
    "join_epoch",
    "joiner_secret",
    "mls_exporter",
    "psk_label",
    "psk_secret",
    "start_epoch",
    "welcome_key_nonce",
    "welcome_secret",
    "zero_secret",
]

SecretLike = bytes | Secret

#: §8.3: the HPKE export label for an external init secret.
EXTERNAL_INIT_EXPORT_LABEL = b"MLS 1.0 external init secret"


def _raw(value: SecretLike) -> bytes:
    return value.expose() if isinstance(value, Secret) else bytes(value)


def _context_bytes(group_context: GroupContext | bytes) -> bytes:
    return group_context.encode() if isinstance(group_context, GroupContext) else group_context


def _check_nh(suite: CipherSuite, value: bytes, name: str) -> None:
    if len(value) != suite.nh:
        raise UsageError(f"{name} must be Nh bytes")


def zero_secret(suite: CipherSuite) -> Secret:
    """The all-zero ``Nh``-byte value: commit_secret without a path, psk_secret without PSKs."""
    return Secret(bytes(suite.nh))


# --- epoch secrets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochSecrets:
    """The secrets derived from one epoch_secret (§8, table "Epoch-Derived Secrets")."""

    suite: CipherSuite
    sender_data_secret: Secret
    encryption_secret: Secret
    exporter_secret: Secret
    external_secret: Secret
    confirmation_key: Secret
    membership_key: Secret
    resumption_psk: Secret
    epoch_authenticator: Secret
    #: init_secret[n], the input to the next epoch's schedule.
    init_secret: Secret

    @classmethod
    def from_epoch_secret(cls, suite: CipherSuite, epoch_secret: SecretLike) -> EpochSecrets:
        s = _raw(epoch_secret)

        def d(label: bytes) -> Secret:
            return Secret(derive_secret(suite, s, label))

        return cls(
            suite=suite,
            sender_data_secret=d(b"sender data"),
            encryption_secret=d(b"encryption"),
            exporter_secret=d(b"exporter"),
            external_secret=d(b"external"),
            confirmation_key=d(b"confirm"),
            membership_key=d(b"membership"),
            resumption_psk=d(b"resumption"),
            epoch_authenticator=d(b"authentication"),
            init_secret=d(b"init"),
        )

    def external_key_pair(self) -> KemKeyPair:
        """§8: ``external_priv, external_pub = KEM.DeriveKeyPair(external_secret)``."""
        return self.suite.derive_hpke_key_pair(self.external_secret.expose())

    def external_pub(self) -> bytes:
        """The HPKE public key published in GroupInfo's ``external_pub`` extension."""
        return self.external_key_pair().public

    def exporter(self, label: bytes, context: bytes, length: int) -> Secret:
        """MLS-Exporter(label, context, length) (§8.5)."""
        return mls_exporter(self.suite, self.exporter_secret, label, context, length)

    def secret_tree(self, n_leaves: int) -> SecretTree:
        """A fresh §9 secret tree rooted at this epoch's encryption_secret."""
        return SecretTree(self.suite, self.encryption_secret, n_leaves)


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochTransition:
    """One run of the schedule: the Welcome-side secrets plus the new epoch's secrets."""

    joiner_secret: Secret
    welcome_secret: Secret
    epoch: EpochSecrets

    def welcome_key_nonce(self) -> tuple[bytes, bytes]:
        return welcome_key_nonce(self.epoch.suite, self.welcome_secret)


def joiner_secret(
    suite: CipherSuite,
    init_secret: SecretLike,
    commit_secret: SecretLike,
    group_context: GroupContext | bytes,
) -> Secret:
    """``ExpandWithLabel(Extract(init_secret, commit_secret), "joiner", GroupContext, Nh)``."""
    init, commit = _raw(init_secret), _raw(commit_secret)
    _check_nh(suite, init, "init_secret")
    _check_nh(suite, commit, "commit_secret")
    prk = suite.extract(init, commit)
    return Secret(expand_with_label(suite, prk, b"joiner", _context_bytes(group_context), suite.nh))


def _member_prk(suite: CipherSuite, joiner: SecretLike, psk: SecretLike) -> bytes:
    j, p = _raw(joiner), _raw(psk)
    _check_nh(suite, j, "joiner_secret")
    _check_nh(suite, p, "psk_secret")
    return suite.extract(j, p)


def welcome_secret(suite: CipherSuite, joiner: SecretLike, psk: SecretLike) -> Secret:
    """``DeriveSecret(Extract(joiner_secret, psk_secret), "welcome")``.

    A joiner needs this before it can read the GroupContext (it is inside the
    encrypted GroupInfo), hence a function of its own.
    """
    return Secret(derive_secret(suite, _member_prk(suite, joiner, psk), b"welcome"))


def join_epoch(
    suite: CipherSuite,
    *,
    joiner_secret: SecretLike,
    psk_secret: SecretLike,
    group_context: GroupContext | bytes,
) -> EpochTransition:
    """The schedule from a known joiner_secret (Welcome join, §12.4.3.1)."""
    prk = _member_prk(suite, joiner_secret, psk_secret)
    epoch_secret = expand_with_label(suite, prk, b"epoch", _context_bytes(group_context), suite.nh)
    return EpochTransition(
        joiner_secret=Secret(_raw(joiner_secret)),
        welcome_secret=Secret(derive_secret(suite, prk, b"welcome")),
        epoch=EpochSecrets.from_epoch_secret(suite, epoch_secret),
    )


def start_epoch(
    suite: CipherSuite,
    *,
    init_secret: SecretLike,
    commit_secret: SecretLike,
    psk_secret: SecretLike,
    group_context: GroupContext | bytes,
) -> EpochTransition:
    """The full schedule for epoch n from init_secret[n-1] (§8).

    ``group_context`` is the new epoch's GroupContext (epoch = n). Pass
    :func:`zero_secret` for a commit without a path and for no PSKs.
    """
    joiner = joiner_secret(suite, init_secret, commit_secret, group_context)
    return join_epoch(
        suite, joiner_secret=joiner, psk_secret=psk_secret, group_context=group_context
    )


def welcome_key_nonce(suite: CipherSuite, welcome_secret: SecretLike) -> tuple[bytes, bytes]:
    """§12.4.3.1: ``(welcome_key, welcome_nonce)`` encrypting the Welcome's GroupInfo."""
    s = _raw(welcome_secret)
    key = expand_with_label(suite, s, b"key", b"", suite.aead_key_size)
    nonce = expand_with_label(suite, s, b"nonce", b"", suite.aead_nonce_size)
    return key, nonce


def mls_exporter(
    suite: CipherSuite, exporter_secret: SecretLike, label: bytes, context: bytes, length: int
) -> Secret:
    """MLS-Exporter (§8.5) = ExpandWithLabel(DeriveSecret(exporter_secret, label),
    "exported", Hash(context), length)."""
    inner = derive_secret(suite, _raw(exporter_secret), label)
    return Secret(expand_with_label(suite, inner, b"exported", suite.digest(context), length))


# --- external init (§8.3) ---------------------------------------------------------------


def external_init_send(
    suite: CipherSuite, external_pub: bytes, rng: Random
) -> tuple[bytes, Secret]:
    """Joiner side of §8.3: ``(kem_output, init_secret)`` from the group's external_pub."""
    kem_output, ctx = suite.hpke.setup_sender(
        external_pub, b"", ikm_e=rng(suite.hpke.private_key_size)
    )
    return kem_output, Secret(ctx.export(EXTERNAL_INIT_EXPORT_LABEL, suite.nh))


def external_init_receive(
    suite: CipherSuite, external_priv: SecretLike, kem_output: bytes
) -> Secret:
    """Member side of §8.3: the init_secret from an ExternalInit proposal's kem_output.

    Raises ``DecryptionError`` if the KEM output is invalid.
    """
    ctx = suite.hpke.setup_recipient(kem_output, external_priv, b"")
    return Secret(ctx.export(EXTERNAL_INIT_EXPORT_LABEL, suite.nh))


# --- pre-shared keys (§8.4) ------------------------------------------------------------


def psk_label(psk_id: PreSharedKeyID, index: int, count: int) -> bytes:
    """PSKLabel (§8.4): ``PreSharedKeyID id; uint16 index; uint16 count``."""
    if not 0 <= index < count <= 0xFFFF:
        raise UsageError("PSK index/count out of range")
    w = Writer()
    psk_id.write(w)
    w.u16(index)
    w.u16(count)
    return w.getvalue()


def psk_secret(suite: CipherSuite, psks: Sequence[tuple[PreSharedKeyID, SecretLike]]) -> Secret:
    """§8.4 psk_secret chained over ``psks`` in order; all-zero when there are none."""
    count = len(psks)
    if count > 0xFFFF:
        raise UsageError("too many PSKs")
    zero = bytes(suite.nh)
    secret = zero
    for index, (psk_id, psk) in enumerate(psks):
        extracted = suite.extract(zero, _raw(psk))
        psk_input = expand_with_label(
            suite, extracted, b"derived psk", psk_label(psk_id, index, count), suite.nh
        )
        secret = suite.extract(psk_input, secret)
    return Secret(secret)
