"""Extraction: WARC response records -> Documents, with trafilatura.

One task per WARC shard. Each HTML response is extracted with a per-document time limit; anything
that yields no document is counted by reason (http status, content type, timeout, empty, error),
and the stage never crashes on one bad record.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager
from html import unescape
from typing import Iterator
from urllib.parse import urlsplit

from warcio.archiveiterator import ArchiveIterator

from curation.links import sniff_charset
from curation.pdftext import PDF_TYPES, PdfConfig, PdfRejected, pdf_to_text
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.document import Document

HTML_TYPES = ("text/html", "application/xhtml+xml")


class ExtractConfig(Section):
    timeout_s: float = 10.0  # per-document limit, in CPU seconds (independent of the machine's load)
    min_chars: int = 200  # shorter extractions are dropped as "too_short"
    favor_precision: bool = True
    include_tables: bool = True
    include_comments: bool = False
    deduplicate: bool = False  # trafilatura's own in-document dedup (off: keep repeated code lines)
    # trafilatura's `fast` mode skips its justext/readability comparison. It returns nothing for some
    # pages (81 of the 400 localdocs pages of `minisigma bench curation`), so a page that comes back
    # empty is extracted again with the full algorithm (`fast_fallback`): no page is lost for speed
    # (388 kept, full mode 387). Where fast mode returns text it is its own, not always the full
    # algorithm's (299 of 387 identical); benchmarks/results/curation.json has both sides.
    fast: bool = True
    fast_fallback: bool = True
    # trafilatura's full metadata (author, date via htmldate, sitename) costs ~30% more time; the page
    # title is always kept (read from <title>).
    with_metadata: bool = False
    # PDF responses (papers, reports, specifications): curation.pdftext, under the same time limit;
    # encrypted, corrupt, image-only and oversized files are quarantined with the reason.
    pdf: PdfConfig = PdfConfig()


class ExtractionTimeout(BaseException):
    """The per-document time limit ran out.

    A BaseException, not an Exception: the alarm fires wherever the extraction happens to be, and
    trafilatura (like most parsers) wraps its steps in `except Exception`, which would swallow an
    Exception-derived timeout and let the page parse on without a limit."""


@contextmanager
def time_limit(seconds: float):
    """A limit of `seconds` of this process's CPU time (SIGPROF from ITIMER_PROF), set in the main
    thread, which is where Ray and the CLI run tasks; elsewhere no signal is set and `limited` below
    still enforces the limit after the call returns.

    CPU time, not wall-clock: extraction does no I/O, so a page that needs more than `seconds` of
    CPU is the runaway the limit is for, while wall-clock time also counts the time other processes
    held the cores. On a loaded machine a wall-clock limit quarantined a 150-page PDF that takes
    under a second of CPU, so the same run kept different pages depending on the machine's load."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = True

    def _raise(signum, frame):
        if armed:  # a signal delivered while the limit is being torn down is ignored, not raised
            raise ExtractionTimeout(f"over {seconds:g}s of CPU")

    old = signal.signal(signal.SIGPROF, _raise)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


def limited(seconds: float, fn, *args, **kwargs):
    """`fn(*args, **kwargs)` under a limit of `seconds` of CPU time (0: none).

    Two guards, so that neither a library's exception handling nor a long C call (the signal is
    only handled between Python bytecodes) can defeat the limit: the timer raises ExtractionTimeout,
    outside Exception's tree; and whatever the call did with it, a call that returns, or raises,
    after it has used up its CPU time is a timeout too."""
    start = time.process_time()
    try:
        with time_limit(seconds):
            result = fn(*args, **kwargs)
    except Exception as e:
        if seconds > 0 and time.process_time() - start >= seconds:
            raise ExtractionTimeout(f"over {seconds:g}s of CPU ({type(e).__name__} at the deadline)") from e
        raise
    if seconds > 0 and time.process_time() - start >= seconds:
        raise ExtractionTimeout(f"over {seconds:g}s of CPU (the limit's signal was swallowed)")
    return result


