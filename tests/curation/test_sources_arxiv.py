"""arXiv adapter end to end against a loopback OAI-PMH server speaking arXiv's format."""

from __future__ import annotations

import pytest

from curation.sources.arxiv import ArxivSource, ArxivStage
from curation.sources.http import FetchFailed
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, list_shards, sha256_file
from tests.sources_fixtures import HTTP_CONFIG, LoopbackServer, OaiApp


def records() -> list[dict]:
    rs = []
    cats = [["cs.OS"], ["cs.DC", "cs.LG"], ["cs.NI"], ["cs.CR"], ["cs.DB"], ["cs.AR"], ["cs.SE"], ["cs.PL"]]
    for i in range(16):
        rs.append({"id": f"2401.{i:05d}", "datestamp": f"2024-01-{i + 2:02d}", "title": f"Paper {i} on systems",
                   "authors": [("Ada", f"Author{i}"), ("Linus", "Second")], "categories": cats[i % len(cats)],
                   "abstract": f"We study problem {i}.\n  A second paragraph about kernels and networks."})
    rs[4]["categories"] = ["cs.LG", "stat.ML"]  # not a listed category
    del rs[6]["abstract"]  # malformed: missing field
    rs[9] = {"id": rs[9]["id"], "datestamp": rs[9]["datestamp"], "deleted": True}
    return rs


def source(url: str, **kw) -> ArxivSource:
    cfg = {"endpoint": f"{url}/oai", "from": "2024-01-01", "until": "2024-02-29", "window_days": 31,
           "http": HTTP_CONFIG, **kw}
    return ArxivSource.model_validate(cfg)


def run(app: OaiApp, out, **kw):
    with LoopbackServer(app) as srv:
        m = run_stage(ArxivStage(source(srv.url, **kw)), [], out, executor="local", progress=False)
    return m, srv


def test_arxiv_pages_tokens_metadata_and_counts(tmp_path):
    app = OaiApp(records(), page_size=3)
    m, srv = run(app, tmp_path / "arxiv")
    docs = list(iter_docs(tmp_path / "arxiv"))
    ids = sorted(d["metadata"]["arxiv_id"] for d in docs)
    assert ids == sorted(f"2401.{i:05d}" for i in range(16) if i not in (4, 6, 9))
    d = next(x for x in docs if x["metadata"]["arxiv_id"] == "2401.00001")
    assert d["source"] == "arxiv" and d["url"] == "https://arxiv.org/abs/2401.00001"
    assert d["metadata"]["authors"] == ["Ada Author1", "Linus Second"]
    assert d["metadata"]["categories"] == ["cs.DC", "cs.LG"] and d["metadata"]["category"] == "distributed_cloud"
    assert d["metadata"]["license"] == "http://creativecommons.org/licenses/by/4.0/"
    assert d["text"].startswith("Paper 1 on systems\n\nWe study problem 1.\n\nA second paragraph")
    assert {x["metadata"]["category"] for x in docs} >= {"os_kernel", "networking", "security", "storage_databases"}
    c = m["counts"]
    assert c["out"] == 13
    assert c["dropped"] == {"category_not_listed": 1, "deleted": 1}
    assert c["quarantined"] == {"missing_field:abstract": 1}
    assert m["stats"]["oai_no_records_match"] == 1  # the February window is empty
    assert manifest.verify(tmp_path / "arxiv") == []
    # Protocol: the first request of the window names the format, set and dates; later ones only the token.
    lists = [h.query for h in srv.log]
    assert lists[0] == {"verb": "ListRecords", "metadataPrefix": "arXiv", "set": "cs", "from": "2024-01-01",
                        "until": "2024-01-31"}
    assert [q["resumptionToken"].split("|")[0] for q in lists[1:6]] == ["tok-3", "tok-6", "tok-9", "tok-12", "tok-15"]
    # Politeness, seen from the server: the User-Agent names tool and contact; requests are spaced.
    assert all(h.headers["user-agent"].startswith("minisigma/") and HTTP_CONFIG["contact"] in h.headers["user-agent"]
               for h in srv.log)
    gaps = [b.t - a.t for a, b in zip(srv.log, srv.log[1:])]
    assert min(gaps) >= HTTP_CONFIG["min_interval_s"] * 0.95


