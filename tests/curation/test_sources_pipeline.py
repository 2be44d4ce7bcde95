"""The four adapters through `minisigma curate`'s pipeline, from one recipe, against loopback services."""

from __future__ import annotations

import pytest
import yaml

from curation.pipeline import curate
from curation.recipe import load
from curation.sources.categories import CATEGORIES
from curation.sources.arxiv import ArxivStage
from curation.sources.ccf import CcfStage
from curation.sources.registry import SOURCES
from minisigma.core import manifest
from minisigma.core.errors import UserError
from minisigma.core.shards import iter_docs
from tests.sources_fixtures import HTTP_CONFIG, BlogApp, DblpApp, LoopbackServer, OaiApp, se_xml
from tests.curation.test_sources_arxiv import records
from tests.curation.test_sources_blogs import CRAWL, blog_manifest
from tests.curation.test_sources_ccf import papers
from tests.curation.test_sources_stackexchange import USERS, posts


def test_internet_recipe_validates_and_plans_every_source():
    r = load("recipes/curation/internet.yaml")
    assert [s.type for s in r.sources] == ["arxiv", "ccf", "stackexchange", "blogs"]
    arxiv, ccf = r.sources[0], r.sources[1]
    assert arxiv.endpoint == "https://oaipmh.arxiv.org/oai" and arxiv.http.min_interval_s >= 3.0
    assert ccf.endpoint == "https://dblp.org/search/publ/api"
    assert len(ArxivStage(arxiv).tasks([])) == 12
    assert len(CcfStage(ccf).tasks([])) > 100
    assert {"localdocs", "arxiv", "ccf", "stackexchange", "blogs", "datatrove"} <= set(SOURCES)


def test_bad_source_section_is_a_one_line_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "sources": [{"type": "arxiv", "from": "2024-01-01",
                                                            "until": "2024-01-02", "http": HTTP_CONFIG,
                                                            "windows": 3}]}))
    with pytest.raises(UserError, match=r"r.yaml: sources.0.arxiv.windows: unknown key"):
        load(p)


def test_curate_runs_all_four_adapters(tmp_path):
    dump = tmp_path / "se"
    dump.mkdir()
    (dump / "Posts.xml").write_bytes(se_xml("posts", posts()))
    (dump / "Users.xml").write_bytes(se_xml("users", USERS))
    blog = BlogApp(posts=2)
    with LoopbackServer(OaiApp(records())) as oai, LoopbackServer(DblpApp(papers())) as dblp, \
            LoopbackServer(blog) as site:
        blog.base = site.url
        recipe = {"name": "loopback", "ray": {"executor": "local"}, "sources": [
            {"type": "arxiv", "endpoint": f"{oai.url}/oai", "from": "2024-01-01", "until": "2024-01-31",
             "http": HTTP_CONFIG},
            {"type": "ccf", "venues": ["OSDI"], "years": [2022, 2023], "endpoint": f"{dblp.url}/search/publ/api",
             "http": HTTP_CONFIG},
            {"type": "stackexchange", "dumps": [{"site": "unix.stackexchange.com", "path": str(dump)}]},
            {"type": "blogs", "manifest": str(blog_manifest(tmp_path, site.url)), "crawl": CRAWL},
        ]}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        run = curate(load(tmp_path / "r.yaml"), tmp_path / "run", progress=False)
    counts = {}
    for name in ["arxiv", "ccf", "stackexchange", "blogs"]:  # the blog's pages go through the shared crawl
        docs = [d for d in iter_docs(run / "extract") if d["source"] == name] if name == "blogs" \
            else list(iter_docs(run / "sources" / name))
        counts[name] = len(docs)
        assert all(d["source"] == name and d["metadata"]["category"] in CATEGORIES for d in docs)
    assert counts == {"arxiv": 13, "ccf": 6, "stackexchange": 4, "blogs": 2}
    assert manifest.verify(run) == []


def test_a_source_module_registers_itself_and_runs_in_a_recipe(tmp_path):
    import tests.source_plugin  # noqa: F401  (registers type: paragraphs)

    notes = tmp_path / "notes.txt"
    notes.write_text("The scheduler picks the next thread.\n\nThe page cache keeps blocks.\n", encoding="utf-8")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "p", "ray": {"executor": "local"},
                                 "sources": [{"type": "paragraphs", "name": "notes", "path": str(notes)}]}))
    run = curate(load(p), tmp_path / "run", progress=False)
    docs = list(iter_docs(run / "sources" / "notes"))
    assert [d["text"] for d in docs] == ["The scheduler picks the next thread.", "The page cache keeps blocks."]
    assert {d["source"] for d in docs} == {"notes"}
    assert manifest.verify(run) == []
    p.write_text(yaml.safe_dump({"name": "p", "sources": [{"type": "paragraphs", "name": "n", "pth": "x"}]}))
    with pytest.raises(UserError, match=r"sources.0.paragraphs"):
        load(p)
