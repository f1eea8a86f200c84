"""The quick fuzz run: every harness over its corpus plus a few seeded mutations.

Long runs: ``python -m tests.fuzz NAME --runs N`` (docs/fuzzing.md).
"""

from __future__ import annotations

import time

import pytest

from sottovoce.errors import DecodeError
from tests.fuzz.engine import HANG_CPU_S, load_corpus, mutate, run, run_one
from tests.fuzz.harnesses import HARNESSES, Harness

#: Mutations per harness and the seconds one harness may take: about 30 s in all here.
MUTATIONS = 4000
SECONDS = 2.0


@pytest.mark.parametrize("name", list(HARNESSES))
def test_harness_finds_nothing(name: str) -> None:
    corpus = load_corpus(name)
    assert corpus, f"tests/fuzz/corpus/{name} is empty: python -m tests.fuzz.make_seeds"
    stats = run(name, MUTATIONS, seed=1, max_seconds=SECONDS)
    assert stats.inputs > len(corpus)
    assert not stats.findings, "\n\n".join(f.describe() for f in stats.findings)


def test_an_untyped_error_is_a_finding_and_a_typed_one_is_not() -> None:
    def target(data: bytes) -> None:
        if data == b"typed":
            raise DecodeError("typed")
        if data == b"untyped":
            raise IndexError("untyped")

    harness = Harness("probe", target)
    assert run_one(harness, b"typed") is None
    finding = run_one(harness, b"untyped")
    assert finding is not None and finding.kind == "IndexError"


def test_a_slow_input_is_a_hang() -> None:
    def target(data: bytes) -> None:
        start = time.process_time()
        while time.process_time() - start < HANG_CPU_S * 1.2:
            pass

    finding = run_one(Harness("slow", target), b"")
    assert finding is not None and finding.kind == "hang"


def test_mutation_is_reproducible_from_its_seed() -> None:
    import random

    seeds = [b"\x00\x05hello", b"{}"]
    first = [mutate(seeds[0], random.Random(7), seeds, "binary") for _ in range(3)]
    again = [mutate(seeds[0], random.Random(7), seeds, "binary") for _ in range(3)]
    assert first == again and any(m != seeds[0] for m in first)
