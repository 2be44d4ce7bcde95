"""Report section "Quality scores" (id `quality`): renders what its stage's reader returns."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from curation.refine.pipeline import doc_scores, scored_stage
from minisigma.core.document import read_sample
from minisigma.core.paths import rel
from minisigma.report.html import esc, figure, png, table
from minisigma.report.runfiles import MAX_DOCS, NotRun


def section_quality(run: Path) -> str:
    best = scored_stage(run)
    if best is None:
        raise NotRun("no documents with quality scores (metadata.scores) under the run")
    values: dict[str, list[float]] = defaultdict(list)
    for doc in read_sample(best, MAX_DOCS):
        for k, v in doc_scores(doc).items():
            values[k].append(v)
    names = sorted(values)[:6]
    fig, axes = figure(4 * len(names), 3.2, len(names))
    axes = axes if len(names) > 1 else [axes]
    for ax, k in zip(axes, names):
        ax.hist(values[k], bins=30, color="#1f77b4")
        ax.set_title(k)
        ax.set_ylabel("documents")
    rows = [[k, len(v), min(v), sum(v) / len(v), max(v)] for k, v in sorted(values.items())]
    return (f'<p class="meta">scores of stage <code>{esc(rel(run, best))}</code></p>' + png(fig) +
            table(["score", "documents", "min", "mean", "max"], rows))
