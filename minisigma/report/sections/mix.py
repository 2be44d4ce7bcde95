"""Report section "Category and source mix" (id `mix`): renders what its stage's reader returns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from curation.refine.pipeline import corpus_stage
from minisigma.core.document import read_sample
from minisigma.core.paths import rel
from minisigma.report.html import esc, figure, png, table
from minisigma.report.runfiles import MAX_DOCS, NotRun


def section_mix(run: Path) -> str:
    stage = corpus_stage(run)
    if stage is None:
        raise NotRun("no curated document shards under the run")
    docs = read_sample(stage, MAX_DOCS)
    if not docs:
        raise NotRun(f"{rel(run, stage)}: no documents")
    cat_docs, cat_words, src_docs, src_words = Counter(), Counter(), Counter(), Counter()
    for d in docs:
        words = len(str(d.get("text", "")).split())
        cat = (d.get("metadata") or {}).get("category") or "uncategorised"
        src = d.get("source") or "unknown"
        cat_docs[cat] += 1
        cat_words[cat] += words
        src_docs[src] += 1
        src_words[src] += words
    fig, (a1, a2) = figure(12, 3.8, 2)
    for ax, docs_c, words_c, title in ((a1, cat_docs, cat_words, "category"), (a2, src_docs, src_words, "source")):
        keys = [k for k, _ in words_c.most_common(15)]
        tot_d, tot_w = sum(docs_c.values()), sum(words_c.values()) or 1
        y = range(len(keys))
        ax.barh([i + 0.2 for i in y], [100 * docs_c[k] / tot_d for k in keys], 0.4, label="% documents")
        ax.barh([i - 0.2 for i in y], [100 * words_c[k] / tot_w for k in keys], 0.4, label="% words")
        ax.set_yticks(list(y))
        ax.set_yticklabels(keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title} mix")
        ax.legend(fontsize=8)
    note = f'<p class="meta">{len(docs):,} documents of stage <code>{esc(rel(run, stage))}</code>' + \
        (f" (first {MAX_DOCS:,})" if len(docs) >= MAX_DOCS else "") + "</p>"
    rows = [[k, cat_docs[k], cat_words[k]] for k, _ in cat_words.most_common()]
    return note + png(fig) + table(["category", "documents", "words"], rows)
