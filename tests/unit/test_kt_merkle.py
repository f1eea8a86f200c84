"""RFC 9162 §2.1 properties of kt/merkle.py, for any tree size and any pair of sizes.

The reference is the recursive definition of MTH, PATH and PROOF written out
naively over all leaves; the module under test builds the same from stored
perfect-subtree nodes. Any single change to a proof must make it fail.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sottovoce.errors import UsageError
from sottovoce.kt.errors import KTError, MalformedProof, ProofMismatch
from sottovoce.kt.merkle import (
    EMPTY_ROOT,
    LogWriter,
    MemoryNodes,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_for,
    root_hash,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)

MAX_SIZE = 300


def _mth(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) <= 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [_mth(leaves)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], b), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def _tree(size: int) -> tuple[list[bytes], MemoryNodes, LogWriter]:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    nodes, writer = MemoryNodes(), LogWriter()
    for h in leaves:
        nodes.store(writer.append(h))
    return leaves, nodes, writer


_BIG = _tree(MAX_SIZE)


def _flip(proof: list[bytes], i: int, bit: int) -> list[bytes]:
    out = list(proof)
    b = bytearray(out[i])
    b[bit // 8] ^= 1 << (bit % 8)
    out[i] = bytes(b)
    return out


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, MAX_SIZE))
def test_root_of_any_size_matches_the_definition(size: int) -> None:
    leaves, nodes, _ = _BIG
    assert root_hash(size, nodes) == _mth(leaves[:size])
    _, _, writer = _tree(size)
    assert writer.root() == _mth(leaves[:size])
    assert LogWriter(size, [nodes[n] for n in root_nodes(size)]).root() == writer.root()


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_generated_inclusion_proofs_verify_and_any_change_fails(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, MAX_SIZE))
    index = data.draw(st.integers(0, size - 1))
    leaves, nodes, _ = _BIG
    root = _mth(leaves[:size])
    proof = inclusion_proof(index, size, nodes)
    assert proof == _path(index, leaves[:size])
    verify_inclusion(index, size, leaves[index], proof, root)
    # Only the nodes it names are needed.
    assert inclusion_proof(index, size, nodes_for(inclusion_nodes(index, size), nodes)) == proof
    tampered = []
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        tampered.append((index, size, leaves[index], _flip(proof, i, bit)))
        tampered.append((index, size, leaves[index], proof[:-1]))
    tampered.append((index, size, leaves[index], [*proof, leaves[0]]))
    tampered.append((index, size, _flip([leaves[index]], 0, 7)[0], proof))
    other = data.draw(st.integers(0, MAX_SIZE))
    if other != index:
        tampered.append((other, size, leaves[index], proof))
    for args in tampered:
        with pytest.raises(KTError):
            verify_inclusion(*args, root)
    with pytest.raises(ProofMismatch):
        verify_inclusion(index, size, leaves[index], proof, _flip([root], 0, 0)[0])


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_generated_consistency_proofs_verify_and_any_change_fails(data: st.DataObject) -> None:
    second = data.draw(st.integers(1, MAX_SIZE))
    first = data.draw(st.integers(1, second))
    leaves, nodes, _ = _BIG
    r1, r2 = _mth(leaves[:first]), _mth(leaves[:second])
    proof = consistency_proof(first, second, nodes)
    assert proof == ([] if first == second else _subproof(first, leaves[:second], True))
    verify_consistency(first, second, r1, r2, proof)
    assert consistency_proof(
        first, second, nodes_for(consistency_nodes(first, second), nodes)
    ) == proof
    tampered: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (first, second, _flip([r1], 0, 3)[0], r2, proof),
        (first, second, r1, _flip([r2], 0, 3)[0], proof),
        (first, second, r1, r2, [*proof, r1]),
    ]
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        tampered.append((first, second, r1, r2, _flip(proof, i, data.draw(st.integers(0, 255)))))
        tampered.append((first, second, r1, r2, proof[:-1]))
    if first < second:
        tampered.append((second, first, r2, r1, proof))  # the log shrank
    for args in tampered:
        with pytest.raises(KTError):
            verify_consistency(*args)


def test_a_consistency_proof_from_the_empty_tree_is_refused() -> None:
    leaves, nodes, _ = _BIG
    assert consistency_proof(0, 5, nodes) == []
    with pytest.raises(MalformedProof):
        verify_consistency(0, 5, EMPTY_ROOT, _mth(leaves[:5]), [])


def test_the_writer_stores_few_nodes_and_needs_no_leaves_for_proofs() -> None:
    # A million-leaf log stores < 2 nodes per leaf; a proof reads O(log n) of them.
    _, nodes, writer = _BIG
    assert len(nodes) < 2 * writer.size
    assert max(len(inclusion_nodes(i, MAX_SIZE)) for i in range(MAX_SIZE)) <= 2 * 9
    assert len(writer.border) == MAX_SIZE.bit_count()


def test_misuse_is_a_usage_error() -> None:
    _, nodes, _ = _BIG
    with pytest.raises(UsageError):
        inclusion_proof(5, 5, nodes)
    with pytest.raises(UsageError):
        consistency_proof(6, 5, nodes)
    with pytest.raises(UsageError):
        LogWriter(3, [EMPTY_ROOT])
    with pytest.raises(UsageError):
        nodes_for({(30, 0)}, nodes)
