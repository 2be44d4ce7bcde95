"""Extraction throughput, side by side: this project's extract stage vs datatrove's
LocalPipelineExecutor + WarcReader + Trafilatura over the same WARC files; and the scaling of the
extract stage from 1 to 2 Ray workers. Prints ratios; nothing here is a test assertion."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator
from warcio.warcwriter import WARCWriter

from curation.extract import Extract, ExtractConfig
from minisigma.core.runner import run_stage


def reshard_warcs(warcs: list[Path], out_dir: Path, shards: int, limit: int | None = None) -> int:
    """Deal the HTML 200 responses of `warcs` round-robin into `shards` WARC files (equal work per shard)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [open(out_dir / f"{i:05d}.warc.gz", "wb") for i in range(shards)]
    writers = [WARCWriter(f, gzip=True) for f in files]
    n = 0
    try:
        for w in warcs:
            with open(w, "rb") as f:
                for rec in ArchiveIterator(f):
                    if rec.rec_type != "response" or not rec.http_headers:
                        continue
                    if rec.http_headers.get_statuscode() != "200":
                        continue
                    if "html" not in (rec.http_headers.get_header("Content-Type") or ""):
                        continue
                    body = rec.content_stream().read()
                    url = rec.rec_headers.get_header("WARC-Target-URI")
                    out = writers[n % shards]
                    out.write_record(out.create_warc_record(
                        url, "response", payload=io.BytesIO(body), http_headers=rec.http_headers,
                        warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"}))
                    n += 1
                    if limit and n >= limit:
                        return n
    finally:
        for f in files:
            f.close()
    return n


def time_ours(warcs: list[Path], work: Path) -> tuple[float, int]:
    out = work / "ours"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = run_stage(Extract(ExtractConfig(min_chars=0)), warcs, out, executor="local", progress=False)
    return time.perf_counter() - t0, m["counts"]["out"]


def time_datatrove(warc_dir: Path, work: Path) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    out = work / "datatrove"
    shutil.rmtree(out, ignore_errors=True)
    ex = LocalPipelineExecutor(
        pipeline=[WarcReader(str(warc_dir), glob_pattern="*.warc.gz"),
                  Trafilatura(favour_precision=True, timeout=10, deduplicate=False),
                  JsonlWriter(str(out / "data"))],
        tasks=1, workers=1, logging_dir=str(out / "logs"), skip_completed=False)
    t0 = time.perf_counter()
    ex.run()
    elapsed = time.perf_counter() - t0
    docs = 0
    for p in (out / "data").glob("*.jsonl.gz"):
        import gzip

        with gzip.open(p, "rt") as f:
            docs += sum(1 for _ in f)
    return elapsed, docs


def time_ray_workers(warcs: list[Path], work: Path, workers: int) -> float:
    import ray

    from minisigma.core.runner import ensure_ray

    if ray.is_initialized():
        ray.shutdown()
    ensure_ray(None, num_cpus=workers)
    out = work / f"ray{workers}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_stage(Extract(ExtractConfig(min_chars=0)), warcs, out, progress=False)
    elapsed = time.perf_counter() - t0
    ray.shutdown()
    return elapsed


def run(crawl_dir: Path, shards: int = 8, limit: int | None = 1200, scaling: bool = True) -> dict:
    src = sorted(Path(crawl_dir).glob("*.warc.gz"))
    if not src:
        raise SystemExit(f"{crawl_dir}: no WARC shards (run `minisigma curate recipes/curation/tiny.yaml --out runs/tiny` first)")
    work = Path(tempfile.mkdtemp(prefix="minisigma-bench-"))
    try:
        n = reshard_warcs(src, work / "warcs", shards, limit)
        warcs = sorted((work / "warcs").glob("*.warc.gz"))
        t_dt, d_dt = time_datatrove(work / "warcs", work)
        t_ours, d_ours = time_ours(warcs, work)
        res = {"pages": n, "ours_s": round(t_ours, 2), "ours_docs": d_ours, "datatrove_s": round(t_dt, 2),
               "datatrove_docs": d_dt, "ours_docs_per_s_core": round(n / t_ours, 1),
               "datatrove_docs_per_s_core": round(n / t_dt, 1), "ratio_vs_datatrove": round(t_dt / t_ours, 2)}
        print(f"extraction of {n} HTML pages, 1 core each:")
        print(f"  minisigma extract : {res['ours_docs_per_s_core']:8.1f} pages/s ({d_ours} docs)")
        print(f"  datatrove         : {res['datatrove_docs_per_s_core']:8.1f} pages/s ({d_dt} docs)")
        print(f"  ratio (ours/datatrove throughput): {res['ratio_vs_datatrove']:.2f}x  (target >= 1.0x)")
        if scaling:
            t1 = time_ray_workers(warcs, work, 1)
            t2 = time_ray_workers(warcs, work, 2)
            res.update(ray1_s=round(t1, 2), ray2_s=round(t2, 2), scaling_1_to_2=round(t1 / t2, 2))
            print(f"Ray extract stage, {len(warcs)} shards: 1 worker {t1:.1f}s, 2 workers {t2:.1f}s -> "
                  f"{t1 / t2:.2f}x  (target >= 1.7x)")
        print(json.dumps(res))
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)
