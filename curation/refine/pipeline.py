"""`refine(run_dir, recipe)`: the refine stages in the recipe's order over a run's extracted and source shards.

    inputs   <run>/extract/ and <run>/sources/*/ shards (jsonl.gz or parquet)
    stages   refine.stages, by name from curation.refine.registry (built-in order: curation.refine.config)
    outputs  <run>/refine/<stage>/ (shards, rejects/, manifest.json), the last stage into <run>/curated/
    models   <run>/classifiers/{quality,category}/ (trained first when missing: `minisigma classifier train`)

Every dropped document is in its stage's rejects/ with the reason; every stage has a manifest.
The run may be a URL (s3://, gs://, memory:// ...): what refine reads is pulled from it into the run's
local cache first, and everything it writes is committed there (minisigma.core.storage).
"""

from __future__ import annotations

from pathlib import Path

from minisigma.core import storage
from minisigma.core.document import doc_shards, read_sample
from minisigma.core.errors import UserError
from minisigma.core.manifest import read_json, read_stages
from minisigma.core.paths import find
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


def load_storage_options(path: str | Path) -> dict[str, dict]:
    """The `storage_options` of a curation recipe (fsspec options by protocol); none for a refine-only YAML."""
    data = load_yaml(path)
    return parse_recipe(data, CurationRecipe, str(path)).storage_options if "sources" in data else {}


def load_shard_format(path: str | Path) -> str:
    """The `shard_format` of a curation recipe (or of a refine-only YAML): jsonl.gz or parquet."""
    data = load_yaml(path)
    if "sources" in data:
        return parse_recipe(data, CurationRecipe, str(path)).shard_format
    fmt = data.get("shard_format", "jsonl.gz")
    if fmt not in FORMATS:
        raise UserError(f"{path}: shard_format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def pull_inputs(run_dir: Path, *more: str) -> None:
    """For a run at a URL: bring what refinement reads into the run's local cache (the extracted pages,
    each source's documents, the classifiers trained before, and the stage directories `more`), without
    their rejects. A local run: nothing."""
    url = storage.url_of(run_dir)
    if url is None:
        return
    sources = [f"sources/{n}" for n in storage.listdir(storage.join(url, "sources"))]
    for d in ("extract", *sources, "classifiers", *more):
        storage.pull(run_dir / d, skip=("rejects",))


def run_inputs(run_dir: Path) -> list[Path]:
    """The shards refinement starts from: the extracted pages, then each source's own documents."""
    inputs = list_shards(run_dir / "extract")
    src = run_dir / "sources"
    if src.is_dir():
        for d in sorted(p for p in src.iterdir() if p.is_dir()):
            inputs += list_shards(d)
    return inputs


def train_classifiers(run_dir: str | Path, c: RefineConfig, docs_dir: str | Path | None = None) -> dict:
    """`minisigma classifier train`: both classifiers into <run>/classifiers, from `docs_dir` (default:
    the dedup_exact output, else the run's inputs). The run (and `docs_dir`) may be a URL."""
    run_dir = storage.open_run(run_dir)
    pull_inputs(run_dir, "refine/dedup_exact")
    if docs_dir is not None and storage.is_url(docs_dir):
        docs_dir = storage.local_of(str(docs_dir))  # inside the run, or bound as a folder of its own
        storage.pull(docs_dir, skip=("rejects",))
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
    run_dir = storage.open_run(run_dir)
    pull_inputs(run_dir)
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


# ------------------------------------------------------------------ readers (the report's)
def _stages(run: Path) -> list[Path]:
    return [d for d, _m in read_stages(run)]


def corpus_stage(run: str | Path) -> Path | None:
    """The curated corpus of a run: train_corpus/ (the pretraining corpus reproduce decontaminates
    from it) or curated/ when it has document shards, else the last curation stage (by manifest
    time) with document shards; synth's stages are not a corpus."""
    run = Path(run)
    for name in ("train_corpus", "curated"):
        if doc_shards(run / name):
            return run / name
    for d in reversed(_stages(run)):
        if "synth" not in d.relative_to(run).parts and doc_shards(d):
            return d
    return None


def curated_stages(run: str | Path) -> list[Path]:
    """The curated/ directories of a run (with a manifest), else the corpus stage alone."""
    found = [p.parent for p in find(Path(run), "manifest.json") if p.parent.name == "curated"]
    return found or [d for d in [corpus_stage(run)] if d is not None]


def source_counts(stage: Path, limit: int) -> dict[str, dict[str, int]]:
    """{source: {docs, tokens}} of a document stage: its manifest's `counts.by_source`, or for a
    manifest older than those, counted over its first `limit` documents (tokens: whitespace words)."""
    mp = stage / "manifest.json"
    by_source = ((read_json(mp) if mp.is_file() else {}).get("counts") or {}).get("by_source")
    if isinstance(by_source, dict):
        return by_source
    out: dict[str, dict[str, int]] = {}
    for d in read_sample(stage, limit):
        n = out.setdefault(str(d.get("source") or "unknown"), {"docs": 0, "tokens": 0})
        n["docs"] += 1
        n["tokens"] += len(str(d.get("text", "")).split())
    return out


def doc_scores(d: dict) -> dict[str, float]:
    """A document's numeric scores: metadata.scores (langid, classify) and metadata keys ending in "score"."""
    meta = d.get("metadata") or {}
    out = {}
    scores = meta.get("scores")
    if isinstance(scores, dict):
        for k, v in scores.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    for k, v in meta.items():
        if k.endswith("score") and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def scored_stage(run: str | Path, probe: int = 2000) -> Path | None:
    """The last stage (by manifest time) whose first `probe` documents carry scores."""
    for d in reversed(_stages(Path(run))):
        if doc_shards(d) and any(doc_scores(x) for x in read_sample(d, probe)):
            return d
    return None
