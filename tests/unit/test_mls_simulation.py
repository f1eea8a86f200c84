"""RFC 9420 §12 in the large: 50 members in memory, 300 epochs of random changes.

Each epoch one random member commits, after others may have sent Update and
Remove proposals (committed by reference); the committer adds or removes
members by value to keep the group near 50, or just refreshes its path.
Members use PublicMessage or PrivateMessage handshakes at random (both must
be readable by everyone). After every epoch:

* every member has the same epoch, epoch authenticator, tree hash and
  MLS-Exporter output (§8.5, §8.7), and the leaves are exactly the members;
* an application message from a random member is read by every member;
* every member removed so far, holding on to its last state, reads nothing
  sent after its removal (the commits and application messages that follow).

The members live in two worker processes (one per core); an orchestrator
makes every random choice and carries the message bytes between them, as a
delivery service would. Private keys never leave their worker.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pytest

from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import cipher_suite
from sottovoce.errors import RemoteError
from sottovoce.mls.common import WireFormat
from sottovoce.mls.framing import MLSMessage
from sottovoce.mls.group import (
    ApplicationMessage,
    Group,
    GroupConfig,
    KeyPackagePrivate,
    StagedCommit,
    generate_key_package,
)
from sottovoce.mls.messages import Add, Credential, KeyPackage, Proposal, Remove
from tests.conftest import deterministic_rng

SUITE = cipher_suite(1)
NOW = 1_700_000_000_000
TARGET = 50
EPOCHS = 300
WORKERS = 2
CONFIGS = (
    GroupConfig(handshake_wire_format=WireFormat.PUBLIC_MESSAGE),
    GroupConfig(handshake_wire_format=WireFormat.PRIVATE_MESSAGE),
)

#: Per member after each epoch: (epoch, epoch authenticator, tree hash, exporter, leaf).
State = tuple[int, bytes, bytes, bytes, int]


# --- the worker: members, their keys, and the removed members' last states ------------


@dataclass
class _Pending:
    signing_key: SigningKey
    key_package: KeyPackage
    private: KeyPackagePrivate


class Worker:
    """The members one process holds. Every method takes and returns plain data."""

    def __init__(self, index: int) -> None:
        self.rng = deterministic_rng(b"simulation-worker-%d" % index)
        self.r = random.Random(index)
        self.members: dict[int, Group] = {}
        self.pending: dict[int, _Pending] = {}
        self.removed: list[Group] = []

    def new_client(self, cid: int) -> bytes:
        sk = SUITE.generate_signing_key(self.rng)
        kp, priv = generate_key_package(
            SUITE, Credential.basic(b"client-%d" % cid), sk, self.rng, NOW
        )
        self.pending[cid] = _Pending(sk, kp, priv)
        return kp.encode()

    def create(self, cid: int) -> None:
        p = self.pending.pop(cid)
        self.members[cid] = Group.create(
            SUITE, credential=p.key_package.leaf_node.credential, signing_key=p.signing_key,
            rng=self.rng, now_ms=NOW, config=self.r.choice(CONFIGS),
        )

    def propose(self, cid: int, remove_leaf: int | None) -> bytes:
        g = self.members[cid]
        if remove_leaf is None:
            return g.propose_update(rng=self.rng)
        return g.propose_remove(remove_leaf, rng=self.rng)

    def commit(
        self, cid: int, remove_leaves: list[int], key_packages: list[bytes]
    ) -> tuple[bytes, bytes | None]:
        g = self.members[cid]
        proposals: list[Proposal] = [Remove(removed=i) for i in remove_leaves]
        proposals += [Add(key_package=KeyPackage.decode(kp)) for kp in key_packages]
        bundle = g.commit(rng=self.rng, proposals=proposals, now_ms=NOW)
        g.merge_pending_commit()
        return bundle.commit, bundle.welcome

    def deliver(
        self, sender: int, message: bytes, welcome: bytes | None, joiners: list[int]
    ) -> list[int]:
        """Every member but ``sender`` processes ``message``; returns who was removed."""
        gone: list[int] = []
        for cid, g in list(self.members.items()):
            if cid == sender:
                continue
            content = g.process_message(message).content
            if isinstance(content, StagedCommit):
                g.merge_staged_commit(content)
                if content.self_removed:
                    assert not g.is_active
                    self.removed.append(self.members.pop(cid))
                    gone.append(cid)
            elif isinstance(content, ApplicationMessage):
                assert content.data.startswith(b"epoch ")
        for cid in joiners:
            assert welcome is not None
            p = self.pending.pop(cid)
            self.members[cid] = Group.join_from_welcome(
                welcome, p.key_package, p.private, signing_key=p.signing_key,
                config=self.r.choice(CONFIGS),
            )
        return gone

    def application(self, cid: int, text: bytes) -> bytes:
        return self.members[cid].encrypt_application(text, rng=self.rng)

    def check_removed(self, messages: list[bytes]) -> int:
        """Every removed member tries every message; none may be read. Returns tries."""
        decoded = [MLSMessage.decode(m) for m in messages]
        tries = 0
        for old in self.removed:
            for m in decoded:
                tries += 1
                try:
                    result = old.process_message(m)
                except RemoteError:
                    continue
                raise AssertionError(f"a removed member read {type(result.content).__name__}")
        return tries

    def states(self) -> dict[int, State]:
        return {
            cid: (
                g.epoch,
                g.epoch_authenticator.expose(),
                g.tree_hash,
                g.export_secret(b"simulation", b"epoch", 32).expose(),
                g.own_leaf_index,
            )
            for cid, g in self.members.items()
        }

    def leaves(self, cid: int) -> list[int]:
        return [m.index for m in self.members[cid].members()]


def _serve(index: int, conn: Connection) -> None:
    worker = Worker(index)
    while True:
        request = conn.recv()
        if request is None:
            return
        name, args = request
        try:
            conn.send(("ok", getattr(worker, name)(*args)))
        except BaseException:  # report everything, the orchestrator fails the test
            conn.send(("error", traceback.format_exc()))


# --- the orchestrator -------------------------------------------------------------------


class Cluster:
    """The workers and who lives where; calls go out in parallel, then are collected."""

    def __init__(self) -> None:
        # "spawn": a fresh interpreter per worker, safe whatever threads the test
        # run has started (forking a threaded process can deadlock the child).
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(WORKERS):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(i, child), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.home: dict[int, int] = {}  # client id -> worker

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()

    def _collect(self, workers: list[int]) -> list[Any]:
        out = []
        for w in workers:
            status, value = self.conns[w].recv()
            if status != "ok":
                raise AssertionError(f"worker {w} failed:\n{value}")
            out.append(value)
        return out

    def call(self, worker: int, name: str, *args: Any) -> Any:
        self.conns[worker].send((name, args))
        return self._collect([worker])[0]

    def everywhere(self, name: str, args_for: Callable[[int], tuple[Any, ...]]) -> list[Any]:
        for w in range(WORKERS):
            self.conns[w].send((name, args_for(w)))
        return self._collect(list(range(WORKERS)))


@dataclass
class World:
    cluster: Cluster
    r: random.Random
    next_id: int = 0
    leaf: dict[int, int] | None = None
    removed: int = 0
    tries: int = 0

    def new_clients(self, n: int) -> list[tuple[int, bytes]]:
        """``n`` fresh clients, each made in (and kept by) the emptier worker."""
        out = []
        for _ in range(n):
            cid = self.next_id
            self.next_id += 1
            counts = [0] * WORKERS
            for w in self.cluster.home.values():
                counts[w] += 1
            w = counts.index(min(counts))
            self.cluster.home[cid] = w
            out.append((cid, self.cluster.call(w, "new_client", cid)))
        return out

    def deliver(
        self,
        sender: int,
        message: bytes,
        welcome: bytes | None = None,
        joiners: tuple[int, ...] = (),
    ) -> None:
        home = self.cluster.home
        results = self.cluster.everywhere(
            "deliver",
            lambda w: (sender, message, welcome, [c for c in joiners if home[c] == w]),
        )
        for gone in results:
            for cid in gone:
                del home[cid]
                self.removed += 1

    def check_epoch(self, committer: int) -> None:
        states: dict[int, State] = {}
        for part in self.cluster.everywhere("states", lambda w: ()):
            states.update(part)
        assert set(states) == set(self.cluster.home)
        assert len({s[:4] for s in states.values()}) == 1, "members disagree on the epoch"
        leaves = self.cluster.call(self.cluster.home[committer], "leaves", committer)
        assert sorted(s[4] for s in states.values()) == leaves
        self.leaf = {cid: s[4] for cid, s in states.items()}


def _epoch(world: World) -> None:
    r, cluster = world.r, world.cluster
    assert world.leaf is not None
    ids = sorted(cluster.home)
    committer = r.choice(ids)
    others = [c for c in ids if c != committer]

    # Proposals by reference from other members (§12.1), delivered to everyone.
    for _ in range(r.choice((0, 0, 1, 2))):
        proposer = r.choice(others)
        target = None
        if r.random() >= 0.6:
            target = world.leaf[r.choice([c for c in others if c != proposer] or [proposer])]
        message = cluster.call(cluster.home[proposer], "propose", proposer, target)
        world.deliver(proposer, message)

    # By-value changes that keep the group near TARGET members.
    size = len(ids)
    n_add = n_remove = 0
    choice = r.random()
    if size < TARGET - 2 or (choice < 0.3 and size <= TARGET + 2):
        n_add = r.randint(1, 3)
    if size > TARGET + 2 or (0.3 <= choice < 0.55 and size >= TARGET - 2):
        n_remove = r.randint(1, 2)
    victims = r.sample(others, min(n_remove, len(others)))
    joiners = world.new_clients(n_add)
    commit, welcome = cluster.call(
        cluster.home[committer], "commit", committer,
        [world.leaf[v] for v in victims], [kp for _, kp in joiners],
    )
    world.deliver(committer, commit, welcome, tuple(cid for cid, _ in joiners))
    world.check_epoch(committer)

    # An application message reaches every member; no removed member reads
    # it or the commit.
    speaker = r.choice(sorted(cluster.home))
    app = cluster.call(cluster.home[speaker], "application", speaker, b"epoch %d" % len(ids))
    world.deliver(speaker, app)
    world.tries += sum(cluster.everywhere("check_removed", lambda w: ([commit, app],)))


@pytest.mark.slow
def test_rfc9420_12_fifty_members_three_hundred_random_epochs() -> None:
    cluster = Cluster()
    try:
        world = World(cluster=cluster, r=random.Random(9420))
        (creator, _), *joiners = world.new_clients(TARGET)
        cluster.call(cluster.home[creator], "create", creator)
        commit, welcome = cluster.call(
            cluster.home[creator], "commit", creator, [], [kp for _, kp in joiners]
        )
        world.deliver(creator, commit, welcome, tuple(cid for cid, _ in joiners))
        world.check_epoch(creator)
        for _ in range(EPOCHS):
            _epoch(world)
        states: dict[int, State] = {}
        for part in cluster.everywhere("states", lambda w: ()):
            states.update(part)
        assert {s[0] for s in states.values()} == {1 + EPOCHS}
        assert TARGET - 5 <= len(states) <= TARGET + 5
        assert world.removed > 50  # plenty of removed members were checked
        assert world.tries > 10_000
    finally:
        cluster.close()
