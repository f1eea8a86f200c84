"""Account-key succession and recovery: which account key (AK) and recovery key (RK)
rule an account, given every signed statement about it, in any order.

    genesis (AK0, RK0)            registered with the account, recorded in key transparency
       │
       ├─ Recovery   signed by the current RK (and by the new AK and RK it names):
       │             sets a new anchor AK and replaces RK; cancels every AK-only
       │             statement made since the previous anchor
       │
       └─ Succession AK -> AK'  signed by both keys; from the anchor AK, the chain of
                    successions is followed while each AK signed exactly one; two
                    different successions by one AK are a fork: the account is
                    frozen at that AK until an RK statement settles it

    head = the last AK of the chain from the latest anchor
    devices = certificates signed by the head AK, minus devices it revoked

:func:`resolve` is a pure function of the *set* of statements: the same
statements give the same head whatever order they arrived in, so a thief who
races the owner gains nothing by arriving first, and a thief's statements made
after the owner's recovery hang off keys that are no longer on the chain.

The statements reuse the layout of ``identity/certificates.py``: the signed
bytes are a domain label followed by the body (RFC 8446 presentation language),
and the encoding is the body followed by the signature(s), the last fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from sottovoce.codec.tls import U64, tls, tls_struct
from sottovoce.crypto.rng import Random
from sottovoce.crypto.sign import ed25519_verify
from sottovoce.errors import DecodeError, IdentityError, SignatureError, UsageError
from sottovoce.identity.certificates import (
    KEY,
    NAME,
    SIGNATURE,
    DeviceCertificate,
    RevocationStatement,
    _SignedStatement,
    validate_username,
)
from sottovoce.identity.keys import AccountKey
from sottovoce.limits import RECOVERY_CODE_BYTES, SUCCESSION_MAX_CHAIN
from sottovoce.secret import Secret

_SUCCESSION_DOMAIN = b"sottovoce account succession v1"
_RECOVERY_DOMAIN = b"sottovoce account recovery v1"
_RK_KDF_DOMAIN = b"sottovoce recovery key v1"


def _verify(key: bytes, tbs: bytes, sig: bytes) -> bool:
    try:
        ed25519_verify(key, tbs, sig)
    except SignatureError:
        return False
    return True


# --- statements ------------------------------------------------------------------------


@tls_struct
class Succession(_SignedStatement):
    """AK -> AK', signed by both: the old key vouches for the new one, and the new
    key proves it exists (no one can succeed to a key they do not hold)."""

    _DOMAIN: ClassVar[bytes] = _SUCCESSION_DOMAIN
    _SIGNATURES: ClassVar[tuple[str, ...]] = ("signature", "new_signature")
    username: str = tls(NAME)
    old_key: bytes = tls(KEY)
    new_key: bytes = tls(KEY)
    signed_at_ms: int = tls(U64)
    signature: bytes = tls(SIGNATURE)  # by old_key
    new_signature: bytes = tls(SIGNATURE)  # by new_key

    @classmethod
    def issue(
        cls, old: AccountKey, new: AccountKey, *, username: str, now_ms: int
    ) -> Succession:
        validate_username(username)
        return cls._signed(
            (old, new), username=username, old_key=old.public, new_key=new.public,
            signed_at_ms=now_ms,
        )

    def valid(self) -> bool:
        tbs = self.tbs()
        return (self.old_key != self.new_key and _verify(self.old_key, tbs, self.signature)
                and _verify(self.new_key, tbs, self.new_signature))


@tls_struct
class Recovery(_SignedStatement):
    """The recovery key's statement: the account is now ruled by ``new_account_key``,
    and ``new_recovery_key`` replaces the RK that signed it. Signed by the old RK and
    by both new keys."""

    _DOMAIN: ClassVar[bytes] = _RECOVERY_DOMAIN
    _SIGNATURES: ClassVar[tuple[str, ...]] = (
        "signature", "account_signature", "new_recovery_signature"
    )
    username: str = tls(NAME)
    recovery_key: bytes = tls(KEY)
    new_account_key: bytes = tls(KEY)
    new_recovery_key: bytes = tls(KEY)
    signed_at_ms: int = tls(U64)
    signature: bytes = tls(SIGNATURE)  # by recovery_key
    account_signature: bytes = tls(SIGNATURE)  # by new_account_key
    new_recovery_signature: bytes = tls(SIGNATURE)  # by new_recovery_key

    @classmethod
    def issue(
        cls,
        recovery: AccountKey,
        new_account: AccountKey,
        new_recovery: AccountKey,
        *,
        username: str,
        now_ms: int,
    ) -> Recovery:
        validate_username(username)
        return cls._signed(
            (recovery, new_account, new_recovery), username=username,
            recovery_key=recovery.public, new_account_key=new_account.public,
            new_recovery_key=new_recovery.public, signed_at_ms=now_ms,
        )

    def valid(self) -> bool:
        tbs = self.tbs()
        return (
            len({self.recovery_key, self.new_recovery_key, self.new_account_key}) == 3
            and _verify(self.recovery_key, tbs, self.signature)
            and _verify(self.new_account_key, tbs, self.account_signature)
            and _verify(self.new_recovery_key, tbs, self.new_recovery_signature)
        )


Statement = Succession | Recovery | DeviceCertificate | RevocationStatement


# --- the resolver -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    """The keys an account was registered with (pinned through key transparency)."""

    username: str
    account_key: bytes
    recovery_key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainHead:
    """What :func:`resolve` concludes.

    ``forked``: two different successions (or recoveries) were signed by one key on
    the chain; ``account_key`` is then the last key before the fork, and contacts must
    not encrypt to the account until an RK statement settles it.
    """

    account_key: bytes
    recovery_key: bytes
    chain: tuple[bytes, ...]  # account keys from the latest anchor to the head
    devices: tuple[DeviceCertificate, ...]
    forked: bool

    def accepts(self, signer: bytes) -> bool:
        """May a statement signed by this account key be acted on now?"""
        return not self.forked and signer == self.account_key


def _canonical(statements: Iterable[Statement], username: str) -> list[Statement]:
    """The valid statements for ``username``, each once, in a fixed order."""
    seen: dict[bytes, Statement] = {}
    for st in statements:
        if st.username != username:
            continue
        if isinstance(st, Succession | Recovery) and not st.valid():
            continue
        seen.setdefault(type(st).__name__.encode() + st.encode(), st)
    return [seen[k] for k in sorted(seen)]


def resolve(genesis: Genesis, statements: Iterable[Statement], *, now_ms: int) -> ChainHead:
    """The account's current head, computed from the set of ``statements`` alone."""
    valid = _canonical(statements, genesis.username)
    recoveries = [s for s in valid if isinstance(s, Recovery)]
    successions = [s for s in valid if isinstance(s, Succession)]
    forked = False

    # 1. The RK chain: each RK rules until it signs a recovery, which names the next.
    anchor, rk = genesis.account_key, genesis.recovery_key
    used_rks = {rk}
    for _ in range(SUCCESSION_MAX_CHAIN):
        nxt = {(r.new_account_key, r.new_recovery_key) for r in recoveries
               if r.recovery_key == rk}
        if not nxt:
            break
        if len(nxt) > 1 or next(iter(nxt))[1] in used_rks:
            forked = True  # only the holder of the printed code can cause this
            break
        anchor, rk = next(iter(nxt))
        used_rks.add(rk)

    # 2. The AK chain from the anchor: successions signed by the current key (and the next).
    chain = [anchor]
    while not forked and len(chain) < SUCCESSION_MAX_CHAIN:
        nxt_keys = {s.new_key for s in successions if s.old_key == chain[-1]}
        if not nxt_keys:
            break
        if len(nxt_keys) > 1 or next(iter(nxt_keys)) in chain:
            forked = True
            break
        chain.append(next(iter(nxt_keys)))
    head = chain[-1]

    # 3. Devices: certificates of the head key, minus what the head key revoked.
    revoked = {
        s.device_id
        for s in valid
        if isinstance(s, RevocationStatement) and s.account_key == head
        and signed_revocation(s, head)
    }
    devices = []
    for s in valid:
        if isinstance(s, DeviceCertificate) and s.account_key == head:
            try:
                s.verify(now_ms=now_ms, account_key=head, username=genesis.username,
                         revoked_device_ids=revoked)
            except IdentityError:
                continue
            devices.append(s)
    return ChainHead(account_key=head, recovery_key=rk, chain=tuple(chain),
                     devices=tuple(devices), forked=forked)


