"""The polite crawler: seeds -> a gzipped WARC of request/response pairs, plus counted outcomes.

    stats = crawl(["http://127.0.0.1:8000/"], CrawlConfig(allow_loopback=True), Path("out.warc.gz"))

Shape: breadth-first rounds over a de-duplicated frontier of canonical URLs (`curation.urls`).
Each round is the sorted list of URLs first discovered in the previous round, cut to the page
budget, so the same site always yields the same set of pages whatever the timing. Within a round,
asyncio workers fetch concurrently; every host (scheme://host:port) has a semaphore
(`per_host_concurrency`) and a start-time schedule spacing requests by
max(1/per_host_rate, robots Crawl-delay, robots Request-rate), pushed back by Retry-After/backoff.

Per URL, before any request: the resolved address must pass `curation.addresses` (again at
connect time, inside the HTTP client), and robots.txt (fetched once per host, recorded in the
WARC, parsed with Protego) must allow it. Redirects are followed here, one hop at a time, each hop
re-checked for scope, address and robots, with a hop limit and loop detection. Responses go
through `curation.crawl_http` (timeouts, deadline, body and decompression caps, content types).

Every URL admitted to the frontier ends in exactly one counter, so nothing is lost silently:
    urls == fetched + sitemaps + feeds + robots_denied + sum(errors) + sum(skipped)
(`CrawlStats.unaccounted()` is 0). Links that never enter the frontier are counted in `filtered`.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import aiohttp
from protego import Protego
from pydantic import Field, field_validator

from curation.addresses import AddressRefused, PolicyResolver, check_host
from curation.crawl_http import Exchange, FetchError, fetch_once, gunzip_capped, retry_after_seconds
from curation.pdftext import PDF_TYPES
from curation.links import (FEED_TYPES, HTML_TYPES, SITEMAP_TYPES, citation_pdf_urls, decodes, html_links,
                            parse_discovery, sniff_charset)
from curation.urls import BadURL, Scope, canonicalize, host_key
from curation.warclog import WarcLog
from minisigma.core.recipes import Section

# Crawling the real web? Put your own contact here (recipes: crawl.user_agent).
DEFAULT_USER_AGENT = "minisigma-crawler/0.1 (+https://minisigma.invalid/crawler; mailto:crawler@minisigma.invalid)"
REDIRECTS = (301, 302, 303, 307, 308)
GZIP_TYPES = {"application/gzip", "application/x-gzip"}


class CrawlConfig(Section):
    """The `crawl` section of a curation recipe."""

    user_agent: str = Field(DEFAULT_USER_AGENT, description="names the tool and a contact (URL or e-mail)")
    allow_loopback: bool = Field(False, description="allow 127.0.0.0/8 and ::1 (never private/link-local)")
    allowed_hosts: list[str] = Field(default_factory=list, description="'host' (any port) or 'host:port'")
    allowed_prefixes: list[str] = Field(default_factory=list, description="URL prefixes; with no hosts/prefixes the seeds' hosts")
    max_pages: int = Field(1000, ge=1, description="frontier URLs fetched at most (pages, sitemaps, feeds)")
    max_depth: int = Field(5, ge=0, description="link hops from a seed (sitemap/feed entries count as seeds)")
    concurrency: int = Field(8, ge=1, description="requests in flight over all hosts")
    per_host_concurrency: int = Field(2, ge=1)
    per_host_rate: float = Field(2.0, gt=0, description="requests per second per host, at most")
    respect_robots: bool = True
    max_crawl_delay: float = Field(60.0, ge=0, description="a host asking a longer Crawl-delay is skipped")
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(20.0, gt=0, description="longest wait for any bytes")
    total_timeout: float = Field(60.0, gt=0, description="deadline of one exchange, headers to last byte")
    max_body_bytes: int = Field(10 * 2**20, ge=1, description="cap on the raw AND the decompressed body")
    max_robots_bytes: int = Field(512 * 1024, ge=1)
    # application/pdf: papers, reports and specifications (curation.pdftext); max_body_bytes caps them too
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml", "text/plain", "application/pdf"]
    )
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(3, ge=0, description="extra attempts after a 429 or 5xx")
    backoff_base: float = Field(1.0, ge=0, description="seconds; attempt n waits base * 2**n (capped)")
    backoff_max: float = Field(30.0, ge=0)
    max_retry_after: float = Field(120.0, ge=0, description="a longer Retry-After gives up instead")
    follow_links: bool = True
    use_sitemaps: bool = Field(True, description="expand sitemaps (and robots.txt Sitemap: lines)")
    use_feeds: bool = Field(True, description="expand RSS/Atom feeds")
    follow_pdf_meta: bool = Field(False, description="an HTML page's <meta name=citation_pdf_url> (the "
                                  "Highwire tag of USENIX, ACM, IEEE, arXiv ... landing pages) is fetched "
                                  "too, even outside the allowed prefixes (robots and rate still apply)")

    @field_validator("user_agent")
    @classmethod
    def _names_contact(cls, v: str) -> str:
        words = v.split()
        if not words or "/" not in words[0]:
            raise ValueError("must start with a product token like 'name/version'")
        if "http" not in v and "@" not in v:
            raise ValueError("must name a contact (a URL or an e-mail address)")
        return v

    @field_validator("allowed_content_types")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [t.strip().lower() for t in v]

    @property
    def robots_token(self) -> str:
        return self.user_agent.split()[0].split("/")[0]


@dataclass
class CrawlStats:
    """Outcome counters of a crawl (dict-able: `to_dict()`), for the stage manifest."""

    urls: int = 0  # URLs admitted to the frontier
    fetched: int = 0  # pages stored (2xx, allowed content type)
    sitemaps: int = 0
    feeds: int = 0
    robots_denied: int = 0
    errors: Counter = field(default_factory=Counter)  # kind -> URLs
    skipped: Counter = field(default_factory=Counter)  # kind -> URLs (not failures)
    filtered: Counter = field(default_factory=Counter)  # links never admitted: out_of_scope, too_deep ...
    requests: int = 0  # HTTP requests sent, robots/redirect hops/retries included
    robots_fetched: int = 0
    retries: int = 0
    redirects: int = 0
    pdfs: int = 0  # stored PDF documents (counted in `fetched` too)
    invalid_utf8: int = 0  # stored pages whose body does not decode with its declared charset
    bytes_fetched: int = 0  # raw body bytes of stored pages
    warc_records: int = 0
    failures: list = field(default_factory=list)  # one {url, reason, detail} per URL counted in `errors`

    def unaccounted(self) -> int:
        settled = self.fetched + self.sitemaps + self.feeds + self.robots_denied
        return self.urls - settled - sum(self.errors.values()) - sum(self.skipped.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("errors", "skipped", "filtered"):
            d[k] = dict(sorted(getattr(self, k).items()))
        return d


Progress = Callable[[str, str, CrawlStats], None]


class RobotsDenied(Exception):
    pass


class Skip(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


class _Host:
    """Politeness state of one scheme://host:port: concurrency, request spacing, robots rules."""

    def __init__(self, interval: float, concurrency: int):
        self.sem = asyncio.Semaphore(concurrency)
        self.interval = interval
        self.next_start = -math.inf
        self.last_start = -math.inf
        self.blocked_until = -math.inf
        self.robots: asyncio.Task | None = None

    async def turn(self) -> None:
        """Wait for this host's next request slot (call while holding `sem`)."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            start = max(now, self.next_start, self.blocked_until)
            if start <= now:
                self.last_start = now
                self.next_start = now + self.interval
                return
            await asyncio.sleep(start - now)

    def slow_down(self, interval: float) -> None:
        if interval > self.interval:
            self.interval = interval
            self.next_start = max(self.next_start, self.last_start + interval)

    def block_for(self, seconds: float) -> None:
        self.blocked_until = max(self.blocked_until, asyncio.get_running_loop().time() + seconds)


def _retry_after(ex: Exchange) -> float | None:
    return retry_after_seconds(ex.header("Retry-After"))


class _Crawler:
    def __init__(self, cfg: CrawlConfig, warc: WarcLog, progress: Progress | None):
        self.cfg = cfg
        self.warc = warc
        self.progress = progress
        self.stats = CrawlStats()
        self.hosts: dict[str, _Host] = {}
        self.addr_ok: dict[tuple[str, int], str | None] = {}
        self.seen: set[str] = set()  # admitted to the frontier
        self.claimed: set[str] = set()  # reached as a redirect target
        self.next_round: dict[str, int] = {}
        discovery = cfg.use_sitemaps or cfg.use_feeds
        self.page_types = set(cfg.allowed_content_types)
        self.fetch_types = self.page_types | ((SITEMAP_TYPES | FEED_TYPES) if discovery else set())
        self.scope: Scope | None = None
        self.pdf_links: set[str] = set()  # citation_pdf_url targets admitted beyond the scope

    # ------------------------------------------------------------------ frontier
    def admit(self, raw: str, depth: int, base: str | None = None) -> None:
        try:
            url = canonicalize(urljoin(base, raw) if base else raw)
        except BadURL:
            self.stats.filtered["bad_url"] += 1
            return
        if not self.scope.allows(url) and url not in self.pdf_links:
            self.stats.filtered["out_of_scope"] += 1
        elif depth > self.cfg.max_depth:
            self.stats.filtered["too_deep"] += 1
        elif url in self.seen or url in self.claimed:
            self.stats.filtered["duplicate"] += 1
        elif url in self.next_round:
            self.next_round[url] = min(depth, self.next_round[url])
            self.stats.filtered["duplicate"] += 1
        else:
            self.next_round[url] = depth

    async def run(self, seeds: list[str]) -> CrawlStats:
        cfg = self.cfg
        self.scope = Scope.build(cfg.allowed_hosts, cfg.allowed_prefixes, seeds)
        for s in seeds:
            self.admit(s, 0)
        timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(cfg.allow_loopback), limit=cfg.concurrency + 2)
        headers = {
            "User-Agent": cfg.user_agent,
            "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "Accept-Encoding": "gzip, deflate",
        }
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, headers=headers, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
        ) as self.session:
            while self.next_round:
                batch = sorted(self.next_round.items())
                self.next_round = {}
                self.seen.update(u for u, _ in batch)
                self.stats.urls += len(batch)
                budget = max(0, cfg.max_pages - (self.stats.urls - len(batch) - self.stats.skipped["max_pages"]))
                for url, _ in batch[budget:]:
                    self._settle(url, "skipped", "max_pages")
                await self._run_round(batch[:budget])
        self.stats.skipped = +self.stats.skipped  # drop zero entries
        self.stats.warc_records = self.warc.records
        return self.stats

    async def _run_round(self, items: list[tuple[str, int]]) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                url, depth = queue.get_nowait()
                await self._visit(url, depth)

        await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(items)))))

    def _settle(self, url: str, outcome: str, kind: str = "", detail: str = "") -> None:
        if outcome == "error":
            self.stats.errors[kind] += 1
            self.stats.failures.append({"url": url, "reason": kind, "detail": detail})
        elif outcome == "skipped":
            self.stats.skipped[kind] += 1
        else:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        if self.progress is not None:
            self.progress(url, f"{outcome}:{kind}" if kind else outcome, self.stats)

    # ------------------------------------------------------------------ one URL
    async def _visit(self, url: str, depth: int) -> None:
        chain = [url]
        current = url
        try:
            while True:
                ex = await self._request(current, "page", self.cfg.max_body_bytes)
                location = ex.header("Location") if ex.status in REDIRECTS else None
                if location is None:
                    break
                self.warc.write(ex, "redirect")
                self.stats.redirects += 1
                current = self._redirect_target(current, location, chain)
        except RobotsDenied:
            return self._settle(url, "robots_denied")
        except Skip as s:
            return self._settle(url, "skipped", s.kind)
        except FetchError as e:
            return self._settle(url, "error", e.kind, e.detail)
        try:
            outcome, kind, detail = self._final(ex, depth)
        except Exception as e:  # noqa: BLE001 -- a parser surprise must cost one URL, not the crawl
            outcome, kind, detail = "error", f"unexpected_{type(e).__name__}", str(e)[:200]
        self._settle(url, outcome, kind, detail)

    def _redirect_target(self, current: str, location: str, chain: list[str]) -> str:
        try:
            target = canonicalize(urljoin(current, location.strip()))
        except BadURL as e:
            raise FetchError("bad_redirect", str(e)) from None
        if target in chain:
            raise FetchError("redirect_loop", " -> ".join(chain + [target]))
        if len(chain) > self.cfg.max_redirects:
            raise FetchError("too_many_redirects", f"more than {self.cfg.max_redirects}")
        if not self.scope.allows(target):
            raise Skip("redirect_out_of_scope")
        if target in self.seen or target in self.claimed or target in self.next_round:
            raise Skip("redirect_to_seen")  # fetched (or to be fetched) as a frontier URL of its own
        self.claimed.add(target)
        chain.append(target)
        return target

    def _final(self, ex: Exchange, depth: int) -> tuple[str, str, str]:
        cfg = self.cfg
        if 400 <= ex.status < 500:
            self.warc.write(ex, "page")
            return "error", "http_4xx", f"status {ex.status}"
        if not 200 <= ex.status < 300:
            self.warc.write(ex, "page")
            return "error", "http_other", f"status {ex.status}"
        body = ex.body
        if ex.mime in GZIP_TYPES:
            try:
                body = gunzip_capped(body, cfg.max_body_bytes)
            except FetchError as e:
                return "error", e.kind, e.detail
        if ex.mime in SITEMAP_TYPES | FEED_TYPES:
            found = parse_discovery(body, ex.url)
            if found is not None:
                kind, urls = found
                if kind.startswith("sitemap") and cfg.use_sitemaps or kind == "feed" and cfg.use_feeds:
                    self.warc.write(ex, kind)
                    for u in urls:
                        self.admit(u, depth)
                    return ("feeds" if kind == "feed" else "sitemaps"), "", ""
        if ex.mime not in self.page_types:
            return "error", "bad_content_type", ex.mime or "(none)"
        self.warc.write(ex, "page")
        self.stats.bytes_fetched += len(ex.raw_body)
        if ex.mime in PDF_TYPES:
            self.stats.pdfs += 1
            return "fetched", "", ""
        charset = sniff_charset(body, ex.charset)
        if not decodes(body, charset):
            self.stats.invalid_utf8 += 1
        if cfg.follow_pdf_meta and ex.mime in HTML_TYPES:
            for link in citation_pdf_urls(body, ex.url):
                try:
                    self.pdf_links.add(canonicalize(link))
                except BadURL:
                    continue
                self.admit(link, depth + 1)
        if cfg.follow_links and ex.mime in HTML_TYPES and depth < cfg.max_depth:
            for link in html_links(body, ex.url, charset):
                self.admit(link, depth + 1)
        return "fetched", "", ""

    # ------------------------------------------------------------------ requests
    def _host(self, key: str) -> _Host:
        if key not in self.hosts:
            self.hosts[key] = _Host(1.0 / self.cfg.per_host_rate, self.cfg.per_host_concurrency)
        return self.hosts[key]

    async def _check_address(self, url: str) -> None:
        parts = urlsplit(url)
        key = (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        if key not in self.addr_ok:
            try:
                await check_host(key[0], key[1], self.cfg.allow_loopback)
                self.addr_ok[key] = None
            except AddressRefused as e:
                self.addr_ok[key] = str(e)
            except OSError as e:  # name does not resolve
                raise FetchError("connection", f"{key[0]}: {e}") from None
        if self.addr_ok[key] is not None:
            raise FetchError("refused_address", self.addr_ok[key])

    async def _request(self, url: str, purpose: str, max_bytes: int) -> Exchange:
        await self._check_address(url)
        key = host_key(url)
        host = self._host(key)
        if purpose != "robots" and self.cfg.respect_robots:
            if host.robots is None:
                host.robots = asyncio.ensure_future(self._load_robots(key, host))
            rules = await host.robots
            if rules is not None and not rules.can_fetch(url, self.cfg.robots_token):
                raise RobotsDenied(url)
        return await self._fetch_with_retries(url, host, purpose, max_bytes)

    async def _fetch_with_retries(self, url: str, host: _Host, purpose: str, max_bytes: int) -> Exchange:
        cfg = self.cfg

        def type_ok(status: int, mime: str) -> bool:
            if purpose == "robots" or not 200 <= status < 300:
                return True
            if mime in GZIP_TYPES:  # only gzipped sitemaps, not any archive
                return mime in self.fetch_types and urlsplit(url).path.endswith(".xml.gz")
            return mime in self.fetch_types

        retried: list[int] = []  # statuses of the attempts so far
        while True:
            attempt = len(retried)
            async with host.sem:
                await host.turn()
                self.stats.requests += 1
                try:
                    ex = await fetch_once(self.session, url, max_bytes=max_bytes, total_timeout=cfg.total_timeout,
                                          type_ok=type_ok)
                except FetchError as e:
                    if retried:
                        e.detail = f"{e.detail} (attempt {attempt + 1}, after {' '.join(map(str, retried))})"
                    raise
            ex.retried = retried
            if ex.status != 429 and ex.status < 500:
                return ex  # written by the caller, with the statuses of the attempts before it
            gave_up = "http_429_gave_up" if ex.status == 429 else "http_5xx_gave_up"
            delay = _retry_after(ex)
            if delay is None:
                delay = min(cfg.backoff_max, cfg.backoff_base * 2**attempt)
            if attempt >= cfg.retries or delay > cfg.max_retry_after:
                self.warc.write(ex, purpose)  # the fetch's one record: its last attempt
                why = (f"Retry-After {delay:g} s is over max_retry_after" if delay > cfg.max_retry_after
                       else "no retries left")
                raise FetchError(gave_up, f"{attempt + 1} attempt(s), statuses {' '.join(map(str, retried + [ex.status]))}"
                                          f"; {why}")
            self.warc.write(ex, "retry", attempt=attempt + 1)
            retried = retried + [ex.status]
            self.stats.retries += 1
            host.block_for(delay)

    async def _load_robots(self, key: str, host: _Host) -> Protego | None:
        """The host's robots rules; None means 'all allowed' (RFC 9309: 4xx or missing)."""
        url = key + "/robots.txt"
        chain = [url]
        try:
            for _ in range(6):  # RFC 9309: follow at least five redirects
                await self._check_address(url)
                ex = await self._fetch_with_retries(url, self._host(host_key(url)), "robots", self.cfg.max_robots_bytes)
                self.stats.robots_fetched += 1
                self.warc.write(ex, "robots")
                location = ex.header("Location") if ex.status in REDIRECTS else None
                if location is None:
                    break
                url = canonicalize(urljoin(url, location.strip()))
                if url in chain:
                    return None
                chain.append(url)
            else:
                return None
        except (FetchError, BadURL) as e:
            # RFC 9309 2.3.1.4: an unreachable robots.txt (5xx, network) means nothing may be crawled
            raise FetchError("robots_unavailable", str(e)) from None
        if not 200 <= ex.status < 300:
            return None
        rules = Protego.parse(ex.body.decode("utf-8", errors="replace"))
        token = self.cfg.robots_token
        delay = rules.crawl_delay(token) or 0.0
        rate = rules.request_rate(token)
        if rate is not None and rate.requests:
            delay = max(delay, rate.seconds / rate.requests)
        if delay > self.cfg.max_crawl_delay:
            # Skip rather than ignore: honouring it would stall the crawl, ignoring it is impolite.
            raise Skip("crawl_delay_too_long")
        host.slow_down(delay)
        if self.cfg.use_sitemaps:
            for sm in rules.sitemaps:
                self.admit(sm, 0)
        return rules


def crawl(seeds: list[str], cfg: CrawlConfig, warc_path: Path, progress: Progress | None = None) -> CrawlStats:
    """Crawl from `seeds` under `cfg`, writing every exchange to the gzipped WARC `warc_path`.

    `progress(url, outcome, stats)` is called as each frontier URL settles (outcome is
    "fetched", "sitemaps", "feeds", "robots_denied", "error:<kind>" or "skipped:<kind>").
    """
    warc = WarcLog(Path(warc_path), {
        "software": "minisigma crawler (aiohttp, warcio)",
        "http-header-user-agent": cfg.user_agent,
        "robots": "obey" if cfg.respect_robots else "ignore",
        "format": "WARC File Format 1.1",
    })
    try:
        return asyncio.run(_Crawler(cfg, warc, progress).run(list(seeds)))
    finally:
        warc.close()
