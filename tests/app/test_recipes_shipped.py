"""Every shipped recipe (recipes/**) loads, and every curation recipe runs to curated/ against
loopback replicas of the services it names (endpoints, dumps and manifests overridden through the
recipe itself, spacing shortened; the recipe's stages and refine section are kept as shipped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from curation.pipeline import curate
from curation.recipe import CurationRecipe, load
from minisigma.core import manifest
from minisigma.core.recipes import load_recipe
from minisigma.core.shards import iter_docs
from minisigma.reproduce import ReproduceRecipe
from model.ablations import AblationRecipe
from model.evaluation.recipe import EvalRecipe
from model.recipe import TrainRecipe
from synth.recipe import SynthRecipe
from tests.sources_fixtures import HTTP_CONFIG, BlogApp, DblpApp, LoopbackServer, OaiApp, se_xml
from tests.pdf_fixtures import paper_pdf, source_paragraphs
from tests.curation.test_sources_arxiv import records
from tests.curation.test_sources_blogs import CRAWL, blog_manifest
from tests.curation.test_sources_ccf import papers
from tests.curation.test_sources_stackexchange import USERS, posts

ROOT = Path(__file__).resolve().parents[2]
KINDS = {"curation": CurationRecipe, "train": TrainRecipe, "eval": EvalRecipe, "synth": SynthRecipe,
         "ablations": AblationRecipe, "reproduce": ReproduceRecipe}
SHIPPED = sorted((ROOT / "recipes").rglob("*.yaml"))
CURATION = sorted((ROOT / "recipes" / "curation").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_shipped_recipe_loads(path):
    kind = path.relative_to(ROOT / "recipes").parts[0]
    assert kind in KINDS, f"{path}: no loader for recipes/{kind}/"
    assert load_recipe(path, KINDS[kind]) is not None


def test_every_curation_recipe_has_a_refine_section():
    assert {p.name for p in CURATION} >= {"default.yaml", "tiny.yaml", "internet.yaml", "general.yaml"}
    assert all(load(p).refine is not None for p in CURATION), "a recipe without refine never writes curated/"


def internet_overrides(recipe: dict, tmp_path: Path, oai: str, dblp: str, blog: str, dump: Path,
                       papers_host: str) -> dict:
    """internet.yaml pointed at the loopback services: arXiv's OAI-PMH and PDFs, DBLP's search API
    (its `ee` links on a loopback paper host), a Stack Exchange dump directory, a blog; one local
    executor, short spacing; stages untouched."""
    recipe["ray"] = {"executor": "local"}
    recipe["refine"]["executor"] = "local"
    for src in recipe["sources"]:
        if src["type"] == "arxiv":
            src.update(endpoint=f"{oai}/oai", http=HTTP_CONFIG, until="2024-01-31", **{"from": "2024-01-01"})
            src["fulltext"].update(arxiv_base=papers_host, crawl={**src["fulltext"]["crawl"], **FT_CRAWL})
        elif src["type"] == "ccf":
            src.update(endpoint=f"{dblp}/search/publ/api", http=HTTP_CONFIG, venues=["OSDI"], years=[2022, 2023])
            src["fulltext"].update(crawl={**src["fulltext"]["crawl"], **FT_CRAWL})
        elif src["type"] == "stackexchange":
            src.pop("dump_dir")
            src.update(dumps=[{"site": "unix.stackexchange.com", "path": str(dump)}], parts=1)
        elif src["type"] == "blogs":
            src.update(manifest=str(blog_manifest(tmp_path, blog)), crawl={**src["crawl"], **CRAWL})
    return recipe


FT_CRAWL = {"allow_loopback": True, "per_host_rate": 50.0, "retries": 1, "backoff_base": 0.01}


def test_internet_recipe_runs_to_curated_over_loopback(tmp_path):
    from tests.curation.test_sources_fulltext import PaperHost

    pdf = paper_pdf(source_paragraphs(8))[0]
    dump = tmp_path / "se"
    dump.mkdir()
    (dump / "Posts.xml").write_bytes(se_xml("posts", posts()))
    (dump / "Users.xml").write_bytes(se_xml("users", USERS))
    app = BlogApp(posts=3)
    # abstracts of real prose (the GPL-3 text base-files ships), so the refine stages have enough
    # distinct documents of >= 30 words to train the quality and category classifiers on
    recs = records()
    # (two categories, so the category classifier has >= 5 documents of each)
    for i, (r, para) in enumerate(zip((r for r in recs if "abstract" in r), source_paragraphs(20))):
        r["abstract"] = para
        if r["categories"] != ["cs.LG", "stat.ML"]:
            r["categories"] = [("cs.OS", "cs.NI")[i % 2]]
    shipped = yaml.safe_load((ROOT / "recipes" / "curation" / "internet.yaml").read_text())
    with LoopbackServer(PaperHost(pdf)) as host, LoopbackServer(OaiApp(recs)) as oai, \
            LoopbackServer(app) as site:
        listing = {k: [json.loads(json.dumps(h).replace("https://www.usenix.org", host.url)) for h in v]
                   for k, v in papers().items()}
        with LoopbackServer(DblpApp(listing)) as dblp:
            app.base = site.url
            recipe = internet_overrides(shipped, tmp_path, oai.url, dblp.url, site.url, dump, host.url)
            (tmp_path / "internet.yaml").write_text(yaml.safe_dump(recipe))
            run = curate(load(tmp_path / "internet.yaml"), tmp_path / "run", progress=False)
        assert not any("usenix" in str(h.query) for h in dblp.log)
    assert list(iter_docs(run / "curated"))
    ft = {n: manifest.read_json(run / "sources" / n / "manifest.json")["stats"] for n in ("arxiv", "ccf")}
    assert ft["arxiv"]["fulltext:pdf"] == 1 and ft["ccf"]["title_only"] >= 1  # counted either way
    entered = manifest.read_json(run / "refine" / "normalize" / "manifest.json")["counts"]["by_source"]
    assert set(entered) == {"arxiv", "ccf", "stackexchange", "blogs"}  # every source reached refine
    by_source = manifest.read_json(run / "curated" / "manifest.json")["counts"]["by_source"]
    # the fixtures' titles, short posts and repeated blog paragraphs are rightly filtered; the real
    # abstracts pass
    assert "arxiv" in by_source and set(by_source) <= set(entered)
    assert sum(v["docs"] for v in by_source.values()) == len(list(iter_docs(run / "curated")))
    assert manifest.verify(run) == []


LOCAL = {  # the localdocs recipes, cut to a few packages (they fetch from the Debian registry)
    "default.yaml": {"packages": ["coreutils", "iproute2", "procps", "mpich-doc"]},  # enough pages to train the classifiers
    "tiny.yaml": {},
    "general.yaml": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LOCAL))
def test_localdocs_recipe_runs_to_curated(tmp_path, name):
    recipe = yaml.safe_load((ROOT / "recipes" / "curation" / name).read_text())
    recipe["ray"] = {"executor": "local"}
    if recipe.get("refine") is not None:
        recipe["refine"]["executor"] = "local"
    for src in recipe["sources"]:
        if src["type"] == "localdocs":
            src.update(LOCAL[name])
        if src["type"] == "blogs":
            src["sites"] = ["python-whatsnew-recent"]
    (tmp_path / name).write_text(yaml.safe_dump(recipe))
    run = curate(load(tmp_path / name), tmp_path / "run", progress=False)
    assert list(iter_docs(run / "curated")) and manifest.verify(run) == []
