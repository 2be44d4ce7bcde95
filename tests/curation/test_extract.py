"""Extraction from real WARC files: documents out, every failure counted by reason."""

import io
import time
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.extract import Extract, ExtractConfig, ExtractionTimeout, limited, time_limit
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, read_docs

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
    # A page built to be slow: 600 kB of article takes trafilatura far over 1 ms (0.2 s here, more under
    # load), so with a 1 ms limit it is a timeout whether the alarm lands in Python code, inside lxml,
    # or is swallowed on the way (the deadline is checked again after the call).
    warc = tmp_path / "00000.warc.gz"
    huge = ARTICLE.format(PARA * 3000).encode()
    write_warc(warc, [("http://docs.test/huge.html", 200, "text/html", huge)])
    m = run_stage(Extract(ExtractConfig(timeout_s=0.001, min_chars=100)), [warc], tmp_path / "out",
                  executor="local", progress=False)
    assert m["counts"]["in"] == 1 and m["counts"]["out"] == 0
    assert m["counts"]["quarantined"] == {"extract_timeout": 1} and m["counts"]["dropped"] == {}
    (rej,) = read_docs(tmp_path / "out" / "rejects" / "00000.jsonl.gz")
    assert rej["reason"] == "extract_timeout" and rej["doc"]["url"] == "http://docs.test/huge.html"
    assert manifest.verify(tmp_path / "out") == []


def _swallows_exceptions(seconds: float) -> int:
    """Busy work (CPU time) that catches every Exception, as trafilatura's steps do; returns its rounds."""
    end = time.process_time() + seconds
    rounds = 0
    while time.process_time() < end:
        try:
            rounds += 1
            sum(range(1000))
        except Exception:  # noqa: BLE001 -- the point: a library that swallows errors
            pass
    return rounds


def test_time_limit_is_not_swallowed_by_except_exception():
    # Without a limit this runs 20 s; the alarm after 0.05 s must get through its `except Exception`
    # (the signal alone, without the deadline check of `limited`: a swallowed alarm fails this test).
    with pytest.raises(ExtractionTimeout), time_limit(0.05):
        _swallows_exceptions(20.0)
    assert not isinstance(ExtractionTimeout(), Exception)
    assert limited(0, _swallows_exceptions, 0.01) > 0  # 0 means no limit


def test_a_swallowed_timeout_is_still_a_timeout(tmp_path, monkeypatch):
    # A parser that catches even BaseException (or a C call the signal cannot interrupt) returns
    # late: the deadline, checked after the call, still quarantines the page as a timeout.
    def stubborn(html, url, cfg):
        end = time.process_time() + 0.3
        while time.process_time() < end:
            try:
                sum(range(1000))
            except BaseException:  # noqa: BLE001
                pass
        return "text " * 100, {}

    monkeypatch.setattr("curation.extract.extract_html", stubborn)
    warc = tmp_path / "00000.warc.gz"
    write_warc(warc, [("http://docs.test/a.html", 200, "text/html", ARTICLE.format(PARA * 4).encode())])
    m = run_stage(Extract(ExtractConfig(timeout_s=0.05, min_chars=10)), [warc], tmp_path / "out",
                  executor="local", progress=False)
    assert m["counts"]["quarantined"] == {"extract_timeout": 1} and m["counts"]["out"] == 0
    assert manifest.verify(tmp_path / "out") == []


def test_the_limit_counts_cpu_time_not_time_spent_waiting_for_the_cores():
    # A call that holds no CPU (here it sleeps; on a loaded machine, a parse waiting for a core) is
    # not a runaway: the same page is kept whatever the machine's load.
    assert limited(0.05, lambda: (time.sleep(0.3), "done")[1]) == "done"
    with pytest.raises(ExtractionTimeout, match="of CPU"):
        limited(0.05, _swallows_exceptions, 5.0)


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


