"""`minisigma bench curation`: the command a user runs, on a small folder of HTML pages, with the Ray
scaling sides; what it stores is checked, never how fast anything was (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

PARAGRAPH = ("The scheduler places each task on a node with free CPUs, and the object store keeps the "
             "results until every reader has fetched them. ")


def test_bench_curation_stores_its_sides_and_the_ray_scaling_rounds_under_its_name(tmp_path, monkeypatch):
    pages = tmp_path / "html"
    pages.mkdir()
    for i in range(6):
        body = "".join(f"<p>{PARAGRAPH * 3} Page {i}, part {j}.</p>" for j in range(4))
        (pages / f"page{i}.html").write_text(f"<html><head><title>Page {i}</title></head><body><article>"
                                             f"<h1>Page {i}</h1>{body}</article></body></html>")
    monkeypatch.setenv("MINISIGMA_BENCH_RESULTS", str(tmp_path / "results"))
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "bench", "curation", str(pages), "--limit", "6",
                        "--rounds", "2", "--shards", "2", "--no-peer", "--scaling", "--name", "t-small"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "results" / "t-small.json").read_text())
    assert res["benchmark"] == "t-small" and res["pages"] == 6
    assert res["agreement"]["ours_pages_kept"] == 6 and set(res["sides"]) == {"ours"}
    scaling = res["ray_scaling"]
    assert scaling["shards"] == 2
    assert len(scaling["workers_1"]["rounds_s"]) == len(scaling["workers_2"]["rounds_s"]) == 2
    assert set(scaling["speedup_1_to_2"]) == {"best", "median"}
    assert "Ray extract stage, 2 shards, 2 alternating rounds" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "minisigma.cli", "bench", "curation", str(pages), "--name", "../x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --name: ../x:")
