"""Stage: decontamination: remove documents that contain evaluation items.

The index holds the token n-grams (`ngram` tokens: words and punctuation runs, lower case) of every
evaluation item: the CMDGen JSONL eval sets (the text of the fields named in the recipe) and
held-out validation text (JSONL/jsonl.gz documents). An item shorter than `ngram` tokens but at
least `min_item_tokens` long is indexed whole (short commands are common in system text; shorter
items would match everywhere). A document sharing at least `min_overlap` n-grams with the index is
dropped with reason "decontam_<eval set name>", and the reject records the overlapping n-grams and
the items they came from in metadata.decontam.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minisigma.core.document import Document
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.filters import Filter
from minisigma.core.runner import run_stage
from minisigma.core.shards import read_docs

from curation.refine.registry import RefineContext, RefineStep
from curation.refine.textutil import meta, ngram_hashes, tokens


class EvalSet(Section):
    name: str
    path: str
    fields: list[str] = ["task", "prompt", "instruction", "question", "command", "answer", "reference", "text"]


class DecontamConfig(Section):
    eval_sets: list[EvalSet] = []
    heldout_paths: list[str] = []  # validation documents (jsonl/jsonl.gz with "text")
    ngram: int = 10
    min_item_tokens: int = 6
    min_overlap: int = 1
    max_recorded_ngrams: int = 20


def _items(es: EvalSet) -> list[tuple[str, str]]:
    p = Path(es.path)
    if not p.is_file():
        raise UserError(f"decontam: eval set {es.name!r}: {p}: no such file")
    out = []
    for k, rec in enumerate(read_docs(p)):
        item_id = str(rec.get("id", rec.get("task_id", k)))
        for f in es.fields:
            v = rec.get(f)
            if isinstance(v, str) and v.strip():
                out.append((item_id, v))
    return out


def build_index(c: DecontamConfig) -> dict:
    """{ngram hash: (set name, item id, ngram text)} over every eval item."""
    index: dict[int, tuple[str, str, str]] = {}
    sources = [(es.name, _items(es)) for es in c.eval_sets]
    for hp in c.heldout_paths:
        p = Path(hp)
        if not p.exists():
            raise UserError(f"decontam: held-out text {p}: no such file")
        files = sorted(p.glob("*.jsonl*")) if p.is_dir() else [p]
        sources.append(("heldout", [(str(d.get("id", i)), d.get("text") or "") for f in files
                                    for i, d in enumerate(read_docs(f))]))
    for name, items in sources:
        for item_id, text in items:
            toks = tokens(text)
            if len(toks) < c.min_item_tokens:
                continue
            hashes = ngram_hashes(toks, c.ngram)
            k = min(c.ngram, len(toks))
            for i, h in enumerate(hashes.tolist()):
                index.setdefault(h, (name, item_id, " ".join(toks[i:i + k])))
    return index


class Decontam(Filter, RefineStep):
    name = "decontam"
    Config = DecontamConfig

    def __init__(self, config: DecontamConfig, index: dict | None = None):
        super().__init__(config)
        self.index = build_index(config) if index is None else index
        self._keys = np.array(sorted(self.index), dtype=np.uint64)

    def hits(self, text: str) -> list[tuple[str, str, str]]:
        if not len(self._keys):
            return []
        toks = tokens(text)
        found = []
        # Items shorter than n are indexed whole: look for windows of every indexed length.
        lengths = {self.config.ngram} | {len(v[2].split()) for v in self.index.values()}
        for n in sorted(lengths):
            if n > len(toks):
                continue
            h = ngram_hashes(toks, n)
            hit = np.unique(h[np.isin(h, self._keys)])
            found.extend(self.index[int(x)] for x in hit.tolist())
        return found

    def decide(self, doc: Document) -> str | None:
        c = self.config
        found = self.hits(doc.text)
        if len(found) < c.min_overlap:
            return None
        meta(doc)["decontam"] = {
            "overlaps": len(found),
            "ngrams": [{"set": s, "item": i, "ngram": g} for s, i, g in found[: c.max_recorded_ngrams]]}
        return "decontam_" + sorted({f[0] for f in found})[0]

    @classmethod
    def run_step(cls, config: DecontamConfig, inputs: list[Path], dest: Path, ctx: RefineContext) -> None:
        index = build_index(config)
        run_stage(ctx.docs(cls(config, index)), inputs, dest, extra={"decontam": describe(config, index)}, **ctx.stage_kw)


def describe(c: DecontamConfig, index: dict) -> dict:
    return {"index_ngrams": len(index), "eval_sets": [es.name for es in c.eval_sets],
            "heldout_paths": c.heldout_paths, "ngram": c.ngram}


__all__ = ["DecontamConfig", "EvalSet", "Decontam", "build_index", "describe"]
