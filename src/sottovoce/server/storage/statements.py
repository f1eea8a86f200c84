"""An account's signed statements, and the devices they leave active, written once for
every engine (:mod:`.txn`).

The server keeps every valid statement it is given about an account (certificates,
revocations, successions, recoveries) and never decides by arrival order: after each
upload it runs :func:`sottovoce.identity.succession.resolve` over the whole set and
makes the account row and the device rows say what that concludes: the account key is
the head of the chain, the active devices are the head key's certificates (each with
its newest certificate), every other device is revoked. A device revoked by one
statement and certified again by a later ruling chain (the owner's recovery undoing a
thief's succession) is active again.
"""

from __future__ import annotations

from collections.abc import Sequence

from sottovoce.errors import DecodeError, IdentityError
from sottovoce.identity.certificates import DeviceCertificate, RevocationStatement
from sottovoce.identity.succession import (
    ChainHead,
    Genesis,
    Recovery,
    Statement,
    Succession,
    decode_statement,
    kind_of,
    resolve,
    signed_revocation,
)
from sottovoce.kt.map import ChangeKind
from sottovoce.server.storage import accounts
from sottovoce.server.storage import kt as kt_tables
from sottovoce.server.storage.accounts import DEVICE_OWNED
from sottovoce.server.storage.base import (
    Applied,
    StatementsFull,
    UnknownAccount,
)
from sottovoce.server.storage.txn import DevId, Txn, blob, execute, one, rows


def load(user: str) -> Txn[tuple[Genesis, list[Statement]] | None]:
    """The account's genesis and every statement it keeps (None: no live account)."""
    found = yield one(
        "SELECT genesis_key, recovery_key, account_key FROM accounts "
        "WHERE user_id=? AND deleted_at IS NULL", user,
    )
    if found is None:
        return None
    genesis = Genesis(username=user, account_key=blob(found[0] if found[0] is not None
                                                       else found[2]),
                      recovery_key=blob(found[1]) if found[1] is not None else b"")
    stored = yield rows("SELECT kind, body FROM account_statements WHERE user_id=?", user)
    statements: list[Statement] = []
    for kind, body in stored:
        try:
            statements.append(decode_statement(str(kind), blob(body)))
        except DecodeError:  # pragma: no cover -- only decodable statements are stored
            continue
    return genesis, statements


def apply_statements(
    user: str, new: Sequence[Statement], now: int, cap: int,
    kt: kt_tables.KTWriter | None = None,
) -> Txn[Applied]:
    """Keep ``new`` (each already decoded and checked for ``user`` by its own signatures),
    resolve the account and bring its key and devices in line.

    Successions and recoveries are kept whatever they say (a second succession of one key
    is a fork, and freezes the account); certificates and revocations only if signed by
    the key that rules once those are counted, else none of them is kept and
    :attr:`Applied.refused` says why. Raises :class:`UnknownAccount`, and
    :class:`StatementsFull` when ``cap`` statements are kept (recoveries pass)."""
    yield one("SELECT 1 FROM accounts WHERE user_id=? FOR UPDATE", user)
    loaded = yield from load(user)
    if loaded is None:
        raise UnknownAccount("no such account")
    genesis, statements = loaded
    prior = resolve(genesis, statements, now_ms=now)
    chain = [s for s in new if isinstance(s, Succession | Recovery)]
    rest = [s for s in new if not isinstance(s, Succession | Recovery)]
    kept = yield from _keep(user, statements, chain, now, cap)
    refused = None
    if rest:
        ruling = resolve(genesis, kept, now_ms=now)
        if ruling.forked:
            refused = "account_forked"
        elif any(s.account_key != ruling.account_key for s in rest
                 if isinstance(s, DeviceCertificate | RevocationStatement)):
            refused = "stale_account_key"
        else:
            kept = yield from _keep(user, kept, rest, now, cap)
    head = resolve(genesis, kept, now_ms=now)
    yield execute("UPDATE accounts SET account_key=?, forked=? WHERE user_id=?",
                  head.account_key, int(head.forked), user)
    if head.forked:
        # frozen: nothing moves until settled (the fork itself is logged)
        change = _change(prior, head, False, False)
        yield from _logged(kt, user, change, head, now)
        return Applied(head=head, revoked=(), devs=(), refused=refused, change=change)
    newest: dict[str, DeviceCertificate] = {}
    for c in certified(head, kept, user):
        have = newest.get(c.device_id)
        if have is None or (c.expires_at_ms, c.encode()) > (have.expires_at_ms, have.encode()):
            newest[c.device_id] = c
    existing = yield rows(
        "SELECT device_id, certificate, revoked_at FROM devices WHERE user_id=?", user
    )
    revoked: list[str] = []
    devs: list[int] = []
    recertified = False
    for device_id, cert_raw, revoked_at in existing:
        cert: DeviceCertificate | None = newest.pop(str(device_id), None)
        if cert is None:
            if revoked_at is None:
                dev = yield DevId(user, str(device_id))
                yield execute(
                    "UPDATE devices SET revoked_at=?, push_endpoint=NULL WHERE dev=?", now, dev
                )
                for table in DEVICE_OWNED:
                    yield execute(f"DELETE FROM {table} WHERE dev=?", dev)  # noqa: S608
                revoked.append(str(device_id))
                devs.append(int(dev))
        elif revoked_at is not None or blob(cert_raw) != cert.encode():
            recertified = True
            yield execute(
                "UPDATE devices SET certificate=?, revoked_at=NULL WHERE user_id=? AND device_id=?",
                cert.encode(), user, str(device_id),
            )
    added = bool(newest)
    for device_id, cert in sorted(newest.items()):
        yield execute(
            "INSERT INTO devices(user_id, device_id, certificate, created_at) VALUES (?, ?, ?, ?)",
            user, device_id, cert.encode(), now,
        )
    change = _change(prior, head, bool(revoked), added or recertified)
    yield from _logged(kt, user, change, head, now)
    return Applied(head=head, revoked=tuple(revoked), devs=tuple(devs), refused=refused,
                   change=change)


