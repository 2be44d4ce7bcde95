"""The crawl stage against a loopback site: a retried fetch is one record, failed URLs are listed by
name in the manifest, and a SIGKILLed crawl leaves nothing behind that a rerun does not clean up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rich.console import Console
from warcio.archiveiterator import ArchiveIterator

from curation.crawl import CrawlConfig
from curation.crawl_stage import Crawl
from curation.extract import Extract, ExtractConfig
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, list_shards
from tests.crawl_server import Site, send

FAST = dict(allow_loopback=True, per_host_rate=200.0, connect_timeout=5.0, read_timeout=5.0, total_timeout=10.0,
            backoff_base=0.05, backoff_max=0.2, retries=2)
ARTICLE = ("<html><head><title>{0}</title></head><body><article><h1>{0}</h1>" + "<p>The page cache keeps file "
           "data in memory so that repeated reads avoid the disk; dirty pages are written back later.</p>" * 4
           + "</article></body></html>")
REPO = Path(__file__).resolve().parents[2]


def flaky(failures: list[int], name: str):
    """A route answering the statuses in `failures` first, then the article `name`."""
    calls = []

    def route(h):
        calls.append(1)
        if len(calls) <= len(failures):
            send(h, failures[len(calls) - 1], b"try later", "text/plain", {"Retry-After": "0"})
        else:
            send(h, 200, ARTICLE.format(name).encode())

    return route


def warc_responses(path: Path) -> list[dict]:
    out = []
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            if rec.rec_type == "response":
                h = rec.rec_headers
                out.append({"path": "/" + h.get_header("WARC-Target-URI").split("/", 3)[3],
                            "purpose": h.get_header("X-Crawl-Purpose"), "attempts": h.get_header("X-Crawl-Attempts"),
                            "retried": h.get_header("X-Crawl-Retried"), "attempt": h.get_header("X-Crawl-Attempt"),
                            "status": int(rec.http_headers.get_statuscode())})
    return out


def test_retried_fetch_is_one_extraction_input_and_failed_urls_are_listed(tmp_path):
    with Site() as site:
        site.html("/", ["/a", "/b", "/c", "/d", "/missing"])
        site.routes["/a"] = flaky([503, 503], "alpha")  # succeeds on the third attempt
        site.routes["/b"] = flaky([429], "beta")  # succeeds on the second
        site.routes["/c"] = lambda h: send(h, 500, b"broken", "text/plain")  # gives up after 3 attempts
        site.page("/d", ARTICLE.format("delta"))
        sites = [{"name": "docs", "seeds": [site.url("/")]}]
        crawled = run_stage(Crawl(CrawlConfig(**FAST), sites), [], tmp_path / "crawl", executor="local",
                            progress=False)
        assert site.requested("/a") == 3 and site.requested("/b") == 2 and site.requested("/c") == 3
    c = crawled["counts"]
    assert c["in"] == 6 and c["out"] == 4
    assert c["quarantined"] == {"error:http_4xx": 1, "error:http_5xx_gave_up": 1}
    errors = {e["url"]: e for e in crawled["errors"]}
    assert sorted(errors) == [site.url("/c"), site.url("/missing")]
    assert errors[site.url("/c")] == {"shard": "00000.warc.gz", "url": site.url("/c"), "site": "docs",
                                      "reason": "error:http_5xx_gave_up",
                                      "detail": "3 attempt(s), statuses 500 500 500; no retries left"}
    assert errors[site.url("/missing")]["detail"] == "status 404"
    assert crawled["stats"]["retries"] == 5 and manifest.verify(tmp_path / "crawl") == []
    console = Console(record=True, width=200)
    manifest.show(tmp_path / "crawl", console=console)
    shown = console.export_text()
    assert "crawl errors (2):" in shown
    assert f"{site.url('/c')}  error:http_5xx_gave_up  (3 attempt(s), statuses 500 500 500; no retries left)" in shown

    (warc,) = list_shards(tmp_path / "crawl", ".warc.gz")
    pages = [r for r in warc_responses(warc) if r["purpose"] == "page"]
    assert sorted(r["path"] for r in pages) == ["/", "/a", "/b", "/c", "/d", "/missing"]  # one record per URL
    by_path = {r["path"]: r for r in pages}
    assert (by_path["/a"]["attempts"], by_path["/a"]["retried"], by_path["/a"]["status"]) == ("3", "503 503", 200)
    assert (by_path["/b"]["attempts"], by_path["/b"]["retried"]) == ("2", "429")
    assert (by_path["/c"]["attempts"], by_path["/c"]["status"]) == ("3", 500)
    assert by_path["/d"]["attempts"] is None
    retries = sorted((r["path"], r["attempt"], r["status"]) for r in warc_responses(warc) if r["purpose"] == "retry")
    assert retries == [("/a", "1", 503), ("/a", "2", 503), ("/b", "1", 429), ("/c", "1", 500), ("/c", "2", 500)]

    m = run_stage(Extract(ExtractConfig(min_chars=100)), [warc], tmp_path / "extract", executor="local",
                  progress=False)
    e = m["counts"]
    assert e["in"] == 6 and e["out"] == 3  # not 11: the five retried attempts are no inputs
    assert e["dropped"].get("http_500") == 1 and e["dropped"].get("http_404") == 1
    assert "http_503" not in e["dropped"] and "http_429" not in e["dropped"]
    docs = {d["url"]: d for d in iter_docs(tmp_path / "extract")}
    assert docs[site.url("/a")]["metadata"]["fetch_attempts"] == 3
    assert docs[site.url("/b")]["metadata"]["fetch_attempts"] == 2
    assert "fetch_attempts" not in docs[site.url("/d")]["metadata"]
    assert manifest.verify(tmp_path / "extract") == []


CHILD = textwrap.dedent("""
    import sys
    from curation.crawl import CrawlConfig
    from curation.crawl_stage import Crawl
    from minisigma.core.runner import run_stage
    cfg = CrawlConfig(allow_loopback=True, per_host_rate=200.0, read_timeout=120.0, total_timeout=120.0)
    run_stage(Crawl(cfg, [{"name": "docs", "seeds": [sys.argv[1]]}]), [], sys.argv[2], executor="local",
              progress=False)