class AccountForked(IdentityError):
    """Two different successions (or recoveries) were signed by one key of the account:
    until a statement of its recovery key settles it, nobody can tell the owner's chain
    from a thief's, and contacts must not encrypt to the account."""

    code = "account_forked"


def history(genesis: Genesis, statements: Iterable[Statement]) -> set[bytes]:
    """Every account key that ever descended from the genesis by valid statements, on a
    ruling branch or a cancelled one (a contact may have pinned either)."""
    valid = _canonical(statements, genesis.username)
    keys, rks = {genesis.account_key}, {genesis.recovery_key}
    grew = True
    while grew:
        grew = False
        for s in valid:
            if isinstance(s, Succession) and s.old_key in keys and s.new_key not in keys:
                keys.add(s.new_key)
                grew = True
            elif (isinstance(s, Recovery) and s.recovery_key in rks
                  and s.new_recovery_key not in rks):
                keys.add(s.new_account_key)
                rks.add(s.new_recovery_key)
                grew = True
    return keys


def follow(
    genesis: Genesis, statements: Iterable[Statement], *, pinned_key: bytes, now_ms: int
) -> ChainHead:
    """What a contact's client concludes when the served account key is not the one it
    pinned: the account's head, provided the pinned key descends from the same genesis
    (every link of the chain is checked, however many were made while it was away).
    Raises :class:`AccountForked` on an unsettled fork, :class:`IdentityError` when the
    pinned key is not in the account's history."""
    statements = list(statements)
    head = resolve(genesis, statements, now_ms=now_ms)
    if head.forked:
        raise AccountForked(
            f"{genesis.username}'s account key was succeeded twice (a stolen device?): "
            "nothing is sent to it until its owner settles it with the recovery code"
        )
    if pinned_key not in history(genesis, statements):
        raise IdentityError("the new account key does not descend from the pinned one")
    return head


