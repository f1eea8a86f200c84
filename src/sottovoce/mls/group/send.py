"""Sending (RFC 9420 §6.2, §6.3, §12.1): application data and proposals, framed
and protected the way the group's config says.

Every PrivateMessage takes the next key of our own ratchet in the secret tree
(§9), so save the state before sending what these functions return.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sottovoce.crypto.rng import Random
from sottovoce.errors import UsageError
from sottovoce.limits import MLS_MAX_PENDING_PROPOSALS
from sottovoce.mls.common import Extension, WireFormat
from sottovoce.mls.framing import (
    AuthenticatedContent,
    MLSMessage,
    PrivateMessage,
    PublicMessage,
    Sender,
    authenticate,
    protect_private,
    protect_public,
)
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.messages import Capabilities, LeafNodeSource, Proposal, Update
from sottovoce.mls.proposals import QueuedProposal, check_proposal

__all__ = ["encrypt_application", "propose", "propose_update", "protect"]


def protect(st: EpochState, auth: AuthenticatedContent, rng: Random) -> bytes:
    """``auth`` as an MLSMessage in its wire format: a PublicMessage with our membership
    tag (§6.2), or a PrivateMessage under our next ratchet key (§6.3)."""
    epoch = st.epoch
    if auth.wire_format == WireFormat.PUBLIC_MESSAGE:
        body: PublicMessage | PrivateMessage = protect_public(
            st.suite, auth, epoch.secrets.membership_key, epoch.context
        )
    else:
        body = protect_private(
            st.suite,
            auth,
            st.secret_tree,
            epoch.secrets.sender_data_secret,
            rng,
            padding=st.config.padding,
        )
    return MLSMessage(body=body).encode()


def encrypt_application(
    st: EpochState, data: bytes, *, rng: Random, authenticated_data: bytes
) -> bytes:
    """Application data as an MLSMessage(PrivateMessage) (§6.3).

    RFC 9420 §12.4: a member that has seen valid proposals in this epoch must
    commit them before sending application data.
    """
    st.require_active()
    if st.proposals:
        raise UsageError("commit the pending proposals before sending application data")
    content = st.framed(bytes(data), authenticated_data)
    auth = authenticate(st.signing_key, WireFormat.PRIVATE_MESSAGE, content, st.epoch.context)
    return protect(st, auth, rng)


def propose(
    st: EpochState, proposal: Proposal, *, rng: Random, authenticated_data: bytes
) -> tuple[EpochState, bytes]:
    """Send ``proposal`` by itself (§12.1); it is checked like a received one and
    cached, so our own next commit includes it by reference."""
    st.require_active()
    if isinstance(proposal, Update):
        raise UsageError("use propose_update(), which keeps the new leaf's private key")
    return _send_proposal(st, proposal, rng, authenticated_data)


def propose_update(
    st: EpochState,
    *,
    rng: Random,
    capabilities: Capabilities | None,
    leaf_extensions: Sequence[Extension] | None,
    authenticated_data: bytes,
) -> tuple[EpochState, bytes]:
    """An Update with a fresh leaf encryption key for ourselves (§12.1.2); its private
    key is kept until the epoch ends."""
    st.require_active()
    kp = st.suite.generate_hpke_key_pair(rng)
    current = st.own_leaf
    leaf = replace(
        current,
        encryption_key=kp.public,
        leaf_node_source=LeafNodeSource.UPDATE,
        lifetime=None,
        parent_hash=b"",
        capabilities=current.capabilities if capabilities is None else capabilities,
        extensions=current.extensions if leaf_extensions is None else tuple(leaf_extensions),
        signature=b"",
    ).signed(st.signing_key, st.group_id, st.own_index)
    st, message = _send_proposal(st, Update(leaf_node=leaf), rng, authenticated_data)
    return replace(st, own_update_keys={**st.own_update_keys, kp.public: kp.private}), message


def _send_proposal(
    st: EpochState, proposal: Proposal, rng: Random, authenticated_data: bytes
) -> tuple[EpochState, bytes]:
    me = Sender.member(st.own_index)
    check_proposal(st.suite, st.epoch.tree, st.epoch.context, proposal, me)
    if len(st.proposals) >= MLS_MAX_PENDING_PROPOSALS:
        raise UsageError("too many pending proposals; commit first")
    content = st.framed(proposal, authenticated_data)
    auth = authenticate(st.signing_key, st.config.handshake_wire_format, content, st.epoch.context)
    ref = auth.proposal_ref(st.suite)
    message = protect(st, auth, rng)
    queued = QueuedProposal(proposal=proposal, sender=me, ref=ref)
    return replace(st, proposals={**st.proposals, ref: queued}), message
