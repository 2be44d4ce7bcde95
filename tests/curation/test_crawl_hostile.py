"""Hostile servers on 127.0.0.1: every bad response is survived, counted under its kind, and the
rest of the crawl still completes (each test also serves a normal page that must be fetched)."""

import gzip
import socket

from tests.crawl_server import Site, crawl_site, send


def _site_with(path, route) -> Site:
    site = Site()
    site.html("/", [path, "/fine"])
    site.html("/fine", text="a normal page")
    site.routes[path] = route
    return site


def _stored(records, site, path):
    return [r for r in records if r["type"] == "response" and r["uri"] == site.url(path)]


def test_stall_after_headers_times_out(tmp_path):
    def stall(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", "100000")
        h.end_headers()
        h.wfile.write(b"<html><body>start")
        h.wfile.flush()
        site.stop.wait(30)

    with _site_with("/stall", stall) as site:
        stats, records = crawl_site(site, ["/"], tmp_path, read_timeout=0.5, total_timeout=5.0)
    assert stats.errors == {"timeout": 1} and stats.fetched == 2
    assert _stored(records, site, "/stall") == []


def test_slow_drip_hits_the_total_deadline(tmp_path):
    def drip(h):
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        for _ in range(600):  # a byte every 50 ms: each read is quick, the whole never ends
            h.wfile.write(b"x")
            h.wfile.flush()
            if site.stop.wait(0.05):
                return

    with _site_with("/drip", drip) as site:
        stats, _ = crawl_site(site, ["/"], tmp_path, read_timeout=1.0, total_timeout=1.5)
    assert stats.errors == {"timeout": 1} and stats.fetched == 2


def test_no_response_at_all_times_out(tmp_path):
    def silent(h):
        site.stop.wait(30)

    with _site_with("/silent", silent) as site:
        stats, _ = crawl_site(site, ["/"], tmp_path, read_timeout=0.5)
    assert stats.errors == {"timeout": 1} and stats.fetched == 2


def test_body_over_the_limit_streamed_or_declared(tmp_path):
    def endless(h):  # no Content-Length: the cap must trip while streaming
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.end_headers()
        for _ in range(200):
            h.wfile.write(b"<p>" + b"y" * 16_000 + b"</p>")

    with _site_with("/endless", endless) as site:
        site.page("/declared", b"z" * 300_000)
        site.html("/", ["/endless", "/declared", "/fine"])
        stats, records = crawl_site(site, ["/"], tmp_path, max_body_bytes=100_000)
    assert stats.errors == {"too_large": 2} and stats.fetched == 2
    assert _stored(records, site, "/endless") == [] and _stored(records, site, "/declared") == []


def test_redirect_loop_and_too_many_redirects(tmp_path):
    with Site() as site:
        site.html("/", ["/loop/a", "/r/0", "/fine"])
        site.html("/fine")
        site.page("/loop/a", b"", status=302, headers={"Location": "/loop/b"})
        site.page("/loop/b", b"", status=301, headers={"Location": site.url("/loop/a")})
        for i in range(10):
            site.page(f"/r/{i}", b"", status=307, headers={"Location": f"/r/{i + 1}"})
        stats, _ = crawl_site(site, ["/"], tmp_path, max_redirects=3)
        paths = site.paths()
    assert stats.errors == {"redirect_loop": 1, "too_many_redirects": 1} and stats.fetched == 2
    assert paths.count("/loop/a") == 1 and paths.count("/loop/b") == 1
    assert [p for p in paths if p.startswith("/r/")] == ["/r/0", "/r/1", "/r/2", "/r/3"]


def test_gzip_bomb_is_stopped_at_the_decompressed_cap(tmp_path):
    bomb = gzip.compress(b"\0" * (16 * 2**20), compresslevel=9)  # 16 MiB that ships in ~16 KiB

    with _site_with("/bomb", lambda h: send(h, 200, bomb, "text/html", {"Content-Encoding": "gzip"})) as site:
        site.page("/small.gz", gzip.compress(b"<html><body>fine and gzipped</body></html>"), "text/html",
                  headers={"Content-Encoding": "gzip"})
        site.page("/sitemap-bomb.xml.gz", bomb, "application/gzip")  # a bomb inside the body, not the encoding
        site.page("/archive.tar.gz", bomb, "application/gzip")  # gzip but not a sitemap: not even read
        site.html("/", ["/bomb", "/small.gz", "/sitemap-bomb.xml.gz", "/archive.tar.gz", "/fine"])
        stats, records = crawl_site(site, ["/"], tmp_path, max_body_bytes=2**20)
    assert len(bomb) < 2**20 / 8
    assert stats.errors == {"decompression_bomb": 2, "bad_content_type": 1} and stats.fetched == 3
    (small,) = _stored(records, site, "/small.gz")
    assert gzip.decompress(small["payload"]) == b"<html><body>fine and gzipped</body></html>"  # stored as sent


def test_500_storm_retries_then_gives_up(tmp_path):
    with _site_with("/boom", lambda h: send(h, 500, b"internal error")) as site:
        site.page("/gone", b"bye", status=503, headers={"Retry-After": "3600"})
        site.html("/", ["/boom", "/gone", "/fine"])
        stats, records = crawl_site(site, ["/"], tmp_path, retries=2, max_retry_after=5.0)
        assert site.requested("/boom") == 3  # first try + 2 retries
        assert site.requested("/gone") == 1  # Retry-After beyond max_retry_after: give up at once
    assert stats.errors == {"http_5xx_gave_up": 2} and stats.fetched == 2 and stats.retries == 2
    assert len(_stored(records, site, "/boom")) == 3


def test_429_storm_gives_up_and_404_is_counted(tmp_path):
    with _site_with("/busy", lambda h: send(h, 429, b"no", "text/plain", {"Retry-After": "0"})) as site:
        site.html("/", ["/busy", "/missing", "/fine"])
        stats, _ = crawl_site(site, ["/"], tmp_path, retries=1)
        assert site.requested("/busy") == 2
    assert stats.errors == {"http_429_gave_up": 1, "http_4xx": 1} and stats.fetched == 2


def test_wrong_content_type_is_not_read_or_stored(tmp_path):
    with _site_with("/img", lambda h: send(h, 200, b"\x89PNG...", "image/png")) as site:
        site.page("/blob", b"\0\1\2", "application/octet-stream")
        site.page("/untyped", b"??", ctype="")
        site.html("/", ["/img", "/blob", "/untyped", "/fine"])
        stats, records = crawl_site(site, ["/"], tmp_path)
    assert stats.errors == {"bad_content_type": 3} and stats.fetched == 2
    assert _stored(records, site, "/img") == [] and _stored(records, site, "/blob") == []


def test_invalid_utf8_is_stored_as_is_and_counted(tmp_path):
    broken = b"<html><body>caf\xc3 \xff\xfe bad bytes</body></html>"
    latin1 = "<html><body>café</body></html>".encode("latin-1")
    with _site_with("/broken", lambda h: send(h, 200, broken, "text/html; charset=utf-8")) as site:
        site.page("/latin1", latin1, "text/html; charset=iso-8859-1")
        site.html("/", ["/broken", "/latin1", "/fine"])
        stats, records = crawl_site(site, ["/"], tmp_path)
    assert stats.fetched == 4 and stats.invalid_utf8 == 1 and not stats.errors
    assert _stored(records, site, "/broken")[0]["payload"] == broken


def test_malformed_response_is_counted(tmp_path):
    def garbage(h):
        h.wfile.write(b"this is not HTTP at all\r\n\r\n")

    with _site_with("/garbage", garbage) as site:
        stats, _ = crawl_site(site, ["/"], tmp_path)
    assert sum(stats.errors.values()) == 1 and set(stats.errors) <= {"bad_response", "connection"}
    assert stats.fetched == 2


def test_loopback_refused_unless_allowed_and_nothing_reaches_the_server(tmp_path):
    with Site() as site:
        site.html("/")
        seeds = [site.url("/"), f"http://localhost:{site.port}/", f"http://[::1]:{site.port}/"]
        stats, records = crawl_site(site, seeds, tmp_path, allow_loopback=False,
                                    allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"])
        assert site.log == []
    assert stats.errors == {"refused_address": 3} and stats.requests == 0
    assert [r["type"] for r in records] == ["warcinfo"]


def test_redirects_into_private_or_link_local_space_are_refused(tmp_path):
    with Site() as site:
        site.html("/", ["/to-private", "/to-metadata", "/fine"])
        site.html("/fine")
        site.page("/to-private", b"", status=302, headers={"Location": "http://10.255.255.1/admin"})
        site.page("/to-metadata", b"", status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        stats, _ = crawl_site(site, ["/"], tmp_path, allowed_hosts=["127.0.0.1", "10.255.255.1", "169.254.169.254"])
    assert stats.errors == {"refused_address": 2} and stats.fetched == 2
    stats_scope, _ = crawl_site(site, ["http://192.168.0.1/"], tmp_path)
    assert stats_scope.errors == {"refused_address": 1}


def test_unreachable_host_is_counted(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Site() as site:
        url = f"http://127.0.0.1:{port}/"
        stats, _ = crawl_site(site, [url], tmp_path)
        assert stats.errors == {"robots_unavailable": 1}  # RFC 9309: unreachable robots.txt -> crawl nothing
        stats, _ = crawl_site(site, [url], tmp_path, respect_robots=False)
        assert stats.errors == {"connection": 1}


def test_connect_time_resolver_refuses_even_when_the_precheck_is_bypassed():
    """The address rule also sits in the HTTP client's resolver (no DNS-rebinding window)."""
    import asyncio

    import aiohttp

    from curation.addresses import PolicyResolver
    from curation.crawl_http import FetchError, fetch_once

    async def fetch(allow_loopback):
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(allow_loopback))
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            try:
                ex = await fetch_once(session, f"http://localhost:{site.port}/", max_bytes=10_000,
                                      total_timeout=5.0, type_ok=lambda status, mime: True)
                return ex.status
            except FetchError as e:
                return e.kind

    with Site() as site:
        site.html("/")
        assert asyncio.run(fetch(False)) == "refused_address"
        assert site.log == []
        assert asyncio.run(fetch(True)) == 200
        assert len(site.log) == 1
