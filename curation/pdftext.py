"""PDF -> clean text: papers, technical reports and specifications as first-class documents.

    text, meta = pdf_to_text(pdf_bytes, PdfConfig())      # raises PdfRejected(reason)

The library is pypdfium2 (PDFium, the PDF engine of Chromium, in self-contained wheels). Chosen
against PyMuPDF and pdfminer.six by `python benchmarks/bench_pdf.py` (benchmarks/results/pdf.json,
README "PDF full text"): on the Debian technical PDFs pypdfium2 read the most pages per second of CPU
(PyMuPDF close behind, pdfminer.six an order of magnitude slower), and on the two-column paper it
gave the words in reading order like PyMuPDF, where pdfminer.six's layout analysis reordered blocks.
PyMuPDF is AGPL-3.0, which would bind every user of this project; pypdfium2 is Apache-2.0/BSD-3,
and PDFium is Chromium's parser of hostile files.

What the libraries do not do is written here (no library does it on the text they return):
  * running headers and footers (the title, the journal name, page numbers, repeated at the top or
    bottom of most pages) are removed: a line among the first/last `running_lines` lines of a page
    that recurs (digits ignored) on at least half of the pages, or a bare page number;
  * words hyphenated at a line end are joined: PDFium marks the hyphens it recognises (U+0002,
    dropped here), and a line ending in letter + "-" followed by a line starting lower-case is joined;
  * dot leaders of tables of contents are removed;
  * lines are re-flowed into paragraphs (a line that ends a sentence well short of the usual line
    length, or a blank line, ends a paragraph);
  * the reference list is kept and located (`meta["references_offset"]`), so later stages can tell.

Refusals (the extract stage quarantines them with the reason): `pdf_too_large` (over `max_bytes`),
`pdf_too_many_pages`, `pdf_encrypted` (needs a password to open), `pdf_corrupt` (PDFium cannot
open it, or it is not a PDF), `pdf_no_text_layer` (image-only, e.g. a scan: fewer than
`min_chars_per_page` characters of text per page). The caller's per-document time limit (SIGALRM,
curation.extract.time_limit) interrupts between pages.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import median

import pypdfium2 as pdfium
from pydantic import Field

from minisigma.core.recipes import Section

PDF_TYPES = ("application/pdf", "application/x-pdf")


class PdfConfig(Section):
    max_bytes: int = Field(32 * 2**20, ge=1, description="larger PDFs are quarantined (pdf_too_large)")
    max_pages: int = Field(2000, ge=1)
    min_chars_per_page: float = Field(20.0, ge=0, description="less text per page: no text layer (a scan)")
    strip_running_lines: bool = True
    running_lines: int = Field(2, ge=0, description="lines at the top and at the bottom looked at per page")
    dehyphenate: bool = True
    reflow: bool = True


class PdfRejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def open_pdf(data: bytes, cfg: PdfConfig) -> pdfium.PdfDocument:
    if len(data) > cfg.max_bytes:
        raise PdfRejected("pdf_too_large", f"{len(data)} bytes > {cfg.max_bytes}")
    if b"%PDF-" not in data[:1024]:
        raise PdfRejected("pdf_corrupt", "no %PDF- header")
    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise PdfRejected("pdf_encrypted", msg) from None
        raise PdfRejected("pdf_corrupt", msg) from None
    if len(doc) == 0:
        doc.close()
        raise PdfRejected("pdf_corrupt", "no pages")
    if len(doc) > cfg.max_pages:
        n = len(doc)
        doc.close()
        raise PdfRejected("pdf_too_many_pages", f"{n} pages > {cfg.max_pages}")
    return doc


def page_lines(doc: pdfium.PdfDocument) -> list[list[str]]:
    """The text lines of every page, in PDFium's reading order."""
    pages = []
    for i in range(len(doc)):
        page = doc[i]
        try:
            tp = page.get_textpage()
            try:
                raw = tp.get_text_bounded()
            finally:
                tp.close()
        finally:
            page.close()
        # PDFium marks a word it saw hyphenated across a line end with U+0002 in place of the hyphen
        # (and the line break): dropping the mark joins the word. Soft hyphens (U+00AD) likewise.
        raw = raw.replace("\x02\r\n", "").replace("\x02", "").replace("\u00ad\r\n", "").replace("\u00ad", "")
        raw = raw.replace("\r\n", "\n").replace("\r", "\n")
        pages.append([" ".join(_LEADER.sub(" ", line).split()) for line in raw.split("\n")])
    return pages


