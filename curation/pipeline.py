"""`minisigma curate`: sources -> crawl (WARC) -> extract -> refine, one stage directory each.

Run layout (every directory holds shards + manifest.json, see minisigma.core.runner):

    <run>/fetch/              localdocs: one record per Debian package (version, sha256)
    <run>/sources/<name>/     documents made directly by a source (man pages, arXiv, Stack Exchange ...)
    <run>/crawl/              one WARC per crawled site
    <run>/extract/            documents extracted from the WARCs
    <run>/refine/<stage>/ and <run>/curated/   see curation.refine
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from curation.crawl_stage import Crawl
from curation.extract import Extract
from curation.recipe import CurationRecipe
from curation.refine.pipeline import refine
from curation.sources import localdocs
from curation.sources import runners as adapter_runners
from minisigma.core.progress import log
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards


@dataclass
class RunContext:
    run_dir: Path
    ray_address: str | None = None
    executor: str = "ray"
    progress: bool = True
    doc_suffix: str = ".jsonl.gz"  # the recipe's shard_format
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def docs(self, stage):
        """A stage that writes Documents, set to write them in the recipe's shard format."""
        stage.output_suffix = self.doc_suffix
        return stage

    def run(self, stage, inputs, out_dir, recipe_section=None, extra=None) -> dict:
        return run_stage(stage, inputs, out_dir, ray_address=self.ray_address, executor=self.executor,
                         recipe_section=recipe_section, progress=self.progress, extra=extra)


def run_localdocs(src: localdocs.LocalDocsSource, ctx: RunContext) -> list[dict]:
    """Fetch the packages, render their man pages, and serve their HTML trees for the crawl."""
    specs = localdocs.selected_packages(src)
    section = src.model_dump(mode="json")
    fetch_dir = ctx.run_dir / "fetch"
    m = ctx.run(localdocs.FetchPackages(src, specs), [], fetch_dir, recipe_section=section)
    records = [r for p in list_shards(fetch_dir) for r in localdocs.read_docs(p)]
    log(f"localdocs: {len(records)} packages in cache ({sum(r['deb_bytes'] for r in records) / 1e6:.1f} MB of .deb); "
        f"{sum(m['counts']['quarantined'].values())} failed")
    if src.man and any(s.man for s in specs):
        ctx.run(ctx.docs(localdocs.ManPages(src, specs)), list_shards(fetch_dir), ctx.run_dir / "sources" / "manpages",
                recipe_section=section)
    if any(s.text_files for s in specs):
        ctx.run(ctx.docs(localdocs.TextFiles(src, specs)), list_shards(fetch_dir), ctx.run_dir / "sources" / "text",
                recipe_section=section)
    if not src.html:
        records = [{**r, "html_roots": []} for r in records]  # the PDFs are still served and crawled
    sites = ctx.stack.enter_context(localdocs.serve_sites(records, {s.name: s for s in specs}))
    return [{"name": s.name, "seeds": s.seeds, "allowed_prefixes": s.allowed_prefixes,
             "source": src.name if s.source == "localdocs" else s.source,
             "category": s.category, "package": s.package, "version": s.version,
             "locator": f"localdocs://{s.package}"} for s in sites]


SOURCE_RUNNERS = {"localdocs": run_localdocs, **adapter_runners.RUNNERS}  # arxiv, ccf, stackexchange, blogs


def curate(recipe: CurationRecipe, run_dir: Path, ray_address: str | None = None, progress: bool = True) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run_dir, ray_address or recipe.ray.address, recipe.ray.executor, progress,
                     doc_suffix=recipe.shard_suffix)
    with ctx.stack:
        sites: list[dict] = []
        for src in recipe.sources:
            sites.extend(SOURCE_RUNNERS[src.type](src, ctx))
        if sites:
            ctx.run(Crawl(recipe.crawl, sites), [], run_dir / "crawl",
                    extra={"sites": [{k: v for k, v in s.items() if k != "seeds"} for s in sites]})
    if sites:
        crawl_dir = run_dir / "crawl"
        warcs = list_shards(crawl_dir, ".warc.gz")
        site_meta = {w.name: {k: sites[int(w.name[:5])][k] for k in ("source", "category", "package", "locator")
                              if k in sites[int(w.name[:5])]} | {"site": sites[int(w.name[:5])]["name"]}
                     for w in warcs}
        ctx.run(ctx.docs(Extract(recipe.extract, site_meta)), warcs, run_dir / "extract")
    if recipe.refine is not None:
        refine(run_dir, recipe.refine, ray_address=ctx.ray_address, progress=progress,
               executor=recipe.refine.executor if recipe.ray.executor == "ray" else "local",
               shard_format=recipe.shard_format)
    return run_dir
