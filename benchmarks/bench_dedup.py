"""MinHash dedup quality (planted near-duplicates vs brute-force exact Jaccard) and clustering memory
at 1x vs 10x corpus size. Writes benchmarks/results/dedup.json.

    python benchmarks/bench_dedup.py [--docs 3000 --scale-docs 3000]      (or: minisigma bench dedup)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_result  # noqa: E402
from benchmarks.dedup_bench import dedup  # noqa: E402


def run(docs: int = 3000, scale_docs: int = 3000, executor: str = "ray") -> dict:
    started = machine()
    res = dedup(docs, scale_docs, executor)
    write_result("dedup", {"docs": docs, "scale_docs": scale_docs, "executor": executor, **res},
                 ("numpy", "numba", "datasketch", "ray"), started)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--scale-docs", type=int, default=3000)
    ap.add_argument("--executor", default="ray", choices=("ray", "local"))
    a = ap.parse_args()
    run(a.docs, a.scale_docs, a.executor)
