"""`minisigma eval RECIPE`: perplexity and CMDGen-mini for one or more checkpoints.

Recipe (YAML, recipes/eval/*.yaml)::

    out: runs/mini/eval                  # results go to <out>/<model name>/
    checkpoints:                         # name -> exported model directory (model/io.py layout)
      mini-sigma: runs/mini/sft/final
    perplexity:                          # omit (or null) to skip
      docs: runs/mini/curated            # shards dir or .jsonl(.gz)
      split: val                         # the training split's held-out documents
      val_fraction: 0.05
    cmdgen:                              # omit (or null) to skip
      tasks: runs/mini/synth/cmdgen/cmdgen.jsonl
      threshold: 0.8
      models: [mini-sigma]               # default: every checkpoint
      sandbox: {wall_seconds: 10, cpu_seconds: 5}
    induction:                           # omit (or null) to skip; model/evaluation/induction.py
      tokens: 100                        # a random sequence of 100 tokens, seen twice
      models: [mini-sigma-pretrain]      # default: every checkpoint

Outputs per model: ``<out>/<name>/perplexity.json`` and ``<out>/<name>/cmdgen/{results.jsonl,
summary.json}`` and ``<out>/<name>/induction.json``; plus ``<out>/eval.json`` listing what was run (the report reads all of these).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pydantic import Field, field_validator

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.recipes import LocalPath, Section, load_recipe
from model.evaluation import cmdgen, induction, perplexity
from model.evaluation.cmdgen import CmdgenSection
from model.evaluation.induction import InductionSection
from model.evaluation.perplexity import PerplexitySection


class EvalRecipe(Section):
    out: LocalPath = "runs/eval"
    checkpoints: dict[str, LocalPath] = Field(min_length=1)
    perplexity: PerplexitySection | None = None
    cmdgen: CmdgenSection | None = None
    induction: InductionSection | None = None

    @field_validator("checkpoints")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"checkpoint name {name!r} must be a plain directory name")
        return v


def run(recipe_path: str | Path, show_progress: bool = True) -> dict:
    recipe = load_recipe(recipe_path, EvalRecipe)
    if recipe.perplexity is None and recipe.cmdgen is None and recipe.induction is None:
        raise UserError(f"{recipe_path}: nothing to evaluate (give a perplexity, cmdgen or induction section)")
    if recipe.cmdgen is not None and not recipe.cmdgen.tasks:
        raise UserError(f"{recipe_path}: cmdgen.tasks: no task file given")
    if recipe.cmdgen is not None:
        unknown = sorted(set(recipe.cmdgen.models or ()) - set(recipe.checkpoints))
        if unknown:
            raise UserError(f"{recipe_path}: cmdgen.models: {', '.join(unknown)} not in checkpoints")
    if recipe.induction is not None:
        unknown = sorted(set(recipe.induction.models or ()) - set(recipe.checkpoints))
        if unknown:
            raise UserError(f"{recipe_path}: induction.models: {', '.join(unknown)} not in checkpoints")
    for name, ckpt in recipe.checkpoints.items():
        if not Path(ckpt).is_dir():
            raise UserError(f"{recipe_path}: checkpoints.{name}: {ckpt} is not a directory")
    out = Path(recipe.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"recipe": recipe.model_dump(), "models": {}}
    evaluator = None
    try:
        for name, ckpt in recipe.checkpoints.items():
            entry: dict = {"checkpoint": ckpt}
            t0 = time.time()
            if recipe.perplexity is not None:
                res = perplexity.evaluate_checkpoint(ckpt, recipe.perplexity, out / name / "perplexity.json")
                entry["perplexity"] = res["overall"]
            if recipe.cmdgen is not None and (recipe.cmdgen.models is None or name in recipe.cmdgen.models):
                if evaluator is None:  # one embedder + reference cache for every checkpoint
                    evaluator = cmdgen.Evaluator(recipe.cmdgen)
                res = cmdgen.evaluate_checkpoint(recipe.cmdgen.tasks, ckpt, out / name / "cmdgen", recipe.cmdgen,
                                                 evaluator=evaluator, show_progress=show_progress)
                entry["cmdgen"] = res["overall"]
            if recipe.induction is not None and (recipe.induction.models is None or name in recipe.induction.models):
                try:
                    entry["induction"] = induction.evaluate_checkpoint(ckpt, recipe.induction,
                                                                       out / name / "induction.json")
                except ValueError as e:
                    raise UserError(f"{recipe_path}: {e} (checkpoint {name})") from None
            entry["seconds"] = round(time.time() - t0, 3)
            summary["models"][name] = entry
    finally:
        if evaluator is not None:
            evaluator.close()
    # paths inside the run relative to out (the run can move), the checkout's relative to it
    (out / "eval.json").write_text(json.dumps(storage.recorded(summary, out), indent=2, sort_keys=True) + "\n")
    return summary
