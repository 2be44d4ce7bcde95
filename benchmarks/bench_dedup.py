"""MinHash dedup quality (planted near-duplicates vs brute-force exact Jaccard) and clustering memory
at 1x vs 10x corpus size. Same as `minisigma bench dedup`.

    python benchmarks/bench_dedup.py [BASES] [SCALE_DOCS]
"""
import sys

from curation.refine import bench

if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    bench.dedup(*args, executor="ray")