def decode_html(body: bytes, content_type: str) -> tuple[str, bool]:
    """Decode with the charset of the Content-Type, else of the page's own <meta charset> (the
    crawler's `links.sniff_charset`), falling back to UTF-8 with replacement. Returns (text, was_clean)."""
    declared = None
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            declared = v.strip().strip('"').lower()
    charset = sniff_charset(body, declared)
    try:
        return body.decode(charset), True
    except (UnicodeDecodeError, LookupError):
        return body.decode("utf-8", errors="replace"), False


TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.S | re.I)


def extract_html(html: str, url: str, cfg: ExtractConfig) -> tuple[str, dict]:
    """trafilatura on one page, under `extract_accel.accelerated()`: trafilatura's own algorithm and
    output (byte-identical text, tests/curation/test_extract_accel.py), with its regex XPath filters
    evaluated as precompiled Python predicates over lxml's C tree walk instead of libxml2 calling back
    into Python per element and pattern. That is what makes ours cheaper than datatrove's `Trafilatura`
    step at the same settings (`minisigma bench curation`): about half of trafilatura's time on the
    bench pages was those callbacks."""
    from curation.extract_accel import accelerated  # imports trafilatura: heavy, kept lazy as below

    with accelerated():
        return _extract_html(html, url, cfg)


def _extract_html(html: str, url: str, cfg: ExtractConfig) -> tuple[str, dict]:
    import trafilatura

    options = dict(url=url, favor_precision=cfg.favor_precision, include_tables=cfg.include_tables,
                   include_comments=cfg.include_comments, deduplicate=cfg.deduplicate, fast=cfg.fast)
    if not cfg.with_metadata:
        text = trafilatura.extract(html, **options) or ""
        if not text.strip() and cfg.fast and cfg.fast_fallback:
            text = trafilatura.extract(html, **{**options, "fast": False}) or ""
        m = TITLE.search(html, 0, 200_000)
        title = " ".join(unescape(m.group(1)).split()) if m else ""
        return text, ({"title": title} if title else {})
    doc = trafilatura.bare_extraction(html, with_metadata=True, **options)
    if (doc is None or not (getattr(doc, "text", None) or "").strip()) and cfg.fast and cfg.fast_fallback:
        doc = trafilatura.bare_extraction(html, with_metadata=True, **{**options, "fast": False})
    if doc is None:
        return "", {}
    d = doc.as_dict() if hasattr(doc, "as_dict") else dict(doc)
    meta = {k: d.get(k) for k in ("title", "author", "date", "sitename", "license", "description") if d.get(k)}
    return d.get("text") or "", meta


def records_by_url(f) -> Iterator:
    """The response records of an open WARC in URL order, not in the order the crawl finished them
    (which depends on timing), so the same pages always give the same shard. Two passes: offsets
    first, then one seek per record, so no more than one body is held at a time."""
    it = ArchiveIterator(f)
    index = sorted((rec.rec_headers.get_header("WARC-Target-URI") or "", it.get_record_offset())
                   for rec in it if rec.rec_type == "response")
    for _url, offset in index:
        f.seek(offset)
        yield next(iter(ArchiveIterator(f)))


