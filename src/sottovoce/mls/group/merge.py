"""Merging a staged commit (RFC 9420 §12.4.2: "consider the new GroupContext the
current state"): the only way a member moves to the next epoch.

A :class:`~sottovoce.mls.epoch.StagedCommit` exists only once a commit passed every
check (created by us, or received and validated), so merging checks nothing of
the commit itself: only that it was staged by this member for its current epoch.
"""

from __future__ import annotations

from dataclasses import replace

from sottovoce.mls.epoch import PastEpoch, StagedCommit
from sottovoce.mls.group.epoch_state import EpochState

__all__ = ["merge_commit"]


def merge_commit(st: EpochState, staged: StagedCommit) -> EpochState:
    """The state in the epoch ``staged`` starts; or, when it removes us, the current
    epoch's state made inactive (a committed ReInit also retires the group).

    Nothing of ``st`` changes but the received commit's handshake key, which the
    merge consumes: the one use of a PrivateMessage key left for this point.
    """
    st.check_staged(staged)
    if staged._pending_key is not None:
        # The PrivateMessage's handshake key: used now, so never again.
        staged._pending_key.consume()
    cleared = replace(st, proposals={}, own_update_keys={}, pending_commit=None)
    nxt = staged._next
    if staged.self_removed or nxt is None:
        return replace(cleared, removed=True, active=False)
    config = st.config
    past = st.past
    if config.max_past_epochs:
        old = st.epoch
        kept = PastEpoch(
            context=old.context,
            tree=old.tree,
            sender_data_secret=old.secrets.sender_data_secret,
            secret_tree=st.secret_tree,
        )
        past = (*past, kept)[-config.max_past_epochs:]
    psks = dict(st.resumption_psks)
    psks[nxt.context.epoch] = nxt.secrets.resumption_psk
    while len(psks) > config.max_resumption_psks:
        del psks[next(iter(psks))]
    reinit, active = st.reinit, st.active
    if staged.reinit is not None:
        # §12.4.2: a committed ReInit retires the group; wait for the Welcome.
        reinit, active = staged.reinit, False
    return replace(
        cleared,
        epoch=nxt,
        secret_tree=nxt.secrets.secret_tree(nxt.tree.n_leaves),
        past=past,
        resumption_psks=psks,
        reinit=reinit,
        active=active,
    )