# Dot leaders of tables of contents (". . . . ." or "......", 4 dots or more) become one space, or
# every ToC line would repeat the same n-grams and the repetition filters would drop the paper.
_LEADER = re.compile(r"(?:\s?\.){4,}\s?")


_DIGITS = re.compile(r"\d+")
_PAGE_NO = re.compile(r"^(page\s+)?(\d{1,4}|[ivxlcdm]{1,6})(\s*(/|of)\s*\d{1,4})?$", re.I)


def _key(line: str) -> str:
    return _DIGITS.sub("#", line.lower()).strip()


def strip_running(pages: list[list[str]], k: int) -> tuple[list[list[str]], int]:
    """Remove running headers/footers and bare page numbers; returns (pages, lines removed)."""
    edges = []
    for lines in pages:
        body = [i for i, ln in enumerate(lines) if ln]
        edges.append(set(body[:k] + body[-k:]) if k else set())
    counts = Counter()
    for lines, idx in zip(pages, edges):
        counts.update({_key(lines[i]) for i in idx})
    need = max(2, (len(pages) + 1) // 2)
    running = {key for key, n in counts.items() if n >= need and key}
    out, removed = [], 0
    for lines, idx in zip(pages, edges):
        kept = []
        for i, ln in enumerate(lines):
            if i in idx and (_key(ln) in running or _PAGE_NO.match(ln)):
                removed += 1
                continue
            kept.append(ln)
        out.append(kept)
    return out, removed


_HYPHEN_END = re.compile(r"[A-Za-z]-$")


_REFS = re.compile(r"^(\d+\.?\s+)?(references|bibliography|works cited)\s*$", re.I | re.M)
_REF_ENTRY = re.compile(r"^\[\d{1,3}\]\s")


def reflow(lines: list[str], dehyphenate: bool, join_lines: bool) -> str:
    """Join a document's lines into paragraphs (see the module docstring). The reference list's
    heading stands alone and each `[n]` entry starts a paragraph of its own."""
    lengths = [len(ln) for ln in lines if len(ln) > 20]
    typical = median(lengths) if lengths else 60
    paras: list[str] = []
    cur = ""
    for ln in lines:
        if not ln:
            if cur:
                paras.append(cur)
                cur = ""
            continue
        if cur and (_REFS.match(ln) or _REF_ENTRY.match(ln)):
            paras.append(cur)
            cur = ""
        if not cur:
            cur = ln
        elif dehyphenate and _HYPHEN_END.search(cur) and ln[:1].islower():
            cur = cur[:-1] + ln
        elif join_lines:
            cur = f"{cur} {ln}"
        else:
            cur = f"{cur}\n{ln}"
        if join_lines and (ln[-1:] in ".:!?" and len(ln) < 0.7 * typical or _REFS.match(ln)):
            paras.append(cur)
            cur = ""
    if cur:
        paras.append(cur)
    return "\n\n".join(paras)


def pdf_to_text(data: bytes, cfg: PdfConfig | None = None) -> tuple[str, dict]:
    cfg = cfg or PdfConfig()
    doc = open_pdf(data, cfg)
    try:
        meta_raw = doc.get_metadata_dict(skip_empty=True)
        pages = page_lines(doc)
    finally:
        doc.close()
    n_pages = len(pages)
    chars = sum(len(ln) for lines in pages for ln in lines)
    if chars < cfg.min_chars_per_page * n_pages:
        raise PdfRejected("pdf_no_text_layer", f"{chars} characters of text on {n_pages} pages")
    removed = 0
    if cfg.strip_running_lines and n_pages >= 2:
        pages, removed = strip_running(pages, cfg.running_lines)
    lines = [ln for lines in pages for ln in lines]
    text = reflow(lines, cfg.dehyphenate, cfg.reflow).strip()
    meta = {"pages": n_pages, "pdf_running_lines_removed": removed}
    title = " ".join((meta_raw.get("Title") or "").split())
    if title:
        meta["title"] = title
    for k_src, k in (("Author", "authors_pdf"), ("Producer", "pdf_producer"), ("CreationDate", "pdf_created")):
        if meta_raw.get(k_src):
            meta[k] = " ".join(str(meta_raw[k_src]).split())[:300]
    refs = list(_REFS.finditer(text))
    if refs:
        meta["references_offset"] = refs[-1].start()
    return text, meta
