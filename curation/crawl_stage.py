"""The crawl stage: one Ray task per site, each writing one WARC shard (NNNNN.warc.gz).

Per-host politeness (robots.txt, Crawl-delay, rate, concurrency) is enforced by the crawler
inside a task; the planner puts each host in exactly one task so no two tasks hit one host.
Manifest counts: in = frontier URLs; out = stored fetches (pages, sitemaps, feeds); dropped =
robots-denied and skipped URLs by kind; quarantined = fetch errors by kind, and each of those URLs
is listed in the manifest's `errors` with its reason and detail (e.g. "3 attempt(s), statuses 503
503 503; no retries left"). A retried fetch is one WARC record (see curation.warclog).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from curation.crawl import CrawlConfig, crawl
from minisigma.core.runner import Sink, Stage, Task


class Crawl(Stage):
    name = "crawl"
    output_suffix = ".warc.gz"

    def __init__(self, config: CrawlConfig, sites: list[dict]):
        """`sites`: [{name, seeds, allowed_prefixes, source, category, ...}], one task each. A site
        with its own `crawl` settings (a CrawlConfig's fields: the blogs source's section) is crawled
        with those instead of `config`."""
        super().__init__(config)
        hosts = [{urlsplit(s).netloc for s in site["seeds"]} for site in sites]
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                if a & b:
                    raise ValueError(f"sites share hosts {sorted(a & b)}: merge them into one site")
        self.sites = sites

    def tasks(self, inputs):
        return [Task(i, tuple(site["seeds"]), {"site": site["name"]}) for i, site in enumerate(self.sites)]

    def process(self, task: Task, sink: Sink) -> None:
        site = self.sites[task.index]
        base = CrawlConfig.model_validate(site["crawl"]) if "crawl" in site else self.config
        cfg = base.model_copy(update={
            "allowed_prefixes": list(site.get("allowed_prefixes") or base.allowed_prefixes),
            "allowed_hosts": list(site.get("allowed_hosts") or base.allowed_hosts),
        })
        def settled(url: str, outcome: str, stats) -> None:
            sink.take()
            where = {"url": url, "site": site["name"]}
            if outcome in ("fetched", "sitemaps", "feeds"):
                sink.count_out()
            elif outcome.startswith("error:"):
                detail = stats.failures[-1]["detail"]  # the crawler lists a failure before reporting it
                sink.quarantine({**where, "detail": detail}, outcome)
                sink.error(where, outcome, detail)
            else:  # robots_denied, skipped:<kind>
                sink.drop(where, outcome)

        stats = crawl(list(site["seeds"]), cfg, sink.path, progress=settled)
        if (left := stats.unaccounted()) > 0:  # admitted but never settled (should not happen)
            sink.take(n=left)
            for _ in range(left):
                sink.drop({"site": site["name"]}, "unsettled")
        for key in ("requests", "robots_fetched", "retries", "redirects", "invalid_utf8", "pdfs", "bytes_fetched",
                    "warc_records", "sitemaps", "feeds"):
            sink.stat(key, getattr(stats, key))
        for kind, n in stats.filtered.items():
            sink.stat(f"links_filtered:{kind}", n)
