"""Technical blogs and developer forums: seed sites with their feeds and sitemaps, crawled politely.

The seed sites (home page, RSS/Atom feeds, sitemaps, the URL prefixes the crawl may follow, a
category and the content license where the site states one) are listed in
manifests/sources/blogs.yaml. The source only discovers where each site's articles are and hands the
sites to the shared crawl path (`curation.pipeline.curate`), like every other crawled source:

  1. the crawl stage (`curation.crawl_stage.Crawl`: robots.txt, Crawl-delay, per-host rate,
     retries, size and type limits) starts from the site's feeds, sitemaps, home page and listed
     pages, follows links within its prefixes, and writes every exchange to `<run>/crawl/NNNNN.warc.gz`
     (one WARC per site; the crawl manifest counts each URL's outcome and lists each URL that failed
     in its `errors`, with the site's name);
  2. the extract stage (`curation.extract.Extract`, trafilatura with a per-page time limit) turns the
     WARC's HTML responses into `<run>/extract/` documents with source "blogs", the site's category,
     license and name.

The section's `crawl:` and `extract:` settings are this source's own (defaults where not given), not
the recipe's top-level ones: the crawl and extract stages apply them to the blog sites' tasks.
A site shipped in a Debian package (`BlogSite.package`, the embedded default) is fetched into the
localdocs cache and served on 127.0.0.1 while the crawl runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Literal

from pydantic import Field

from curation.crawl import CrawlConfig
from curation.extract import ExtractConfig
from curation.sources import categories, localdocs
from curation.sources.common import SOURCE_MANIFESTS, load_manifest
from curation.sources.registry import RunContext, register_source
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section


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


def package_site(site: BlogSite, ctx: RunContext) -> tuple[BlogSite, list[str], dict]:
    """A site shipped in a Debian package: fetched into the localdocs cache and served over loopback
    for the rest of the run. Returns the site with its served URLs, its listed pages' URLs (seeded
    directly) and the metadata its documents get (package, version, port-free locator)."""
    try:
        rec = localdocs.fetch_package(site.package, localdocs.cache_root(localdocs.LocalDocsSource()))
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        raise UserError(f"blogs: site {site.name}: package {site.package}: {str(e).splitlines()[0][:200]}") from None
    directory = Path(rec["root"]) / site.root
    pages = sorted({str(f.relative_to(directory)) for pat in site.pages for f in directory.glob(pat) if f.is_file()})
    base = ctx.stack.enter_context(localdocs.serve_directory(directory, site.name))
    served = site.model_copy(update={
        "home": base + site.home.lstrip("/"), "feeds": [base + f.lstrip("/") for f in site.feeds],
        "sitemaps": [base + m.lstrip("/") for m in site.sitemaps],
        "allowed_prefixes": [base + a.lstrip("/") for a in site.allowed_prefixes] or [base + p for p in pages] or [base]})
    return served, [base + p for p in pages], {"package": site.package, "version": rec["version"],
                                               "locator": f"localdocs://{site.package}/{site.root.strip('/')}"}


def run_blogs(src: BlogsSource, ctx: RunContext) -> list[dict]:
    """The blog sites for the shared crawl and extract stages (nothing is crawled here)."""
    out = []
    for listed in select_sites(src):
        site, pages, extra = package_site(listed, ctx) if listed.package is not None else (listed, [], {})
        seeds = list(dict.fromkeys(site.feeds + site.sitemaps + [site.home] + pages))
        meta = {"license": site.license} if site.license else {}
        out.append({"name": listed.name, "seeds": seeds, "allowed_prefixes": site.allowed_prefixes or [site.home],
                    "allowed_hosts": [], "source": "blogs", "category": site.category,
                    **({"package": extra["package"], "locator": extra["locator"]} if extra else {}),
                    "metadata": {**meta, **({"version": extra["version"]} if extra else {})},
                    "crawl": src.crawl.model_dump(mode="json"), "extract": src.extract.model_dump(mode="json")})
    return out


register_source(BlogsSource, run_blogs)
