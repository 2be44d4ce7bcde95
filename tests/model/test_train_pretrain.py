"""Pretraining `tiny` on real text: the validation loss falls, and kill-and-resume is exact."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minisigma.core.errors import UserError
from tests.train_corpus import tiny_tokens, write_recipe

STEPS = 24


def recipe_dict(tokens_dir, out_dir, **train):
    return dict(
        name="t", kind="pretrain", out_dir=str(out_dir),
        data={"tokens_dir": str(tokens_dir)},
        model={"preset": "tiny"},
        optim={"lr": 3e-3, "warmup_steps": 4, "schedule": "cosine"},
        train={"max_steps": STEPS, "micro_batch": 8, "seq_len": 64, "eval_every": 8, "eval_batches": 4,
               "ckpt_every": 8, "log_every": 4, "progress_bar": False, "threads": 1, **train},
    )


def lines(path):
    return [json.loads(x) for x in open(path) if x.strip()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_tokens(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One uninterrupted run of STEPS steps (accumulating 2 micro-batches per step)."""
    from model.train import TrainRecipe, run

    out = tmp_path_factory.mktemp("ref")
    summary = run(TrainRecipe(**recipe_dict(corpus / "tokens", out / "run", accumulate=2)))
    return out / "run", summary


def test_tiny_validation_loss_goes_down_and_exports(reference):
    from model.io import load_pretrained

    run_dir, summary = reference
    evals = lines(run_dir / "evals.jsonl")
    assert [e["step"] for e in evals] == [0, 8, 16, 24]
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    assert first > 5.5  # ~ln(384) at initialisation
    assert last < first - 1.0, evals  # learned a lot of the byte/BPE statistics of the docs
    assert summary["finished"] and summary["global_step"] == STEPS
    steps = lines(run_dir / "steps.jsonl")
    assert len(steps) == 2 * STEPS and {s["micro"] for s in steps} == {0, 1}
    assert steps[0]["lr"] < steps[10]["lr"]  # warmup
    assert steps[-1]["lr"] < steps[10]["lr"]  # cosine decay
    # exported, loadable, and it is the trained model (same val loss as logged)
    model, cfg, tok = load_pretrained(run_dir / "final")
    assert cfg.vocab_size == tok.get_vocab_size() == 384
    assert (run_dir / "logs" / "csv").is_dir() and any((run_dir / "logs" / "tb").rglob("events.*"))


def test_kill_and_resume_reproduces_the_uninterrupted_run(corpus, reference, tmp_path):
    from model.train import TrainRecipe, run

    ref_dir, _ = reference
    r = TrainRecipe(**recipe_dict(corpus / "tokens", tmp_path / "run", accumulate=2))
    first = run(r, stop_after=8)  # "killed" after step 8; the checkpoint of step 8 survives
    assert first["global_step"] == 8 and not first["finished"]
    assert not (tmp_path / "run" / "final").exists()
    with pytest.raises(UserError, match="already holds a run"):
        run(r)
    second = run(r, resume=True)
    assert second["finished"] and second["consumed_samples"] == STEPS * 2 * 8
    ref, res = lines(ref_dir / "steps.jsonl"), lines(tmp_path / "run" / "steps.jsonl")
    assert [s["batch"] for s in res] == [s["batch"] for s in ref]  # the very same batches, in order
    assert len({s["batch"] for s in ref}) == len(ref)
    for a, b in zip(ref, res):
        assert (a["step"], a["micro"]) == (b["step"], b["micro"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-5)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)
    ev_ref, ev_res = lines(ref_dir / "evals.jsonl"), lines(tmp_path / "run" / "evals.jsonl")
    assert [e["step"] for e in ev_res] == [e["step"] for e in ev_ref]
    for a, b in zip(ev_ref, ev_res):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)


