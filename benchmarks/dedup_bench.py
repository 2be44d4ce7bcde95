"""The dedup benchmark's parts (planted-duplicate quality run, clustering memory at 1x / 10x), used by
benchmarks/bench_dedup.py (`minisigma bench dedup`) and by tests/curation/test_refine_minhash.py."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from minisigma.core.shards import ShardWriter, read_docs

from curation.refine.dedup_eval import evaluate, exact_pairs, planted_corpus
from curation.refine.minhash import MinHashConfig, SignatureComputer
from benchmarks.realtext import man_pages, stdlib_docs


def base_texts(n: int, words_per_doc: int = 150) -> list[str]:
    """`n` real texts: consecutive windows of man pages (Python docstrings when man pages are absent)."""
    out: list[str] = []
    pages = man_pages(max(50, n // 2))
    if not pages:
        pages = stdlib_docs()
    for p in pages:
        w = p["text"].split()
        for i in range(0, max(1, len(w) - words_per_doc // 2), words_per_doc):
            out.append(" ".join(w[i:i + words_per_doc]))
            if len(out) >= n:
                return out
    return out


def write_shards(docs: list[dict], root: Path, n_shards: int) -> list[Path]:
    paths = []
    for s in range(n_shards):
        p = root / f"{s:05d}.jsonl.gz"
        with ShardWriter(p) as w:
            for d in docs[s::n_shards]:
                w.write(d)
        paths.append(p)
    return paths


def found_pairs_and_clusters(out_dir: Path, idx: dict[str, int]):
    """The verified pairs (by doc index) and the cluster of every clustered document, read back
    from a run_minhash output directory."""
    tables = {int(p.name[:5]): np.load(p) for p in sorted((out_dir / "signatures").glob("0*.npy"))}

    def doc_index(node) -> int:
        return idx[tables[int(node) >> 32][int(node) & 0xFFFFFFFF]["id"].decode()]

    found = {}
    for p in sorted((out_dir / "buckets").glob("0*.npy")):
        for r in np.load(p):
            a, b = sorted((doc_index(r["u"]), doc_index(r["v"])))
            found[(a, b)] = float(r["jaccard"])
    cluster = {}
    for p in sorted(out_dir.glob("0*.jsonl.gz")) + sorted((out_dir / "rejects").glob("0*.jsonl.gz")):
        for d in read_docs(p):
            d = d.get("doc", d) if "kind" in d else d
            mh = (d.get("metadata") or {}).get("minhash")
            if mh:
                cluster[idx[d["id"]]] = mh["cluster"]
    return found, cluster


def quality_run(n_bases: int, root: Path, config: MinHashConfig, executor: str, seed: int = 0) -> dict:
    from curation.refine.dedup_run import run_minhash

    docs = planted_corpus(base_texts(n_bases), ngram=config.ngram, seed=seed)
    inputs = write_shards(docs, root / "in", 4)
    t0 = time.time()
    m = run_minhash(inputs, root / "out", config, executor=executor, progress=False)
    seconds = time.time() - t0
    idx = {d["id"]: i for i, d in enumerate(docs)}
    truth = exact_pairs([d["text"] for d in docs], config.ngram, config.threshold)
    found, cluster = found_pairs_and_clusters(root / "out", idx)
    res = evaluate(truth, found, cluster)
    res.update(docs=len(docs), seconds=round(seconds, 2), lsh=m["minhash"]["lsh"],
               dropped=m["counts"]["dropped"].get("minhash_duplicate", 0))
    return res


def distinct_base_texts(n: int, config: MinHashConfig | None = None) -> list[str]:
    """`n` base texts of which no two share a MinHash band key (so no two are near-duplicates).

    Real samples of man pages hold their own near-duplicates (pages installed under several names,
    boilerplate windows shared by hundreds of pages), and a larger sample holds more and larger
    families: with raw windows the 10x corpus would have a different duplicate structure, not just more
    documents. Filtering the bases leaves only the planted duplicates, the same structure at every scale,
    so the 1x / 10x comparison measures the system. (The benchmark also prints the per-task data sizes.)"""
    from curation.refine.minhash import band_keys, lsh_params

    c = config or MinHashConfig()
    bands, rows = lsh_params(c)
    comp = SignatureComputer(c.num_perm, c.seed, c.ngram)
    texts = list(dict.fromkeys(base_texts(int(n * 3) + 20)))
    keys = band_keys(comp.signatures([comp.shingles(t) for t in texts]), bands, rows)
    seen: set[tuple[int, int]] = set()
    out = []
    for t, k in zip(texts, keys.tolist()):
        mine = set(enumerate(k))
        if mine & seen:
            continue
        seen |= mine
        out.append(t)
        if len(out) == n:
            break
    return out


def _task_peaks(stage_dir: Path) -> list[int]:
    return [json.loads(p.read_text())["stats"].get("peak_traced_bytes", 0) for p in (stage_dir / ".parts").glob("*.json")]


def clustering_memory(n_docs: int, root: Path, executor: str, per_part: int) -> dict:
    """Per-task peak memory (tracemalloc, see memtrace.py) of the clustering steps of one MinHash run on
    a planted corpus of about `n_docs` documents, with `per_part` documents per band bucket and per
    components partition (the planner scales the number of both with the corpus)."""
    from curation.refine.components import peak_summary
    from curation.refine.dedup_run import run_minhash

    docs = planted_corpus(distinct_base_texts(int(n_docs / 1.3)), seed=1)
    inputs = write_shards(docs, root / "in", max(2, len(docs) // 1500))
    c = MinHashConfig(nodes_per_partition=per_part, band_records_per_bucket=per_part)
    m = run_minhash(inputs, root / "out", c, executor=executor, progress=False)
    out = root / "out"
    comp_m = json.loads((out / "components" / "manifest.json").read_text())
    comp = comp_m["components"]
    bucket_parts = [json.loads(p.read_text()) for p in (out / "buckets" / ".parts").glob("*.json")]
    cluster_peaks = sum((_task_peaks(out / d) for d in ("cluster_best", "cluster_keepers", "clusters")), [])
    return {"docs": len(docs), "shards": len(inputs), "band_buckets": m["minhash"]["partitions"]["band_buckets"],
            "partitions": comp["partitions"], "graph_nodes": comp["nodes"], "iterations": comp["iterations"],
            "records_per_bucket": float(np.median([p["counts"]["in"] for p in bucket_parts])),
            "nodes_per_partition": float(np.median([o["docs"] for o in comp_m["outputs"]])),
            "edges_per_partition": comp["history"][0]["edges"] / comp["partitions"],
            "largest_cluster": m["minhash"]["clusters"].get("largest", 0),
            "steps": {"buckets": peak_summary([p["stats"].get("peak_traced_bytes", 0) for p in bucket_parts]),
                      "components": comp["task_peak_traced_bytes"],
                      "clusters": peak_summary(cluster_peaks)}}


def print_memory(small: dict, large: dict, per_part: int) -> dict:
    kib = lambda b: f"{b / 1024:7.0f}"  # noqa: E731
    print(f"clustering memory per task, 1x vs 10x corpus (tracemalloc peak of the task above what its worker held "
          f"before: Python objects and numpy buffers, KiB; planner: {per_part} documents per band bucket and per "
          f"components partition)")
    print(f"  {'':<11}{'1x: ' + format(small['docs'], ',') + ' docs':>29}   {'10x: ' + format(large['docs'], ',') + ' docs':>29}"
          f"   {'10x / 1x':>23}")
    print(f"  {'step':<11}{'tasks':>7}{'median':>8}{'p95':>7}{'max':>7}   {'tasks':>7}{'median':>8}{'p95':>7}{'max':>7}"
          f"   {'median':>7}{'p95':>8}{'max':>8}")
    ratios = {}
    for step in ("buckets", "components", "clusters"):
        a, b = small["steps"][step], large["steps"][step]
        r = {k: b[k] / max(1, a[k]) for k in ("median", "p95", "max")}
        ratios[step] = r
        print(f"  {step:<11}{a['tasks']:>7}{kib(a['median']):>8}{kib(a['p95']):>7}{kib(a['max']):>7}   "
              f"{b['tasks']:>7}{kib(b['median']):>8}{kib(b['p95']):>7}{kib(b['max']):>7}   "
              f"{r['median']:>6.2f}x{r['p95']:>7.2f}x{r['max']:>7.2f}x")
    print("  target: flat, 10x / 1x about 1.0x (per-task memory set by the partition size, not the corpus)")
    for label, key, fmt in (("band buckets", "band_buckets", "{:.0f}"), ("components partitions", "partitions", "{:.0f}"),
                            ("records per bucket (median)", "records_per_bucket", "{:.0f}"),
                            ("graph nodes per partition (median)", "nodes_per_partition", "{:.0f}"),
                            ("unique edges per partition (mean)", "edges_per_partition", "{:.0f}"),
                            ("propagation iterations", "iterations", "{:.0f}"), ("largest cluster", "largest_cluster", "{:.0f}")):
        print(f"  {label:<36} {fmt.format(small[key]):>8} {fmt.format(large[key]):>8}")
    return ratios


def dedup(n_bases: int = 3000, scale_docs: int = 3000, executor: str = "ray") -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        q = quality_run(n_bases, tmp / "quality", MinHashConfig(), executor)
        print(f"dedup quality: {q['docs']} docs, {q['true_pairs']} true pairs (exact Jaccard >= 0.8), "
              f"{q['reported_pairs']} reported pairs")
        print(f"  recall    {q['recall']:.4f}   (target >= 0.95)")
        print(f"  precision {q['precision']:.4f}   (target >= 0.98)")
        for band, r in q["recall_by_jaccard"].items():
            print(f"  recall at Jaccard {band}: {r['recall']:.4f} over {r['pairs']} pairs")
        print(f"  LSH {q['lsh']['bands']} bands x {q['lsh']['rows']} rows ({q['lsh']['rule']}), {q['seconds']} s")
        per_part = max(250, scale_docs // 4)
        # The 10x run goes first, so one-off costs of fresh worker processes (first calls) count against it.
        large = clustering_memory(scale_docs * 10, tmp / "s10", executor, per_part)
        small = clustering_memory(scale_docs, tmp / "s1", executor, per_part)
        ratios = print_memory(small, large, per_part)
        return {"quality": q, "memory": {"1x": small, "10x": large, "ratios": ratios}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
