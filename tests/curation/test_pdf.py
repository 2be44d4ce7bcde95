"""PDF full text: real PDF files (made here with reportlab, pikepdf and Pillow), crawled over loopback
by the real crawler, extracted with curation.pdftext; every bad kind is quarantined with its reason."""

from __future__ import annotations

import difflib

import pytest

from curation.crawl import CrawlConfig, crawl
from curation.extract import Extract, ExtractConfig
from curation.pdftext import PdfConfig, PdfRejected, pdf_to_text
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs
from tests.pdf_fixtures import corrupt_pdf, encrypted_pdf, image_only_pdf, paper_pdf, source_paragraphs
from tests.sources_fixtures import LoopbackServer

REFS = ["A. Author and B. Writer. Paging in practice. In Proceedings of OSDI, 2020.",
        "C. Coder. Queues, locks and the scalability of kernels. ACM TOCS 12(3), 1994."]


@pytest.fixture(scope="module")
def paper():
    return paper_pdf(source_paragraphs(30), references=REFS)


def test_two_column_paper_reads_in_order_without_headers_or_split_words(paper):
    data, truth = paper
    assert truth["pages"] >= 3 and len(truth["hyphenated"]) >= 10
    text, meta = pdf_to_text(data)
    body = text[: meta["references_offset"]]
    ratio = difflib.SequenceMatcher(None, truth["words"], body.split(), autojunk=False).ratio()
    assert ratio > 0.98  # column 1 before column 2, page after page
    tokens = text.split()
    assert all(any(w in t for t in tokens) for w in truth["hyphenated"])  # joined again, references too
    assert not any(t.endswith("-") and t[:-1].isalpha() for t in tokens)
    assert truth["header"] not in text  # the running header of every page
    assert meta["pdf_running_lines_removed"] >= 2 * truth["pages"] - 1  # header + page number per page
    refs = text[meta["references_offset"]:].split("\n\n")
    assert refs[0] == "References" and refs[1:] == [f"[{i}] {r}" for i, r in enumerate(REFS, 1)]
    assert meta["title"] == truth["title"] and meta["pages"] == truth["pages"]


@pytest.mark.parametrize("kind", ["encrypted", "corrupt", "image_only", "too_large", "not_pdf"])
def test_bad_pdf_is_refused_with_its_reason(paper, kind):
    data, _ = paper
    bad, cfg, reason = {
        "encrypted": (encrypted_pdf(data), PdfConfig(), "pdf_encrypted"),
        "corrupt": (corrupt_pdf(data), PdfConfig(), "pdf_corrupt"),
        "image_only": (image_only_pdf(), PdfConfig(), "pdf_no_text_layer"),
        "too_large": (data, PdfConfig(max_bytes=len(data) - 1), "pdf_too_large"),
        "not_pdf": (b"<html>an error page served as a PDF</html>", PdfConfig(), "pdf_corrupt"),
    }[kind]
    with pytest.raises(PdfRejected) as e:
        pdf_to_text(bad, cfg)
    assert e.value.reason == reason


def test_crawled_pdfs_are_extracted_or_quarantined_and_counted(tmp_path, paper):
    data, truth = paper
    files = {"/paper.pdf": data, "/locked.pdf": encrypted_pdf(data), "/scan.pdf": image_only_pdf(),
             "/broken.pdf": corrupt_pdf(data), "/big.pdf": data + b"\n%" + b"x" * 1_200_000,
             "/huge.pdf": data + b"\n%" + b"x" * 3_000_000}
    index = "".join(f"<a href='{p}'>{p}</a> " for p in files)

    def app(method, path, query, headers):
        if path == "/":
            return 200, {"Content-Type": "text/html"}, f"<html><body>{index}</body></html>".encode()
        if path in files:
            return 200, {"Content-Type": "application/pdf"}, files[path]
        return 404, {"Content-Type": "text/plain"}, b"no"

    with LoopbackServer(app) as srv:
        cfg = CrawlConfig(allow_loopback=True, per_host_rate=100, max_body_bytes=2 * 2**20)
        stats = crawl([srv.url + "/"], cfg, tmp_path / "00000.warc.gz")
    assert stats.errors == {"too_large": 1}  # /huge.pdf: over the crawler's body cap, never stored
    assert stats.pdfs == 5 and stats.unaccounted() == 0
    ecfg = ExtractConfig(pdf=PdfConfig(max_bytes=2**20), min_chars=200)  # /big.pdf is over it
    m = run_stage(Extract(ecfg, {"00000.warc.gz": {"source": "papers", "category": "os_kernel"}}),
                  [tmp_path / "00000.warc.gz"], tmp_path / "extract", executor="local", progress=False)
    c = m["counts"]
    assert c["quarantined"] == {"pdf_encrypted": 1, "pdf_corrupt": 1, "pdf_no_text_layer": 1, "pdf_too_large": 1}
    assert c["out"] == 1 and c["in"] == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    (doc,) = [d for d in iter_docs(tmp_path / "extract") if d["metadata"].get("format") == "pdf"]
    assert doc["source"] == "papers" and doc["url"].endswith("/paper.pdf") and doc["metadata"]["pages"] == truth["pages"]
    assert m["stats"]["pdf_pages"] == truth["pages"]
    assert manifest.verify(tmp_path / "extract") == []


def test_package_pdfs_are_served_as_pdf_for_the_crawl(tmp_path, paper):
    """localdocs serves a package's listed PDFs (a .pdf.gz as its .pdf) and nothing else."""
    import gzip
    import urllib.request

    from curation.sources import localdocs

    data, _ = paper
    root = tmp_path / "root"
    (root / "usr/share/doc/x").mkdir(parents=True)
    (root / "usr/share/doc/x/a.pdf").write_bytes(data)
    (root / "usr/share/doc/x/b.pdf.gz").write_bytes(gzip.compress(data))
    (root / "usr/share/doc/x/secret.txt").write_text("not listed")
    rec = {"package": "x-doc", "version": "1", "root": str(root), "html_roots": [],
           "pdf_files": localdocs.package_pdfs(root, ["usr/share/doc/x/*.pdf*"])}
    spec = localdocs.PackageSpec(name="x-doc", category="os_kernel", pdf_files=["usr/share/doc/x/*.pdf*"])
    with localdocs.serve_sites([rec], {"x-doc": spec}) as sites:
        (site,) = sites
        assert site.source == "papers" and [s.rsplit("/", 1)[1] for s in site.seeds] == ["a.pdf", "b.pdf"]
        for seed in site.seeds:
            with urllib.request.urlopen(seed) as r:
                assert r.headers["Content-Type"] == "application/pdf" and r.read() == data
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(site.base_url + "usr/share/doc/x/secret.txt")
