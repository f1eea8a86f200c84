"""MLS group operations (RFC 9420) at 10, 100 and 1,000 members: milliseconds and bytes.

    python bench/mls.py [--sizes 10,100,1000] [--suites classic,xwing] [--repeat 5]
                        [--shape full,sparse] [--wire public|private]

``--suites`` takes code points or short names (``classic`` is suite 1,
``xwing`` the hybrid X-Wing suite 0xF001); every suite runs in this
one process, and each later suite's rows get a ratio against the first suite's
same row, so the comparison is under the same load.

Operations, each timed with ``time.perf_counter`` in this one process (median of
``--repeat`` runs; nothing is cached between runs because every run works on
the same unchanged group state, which the state machine guarantees):

* KeyPackage generation (two HPKE key pairs, two signatures);
* creating a room: a one-member group (its leaf's key pair, signatures, key
  schedule), with the size of its GroupInfo (tree inside);
* add, remove and update commits, created by member A (leaf n/3); the add
  commit includes the Welcome, which carries the ratchet tree;
* processing each of them by member B (leaf 2n/3): decode, membership tag,
  signatures, proposal checks, UpdatePath merge and decryption, key schedule,
  confirmation tag (``process_message``; the merge that follows is O(1));
* joining from the add commit's Welcome (decrypt, validate the whole tree:
  every leaf signature and parent-hash chain, GroupInfo signature, confirmation tag).

Two tree shapes, because the cost of a commit is the size of its UpdatePath:

* ``full`` (steady state): every parent node holds a key. The group is built
  directly: every member "commits" once in turn, public side only (fresh node
  keys from path secrets, parent hashes, re-signed commit leaves, exactly as
  a real commit would leave them), and the bench keeps every node's private
  key; A and B then get group states over that tree sharing one synthetic
  epoch. All later operations, and the joiner's validation, are real.
* ``sparse`` (worst case): the real protocol, one commit by the creator adding
  n-1 members; parents exist only on the creator's path, so A's update path
  is encrypted to almost every member (n-1 HPKE encryptions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sottovoce.crypto.mls_suites import parse_suite
from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.mls import treemath
from sottovoce.mls.common import GroupContext, WireFormat
from sottovoce.mls.epoch import Epoch
from sottovoce.mls.group import (
    Group,
    GroupConfig,
    InvalidWelcome,
    KeyPackagePrivate,
    StagedCommit,
    generate_key_package,
)
from sottovoce.mls.group.epoch_state import EpochState  # member states over a built tree
from sottovoce.mls.key_schedule import EpochSecrets
from sottovoce.mls.messages import Credential, KeyPackage, LeafNode, LeafNodeSource
from sottovoce.mls.transcript import confirmation_tag, interim_transcript_hash
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate, derive_node_key_pair, derive_path_secret
from sottovoce.secret import Secret

NOW = int(time.time() * 1000)
rng = os.urandom


@dataclass
class Member:
    signing_key: SigningKey
    key_package: KeyPackage
    private: KeyPackagePrivate


def _member(suite: CipherSuite, i: int) -> Member:
    sk = suite.generate_signing_key(rng)
    kp, priv = generate_key_package(suite, Credential.basic(b"member-%d" % i), sk, rng, NOW)
    return Member(sk, kp, priv)


def build_full(
    suite: CipherSuite, n: int, config: GroupConfig, wanted: list[int]
) -> dict[int, Group]:
    """A group of ``n`` members whose tree has a key on every parent node, with
    real group states for the ``wanted`` leaves (see the module docstring)."""
    group_id = rng(suite.nh)
    members = [_member(suite, i) for i in range(n)]
    nodes: list[LeafNode | None] = []
    for m in members:
        nodes += [m.key_package.leaf_node, None]
    tree = RatchetTree(suite, nodes[:-1])
    privates: dict[int, Secret] = {2 * i: m.private.encryption_private
                                   for i, m in enumerate(members)}
    for i, m in enumerate(members):
        # Member i commits (public side): path secrets -> node keys -> merge.
        secret = rng(suite.nh)
        public_keys = []
        for p in tree.filtered_direct_path(i):
            kp = derive_node_key_pair(suite, secret)
            privates[p] = kp.private
            public_keys.append(kp.public)
            secret = derive_path_secret(suite, secret)
        parent_hash = tree.merge_path_keys(i, public_keys)
        leaf_kp = suite.generate_hpke_key_pair(rng)
        privates[2 * i] = leaf_kp.private
        leaf = tree.leaf(i)
        assert leaf is not None
        tree.set_leaf(i, replace(
            leaf, encryption_key=leaf_kp.public, leaf_node_source=LeafNodeSource.COMMIT,
            lifetime=None, parent_hash=parent_hash,
        ).signed(m.signing_key, group_id, i))
    confirmed = rng(suite.nh)
    context = GroupContext(cipher_suite=suite.id, group_id=group_id, epoch=1,
                           tree_hash=tree.tree_hash(), confirmed_transcript_hash=confirmed)
    secrets = EpochSecrets.from_epoch_secret(suite, rng(suite.nh))
    tag = confirmation_tag(suite, secrets.confirmation_key, confirmed)
    out = {}
    for i in wanted:
        path = (2 * i, *treemath.direct_path(2 * i, tree.n_leaves))
        private = TreeKemPrivate(suite=suite, leaf_index=i, keys={x: privates[x] for x in path})
        private.check(tree)
        epoch = Epoch(context=context, tree=tree, private=private, secrets=secrets,
                      interim_transcript_hash=interim_transcript_hash(suite, confirmed, tag),
                      confirmation_tag=tag)
        out[i] = Group(EpochState.start(suite=suite, signing_key=members[i].signing_key,
                                        epoch=epoch, config=config))
    return out


def build_sparse(
    suite: CipherSuite, n: int, config: GroupConfig, wanted: list[int]
) -> dict[int, Group]:
    """The real protocol: the creator adds n-1 members in one commit; the
    ``wanted`` members join from its Welcome."""
    creator = _member(suite, 0)
    group = Group.create(suite, credential=Credential.basic(b"member-0"),
                         signing_key=creator.signing_key, rng=rng, now_ms=NOW, config=config)
    members = [creator] + [_member(suite, i) for i in range(1, n)]
    bundle = group.add_members([m.key_package for m in members[1:]], rng=rng, now_ms=NOW)
    group.merge_pending_commit()
    assert bundle.welcome is not None
    out = {0: group}
    for i in wanted:
        if i:
            m = members[i]
            out[i] = Group.join_from_welcome(bundle.welcome, m.key_package, m.private,
                                             signing_key=m.signing_key, config=config)
    return out


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


Row = tuple[int, str, str, float, int | None]


def bench_size(
    suite: CipherSuite, n: int, shape: str, config: GroupConfig, repeat: int
) -> list[Row]:
    a, b, c = n // 3, (2 * n) // 3, n - 1
    if shape == "sparse":
        a, b = max(a, 1), max(b, 2)
    t = time.perf_counter()
    build = build_full if shape == "full" else build_sparse
    groups = build(suite, n, config, sorted({0, a, b}))
    setup = time.perf_counter() - t
    ga, gb = groups[a], groups[b]
    rows: list[Row] = []

    def row(op: str, ms: float, size: int | None = None) -> None:
        rows.append((n, shape, op, ms, size))

    joiner = _member(suite, n)
    row("KeyPackage generation",
        _median_ms(lambda: generate_key_package(suite, Credential.basic(b"x"),
                                                joiner.signing_key, rng, NOW), repeat),
        len(joiner.key_package.encode()))

    def create() -> Group:
        return Group.create(suite, credential=Credential.basic(b"x"),
                            signing_key=joiner.signing_key, rng=rng, now_ms=NOW, config=config)

    row("room creation (GroupInfo bytes)", _median_ms(create, repeat),
        len(create().group_info()))

    def commit_and_process(label: str, make: Callable[[], object]) -> object:
        bundle = make()
        ms = _median_ms(make, repeat)
        row(f"{label} commit", ms, len(bundle.commit))  # type: ignore[attr-defined]
        message = bundle.commit  # type: ignore[attr-defined]
        staged = gb.process_message(message).content
        assert isinstance(staged, StagedCommit)
        if staged.epoch_authenticator != bundle.staged.epoch_authenticator:  # type: ignore[attr-defined]
            raise SystemExit("the receiver computed another epoch")
        row(f"  processing the {label} commit",
            _median_ms(lambda: gb.process_message(message), repeat))
        ga.clear_pending_commit()
        return bundle

    commit_and_process("update", lambda: ga.self_update(rng=rng))
    commit_and_process("remove", lambda: ga.remove_members([c], rng=rng))
    bundle = commit_and_process("add", lambda: ga.add_members([joiner.key_package], rng=rng))
    welcome = bundle.welcome  # type: ignore[attr-defined]
    assert welcome is not None

    def join() -> Group:
        return Group.join_from_welcome(welcome, joiner.key_package, joiner.private,
                                       signing_key=joiner.signing_key, config=config)

    try:
        joined = join()
    except InvalidWelcome as exc:
        # A tree beyond limits.MAX_GROUP_DECODE_BYTES, which a joiner enforces on the
        # Welcome (sized for MAX_ROOM_MEMBERS leaves of the largest suite's keys).
        print(f"  [join from Welcome refused: {exc}; Welcome {len(welcome)} bytes]")
        row("join from Welcome (tree inside)", float("nan"), len(welcome))
        return rows
    if joined.epoch_authenticator != bundle.staged.epoch_authenticator:  # type: ignore[attr-defined]
        raise SystemExit("the joiner computed another epoch")
    row("join from Welcome (tree inside)", _median_ms(join, max(1, repeat // 2 + 1)),
        len(welcome))
    print(f"  [{n} members, {shape} tree: set-up {setup:.1f} s, not timed]", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--suites", "--suite", default="1",
                    help="comma-separated code points (1, 0xF001) or names (classic, xwing)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--shape", default="full,sparse")
    ap.add_argument("--wire", choices=("public", "private"), default="public")
    args = ap.parse_args()
    suites = [cipher_suite(_suite_id(x)) for x in args.suites.split(",")]
    wire = WireFormat.PUBLIC_MESSAGE if args.wire == "public" else WireFormat.PRIVATE_MESSAGE
    config = GroupConfig(handshake_wire_format=wire)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    names = ", ".join(f"{s.id:#x} ({s.name})" for s in suites)
    print(f"suites {names}, {args.wire} handshake messages, "
          f"median of {args.repeat}, load average {load:.2f}, {os.cpu_count()} cpus")
    table: list[tuple[int, Row]] = []
    for suite in suites:
        for shape in args.shape.split(","):
            for n in (int(x) for x in args.sizes.split(",")):
                table += [(suite.id, r) for r in bench_size(suite, n, shape, config, args.repeat)]
    base = {r[:3]: r[3] for sid, r in table if sid == suites[0].id}
    print()
    print(f"{'suite':>6}  {'members':>7}  {'tree':<6}  {'operation':<34}  {'ms':>9}  {'bytes':>9}"
          f"  {'x first':>7}")
    for sid, (n, shape, op, ms, size) in table:
        first = base.get((n, shape, op))
        ratio = "" if sid == suites[0].id or not first else f"{ms / first:.2f}"
        print(f"{sid:>#6x}  {n:>7}  {shape:<6}  {op:<34}  {ms:9.2f}  "
              f"{'' if size is None else size:>9}  {ratio:>7}")


def _suite_id(text: str) -> int:
    """A suite by code point (decimal or 0x hex) or by its short name."""
    text = text.strip()
    return parse_suite(text)

if __name__ == "__main__":
    main()
