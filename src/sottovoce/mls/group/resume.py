"""Resuming a group in a new one (RFC 9420 §11.2 reinitialization, §11.3 branching).

::

    old group (ReInit committed, or any epoch for a branch)
        │ resumption_psk of its current epoch, usage reinit / branch
        ▼
    new group: create (epoch 0) ─► commit Adds + PreSharedKey(resumption) ─► epoch 1
        │                                       │
        │                                       └─► Welcome ─► joiners check
        ▼                                            check_resumption (epoch 1,
    pending commit, merged once accepted             the ReInit's parameters)
"""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import UsageError
from sottovoce.limits import MLS_KEY_PACKAGE_LIFETIME_MS
from sottovoce.mls.common import Extension, GroupContext
from sottovoce.mls.config import GroupConfig
from sottovoce.mls.errors import InvalidWelcome
from sottovoce.mls.group.commit import CommitBundle, create_commit
from sottovoce.mls.group.create import new_group
from sottovoce.mls.group.epoch_state import EpochState
from sottovoce.mls.key_schedule import PreSharedKeyID, PSKType, ResumptionPSKUsage
from sottovoce.mls.messages import Add, Capabilities, KeyPackage, PreSharedKey, ReInit

__all__ = ["branch", "check_resumption", "reinit"]


def reinit(
    st: EpochState,
    key_packages: Sequence[KeyPackage],
    *,
    rng: Random,
    now_ms: int,
    signing_key: SigningKey | None,
    capabilities: Capabilities | None,
    config: GroupConfig | None,
) -> tuple[EpochState, CommitBundle]:
    """The group a committed ReInit asks for (§11.2); see :meth:`Group.reinit`."""
    target = st.reinit
    if target is None:
        raise UsageError("no ReInit was committed in this group")
    psk_id = _resumption_psk_id(st, ResumptionPSKUsage.REINIT, target.cipher_suite, rng)
    key = signing_key if signing_key is not None else st.signing_key
    return _resume_into(st, target, psk_id, key_packages, rng, now_ms, key, capabilities, config)


def branch(
    st: EpochState,
    key_packages: Sequence[KeyPackage],
    *,
    rng: Random,
    now_ms: int,
    group_id: bytes | None,
    extensions: Sequence[Extension] | None,
    config: GroupConfig | None,
) -> tuple[EpochState, CommitBundle]:
    """A subgroup of some members (§11.3); see :meth:`Group.branch`."""
    st.require_active()
    psk_id = _resumption_psk_id(st, ResumptionPSKUsage.BRANCH, st.suite.id, rng)
    # The same version and suite; a new group id, the same extensions by default.
    target = ReInit(
        group_id=group_id if group_id is not None else rng(st.suite.nh),
        cipher_suite=st.suite.id,
        extensions=tuple(st.epoch.context.extensions if extensions is None else extensions),
    )
    return _resume_into(
        st, target, psk_id, key_packages, rng, now_ms, st.signing_key, None, config
    )


def _resumption_psk_id(
    st: EpochState, usage: ResumptionPSKUsage, suite_id: int, rng: Random
) -> PreSharedKeyID:
    """A resumption PSK of our current epoch (§8.6), its nonce ``Nh`` of the new group's suite."""
    return PreSharedKeyID.resumption(usage, st.group_id, st.number, rng(cipher_suite(suite_id).nh))


def _resume_into(
    st: EpochState,
    target: ReInit,
    psk_id: PreSharedKeyID,
    key_packages: Sequence[KeyPackage],
    rng: Random,
    now_ms: int,
    signing_key: SigningKey,
    capabilities: Capabilities | None,
    config: GroupConfig | None,
) -> tuple[EpochState, CommitBundle]:
    """The new group (``target``'s id, suite and extensions, epoch 0) and its first
    commit: the members' ``key_packages`` and the resumption PSK ``psk_id``."""
    value = st.resumption_psks.get(st.number)
    if value is None:  # pragma: no cover - the current epoch's is always kept
        raise UsageError("resumption PSK of the current epoch is missing")
    new = new_group(
        target.cipher_suite,
        credential=st.own_leaf.credential,
        signing_key=signing_key,
        rng=rng,
        now_ms=now_ms,
        group_id=target.group_id,
        extensions=target.extensions,
        capabilities=capabilities,
        leaf_extensions=(),
        lifetime_ms=MLS_KEY_PACKAGE_LIFETIME_MS,
        config=config or st.config,
    )
    return create_commit(
        new,
        rng=rng,
        now_ms=now_ms,
        proposals=[*(Add(key_package=kp) for kp in key_packages), PreSharedKey(psk=psk_id)],
        include_pending=False,
        with_path=True,
        extra_psks={psk_id.encode(): value},
        allowed_psk_usage=psk_id.usage,
    )


def check_resumption(
    context: GroupContext, psks: Sequence[PreSharedKeyID], resumed_from: EpochState | None
) -> None:
    """§11.2 / §11.3 checks for a Welcome that resumes an older group."""
    resumption = [
        p for p in psks
        if p.psktype == PSKType.RESUMPTION
        and p.usage in (ResumptionPSKUsage.REINIT, ResumptionPSKUsage.BRANCH)
    ]
    if not resumption:
        if resumed_from is not None:
            raise InvalidWelcome("the Welcome carries no reinit/branch PSK")
        return
    psk = resumption[0]
    if context.epoch != 1:
        raise InvalidWelcome("a reinit/branch Welcome must start at epoch 1")
    if resumed_from is None:
        return
    if psk.psk_group_id != resumed_from.group_id:
        raise InvalidWelcome("the resumption PSK names another group")
    if psk.usage == ResumptionPSKUsage.REINIT:
        proposal = resumed_from.reinit
        if proposal is None or psk.psk_epoch != resumed_from.number:
            raise InvalidWelcome("the old group did not commit a ReInit at that epoch")
        if (
            context.group_id != proposal.group_id
            or context.version != proposal.version
            or context.cipher_suite != proposal.cipher_suite
            or context.extensions != proposal.extensions
        ):
            raise InvalidWelcome("the new group does not match the ReInit proposal")
    elif (
        context.version != resumed_from.epoch.context.version
        or context.cipher_suite != resumed_from.epoch.context.cipher_suite
    ):
        raise InvalidWelcome("a branch keeps the old group's version and suite")
