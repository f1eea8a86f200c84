"""Welcome messages (RFC 9420 §12.4.3.1): building them and opening them.

::

    committer                                     joiner (KeyPackage K)
    ---------                                     ---------------------
    welcome_secret = DeriveSecret(                entry = secrets[ref(K)]
        Extract(joiner_secret, psk_secret),       GroupSecrets = DecryptWithLabel(
        "welcome")                                    init_priv(K), "Welcome",
    (key, nonce) = ExpandWithLabel(...)               encrypted_group_info, entry)
    encrypted_group_info = AEAD(key, nonce,       psk_secret from GroupSecrets.psks
        GroupInfo)                                welcome_secret -> (key, nonce)
    per new member: EncryptWithLabel(             GroupInfo = AEAD-Open(encrypted_group_info)
        init_key, "Welcome",
        encrypted_group_info, GroupSecrets)

These functions only do the cryptography and decoding; checking the tree,
the GroupInfo signature and the confirmation tag, and building the member's
state, is :meth:`sottovoce.mls.group.Group.join_from_welcome`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sottovoce.crypto.labels import decrypt_with_label, encrypt_with_label
from sottovoce.crypto.rng import Random
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import DecodeError, DecryptionError, InvalidKey
from sottovoce.limits import MAX_GROUP_DECODE_BYTES
from sottovoce.mls.errors import InvalidWelcome, NoMatchingKeyPackage
from sottovoce.mls.key_schedule import PreSharedKeyID, welcome_key_nonce, welcome_secret
from sottovoce.mls.messages import (
    EncryptedGroupSecrets,
    GroupInfo,
    GroupSecrets,
    HPKECiphertext,
    KeyPackage,
    PathSecret,
    Welcome,
)
from sottovoce.secret import Secret

__all__ = [
    "WELCOME_LABEL",
    "NewMember",
    "build_welcome",
    "decrypt_group_info",
    "decrypt_group_secrets",
    "encrypt_group_info",
]

#: RFC 9420 §12.4.3.1 EncryptWithLabel label for GroupSecrets.
WELCOME_LABEL = b"Welcome"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewMember:
    """One recipient of a Welcome: its KeyPackage and, with a path, its path secret."""

    key_package: KeyPackage
    path_secret: Secret | None = None


def encrypt_group_info(
    suite: CipherSuite, group_info: GroupInfo, joiner_secret: Secret, psk_secret: Secret
) -> bytes:
    """AEAD-encrypt the signed GroupInfo under the welcome key and nonce (§12.4.3.1)."""
    key, nonce = welcome_key_nonce(suite, welcome_secret(suite, joiner_secret, psk_secret))
    return suite.aead_key(key).seal(nonce, group_info.encode(), b"")


def build_welcome(
    suite: CipherSuite,
    *,
    group_info: GroupInfo,
    joiner_secret: Secret,
    psk_secret: Secret,
    psks: Sequence[PreSharedKeyID],
    new_members: Sequence[NewMember],
    rng: Random,
) -> Welcome:
    """One Welcome covering every member in ``new_members`` (§12.4.3.1).

    ``psks`` must list the commit's PreSharedKey proposals in order (§8.4).
    """
    encrypted_group_info = encrypt_group_info(suite, group_info, joiner_secret, psk_secret)
    entries: list[EncryptedGroupSecrets] = []
    for member in new_members:
        group_secrets = GroupSecrets(
            joiner_secret=joiner_secret,
            path_secret=(
                None if member.path_secret is None else PathSecret(path_secret=member.path_secret)
            ),
            psks=tuple(psks),
        )
        kem_output, ciphertext = encrypt_with_label(
            suite,
            member.key_package.init_key,
            WELCOME_LABEL,
            encrypted_group_info,
            group_secrets.encode(),
            rng,
        )
        entries.append(
            EncryptedGroupSecrets(
                new_member=member.key_package.ref(suite),
                encrypted_group_secrets=HPKECiphertext(
                    kem_output=kem_output, ciphertext=ciphertext
                ),
            )
        )
    return Welcome(
        cipher_suite=suite.id,
        secrets=tuple(entries),
        encrypted_group_info=encrypted_group_info,
    )


def decrypt_group_secrets(
    suite: CipherSuite,
    welcome: Welcome,
    key_package: KeyPackage,
    init_private: Secret | bytes,
) -> GroupSecrets:
    """Find our entry by KeyPackageRef and decrypt it with our init key (§12.4.3.1).

    Raises :class:`NoMatchingKeyPackage` or :class:`InvalidWelcome`.
    """
    entry = welcome.find_secrets(key_package.ref(suite))
    if entry is None:
        raise NoMatchingKeyPackage("the Welcome has no secrets for this KeyPackage")
    ct = entry.encrypted_group_secrets
    try:
        plain = decrypt_with_label(
            suite,
            init_private,
            WELCOME_LABEL,
            welcome.encrypted_group_info,
            ct.kem_output,
            ct.ciphertext,
        )
        group_secrets = GroupSecrets.decode(plain)
    except (DecryptionError, InvalidKey):
        raise InvalidWelcome("the Welcome's group secrets do not decrypt") from None
    except DecodeError:
        raise InvalidWelcome("the Welcome's group secrets do not decode") from None
    if len(group_secrets.joiner_secret) != suite.nh:
        raise InvalidWelcome("joiner_secret is not Nh bytes")
    path_secret = group_secrets.path_secret
    if path_secret is not None and len(path_secret.path_secret) != suite.nh:
        raise InvalidWelcome("path_secret is not Nh bytes")
    return group_secrets


def decrypt_group_info(
    suite: CipherSuite, welcome: Welcome, joiner_secret: Secret, psk_secret: Secret
) -> GroupInfo:
    """Open and decode ``encrypted_group_info`` (§12.4.3.1); the signature is not checked.

    Raises :class:`InvalidWelcome`.
    """
    key, nonce = welcome_key_nonce(suite, welcome_secret(suite, joiner_secret, psk_secret))
    try:
        plain = suite.aead_key(key).open(nonce, welcome.encrypted_group_info, b"")
        return GroupInfo.decode(plain, max_bytes=MAX_GROUP_DECODE_BYTES)
    except DecryptionError:
        raise InvalidWelcome("the Welcome's group info does not decrypt") from None
    except DecodeError:
        raise InvalidWelcome("the Welcome's group info does not decode") from None
