"""Technical blogs and developer forums: seed sites with their feeds and sitemaps, crawled politely.

The seed sites (home page, RSS/Atom feeds, sitemaps, the URL prefixes the crawl may follow, a
category and the content license where the site states one) are listed in
manifests/sources/blogs.yaml. One task per site:

  1. the crawler (`curation.crawl.crawl`: robots.txt, Crawl-delay, per-host rate, retries, size and
     type limits) starts from the feeds, sitemaps and home page, follows links within the site's
     prefixes, and writes every exchange to `<stage>/warc/NNNNN.warc.gz` (kept, so extraction can be
     re-run without re-crawling; a re-run of an interrupted task reuses a finished WARC);
  2. the extraction stage's logic (`curation.extract.Extract`, trafilatura with a per-page time
     limit) turns the WARC's HTML responses into Documents with source "blogs".

Counts: in = HTML-bearing responses of the WARC, as in the extract stage (kept, dropped by reason,
quarantined by reason); the crawl's own outcomes (fetched, robots-denied, errors by kind) are in
the stats as `crawl:<outcome>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from curation.crawl import CrawlConfig, crawl
from curation.extract import Extract, ExtractConfig
from curation.sources import categories
from curation.sources.common import SOURCE_MANIFESTS, load_manifest, stage_dir
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.shards import shard_name, tmp_path


class BlogSite(Section):
    name: str
    home: str
    feeds: list[str] = []
    sitemaps: list[str] = []
    allowed_prefixes: list[str] = []  # default: the home page's URL as a prefix
    category: str = "other"
    license: str | None = None  # the content license, when the site states one
    note: str = ""


class BlogsManifest(Section):
    description: str = ""
    sites: list[BlogSite]


class BlogsSource(Section):
    """Recipe section of the blogs source."""

    type: Literal["blogs"] = "blogs"
    name: str = "blogs"
    manifest: Path = SOURCE_MANIFESTS / "blogs.yaml"
    sites: list[str] | None = None  # a subset of the manifest's sites, by name
    crawl: CrawlConfig = Field(default_factory=CrawlConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)


def select_sites(src: BlogsSource) -> list[BlogSite]:
    sites = load_manifest(src.manifest, BlogsManifest).sites
    for s in sites:
        categories.check(s.category)
    if src.sites is None:
        return sites
    by_name = {s.name: s for s in sites}
    if bad := [n for n in src.sites if n not in by_name]:
        raise UserError(f"blogs: sites not in {src.manifest}: {', '.join(bad)}")
    return [by_name[n] for n in src.sites]


class BlogsStage(Stage):
    name = "blogs"

    def __init__(self, config: BlogsSource):
        super().__init__(config)
        self.sites = select_sites(config)

    def tasks(self, inputs) -> list[Task]:
        return [Task(i, (s.home,), {"site": s.name}) for i, s in enumerate(self.sites)]

    def process(self, task: Task, sink: Sink) -> None:
        site = self.sites[task.index]
        warc = stage_dir(sink) / "warc" / shard_name(task.index, ".warc.gz")
        warc.parent.mkdir(parents=True, exist_ok=True)
        if warc.exists():
            sink.stat("crawl_resumed_from_warc")
        else:
            cfg = self.config.crawl.model_copy(update={
                "allowed_prefixes": site.allowed_prefixes or [site.home],
                "allowed_hosts": [],
            })
            partial = tmp_path(warc)

            def settled(url: str, outcome: str, _stats) -> None:
                sink.stat(f"crawl:{outcome}")

            crawl(list(dict.fromkeys(site.feeds + site.sitemaps + [site.home])), cfg, partial, progress=settled)
            os.replace(partial, warc)  # the WARC appears under its name only when the crawl finished
        meta = {warc.name: {"source": "blogs", "category": site.category, "site": site.name,
                            **({"license": site.license} if site.license else {})}}
        Extract(self.config.extract, meta).process(Task(task.index, (str(warc),)), sink)
