"""editgen bench: the benchmark suite (benchmarks/run.py; method in docs/benchmarks.md).

Takes the same arguments as `python -m benchmarks.run`."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark transformers vs the torch backend and ORT engine",
                       description="Same arguments as `python -m benchmarks.run`.")
    try:
        from benchmarks.run import add_arguments
    except ImportError:  # benchmarks/ ships with the source tree, not the runtime wheel
        p.add_argument("bench_args", nargs=argparse.REMAINDER)
    else:
        add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from benchmarks.run import run as run_bench
    except ImportError as exc:
        from editgen.errors import EditGenError

        raise EditGenError(f"the benchmarks package is not importable ({exc}): run from a source checkout") from None
    return run_bench(args)
