"""`minisigma report RUN_DIR`: every section renders from its inputs, says "not run" without them,
survives malformed ones, and the page renders in headless Chromium with every plot loaded."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minisigma import report
from minisigma.core.manifest import build_manifest, write_manifest
from minisigma.core.shards import ShardWriter, shard_name

CATS = ["os", "networking", "storage", "gpu"]


def make_stage(run: Path, name: str, docs: list[dict], counts: dict, started: float) -> None:
    d = run / name
    with ShardWriter(d / shard_name(0)) as w:
        for doc in docs:
            w.write(doc)
    parts = [{"counts": counts, "outputs": [{"path": str(d / shard_name(0)), "documents": len(docs)}]}]
    m = build_manifest(stage=name, recipe={}, inputs=[], parts=parts, started=time.time() - 30 + started)
    m["started_at"] = f"2025-01-01T00:00:{int(started):02d}Z"  # pipeline order
    write_manifest(d, m)


def make_run(run: Path) -> Path:
    """A run directory with every kind of input the report reads, written by the project's own
    writers (manifests, shards, Lightning's CSVLogger, the evaluators)."""
    import random

    rng = random.Random(0)
    docs = []
    for i in range(300):
        cat = CATS[i % 4]
        docs.append({"id": f"d{i}", "text": f"{cat} documentation " * rng.randint(5, 60),
                     "source": ["manpages", "localdocs", "blogs"][i % 3],
                     "metadata": {"category": cat, "scores": {"quality": rng.betavariate(5, 2),
                                                               "domain": rng.random()}}})
    make_stage(run, "extract", docs, {"in": 400, "out": 300, "dropped": {"extract_failed": 60},
                                      "quarantined": {"timeout": 40}, "tokens_in": 30000, "tokens_out": 24000}, 1)
    make_stage(run, "filter", docs[:220], {"in": 300, "out": 220, "dropped": {"too_short": 50, "repetition": 30},
                                           "quarantined": {}, "tokens_in": 24000, "tokens_out": 20000}, 2)
    make_stage(run, "dedup", docs[:200], {"in": 220, "out": 200, "dropped": {"near_duplicate": 20},
                                          "quarantined": {}, "tokens_in": 20000, "tokens_out": 18500}, 3)
    from lightning.pytorch.loggers import CSVLogger

    log = CSVLogger(run / "train" / "pretrain" / "logs", name="csv")
    for step in range(0, 200, 10):
        log.log_metrics({"train_loss": 6.0 * math.exp(-step / 80) + 1.5}, step=step)
        if step % 50 == 0:
            log.log_metrics({"val_loss": 6.2 * math.exp(-step / 80) + 1.7}, step=step)
    log.save()
    # evaluation results, as `minisigma eval` writes them
    for name, acc in (("mini-sigma", (1, 1, 0, 1)), ("no-system", (0, 1, 0, 0))):
        d = run / "eval" / name / "cmdgen"
        d.mkdir(parents=True)
        rows = []
        for i, (tool, ok) in enumerate(zip(["tar", "ls", "grep", "nvidia-smi"], acc)):
            rows.append({"id": str(i), "tool": tool, "task": f"do {tool}", "reference": f"{tool} -x",
                         "generated": f"{tool} -x" if ok else "echo", "generated_status": "ok",
                         "cmd_score": 1.0 if ok else 0.3, "output_score": None, "calibration": bool(ok),
                         "exact_match": bool(ok), "success": False, "accuracy": bool(ok)})
            if tool == "nvidia-smi":  # the GPU-tooling suite: scored textually
                rows[-1].update(suite="gpu", executable=False, dropped_reason="no_execute")
        from model.evaluation.metrics import summarize

        s = summarize(rows)
        s["benchmark"] = "cmdgen-mini"
        (d / "summary.json").write_text(json.dumps(s))
        (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        ppl = {"overall": {"docs": 9, "tokens": 900, "bytes": 3000, "loss": 2.0, "ppl": 7.39, "bpb": 0.87},
               "per_source": {s_: {"docs": 3, "tokens": 300, "bytes": 1000, "loss": 2.0 + j / 5, "ppl": 7.0,
                                   "bpb": 0.8 + j / 10 + (0.2 if name == "no-system" else 0)}
                              for j, s_ in enumerate(["manpages", "localdocs", "blogs"])},
               "per_category": {}}
        (run / "eval" / name / "perplexity.json").write_text(json.dumps(ppl))
    # model/evaluation/induction.py's induction.json, from a real probe of a real (untrained) model
    import torch

    from model.evaluation.induction import InductionSection, probe
    from model.gpt import GPT, ModelConfig as _Cfg

    torch.manual_seed(0)
    probed = probe(GPT(_Cfg.preset("tiny", vocab_size=300)).eval(), 300, InductionSection(tokens=20, sequences=2))
    (run / "eval" / "mini-sigma-pretrain").mkdir(parents=True, exist_ok=True)
    (run / "eval" / "mini-sigma-pretrain" / "induction.json").write_text(json.dumps(probed))
    # `minisigma bench attention`'s results.json schema; KV bytes from the model's own accounting
    from model.gpt import ModelConfig

    cfgs = {"gqa": ModelConfig(n_embd=1024, n_q=16, n_k=16, n_v=16, d_qk=64, d_v=64),
            "diffqkv": ModelConfig(n_embd=1024, n_q=16, n_k=4, n_v=16, d_qk=64, d_v=64)}
    decode = [{"batch": 1, "context": ctx, "layer_ms": {"gqa": ctx / 1000, "diffqkv": ctx / 1250},
               "kernel_ms": {"gqa": ctx / 2000, "diffqkv": ctx / 2600}} for ctx in (1024, 4096, 16384, 32768)]
    (run / "bench" / "attention").mkdir(parents=True)
    (run / "bench" / "attention" / "results.json").write_text(json.dumps(
        {"kv_bytes_per_token_bf16": {k: c.kv_bytes_per_token(2) for k, c in cfgs.items()}, "decode": decode}))
    (run / "ablations").mkdir()
    (run / "ablations" / "ablation_table.json").write_text(json.dumps({"rows": [
        {"variant": "mha", "mean": 3.91, "std": 0.02, "n": 3, "metric": "val loss"},
        {"variant": "k_heads_half", "mean": 3.92, "std": 0.01, "n": 3, "metric": "val loss"},
        {"variant": "v_heads_half", "mean": 3.95, "std": 0.02, "n": 3, "metric": "val loss"},
        {"variant": "diffqkv_mini", "mean": 3.90, "std": 0.03, "n": 3, "metric": "val loss"}]}))
    # synth's screened pairs (a real runner stage), reproduce's stage times and answers
    from minisigma.core.runner import Stage, Task, run_stage

    class Pairs(Stage):
        name = "pairs"

        def tasks(self, inputs):
            return [Task(0, ())]

        def process(self, task, sink):
            for i in range(40):
                sink.take()
                rec = {"id": f"p{i}", "task": f"List the files of directory d{i}", "command": f"ls -l d{i}",
                       "tool": ["ls", "tar", "grep"][i % 3], "source": "synthetic", "text": f"ls d{i}",
                       "metadata": {"rule": "example", "package": "coreutils"}}
                sink.drop(rec, "near_duplicate") if i % 10 == 9 else sink.write(rec)

    run_stage(Pairs(), [], run / "synth" / "pairs", executor="local", progress=False)

    class Rewrites(Stage):  # synth's model rewrites: 3 requests, 1 kept, 2 dropped by the screen
        name = "synth.rewrites"

        def tasks(self, inputs):
            return [Task(0, ())]

        def process(self, task, sink):
            for i, reason in enumerate([None, "repetition_loop", "invented_option"]):
                sink.take()
                rec = {"id": f"r{i}", "text": f"rewrite {i} of ls", "source": "synthetic",
                       "metadata": {"template": "tutorial", "title": "ls(1)"}}
                sink.drop(rec, reason) if reason else sink.write(rec)

    run_stage(Rewrites(), [], run / "synth" / "rewrites", executor="local", progress=False,
              extra={"backend": {"kind": "local", "model": "SmolLM2-135M-Instruct.Q4_1", "runtime": "transformers",
                                 "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}})
    (run / "reproduce.json").write_text(json.dumps({"recipe": "mini", "cpus": 2, "stages": {
        "curate": {"status": "done", "seconds": 420.5}, "pretrain:mini-sigma": {"status": "done", "seconds": 611.0}}}))
    res = {"params": 100, "kv_bytes_per_token_bf16": 240, "flops_per_token": 1}
    (run / "eval" / "answers.json").write_text(json.dumps({"questions": [{
        "title": "Does system-domain pre-training help?", "paper": "50.7 -> 57.1", "sigma": "mini-sigma",
        "baseline": "no-system", "kv_cache_reduction": 0.0, "bpb_delta": -0.25, "accuracy_delta": 0.125,
        "sigma_results": {**res, "val_bpb": 1.5, "cmdgen_accuracy": 0.25, "cmdgen_cmd_score": 0.6},
        "baseline_results": {**res, "val_bpb": 1.75, "cmdgen_accuracy": 0.125, "cmdgen_cmd_score": 0.5}}]}))
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("run") / "demo")
    return run, report.build(run)


def sections(html_text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', html_text, flags=re.S))


def test_every_section_renders_from_its_inputs(full_run):
    run, path = full_run
    text = path.read_text()
    secs = sections(text)
    assert list(secs) == [s for s, _, _ in report.SECTIONS]
    for sid, body in secs.items():
        assert "not run" not in body and 'class="error"' not in body, (sid, body[:300])
    for sid in ("funnel", "mix", "quality", "loss", "cmdgen", "perplexity", "attention"):
        assert "data:image/png;base64," in secs[sid], sid
    # figures from the inputs appear in the tables
    assert "near_duplicate=20" in secs["funnel"] and "extract_failed=60" in secs["funnel"]
    assert "200 documents of stage" in secs["mix"]
    assert "scores of stage <code>dedup</code>" in secs["quality"]
    assert "<td class=\"l\">eval/mini-sigma</td>" in secs["cmdgen"] and "0.750" in secs["cmdgen"]
    assert "per suite" in secs["cmdgen"] and "3/4" in secs["cmdgen"] and "no_execute 1" in secs["cmdgen"]
    assert "52.83" in secs["ablation"] and "3.9200 ± 0.0100 (n=3)" in secs["ablation"]
    assert "diffqkv_mini" in secs["ablation"]
    assert "36 screened command pairs over 3 tools from 40 mined (dropped: near_duplicate 4)" in secs["synth"]
    assert "<code>ls -l d0</code>" in secs["synth"]
    assert "1 of 3 rewrites kept (33%)" in secs["rewrites"] and "b179c9523d0e6a0f" in secs["rewrites"]
    assert "repetition_loop" in secs["rewrites"] and "135M-parameter model" in secs["rewrites"]
    assert "<td class=\"l\">eval/mini-sigma-pretrain</td>" in secs["induction"] and "first copy" in secs["induction"]
    assert "1,031.500" in secs["stages"] and "pretrain:mini-sigma" in secs["stages"]
    assert "CMDGen-mini accuracy +0.125" in secs["questions"] and "-0.2500 (better)" in secs["questions"]
    # KV bytes at 32k context: 16 K + 16 V heads x 64 x 2 bytes x 2 layers (gqa) vs 4 K + 16 V
    assert f"{(16 + 16) * 64 * 2 * 2 * 32768:,}" in secs["attention"]
    assert f"{(4 + 16) * 64 * 2 * 2 * 32768:,}" in secs["attention"]


def test_missing_inputs_say_not_run(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    secs = sections(report.build(empty).read_text())
    for sid, body in secs.items():
        assert "not run" in body, sid
    assert "52.40" in secs["ablation"]  # the paper's numbers are shown even without a run's


def test_malformed_inputs_spoil_only_their_section(tmp_path):
    run = make_run(tmp_path / "bad")
    (run / "bench" / "attention" / "results.json").unlink()
    (run / "bench" / "attention.json").write_text(json.dumps({"rows": [{"foo": 1}]}))
    (run / "train" / "pretrain" / "logs" / "csv" / "version_0" / "metrics.csv").write_text("step,train_loss\nx,y\n")
    (run / "eval" / "mini-sigma" / "perplexity.json").write_text("{not json")
    secs = sections(report.build(run).read_text())
    assert 'class="error"' in secs["attention"]
    assert "not run" in secs["loss"]  # no parsable loss values
    assert "no-system" in secs["perplexity"] and "mini-sigma" not in secs["perplexity"]
    assert "data:image/png" in secs["funnel"] and "data:image/png" in secs["cmdgen"]


def test_cli_report(tmp_path, full_run):
    run, _ = full_run
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "report", str(run),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and r.stdout.strip() == str(out)
    r = subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "report",
                        str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run directory"


# ----------------------------------------------------------------------------- headless Chromium
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(args: list[str], user_dir: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={user_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(html: Path, png: Path, user_dir: Path, width: int = 1200, height: int = 2400):
    r = chromium([f"--window-size={width},{height}", f"--screenshot={png}", "--virtual-time-budget=5000",
                  html.as_uri()], user_dir)
    assert png.is_file(), r.stderr[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/system-deps.sh installs it)")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    import numpy as np
    from PIL import Image

    _, page = full_run
    n_plots = page.read_text().count('<img class="plot"')
    assert n_plots >= 7
    # 1. after load, every plot image has decoded (the page's own script counts them)
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path / "ud1")
    assert f'data-images="{n_plots}/{n_plots}"' in dom.stdout, dom.stderr[-2000:]
    # 2. the screenshot shows the plots: matplotlib's first two series colours cover real areas
    shot = tmp_path / "shot.png"
    screenshot(page, shot, tmp_path / "ud2")
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[0] >= 2000 and img.shape[1] >= 1000

    def share(rgb):
        return float((np.abs(img - np.array(rgb)).sum(-1) < 40).mean())

    assert share((31, 119, 180)) > 0.003, "no blue plot area (matplotlib C0) in the screenshot"
    assert share((255, 127, 14)) > 0.002, "no orange plot area (matplotlib C1) in the screenshot"
    assert share((255, 255, 255)) < 0.97, "the page is blank"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_blank_page_fails_the_plot_check(tmp_path):
    """The check above can fail: a page whose image is broken reports 0 loaded plots."""
    page = tmp_path / "broken.html"
    page.write_text(report.render(tmp_path).replace("</body>", '<img class="plot" src="data:image/png;base64,AAAA"></body>'))
    dom = chromium(["--virtual-time-budget=3000", "--dump-dom", page.as_uri()], tmp_path / "ud")
    assert 'data-images="0/1"' in dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_screenshot_helper_writes_a_small_png(full_run, tmp_path):
    from PIL import Image

    _, page = full_run
    out = report.screenshot(page, tmp_path / "r.png", height=1600, out_width=600)
    img = Image.open(out)
    assert img.size == (600, 800) and out.stat().st_size < 200_000
    assert len(img.convert("RGB").getcolors(1 << 16)) > 8  # not a blank page
