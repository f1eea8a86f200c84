"""Key packages (RFC 9420 §10): our own, signed, with the private keys behind them.

Checking a peer's KeyPackage is :func:`sottovoce.mls.proposals.validate_key_package`
(the public view's checks plus the full cipher suite).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.errors import UsageError
from sottovoce.limits import MLS_KEY_PACKAGE_LIFETIME_MS, MLS_LIFETIME_SKEW_MS
from sottovoce.mls.common import Extension, ProtocolVersion
from sottovoce.mls.errors import MlsError
from sottovoce.mls.messages import (
    Capabilities,
    Credential,
    KeyPackage,
    LeafNode,
    LeafNodeSource,
    Lifetime,
)
from sottovoce.mls.proposals import validate_key_package
from sottovoce.secret import Secret

__all__ = [
    "KeyPackagePrivate",
    "check_signing_key",
    "default_capabilities",
    "generate_key_package",
    "key_package_leaf",
    "suite_of",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyPackagePrivate:
    """The private keys behind one KeyPackage: its ``init_key`` and its leaf's encryption key.

    Keep it until the KeyPackage is used (a Welcome arrives) or expires; the
    signing key is the caller's long-term key and is passed separately.
    """

    init_private: Secret
    encryption_private: Secret


def default_capabilities(suite: CipherSuite, credential: Credential) -> Capabilities:
    """MLS 1.0, the given suite, and the credential's own type (§7.2).

    Default extension and proposal types are implicit and are not listed.
    """
    return Capabilities(
        versions=(ProtocolVersion.MLS10,),
        cipher_suites=(suite.id,),
        credentials=(int(credential.credential_type),),
    )


def suite_of(suite: CipherSuite | int) -> CipherSuite:
    return suite if isinstance(suite, CipherSuite) else cipher_suite(suite)


def check_signing_key(suite: CipherSuite, signing_key: SigningKey) -> None:
    if signing_key.scheme is not suite.signature:
        raise UsageError("signing key scheme does not match the cipher suite")


def _lifetime(now_ms: int, lifetime_ms: int) -> Lifetime:
    if now_ms < 0 or lifetime_ms <= 0:
        raise UsageError("now_ms must be non-negative and lifetime_ms positive")
    start = max(0, now_ms - MLS_LIFETIME_SKEW_MS) // 1000
    return Lifetime(not_before=start, not_after=(now_ms + lifetime_ms) // 1000)


def key_package_leaf(
    credential: Credential,
    signing_key: SigningKey,
    encryption_key: bytes,
    capabilities: Capabilities,
    *,
    now_ms: int,
    lifetime_ms: int,
    extensions: Sequence[Extension],
) -> LeafNode:
    """A signed ``key_package`` leaf (§7.2): a KeyPackage's, or a new group's first leaf.

    Its lifetime runs from ``now_ms`` (minus a small clock-skew allowance) for
    ``lifetime_ms``.
    """
    return LeafNode(
        encryption_key=encryption_key,
        signature_key=signing_key.verify_key.data,
        credential=credential,
        capabilities=capabilities,
        leaf_node_source=LeafNodeSource.KEY_PACKAGE,
        lifetime=_lifetime(now_ms, lifetime_ms),
        extensions=tuple(extensions),
    ).signed(signing_key)


def generate_key_package(
    suite: CipherSuite | int,
    credential: Credential,
    signing_key: SigningKey,
    rng: Random,
    now_ms: int,
    lifetime_ms: int = MLS_KEY_PACKAGE_LIFETIME_MS,
    extensions: Sequence[Extension] = (),
    capabilities: Capabilities | None = None,
    leaf_extensions: Sequence[Extension] = (),
) -> tuple[KeyPackage, KeyPackagePrivate]:
    """A fresh, signed KeyPackage (§10) and its private keys.

    ``init_key`` and the leaf ``encryption_key`` are two independent HPKE key
    pairs from ``rng``; the leaf's lifetime runs from ``now_ms`` (minus a small
    clock-skew allowance) for ``lifetime_ms``. The result passes
    :func:`validate_key_package`; a caller mistake (a key of another scheme,
    extensions not listed in ``capabilities``) raises ``UsageError``.
    """
    s = suite_of(suite)
    check_signing_key(s, signing_key)
    caps = capabilities if capabilities is not None else default_capabilities(s, credential)
    init = s.generate_hpke_key_pair(rng)
    enc = s.generate_hpke_key_pair(rng)
    leaf = key_package_leaf(
        credential, signing_key, enc.public, caps,
        now_ms=now_ms, lifetime_ms=lifetime_ms, extensions=leaf_extensions,
    )
    kp = KeyPackage(
        cipher_suite=s.id, init_key=init.public, leaf_node=leaf, extensions=tuple(extensions)
    ).signed(signing_key)
    try:
        validate_key_package(kp, cipher_suite_id=s.id, now_ms=now_ms)
    except MlsError as exc:
        raise UsageError(f"generated KeyPackage would be invalid: {exc}") from None
    return kp, KeyPackagePrivate(init_private=init.private, encryption_private=enc.private)
