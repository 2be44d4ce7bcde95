"""`refine(run_dir, recipe)`: the refine stages in order over a run's extracted and source shards.

    inputs   <run>/extract/*.jsonl.gz and <run>/sources/*/*.jsonl.gz
    stages   normalize -> heuristics -> langid -> dedup_exact -> classify -> minhash -> decontam
    outputs  <run>/refine/<stage>/ (shards, rejects/, manifest.json), the last stage into <run>/curated/
    models   <run>/classifiers/{quality,category}/ (trained first when missing: `minisigma classifier train`)

classify runs before minhash so that the MinHash keep rule can prefer the higher quality score.
Every dropped document is in its stage's rejects/ with the reason; every stage has a manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from minisigma.core.errors import UserError
from minisigma.core.recipes import Section, load_yaml, parse_recipe
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards

from curation.refine.classifiers import ClassifiersConfig, train_all
from curation.refine.classify import Classify, ClassifyConfig, resolve_threshold
from curation.refine.decontam import Decontam, DecontamConfig, build_index, describe
from curation.refine.dedup_exact import DedupExactConfig
from curation.refine.dedup_run import run_dedup_exact, run_minhash
from curation.refine.heuristics import Heuristics, HeuristicsConfig
from curation.refine.langid import LangId, LangIdConfig
from curation.refine.minhash import MinHashConfig
from curation.refine.normalize import Normalize, NormalizeConfig

STAGES = ["normalize", "heuristics", "langid", "dedup_exact", "classify", "minhash", "decontam"]


class RefineConfig(Section):
    stages: list[Literal["normalize", "heuristics", "langid", "dedup_exact", "classify", "minhash", "decontam"]] = \
        list(STAGES)
    executor: Literal["ray", "local"] = "ray"
    normalize: NormalizeConfig = NormalizeConfig()
    heuristics: HeuristicsConfig = HeuristicsConfig()
    langid: LangIdConfig = LangIdConfig()
    dedup_exact: DedupExactConfig = DedupExactConfig()
    classifiers: ClassifiersConfig = ClassifiersConfig()
    classify: ClassifyConfig = ClassifyConfig()
    minhash: MinHashConfig = MinHashConfig()
    decontam: DecontamConfig = DecontamConfig()


def load_refine_config(path: str | Path) -> RefineConfig:
    """The `refine` section of a curation recipe (or of a refine-only YAML); defaults when absent."""
    from curation.recipe import CurationRecipe  # here: curation.recipe imports this module

    data = load_yaml(path)
    if "sources" in data:
        return parse_recipe(data, CurationRecipe, str(path)).refine or RefineConfig()
    section = data.get("refine") or {}
    try:
        return parse_recipe(section, RefineConfig, f"{path}: refine")
    except UserError as e:
        raise UserError(str(e).replace(f"{path}: refine: ", f"{path}: refine.")) from None


def run_inputs(run_dir: Path) -> list[Path]:
    inputs = list_shards(run_dir / "extract")
    src = run_dir / "sources"
    if src.is_dir():
        for d in sorted(p for p in src.iterdir() if p.is_dir()):
            inputs += list_shards(d)
    return inputs


def classifier_dirs(run_dir: Path, c: RefineConfig) -> tuple[Path, Path]:
    return (Path(c.classify.quality_model) if c.classify.quality_model else run_dir / "classifiers" / "quality",
            Path(c.classify.category_model) if c.classify.category_model else run_dir / "classifiers" / "category")


def train_classifiers(run_dir: Path, c: RefineConfig, docs_dir: Path | None = None) -> dict:
    """Train both classifiers into <run>/classifiers from `docs_dir` (default: the dedup_exact output,
    else the run's inputs)."""
    from minisigma.core.shards import read_docs

    run_dir = Path(run_dir)
    if docs_dir is None:
        d = run_dir / "refine" / "dedup_exact"
        shards = list_shards(d) if list_shards(d) else run_inputs(run_dir)
    else:
        shards = list_shards(docs_dir)
    if not shards and not (c.classifiers.quality.positive_paths and c.classifiers.category.paths):
        raise UserError(f"{run_dir}: no documents to train the classifiers on (run extraction first)")
    docs = [d for p in shards for d in read_docs(p)]
    try:
        return train_all(docs, c.classifiers, run_dir / "classifiers")
    except ValueError as e:
        raise UserError(str(e)) from None


def refine(run_dir: str | Path, recipe: RefineConfig | None = None, ray_address: str | None = None,
           progress: bool = True, executor: str | None = None) -> Path:
    c = recipe or RefineConfig()
    run_dir = Path(run_dir)
    inputs = run_inputs(run_dir)
    if not inputs:
        raise UserError(f"{run_dir}: no input shards under extract/ or sources/*/")
    executor = executor or c.executor
    kw = dict(ray_address=ray_address, executor=executor, progress=progress)
    stages = [s for s in STAGES if s in c.stages]
    out = run_dir / "refine"
    current = inputs
    for i, name in enumerate(stages):
        last = i == len(stages) - 1
        dest = run_dir / "curated" if last else out / name
        if name == "normalize":
            run_stage(Normalize(c.normalize), current, dest, **kw)
        elif name == "heuristics":
            run_stage(Heuristics(c.heuristics), current, dest, **kw)
        elif name == "langid":
            run_stage(LangId(c.langid), current, dest, **kw)
        elif name == "dedup_exact":
            run_dedup_exact(current, dest, c.dedup_exact, **kw)
        elif name == "classify":
            q_dir, c_dir = classifier_dirs(run_dir, c)
            if not (q_dir / "model.bin").exists() or not (c_dir / "model.bin").exists():
                train_classifiers(run_dir, c, docs_dir=Path(current[0]).parent)
            thr, how = resolve_threshold(c.classify, q_dir, current)
            from curation.refine.classifiers import load_info

            run_stage(Classify(c.classify, q_dir, c_dir, thr), current, dest,
                      extra={"threshold": how, "classifiers": {"quality": load_info(q_dir)["heldout"]["macro"],
                                                               "category": load_info(c_dir)["heldout"]["macro"]}},
                      **kw)
        elif name == "minhash":
            run_minhash(current, dest, c.minhash, **kw)
        elif name == "decontam":
            index = build_index(c.decontam)
            run_stage(Decontam(c.decontam, index), current, dest, extra={"decontam": describe(c.decontam, index)},
                      **kw)
        current = list_shards(dest)
    return run_dir / "curated" if stages else out
