"""Creating a group (RFC 9420 §11): one member, epoch 0."""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite
from sottovoce.errors import UsageError
from sottovoce.mls.common import Extension, GroupContext
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.epoch import Epoch
from sottovoce.mls.errors import MlsError
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.group.keypackage import (
    check_signing_key,
    default_capabilities,
    key_package_leaf,
    suite_of,
)
from sottovoce.mls.key_schedule import EpochSecrets
from sottovoce.mls.messages import Capabilities, Credential
from sottovoce.mls.proposals import check_group_context_extensions, required_capabilities
from sottovoce.mls.transcript import confirmation_tag
from sottovoce.mls.tree import RatchetTree, check_leaf_node
from sottovoce.mls.treekem import TreeKemPrivate

__all__ = ["new_group"]


def new_group(
    suite: CipherSuite | int,
    *,
    credential: Credential,
    signing_key: SigningKey,
    rng: Random,
    now_ms: int,
    group_id: bytes | None,
    extensions: Sequence[Extension],
    capabilities: Capabilities | None,
    leaf_extensions: Sequence[Extension],
    lifetime_ms: int,
    config: GroupConfig | None,
) -> EpochState:
    """Our state in a new one-member group (see :meth:`Group.create`)."""
    s = suite_of(suite)
    check_signing_key(s, signing_key)
    gid = group_id if group_id is not None else rng(s.nh)
    caps = capabilities if capabilities is not None else default_capabilities(s, credential)
    kp = s.generate_hpke_key_pair(rng)
    leaf = key_package_leaf(
        credential, signing_key, kp.public, caps,
        now_ms=now_ms, lifetime_ms=lifetime_ms, extensions=leaf_extensions,
    )
    try:
        check_leaf_node(
            s,
            leaf,
            group_id=None,
            leaf_index=None,
            required_capabilities=required_capabilities(extensions),
        )
        check_group_context_extensions(extensions, [leaf])
    except MlsError as exc:
        raise UsageError(f"our leaf does not fit the group's extensions: {exc}") from None
    tree = RatchetTree.create(s, leaf)
    context = GroupContext(
        cipher_suite=s.id,
        group_id=gid,
        epoch=0,
        tree_hash=tree.tree_hash(),
        confirmed_transcript_hash=b"",
        extensions=tuple(extensions),
    )
    # §11: a random epoch secret; the interim transcript hash from the
    # confirmation tag over the empty confirmed transcript hash.
    epoch_secrets = EpochSecrets.from_epoch_secret(s, rng(s.nh))
    epoch = Epoch.confirmed(
        s,
        context=context,
        tree=tree,
        private=TreeKemPrivate.for_leaf(s, 0, kp.private),
        secrets=epoch_secrets,
        confirmation_tag=confirmation_tag(s, epoch_secrets.confirmation_key, b""),
    )
    return EpochState.start(
        suite=s, signing_key=signing_key, epoch=epoch, config=config or GroupConfig()
    )
