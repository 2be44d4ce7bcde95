"""Full text of harvested papers: arXiv records from their PDF (or HTML rendering), CCF-venue records
from their DBLP electronic-edition (`ee`) links to an open-access PDF.

    <run>/harvest/<name>/   the adapter's metadata records (title + abstract, or title only)
    <run>/sources/<name>/   this stage: the same records, each with its full text where one was reached

One task per source. Candidate URLs per record:
  * arXiv: `<arxiv_base>/pdf/<id>` (`prefer: pdf`) or `<arxiv_base>/html/<id>` (`prefer: html`);
  * CCF: every `ee` link, in DBLP's order: an arXiv abstract page becomes its `/pdf/` link, a link
    ending in .pdf is fetched as is, any other landing page (USENIX, publisher open-access pages) is
    fetched as HTML and its `<meta name="citation_pdf_url">` PDF is followed; DOI resolver links are
    not followed (they redirect to another host, whose terms are unknown from the record); records
    DBLP marks as closed access (`access` not open) are not fetched.
All fetching is the polite crawler's (`curation.crawl`: robots.txt, Crawl-delay, per-host rate and
concurrency, retries, body cap, content types), into `<stage>/warc/00000.warc.gz`, kept so text
extraction can be re-run. PDFs go through `curation.pdftext` (bad PDFs: the reason is recorded),
HTML renderings through trafilatura, both under the extract section's per-document time limit.

Counts: in = out = records (a record is never lost for want of a full text); stats
`fulltext:pdf`, `fulltext:html`, `title_only` and `title_only:<reason>` (no_link, doi_only,
closed_access, fetch_failed, or the PDF's refusal reason) say how many of each.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

from pydantic import Field

from curation.crawl import CrawlConfig, crawl
from curation.extract import ExtractConfig, ExtractionTimeout, decode_html, extract_html, limited, records_by_url
from curation.links import citation_pdf_urls
from curation.pdftext import PDF_TYPES, PdfRejected, pdf_to_text
from curation.sources.common import stage_dir
from curation.urls import BadURL, canonicalize
from minisigma.core import storage
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.shards import read_docs, shard_name, tmp_path

ARXIV_ABS = re.compile(r"^https?://(www\.)?arxiv\.org/abs/(?P<id>[^?#]+)$")


class FullTextConfig(Section):
    prefer: Literal["pdf", "html"] = "pdf"  # arXiv: the PDF, or the HTML rendering arXiv offers
    arxiv_base: str = "https://arxiv.org"  # arXiv's abs/, pdf/ and html/ pages live here
    # arXiv asks for at most one request every 3 s; publishers' pages get the same care
    crawl: CrawlConfig = Field(default_factory=lambda: CrawlConfig(per_host_rate=1 / 3, per_host_concurrency=1,
                                                                   max_pages=100_000))
    extract: ExtractConfig = Field(default_factory=lambda: ExtractConfig(min_chars=500, timeout_s=30))
    max_records: int | None = Field(None, ge=1, description="records given a full-text attempt (the rest stay as they are)")


def _canon(url: str) -> str | None:
    try:
        return canonicalize(url)
    except BadURL:
        return None


def candidates(doc: dict, kind: str, cfg: FullTextConfig) -> tuple[list[str], str]:
    """(URLs to fetch in order of preference, reason when there is none) for one record."""
    m = doc.get("metadata") or {}
    base = cfg.arxiv_base.rstrip("/")
    if kind == "arxiv":
        return [f"{base}/{cfg.prefer}/{m['arxiv_id']}"], ""
    if m.get("access") not in (None, "open"):
        return [], "closed_access"
    urls, dois = [], 0
    for ee in m.get("ee") or []:
        ab = ARXIV_ABS.match(ee) or (re.match(rf"^{re.escape(base)}/abs/(?P<id>[^?#]+)$", ee))
        if ab:
            urls.append(f"{base}/pdf/{ab.group('id')}")
        elif urlsplit(ee).netloc.endswith("doi.org"):
            dois += 1
        elif urlsplit(ee).scheme in ("http", "https"):
            urls.append(ee)
    if not urls:
        return [], "doi_only" if dois else "no_link"
    return list(dict.fromkeys(urls)), ""


class FullText(Stage):
    name = "fulltext"

    def __init__(self, config: FullTextConfig, kind: Literal["arxiv", "ccf"]):
        super().__init__(config)
        self.kind = kind

    def tasks(self, inputs) -> list[Task]:
        return [Task(0, tuple(str(p) for p in inputs))]

    def process(self, task: Task, sink: Sink) -> None:
        c = self.config
        records = [d for p in task.inputs for d in read_docs(Path(p))]
        plans = []
        for i, d in enumerate(records):
            urls, why = candidates(d, self.kind, c) if c.max_records is None or i < c.max_records else ([], "not_tried")
            plans.append(([u for u in (_canon(x) for x in urls) if u], why))
        seeds = sorted({u for urls, _ in plans for u in urls})
        warc = stage_dir(sink) / "warc" / shard_name(0, ".warc.gz")
        warc.parent.mkdir(parents=True, exist_ok=True)
        if warc.exists():
            sink.stat("crawl_resumed_from_warc")
        elif seeds:
            cfg = c.crawl.model_copy(update={"allowed_prefixes": seeds, "allowed_hosts": [], "follow_links": False,
                                             "follow_pdf_meta": True, "max_depth": 1, "use_sitemaps": False,
                                             "use_feeds": False, "max_pages": max(c.crawl.max_pages, 2 * len(seeds))})
            partial = tmp_path(warc)
            try:
                stats = crawl(seeds, cfg, partial)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            os.replace(partial, warc)
            storage.committed(warc)  # a run at a URL: a retry on another node resumes from it
            sink.stat("http_requests", stats.requests)
            for f in stats.failures:
                sink.error({"url": f["url"]}, f"fetch:{f['reason']}", f.get("detail", ""))
        texts = self.read_warc(warc, sink) if warc.exists() else {}
        for d, (urls, why) in zip(records, plans):
            sink.take(d)
            got = None
            for u in urls:
                got = texts.get(u)
                if got and got[0] == "landing":  # a landing page: its citation_pdf_url
                    got = next((texts[p] for p in got[1] if texts.get(p, ("",))[0] in ("pdf", "html")), None) \
                        or ("refused", "landing_page_without_pdf")
                if got and got[0] in ("pdf", "html"):
                    break
            meta = dict(d["metadata"])
            if got and got[0] in ("pdf", "html"):
                kind, text, url, extra = got
                head = meta.get("title", "")
                d = {**d, "text": f"{head}\n\n{text}" if head and not text.startswith(head) else text,
                     "metadata": {**meta, **{k: v for k, v in extra.items() if k not in meta}, "fulltext": kind,
                                  "fulltext_url": url}}
                sink.stat(f"fulltext:{kind}")
            else:
                reason = why or (got[1] if got else "fetch_failed")
                d = {**d, "metadata": {**meta, "fulltext": "none", "fulltext_reason": reason}}
                sink.stat("title_only" if self.kind == "ccf" else "abstract_only")
                sink.stat(f"{'title' if self.kind == 'ccf' else 'abstract'}_only:{reason}")
            sink.write(d)

    def read_warc(self, warc: Path, sink: Sink) -> dict[str, tuple]:
        """canonical URL -> ("pdf"|"html", text, url, meta) | ("landing", [pdf urls]) | ("refused", reason),
        redirects resolved to the URL they led to."""
        out: dict[str, tuple] = {}
        redirects: dict[str, str] = {}
        with open(warc, "rb") as f:
            for rec in records_by_url(f):
                url = rec.rec_headers.get_header("WARC-Target-URI") or ""
                purpose = rec.rec_headers.get_header("X-Crawl-Purpose")
                if purpose == "redirect":
                    loc = rec.http_headers.get_header("Location") if rec.http_headers else None
                    if loc and (target := _canon(urljoin(url, loc))):
                        redirects[url] = target
                    continue
                if purpose and purpose != "page":
                    continue
                status = rec.http_headers.get_statuscode() if rec.http_headers else None
                if status != "200":
                    out[url] = ("refused", f"http_{status}")
                    continue
                ctype = (rec.http_headers.get_header("Content-Type") or "").lower()
                body = rec.content_stream().read()
                out[url] = self.text_of(url, ctype, body, sink)
        for src, dst in redirects.items():
            seen = {src}
            while dst in redirects and dst not in seen:
                seen.add(dst)
                dst = redirects[dst]
            if dst in out:
                out[src] = out[dst]
        return out

    def text_of(self, url: str, ctype: str, body: bytes, sink: Sink) -> tuple:
        e = self.config.extract
        try:
            if ctype.startswith(PDF_TYPES):
                text, meta = limited(e.timeout_s, pdf_to_text, body, e.pdf)
                kind = "pdf"
            elif ctype.startswith(("text/html", "application/xhtml+xml")):
                links = [u for u in (_canon(x) for x in citation_pdf_urls(body, url)) if u]
                if links:
                    return ("landing", links)
                html, _ = decode_html(body, ctype)
                text, meta = limited(e.timeout_s, extract_html, html, url, e)
                kind = "html"
            else:
                return ("refused", "not_pdf_or_html")
        except PdfRejected as err:
            return ("refused", err.reason)
        except ExtractionTimeout:
            return ("refused", "extract_timeout")
        except Exception as err:  # one bad file costs one record its full text, nothing more
            return ("refused", f"extract_error: {type(err).__name__}")
        if len(text) < e.min_chars:
            return ("refused", "too_short")
        return (kind, text, url, {k: v for k, v in meta.items() if k in ("pages", "title")})
