"""`minisigma reproduce`: recipe resolution (fast) and the tiny reproduction end to end (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minisigma.core import manifest
from minisigma.core.errors import UserError
from minisigma.core.recipes import load_recipe
from minisigma.core.shards import read_docs
from minisigma.reproduce import ReproduceRecipe, _reroot, deep_merge, rerooted_copy, resolve_recipe_path
from tests.app.test_movable_run import machine_paths


def test_shipped_reproduce_recipes_validate():
    for name in ["tiny", "mini"]:
        r = load_recipe(resolve_recipe_path(name), ReproduceRecipe)
        assert r.models and r.runs_prefix.startswith("runs/")


def test_unknown_recipe_is_one_line():
    with pytest.raises(UserError, match="unknown reproduce recipe 'nope'.*tiny"):
        resolve_recipe_path("nope")


def test_reroot_and_overrides(tmp_path):
    data = {"out_dir": "runs/mini/pretrain", "data": {"tokens_dir": "runs/mini/tokens"},
            "pairs": ["runs/mini/synth", "elsewhere/x"], "name": "runs/minimal"}
    r = _reroot(data, "runs/mini", "/o")
    assert r == {"out_dir": "/o/pretrain", "data": {"tokens_dir": "/o/tokens"}, "pairs": ["/o/synth", "elsewhere/x"],
                 "name": "runs/minimal"}
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}) == {"a": {"b": 1, "c": 3}, "d": 4}
    p = rerooted_copy(Path("recipes/train/tiny.yaml"), "runs/tiny", tmp_path, "x", {"train": {"max_steps": 7}})
    text = p.read_text()
    assert f"{tmp_path}/pretrain" in text and "max_steps: 7" in text


def test_seed_reaches_every_training_run_and_a_run_keeps_its_seed(tmp_path):
    from minisigma.reproduce import Progress, seeded

    r = load_recipe(resolve_recipe_path("mini"), ReproduceRecipe)
    s = seeded(r, 3)
    for m in s.models:
        assert m.pretrain_overrides["train"]["seed"] == 3
        assert m.pretrain_overrides["train"]["max_steps"] == 1400  # the recipe's own overrides kept
        if m.sft is not None:
            assert m.sft_overrides["train"]["seed"] == 3
    assert "seed" not in r.models[0].pretrain_overrides["train"]  # the loaded recipe is untouched
    m = s.models[0]
    text = rerooted_copy(m.pretrain, s.runs_prefix, tmp_path, "p", m.pretrain_overrides).read_text()
    assert "seed: 3" in text
    state = Progress(tmp_path, s, Path("x"), 3)
    state.record("pretrain:mini-sigma", "done", 1.0)
    Progress(tmp_path, s, Path("x"), 3)  # the same seed resumes
    with pytest.raises(UserError, match="was run with --seed 3, not None"):
        Progress(tmp_path, r, Path("x"), None)


def test_data_stages_run_before_training_and_any_seed_continues_them(tmp_path):
    from minisigma.reproduce import Progress, _stages, seeded, seeded_stage

    r = load_recipe(resolve_recipe_path("mini"), ReproduceRecipe)
    names = [n for n, _ in _stages(r, tmp_path, None, False)]
    first = min(i for i, n in enumerate(names) if seeded_stage(n))
    assert names[first].startswith("pretrain:")
    assert [n for n in names[first:] if not seeded_stage(n)] == ["attention"]  # no data stage after training
    assert {"curate", "synth", "decontaminate", "tokenize", "tokenize:no-system"} <= set(names[:first])
    state = Progress(tmp_path, r, Path("x"), None)
    state.record("tokenize", "done", 1.0)
    Progress(tmp_path, seeded(r, 3), Path("x"), 3)  # data only: any seed goes on from it
    state = Progress(tmp_path, seeded(r, 3), Path("x"), 3)
    state.record("pretrain:mini-sigma", "interrupted", 1.0)
    with pytest.raises(UserError, match="was run with --seed 3, not 4"):
        Progress(tmp_path, seeded(r, 4), Path("x"), 4)


def test_seed_runs_share_one_data_only_run(tmp_path, monkeypatch):
    """`--data-only` stops before training; `--data-from` starts each seed's run as a copy of it, which
    trains and evaluates without curating again, resumes with the same command, and refuses bad sources."""
    from minisigma import reproduce as rp
    from minisigma import report

    calls = []

    def fake_stages(r, out, ray_address, progress):
        def stage(name):
            def run():
                calls.append((out.name, name))
                (out / f"{name.replace(':', '-')}.txt").write_text(str(r.models[0].pretrain_overrides))
            return run
        return [(n, stage(n)) for n in ("curate", "tokenize", "pretrain:m", "attention", "eval")]

    monkeypatch.setattr(rp, "_stages", fake_stages)
    monkeypatch.setattr(rp, "summary", lambda *a: None)
    monkeypatch.setattr(report, "build", lambda out: out / "report" / "index.html")
    data = tmp_path / "data"
    assert rp.reproduce("tiny", data, progress=False, data_only=True) is None
    assert calls == [("data", "curate"), ("data", "tokenize")]
    assert set(json.loads((data / "reproduce.json").read_text())["stages"]) == {"curate", "tokenize"}

    for seed in (1, 2):
        rp.reproduce("tiny", tmp_path / f"s{seed}", progress=False, seed=seed, data_from=data)
        assert calls[-3:] == [(f"s{seed}", "pretrain:m"), (f"s{seed}", "attention"), (f"s{seed}", "eval")]
        run = tmp_path / f"s{seed}"
        assert (run / "curate.txt").is_file() and f"'seed': {seed}" in (run / "pretrain-m.txt").read_text()
        state = json.loads((run / "reproduce.json").read_text())
        assert state["seed"] == seed and all(s["status"] == "done" for s in state["stages"].values())
    assert not (data / "pretrain-m.txt").exists()  # the shared data run is left as it was
    n = len(calls)
    rp.reproduce("tiny", tmp_path / "s1", progress=False, seed=1, data_from=data)  # the same command resumes
    assert len(calls) == n
    with pytest.raises(UserError, match="holds trained stages"):
        rp.reproduce("tiny", tmp_path / "s3", progress=False, seed=3, data_from=tmp_path / "s1")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(UserError, match="busy: --data-from starts a new run, but this directory is not empty"):
        rp.reproduce("tiny", tmp_path / "busy", progress=False, seed=3, data_from=data)
    with pytest.raises(UserError, match="of recipe 'tiny', not 'mini'"):
        rp.reproduce("mini", tmp_path / "s4", progress=False, seed=4, data_from=data)
    with pytest.raises(UserError, match="nowhere: --data-from needs a run made with"):
        rp.reproduce("tiny", tmp_path / "s5", progress=False, seed=5, data_from=tmp_path / "nowhere")
    assert not (tmp_path / "s3").exists() and not (tmp_path / "s5").exists()


def test_a_training_stage_killed_before_its_first_checkpoint_starts_afresh(tmp_path):
    from minisigma.reproduce import resumable

    run_dir = tmp_path / "pretrain"
    assert not resumable(run_dir)
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "steps.jsonl").write_text('{"step": 0}\n')
    assert not resumable(run_dir) and not run_dir.exists()  # only logs: cleared
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "ckpt" / "step000040.ckpt").write_bytes(b"x")
    assert resumable(run_dir) and run_dir.exists()


def _reproduce(out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "minisigma.cli", "reproduce", "--recipe", "tiny", "--out", str(out),
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _results(out: Path) -> dict:
    ev = json.loads((out / "eval" / "eval.json").read_text())
    return {name: {"bpb": m["perplexity"]["bpb"], "acc": m["cmdgen"]["accuracy"]} for name, m in ev["models"].items()}


@pytest.mark.slow
def test_tiny_reproduction_end_to_end_and_kill_resume(tmp_path):
    a = tmp_path / "a"
    p = _reproduce(a)
    log, _ = p.communicate(timeout=1800)
    assert p.returncode == 0, log[-3000:]
    state = json.loads((a / "reproduce.json").read_text())
    assert all(s["status"] == "done" for s in state["stages"].values())
    assert (a / "report" / "index.html").is_file()
    assert manifest.verify(a) == []
    assert "Report:" in log
    assert machine_paths(a, tmp_path) == {}  # every record relative to the run or the checkout: it can move

    # The same reproduction killed (SIGKILL, whole process group) in the middle of four different
    # stages in turn, re-run after each kill; the last run finishes it.
    b = tmp_path / "b"
    kills = [
        ("curate", lambda: (b / "crawl" / "manifest.json").is_file()),   # extract/refine under way
        ("pretrain:tiny-sigma", lambda: any((b / "pretrain" / "ckpt").glob("*.ckpt"))),
        ("sft:tiny-sigma", lambda: any((b / "sft" / "ckpt").glob("*.ckpt"))),
        ("eval", lambda: any((b / "eval").glob("*/perplexity.json"))),  # CMDGen-mini under way
    ]
    for stage, ready in kills:
        p = _reproduce(b, start_new_session=True)
        deadline = time.time() + 1500
        while time.time() < deadline and p.poll() is None and not ready():
            time.sleep(0.2)
        if p.poll() is not None:  # it ended on its own: show why
            pytest.fail(f"the run ended (exit {p.returncode}) before {stage} was caught:\n{p.stdout.read()[-3000:]}")
        assert ready(), f"never caught the run inside {stage}"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        done = json.loads((b / "reproduce.json").read_text())["stages"] if (b / "reproduce.json").exists() else {}
        assert done.get(stage, {}).get("status") != "done", f"{stage} had finished before the kill"
    p = _reproduce(b)
    log, _ = p.communicate(timeout=1800)
    assert p.returncode == 0, log[-3000:]
    # the data every model was trained on is the same, shard by shard and in order (checked first: a
    # difference here explains one in the results below); only the crawl's provenance (when each page
    # was fetched, from which loopback port, its WARC record's UUID) is per run
    def records(path: Path) -> list[dict]:
        out = list(read_docs(path))
        for r in out:
            for key in ("fetched_at", "served_url", "warc_record_id"):
                (r.get("metadata") or {}).pop(key, None)
        return out

    for d in ("curated", "synth/pairs", "synth/qa", "synth/cmdgen", "train_corpus"):
        sa = {f.relative_to(a): records(f) for f in sorted((a / d).glob("*.jsonl*"))}
        sb = {f.relative_to(b): records(f) for f in sorted((b / d).glob("*.jsonl*"))}
        assert sa and sa.keys() == sb.keys(), d
        for f in sa:
            assert sa[f] == sb[f], f
    # and so are the results
    ra, rb = _results(a), _results(b)
    assert ra.keys() == rb.keys()
    for name in ra:
        assert rb[name]["acc"] == ra[name]["acc"]
        assert abs(rb[name]["bpb"] - ra[name]["bpb"]) < 1e-3, (name, ra[name], rb[name])
    assert manifest.verify(b) == []


def test_eval_overrides_and_answers(tmp_path):
    """The eval stage gets the recipe's overrides, and the questions are answered from its summary."""
    from minisigma.reproduce import Question, answer
    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained

    r = load_recipe(resolve_recipe_path("mini"), ReproduceRecipe)
    p = rerooted_copy(r.eval, r.runs_prefix, tmp_path, "eval", r.eval_overrides)
    text = p.read_text()
    assert f"gqa-pretrain: {tmp_path}/pretrain-gqa/final" in text and f"{tmp_path}/train_corpus" in text
    ckpts = {}
    for name, preset in [("s", "tiny"), ("g", "tiny")]:
        cfg = ModelConfig.preset(preset, **({"n_k": 4, "d_aug": 0} if name == "g" else {}))
        save_pretrained(GPT(cfg), tmp_path / name)
        ckpts[name] = str(tmp_path / name)
    summary = {"models": {"s": {"checkpoint": ckpts["s"], "perplexity": {"bpb": 1.5}, "cmdgen": {"accuracy": 0.5}},
                          "g": {"checkpoint": ckpts["g"], "perplexity": {"bpb": 1.75}, "cmdgen": {"accuracy": 0.25}}},
               "recipe": {"out": str(tmp_path / "eval")}}
    (q,) = answer([Question(title="t", sigma="s", baseline="g")], summary)["questions"]
    assert q["bpb_delta"] == -0.25 and q["accuracy_delta"] == 0.25
    assert "accuracy_paired" not in q  # no per-task results to pair
    for name, flags in (("s", [1, 1, 0, 0]), ("g", [1, 0, 0, 0])):
        res = tmp_path / "eval" / name / "cmdgen" / "results.jsonl"
        res.parent.mkdir(parents=True)
        res.write_text("".join(json.dumps({"id": f"t{i}", "accuracy": bool(f)}) + "\n" for i, f in enumerate(flags)))
    (q,) = answer([Question(title="t", sigma="s", baseline="g")], summary)["questions"]
    assert q["accuracy_paired"] == {"tasks": 4, "both": 1, "sigma_only": 1, "baseline_only": 0, "mcnemar_p": 1.0}
    # bits/byte from other checkpoints (the pretrained models before SFT), accuracy still from s and g
    summary["models"]["s-pre"] = {"checkpoint": ckpts["s"], "perplexity": {"bpb": 1.0}}
    summary["models"]["g-pre"] = {"checkpoint": ckpts["g"], "perplexity": {"bpb": 1.5}}
    (q,) = answer([Question(title="t", sigma="s", baseline="g", perplexity=("s-pre", "g-pre"))], summary)["questions"]
    assert q["bpb_delta"] == -0.5 and q["accuracy_delta"] == 0.25 and q["perplexity_models"] == ["s-pre", "g-pre"]
    with pytest.raises(UserError, match="no evaluated model named nope"):
        answer([Question(title="t", sigma="s", baseline="g", perplexity=("s-pre", "nope"))], summary)
    assert q["kv_cache_reduction"] == round(1 - (1 + 4) / (4 + 4), 4)
    with pytest.raises(UserError, match="no evaluated model named x"):
        answer([Question(title="t", sigma="x", baseline="g")], summary)
