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
from typing import Optional

import numpy as np

from minisigma.core.recipes import Section
from minisigma.core.runner import Stage, Task, text_docs
from minisigma.core.shards import read_docs

from curation.refine.classifiers import load_info, predict
from curation.refine.textutil import meta, scores


class ClassifyConfig(Section):
    quality_model: Optional[str] = None  # model directory; default <run>/classifiers/quality
    category_model: Optional[str] = None  # default <run>/classifiers/category
    quality_min_score: Optional[float] = None
    quality_keep_fraction: Optional[float] = 0.9  # used when quality_min_score is not set
    percentile_sample: int = 20_000
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


class Classify(Stage):
    name = "classify"

    def __init__(self, config: ClassifyConfig, quality_dir: str | Path, category_dir: str | Path | None,
                 threshold: float | None):
        super().__init__(config)
        self.quality_dir = str(quality_dir)
        self.category_dir = str(category_dir) if category_dir else None
        self.threshold = threshold

    def process(self, task: Task, sink) -> None:
        q_words = load_info(self.quality_dir)["config"]["fasttext"]["max_words"]
        c_words = load_info(self.category_dir)["config"]["fasttext"]["max_words"] if self.category_dir else 0
        for doc in text_docs(task.inputs[0], sink):
            labels, probs = predict(_model(self.quality_dir), doc["text"], q_words, k=2)
            q = dict(zip(labels, probs)).get("hq", 0.0)
            scores(doc)["quality"] = round(q, 5)
            if self.category_dir:
                (lab,), (p,) = predict(_model(self.category_dir), doc["text"], c_words, k=1)
                meta(doc)["category_pred"] = lab
                scores(doc)["category"] = round(p, 5)
                if lab in self.config.drop_categories:
                    sink.drop(doc, f"category_{lab}")
                    continue
            if self.threshold is not None and q < self.threshold:
                sink.drop(doc, "quality_below_threshold")
            else:
                sink.write(doc)


def resolve_threshold(c: ClassifyConfig, quality_dir: str | Path, inputs: list[Path]) -> tuple[float | None, dict]:
    """The absolute threshold to apply, and how it was obtained (for the manifest)."""
    if c.quality_min_score is not None:
        return c.quality_min_score, {"rule": "quality_min_score", "threshold": c.quality_min_score}
    if c.quality_keep_fraction is None or c.quality_keep_fraction >= 1.0:
        return None, {"rule": "none"}
    # Deterministic sample: every k-th document over all shards.
    sample = []
    for p in inputs:
        for d in read_docs(p):
            if isinstance(d.get("text"), str):
                sample.append(d["text"])
    step = max(1, len(sample) // c.percentile_sample)
    sample = sample[::step]
    if not sample:
        return None, {"rule": "quality_keep_fraction", "sample": 0}
    vals = np.array([quality_score(str(quality_dir), t) for t in sample])
    thr = float(np.quantile(vals, 1.0 - c.quality_keep_fraction, method="lower"))
    return thr, {"rule": "quality_keep_fraction", "keep_fraction": c.quality_keep_fraction, "sample": len(sample),
                 "threshold": round(thr, 6)}