def _logged(
    kt: kt_tables.KTWriter | None, user: str, change: ChangeKind | None, head: ChainHead,
    now: int,
) -> Txn[None]:
    """The account's new version in the key-transparency log, in this transaction, with
    the keys the resolved chain rules by."""
    if change is not None:
        yield from accounts.logged(kt, user, change, now, account_key=head.account_key,
                                   recovery_key=head.recovery_key)


def _change(prior: ChainHead, head: ChainHead, revoked: bool, added: bool) -> ChangeKind | None:
    """What a key-transparency log leaf would say of this change (None: nothing moved)."""
    if head.recovery_key != prior.recovery_key:
        return ChangeKind.RECOVERY
    if (head.account_key, head.forked) != (prior.account_key, prior.forked):
        return ChangeKind.SUCCESSION
    if revoked:
        return ChangeKind.DEVICE_REVOKED
    return ChangeKind.DEVICE_ADDED if added else None


def _keep(
    user: str, statements: list[Statement], new: Sequence[Statement], now: int, cap: int
) -> Txn[list[Statement]]:
    """``statements`` and those of ``new`` that were not kept yet, now kept."""
    kept = list(statements)
    for st in new:
        if len(kept) >= cap and not isinstance(st, Recovery):
            raise StatementsFull("this account keeps no more statements")
        if (yield execute(
            "INSERT INTO account_statements(user_id, kind, body, received_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            user, kind_of(st), st.encode(), now,
        )):
            kept.append(st)
    return kept


def certified(head: ChainHead, statements: Sequence[Statement], user: str
              ) -> list[DeviceCertificate]:
    """The head key's certificates of devices it did not revoke, expired ones included: a
    device whose certificate ran out is not revoked, it renews (``device renew``)."""
    revoked = {s.device_id for s in statements
               if isinstance(s, RevocationStatement) and s.account_key == head.account_key
               and signed_revocation(s, head.account_key)}
    out = []
    for s in statements:
        if isinstance(s, DeviceCertificate) and s.account_key == head.account_key:
            try:  # checked as of its own start: everything but expiry
                s.verify(now_ms=s.created_at_ms, account_key=head.account_key, username=user,
                         revoked_device_ids=revoked)
            except IdentityError:
                continue
            out.append(s)
    return out


def genesis_of(user: str) -> Txn[tuple[Genesis, list[Statement]] | None]:
    """For a directory answer: the genesis keys and the chain statements (successions and
    recoveries) a contact needs to follow the account from the key it pinned."""
    loaded = yield from load(user)
    if loaded is None:
        return None
    genesis, statements = loaded
    return genesis, [s for s in statements if kind_of(s) in ("succession", "recovery")]



def correspondents(user: str) -> Txn[list[str]]:
    """The accounts that wrote to ``user`` or were written to by it: who to tell that its
    keys changed."""
    found = yield rows(
        "SELECT peer FROM correspondents WHERE user_id=? "
        "UNION SELECT user_id FROM correspondents WHERE peer=?", user, user,
    )
    return sorted({str(r[0]) for r in found} - {user})
