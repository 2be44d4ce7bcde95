"""`refine(run_dir, recipe)`: the refine stages in the recipe's order over a run's extracted and source shards.

    inputs   <run>/extract/ and <run>/sources/*/ shards (jsonl.gz or parquet)
    stages   refine.stages, by name from curation.refine.registry (built-in order: curation.refine.config)
    outputs  <run>/refine/<stage>/ (shards, rejects/, manifest.json), the last stage into <run>/curated/
    models   <run>/classifiers/{quality,category}/ (trained first when missing: `minisigma classifier train`)

Every dropped document is in its stage's rejects/ with the reason; every stage has a manifest.
"""

from __future__ import annotations

from pathlib import Path

from minisigma.core.errors import UserError
from minisigma.core.recipes import load_yaml, parse_recipe
from minisigma.core.shards import FORMATS, list_shards

from curation.recipe import CurationRecipe
from curation.refine.classify import train_from_shards
from curation.refine.config import RefineConfig
from curation.refine.registry import REGISTRY, RefineContext


def load_refine_config(path: str | Path) -> RefineConfig:
    """The `refine` section of a curation recipe (or of a refine-only YAML); defaults when absent."""
    data = load_yaml(path)
    if "sources" in data:
        return parse_recipe(data, CurationRecipe, str(path)).refine or RefineConfig()
    section = data.get("refine") or {}
    try:
        return parse_recipe(section, RefineConfig, f"{path}: refine")
    except UserError as e:
        raise UserError(str(e).replace(f"{path}: refine: ", f"{path}: refine.")) from None


def load_shard_format(path: str | Path) -> str:
    """The `shard_format` of a curation recipe (or of a refine-only YAML): jsonl.gz or parquet."""
    data = load_yaml(path)
    if "sources" in data:
        return parse_recipe(data, CurationRecipe, str(path)).shard_format
    fmt = data.get("shard_format", "jsonl.gz")
    if fmt not in FORMATS:
        raise UserError(f"{path}: shard_format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def run_inputs(run_dir: Path) -> list[Path]:
    """The shards refinement starts from: the extracted pages, then each source's own documents."""
    inputs = list_shards(run_dir / "extract")
    src = run_dir / "sources"
    if src.is_dir():
        for d in sorted(p for p in src.iterdir() if p.is_dir()):
            inputs += list_shards(d)
    return inputs


def train_classifiers(run_dir: str | Path, c: RefineConfig, docs_dir: Path | None = None) -> dict:
    """`minisigma classifier train`: both classifiers into <run>/classifiers, from `docs_dir` (default:
    the dedup_exact output, else the run's inputs)."""
    run_dir = Path(run_dir)
    if docs_dir is None:
        d = run_dir / "refine" / "dedup_exact"
        shards = list_shards(d) or run_inputs(run_dir)
    else:
        shards = list_shards(docs_dir)
    return train_from_shards(run_dir, c, shards)


def refine(run_dir: str | Path, recipe: RefineConfig | None = None, ray_address: str | None = None,
           progress: bool = True, executor: str | None = None, shard_format: str = "jsonl.gz") -> Path:
    """Run the recipe's refine stages; their document shards are written in `shard_format`
    (jsonl.gz | parquet)."""
    c = recipe or RefineConfig()
    run_dir = Path(run_dir)
    inputs = run_inputs(run_dir)
    if not inputs:
        raise UserError(f"{run_dir}: no input shards under extract/ or sources/*/")
    ctx = RefineContext(run_dir, c, dict(ray_address=ray_address, executor=executor or c.executor,
                                         progress=progress), doc_suffix=FORMATS[shard_format])
    current = inputs
    for i, name in enumerate(c.stages):
        dest = run_dir / "curated" if i == len(c.stages) - 1 else run_dir / "refine" / name
        REGISTRY[name].run_step(c.section(name), current, dest, ctx)
        current = list_shards(dest)
    return run_dir / "curated" if c.stages else run_dir / "refine"
