"""The ablation runner: equal budgets, several seeds, a table with mean and spread, a plot, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minisigma.core.errors import UserError
from tests.train_corpus import tiny_tokens, write_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_every_shipped_ablation_recipe_validates():
    from model.ablations import load_ablation, variant_recipe

    recipes = sorted((ROOT / "recipes" / "ablations").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"kv-heads", "half-k", "augq", "gqa-vs-diffqkv", "data-curation"}
    for p in recipes:
        ab = load_ablation(p)
        for v in ab.variants:  # every variant is a buildable model config
            from model.gpt import ModelConfig

            r = variant_recipe(ab, v, 0, ab.budget.max_steps, Path("/nonexistent"))
            ModelConfig.preset(r.model.preset, **r.model.overrides)
            assert r.train.max_steps == ab.budget.max_steps  # equal budgets


def test_ablation_runs_table_plot_and_resumes(tmp_path_factory, tmp_path):
    from model.ablations import load_ablation, run

    corpus = tiny_tokens(tmp_path_factory)
    write_recipe(tmp_path / "base.yaml", name="b", out_dir=str(tmp_path / "unused"),  # found next to ab.yaml
                 data={"tokens_dir": str(corpus / "tokens")}, model={"preset": "tiny"},
                 optim={"lr": 3e-3, "warmup_steps": 1},
                 train={"micro_batch": 4, "seq_len": 32, "eval_batches": 2, "threads": 1})
    rec = write_recipe(tmp_path / "ab.yaml", name="mini-ablation", base="base.yaml", out_dir=str(tmp_path / "out"),
                       model={"n_layer": 1}, budget={"max_steps": 40, "seeds": [0, 1]},
                       quick={"max_steps": 3, "seeds": [0, 1]}, eval={"batches": 3},
                       variants=[{"name": "GQA K4/V4", "overrides": {"n_k": 4, "n_v": 4, "d_aug": 0}, "paper": 52.14,
                                  "key": "gqa16"},
                                 {"name": "K1/V4", "overrides": {"n_k": 1, "n_v": 4, "d_aug": 0}}])
    ab = load_ablation(rec)
    res = run(ab, quick=True, tokens_dir=corpus / "tokens", log=lambda *_: None)  # a Path, as from the CLI
    out = Path(res["out_dir"])
    assert out == tmp_path / "out" / "quick"
    results = json.loads((out / "results.json").read_text())["results"]
    assert len(results) == 4 and {r["steps"] for r in results} == {3}
    assert len({r["tokens"] for r in results}) == 1  # equal budgets
    t = {r["variant"]: r for r in res["table"]}
    assert t["GQA K4/V4"]["n"] == 2 and t["K1/V4"]["kv"] < t["GQA K4/V4"]["kv"]
    assert t["K1/V4"]["params"] < t["GQA K4/V4"]["params"]
    # different seeds are different runs
    losses = [r["eval_loss"] for r in results if r["variant"] == "K1/V4"]
    assert losses[0] != losses[1] and t["K1/V4"]["std"] > 0
    md = (out / "table.md").read_text()
    assert "| GQA K4/V4 |" in md and "52.14" in md and "±" in md
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}  # for `minisigma report`
    assert rep["gqa16"]["mean"] == t["GQA K4/V4"]["mean"] and rep["K1/V4"]["n"] == 2
    # a rerun skips finished runs and gives the same table
    again = run(ab, quick=True, log=lambda *_: pytest.fail("should not retrain"))
    assert again["table"] == res["table"]


def test_ablation_refuses_mixed_tokenizers(tmp_path_factory, tmp_path):
    from model.ablations import load_ablation, run

    a = tiny_tokens(tmp_path_factory)
    b = tiny_tokens(tmp_path_factory, vocab_size=300)
    base = write_recipe(tmp_path / "base.yaml", name="b", out_dir=str(tmp_path / "x"),
                        data={"tokens_dir": str(a / "tokens")}, model={"preset": "tiny"})
    rec = write_recipe(tmp_path / "ab.yaml", name="d", base=str(base), out_dir=str(tmp_path / "out"),
                       budget={"max_steps": 2, "seeds": [0]},
                       variants=[{"name": "a"}, {"name": "b", "tokens_dir": str(b / "tokens")}])
    with pytest.raises(UserError, match="share one tokenizer"):
        run(load_ablation(rec))


def test_ablate_store_keeps_the_table_as_a_benchmark_result(tmp_path_factory, tmp_path):
    """`minisigma ablate RECIPE --store NAME`: the table and every run's score in benchmarks/results/NAME.json
    (here MINISIGMA_BENCH_RESULTS), with the command line and the machine, so a README figure has its file."""
    import os
    import subprocess
    import sys

    corpus = tiny_tokens(tmp_path_factory)
    write_recipe(tmp_path / "base.yaml", name="b", out_dir=str(tmp_path / "unused"),
                 data={"tokens_dir": str(corpus / "tokens")}, model={"preset": "tiny"},
                 optim={"lr": 3e-3, "warmup_steps": 1},
                 train={"micro_batch": 4, "seq_len": 32, "eval_batches": 2, "threads": 1})
    rec = write_recipe(tmp_path / "ab.yaml", name="stored", base="base.yaml", out_dir=str(tmp_path / "out"),
                       model={"n_layer": 1}, budget={"max_steps": 2, "seeds": [0]}, eval={"batches": 2},
                       variants=[{"name": "GQA K4/V4", "overrides": {"n_k": 4, "n_v": 4, "d_aug": 0}},
                                 {"name": "K1/V4", "overrides": {"n_k": 1, "n_v": 4, "d_aug": 0}}])
    env = {**os.environ, "MINISIGMA_BENCH_RESULTS": str(tmp_path / "results")}
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "ablate", str(rec), "--store", "ablation-test"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    stored = json.loads((tmp_path / "results" / "ablation-test.json").read_text())
    assert stored["quick"] is False and [r["variant"] for r in stored["table"]] == ["GQA K4/V4", "K1/V4"]
    assert len(stored["runs"]) == 2 and "--store ablation-test" in stored["command"] and stored["machine"]["cpu"]
    bad = subprocess.run([sys.executable, "-m", "minisigma.cli", "ablate", str(rec), "--store", "../x"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --store: ../x:")
