"""Technical blogs and developer forums: seed sites with their feeds and sitemaps, crawled politely.

The seed sites (home page, RSS/Atom feeds, sitemaps, the URL prefixes the crawl may follow, a
category and the content license where the site states one) are listed in
manifests/sources/blogs.yaml. One task per site:

  1. the crawler (`curation.crawl.crawl`: robots.txt, Crawl-delay, per-host rate, retries, size and
     type limits) starts from the feeds, sitemaps and home page, follows links within the site's
     prefixes, and writes every exchange to `<stage>/warc/NNNNN.warc.gz` (kept, so extraction can be
     re-run without re-crawling; a re-run of an interrupted task reuses a finished WARC when it still
     matches the size and sha256 in its crawl record `NNNNN.crawl.json`, and crawls again otherwise);
  2. the extraction stage's logic (`curation.extract.Extract`, trafilatura with a per-page time
     limit) turns the WARC's HTML responses into Documents with source "blogs".

Counts: in = HTML-bearing responses of the WARC, as in the extract stage (kept, dropped by reason,
quarantined by reason); the crawl's own outcomes (fetched, robots-denied, errors by kind) are in
the stats as `crawl:<outcome>`, and each URL the crawl could not fetch is listed in the manifest's
`errors` with its reason and detail (kept in the crawl record, so a resumed task lists them too).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from curation.crawl import CrawlConfig, crawl
from curation.extract import Extract, ExtractConfig
from curation.sources import categories, localdocs
from curation.sources.common import SOURCE_MANIFESTS, load_manifest, stage_dir
from minisigma.core.errors import UserError
from minisigma.core.progress import log
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.shards import atomic_write_json, sha256_file, shard_name, tmp_path
from curation.sources.registry import register_source, stage_runner


class BlogSite(Section):
    """A site of the manifest. With `package`, the site is a directory (`root`) of that Debian
    package, served on 127.0.0.1 for the crawl (the embedded default): `home`, `feeds`, `sitemaps`
    and `pages` (globs, seeded directly) are then paths relative to `root`."""

    name: str
    home: str
    package: str | None = None
    root: str = ""
    pages: list[str] = []
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
        if site.package is None:
            return self.crawl_and_extract(task, site, site, sink)
        # a site shipped in a Debian package: fetch it into the localdocs cache, serve it over loopback
        rec = localdocs.fetch_package(site.package, localdocs.cache_root(localdocs.LocalDocsSource()))
        directory = Path(rec["root"]) / site.root
        pages = sorted({str(f.relative_to(directory)) for pat in site.pages for f in directory.glob(pat) if f.is_file()})
        with localdocs.serve_directory(directory, site.name) as base:
            served = site.model_copy(update={
                "home": base + site.home.lstrip("/"), "feeds": [base + f.lstrip("/") for f in site.feeds],
                "sitemaps": [base + m.lstrip("/") for m in site.sitemaps],
                "allowed_prefixes": [base + a.lstrip("/") for a in site.allowed_prefixes] or
                [base + p for p in pages] or [base]})
            extra = {"package": site.package, "version": rec["version"],
                     "locator": f"localdocs://{site.package}/{site.root.strip('/')}"}
            self.crawl_and_extract(task, served, site, sink, seeds=[base + p for p in pages], extra=extra)

    def crawl_and_extract(self, task: Task, site: BlogSite, listed: BlogSite, sink: Sink,
                          seeds: list[str] = (), extra: dict | None = None) -> None:
        warc = stage_dir(sink) / "warc" / shard_name(task.index, ".warc.gz")
        record = warc.with_name(shard_name(task.index, ".crawl.json"))
        warc.parent.mkdir(parents=True, exist_ok=True)
        crawled, problem = finished_crawl(warc, record)
        if crawled is not None:
            sink.stat("crawl_resumed_from_warc")
        else:
            if problem:
                log(f"blogs: {problem}: crawling {site.name} again")
                sink.stat("crawl_warc_damaged")
            crawled = self._crawl(site, warc, record, seeds)
        for outcome, n in crawled["outcomes"].items():
            sink.stat(f"crawl:{outcome}", n)
        for f in crawled["failures"]:
            sink.error({"url": f["url"], "site": site.name}, f"error:{f['reason']}", f["detail"])
        meta = {warc.name: {"source": "blogs", "category": site.category, "site": listed.name,
                            **({"license": site.license} if site.license else {}), **(extra or {})}}
        Extract(self.config.extract, meta).process(Task(task.index, (str(warc),)), sink)

    def _crawl(self, site: BlogSite, warc: Path, record: Path, seeds=()) -> dict:
        cfg = self.config.crawl.model_copy(update={
            "allowed_prefixes": site.allowed_prefixes or [site.home],
            "allowed_hosts": [],
        })
        partial = tmp_path(warc)
        outcomes: Counter = Counter()

        def settled(url: str, outcome: str, _stats) -> None:
            outcomes[outcome] += 1

        try:
            stats = crawl(list(dict.fromkeys(site.feeds + site.sitemaps + [site.home] + list(seeds))), cfg,
                          partial, progress=settled)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        crawled = {"warc": warc.name, "bytes": partial.stat().st_size, "sha256": sha256_file(partial),
                   "outcomes": dict(sorted(outcomes.items())),
                   "failures": sorted(stats.failures, key=lambda f: (f["url"], f["reason"]))}
        atomic_write_json(record, crawled)
        os.replace(partial, warc)  # the WARC appears under its name only when the crawl finished
        return crawled


def finished_crawl(warc: Path, record: Path) -> tuple[dict | None, str]:
    """The record of a finished crawl whose WARC still matches it (size, sha256), or (None, why not);
    why is "" when there is no crawl yet."""
    if not warc.exists():
        return None, ""
    try:
        crawled = json.loads(record.read_text(encoding="utf-8"))
        size, digest = crawled["bytes"], crawled["sha256"]
        if not isinstance(crawled["outcomes"], dict) or not isinstance(crawled["failures"], list):
            raise TypeError("outcomes or failures")
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{warc} has no readable crawl record {record.name}"
    if warc.stat().st_size != size or sha256_file(warc) != digest:
        return None, f"{warc} does not match its crawl record {record.name} (size or sha256)"
    return crawled, ""


register_source(BlogsSource, stage_runner(BlogsStage))
