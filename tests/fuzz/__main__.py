"""``python -m tests.fuzz NAME --runs N``: fuzz one harness (or ``all``) for a long run.

``--engine random`` (default when atheris is absent) is the pure-Python mutational
runner; ``--engine atheris`` is coverage-guided libFuzzer (``pip install -e '.[fuzz]'``).
``--list`` names the harnesses. Findings are saved to ``fuzz-out/`` and the exit
status is 1 when there are any.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def _instrumented_imports() -> None:
    """Under atheris, import the decoders with coverage instrumentation of sottovoce only
    (instrumenting every loaded module takes minutes)."""
    if "atheris" in sys.argv and importlib.util.find_spec("atheris") is not None:
        import atheris

        with atheris.instrument_imports(include=["sottovoce"]):
            import tests.fuzz.harnesses  # noqa: F401


_instrumented_imports()

from tests.fuzz.engine import run, run_atheris, save_finding  # noqa: E402
from tests.fuzz.harnesses import HARNESSES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("name", nargs="?", help="a harness, or 'all'")
    parser.add_argument("--runs", type=int, default=100_000, help="mutated inputs per harness")
    parser.add_argument("--seconds", type=float, default=None, help="stop a harness after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("random", "atheris"), default=None)
    parser.add_argument("--list", action="store_true", help="list the harnesses")
    args, extra = parser.parse_known_args(argv)
    if args.list or not args.name:
        print("\n".join(HARNESSES))
        return 0
    names = list(HARNESSES) if args.name == "all" else [args.name]
    unknown = [n for n in names if n not in HARNESSES]
    if unknown:
        print(f"unknown harness {unknown[0]!r}; --list names them", file=sys.stderr)
        return 2
    engine = args.engine or "random"
    if engine == "atheris":
        if importlib.util.find_spec("atheris") is None:
            print("atheris is not installed: pip install -e '.[fuzz]'", file=sys.stderr)
            return 2
        if len(names) != 1:
            print("atheris runs one harness per process", file=sys.stderr)
            return 2
        run_atheris(names[0], args.runs, extra)
        return 0
    found = 0
    for name in names:
        stats = run(name, args.runs, seed=args.seed, max_seconds=args.seconds,
                    log_every=100_000)
        print(f"{name}: {stats.inputs} inputs in {stats.seconds:.1f} s "
              f"({stats.rate:.0f}/s), {len(stats.findings)} finding(s)", flush=True)
        for finding in stats.findings:
            found += 1
            path = save_finding(finding, Path("fuzz-out") / "findings")
            print(finding.describe(), f"saved to {path}", sep="\n", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
