"""`minisigma synth RECIPE --in DIR --out DIR`: run the synth stages in order.

    OUT/tools  OUT/pairs_raw  OUT/cmdgen (+ cmdgen.jsonl)  OUT/pairs  OUT/qa  OUT/rewrites
    OUT/cache/llm_cache.sqlite   the backend's response cache (unless the recipe names another path)

Every stage directory has its manifest; a rerun skips finished shards, and the LLM cache makes a
resumed rewrite stage free for every request already answered.
"""

from __future__ import annotations

from pathlib import Path

from curation.refine.classifiers import load_info
from minisigma.core.document import doc_shards, read_file_sample, read_sample
from minisigma.core.errors import UserError
from minisigma.core.manifest import read_json_files
from minisigma.core.recipes import load_recipe
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards, read_docs, sha256_file
from synth.backends import make_backend
from synth.cmdgen_set import is_heldout, write_jsonl
from synth.commands import family
from synth.recipe import SynthRecipe
from synth.stages import CmdgenSet, MineCommands, QAPairs, Rewrite, ScreenPairs, ToolIndex


def heldout_families(tools_dir: Path, recipe: SynthRecipe) -> list[str]:
    fams = {r["family"] for s in list_shards(tools_dir) for r in read_docs(s)}
    return sorted(f for f in fams if is_heldout(f, recipe.split.heldout_fraction, recipe.split.seed))


def run_synth(recipe_path: str | Path, in_dir: str | Path, out_dir: str | Path, ray_address: str | None = None,
              progress: bool = True) -> dict:
    recipe = load_recipe(recipe_path, SynthRecipe)
    inputs = list_shards(in_dir)
    if not inputs:
        raise UserError(f"{in_dir}: no NNNNN.jsonl.gz shards")
    out = Path(out_dir)
    kw = dict(ray_address=ray_address, executor=recipe.executor, progress=progress)
    manifests = {}
    tools = out / "tools"
    cmdgen_jsonl = None
    if recipe.commands.enabled:
        manifests["tools"] = run_stage(ToolIndex(recipe), inputs, tools, **kw)
        manifests["pairs_raw"] = run_stage(MineCommands(recipe), inputs, out / "pairs_raw", **kw)
        raw = list_shards(out / "pairs_raw")
        split = {"split": {"level": recipe.split.level, "heldout_fraction": recipe.split.heldout_fraction,
                           "seed": recipe.split.seed}}
        if recipe.split.level == "family":
            split["split"]["heldout_families"] = heldout_families(tools, recipe)
        if recipe.cmdgen.enabled:
            manifests["cmdgen"] = run_stage(CmdgenSet(recipe, str(tools)), raw, out / "cmdgen", extra=split, **kw)
            items = [d for s in list_shards(out / "cmdgen") for d in read_docs(s)]
            cmdgen_jsonl = str(out / "cmdgen" / "cmdgen.jsonl")
            write_jsonl(items, cmdgen_jsonl)
        manifests["pairs"] = run_stage(ScreenPairs(recipe, str(tools), cmdgen_jsonl), raw, out / "pairs",
                                       extra=split, **kw)
    if recipe.qa.enabled:
        manifests["qa"] = run_stage(QAPairs(recipe, cmdgen_jsonl), inputs, out / "qa", **kw)
    if recipe.rewrite.enabled:
        if not recipe.rewrite.templates:
            raise UserError(f"{recipe_path}: rewrite.templates: at least one template is needed")

        # fail early on a missing key/base_url/model, before any work; a local model is not loaded here
        backend = make_backend(recipe.backend, out / "cache")
        described = _describe(recipe)
        if recipe.backend.kind == "local":  # the model's file and sha256, runtime and sampling
            described = {**backend.describe(), "kind": "local"}
        recipe, quality = resolve_quality_model(recipe, Path(in_dir))
        manifests["rewrites"] = run_stage(Rewrite(recipe, str(out / "cache")), inputs, out / "rewrites",
                                          extra={"backend": described, "quality_model": quality}, **kw)
    return manifests


def resolve_quality_model(recipe: SynthRecipe, in_dir: Path) -> tuple[SynthRecipe, dict | None]:
    """The recipe with `rewrite.quality_model: curated` made a path (the classifier folder of the
    curated run the input belongs to: <in>/../classifiers/quality), and what the manifest records of
    the classifier: its path, the sha256 of its model file, its held-out scores, or that it is missing."""
    qm = recipe.rewrite.quality_model
    if not qm:
        return recipe, None
    if qm == "curated":
        qm = str((in_dir.resolve().parent / "classifiers" / "quality"))
        recipe = recipe.model_copy(update={"rewrite": recipe.rewrite.model_copy(update={"quality_model": qm})})
    path = Path(qm)
    model = path / "model.bin" if path.is_dir() else path
    info = {"path": str(path), "label": recipe.rewrite.quality_label, "min_quality": recipe.rewrite.min_quality}
    if not model.is_file():
        return recipe, {**info, "missing": True}
    info["sha256"] = sha256_file(model)
    if (path / "classifier.json").is_file():
        info["heldout_macro"] = load_info(path).get("heldout", {}).get("macro")
    return recipe, info


def _describe(recipe: SynthRecipe) -> dict:
    b = recipe.backend
    return {"kind": b.kind, "model": b.model, "base_url": b.base_url, "api_key_env": b.api_key_env,
            "max_concurrency": b.max_concurrency, "stream": b.stream}


def _stage(run: Path, names: tuple[str, ...]) -> tuple[Path, dict] | None:
    """The first stage directory under `run` whose manifest names one of `names`."""
    for p, m in read_json_files(run, "manifest.json"):
        if isinstance(m, dict) and m.get("stage") in names:
            return p.parent, m
    return None


def read_pairs(run: str | Path, limit: int = 20_000) -> tuple[Path, dict, list[dict]] | None:
    """The screened instruction pairs stage of a run (OUT/pairs): its directory, manifest and first
    `limit` pairs; None when the run has none."""
    found = _stage(Path(run), ("pairs", "synth.pairs"))
    return None if found is None else (*found, read_sample(found[0], limit))


def read_rewrites(run: str | Path, limit: int = 50, rejects: int = 2000) -> tuple[dict, list[dict], list[dict]] | None:
    """The model rewrites stage of a run (OUT/rewrites): its manifest, the first `limit` kept rewrites
    and the first `rejects` dropped ones (reject records: reason and doc); None when the run has none."""
    found = _stage(Path(run), ("synth.rewrites",))
    if found is None:
        return None
    d, m = found
    dropped = [r for p in doc_shards(d / "rejects") for r in read_file_sample(p) if isinstance(r.get("doc"), dict)]
    return m, read_sample(d, limit), dropped[:rejects]


__all__ = ["run_synth", "heldout_families", "family", "read_pairs", "read_rewrites"]