def stable_locator(url: str, prefix: str | None) -> str:
    """Sites served on an ephemeral loopback port get a port-free locator (e.g. localdocs://pkg/path),
    so document ids stay the same from one run to the next."""
    if not prefix:
        return url
    parts = urlsplit(url)
    return prefix.rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _attempts(rec) -> int:
    v = (rec.rec_headers.get_header("X-Crawl-Attempts") or "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else 1


class Extract(Stage):
    """WARC shard -> documents, with the metadata of the shard's site (`site_meta`) and its own
    settings where the site has them (`site_config`, e.g. a blogs source's `extract:` section)."""

    name = "extract"

    def __init__(self, config: ExtractConfig, site_meta: dict[str, dict] | None = None,
                 site_config: dict[str, ExtractConfig] | None = None):
        super().__init__(config)
        self.site_meta = site_meta or {}  # warc shard name -> {source, category, site, ...}
        self.site_config = site_config or {}  # warc shard name -> its site's ExtractConfig

    def process(self, task: Task, sink: Sink) -> None:
        path = task.inputs[0]
        meta = self.site_meta.get(path.rsplit("/", 1)[-1], {})
        cfg = self.site_config.get(path.rsplit("/", 1)[-1], self.config)
        source = meta.get("source", "web")
        with open(path, "rb") as f:
            for rec in records_by_url(f):
                url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                purpose = rec.rec_headers.get_header("X-Crawl-Purpose")
                if (purpose and purpose != "page") or (not purpose and url.endswith("/robots.txt")):
                    continue  # robots.txt, sitemaps, feeds and redirect hops are crawl plumbing, not content
                sink.take()
                where = {"url": url}
                attempts = _attempts(rec)  # a retried fetch is one record, holding its number of attempts
                if attempts > 1:
                    where["attempts"] = attempts
                status = rec.http_headers.get_statuscode() if rec.http_headers else None
                if status != "200":
                    sink.drop(where, f"http_{status}")
                    continue
                ctype = (rec.http_headers.get_header("Content-Type") or "").lower()
                if ctype.startswith(PDF_TYPES):
                    self.process_pdf(rec, url, path, meta, source, sink, cfg)
                    continue
                if not ctype.startswith(HTML_TYPES):
                    sink.drop(where, "not_html")
                    continue
                body = rec.content_stream().read()
                html, clean = decode_html(body, ctype)
                if not clean:
                    sink.stat("invalid_encoding_repaired")
                try:
                    text, doc_meta = limited(cfg.timeout_s, extract_html, html, url, cfg)
                except ExtractionTimeout:
                    sink.quarantine(where, "extract_timeout")
                    continue
                except Exception as e:  # a parser bug on one page must not stop the stage
                    sink.quarantine(where, f"extract_error: {type(e).__name__}")
                    continue
                if not text.strip():
                    sink.drop(where, "empty")
                    continue
                if len(text) < cfg.min_chars:
                    sink.drop(where, "too_short")
                    continue
                fetched = rec.rec_headers.get_header("WARC-Date") or ""
                locator = stable_locator(url, meta.get("locator"))
                sink.write(Document.create(source, locator, text, metadata={
                    **doc_meta, **{k: v for k, v in meta.items() if k not in ("source", "locator")},
                    **({"served_url": url} if locator != url else {}),
                    **({"fetch_attempts": attempts} if attempts > 1 else {}),
                    "fetched_at": fetched, "warc": path.rsplit("/", 1)[-1],
                    "warc_record_id": rec.rec_headers.get_header("WARC-Record-ID")}).to_dict())

    def process_pdf(self, rec, url: str, path: str, meta: dict, source: str, sink: Sink,
                    cfg: ExtractConfig | None = None) -> None:
        """One PDF response -> a document, or its quarantine reason (curation.pdftext)."""
        cfg = cfg or self.config
        where = {"url": url}
        attempts = _attempts(rec)
        if attempts > 1:
            where["attempts"] = attempts
        body = rec.content_stream().read()
        try:
            text, doc_meta = limited(cfg.timeout_s, pdf_to_text, body, cfg.pdf)
        except ExtractionTimeout:
            sink.quarantine(where, "extract_timeout")
            return
        except PdfRejected as e:
            sink.quarantine({**where, "detail": e.detail[:200]}, e.reason)
            return
        except Exception as e:  # a PDFium surprise on one file must not stop the stage
            sink.quarantine(where, f"extract_error: {type(e).__name__}")
            return
        if len(text) < cfg.min_chars:
            sink.drop(where, "too_short" if text.strip() else "empty")
            return
        sink.stat("pdf_documents")
        sink.stat("pdf_pages", doc_meta.get("pages", 0))
        locator = stable_locator(url, meta.get("locator"))
        sink.write(Document.create(source, locator, text, metadata={
            **doc_meta, **{k: v for k, v in meta.items() if k not in ("source", "locator")},
            **({"served_url": url} if locator != url else {}), "format": "pdf",
            **({"fetch_attempts": attempts} if attempts > 1 else {}),
            "fetched_at": rec.rec_headers.get_header("WARC-Date") or "", "warc": path.rsplit("/", 1)[-1],
            "warc_record_id": rec.rec_headers.get_header("WARC-Record-ID")}).to_dict())
