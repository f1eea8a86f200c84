"""Ratchet tree and TreeKEM at group size N (default 1,000 members).

    python bench/mls_tree.py [--members N] [--suite ID] [--repeat R]

Three trees of N members are built (set-up not timed):

* ``blank``: N adds and no commit yet, every parent blank (the worst case for
  an UpdatePath: one HPKE encryption per other member);
* ``full``: every parent node holds a key (the steady state after commits:
  one encryption per filtered direct path node). Parent keys are synthetic,
  which is fine for timing: nothing here checks their parent hashes;
* ``committed``: every member has committed once in turn (public side only,
  random node keys, commit leaves re-signed), so every parent-hash chain is
  real; used to time the validation a joiner runs.

Timed (median of R runs, ms): tree hash from scratch versus after one leaf
change (the per-node cache at work), copy, encode/decode, full validation
(leaf signatures dominate), and create/apply of an UpdatePath.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

from sottovoce.crypto.sign import SigningKey
from sottovoce.crypto.suite import CipherSuite, cipher_suite
from sottovoce.mls import treemath
from sottovoce.mls.common import GroupContext
from sottovoce.mls.messages import (
    Capabilities,
    Credential,
    LeafNode,
    LeafNodeSource,
    Lifetime,
    ParentNode,
)
from sottovoce.mls.tree import RatchetTree
from sottovoce.mls.treekem import TreeKemPrivate, apply_update_path, create_update_path
from sottovoce.secret import Secret

GROUP_ID = b"bench-group"


def _leaf(suite: CipherSuite, i: int) -> tuple[LeafNode, Secret, SigningKey]:
    sk = suite.generate_signing_key(os.urandom)
    kp = suite.generate_hpke_key_pair(os.urandom)
    leaf = LeafNode(
        encryption_key=kp.public,
        signature_key=sk.verify_key.data,
        credential=Credential.basic(f"member-{i}".encode()),
        capabilities=Capabilities(cipher_suites=(suite.id,), credentials=(1,)),
        leaf_node_source=LeafNodeSource.KEY_PACKAGE,
        lifetime=Lifetime(not_before=0, not_after=2**63),
    ).signed(sk)
    return leaf, kp.private, sk


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--suite", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    suite = cipher_suite(args.suite)
    n, repeat = args.members, args.repeat

    t = time.perf_counter()
    leaves = [_leaf(suite, i) for i in range(n)]
    blank = RatchetTree.create(suite, leaves[0][0])
    for leaf, _, _ in leaves[1:]:
        blank.add_leaf(leaf)
    blank.tree_hash()
    # The "full" tree: a key on every parent, private keys known to the bench.
    full = blank.copy()
    parent_keys: dict[int, Secret] = {}
    for x in range(1, full.width, 2):
        kp = suite.generate_hpke_key_pair(os.urandom)
        parent_keys[x] = kp.private
        full.set_parent(x, ParentNode(encryption_key=kp.public))
    full.tree_hash()
    print(f"suite {suite.id}, {n} members, {blank.n_leaves} leaf slots "
          f"(set-up {time.perf_counter() - t:.1f} s, not timed)")

    def context(tree: RatchetTree) -> GroupContext:
        return GroupContext(
            cipher_suite=suite.id, group_id=GROUP_ID, epoch=1,
            tree_hash=tree.tree_hash(), confirmed_transcript_hash=b"\0" * suite.nh,
        )

    def private(tree: RatchetTree, i: int) -> TreeKemPrivate:
        keys = {2 * i: leaves[i][1]}
        if tree is full:
            for p in treemath.direct_path(2 * i, tree.n_leaves):
                keys[p] = parent_keys[p]
        return TreeKemPrivate(suite=suite, leaf_index=i, keys=keys)

    rows: list[tuple[str, float]] = []
    rows.append(("tree hash, from scratch",
                 _median_ms(lambda: RatchetTree(suite, full.nodes()).tree_hash(), repeat)))

    def one_change() -> None:
        tree = full.copy()
        tree.set_leaf(n // 2, leaves[0][0])
        tree.tree_hash()

    copy_ms = _median_ms(full.copy, repeat)
    rows.append(("tree hash after one leaf change (incl. copy)", _median_ms(one_change, repeat)))
    rows.append(("  of which copy()", copy_ms))
    data = full.encode()
    rows.append((f"encode ({len(data) // 1024} KiB)", _median_ms(full.encode, repeat)))
    rows.append(("decode", _median_ms(lambda: RatchetTree.decode(suite, data), repeat)))
    rows.append(("validate, blank tree (leaf signatures dominate)",
                 _median_ms(lambda: RatchetTree(suite, blank.nodes()).validate(GROUP_ID),
                            max(1, repeat // 2))))
    # A parent-hash valid full tree: every member commits once, in turn (public
    # side only: random node keys, each commit leaf re-signed).
    committed = blank.copy()
    for i in range(n):
        keys = [os.urandom(32) for _ in committed.filtered_direct_path(i)]
        ph = committed.merge_path_keys(i, keys)
        leaf, _, sk = leaves[i]
        committed.set_leaf(i, replace(
            leaf, encryption_key=os.urandom(32), leaf_node_source=LeafNodeSource.COMMIT,
            lifetime=None, parent_hash=ph,
        ).signed(sk, GROUP_ID, i))
    rows.append(("validate, tree after N commits (+ parent-hash chains)",
                 _median_ms(lambda: RatchetTree(suite, committed.nodes()).validate(GROUP_ID),
                            max(1, repeat // 2))))

    sender, receiver = 0, n - 1
    leaf, _, sk = leaves[sender]
    for name, base in (("full", full), ("blank", blank)):
        ctx = context(base)
        created = create_update_path(
            base.copy(), sender, leaf_node=leaf, signing_key=sk, group_context=ctx, rng=os.urandom
        )
        rows.append((f"create UpdatePath, {name} tree", _median_ms(
            lambda base=base, ctx=ctx: create_update_path(
                base.copy(), sender, leaf_node=leaf, signing_key=sk, group_context=ctx,
                rng=os.urandom,
            ),
            repeat,
        )))
        path = created.update_path
        cts = sum(len(node.encrypted_path_secret) for node in path.nodes)
        me = private(base, receiver)
        if apply_update_path(
            base.copy(), me, sender, path, group_context=ctx
        ).commit_secret != created.commit_secret:
            raise SystemExit("commit secrets differ")
        rows.append((f"apply UpdatePath, {name} tree ({cts} ciphertexts)", _median_ms(
            lambda base=base, me=me, path=path, ctx=ctx: apply_update_path(
                base.copy(), me, sender, path, group_context=ctx
            ),
            repeat,
        )))

    width = max(len(r[0]) for r in rows)
    for label, ms in rows:
        print(f"  {label:<{width}}  {ms:9.2f} ms")


if __name__ == "__main__":
    main()
