"""Perplexity and bits per byte on held-out documents, overall and per source and per category.

Documents are the curated dicts {id, text, source, metadata{category}}. Each is scored as in the
pretraining stream (model/data.py): ``<|endoftext|>`` followed by the document's tokens, cut into
windows of the model's context length; every token after the first is predicted from the tokens
before it inside its window (the first window starts at the separator, later windows continue
from the previous window's last token, so every token is predicted exactly once).

- loss      mean negative log-likelihood per predicted token (nats)
- ppl       exp(loss)
- bpb       bits per UTF-8 byte of text = total NLL / ln 2 / total bytes. Unlike per-token loss,
            it does not depend on the tokenizer, so models with different vocabularies compare.

The held-out split is the training data's (model.data.is_val: a hash of the document id), unless
the documents given are already a held-out set (``split: all``).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pydantic import Field

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.shards import list_shards, read_docs
from model.chat import encode_text
from model.data import is_val
from model.io import load_pretrained
from model.tokenizer import EOT


class PerplexitySection(Section):
    """`perplexity:` section of an eval recipe."""

    docs: str | None = None  # curated shards directory, or one .jsonl / .jsonl.gz file
    split: Literal["val", "all"] = "val"  # "val": only documents model.data.is_val selects
    val_fraction: float = Field(0.05, gt=0.0, le=1.0)  # must equal the tokenizing recipe's
    max_docs_per_source: int = Field(200, ge=1)
    context: int | None = Field(None, ge=8)  # window length; default: the model's max_seq_len
    batch_size: int = Field(8, ge=1)


def iter_docs(path: str | Path) -> Iterator[dict]:
    """Documents from a shards directory (NNNNN.jsonl.gz) or a single .jsonl / .jsonl.gz file."""
    p = Path(path)
    if p.is_dir():
        shards = list_shards(p)
        if not shards:
            raise UserError(f"{p}: no document shards (NNNNN.jsonl.gz) in this directory")
        for s in shards:
            yield from read_docs(s)
    elif p.is_file():
        if p.suffix == ".gz":
            yield from read_docs(p)
        else:
            with p.open(encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise UserError(f"{p}:{lineno}: invalid JSON ({e.msg})") from None
    else:
        raise UserError(f"{p}: no such file or directory")


def select_docs(docs: Iterable[dict], split: str = "val", val_fraction: float = 0.05,
                max_per_source: int = 200) -> list[dict]:
    """The held-out documents to score, at most `max_per_source` per source (in input order)."""
    per_source: dict[str, int] = defaultdict(int)
    out = []
    for d in docs:
        text = d.get("text")
        if not isinstance(text, str) or not text.strip() or not d.get("id"):
            continue
        if split == "val" and not is_val(d["id"], val_fraction):
            continue
        src = d.get("source") or "unknown"
        if per_source[src] >= max_per_source:
            continue
        per_source[src] += 1
        out.append(d)
    return out


def _windows(ids: list[int], context: int) -> Iterator[list[int]]:
    # windows of context+1 tokens overlapping by one: inputs w[:-1], targets w[1:]
    step = context
    for start in range(0, max(len(ids) - 1, 1), step):
        w = ids[start:start + context + 1]
        if len(w) >= 2:
            yield w


def doc_nll(model, token_lists: list[list[int]], context: int, batch_size: int = 8) -> list[tuple[float, int]]:
    """(sum of NLL in nats, number of predicted tokens) per token list."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    items = [(i, w) for i, ids in enumerate(token_lists) for w in _windows(ids, context)]
    # longest first so a batch pads little
    items.sort(key=lambda x: -len(x[1]))
    totals = [[0.0, 0] for _ in token_lists]
    with torch.inference_mode():
        for b in range(0, len(items), batch_size):
            batch = items[b:b + batch_size]
            T = max(len(w) for _, w in batch) - 1
            x = torch.zeros(len(batch), T, dtype=torch.long)
            y = torch.full((len(batch), T), -100, dtype=torch.long)
            for r, (_, w) in enumerate(batch):
                x[r, :len(w) - 1] = torch.tensor(w[:-1])
                y[r, :len(w) - 1] = torch.tensor(w[1:])
            logits = model(x.to(device)).float()  # right padding: causal attention never sees it
            nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).view(-1),
                                  ignore_index=-100, reduction="none").view(len(batch), T)
            for r, (i, w) in enumerate(batch):
                totals[i][0] += float(nll[r, :len(w) - 1].double().sum())
                totals[i][1] += len(w) - 1
    return [(t[0], t[1]) for t in totals]


def _stats(nll: float, tokens: int, nbytes: int, docs: int) -> dict:
    loss = nll / tokens if tokens else None
    return {"docs": docs, "tokens": tokens, "bytes": nbytes,
            "loss": None if loss is None else round(loss, 6),
            "ppl": None if loss is None else round(math.exp(min(loss, 700)), 4),
            "bpb": round(nll / math.log(2) / nbytes, 6) if nbytes else None}


def evaluate(model, tokenizer, docs: list[dict], context: int | None = None, batch_size: int = 8) -> dict:
    """Scores per document group: {"overall", "per_source", "per_category"}, each with
    docs, tokens, bytes, loss, ppl, bpb."""
    if not docs:
        raise UserError("no held-out documents to score (check perplexity.docs and split/val_fraction)")
    context = context or model.cfg.max_seq_len
    eot = tokenizer.token_to_id(EOT)
    token_lists = [([eot] if eot is not None else []) + encode_text(tokenizer, d["text"]) for d in docs]
    scores = doc_nll(model, token_lists, context, batch_size)
    groups: dict[str, dict[str, list]] = {"per_source": defaultdict(list), "per_category": defaultdict(list)}
    for d, s in zip(docs, scores):
        groups["per_source"][d.get("source") or "unknown"].append((d, s))
        cat = (d.get("metadata") or {}).get("category") or "uncategorised"
        groups["per_category"][cat].append((d, s))

    def agg(pairs) -> dict:
        return _stats(sum(s[0] for _, s in pairs), sum(s[1] for _, s in pairs),
                      sum(len(d["text"].encode("utf-8")) for d, _ in pairs), len(pairs))

    out = {"overall": agg(list(zip(docs, scores))), "context": context}
    for g, by in groups.items():
        out[g] = {k: agg(v) for k, v in sorted(by.items())}
    return out


def evaluate_checkpoint(checkpoint: str | Path, section: PerplexitySection, out_path: str | Path | None = None) -> dict:
    """Load a saved model, score the held-out documents, write perplexity.json (if out_path)."""
    if not section.docs:
        raise UserError("perplexity.docs: no documents given")
    model, cfg, tok = load_pretrained(checkpoint)
    if tok is None:
        raise UserError(f"{checkpoint}: no tokenizer.json next to the model")
    t0 = time.time()
    docs = select_docs(iter_docs(section.docs), section.split, section.val_fraction, section.max_docs_per_source)
    result = evaluate(model, tok, docs, section.context, section.batch_size)
    result.update({"checkpoint": str(checkpoint), "model": cfg.name, "docs_path": section.docs,
                   "split": section.split, "val_fraction": section.val_fraction,
                   "seconds": round(time.time() - t0, 3)})
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # paths inside a run relative to the file's folder (the run can move), the checkout's relative to it
        out_path.write_text(json.dumps(storage.recorded(result, out_path.parent), indent=2, sort_keys=True) + "\n")
    return result
