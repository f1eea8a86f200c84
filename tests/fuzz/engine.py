"""Run a harness: a pure-Python mutational runner, and atheris when it is installed.

The pure-Python runner needs no coverage feedback and no extra package: it replays
the corpus, then mutates corpus entries at random (a seeded ``random.Random``, so a
run is reproducible from its seed). It is what the quick pytest run uses. Long runs
use atheris (libFuzzer's coverage-guided engine) when the ``fuzz`` extra is installed.

A finding is an exception that is not a :class:`~sottovoce.errors.SottovoceError`,
an input that takes over :data:`HANG_CPU_S` of CPU time, or memory that keeps growing.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import resource
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from sottovoce.errors import SottovoceError
from tests.fuzz.harnesses import HARNESSES, Harness

CORPUS = Path(__file__).parent / "corpus"
#: CPU seconds one input may take before it counts as a hang (CPU, not wall time, so a
#: loaded machine does not raise false alarms).
HANG_CPU_S = 1.0
#: Wall seconds after which an input is stopped (an endless loop never returns).
STOP_WALL_S = 10
#: Resident-memory growth after the warm-up that counts as a leak.
LEAK_MB = 256
#: Inputs grow to at most this many bytes.
MAX_LEN = 1 << 14

_TOKENS = {
    "binary": (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x40\x00", b"\xc0\x00\x00\x00",
               b"\x3f", b"\xff\xff\xff\xff", b"\x00\x01", b"\x01"),
    "json": (b"{", b"}", b"[", b"]", b'"', b",", b":", b"null", b"true", b"-1", b"0",
             b"1e999", b"18446744073709551616", b'"\\ud800"', b"[" * 64, b'{"v":1}',
             b"\x00", b"\xff", b"NaN", b"-0.0"),
    "text": (b"\n", b"\n\n", b"\xe2\x80\x94 ", b"+", b"/", b"=", b" ", b"\x00", b"\xff",
             b"18446744073709551616", b"-1", b"AAAA"),
}


class Hang(Exception):
    """An input ran past :data:`STOP_WALL_S`."""


@dataclass(frozen=True, slots=True)
class Finding:
    harness: str
    data: bytes
    kind: str
    detail: str

    def describe(self) -> str:
        head = f"{self.harness}: {self.kind} on {self.data[:64]!r} ({len(self.data)} B)"
        return f"{head}\n{self.detail}"


@dataclass(slots=True)
class Stats:
    harness: str
    inputs: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0


def load_corpus(name: str) -> list[bytes]:
    folder = CORPUS / name
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()]


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


@contextlib.contextmanager
def _wall_limit() -> Iterator[None]:
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, previous)


def run_one(harness: Harness, data: bytes) -> Finding | None:
    """Feed one input; the finding it causes, or ``None``."""
    with _wall_limit():
        return _run_one(harness, data)


def _run_one(harness: Harness, data: bytes) -> Finding | None:
    start = time.process_time()
    signal.setitimer(signal.ITIMER_REAL, STOP_WALL_S)
    try:
        harness.target(data)
    except SottovoceError:
        pass
    except Hang:
        return Finding(harness.name, data, "hang", f"stopped after {STOP_WALL_S} s")
    except Exception as exc:  # anything untyped is what we look for
        return Finding(harness.name, data, type(exc).__name__,
                       "".join(traceback.format_exception(exc)[-4:]))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    spent = time.process_time() - start
    if spent > HANG_CPU_S:
        return Finding(harness.name, data, "hang", f"{spent:.2f} s of CPU")
    return None


def mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes], kind: str) -> bytes:
    """One to four random edits of ``data``: flips, interesting bytes, inserts, deletes,
    duplicated ranges, splices with another entry, and tokens of the input's kind."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(10)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[rng.randrange(len(buf))] = rng.choice((0, 1, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF))
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:
            end = min(len(buf), pos + rng.randint(1, 16))
            del buf[pos:end]
        elif op == 4 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start : start + rng.randint(1, 64)]
            buf[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 5 and corpus:
            other = rng.choice(corpus)
            cut = rng.randint(0, len(other))
            buf = buf[:pos] + bytearray(other[cut:])
        elif op == 6:
            buf[pos:pos] = rng.choice(_TOKENS[kind])
        elif op == 7 and buf:
            del buf[rng.randint(0, len(buf)) :]
        elif op == 8 and len(buf) >= 2:
            i = rng.randrange(len(buf) - 1)
            value = rng.choice((0, 1, 0xFF, 0xFFFF, 0x7FFF, 0x4000, len(buf)))
            buf[i : i + 2] = (value & 0xFFFF).to_bytes(2, "big")
        elif op == 9:
            # A token many times over: deep nesting, long runs of one byte.
            buf[pos:pos] = rng.choice(_TOKENS[kind]) * rng.choice((16, 256, 2048))
    return bytes(buf[:MAX_LEN])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(name: str, runs: int, *, seed: int = 0, max_seconds: float | None = None,
        stop_on_finding: bool = False, log_every: int = 0) -> Stats:
    """The corpus, then ``runs`` mutations (or until ``max_seconds``)."""
    harness = HARNESSES[name]
    corpus = load_corpus(name) or [b""]
    rng = random.Random(seed)
    stats = Stats(name)
    started = time.monotonic()
    warm_rss: float | None = None
    seen: set[str] = set()
    with _wall_limit():  # once for the whole run: _run_one needs it in place
        inputs = iter(corpus)
        while stats.inputs < len(corpus) + runs:
            data = next(inputs, None)
            if data is None:
                data = mutate(rng.choice(corpus), rng, corpus, harness.kind)
            finding = _run_one(harness, data)
            stats.inputs += 1
            if finding is not None:
                key = finding.kind + finding.detail.splitlines()[-1] if finding.detail else ""
                if key not in seen:
                    seen.add(key)
                    stats.findings.append(finding)
                    if stop_on_finding:
                        break
            if stats.inputs % 10_000 == 0:
                rss = _rss_mb()
                if stats.inputs == 10_000:
                    warm_rss = rss
                elif warm_rss is not None and rss - warm_rss > LEAK_MB and "leak" not in seen:
                    seen.add("leak")
                    stats.findings.append(Finding(name, b"", "memory",
                                                  f"max RSS {warm_rss:.0f} -> {rss:.0f} MB"))
                if log_every and stats.inputs % log_every == 0:
                    elapsed = time.monotonic() - started
                    print(f"{name}: {stats.inputs} inputs, {elapsed:.0f} s, "
                          f"{stats.inputs / elapsed:.0f}/s, {len(stats.findings)} findings",
                          file=sys.stderr, flush=True)
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
    stats.seconds = time.monotonic() - started
    return stats


def save_finding(finding: Finding, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{finding.harness}-{hashlib.sha256(finding.data).hexdigest()[:16]}"
    path.write_bytes(finding.data)
    return path


def run_atheris(name: str, runs: int, extra: Sequence[str] = ()) -> None:
    """libFuzzer through atheris: coverage-guided, new inputs go to a scratch folder
    (``fuzz-out/NAME``), the committed corpus is only read. Does not return."""
    import atheris  # the `fuzz` extra

    harness = HARNESSES[name]
    out = Path("fuzz-out") / name
    out.mkdir(parents=True, exist_ok=True)

    def one_input(data: bytes) -> None:
        with contextlib.suppress(SottovoceError):
            harness.target(data)

    argv = [sys.argv[0], f"-runs={runs}", f"-timeout={int(HANG_CPU_S)}", "-rss_limit_mb=2048",
            f"-max_len={MAX_LEN}", f"-artifact_prefix={out}/", *extra, str(out),
            str(CORPUS / name)]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()
