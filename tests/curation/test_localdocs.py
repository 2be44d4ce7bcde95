"""The embedded default source end to end: real Debian packages -> man pages + crawled HTML -> documents."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from curation import pipeline
from curation.recipe import CurationRecipe
from minisigma.core import manifest
from minisigma.core.recipes import parse_recipe
from minisigma.core.shards import iter_docs, list_shards, sha256_file

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("groff") is None,
                                reason="needs apt-get (Debian registry) and groff")


def recipe(tmp_path, packages, manifest_path=None):
    src = {"type": "localdocs", "packages": packages, "cache_dir": str(tmp_path / "cache")}
    if manifest_path:
        src["manifest"] = str(manifest_path)
    return parse_recipe({
        "name": "t", "sources": [src],
        "crawl": {"allow_loopback": True, "max_pages": 40, "per_host_rate": 100.0, "per_host_concurrency": 4},
        "extract": {"min_chars": 100},
    }, CurationRecipe)


def test_localdocs_curation_end_to_end_and_resume(tmp_path, ray_local):
    r = recipe(tmp_path, ["debian-reference-en", "grep"])
    run = tmp_path / "run"
    pipeline.curate(r, run, progress=False)

    fetched = {d["package"]: d for d in iter_docs(run / "fetch")}
    assert set(fetched) == {"debian-reference-en", "grep"}
    for rec in fetched.values():
        deb = tmp_path / "cache" / "debs" / rec["deb"]
        assert rec["version"] and rec["sha256"] == sha256_file(deb)

    man = {d["metadata"]["tool"]: d for d in iter_docs(run / "sources" / "manpages")}
    assert "grep" in man
    g = man["grep"]
    assert "SYNOPSIS" in g["text"] and "--fixed-strings" in g["text"]
    assert g["url"] == "man:grep(1)" and g["metadata"]["package"] == "grep"

    html = list(iter_docs(run / "extract"))
    assert len(html) >= 5
    assert all(d["url"].startswith("localdocs://debian-reference-en/") for d in html)
    assert any("apt" in d["text"] for d in html)
    crawl = json.loads((run / "crawl" / "manifest.json").read_text())
    assert crawl["counts"]["out"] >= 5 and crawl["stats"]["warc_records"] >= 10

    assert manifest.verify(run) == []
    before = {p.name: sha256_file(p) for p in list_shards(run / "extract")}
    pipeline.curate(r, run, progress=False)  # everything is finished: a rerun resumes every shard
    for stage in ["fetch", "sources/manpages", "crawl", "extract"]:
        m = json.loads((run / stage / "manifest.json").read_text())
        assert m["resumed_shards"] == len(m["outputs"]), stage
    assert {p.name: sha256_file(p) for p in list_shards(run / "extract")} == before


def test_missing_package_is_quarantined_not_fatal(tmp_path):
    mf = tmp_path / "pkgs.yaml"
    mf.write_text(yaml.safe_dump({"packages": [
        {"name": "sed", "man": True, "category": "devops_tooling"},
        {"name": "no-such-package-minisigma", "man": True},
    ]}))
    r = recipe(tmp_path, None, mf)
    r.ray.executor = "local"
    run = tmp_path / "run"
    pipeline.curate(r, run, progress=False)
    m = json.loads((run / "fetch" / "manifest.json").read_text())
    assert m["counts"]["out"] == 1
    (reason,) = m["counts"]["quarantined"]
    assert reason.startswith("fetch_failed")
    assert any(d["metadata"]["tool"] == "sed" for d in iter_docs(run / "sources" / "manpages"))
    assert manifest.verify(run) == []
