"""The crawler against a real HTTP server on 127.0.0.1: robots, Crawl-delay, rate and concurrency
limits, retries, redirects, link discovery, sitemaps and feeds, and the WARC it writes.

Timing checks use the server's own request timestamps and assert a minimum gap between requests
(a lower bound: a slow machine only makes gaps longer). JITTER allows for the time a request
spends between the client's send and the server thread's log line.
"""

import gzip
import time

from tests.crawl_server import Site, crawl_site, min_gap, send

JITTER = 0.1  # without the limits these gaps are a few milliseconds


def test_robots_disallowed_paths_are_never_requested_and_counted(tmp_path):
    with Site() as site:
        site.page("/robots.txt", "User-agent: *\nDisallow: /private\nDisallow: /*.pdf$\n\n"
                                 "User-agent: minisigma-crawler\nDisallow: /private\nDisallow: /not-for-us\n"
                                 "Disallow: /*.pdf$\n", "text/plain")
        site.html("/", ["/ok", "/private/a", "/private/b?x=1", "/not-for-us", "/paper.pdf", "/paper.pdf.html"])
        for p in ("/ok", "/private/a", "/private/b?x=1", "/not-for-us", "/paper.pdf", "/paper.pdf.html"):
            site.html(p)
        stats, records = crawl_site(site, ["/"], tmp_path)
        paths = site.paths()
    assert not [p for p in paths if p.startswith(("/private", "/not-for-us")) or p == "/paper.pdf"], paths
    assert stats.robots_denied == 4
    assert stats.fetched == 3  # /, /ok, /paper.pdf.html
    assert paths.count("/robots.txt") == 1 and stats.robots_fetched == 1
    assert [r["purpose"] for r in records if r["type"] == "response" and r["uri"].endswith("/robots.txt")] == ["robots"]


def test_robots_ignored_when_disabled_and_missing_robots_allows_all(tmp_path):
    with Site() as site:
        site.html("/", ["/a"])
        site.html("/a")
        stats, _ = crawl_site(site, ["/"], tmp_path)  # /robots.txt is a 404: everything allowed
        assert stats.fetched == 2 and site.requested("/robots.txt") == 1
    with Site() as site:
        site.page("/robots.txt", "User-agent: *\nDisallow: /\n", "text/plain")
        site.html("/")
        stats, _ = crawl_site(site, ["/"], tmp_path, respect_robots=False)
        assert stats.fetched == 1 and site.requested("/robots.txt") == 0


def test_crawl_delay_is_respected_between_every_request(tmp_path):
    delay = 0.5
    with Site() as site:
        site.page("/robots.txt", f"User-agent: *\nCrawl-delay: {delay}\n", "text/plain")
        site.html("/", [f"/p{i}" for i in range(4)])
        for i in range(4):
            site.html(f"/p{i}")
        stats, _ = crawl_site(site, ["/"], tmp_path, per_host_rate=1000.0, per_host_concurrency=4)
        times = site.times()
    assert stats.fetched == 5 and len(times) == 6  # robots.txt + 5 pages
    assert min_gap(times[1:]) >= delay - JITTER, times
    assert times[1] - times[0] >= delay - JITTER  # the delay also follows the robots.txt fetch


def test_per_host_rate_limit_spaces_requests(tmp_path):
    rate = 4.0  # requests/s -> 0.25 s apart
    with Site() as site:
        site.html("/", [f"/p{i}" for i in range(6)])
        for i in range(6):
            site.html(f"/p{i}")
        stats, _ = crawl_site(site, ["/"], tmp_path, per_host_rate=rate, per_host_concurrency=4, concurrency=8)
        times = site.times()
    assert stats.fetched == 7 and len(times) == 8
    assert min_gap(times) >= 1 / rate - JITTER, times


def test_per_host_concurrency_limit(tmp_path):
    def slow(h):
        time.sleep(0.15)
        send(h, 200, b"<html><body>slow</body></html>")

    for limit in (1, 2):
        with Site() as site:
            site.html("/", [f"/s{i}" for i in range(6)])
            for i in range(6):
                site.routes[f"/s{i}"] = slow
            stats, _ = crawl_site(site, ["/"], tmp_path, per_host_concurrency=limit, concurrency=8,
                                  per_host_rate=1000.0)
            assert stats.fetched == 7
            assert 1 <= site.max_in_flight <= limit