def test_resume_refuses_other_data_and_missing_checkpoint(corpus, tmp_path):
    from model.train import TrainRecipe, latest_checkpoint, run

    with pytest.raises(UserError, match="no checkpoint"):
        run(TrainRecipe(**recipe_dict(corpus / "tokens", tmp_path / "none")), resume=True)
    r = recipe_dict(corpus / "tokens", tmp_path / "run", max_steps=4, ckpt_every=2, eval_at_start=False)
    run(TrainRecipe(**r), stop_after=2)
    # killed between the step checkpoint and last.ckpt: resumes from the step checkpoint
    (tmp_path / "run" / "ckpt" / "last.ckpt").unlink()
    assert latest_checkpoint(tmp_path / "run" / "ckpt").name == "step000002.ckpt"
    with pytest.raises(UserError, match="already holds a run"):
        run(TrainRecipe(**r))
    assert run(TrainRecipe(**r), resume=True)["global_step"] == 4
    r["train"]["seq_len"] = 32  # a different token stream: refuse rather than silently drift
    with pytest.raises(UserError, match="different token stream"):
        run(TrainRecipe(**r), resume=True)


def test_cli_rejects_bad_recipes_with_one_line(tmp_path):
    bad = write_recipe(tmp_path / "bad.yaml", name="x", out_dir=str(tmp_path / "o"), train={"max_stepz": 3})
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "train", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    # exactly one error line, naming the file and the key (a library may add its own warnings to
    # stderr, e.g. at interpreter exit; they are not ours to count, the error line is)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {bad}: train.max_stepz: unknown key"], p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "train", str(tmp_path / "nope.yaml")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "recipe file not found" in p.stderr


def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch):
    import torch

    from model import train

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU's precision here")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.resolve_precision("auto") == "32-true"
    assert train.resolve_precision("32-true") == "32-true"


def test_an_isa_cap_below_bf16_turns_native_bf16_off(monkeypatch):
    from model import train

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # run as a CPU without AVX-512 would
    assert train.cpu_has_native_bf16() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert train.cpu_has_native_bf16() is False
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    assert train.cpu_has_native_bf16() is bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def test_bench_train_compares_any_two_presets_and_names_its_result(tmp_path, monkeypatch):
    """`minisigma bench train --models small,small-gqa --name N`: both presets timed, the result in N.json;
    `--neighbour` times them beside a busy process, records that and the OpenMP settings, and stops it."""
    from benchmarks.bench_train import NEIGHBOUR

    monkeypatch.setenv("MINISIGMA_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "bench", "train", "--models", "tiny,mha", "--steps", "1",
                        "--rounds", "1", "--batch", "1", "--seq-len", "16", "--name", "t-tiny", "--neighbour"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "t-tiny.json").read_text())
    assert res["models"] == ["tiny", "mha"] and res["precisions"]["float32"]["mha"]["params"] > 0 and res["precisions"]["float32"]["tiny"]["tok_s_median"] > 0
    assert res["neighbour"] is True and res["openmp"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "beside one busy process" in p.stdout
    left = [c for c in Path("/proc").glob("[0-9]*/cmdline") if NEIGHBOUR.encode() in _read(c)]
    assert not left, "the busy neighbour outlived the bench"
    bad = subprocess.run([sys.executable, "-m", "minisigma.cli", "bench", "train", "--models", "small,nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --models: small,nope:")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended while we looked
        return b""


@pytest.mark.gpu
def test_gpu_bf16_run_reports_mfu(corpus, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    from model.train import TrainRecipe, resolve_precision, run

    assert resolve_precision("auto") in ("bf16-mixed", "16-mixed")
    s = run(TrainRecipe(**recipe_dict(corpus / "tokens", tmp_path / "gpu", max_steps=12, log_every=1)))
    assert s["finished"]
    evals = lines(tmp_path / "gpu" / "evals.jsonl")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    csv = next((tmp_path / "gpu" / "logs" / "csv").rglob("metrics.csv")).read_text()
    assert "mfu" in csv.splitlines()[0] and "tok_s" in csv.splitlines()[0]
