"""Stage: apply the fastText classifiers; keep documents by quality score or percentile (DCLM-style).

Scores go to metadata.scores.quality (probability of "hq") and metadata.scores.category (probability
of the predicted category), the predicted label to metadata.category_pred (the weak label in
metadata.category is left as it is). Threshold: `quality_min_score`, or `quality_keep_fraction`
(keep the top fraction): the score at that percentile is computed by the driver on a deterministic
sample of at most `percentile_sample` documents (DCLM sets its threshold on a sample the same way)
and recorded in the manifest. Documents below it are dropped with reason "quality_below_threshold";
`drop_categories` drops predicted categories ("category_<name>").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from minisigma.core.document import Document
from minisigma.core.errors import UserError
from minisigma.core.filters import Filter
from minisigma.core.recipes import Section
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards, read_docs

from curation.refine.classifiers import load_info, predict, train_all
from curation.refine.registry import RefineContext, RefineStep
from curation.refine.textutil import meta, scores


class ClassifyConfig(Section):
    quality_model: Optional[str] = None  # model directory; default <run>/classifiers/quality
    category_model: Optional[str] = None  # default <run>/classifiers/category
    quality_min_score: Optional[float] = None
    quality_keep_fraction: Optional[float] = 0.9  # used when quality_min_score is not set
    percentile_sample: int = 20_000
    # Sigma processes each source separately: with this, the keep fraction applies within each
    # document `source` (its own percentile threshold), so a source unlike the rest (PDF papers
    # scored by a classifier trained mostly on documentation pages) is not dropped wholesale.
    quality_per_source: bool = False
    drop_categories: list[str] = []


_MODELS: dict[str, object] = {}


def _model(path: str):
    if path not in _MODELS:
        import fasttext

        _MODELS[path] = fasttext.load_model(str(Path(path) / "model.bin"))
    return _MODELS[path]


def quality_score(model_dir: str, text: str) -> float:
    max_words = load_info(model_dir)["config"]["fasttext"]["max_words"]
    labels, probs = predict(_model(model_dir), text, max_words, k=2)
    return dict(zip(labels, probs)).get("hq", 0.0)


class Classify(Filter, RefineStep):
    name = "classify"
    Config = ClassifyConfig

    def __init__(self, config: ClassifyConfig, quality_dir: str | Path, category_dir: str | Path | None,
                 threshold: float | dict[str, float] | None):
        super().__init__(config)
        self.quality_dir = str(quality_dir)
        self.category_dir = str(category_dir) if category_dir else None
        self.threshold = threshold
        self.q_words = load_info(self.quality_dir)["config"]["fasttext"]["max_words"]
        self.c_words = load_info(self.category_dir)["config"]["fasttext"]["max_words"] if self.category_dir else 0

    def decide(self, doc: Document) -> str | None:
        labels, probs = predict(_model(self.quality_dir), doc.text, self.q_words, k=2)
        q = dict(zip(labels, probs)).get("hq", 0.0)
        scores(doc)["quality"] = round(q, 5)
        if self.category_dir:
            (lab,), (p,) = predict(_model(self.category_dir), doc.text, self.c_words, k=1)
            meta(doc)["category_pred"] = lab
            scores(doc)["category"] = round(p, 5)
            if lab in self.config.drop_categories:
                return f"category_{lab}"
        thr = self.threshold.get(str(doc.source), self.threshold.get("*")) \
            if isinstance(self.threshold, dict) else self.threshold
        if thr is not None and q < thr:
            return "quality_below_threshold"
        return None

    @classmethod
    def run_step(cls, config: ClassifyConfig, inputs: list[Path], dest: Path, ctx: RefineContext) -> None:
        """Train the classifiers on this stage's input when the run has none, set the threshold, filter."""
        q_dir, c_dir = classifier_dirs(ctx.run_dir, config)
        if not (q_dir / "model.bin").exists() or not (c_dir / "model.bin").exists():
            train_from_shards(ctx.run_dir, ctx.refine, list_shards(Path(inputs[0]).parent))
        thr, how = resolve_threshold(config, q_dir, inputs)
        run_stage(ctx.docs(cls(config, q_dir, c_dir, thr)), inputs, dest, **ctx.stage_kw,
                  extra={"threshold": how, "classifiers": {"quality": load_info(q_dir)["heldout"]["macro"],
                                                           "category": load_info(c_dir)["heldout"]["macro"]}})


def classifier_dirs(run_dir: Path, c: ClassifyConfig) -> tuple[Path, Path]:
    """The quality and category model directories: the recipe's, else <run>/classifiers/{quality,category}."""
    return (Path(c.quality_model) if c.quality_model else run_dir / "classifiers" / "quality",
            Path(c.category_model) if c.category_model else run_dir / "classifiers" / "category")


def train_from_shards(run_dir: Path, refine: Any, shards: list[Path]) -> dict:
    """Train both classifiers into <run>/classifiers from the documents of `shards`."""
    c = refine.classifiers
    if not shards and not (c.quality.positive_paths and c.category.paths):
        raise UserError(f"{run_dir}: no documents to train the classifiers on (run extraction first)")
    docs = [d for p in shards for d in read_docs(p)]
    try:
        return train_all(docs, c, Path(run_dir) / "classifiers")
    except ValueError as e:
        raise UserError(str(e)) from None


def resolve_threshold(c: ClassifyConfig, quality_dir: str | Path, inputs: list[Path]) -> tuple[float | None, dict]:
    """The absolute threshold to apply, and how it was obtained (for the manifest)."""
    if c.quality_min_score is not None:
        return c.quality_min_score, {"rule": "quality_min_score", "threshold": c.quality_min_score}
    if c.quality_keep_fraction is None or c.quality_keep_fraction >= 1.0:
        return None, {"rule": "none"}
    # Deterministic sample: every k-th document over all shards (within each source, per source).
    by_source: dict[str, list[str]] = {}
    for p in inputs:
        for d in read_docs(p):
            if isinstance(d.get("text"), str):
                key = str(d.get("source")) if c.quality_per_source else "*"
                by_source.setdefault(key, []).append(d["text"])
    if not by_source:
        return None, {"rule": "quality_keep_fraction", "sample": 0}
    thresholds, sizes = {}, {}
    for key, texts in sorted(by_source.items()):
        sample = texts[::max(1, len(texts) // c.percentile_sample)]
        vals = np.array([quality_score(str(quality_dir), t) for t in sample])
        thresholds[key] = float(np.quantile(vals, 1.0 - c.quality_keep_fraction, method="lower"))
        sizes[key] = len(sample)
    if not c.quality_per_source:
        thr = thresholds["*"]
        return thr, {"rule": "quality_keep_fraction", "keep_fraction": c.quality_keep_fraction,
                     "sample": sizes["*"], "threshold": round(thr, 6)}
    return thresholds, {"rule": "quality_keep_fraction per source", "keep_fraction": c.quality_keep_fraction,
                        "sample": sizes, "threshold": {k: round(v, 6) for k, v in thresholds.items()}}
