"""The prepared GPU check (scripts/gpu-check.sh): one run that fits in 8 minutes on one H200 and writes
everything under one folder (default benchmarks/results/gpu/):

1. tests    the `gpu`-marked tests (pytest -m gpu over the test files that carry the mark)
2. attention `minisigma bench attention` at 16k-64k context, bf16, with FlexHeadFA where pip installs it
3. pretrain  mini-Sigma (`small` preset, DiffQKV 8/1/4 + AugQ, as the CPU reproduction) vs its same-size
             GQA baseline (`small-gqa`), each at 100x the CPU reproduction's pretraining budget
             (2.87M tokens, recipes/reproduce/mini.yaml), same data and schedule; loss curves
             (curves.json, loss_curves.png) from each run's steps.jsonl / evals.jsonl

Every phase runs as a subprocess under its own time limit, so a phase that overruns is cut, recorded
as such, and the next still runs; summary.json says what each phase did. The token corpus is
runs/mini/tokens when present, else one made on the spot from the real text every machine has (the
Python standard library's sources and docstrings, benchmarks/realtext.py; man pages where installed).

`--dry-run` is the same sequence on a CPU at toy sizes (tests/app/test_gpu_check.py runs it).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
CPU_BUDGET_TOKENS = 1400 * 8 * 1 * 256  # recipes/reproduce/mini.yaml: max_steps x micro_batch x accumulate x seq_len
SCALE = 100

# The real run (one H200, 8 minutes in all) and the dry run (CPU, toy sizes, seconds).
PLANS = {
    "gpu": {"time_limits_s": {"tests": 60, "flexheadfa": 20, "attention": 90, "corpus": 60, "pretrain": 115},
            "contexts": "16384,32768,65536", "batches": "1,8", "hidden": 2048, "dtype": "bfloat16", "repeats": 0,
            "models": {"mini-sigma": "small", "gqa": "small-gqa"}, "micro_batch": 128, "seq_len": 512,
            "tokens": SCALE * CPU_BUDGET_TOKENS, "vocab": 8192, "eval_every": 500, "eval_batches": 8,
            "compile": True, "precision": "bf16-mixed", "lr": 1.5e-3, "warmup": 100},
    "dry": {"time_limits_s": {"tests": 300, "flexheadfa": 60, "attention": 300, "corpus": 300, "pretrain": 300},
            "contexts": "64,128", "batches": "1", "hidden": 512, "dtype": "float32", "repeats": 1,
            "models": {"mini-sigma": "tiny", "gqa": "tiny"}, "micro_batch": 4, "seq_len": 32,
            "tokens": 4 * 32 * 6, "vocab": 512, "eval_every": 3, "eval_batches": 2,
            "compile": False, "precision": "32-true", "lr": 3e-3, "warmup": 1},
}
GQA_OVERRIDES_DRY = {"n_k": 4, "n_v": 4, "d_aug": 0}  # the tiny preset is DiffQKV: its GQA twin for the dry run


def phase(name: str, cmd: list[str], out: Path, limit: float, env: dict | None = None) -> dict:
    """Run one phase under a time limit; its output goes to OUT/NAME.log."""
    log = out / f"{name}.log"
    t0 = time.time()
    with open(log, "w") as f:
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=limit,
                               env={**os.environ, **(env or {})})
            status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
        except subprocess.TimeoutExpired:
            status = f"cut at its {limit:.0f} s limit"
    res = {"status": status, "seconds": round(time.time() - t0, 1), "log": log.name, "command": " ".join(cmd)}
    print(f"[gpu-check] {name}: {status} in {res['seconds']} s", flush=True)
    return res


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text())


def corpus_docs(dry: bool) -> list[dict]:
    """Real text for the pretraining corpus: standard-library sources (and docstrings, man pages)."""
    from benchmarks.realtext import man_pages, stdlib_docs
    from minisigma.core.shards import stable_id

    docs = stdlib_docs()
    if dry:
        return docs[:60]
    docs += man_pages(5000)
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if "site-packages" in p.parts or "test" in p.parts:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) > 500:
            docs.append({"id": stable_id("pysource", str(p)), "text": text, "source": "pysource", "url": str(p),
                         "metadata": {"license": "PSF-2.0"}})
    return docs


def write_recipe(path: Path, plan: dict, name: str, preset: str, tokens_dir: Path, run_dir: Path, dry: bool) -> dict:
    import yaml

    r = yaml.safe_load((ROOT / "recipes" / "train" / "mini.yaml").read_text())
    steps = max(1, plan["tokens"] // (plan["micro_batch"] * plan["seq_len"]))
    r.update(name=f"gpu-check-{name}", out_dir=str(run_dir))
    r["tokenizer"] = {**r["tokenizer"], "vocab_size": plan["vocab"], "max_train_chars": 20_000_000}
    r["data"] = {**r["data"], "tokens_dir": str(tokens_dir)}
    r["model"] = {"preset": preset, "overrides": GQA_OVERRIDES_DRY if dry and name == "gqa" else {}}
    r["optim"] = {**r["optim"], "lr": plan["lr"], "warmup_steps": plan["warmup"]}
    r["train"] = {**r["train"], "max_steps": steps, "micro_batch": plan["micro_batch"], "accumulate": 1,
                  "seq_len": plan["seq_len"], "eval_every": plan["eval_every"], "eval_batches": plan["eval_batches"],
                  "ckpt_every": steps, "log_every": 50, "precision": plan["precision"], "compile": plan["compile"],
                  "progress_bar": False, **({"accelerator": "cpu", "threads": 1} if dry else {})}
    path.write_text(yaml.safe_dump(r, sort_keys=False))
    return {"steps": steps, "tokens": steps * plan["micro_batch"] * plan["seq_len"], "preset": preset}


def curves(run_dir: Path) -> dict:
    train, val = {}, []
    if (run_dir / "steps.jsonl").exists():
        for line in open(run_dir / "steps.jsonl"):
            r = json.loads(line)
            train.setdefault(r["step"], []).append(r["loss"])
    if (run_dir / "evals.jsonl").exists():
        val = [json.loads(line) for line in open(run_dir / "evals.jsonl") if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    return {"train": [[s, sum(v) / len(v)] for s, v in sorted(train.items())],
            "val": [[e["step"], e["val_loss"]] for e in val], "summary": summary}


def plot(all_curves: dict, path: Path, tokens_per_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, c in all_curves.items():
        if c["train"]:
            ax.plot([s * tokens_per_step / 1e6 for s, _ in c["train"]], [v for _, v in c["train"]], lw=0.8,
                    label=f"{name} train")
        if c["val"]:
            ax.plot([s * tokens_per_step / 1e6 for s, _ in c["val"]], [v for _, v in c["val"]], "o-", label=f"{name} val")
    ax.set_xlabel("tokens (M)")
    ax.set_ylabel("loss")
    ax.set_title("mini-Sigma (DiffQKV + AugQ) vs GQA, same data and budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out: Path, dry: bool = False) -> dict:
    from benchmarks.common import machine

    plan = PLANS["dry" if dry else "gpu"]
    lim = plan["time_limits_s"]
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    cli = [py, "-c", "from minisigma.cli import main; main()"]
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MINISIGMA_BENCH_RESULTS": str(out)}
    summary: dict = {"mode": "dry-run (CPU, toy sizes)" if dry else "gpu", "machine": machine(), "phases": {}}
    try:
        import torch

        summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        summary["torch"] = torch.__version__
    except Exception as e:  # noqa: BLE001  (recorded: the check itself must still run)
        summary["device"] = f"torch unavailable: {e}"
    ph = summary["phases"]
    started = time.time()

    # 1. the gpu-marked tests (on a CPU they are collected and skip with their reason)
    ph["tests"] = phase("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                  f"--junitxml={out / 'tests.xml'}", *gpu_test_files()], out, lim["tests"], env)

    # 2. FlexHeadFA where pip installs it, then the attention bench
    if dry:
        ph["flexheadfa"] = {"status": "skipped in the dry run (no CUDA)"}
    else:
        ph["flexheadfa"] = phase("flexheadfa", [py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                                "flex-head-fa"], out, lim["flexheadfa"], env)
    ph["attention"] = phase("attention", [*cli, "bench", "attention", "--contexts", plan["contexts"],
                                          "--batches", plan["batches"], "--hidden", str(plan["hidden"]),
                                          "--dtype", plan["dtype"], "--repeats", str(plan["repeats"]),
                                          "--out", str(out / "attention")], out, lim["attention"], env)

    # 3. the pretraining comparison
    tokens_dir = ROOT / "runs" / "mini" / "tokens"
    if dry or not (tokens_dir / "manifest.json").exists():
        from minisigma.core.shards import ShardWriter

        shards = out / "corpus" / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        docs = corpus_docs(dry)
        with ShardWriter(shards / "00000.jsonl.gz") as w:
            for d in docs:
                w.write(d)
        tokens_dir = out / "corpus" / "tokens"
        write_recipe(out / "corpus" / "recipe.yaml", plan, "tokens", "small", tokens_dir, out / "corpus", dry)
        ph["corpus"] = phase("corpus", [*cli, "tokenize", str(out / "corpus" / "recipe.yaml"), "--in", str(shards),
                                        "--out", str(tokens_dir)], out, lim["corpus"], env)
        ph["corpus"]["documents"] = len(docs)
    else:
        ph["corpus"] = {"status": "ok", "tokens_dir": str(tokens_dir)}
    runs = {}
    for name, preset in plan["models"].items():
        run_dir = out / "pretrain" / name
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        rec = out / "pretrain" / f"{name}.yaml"
        info = write_recipe(rec, plan, name, preset, tokens_dir, run_dir, dry)
        ph[f"pretrain_{name}"] = {**phase(f"pretrain_{name}", [*cli, "train", str(rec)], out, lim["pretrain"], env),
                                  **info, "cpu_budget_tokens": CPU_BUDGET_TOKENS}
        runs[name] = curves(run_dir)
    (out / "curves.json").write_text(json.dumps(runs) + "\n")
    plot(runs, out / "loss_curves.png", plan["micro_batch"] * plan["seq_len"])
    for name, c in runs.items():
        s = c["summary"] or {}
        ph[f"pretrain_{name}"].update(steps_done=c["train"][-1][0] + 1 if c["train"] else 0,
                                      last_val_loss=c["val"][-1][1] if c["val"] else None,
                                      finished=bool(s.get("finished")), train_seconds=s.get("seconds"))
    summary["seconds"] = round(time.time() - started, 1)
    summary["ok"] = all(p["status"].startswith(("ok", "skipped")) for p in ph.values())
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"[gpu-check] {'all phases ok' if summary['ok'] else 'some phases did not finish'} in {summary['seconds']} s "
          f"-> {out}/summary.json")
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    ap.add_argument("--dry-run", action="store_true", help="the same sequence on a CPU at toy sizes")
    a = ap.parse_args()
    s = run(a.out, a.dry_run)
    sys.exit(0 if s["ok"] else 1)
