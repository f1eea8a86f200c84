"""An in-memory transparency log for the fake relay: the server core (kt/prover.py)
and a witness (kt/witness.py), with knobs to make the server lie.

A *world* is one log as some users see it: a :class:`KTLog` and the witness that
cosigns its checkpoints. The honest server has one; a lying one shows some users
another world (``views``): a fork cosigned by a colluding copy of the witness,
or an older snapshot (a rollback).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sottovoce.crypto.sign import SignatureScheme, SigningKey
from sottovoce.identity import DeviceCertificate
from sottovoce.kt.checkpoint import NoteSigner, SignedNote, add_cosignature
from sottovoce.kt.errors import KTError
from sottovoce.kt.map import AccountState, ChangeKind, DeviceEntry
from sottovoce.kt.merkle import consistency_proof
from sottovoce.kt.prover import KTLog, KTStores
from sottovoce.kt.vrf import VRFSecretKey
from sottovoce.kt.witness import Witness
from sottovoce.limits import KT_HISTORY_PAGE
from sottovoce.protocol import kt as pk
from sottovoce.protocol.fields import b64

#: The recovery key the fake log records for every account (clients make none yet).
NO_RECOVERY_KEY = bytes(32)


def _key(seed: int) -> SigningKey:
    return SigningKey(SignatureScheme.ED25519, hashlib.sha256(b"kt-fake" + bytes([seed])).digest())


def now_ms() -> int:
    return int(time.time() * 1000)


class _Rng:
    """Deterministic per change, so a replayed log is the same log."""

    def __init__(self, seed: int) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, size: int) -> bytes:
        self.n += 1
        return hashlib.sha256(f"{self.seed}/{self.n}".encode()).digest()[:size]


@dataclass(frozen=True)
class Change:
    username: str
    state: AccountState
    kind: ChangeKind
    at_ms: int


LOG_SIGNER = NoteSigner("kt.test/log", _key(1))
WITNESS_SIGNER = NoteSigner("witness.test/w1", _key(2), cosigner=True)
OTHER_WITNESS = NoteSigner("witness.test/w2", _key(3), cosigner=True)
VRF = VRFSecretKey(hashlib.sha256(b"kt-fake vrf").digest())


@dataclass
class World:
    """One log and the witness that cosigns it."""

    core: KTLog
    witness: Witness
    stores: KTStores

    @classmethod
    def new(cls) -> World:
        stores = KTStores.memory()
        return cls(core=KTLog(stores, vrf_key=VRF, log_signer=LOG_SIGNER),
                   witness=Witness(WITNESS_SIGNER, LOG_SIGNER.public), stores=stores)

    @classmethod
    def replay(cls, changes: list[Change]) -> World:
        """A log of ``changes``, cosigned by a copy of the witness that keeps no memory
        of the honest log (as if the server held the witness's key)."""
        w = cls.new()
        for c in changes:
            w.change(c)
        return w

    def change(self, c: Change) -> None:
        self.core.change(c.username, c.state.encode(), kind=c.kind, now_ms=c.at_ms,
                         rng=_Rng(self.core.size))

    def proof(self, since: int) -> list[bytes]:
        if not 0 < since < self.core.size:
            return []
        return consistency_proof(since, self.core.size, self.stores.log_nodes)

    def note(self, *, cosign: bool = True) -> SignedNote:
        note = self.core.checkpoint()
        if not cosign:
            return note
        head = self.witness.state.head
        proof = self.proof(head.size) if head is not None else []
        try:
            return add_cosignature(note, self.witness.cosign(note, proof, now_ms=now_ms()))
        except KTError:
            return note  # the witness refused: the server serves what it has


@dataclass
class FakeLog:
    """What the fake relay answers to sottovoce.kt.* (one honest world unless told)."""

    honest: World = field(default_factory=World.new)
    #: Every change the honest log recorded, in order.
    history: list[Change] = field(default_factory=list)
    #: username -> the world that user is shown (a split view or a rollback).
    views: dict[str, World] = field(default_factory=dict)
    #: Serve checkpoints without the witness's cosignature.
    uncosigned: bool = False
    #: The log key named in kt.head answers (a server that changed its log key).
    served_log_key: str | None = None
    #: The witness keys named in kt.head answers (``[]``: a server with no witness).
    served_witnesses: list[str] | None = None
    #: Versions per kt.history page (a request with ``start``).
    page: int = KT_HISTORY_PAGE
    #: Rewrites a raw answer before it is sent (malformed proofs, bad signatures).
    tamper: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None

    def world(self, who: str) -> World:
        return self.views.get(who, self.honest)

    def record(self, username: str, account_key: bytes, certs: list[DeviceCertificate],
               kind: ChangeKind) -> None:
        """The directory changed: every world logs it (a lie is kept up, not dropped)."""
        self.log(username, state_of(account_key, [(c.device_id, c.keys.signing_key)
                                                  for c in certs]), kind)

    def log(self, username: str, state: AccountState, kind: ChangeKind,
            *, only: World | None = None) -> None:
        change = Change(username, state, kind, now_ms())
        if only is None:
            self.history.append(change)
        for w in [only] if only is not None else [self.honest, *self.views.values()]:
            w.change(change)

    def fork(self, upto: int | None = None, *, colluding: bool = True) -> World:
        """A copy of the log as it is now (or of its first ``upto`` changes: a rollback),
        which goes its own way from here; without ``colluding`` the honest witness is
        asked to cosign it."""
        world = World.replay(self.history[:upto])
        if not colluding:
            world.witness = self.honest.witness
        return world

    def answer(self, who: str, event: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        w = self.world(who)
        note = w.note(cosign=not self.uncosigned)
        since = int(data.get("since", 0))
        since = since if since <= w.core.size else 0
        if event == "sottovoce.kt.head":
            name, out = pk.KT_HEAD_RESULT, {
                "checkpoint": note.encode().decode(),
                "consistency": [b64(h) for h in w.proof(since)],
                "log_key": self.served_log_key or LOG_SIGNER.public.vkey(),
                "vrf_key": b64(VRF.public),
                "witnesses": ([WITNESS_SIGNER.public.vkey()] if self.served_witnesses is None
                              else self.served_witnesses),
            }
        elif event == "sottovoce.kt.lookup":
            resp = w.core.lookup(data["username"], note, since=since)
            name, out = pk.KT_LOOKUP_RESULT, {"response": b64(resp.encode())}
        elif "start" in data:
            page = w.core.history_page(who, note, since=since, start=int(data["start"]),
                                       limit=self.page)
            name, out = pk.KT_HISTORY_RESULT, {"response": b64(page.encode())}
        else:
            resp2 = w.core.history(who, note, since=since)
            name, out = pk.KT_HISTORY_RESULT, {"response": b64(resp2.encode())}
        if self.tamper is not None:
            out = self.tamper(event, out)
        return name, out


def state_of(account_key: bytes, devices: list[tuple[str, bytes]]) -> AccountState:
    return AccountState(
        account_key=account_key, recovery_key=NO_RECOVERY_KEY,
        devices=tuple(DeviceEntry(device_id=d, signing_key=k) for d, k in sorted(devices)),
    )