def test_429_retry_after_is_honoured(tmp_path):
    calls = []

    def busy(h):
        calls.append(1)
        if len(calls) == 1:
            send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
        else:
            send(h, 200, b"<html><body>ok now</body></html>")

    with Site() as site:
        site.routes["/busy"] = busy
        stats, records = crawl_site(site, ["/busy"], tmp_path)
        times = site.times(lambda p: p == "/busy")
    assert stats.fetched == 1 and stats.retries == 1 and not stats.errors
    assert len(times) == 2 and times[1] - times[0] >= 1.0 - JITTER
    assert sorted(r["status"] for r in records if r["type"] == "response" and r["uri"].endswith("/busy")) == [200, 429]


def test_5xx_retries_back_off_exponentially(tmp_path):
    calls = []

    def flaky(h):
        calls.append(1)
        send(h, 503 if len(calls) <= 3 else 200, b"<html><body>x</body></html>")

    with Site() as site:
        site.routes["/flaky"] = flaky
        stats, _ = crawl_site(site, ["/flaky"], tmp_path, retries=3, backoff_base=0.15, backoff_max=10.0)
        times = site.times(lambda p: p == "/flaky")
    assert stats.fetched == 1 and stats.retries == 3
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, (0.15, 0.3, 0.6)):
        assert gap >= expected - JITTER, gaps


def test_warc_holds_request_response_pairs_for_every_request(tmp_path):
    with Site() as site:
        site.page("/robots.txt", "User-agent: *\nAllow: /\n", "text/plain")
        site.html("/", ["/a", "/old"])
        site.html("/a", text="alpha page")
        site.page("/old", b"", status=301, headers={"Location": "/new"})
        site.html("/new", text="moved here")
        stats, records = crawl_site(site, ["/"], tmp_path)
        n_requests = len(site.log)
    assert records[0]["type"] == "warcinfo"
    reqs = {r["id"]: r for r in records if r["type"] == "request"}
    resps = {r["id"]: r for r in records if r["type"] == "response"}
    assert len(reqs) == len(resps) == stats.requests == n_requests == 5
    for rid, resp in resps.items():
        req = reqs[resp["concurrent"]]
        assert req["concurrent"] == rid and req["uri"] == resp["uri"]
    by_uri = {r["uri"]: r for r in resps.values()}
    assert b"alpha page" in by_uri[site.url("/a")]["payload"]
    assert by_uri[site.url("/old")]["status"] == 301 and by_uri[site.url("/old")]["purpose"] == "redirect"
    assert b"moved here" in by_uri[site.url("/new")]["payload"]
    assert stats.fetched == 3 and stats.redirects == 1 and stats.warc_records == 1 + 2 * 5


def test_link_discovery_stays_in_scope_and_depth(tmp_path):
    with Site() as other, Site() as site:
        other.html("/")
        site.html("/", ["/docs/d1", "/blog/b1", other.url("/")])
        site.html("/docs/d1", ["/docs/d2"])
        site.html("/docs/d2", ["/docs/d3"])
        site.html("/docs/d3")
        site.html("/blog/b1")
        stats, _ = crawl_site(site, ["/"], tmp_path, max_depth=2)
        assert other.log == []  # another host (port) is out of scope
        assert site.requested("/docs/d2") == 1 and site.requested("/docs/d3") == 0
        assert stats.filtered["out_of_scope"] == 1
        stats, _ = crawl_site(site, ["/docs/d1"], tmp_path, allowed_prefixes=[site.url("/docs/")])
        assert site.requested("/blog/b1") == 1  # only from the first crawl
        assert stats.fetched == 3


def test_same_site_gives_same_pages_whatever_the_concurrency(tmp_path):
    with Site() as site:
        site.html("/", [f"/p{i:02d}" for i in range(20)])
        for i in range(20):
            site.html(f"/p{i:02d}", [f"/p{i:02d}/child"])
            site.html(f"/p{i:02d}/child")
        fetched = []
        for conc in (1, 8):
            site.log.clear()
            stats, records = crawl_site(site, ["/"], tmp_path, max_pages=12, concurrency=conc,
                                        per_host_concurrency=conc)
            assert stats.fetched == 12 and stats.skipped["max_pages"] == 9 + 11  # 9 of round 1, 11 children of p00..p10
            fetched.append(sorted(r["uri"] for r in records if r["type"] == "response" and r["purpose"] == "page"))
    assert fetched[0] == fetched[1]
    assert fetched[0][-1] == site.url("/p10")  # breadth first, sorted: / then /p00../p10