def test_arxiv_bad_resumption_token_restarts_window_and_is_counted(tmp_path):
    ok, _ = run(OaiApp(records(), page_size=3), tmp_path / "ref")
    app = OaiApp(records(), page_size=3, bad_tokens_once={"tok-9|2024-01-01|2024-01-31"})
    m, srv = run(app, tmp_path / "arxiv")
    assert m["counts"]["quarantined"] == {"missing_field:abstract": 1, "oai_error:badResumptionToken": 1}
    assert m["counts"]["out"] == ok["counts"]["out"] == 13
    assert sorted(d["id"] for d in iter_docs(tmp_path / "arxiv")) == sorted(d["id"] for d in iter_docs(tmp_path / "ref"))
    starts = [h for h in srv.log if "metadataPrefix" in h.query and h.query["from"] == "2024-01-01"]
    assert len(starts) == 2  # the window was harvested again from its start
    assert manifest.verify(tmp_path / "arxiv") == []


def test_arxiv_bad_resumption_token_without_restarts_keeps_pages_so_far(tmp_path):
    app = OaiApp(records(), page_size=3, bad_tokens_once={"tok-9|2024-01-01|2024-01-31"})
    m, _ = run(app, tmp_path / "arxiv", max_restarts=0)
    assert m["counts"]["quarantined"]["oai_error:badResumptionToken"] == 1
    assert m["counts"]["in"] == 9 + 1  # three pages of records + the error
    assert manifest.verify(tmp_path / "arxiv") == []


def test_arxiv_truncated_page_keeps_records_before_the_cut(tmp_path):
    full = OaiApp(records(), page_size=3)("GET", "/oai", {"verb": "ListRecords", "resumptionToken":
                                                          "tok-3|2024-01-01|2024-01-31"}, {})[2]
    cut = full.index(b"2401.00005</id>") + 40  # inside the third record of the page
    app = OaiApp(records(), page_size=3, truncate={3: cut})
    m, srv = run(app, tmp_path / "arxiv")
    c = m["counts"]
    assert c["quarantined"]["truncated_xml"] == 1 and c["quarantined"]["truncated_record"] == 1
    ids = sorted(d["metadata"]["arxiv_id"] for d in iter_docs(tmp_path / "arxiv"))
    assert ids == ["2401.00000", "2401.00001", "2401.00002", "2401.00003"]  # 4 is not listed; the cut ends it
    assert m["stats"]["oai_refetch_malformed"] == 1  # fetched once more before giving up on the page
    assert manifest.verify(tmp_path / "arxiv") == []


def test_arxiv_interrupted_harvest_resumes_from_token_with_same_documents(tmp_path):
    run(OaiApp(records(), page_size=3), tmp_path / "ref")
    app = OaiApp(records(), page_size=3, down_after=3)
    with LoopbackServer(app) as srv:
        stage = ArxivStage(source(srv.url))
        with pytest.raises(FetchFailed):
            run_stage(stage, [], tmp_path / "arxiv", executor="local", progress=False)
        assert not list_shards(tmp_path / "arxiv")
        served_before = len(srv.log)
        app.down_after = None
        m = run_stage(stage, [], tmp_path / "arxiv", executor="local", progress=False)
    resumed = srv.log[served_before]
    assert resumed.query == {"verb": "ListRecords", "resumptionToken": "tok-9|2024-01-01|2024-01-31"}
    assert m["stats"]["oai_resumed_from_checkpoint"] == 1
    ref = {p.name: sha256_file(p) for p in list_shards(tmp_path / "ref")}
    assert {p.name: sha256_file(p) for p in list_shards(tmp_path / "arxiv")} == ref
    assert manifest.verify(tmp_path / "arxiv") == []


def test_arxiv_recipe_errors_are_one_line(tmp_path):
    from minisigma.core.errors import UserError
    from minisigma.core.recipes import parse_recipe

    with pytest.raises(UserError, match=r"r.yaml: http.contact: must be an e-mail"):
        parse_recipe({"from": "2024-01-01", "until": "2024-01-02", "http": {"contact": "nobody"}}, ArxivSource,
                     "r.yaml")
    with pytest.raises(UserError, match="categories not in"):
        ArxivStage(ArxivSource.model_validate({"from": "2024-01-01", "until": "2024-01-02", "categories": ["cs.XX"],
                                               "http": HTTP_CONFIG}))
