"""MLS on the hybrid X-Wing suite (0xF001): the whole group lifecycle, as for suite 1.

TreeKEM path secrets, Welcome group secrets and external init all travel under
X-Wing HPKE here (1,216-byte public keys, 1,120-byte encapsulations), so a join
by Welcome, a remove that re-keys, and an external commit all exercise it.
"""

from __future__ import annotations

import pytest

from sottovoce.crypto import xwing
from sottovoce.crypto.mls_suites import XWING_SUITE_ID
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.common import WireFormat
from sottovoce.mls.group import (
    ApplicationMessage,
    Group,
    GroupConfig,
    KeyPackagePrivate,
    StagedCommit,
    UnsupportedCipherSuite,
    WrongEpoch,
    generate_key_package,
    validate_key_package,
)
from sottovoce.mls.messages import Credential, KeyPackage

NOW = 1_700_000_000_000
SUITE = cipher_suite(XWING_SUITE_ID)
CONFIG = GroupConfig(handshake_wire_format=WireFormat.PRIVATE_MESSAGE)


def _key_package(
    name: str, rng: Random, suite_id: int = XWING_SUITE_ID
) -> tuple[Credential, SigningKey, KeyPackage, KeyPackagePrivate]:
    suite = cipher_suite(suite_id)
    sk = suite.generate_signing_key(rng)
    cred = Credential.basic(name.encode())
    kp, priv = generate_key_package(suite, cred, sk, rng, NOW)
    return cred, sk, kp, priv


def _sync(groups: dict[str, Group]) -> None:
    assert len({g.epoch_authenticator.expose() for g in groups.values()}) == 1
    assert len({g.export_secret(b"t", b"", 32).expose() for g in groups.values()}) == 1


def test_hybrid_group_welcome_messages_remove_and_external_join(rng: Random) -> None:
    a_cred, a_sk, _, _ = _key_package("alice", rng)
    alice = Group.create(SUITE, credential=a_cred, signing_key=a_sk, rng=rng, now_ms=NOW,
                         config=CONFIG)
    joiners = {n: _key_package(n, rng) for n in ("bob", "carol")}
    assert all(len(kp.init_key) == xwing.PUBLIC_KEY_SIZE for _, _, kp, _ in joiners.values())
    for _, _, kp, _ in joiners.values():
        validate_key_package(kp, cipher_suite_id=XWING_SUITE_ID, now_ms=NOW)
    bundle = alice.add_members([kp for _, _, kp, _ in joiners.values()], rng=rng)
    alice.merge_pending_commit()
    assert bundle.welcome is not None
    groups = {"alice": alice}
    for n, (_, sk, kp, priv) in joiners.items():
        groups[n] = Group.join_from_welcome(bundle.welcome, kp, priv, signing_key=sk,
                                            now_ms=NOW, config=CONFIG)
    _sync(groups)
    assert groups["bob"].suite.id == XWING_SUITE_ID
    # Messages both ways.
    for sender in ("alice", "bob"):
        msg = groups[sender].encrypt_application(sender.encode(), rng=rng)
        for name, g in groups.items():
            if name != sender:
                assert g.process_message(msg).content == ApplicationMessage(sender.encode())
    # Bob removes carol: the commit carries an X-Wing-encrypted update path.
    commit = groups["bob"].remove_members([groups["carol"].own_leaf_index], rng=rng)
    groups["bob"].merge_pending_commit()
    for name in ("alice", "carol"):
        staged = groups[name].process_message(commit.commit).content
        assert isinstance(staged, StagedCommit)
        groups[name].merge_staged_commit(staged)
    carol = groups.pop("carol")
    assert not carol.is_active
    _sync(groups)
    later = groups["alice"].encrypt_application(b"after", rng=rng)
    with pytest.raises(WrongEpoch):
        carol.process_message(later)
    # External commit: external init is X-Wing HPKE export.
    d_cred, d_sk, _, _ = _key_package("dave", rng)
    join = Group.join_by_external_commit(groups["alice"].group_info(), credential=d_cred,
                                         signing_key=d_sk, rng=rng, now_ms=NOW, config=CONFIG)
    for g in groups.values():
        staged = g.process_message(join.commit).content
        assert isinstance(staged, StagedCommit) and staged.external
        g.merge_staged_commit(staged)
    groups["dave"] = join.group
    _sync(groups)


def test_classical_key_package_is_refused_by_a_hybrid_group(rng: Random) -> None:
    a_cred, a_sk, _, _ = _key_package("alice", rng)
    alice = Group.create(SUITE, credential=a_cred, signing_key=a_sk, rng=rng, now_ms=NOW)
    _, _, classical, _ = _key_package("bob", rng, suite_id=1)
    with pytest.raises(UnsupportedCipherSuite):
        validate_key_package(classical, cipher_suite_id=XWING_SUITE_ID, now_ms=NOW)
    with pytest.raises(UnsupportedCipherSuite):
        alice.add_members([classical], rng=rng)
