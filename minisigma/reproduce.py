"""`minisigma reproduce`: the whole pipeline, from package registries to an HTML report.

    curate (embedded default corpus, refine included) -> synth (pairs, Q&A, CMDGen-mini, and in the mini
    recipe model rewrites) -> decontaminate (curated + kept rewrites) -> tokenizer + packing -> pretrain
    -> SFT (for every model of the recipe: mini-Sigma and its baselines) -> attention bench
    -> evaluate (perplexity, CMDGen-mini) -> report

A reproduce recipe (recipes/reproduce/*.yaml) names the stage recipes; their paths are written
relative to `runs_prefix` (e.g. runs/mini) and are re-rooted under --out, the resolved copies being
saved in <out>/recipes/ for the record. Progress across stages is kept in <out>/reproduce.json: a
re-run skips finished stages, and an interrupted stage resumes inside itself (finished shards are
kept, training continues from its last checkpoint), so the final results equal an uninterrupted run's.
Each stage imports its domain modules when it runs (inside its function), so a re-run that skips the
finished stages does not pay for loading what they needed (torch, Lightning, Ray, transformers).
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import yaml
from pydantic import Field

from minisigma.bench import load_benchmark
from minisigma.core import paths, storage
from minisigma.core.errors import UserError
from minisigma.core.progress import console, log
from minisigma.core.recipes import Section, load_recipe, project_path
from minisigma.core.shards import atomic_write_json

RECIPES = paths.RECIPES / "reproduce"


class ModelRun(Section):
    """One model of the reproduction: its pretraining recipe and (optionally) its SFT recipe."""

    name: str
    pretrain: Path
    sft: Path | None = None
    tokens: Path | None = None  # a training recipe whose tokenizer/data sections pack this model's data
    tokens_in: str | None = None  # corpus directory for `tokens` (default: <out>/curated)
    tokens_overrides: dict = {}
    pretrain_overrides: dict = {}  # merged into the pretrain recipe (e.g. {train: {max_steps: 100}})
    sft_overrides: dict = {}
    note: str = ""


class AttentionBench(Section):
    contexts: list[int] = [256, 1024, 4096]
    batches: list[int] = [1]
    layers: int = 2
    hidden: int = 512
    train_seq: int = 256


class Question(Section):
    """A comparison the report answers: `sigma` vs `baseline`, two checkpoint names of the eval recipe."""

    title: str
    sigma: str
    baseline: str
    # the two checkpoints whose held-out bits/byte answer the question, when they are not sigma and
    # baseline themselves: perplexity is a pretraining measure, and SFT on short commands (the CMDGen
    # models) trades it away, so Q2 compares the two pretrained models before SFT
    perplexity: Optional[tuple[str, str]] = None
    paper: str = ""


class ReproduceRecipe(Section):
    name: str
    description: str = ""
    runs_prefix: str = Field(description="the path prefix the stage recipes use, replaced by --out")
    curation: Path
    synth: Path
    tokens: Path  # training recipe whose tokenizer: and data: sections build <out>/tokens from <out>/curated
    models: list[ModelRun]
    eval: Path
    eval_overrides: dict = {}
    attention: AttentionBench = AttentionBench()
    # corpora curated beside the main one, each into <out>/<name> (e.g. general text for a baseline)
    corpora: dict[str, Path] = {}
    questions: list[Question] = []


def resolve_recipe_path(recipe: str) -> Path:
    p = project_path(recipe)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    named = RECIPES / f"{recipe}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(x.stem for x in RECIPES.glob("*.yaml")))
        raise UserError(f"unknown reproduce recipe {recipe!r} (known: {known}; or a path to a YAML file)")
    return named


def _reroot(obj, prefix: str, out: str):
    if isinstance(obj, str):
        if obj == prefix or obj.startswith(prefix.rstrip("/") + "/"):
            return out + obj[len(prefix.rstrip("/")):]
        return obj
    if isinstance(obj, list):
        return [_reroot(x, prefix, out) for x in obj]
    if isinstance(obj, dict):
        return {k: _reroot(v, prefix, out) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def rerooted_copy(src: Path, prefix: str, out: Path, name: str, overrides: dict | None = None) -> Path:
    """Copy a stage recipe into <out>/recipes/<name>.yaml with its run paths re-rooted under `out`
    and `overrides` merged in (the copy is what runs, and stays as the record)."""
    src = project_path(src)
    if not src.is_file():
        raise UserError(f"{src}: stage recipe not found")
    data = deep_merge(yaml.safe_load(src.read_text()) or {}, overrides or {})
    dest = out / "recipes" / f"{name}.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    text = f"# resolved from {src} for {out}\n" + yaml.safe_dump(_reroot(data, prefix, str(out)), sort_keys=False)
    if not dest.exists() or dest.read_text() != text:
        dest.write_text(text)
    return dest


def seeded_stage(name: str) -> bool:
    """Whether a stage's result depends on --seed: the training runs and the evaluation of their models.
    The data stages before them (curation, synthesis, decontamination, tokenisation) are deterministic."""
    return name.split(":")[0] in ("pretrain", "sft", "eval", "report")


class Progress:
    """<out>/reproduce.json: the status and time of every stage, written after each one."""

    def __init__(self, out: Path, recipe: ReproduceRecipe, source: Path, seed: int | None = None):
        self.path = out / "reproduce.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.state.setdefault("stages", {})
        # only the training stages and what follows them depend on --seed: a run holding nothing else
        # (say `--data-only`, copied once per seed) goes on under any seed
        if any(seeded_stage(n) for n in self.state["stages"]) and self.state.get("seed") != seed:
            raise UserError(f"{out} was run with --seed {self.state.get('seed')}, not {seed}: "
                            "re-run it with the same seed, or choose another --out")
        self.state.update(recipe=recipe.name, recipe_file=str(Path(source).resolve()), seed=seed, host=platform.node(),
                          cpus=__import__("os").cpu_count())

    def done(self, name: str) -> bool:
        return self.state["stages"].get(name, {}).get("status") == "done"

    def record(self, name: str, status: str, seconds: float, **info) -> None:
        prev = self.state["stages"].get(name, {})
        total = prev.get("seconds", 0.0) + seconds  # an interrupted then resumed stage counts both parts
        self.state["stages"][name] = {"status": status, "seconds": round(total, 1), **info}
        # paths (the recipe file, checkpoints, the report) relative to the run or the checkout: the run can move
        atomic_write_json(self.path, storage.recorded(self.state, self.path.parent))


def resumable(run_dir: Path) -> bool:
    """Whether the training run in run_dir resumes from a checkpoint. A run killed before its first
    checkpoint holds nothing to resume from (only logs): it is removed, and the stage starts afresh."""
    from model.train import latest_checkpoint

    if latest_checkpoint(run_dir / "ckpt") is not None:
        return True
    if run_dir.exists():
        log(f"  no checkpoint in {run_dir}: starting it afresh")
        shutil.rmtree(run_dir)
    return False


def _stage_out(stage_dir: Path) -> int:
    """Documents a finished stage wrote (0 when it did not run)."""
    m = stage_dir / "manifest.json"
    return json.loads(m.read_text())["counts"]["out"] if m.exists() else 0


def curated_quality_model(r: ReproduceRecipe, prefix: str, out: Path) -> dict:
    """The synth override for `rewrite.quality_model: curated`: the quality classifier this run's
    curation trained and applied (its refine.classify.quality_model, by default <out>/classifiers/quality),
    so the rewrites are screened by the model that chose the corpus they join."""
    syn = yaml.safe_load(project_path(r.synth).read_text()) or {}
    if (syn.get("rewrite") or {}).get("quality_model") != "curated":
        return {}
    from curation import recipe as curation_recipe
    from curation.refine.classify import ClassifyConfig, classifier_dirs

    cur = curation_recipe.load(rerooted_copy(r.curation, prefix, out, "curation"))
    classify = getattr(cur.refine, "classify", None) or ClassifyConfig()
    return {"rewrite": {"quality_model": str(classifier_dirs(out, classify)[0])}}


def _stages(r: ReproduceRecipe, out: Path, ray_address: str | None, progress: bool) -> list[tuple[str, Callable]]:
    prefix = r.runs_prefix

    def curate():
        from curation import pipeline, recipe as curation_recipe

        path = rerooted_copy(r.curation, prefix, out, "curation")
        pipeline.curate(curation_recipe.load(path), out, ray_address=ray_address, progress=progress)
        if not (out / "curated" / "manifest.json").exists():
            raise UserError(f"{path}: the curation recipe has no refine section, so there is no curated/ output")
        return {"curated_docs": json.loads((out / "curated" / "manifest.json").read_text())["counts"]["out"]}

    def synth():
        from synth.pipeline import run_synth

        path = rerooted_copy(r.synth, prefix, out, "synth", curated_quality_model(r, prefix, out))
        ms = run_synth(path, out / "curated", out / "synth", ray_address=ray_address, progress=progress)
        return {k: m["counts"]["out"] for k, m in ms.items()}

    def decontaminate():
        """Remove from the pretraining corpus every document overlapping the CMDGen-mini set built by
        synth (any page quoting an item's task or command): <out>/curated -> <out>/train_corpus."""
        from curation.refine.decontam import Decontam, DecontamConfig, EvalSet, build_index, describe
        from minisigma.core.runner import run_stage
        from minisigma.core.shards import list_shards

        tasks = out / "synth" / "cmdgen" / "cmdgen.jsonl"
        cfg = DecontamConfig(eval_sets=[EvalSet(name="cmdgen", path=str(tasks))] if tasks.exists() else [])
        index = build_index(cfg)
        curated = list_shards(out / "curated")
        # the synth stage's kept rewrites (its dropped ones are under rewrites/rejects/) join the corpus
        rewrites = list_shards(out / "synth" / "rewrites")
        sources = {"curated": _stage_out(out / "curated"), "synthetic_rewrites": _stage_out(out / "synth" / "rewrites")}
        rw = out / "synth" / "rewrites" / "manifest.json"
        if rw.exists():
            st = json.loads(rw.read_text()).get("stats", {})
            sources["synthetic_rewrites_by_source"] = {k[len("kept_from_"):]: v for k, v in st.items()
                                                       if k.startswith("kept_from_")}
            sources["synthetic_rewrites_by_template"] = {k[len("kept_"):]: v for k, v in st.items()
                                                         if k.startswith("kept_") and not k.startswith("kept_from_")}
        m = run_stage(Decontam(cfg, index), curated + rewrites, out / "train_corpus",
                      ray_address=ray_address, progress=progress,
                      extra={"decontam": describe(cfg, index), "sources": sources})
        return {"kept": m["counts"]["out"], "dropped": m["counts"]["dropped"],
                "synthetic_rewrites_in": sources["synthetic_rewrites"]}

    def corpus(name: str, recipe_path: Path):
        def run():
            from curation import pipeline, recipe as curation_recipe

            path = rerooted_copy(recipe_path, prefix, out, f"curation-{name}")
            pipeline.curate(curation_recipe.load(path), out / name, ray_address=ray_address, progress=progress)
            return {}
        return run

    def tokenize(recipe_path: Path, name: str, in_dir: Path, overrides: dict | None = None):
        def run():
            from model import data, train

            path = rerooted_copy(recipe_path, prefix, out, name, overrides)
            tr = train.load_train_recipe(path)
            m = data.tokenize(tr.tokenizer, tr.data, in_dir, Path(tr.data.tokens_dir))
            return {"train_tokens": m["train_tokens"], "val_tokens": m["val_tokens"], "vocab": m["vocab_size"]}
        return run

    def train(recipe_path: Path, name: str, overrides: dict):
        def run():
            from model import train as trainer

            path = rerooted_copy(recipe_path, prefix, out, name, overrides)
            tr = trainer.load_train_recipe(path)
            s = trainer.main(path, resume=resumable(Path(tr.out_dir))) or {}
            return {k: s.get(k) for k in ("global_step", "val_loss", "export") if k in s}
        return run

    def attention():
        a = r.attention
        load_benchmark("bench_attention").run(contexts=a.contexts, batches=a.batches, layers=a.layers,
                                               hidden=a.hidden, train_seq=a.train_seq, out_dir=out / "bench" / "attention")
        return {}

    def evaluate():
        from model.evaluation import recipe as eval_recipe

        path = rerooted_copy(r.eval, prefix, out, "eval", r.eval_overrides)
        s = eval_recipe.run(path, show_progress=progress)
        if r.questions:
            atomic_write_json(Path(s["recipe"]["out"]) / "answers.json", answer(r.questions, s))
        return {name: {"val_bpb": e.get("perplexity", {}).get("bpb"),
                       "cmdgen_accuracy": e.get("cmdgen", {}).get("accuracy")} for name, e in s["models"].items()}

    stages: list[tuple[str, Callable]] = [("curate", curate)]
    stages += [(f"curate:{name}", corpus(name, path)) for name, path in r.corpora.items()]
    stages += [("synth", synth), ("decontaminate", decontaminate),
               ("tokenize", tokenize(r.tokens, "tokens", out / "train_corpus"))]
    for m in r.models:  # every data stage before the first training stage: `--data-only` stops there
        if m.tokens is not None:
            stages.append((f"tokenize:{m.name}", tokenize(m.tokens, f"tokens-{m.name}",
                                                          Path(_reroot(m.tokens_in, prefix, str(out)))
                                                          if m.tokens_in else out / "train_corpus",
                                                          m.tokens_overrides)))
    for m in r.models:
        stages.append((f"pretrain:{m.name}", train(m.pretrain, f"pretrain-{m.name}", m.pretrain_overrides)))
        if m.sft is not None:
            stages.append((f"sft:{m.name}", train(m.sft, f"sft-{m.name}", m.sft_overrides)))
    stages += [("attention", attention), ("eval", evaluate)]
    return stages


def _model_costs(checkpoint: str) -> dict:
    from model.io import load_config

    cfg = load_config(checkpoint)
    return {"params": cfg.num_params(), "kv_bytes_per_token_bf16": cfg.kv_bytes_per_token(2),
            "flops_per_token": cfg.flops_per_token(cfg.max_seq_len)}


def answer(questions: list[Question], summary: dict) -> dict:
    """Put the evaluated numbers of each question's two models side by side, with the verdicts."""
    out = []
    for q in questions:
        models = summary["models"]
        ppl = q.perplexity or (q.sigma, q.baseline)
        missing = [m for m in dict.fromkeys((q.sigma, q.baseline, *ppl)) if m not in models]
        if missing:
            raise UserError(f"question {q.title!r}: no evaluated model named {', '.join(missing)}")
        row = {"title": q.title, "paper": q.paper, "sigma": q.sigma, "baseline": q.baseline}
        if q.perplexity:
            row["perplexity_models"] = list(q.perplexity)
        for role, name, ppl_name in (("sigma", q.sigma, ppl[0]), ("baseline", q.baseline, ppl[1])):
            m = models[name]
            row[role + "_results"] = {"val_bpb": models[ppl_name].get("perplexity", {}).get("bpb"),
                                      "cmdgen_accuracy": m.get("cmdgen", {}).get("accuracy"),
                                      "cmdgen_cmd_score": m.get("cmdgen", {}).get("cmd_score"),
                                      **_model_costs(m["checkpoint"])}  # as the eval recipe names it
        a, b = row["sigma_results"], row["baseline_results"]
        row["kv_cache_reduction"] = round(1 - a["kv_bytes_per_token_bf16"] / b["kv_bytes_per_token_bf16"], 4)
        if a["val_bpb"] is not None and b["val_bpb"] is not None:
            row["bpb_delta"] = round(a["val_bpb"] - b["val_bpb"], 4)  # negative: sigma better
        if a["cmdgen_accuracy"] is not None and b["cmdgen_accuracy"] is not None:
            row["accuracy_delta"] = round(a["cmdgen_accuracy"] - b["cmdgen_accuracy"], 4)
            results = [Path(summary["recipe"]["out"]) / n / "cmdgen" / "results.jsonl" for n in (q.sigma, q.baseline)]
            if all(p.is_file() for p in results):  # same tasks for both: a paired test of the difference
                from model.evaluation.metrics import paired_accuracy

                pa = paired_accuracy(*([json.loads(x) for x in p.read_text().splitlines() if x.strip()]
                                       for p in results))
                row["accuracy_paired"] = {"tasks": pa["tasks"], "both": pa["both"], "sigma_only": pa["only_a"],
                                          "baseline_only": pa["only_b"], "mcnemar_p": pa["mcnemar_p"]}
        out.append(row)
    return {"questions": out}


def _stop_ray() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def seeded(r: ReproduceRecipe, seed: int) -> ReproduceRecipe:
    """The recipe with every pretraining and SFT run on this seed (initialisation and data order);
    the data stages are deterministic and do not depend on it."""
    s = {"train": {"seed": seed}}
    return r.model_copy(update={"models": [
        m.model_copy(update={"pretrain_overrides": deep_merge(m.pretrain_overrides, s),
                             "sft_overrides": deep_merge(m.sft_overrides, s)}) for m in r.models]})


def copy_data(src: Path, out: Path, recipe: str) -> None:
    """Start the run `out` as a copy of `src`, a finished `--data-only` run of the same recipe: the
    seed runs of one recipe train on one copy of its data instead of curating it again each. The copy
    is plain (no links): training and evaluation write into their own directories of `out` only, and
    every record in `src` is relative to it (it can move)."""
    if (out / "reproduce.json").is_file():
        return  # copied by an earlier invocation of this run: it resumes (even if src is gone since)
    state_path = src / "reproduce.json"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        raise UserError(f"{src}: --data-from needs a run made with `minisigma reproduce --data-only` "
                        "(no readable reproduce.json)") from None
    if state.get("recipe") != recipe:
        raise UserError(f"{src}: --data-from holds a run of recipe {state.get('recipe')!r}, not {recipe!r}")
    stages = state.get("stages", {})
    trained = [n for n in stages if seeded_stage(n)]
    if trained or not stages or any(s.get("status") != "done" for s in stages.values()):
        why = f"it holds trained stages ({', '.join(trained)})" if trained else "its data stages are not all done"
        raise UserError(f"{src}: --data-from needs a finished `minisigma reproduce --data-only` run: {why}")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: --data-from starts a new run, but this directory is not empty")
    log(f"copying the data stages of {src} into {out}")
    part = out.with_name(out.name + ".copying")  # a copy cut off half way is never taken for a run
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(src, part, symlinks=True)
    if out.exists():
        out.rmdir()
    part.rename(out)


def reproduce(recipe: str = "mini", out: Path | None = None, ray_address: str | None = None,
              progress: bool = True, seed: int | None = None, data_only: bool = False,
              data_from: Path | None = None) -> Path | None:
    """Run (or resume) every stage of the recipe into `out` and build the report. With `data_only`,
    stop before the first training stage (no report): the data every seed of the recipe shares.
    `data_from` (a `data_only` run of the same recipe) starts a new `out` as a copy of it."""
    source = resolve_recipe_path(recipe)
    r = load_recipe(source, ReproduceRecipe)
    if seed is not None:
        r = seeded(r, seed)
    out = Path(out or r.runs_prefix).resolve()
    if data_from is not None:
        copy_data(Path(data_from).resolve(), out, r.name)
    out.mkdir(parents=True, exist_ok=True)
    storage.run_dir(out)  # bound: what the stages record inside it is relative to it
    state = Progress(out, r, source, seed)
    stages = _stages(r, out, ray_address, progress)
    names = [n for n, _ in stages] + ["report"]
    t_all = time.time()
    for i, (name, fn) in enumerate(stages, 1):
        if data_only and (seeded_stage(name) or name == "attention"):
            log(f"[green]data stages done in {out}[/green]: `minisigma reproduce --recipe {recipe} --seed N "
                f"--data-from {out} --out DIR` trains seed N on them")
            return None
        if state.done(name):
            log(f"[dim][{i}/{len(names)}] {name}: done earlier, skipped[/dim]")
            continue
        log(f"[bold cyan][{i}/{len(names)}] {name}[/bold cyan]")
        t0 = time.time()
        try:
            info = fn() or {}
        except BaseException:
            state.record(name, "interrupted", time.time() - t0)
            raise
        state.record(name, "done", time.time() - t0, **info)
        if name == "decontaminate":
            _stop_ray()  # the data stages are over: idle Ray workers would only take CPU from training
        log(f"[green]  {name} done in {time.time() - t0:,.1f}s[/green] {json.dumps(info, default=str)[:300]}")
    from minisigma import report

    t0 = time.time()
    log(f"[bold cyan][{len(names)}/{len(names)}] report[/bold cyan]")
    state.record("report", "done", 0.0)  # the report shows its own row; its time is added below
    page = report.build(out)
    state.record("report", "done", time.time() - t0, file=str(page))
    summary(out, state.state, page)
    log(f"total {time.time() - t_all:,.0f}s this invocation")
    return page


def summary(out: Path, state: dict, page: Path) -> None:
    from rich.table import Table

    t = Table(title=f"minisigma reproduce: {state['recipe']} -> {out}")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("result")
    for name, s in state["stages"].items():
        info = {k: v for k, v in s.items() if k not in ("status", "seconds")}
        t.add_row(name, s["status"], f"{s['seconds']:,.1f}", json.dumps(info, default=str)[:90])
    console.print(t)
    total = sum(s["seconds"] for s in state["stages"].values())
    console.print(f"stage time in all: {total / 60:,.1f} min.  Report: [bold]{page}[/bold]")
