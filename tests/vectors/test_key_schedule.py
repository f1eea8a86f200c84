"""RFC 9420 §8 key schedule against mls/key-schedule.json, chaining every epoch."""

from __future__ import annotations

from typing import Any

import pytest

from sottovoce.crypto.suite import cipher_suite
from sottovoce.mls.common import GroupContext
from sottovoce.mls.key_schedule import (
    join_epoch,
    start_epoch,
    welcome_key_nonce,
    welcome_secret,
)
from sottovoce.secret import Secret
from tests.vectors.loader import params

VECTOR_FILE = "mls/key-schedule.json"

_EPOCH_SECRETS = (
    "sender_data_secret",
    "encryption_secret",
    "exporter_secret",
    "external_secret",
    "confirmation_key",
    "membership_key",
    "resumption_psk",
    "epoch_authenticator",
    "init_secret",
)


@pytest.mark.parametrize("vector", params(VECTOR_FILE))
def test_rfc9420_8_key_schedule(vector: dict[str, Any]) -> None:
    """GroupContext bytes, every epoch secret, external_pub and the exporter, epoch by epoch."""
    suite = cipher_suite(vector["cipher_suite"])
    group_id = bytes.fromhex(vector["group_id"])
    init_secret: bytes | Secret = bytes.fromhex(vector["initial_init_secret"])
    for epoch, e in enumerate(vector["epochs"]):
        gc = GroupContext(
            cipher_suite=suite.id,
            group_id=group_id,
            epoch=epoch,
            tree_hash=bytes.fromhex(e["tree_hash"]),
            confirmed_transcript_hash=bytes.fromhex(e["confirmed_transcript_hash"]),
            extensions=(),
        )
        assert gc.encode().hex() == e["group_context"]
        commit_secret = bytes.fromhex(e["commit_secret"])
        psk = bytes.fromhex(e["psk_secret"])

        t = start_epoch(
            suite, init_secret=init_secret, commit_secret=commit_secret, psk_secret=psk,
            group_context=gc,
        )
        assert t.joiner_secret.expose().hex() == e["joiner_secret"]
        assert t.welcome_secret.expose().hex() == e["welcome_secret"]
        for name in _EPOCH_SECRETS:
            assert getattr(t.epoch, name).expose().hex() == e[name], name
        assert t.epoch.external_pub().hex() == e["external_pub"]
        x = e["exporter"]
        exported = t.epoch.exporter(x["label"].encode(), bytes.fromhex(x["context"]), x["length"])
        assert exported.expose().hex() == x["secret"]

        # A Welcome joiner holding only joiner_secret and psk_secret reaches the
        # same welcome key and epoch secrets (§12.4.3.1).
        joined = join_epoch(
            suite, joiner_secret=t.joiner_secret, psk_secret=psk, group_context=gc.encode()
        )
        assert welcome_secret(suite, t.joiner_secret, psk) == t.welcome_secret
        assert joined.welcome_key_nonce() == welcome_key_nonce(suite, t.welcome_secret)
        assert joined.epoch == t.epoch

        init_secret = t.epoch.init_secret