def test_sitemaps_index_gzip_and_robots_sitemap_lines_seed_the_crawl(tmp_path):
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    with Site() as site:
        site.page("/robots.txt", f"User-agent: *\nSitemap: {site.url('/sitemap_index.xml')}\n", "text/plain")
        site.page("/sitemap_index.xml", f"<sitemapindex {ns}><sitemap><loc>{site.url('/sm1.xml')}</loc></sitemap>"
                  f"<sitemap><loc>{site.url('/sm2.xml.gz')}</loc></sitemap></sitemapindex>", "application/xml")
        site.page("/sm1.xml", f"<urlset {ns}><url><loc>{site.url('/s/a')}</loc></url>"
                  f"<url><loc>{site.url('/s/b')}</loc></url></urlset>", "text/xml")
        site.page("/sm2.xml.gz", gzip.compress(f"<urlset {ns}><url><loc>{site.url('/s/c')}</loc></url></urlset>"
                                               .encode()), "application/gzip")
        site.html("/")
        for p in ("/s/a", "/s/b", "/s/c"):
            site.html(p)
        stats, records = crawl_site(site, ["/"], tmp_path)
        assert {"/s/a", "/s/b", "/s/c"} <= set(site.paths())
        assert stats.sitemaps == 3 and stats.fetched == 4
        assert {r["purpose"] for r in records if r["type"] == "response"} == {"robots", "sitemapindex", "sitemap", "page"}
        site.log.clear()
        stats, _ = crawl_site(site, ["/"], tmp_path, use_sitemaps=False)
        assert stats.fetched == 1 and "/sitemap_index.xml" not in site.paths()


def test_rss_and_atom_feeds_seed_the_crawl(tmp_path):
    with Site() as site:
        site.page("/feed.rss", f"""<?xml version="1.0"?><rss version="2.0"><channel><title>blog</title>
            <link>{site.url('/')}</link><item><title>one</title><link>{site.url('/post/1')}</link></item>
            <item><title>two</title><link>/post/2</link></item></channel></rss>""", "application/rss+xml")
        site.page("/atom.xml", """<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
            <entry><title>3</title><link rel="alternate" href="/post/3"/></entry></feed>""", "application/atom+xml")
        for i in (1, 2, 3):
            site.html(f"/post/{i}")
        stats, records = crawl_site(site, ["/feed.rss", "/atom.xml"], tmp_path)
        assert {"/post/1", "/post/2", "/post/3"} <= set(site.paths())
        assert stats.feeds == 2 and stats.fetched == 3
        site.log.clear()
        stats, _ = crawl_site(site, ["/feed.rss"], tmp_path, use_feeds=False, use_sitemaps=False)
        assert stats.errors["bad_content_type"] == 1 and "/post/1" not in site.paths()


def test_progress_callback_reports_every_url(tmp_path):
    from curation.crawl import CrawlConfig, crawl

    seen = []
    with Site() as site:
        site.page("/robots.txt", "User-agent: *\nDisallow: /no\n", "text/plain")
        site.html("/", ["/a", "/no", "/missing"])
        site.html("/a")
        stats = crawl([site.url("/")], CrawlConfig(allow_loopback=True, per_host_rate=200.0), tmp_path / "w.warc.gz",
                      progress=lambda url, outcome, st: seen.append((url, outcome)))
    assert sorted(o for _, o in seen) == ["error:http_4xx", "fetched", "fetched", "robots_denied"]
    assert len(seen) == stats.urls == 4


def test_redirect_to_a_known_url_is_not_fetched_twice(tmp_path):
    with Site() as site:
        site.html("/", ["/old", "/new", "/moved"])
        site.page("/old", b"", status=301, headers={"Location": "/new#frag"})
        site.page("/moved", b"", status=302, headers={"Location": "/elsewhere/../final"})
        site.html("/new")
        site.html("/final", ["/final?"])
        stats, _ = crawl_site(site, ["/"], tmp_path)
        paths = site.paths()
    assert paths.count("/new") == 1 and paths.count("/final") == 1
    assert stats.skipped == {"redirect_to_seen": 1} and stats.fetched == 3  # /, /new, /final
