"""`minisigma curate`: sources -> crawl (WARC) -> extract -> refine, one stage directory each.

Run layout (every directory holds shards + manifest.json, see minisigma.core.runner):

    <run>/fetch/              localdocs: one record per Debian package (version, sha256)
    <run>/sources/<name>/     documents made directly by a source (man pages, arXiv, Stack Exchange ...)
    <run>/crawl/              one WARC per crawled site (the sites the sources return: localdocs' HTML
                              trees and PDFs, the blogs' feeds and articles ...)
    <run>/extract/            documents extracted from the WARCs

A site is a dict: name, seeds, allowed_prefixes (allowed_hosts), the documents' source, category,
package and locator, `metadata` (more keys for its documents), and optionally its own `crawl` and
`extract` settings (the blogs source's sections), used for its tasks instead of the recipe's.
    <run>/refine/<stage>/ and <run>/curated/   see curation.refine
"""

from __future__ import annotations

from pathlib import Path

from curation.crawl_stage import Crawl
from curation.extract import Extract, ExtractConfig
from curation.recipe import CurationRecipe
from curation.refine.pipeline import refine
from curation.sources.registry import SOURCES, RunContext
from minisigma.core import storage
from minisigma.core.shards import list_shards


def curate(recipe: CurationRecipe, run_dir: Path | str, ray_address: str | None = None, progress: bool = True) -> Path:
    """Run a curation recipe into `run_dir`, a local directory or a URL (s3://, gs://, memory:// ...).
    Returns the local directory the run worked in (for a URL, its cache; see minisigma.core.storage)."""
    run_dir = storage.open_run(run_dir, recipe.storage_options)  # bound: manifests record paths relative to it
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir, ray_address or recipe.ray.address, recipe.ray.executor, progress,
                     doc_suffix=recipe.shard_suffix)
    with ctx.stack:
        sites: list[dict] = []
        for src in recipe.sources:
            sites.extend(SOURCES[src.type].run(src, ctx))
        if sites:
            ctx.run(Crawl(recipe.crawl, sites), [], run_dir / "crawl",
                    extra={"sites": [{k: v for k, v in s.items() if k != "seeds"} for s in sites]})
    if sites:
        warcs = list_shards(run_dir / "crawl", ".warc.gz")
        site_of = {w.name: sites[int(w.name[:5])] for w in warcs}
        site_meta = {name: {k: s[k] for k in ("source", "category", "package", "locator") if k in s}
                     | {"site": s["name"]} | s.get("metadata", {}) for name, s in site_of.items()}
        site_config = {name: ExtractConfig.model_validate(s["extract"]) for name, s in site_of.items() if "extract" in s}
        ctx.run(ctx.docs(Extract(recipe.extract, site_meta, site_config)), warcs, run_dir / "extract")
    if recipe.refine is not None:
        refine(run_dir, recipe.refine, ray_address=ctx.ray_address, progress=progress,
               executor=recipe.refine.executor if recipe.ray.executor == "ray" else "local",
               shard_format=recipe.shard_format)
    return run_dir
