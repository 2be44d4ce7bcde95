"""Extraction from real WARC files: documents out, every failure counted by reason."""

import io
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.extract import Extract, ExtractConfig
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs

ARTICLE = """<html><head><title>Page cache</title></head><body><nav><a href=/>Home</a></nav>
<article><h1>The page cache</h1>{}</article><footer>(c) docs</footer></body></html>"""
PARA = "<p>The Linux page cache keeps file data in memory so repeated reads avoid the disk; dirty pages are " \
       "written back by the flusher threads when their age or the dirty ratio passes a threshold.</p>"


def write_warc(path: Path, records: list[tuple[str, int, str, bytes]]) -> None:
    with open(path, "wb") as f:
        w = WARCWriter(f, gzip=True)
        for url, status, ctype, body in records:
            headers = StatusAndHeaders(f"{status} X", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers))


def test_extract_counts_every_outcome(tmp_path):
    warc = tmp_path / "00000.warc.gz"
    good = ARTICLE.format(PARA * 4).encode()
    write_warc(warc, [
        ("http://docs.test/robots.txt", 200, "text/plain", b"User-agent: *\n"),
        ("http://docs.test/a.html", 200, "text/html; charset=utf-8", good),
        ("http://docs.test/b.html", 200, "text/html", ARTICLE.format(PARA * 3).encode() + b"\xff\xfe broken"),
        ("http://docs.test/missing", 404, "text/html", b"<html>not found</html>"),
        ("http://docs.test/data.json", 200, "application/json", b"{}"),
        ("http://docs.test/stub.html", 200, "text/html", b"<html><body><p>Hi.</p></body></html>"),
    ])
    meta = {"00000.warc.gz": {"source": "blogs", "category": "os_kernel", "site": "docs"}}
    m = run_stage(Extract(ExtractConfig(min_chars=100), meta), [warc], tmp_path / "out", executor="local",
                  progress=False)
    c = m["counts"]
    assert c["in"] == 5  # robots.txt is a politeness fetch, not content
    assert c["out"] == 2
    assert c["dropped"] == {"http_404": 1, "not_html": 1, "too_short": 1} or \
        c["dropped"] == {"http_404": 1, "not_html": 1, "empty": 1}
    assert m["stats"]["invalid_encoding_repaired"] == 1
    docs = list(iter_docs(tmp_path / "out"))
    assert all("page cache" in d["text"] for d in docs)
    assert all(d["source"] == "blogs" and d["metadata"]["category"] == "os_kernel" for d in docs)
    assert "Home" not in docs[0]["text"].split("\n")[0]  # boilerplate removed
    assert manifest.verify(tmp_path / "out") == []


def test_extract_time_limit_quarantines(tmp_path):
    warc = tmp_path / "00000.warc.gz"
    huge = ARTICLE.format(PARA * 3000).encode()
    write_warc(warc, [("http://docs.test/huge.html", 200, "text/html", huge),
                      ("http://docs.test/a.html", 200, "text/html", ARTICLE.format(PARA * 4).encode())])
    m = run_stage(Extract(ExtractConfig(timeout_s=0.01, min_chars=100)), [warc], tmp_path / "out",
                  executor="local", progress=False)
    assert m["counts"]["quarantined"].get("extract_timeout", 0) >= 1
    assert m["counts"]["in"] == 2 and manifest.verify(tmp_path / "out") == []


def test_stable_locator_drops_ephemeral_port():
    from curation.extract import stable_locator

    assert stable_locator("http://127.0.0.1:4711/html/x.html?a=1", "localdocs://git-doc") == \
        "localdocs://git-doc/html/x.html?a=1"
    assert stable_locator("https://example.org/x", None) == "https://example.org/x"


def test_output_does_not_depend_on_crawl_completion_order(tmp_path):
    pages = [(f"http://docs.test/{n}.html", 200, "text/html", ARTICLE.format(PARA * (2 + i % 3)).encode())
             for i, n in enumerate("qwertyuiop")]
    write_warc(tmp_path / "a.warc.gz", pages)
    write_warc(tmp_path / "b.warc.gz", pages[::-1])
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        warc = tmp_path / name / "00000.warc.gz"
        (tmp_path / f"{name}.warc.gz").rename(warc)
        run_stage(Extract(ExtractConfig(min_chars=100)), [warc], tmp_path / f"out-{name}", executor="local",
                  progress=False)
        # two crawls differ in record ids and dates only; order and everything else must match
        outs.append([{**d, "metadata": {k: v for k, v in d["metadata"].items()
                                        if k not in ("warc_record_id", "fetched_at")}}
                     for d in iter_docs(tmp_path / f"out-{name}")])
    assert [d["url"] for d in outs[0]] == sorted(d["url"] for d in outs[0])
    assert outs[0] == outs[1]