""")


def test_sigkilled_crawl_leaves_a_temporary_file_the_rerun_removes(tmp_path):
    out = tmp_path / "crawl"
    with Site() as site:
        site.html("/", ["/stuck", "/fine"])
        site.html("/fine", text="fine")
        released = []

        def stuck(h):
            if not released:
                site.stop.wait(120)  # holds the first crawl until it is killed
            send(h, 200, ARTICLE.format("stuck").encode())

        site.routes["/stuck"] = stuck
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, site.url("/"), str(out)], env=env, cwd=REPO)
        try:
            deadline = time.monotonic() + 120
            while site.requested("/stuck") == 0 and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert site.requested("/stuck") == 1, "the child crawl never reached /stuck"
            tmp = [p.name for p in out.iterdir() if ".tmp-" in p.name]
            assert tmp == [f".00000.warc.gz.tmp-{child.pid}"]  # the crawl writes its WARC under a temporary name
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert not list_shards(out, ".warc.gz")
        released.append(True)
        stage = Crawl(CrawlConfig(**FAST), [{"name": "docs", "seeds": [site.url("/")]}])
        m = run_stage(stage, [], out, executor="local", progress=False)
        assert m["stale_tmp_removed"] == 1 and m["counts"]["out"] == 3
        assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert manifest.verify(out) == []
        # The finished WARC is then truncated: the next run crawls the site again instead of trusting it,
        # and the extraction made from the old WARC is made again from the new one.
        (warc,) = list_shards(out, ".warc.gz")
        extracted = run_stage(Extract(ExtractConfig(min_chars=10)), [warc], tmp_path / "extract", executor="local",
                              progress=False)
        warc.write_bytes(warc.read_bytes()[:-50])
        n = len(site.log)
        m2 = run_stage(stage, [], out, executor="local", progress=False)
        assert len(site.log) > n and m2["repaired_shards"] == 1 and "bytes" in m2["repairs"][0]["problem"]
    again = run_stage(Extract(ExtractConfig(min_chars=10)), [warc], tmp_path / "extract", executor="local",
                      progress=False)
    assert again["repaired_shards"] == 1 and "changed since it was made" in again["repairs"][0]["problem"]
    assert again["counts"] == extracted["counts"] and again["counts"]["out"] >= 1
    assert manifest.verify(out) == [] and manifest.verify(tmp_path / "extract") == []
