"""Full text of arXiv and CCF records over loopback: PDFs and landing pages served by a real HTTP
server, fetched by the polite crawler (robots.txt, User-Agent), extracted by curation.pdftext; a
record with no reachable full text keeps its metadata text and is counted as such."""

from __future__ import annotations

import pytest
import yaml

from curation.pipeline import curate
from curation.recipe import load
from curation.sources.arxiv import ArxivStage
from curation.sources.fulltext import FullText, FullTextConfig
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, list_shards
from tests.pdf_fixtures import encrypted_pdf, paper_pdf, source_paragraphs
from tests.sources_fixtures import HTTP_CONFIG, DblpApp, LoopbackServer, OaiApp, dblp_hit
from tests.curation.test_sources_arxiv import records, source

UA = "minisigma-test/0.1 (+mailto:fulltext-tests@example.org)"
CRAWL = {"allow_loopback": True, "per_host_rate": 50.0, "retries": 1, "backoff_base": 0.01, "user_agent": UA}


@pytest.fixture(scope="module")
def pdf():
    return paper_pdf(source_paragraphs(8), title="Paging in practice")[0]


class PaperHost:
    """arXiv-like /pdf/<id>, a USENIX-like landing page with citation_pdf_url, robots.txt."""

    def __init__(self, pdf: bytes):
        self.pdf = pdf

    def __call__(self, method, path, query, headers):
        pdf = {"Content-Type": "application/pdf"}
        if path == "/robots.txt":
            return 200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n"
        if path == "/pdf/2401.00001":
            return 200, pdf, self.pdf
        if path == "/pdf/2401.00002":
            return 200, pdf, encrypted_pdf(self.pdf)
        if path == "/osdi22/p0":
            return 200, {"Content-Type": "text/html"}, (b'<html><head><meta name="citation_pdf_url" '
                                                        b'content="/system/files/osdi22-p0.pdf"></head><body>'
                                                        b'<p>Abstract only.</p></body></html>')
        if path == "/system/files/osdi22-p0.pdf":
            return 200, pdf, self.pdf
        if path == "/osdi22/p1":
            return 200, {"Content-Type": "text/html"}, (b'<html><head><meta name="citation_pdf_url" '
                                                        b'content="/private/p1.pdf"></head></html>')
        return 404, {"Content-Type": "text/plain"}, b"not found"


def test_arxiv_records_get_their_pdf_text_or_stay_abstracts(tmp_path, pdf):
    with LoopbackServer(OaiApp(records())) as oai:
        run_stage(ArxivStage(source(oai.url)), [], tmp_path / "harvest", executor="local", progress=False)
    cfg = FullTextConfig(arxiv_base="", crawl=CRAWL, extract={"min_chars": 200})
    with LoopbackServer(PaperHost(pdf)) as host:
        cfg = cfg.model_copy(update={"arxiv_base": host.url})
        m = run_stage(FullText(cfg, "arxiv"), list_shards(tmp_path / "harvest"), tmp_path / "arxiv",
                      executor="local", progress=False)
        hits = list(host.log)
    docs = {d["metadata"]["arxiv_id"]: d for d in iter_docs(tmp_path / "arxiv")}
    assert len(docs) == 13 and m["counts"]["in"] == m["counts"]["out"] == 13
    full = docs["2401.00001"]
    assert full["metadata"]["fulltext"] == "pdf" and full["metadata"]["pages"] >= 1
    assert full["text"].startswith("Paper 1 on systems\n\n") and "freedom to share" in full["text"]
    assert docs["2401.00002"]["metadata"]["fulltext_reason"] == "pdf_encrypted"
    assert docs["2401.00003"]["metadata"]["fulltext_reason"] == "http_404"
    assert docs["2401.00003"]["text"].startswith("Paper 3 on systems\n\nWe study problem 3.")
    st = m["stats"]
    assert st["fulltext:pdf"] == 1 and st["abstract_only"] == 12 and st["abstract_only:http_404"] == 11
    assert all(h.headers["user-agent"] == UA for h in hits) and hits[0].path == "/robots.txt"
    assert manifest.verify(tmp_path / "arxiv") == []


def test_ccf_ee_links_lead_to_open_access_pdfs_through_the_pipeline(tmp_path, pdf):
    with LoopbackServer(PaperHost(pdf)) as host:
        hits = {("conf/osdi", 2022): [
            dblp_hit("conf/osdi/A22", "Paging in practice", 2022, "OSDI",
                     ee=["https://doi.org/10.5555/a", f"{host.url}/osdi22/p0"]),
            dblp_hit("conf/osdi/B22", "Locked away", 2022, "OSDI", ee=f"{host.url}/osdi22/p1"),
            dblp_hit("conf/osdi/C22", "Only a DOI", 2022, "OSDI", ee="https://doi.org/10.5555/c"),
            dblp_hit("conf/osdi/D22", "Closed", 2022, "OSDI", ee=f"{host.url}/osdi22/p0", access="closed"),
            dblp_hit("conf/osdi/E22", "Nothing", 2022, "OSDI")]}
        with LoopbackServer(DblpApp(hits)) as dblp:
            recipe = {"name": "ccf-fulltext", "ray": {"executor": "local"}, "sources": [
                {"type": "ccf", "venues": ["OSDI"], "years": [2022], "endpoint": f"{dblp.url}/search/publ/api",
                 "http": HTTP_CONFIG, "fulltext": {"crawl": CRAWL, "extract": {"min_chars": 200}}}]}
            (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
            run = curate(load(tmp_path / "r.yaml"), tmp_path / "run", progress=False)
        paths = [h.path for h in host.log]
    assert "/private/p1.pdf" not in paths  # robots.txt holds for citation_pdf_url links too
    assert len(list(iter_docs(run / "harvest" / "ccf"))) == 5
    docs = {d["metadata"]["dblp_key"]: d for d in iter_docs(run / "sources" / "ccf")}
    a = docs["conf/osdi/A22"]
    assert a["metadata"]["fulltext"] == "pdf" and a["metadata"]["fulltext_url"].endswith("/osdi22-p0.pdf")
    assert "freedom to share" in a["text"]
    reasons = {k: d["metadata"].get("fulltext_reason") for k, d in docs.items()}
    assert reasons == {"conf/osdi/A22": None, "conf/osdi/B22": "landing_page_without_pdf", "conf/osdi/C22": "doi_only",
                       "conf/osdi/D22": "closed_access", "conf/osdi/E22": "no_link"}
    m = manifest.read_json(run / "sources" / "ccf" / "manifest.json")
    assert m["stats"]["title_only"] == 4 and m["stats"]["fulltext:pdf"] == 1
    assert docs["conf/osdi/C22"]["text"] == "Only a DOI"
    assert manifest.verify(run) == []