def test_charset_declared_only_in_meta_is_honoured(tmp_path):
    """A Shift_JIS page whose charset is named only by <meta charset>, served as plain text/html."""
    jp = "ページキャッシュはファイルのデータをメモリに保持し、同じデータの再読み込みでディスクを読まずに済ませる。"
    page = (f'<html><head><meta charset="Shift_JIS"><title>ページキャッシュ</title></head><body><article>'
            f'<h1>ページキャッシュ</h1>{"".join(f"<p>{jp}{i}</p>" for i in range(6))}</article></body></html>')
    body = page.encode("shift_jis")
    assert b"\x83" in body  # really Shift_JIS bytes, not UTF-8
    from curation.extract import decode_html

    text, clean = decode_html(body, "text/html")
    assert clean and jp in text
    warc = tmp_path / "00000.warc.gz"
    write_warc(warc, [("http://docs.test/jp.html", 200, "text/html", body)])
    m = run_stage(Extract(ExtractConfig(min_chars=100)), [warc], tmp_path / "out", executor="local", progress=False)
    (doc,) = list(iter_docs(tmp_path / "out"))
    assert jp in doc["text"] and "\ufffd" not in doc["text"] and doc["metadata"]["title"] == "ページキャッシュ"
    assert "invalid_encoding_repaired" not in m["stats"]


# A DocBook-style section (short paragraphs in div.para between navigation lists): trafilatura's fast
# mode returns nothing for pages built like this, its full algorithm finds the text.
DOCBOOK = """<?xml version="1.0" encoding="UTF-8"?>
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>3. Reporting problems</title></head><body>
<ul class="docnav top"><li class="previous"><a href="a.html"><strong>Back</strong></a></li><li class="next"><a href="c.html"><strong>Next</strong></a></li></ul>
<div class="section"><div class="titlepage"><div><div><h2 class="title"><a id="x"></a>3. Reporting problems</h2></div></div></div><div class="para">
  When a package misbehaves, first read its changelog and the list of open bugs, since the problem may already be known and a workaround may be described there. If it is new, write down the exact version, the command you ran and what it printed, then send a report to the maintainers with these details.
</div><div class="para">
  The bug tracker keeps every report and its discussion: <div class="url"><a href="https://bugs.example.org/">https://bugs.example.org/</a></div>
</div></div>
<ul class="docnav"><li class="previous"><a href="a.html"><strong>Back</strong>2. Installing</a></li><li class="next"><a href="c.html"><strong>Next</strong>4. Upgrading</a></li></ul></body></html>"""


def test_fast_mode_falls_back_page_by_page_when_it_returns_nothing(tmp_path):
    import trafilatura

    from curation.extract import extract_html

    cfg = ExtractConfig()
    assert cfg.fast and cfg.fast_fallback  # the defaults: fast first, the full algorithm for an empty page
    kw = dict(favor_precision=cfg.favor_precision, include_tables=cfg.include_tables, deduplicate=cfg.deduplicate)
    assert not trafilatura.extract(DOCBOOK, fast=True, **kw)  # the case the fallback exists for
    full = trafilatura.extract(DOCBOOK, fast=False, **kw)
    assert "When a package misbehaves" in full
    assert extract_html(DOCBOOK, "http://docs.test/b.html", cfg)[0] == full
    assert extract_html(DOCBOOK, "http://docs.test/b.html", ExtractConfig(fast_fallback=False))[0] == ""
    text, meta = extract_html(DOCBOOK, "http://docs.test/b.html", ExtractConfig(with_metadata=True))
    assert "When a package misbehaves" in text and meta["title"] == "3. Reporting problems"
    # through the stage: the page is kept (with the fallback off it is dropped as empty)
    warc = tmp_path / "00000.warc.gz"
    write_warc(warc, [("http://docs.test/b.html", 200, "text/html", DOCBOOK.encode()),
                      ("http://docs.test/p.html", 200, "text/html", ARTICLE.format(PARA * 3).encode())])
    m = run_stage(Extract(ExtractConfig(min_chars=50)), [str(warc)], tmp_path / "on", executor="local", progress=False)
    assert m["counts"]["out"] == 2
    m = run_stage(Extract(ExtractConfig(min_chars=50, fast_fallback=False)), [str(warc)], tmp_path / "off",
                  executor="local", progress=False)
    assert m["counts"]["out"] == 1 and m["counts"]["dropped"].get("empty") == 1
