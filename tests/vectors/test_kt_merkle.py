"""RFC 9162 §2.1 proofs against transparency-dev/merkle's published test data.

* kt/merkle/inclusion/ and kt/merkle/consistency/: one JSON file per case, a
  happy path and its tampered variants (wantErr); verification must agree with
  every one.
* kt/merkle/constants.go: the eight leaf inputs those cases are built on and the
  root of every tree size 0-8; our writer must reproduce the roots, and our
  proof generation must reproduce every happy-path proof byte for byte.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from sottovoce.kt.errors import KTError
from sottovoce.kt.merkle import (
    LogWriter,
    MemoryNodes,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.vectors.loader import files, text

INCLUSION = "kt/merkle/inclusion/"
CONSISTENCY = "kt/merkle/consistency/"


def _b(value: str) -> bytes:
    return base64.b64decode(value)


def _go_hex_list(source: str, func: str) -> list[bytes]:
    """The hd("...") literals of one Go function in constants.go, in order."""
    body = source.split(f"func {func}()", 1)[1].split("\n}\n", 1)[0]
    return [bytes.fromhex(h) for h in re.findall(r'hd\("([0-9a-f]*)"\)', body)]


def _reference() -> tuple[list[bytes], list[bytes], MemoryNodes, list[bytes]]:
    source = text("kt/merkle/constants.go")
    inputs = _go_hex_list(source, "LeafInputs")
    roots = [bytes.fromhex(source.split('func EmptyRootHash() []byte {\n\treturn hd("')[1][:64])]
    roots += _go_hex_list(source, "RootHashes")  # its first entry is EmptyRootHash()
    nodes = MemoryNodes()
    writer = LogWriter()
    built = [writer.root()]
    for data in inputs:
        nodes.store(writer.append(leaf_hash(data)))
        built.append(writer.root())
    return inputs, roots, nodes, built


def test_writer_reproduces_every_published_root() -> None:
    inputs, roots, nodes, built = _reference()
    assert len(inputs) == 8 and len(roots) == 9
    assert built == roots
    assert [root_hash(n, nodes) for n in range(9)] == roots


@pytest.mark.parametrize("case", files(INCLUSION))
def test_rfc9162_2_1_3_2_inclusion_vectors(case: dict[str, Any]) -> None:
    args = (case["leafIdx"], case["treeSize"], _b(case["leafHash"]),
            [_b(p) for p in case["proof"] or []], _b(case["root"]))
    if case["wantErr"]:
        with pytest.raises(KTError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("case", files(CONSISTENCY))
def test_rfc9162_2_1_4_2_consistency_vectors(case: dict[str, Any]) -> None:
    args = (case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]),
            [_b(p) for p in case["proof"] or []])
    if case["wantErr"]:
        with pytest.raises(KTError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def _happy(cases: list[Any]) -> list[dict[str, Any]]:
    return [p.values[0] for p in cases if p.values[0] and not p.values[0]["wantErr"]]


def test_generated_inclusion_proofs_equal_the_published_ones() -> None:
    inputs, roots, nodes, _ = _reference()
    # The cases built on constants.go's tree (the others use trees of their own).
    happy = [
        c for c in _happy(files(INCLUSION))
        if c["treeSize"] <= len(inputs) and _b(c["root"]) == roots[c["treeSize"]]
    ]
    assert len(happy) >= 5
    for case in happy:
        index, size = case["leafIdx"], case["treeSize"]
        assert leaf_hash(inputs[index]) == _b(case["leafHash"])
        assert inclusion_proof(index, size, nodes) == [_b(p) for p in case["proof"] or []]


def test_generated_consistency_proofs_equal_the_published_ones() -> None:
    _, roots, nodes, _ = _reference()
    happy = [
        c for c in _happy(files(CONSISTENCY))
        if 0 < c["size1"] < c["size2"] <= 8 and _b(c["root2"]) == roots[c["size2"]]
    ]
    assert len(happy) >= 4
    for case in happy:
        got = consistency_proof(case["size1"], case["size2"], nodes)
        assert got == [_b(p) for p in case["proof"] or []]