def signed_revocation(s: RevocationStatement, key: bytes) -> bool:
    """Whether ``key`` signed the revocation ``s``."""
    try:
        s.verify(account_key=key)
    except IdentityError:
        return False
    return True


# --- the recovery code -----------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ALIASES = {"O": "0", "I": "1", "L": "1"}


def _checksum(secret: bytes) -> bytes:
    return hashlib.sha256(b"sottovoce recovery code checksum" + secret).digest()[:1]


def new_recovery_code(rng: Random) -> Secret:
    """A printed recovery code: 128 random bits and an 8-bit checksum in Crockford
    base32, groups of four (e.g. ``7K3Q-...``). Shown once, kept offline."""
    secret = rng(RECOVERY_CODE_BYTES)
    raw = secret + _checksum(secret)
    bits = int.from_bytes(raw, "big")
    nchars = (len(raw) * 8 + 4) // 5
    bits <<= nchars * 5 - len(raw) * 8
    chars = "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in reversed(range(nchars)))
    return Secret("-".join(chars[i : i + 4] for i in range(0, nchars, 4)).encode())


def parse_recovery_code(code: str) -> Secret:
    """The code's secret bytes; tolerant of case, spaces, dashes and O/I/L misreadings,
    strict about length and checksum (:class:`UsageError` names neither)."""
    cleaned = "".join(_ALIASES.get(c, c) for c in code.upper() if c not in " -\t")
    nbytes = RECOVERY_CODE_BYTES + 1
    nchars = (nbytes * 8 + 4) // 5
    if len(cleaned) != nchars or any(c not in _CROCKFORD for c in cleaned):
        raise UsageError("that is not a recovery code (wrong length or characters)")
    bits = 0
    for c in cleaned:
        bits = bits << 5 | _CROCKFORD.index(c)
    raw = (bits >> (nchars * 5 - nbytes * 8)).to_bytes(nbytes, "big")
    secret, check = raw[:-1], raw[-1:]
    if _checksum(secret) != check:
        raise UsageError("the recovery code has a typo (its checksum does not match)")
    return Secret(secret)


def recovery_key_from_code(code: str, *, username: str) -> AccountKey:
    """RK from the printed code: Argon2id (RFC 9106) over the code's secret, salted by
    the username, so one code's key differs per account. The code has 128 bits of
    entropy: the KDF's cost guards against a weak RNG, not against guessing."""
    secret = parse_recovery_code(code)
    salt = hashlib.sha256(_RK_KDF_DOMAIN + validate_username(username).encode()).digest()[:16]
    seed = Argon2id(salt=salt, length=32, iterations=2, lanes=1,
                    memory_cost=19 * 1024).derive(secret.expose())
    return AccountKey(seed)


_KINDS: dict[type, str] = {
    Succession: "succession", Recovery: "recovery",
    DeviceCertificate: "certificate", RevocationStatement: "revocation",
}


def kind_of(statement: Statement) -> str:
    """The kind name a statement is sent and stored under (see :func:`decode_statement`)."""
    return _KINDS[type(statement)]


def decode_statement(kind: str, data: bytes) -> Statement:
    """Decode one statement by its kind name; raises :class:`DecodeError`."""
    readers: dict[str, Callable[[bytes], Statement]] = {
        "succession": Succession.decode,
        "recovery": Recovery.decode,
        "certificate": DeviceCertificate.decode,
        "revocation": RevocationStatement.decode,
    }
    if kind not in readers:
        raise DecodeError("unknown statement kind")
    return readers[kind](data)

