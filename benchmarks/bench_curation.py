"""Extraction throughput vs datatrove and 1-vs-2 Ray worker scaling.

    python benchmarks/bench_curation.py runs/tiny/crawl     (or: minisigma bench curation runs/tiny/crawl)
"""

import argparse

from curation.bench import run

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("crawl_dir", help="a crawl stage directory holding NNNNN.warc.gz")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--limit", type=int, default=1200, help="pages to use (0 = all)")
    ap.add_argument("--no-scaling", action="store_true")
    a = ap.parse_args()
    run(a.crawl_dir, a.shards, a.limit or None, not a.no_scaling)
