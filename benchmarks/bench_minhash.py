"""MinHash signatures/s per core: minisigma vs datatrove's MinhashDedupSignature vs datasketch's
plain MinHash.update loop, same documents in one run. Same as `minisigma bench minhash`.

    python benchmarks/bench_minhash.py [DOCS]
"""
import sys

from curation.refine import bench

if __name__ == "__main__":
    bench.minhash(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
