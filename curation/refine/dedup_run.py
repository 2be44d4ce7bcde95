"""Drivers of the two dedup stage groups (each a few `run_stage` calls plus the partitioned
connected components): used by the refine pipeline and by the dedup benchmark."""

from __future__ import annotations

from pathlib import Path

from minisigma.core import storage
from minisigma.core.manifest import MANIFEST, read_json
from minisigma.core.runner import ensure_ray, run_stage
from minisigma.core.shards import read_docs

from curation.refine.components import connected_components
from curation.refine.dedup_exact import DedupExactConfig, ExactHash, ExactResolve, exact_filter, n_buckets_for
from curation.refine.clusters import ClusterBest, ClusterDecisions, ClusterKeepers
from curation.refine.minhash import (MinHashBuckets, MinHashConfig, MinHashSignatures, lsh_params, minhash_filter,
                                     sizes_for)
from curation.refine.registry import RefineContext, RefineStep


def count_docs(inputs: list[Path]) -> int:
    """Documents in the input shards, from the producing stage's manifest when there is one."""
    total = 0
    listed: dict[Path, dict] = {}
    for p in inputs:
        m = p.parent / MANIFEST
        if p.parent not in listed:
            listed[p.parent] = {o["path"]: o["docs"] for o in read_json(m)["outputs"]} if m.exists() else {}
        n = listed[p.parent].get(p.name)
        total += n if n is not None else sum(1 for _ in read_docs(p))
    return total


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("[0-9]*/[0-9]*.npy"))


def run_dedup_exact(inputs: list[Path], out_dir: Path, config: DedupExactConfig, *, executor: str = "ray",
                    ray_address: str | None = None, progress: bool = True, output_suffix: str = ".jsonl.gz") -> dict:
    out_dir = Path(out_dir)
    work = out_dir / "work"
    n_docs = count_docs(inputs)
    n_buckets = n_buckets_for(n_docs, config.records_per_bucket)
    kw = dict(executor=executor, ray_address=ray_address, progress=progress)
    storage.rmtree(work / "hash-buckets")
    storage.rmtree(work / "decisions")
    # The work files are rewritten on every run, so the internal steps are not resumed.
    for sub in ("hashes", "groups"):
        storage.rmtree(out_dir / sub)
    run_stage(ExactHash(config, work, n_buckets), inputs, out_dir / "hashes", **kw)
    run_stage(ExactResolve(config, work, len(inputs)), _files(work / "hash-buckets"), out_dir / "groups", **kw)
    storage.rmtree(out_dir / ".parts")
    keep = exact_filter(work)
    keep.output_suffix = output_suffix
    return run_stage(keep, inputs, out_dir, recipe_section=config.model_dump(mode="json"),
                     extra={"dedup": {"buckets": n_buckets, "keep_rule": "smallest document id per normalised-text hash"}},
                     **kw)


def run_minhash(inputs: list[Path], out_dir: Path, config: MinHashConfig, *, executor: str = "ray",
                ray_address: str | None = None, progress: bool = True, output_suffix: str = ".jsonl.gz") -> dict:
    out_dir = Path(out_dir)
    work = out_dir / "work"
    n_docs = count_docs(inputs)
    n_buckets, n_parts = sizes_for(config, n_docs)
    bands, rows = lsh_params(config)
    kw = dict(executor=executor, ray_address=ray_address, progress=progress)
    storage.rmtree(work)
    for sub in ("signatures", "buckets", "components", "cluster_best", "cluster_keepers", "clusters"):
        storage.rmtree(out_dir / sub)
    if executor == "ray":
        ensure_ray(ray_address)
    sig = run_stage(MinHashSignatures(config, work, n_buckets), inputs, out_dir / "signatures", **kw)
    buckets = run_stage(MinHashBuckets(config, work, n_parts), _files(work / "bands"), out_dir / "buckets", **kw)
    comp = connected_components(work, n_parts, out_dir / "components", executor=executor,
                                max_iterations=config.max_iterations, recipe=config.model_dump(mode="json"))
    finals = sorted((work / "final").glob("[0-9]*.npy"))
    run_stage(ClusterBest(config, work, out_dir / "signatures", n_parts), finals, out_dir / "cluster_best", **kw)
    keepers = run_stage(ClusterKeepers(config, work, n_parts), _files(work / "best"), out_dir / "cluster_keepers", **kw)
    run_stage(ClusterDecisions(config, work, len(inputs)), finals, out_dir / "clusters", **kw)
    storage.rmtree(out_dir / ".parts")
    info = {"lsh": {"bands": bands, "rows": rows, "num_perm": config.num_perm, "threshold": config.threshold,
                    "ngram": config.ngram, "rule": f"datasketch _optimal_param(fp_weight={config.fp_weight}, "
                                                    f"fn_weight={config.fn_weight})"
                    if not (config.bands and config.rows) else "set in recipe"},
            "partitions": {"band_buckets": n_buckets, "components": n_parts},
            "candidate_pairs": buckets["stats"].get("candidate_pairs", 0),
            "verified_pairs": buckets["stats"].get("verified_pairs", 0),
            "components": comp["components"],
            "clusters": {**{k: v for k, v in keepers["stats"].items() if k not in ("peak_traced_bytes", "largest_cluster")},
                         "largest": max((read_json(p).get("stats", {}).get("largest_cluster", 0)
                                         for p in (out_dir / "cluster_keepers" / ".parts").glob("*.json")), default=0)},
            "keep_rule": "highest metadata.scores.quality, then longest text, then smallest id",
            "signature_shingles": sig["stats"].get("shingles", 0)}
    keep = minhash_filter(work)
    keep.output_suffix = output_suffix
    return run_stage(keep, inputs, out_dir, recipe_section=config.model_dump(mode="json"),
                     extra={"minhash": info}, **kw)


class DedupExact(RefineStep):
    """Refine stage `dedup_exact`: exact duplicates of the normalised text (hash buckets, smallest id kept)."""

    name = "dedup_exact"
    Config = DedupExactConfig

    @classmethod
    def run_step(cls, config: DedupExactConfig, inputs: list[Path], dest: Path, ctx: RefineContext) -> None:
        run_dedup_exact(inputs, dest, config, output_suffix=ctx.doc_suffix, **ctx.stage_kw)


class MinHashDedup(RefineStep):
    """Refine stage `minhash`: near duplicates by MinHash LSH, verified, clustered, one kept per cluster."""

    name = "minhash"
    Config = MinHashConfig

    @classmethod
    def run_step(cls, config: MinHashConfig, inputs: list[Path], dest: Path, ctx: RefineContext) -> None:
        run_minhash(inputs, dest, config, output_suffix=ctx.doc_suffix, **ctx.stage_kw)
