"""The paper's small-scale comparisons in miniature (`minisigma ablate RECIPE [--quick]`).

An ablation recipe names a base training recipe, a list of variants (a model preset + overrides,
and optionally other training data), a budget (optimizer steps; batch and sequence length come
from the base recipe, so every variant sees the same number of tokens) and several seeds. Each
variant x seed is trained with model/train.py, then scored on one held-out set: the val split of
`eval.tokens_dir` (by default the base recipe's), i.e. documents no variant trained on. The score
is the mean next-token loss (nats/token) over a fixed set of windows, lower is better; all variants
must share one tokenizer so the losses are comparable.

Outputs in out_dir: runs/<variant>/seed<k>/ (each a normal training run), results.json (one
record per run), ablation.json (mean/std per variant for `minisigma report`), table.md (mean, standard deviation and spread over seeds, delta to the first
variant, the paper's number for the same comparison where given) and plot.png (every seed as a
dot, the mean as a bar). Finished runs are skipped on a rerun, so a long ablation can be resumed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from minisigma.core.errors import UserError
from minisigma.core.recipes import Section, load_recipe, load_yaml
from minisigma.core.shards import sha256_file
from model.data import TokenStream, load_tokens
from model.io import load_pretrained
from model.train import load_train_recipe
from model.train import run as train_run


class Variant(Section):
    name: str
    preset: str | None = None  # default: the base recipe's model.preset
    overrides: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields, on top of the base's
    tokens_dir: str | None = None  # other training data (the data ablation); same tokenizer required
    paper: float | None = None  # the paper's score for this configuration (its metric, higher = better)
    key: str | None = None  # the row of the paper's tables it stands for in `minisigma report` (e.g. gqa16_augq)


class Budget(Section):
    max_steps: int = Field(ge=1)
    seeds: list[int] = Field(min_length=1)


class EvalSection(Section):
    tokens_dir: str | None = None  # held-out set: its val.bin (default: base recipe data.tokens_dir)
    batches: int = Field(16, ge=1)  # eval windows = batches x base micro_batch, seq_len of the base


class AblationRecipe(Section):
    name: str
    description: str = ""
    base: str  # a training recipe (pretrain) giving data, optimizer and batch shape
    out_dir: str
    model: dict[str, Any] = Field(default_factory=dict)  # overrides shared by all variants (the ablation's model size)
    budget: Budget
    quick: Budget | None = None  # the small budget of `--quick`
    eval: EvalSection = Field(default_factory=EvalSection)
    paper_metric: str = ""  # what the `paper` numbers are (e.g. "avg of 9 zero-shot benchmarks, Table 1")
    variants: list[Variant] = Field(min_length=2)


def load_ablation(path) -> AblationRecipe:
    r = load_recipe(path, AblationRecipe)
    names = [v.name for v in r.variants]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: variants: names must be unique")
    base = Path(r.base)
    if not base.is_file() and not base.is_absolute():  # relative to the ablation recipe, then to the cwd
        cand = Path(path).parent / base
        if cand.is_file():
            r = r.model_copy(update={"base": str(cand)})
    return r


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-").lower()


def variant_recipe(ab: AblationRecipe, v: Variant, seed: int, steps: int, out: Path, tokens_dir: str | None = None):
    """The training recipe of one variant x seed: the base recipe with model, data, seed, budget changed.
    `tokens_dir` replaces the base recipe's data (not a variant's own)."""
    base = load_train_recipe(ab.base)
    if tokens_dir:
        base = base.model_copy(update={"data": base.data.model_copy(update={"tokens_dir": str(tokens_dir)})})
    if base.kind != "pretrain":
        raise UserError(f"{ab.base}: an ablation base must be a pretraining recipe")
    model = base.model.model_copy(update={"preset": v.preset or base.model.preset,
                                          "overrides": {**base.model.overrides, **ab.model, **v.overrides},
                                          "init_from": None})
    data = base.data.model_copy(update={"tokens_dir": v.tokens_dir or base.data.tokens_dir})
    train = base.train.model_copy(update={"seed": seed, "max_steps": steps, "ckpt_every": steps,
                                          "eval_every": steps, "eval_at_start": False, "progress_bar": False})
    return base.model_copy(update={"name": f"{ab.name}/{v.name}/seed{seed}", "out_dir": str(out),
                                   "model": model, "data": data, "train": train})


def evaluate(model_dir: Path, tokens_dir: str, seq_len: int, n_windows: int, batch: int) -> dict:
    """Mean next-token loss of an exported model over the first n_windows of val.bin."""
    import torch

    model, cfg, _ = load_pretrained(model_dir)
    stream = TokenStream(load_tokens(tokens_dir, "val"), seq_len)
    n = min(n_windows, len(stream))
    if n == 0:
        raise UserError(f"{tokens_dir}: val.bin is shorter than one window of {seq_len} tokens")
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch):
            xs, ys = zip(*(stream[j] for j in range(i, min(n, i + batch))))
            x, y = torch.stack(xs), torch.stack(ys)
            total += float(model(x, y)) * y.numel()
            count += y.numel()
    return {"eval_loss": total / count, "eval_tokens": count, "params": cfg.num_params(),
            "kv_values_per_token_layer": cfg.n_k * cfg.d_k + cfg.n_v * cfg.d_v}


def _tokenizer_sha(tokens_dir: str) -> str:
    p = Path(tokens_dir) / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"{tokens_dir}: tokenizer.json missing")
    return sha256_file(p)


def run(ab: AblationRecipe, quick: bool = False, out_dir: str | Path | None = None, tokens_dir: str | None = None,
        log=print) -> dict:
    budget = ab.quick if quick and ab.quick else ab.budget
    if quick and ab.quick is None:
        raise UserError(f"{ab.name}: the recipe has no `quick:` budget")
    out = Path(out_dir or ab.out_dir) / ("quick" if quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    recipes = {(v.name, s): variant_recipe(ab, v, s, budget.max_steps, out / "runs" / _slug(v.name) / f"seed{s}",
                                           tokens_dir)
               for v in ab.variants for s in budget.seeds}

    eval_dir = str(ab.eval.tokens_dir or tokens_dir or load_train_recipe(ab.base).data.tokens_dir)
    shas = {_tokenizer_sha(r.data.tokens_dir) for r in recipes.values()} | {_tokenizer_sha(eval_dir)}
    if len(shas) != 1:
        raise UserError(f"{ab.name}: variants and the eval set must share one tokenizer (found {len(shas)})")

    results = []
    t_all = time.time()
    for (vname, seed), r in recipes.items():
        run_dir = Path(r.out_dir)
        done = run_dir / "ablation_result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            continue
        if run_dir.exists():  # an interrupted run: start it over (runs are short and seeded)
            import shutil

            shutil.rmtree(run_dir)
        t0 = time.time()
        summary = train_run(r)
        res = {"variant": vname, "seed": seed, "steps": summary["global_step"], "train_seconds": summary["seconds"],
               "tokens": summary["global_step"] * r.train.micro_batch * r.train.accumulate * r.train.seq_len,
               **evaluate(run_dir / "final", eval_dir, r.train.seq_len, ab.eval.batches * r.train.micro_batch,
                          r.train.micro_batch)}
        res["seconds"] = round(time.time() - t0, 1)
        done.write_text(json.dumps(res, indent=2) + "\n")
        results.append(res)
        log(f"{vname:>28} seed {seed}: eval loss {res['eval_loss']:.4f}  ({res['seconds']:.0f}s)")

    table = summarize(ab, results)
    meta = {"recipe": ab.model_dump(), "budget": budget.model_dump(), "quick": quick, "eval_tokens_dir": eval_dir,
            "seconds_total": round(time.time() - t_all, 1), "results": results, "table": table}
    (out / "results.json").write_text(json.dumps(meta, indent=2) + "\n")
    keys = {v.name: v.key or v.name for v in ab.variants}
    (out / "ablation.json").write_text(json.dumps([  # the records `minisigma report` shows next to the paper
        {"variant": keys[r["variant"]], "label": r["variant"], "mean": r["mean"], "std": r["std"], "n": r["n"],
         "ablation": ab.name, "metric": "held-out loss, nats/token (lower is better)"} for r in table], indent=2) + "\n")
    md = to_markdown(ab, table, budget, results)
    (out / "table.md").write_text(md)
    plot(ab, results, table, out / "plot.png")
    return {"out_dir": str(out), "table": table, "table_md": md, "results": results}


def summarize(ab: AblationRecipe, results: list[dict]) -> list[dict]:
    """Mean, std and range over seeds per variant, and the PAIRED difference to the first variant
    (same seed = same initialisation stream and data order, so pairing removes most seed noise)."""
    by = {(r["variant"], r["seed"]): r["eval_loss"] for r in results}
    first = ab.variants[0].name
    rows = []
    for v in ab.variants:
        seeds = sorted(s for (name, s) in by if name == v.name)
        losses = [by[(v.name, s)] for s in seeds]
        diffs = [by[(v.name, s)] - by[(first, s)] for s in seeds if (first, s) in by]
        any_r = next(r for r in results if r["variant"] == v.name)
        rows.append({"variant": v.name, "n": len(losses), "mean": statistics.fmean(losses),
                     "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                     "min": min(losses), "max": max(losses),
                     "delta": statistics.fmean(diffs) if diffs else float("nan"),
                     "delta_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                     "params": any_r["params"], "kv": any_r["kv_values_per_token_layer"], "paper": v.paper})
    return rows


def to_markdown(ab: AblationRecipe, table: list[dict], budget: Budget, results: list[dict]) -> str:
    tokens = results[0]["tokens"] if results else 0
    lines = [f"### {ab.name}: held-out loss (nats/token, lower is better)", "",
             f"{budget.max_steps} steps x {len(budget.seeds)} seeds, {tokens:,} training tokens per run."
             + (f" Paper column: {ab.paper_metric} (higher is better)." if ab.paper_metric else ""), "",
             "| variant | params | KV values/token/layer | loss mean ± std | min..max | Δ vs first (paired) | paper |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        paper = "" if r["paper"] is None else f"{r['paper']:.2f}"
        lines.append(f"| {r['variant']} | {r['params']:,} | {r['kv']} | {r['mean']:.4f} ± {r['std']:.4f} | "
                     f"{r['min']:.4f}..{r['max']:.4f} | {r['delta']:+.4f} ± {r['delta_std']:.4f} | {paper} |")
    if min(r["n"] for r in table) < 3:
        lines += ["", "Fewer than 3 seeds: the spread is only indicative; no difference is called."]
    else:
        clear = [r["variant"] for r in table[1:] if abs(r["delta"]) > 2 * r["delta_std"]]
        lines += ["", f"Paired differences to {table[0]['variant']} larger than 2 std over seeds: "
                  + (", ".join(clear) if clear else "none (all within seed noise at this budget).")]
    return "\n".join(lines) + "\n"


def plot(ab: AblationRecipe, results: list[dict], table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(table)), 3.8))
    xs = range(len(table))
    means = [r["mean"] for r in table]
    ax.bar(xs, means, yerr=[r["std"] for r in table], color="#9ecae1", capsize=4, label="mean ± std")
    for i, r in enumerate(table):
        pts = [x["eval_loss"] for x in results if x["variant"] == r["variant"]]
        ax.scatter([i] * len(pts), pts, color="#08519c", s=14, zorder=3, label="seeds" if i == 0 else None)
    lo = min(x["eval_loss"] for x in results)
    hi = max(x["eval_loss"] for x in results)
    pad = max(1e-3, (hi - lo) * 0.6)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(list(xs), [r["variant"] for r in table], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(ab.name, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(recipe_path, quick: bool = False, out_dir=None, tokens_dir=None) -> dict:
    load_yaml(recipe_path)  # a clear error for a missing/invalid file before anything else
    return run(load_ablation(recipe_path), quick=quick, out_dir=out_dir, tokens_dir=tokens_dir)
