"""The server's checks of account statements (server/account_keys.py), the statement cap
(storage/statements.py) and the commands' help (docs/protocol.md §Succession)."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import pytest

from sottovoce.identity import AccountKey, RevocationStatement
from sottovoce.identity.succession import Recovery, Succession, kind_of
from sottovoce.protocol.events import SignedStatement
from sottovoce.server.account_keys import check_recovery_key, decode_statements
from sottovoce.server.errors import WireFailure
from sottovoce.server.logs import JsonLogger
from sottovoce.server.storage import statements as statements_ops
from sottovoce.server.storage.base import StatementsFull
from sottovoce.server.storage.sqlite import SqliteStorage
from tests.help_promises import assert_help_says
from tests.unit.test_succession_orderings import NOW, Story


def _key() -> AccountKey:
    return AccountKey.generate(secrets.token_bytes)


def _wire(st: Succession | Recovery | RevocationStatement) -> SignedStatement:
    return SignedStatement(kind=kind_of(st), data=st.encode())


def test_a_recovery_key_must_be_a_public_key_other_than_the_account_key() -> None:
    ak = _key().public
    check_recovery_key(None, ak)  # an older client registers without one
    check_recovery_key(_key().public, ak)
    for bad in (ak, b"\xff" * 32):
        with pytest.raises(WireFailure) as refused:
            check_recovery_key(bad, ak)
        assert refused.value.code == "invalid_recovery_key"


def test_statements_are_checked_before_anything_is_kept() -> None:
    old, new = _key(), _key()
    good = Succession.issue(old, new, username="alice", now_ms=NOW)
    assert decode_statements("alice", [_wire(good)]) == [good]
    forged = Succession(username="alice", old_key=old.public, new_key=new.public,
                        signed_at_ms=NOW, signature=good.signature,
                        new_signature=good.signature)
    revocation = RevocationStatement.issue(old, username="alice", device_id="d1", now_ms=NOW)
    tampered = RevocationStatement(username="alice", account_key=new.public, device_id="d1",
                                   revoked_at_ms=NOW, signature=revocation.signature)
    cases = [
        ([_wire(good)], "bob", "about another account"),
        ([_wire(forged)], "alice", "signature is invalid"),
        ([_wire(tampered)], "alice", "signature is invalid"),
        ([SignedStatement(kind="succession", data=b"junk")], "alice", "does not decode"),
    ]
    for items, user, why in cases:
        with pytest.raises(WireFailure) as refused:
            decode_statements(user, items)
        assert refused.value.code == "invalid_statement" and why in str(refused.value)


async def test_the_statement_cap_lets_recoveries_through(tmp_path: Path) -> None:
    st = SqliteStorage(tmp_path / "db.sqlite3", logger=JsonLogger(io.StringIO()))
    await st.open()
    try:
        story = Story("alice")
        await st.create_account("alice", story.ak0.public, "phone", story.first[0].encode(),
                                NOW, story.rk0.public)
        cap = 3  # the registration's certificate is one
        thief = story.bundles["thief"]
        await st._write_op(statements_ops.apply_statements, "alice",
                           thief[:2], NOW, cap)
        with pytest.raises(StatementsFull):
            await st._write_op(statements_ops.apply_statements, "alice",
                               story.bundles["thief2"][:1], NOW, cap)
        applied = await st._write_op(statements_ops.apply_statements, "alice",
                                     story.bundles["recovery"][:1], NOW, cap)
        assert applied.head.account_key == story.recovered
    finally:
        await st.close()


@pytest.mark.parametrize(("argv", "promises"), [
    (["device", "revoke", "--help"],
     ["new account key succeeds the old one", "closes ID's connections", "every room removes",
      "refuses anything signed by the old key", "keys changed by succession", "account recover"]),
    (["device", "renew", "--help"], ["fresh certificate", "expired"]),
    (["account", "recover", "--help"],
     ["recovery code", "cancels every succession", "new device", "new recovery code",
      "SOTTOVOCE_RECOVERY_CODE"]),
    (["account", "create", "--help"], ["recovery code, once", "account recover"]),
])
def test_the_commands_help_says_what_they_do(
    argv: list[str], promises: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert_help_says(argv, promises, capsys)
