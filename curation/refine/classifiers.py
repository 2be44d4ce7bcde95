"""fastText classifiers: document QUALITY and system-domain CATEGORY, trained by a command.

Quality. Positives are real curated documentation (the run's documents after the heuristic, language
and exact-dedup stages, or the shards named in the recipe). Negatives are made from other real
documents of the same pool by documented corruption procedures (`NEGATIVE_KINDS`):

* shuffled_words: the document's words in random order (fluent vocabulary, no syntax);
* navigation: a navigation stub: "Home | Docs | ..." bars and link lists built from real titles and
  headings, "Skip to content", "Previous | Next", copyright and cookie lines;
* spam: a keyword-stuffed template ("Buy cheap {kw} online", "best {kw} free download") filled
  with the most frequent content words of a real document;
* garbled: character-level garbling of a real document (substituted, dropped and duplicated
  characters, mojibake from a UTF-8 / Latin-1 round trip).

Category. Documents with a weak label in metadata.category (set by the source adapters), one of
CATEGORIES; labels with fewer than `min_docs_per_label` documents are left out of training.

Both hold out a deterministic fraction (by a hash of the document id, so a document and its
corruptions land on the same side), train fastText (single thread, fixed seed: reproducible), and
write model.bin plus classifier.json with per-label and macro precision/recall/F1 on the held-out
part and a description of the training data.

Training runs in a fresh interpreter (`train_fasttext`): fasttext-numpy2's trainer reads heap memory
it has not initialised when its input matrix is small (word_ngrams 1 without character n-grams sets
fastText's hash buckets to 0), so in a process whose heap already holds other data (torch,
datasketch, numpy arrays freed earlier) it stops with "Encountered NaN". In a fresh interpreter that
has imported only fasttext the result is the same on every run. Measured on a 120-line training file
with word_ngrams 1: 20 of 20 fresh processes gave identical model bytes; in one process, every second
run failed, and after importing torch and datasketch 12 of 12 runs failed.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Iterable

import xxhash

from minisigma.core.recipes import Section
from minisigma.core import storage
from minisigma.core.shards import atomic_write_json, iter_docs, read_docs

CATEGORIES = ["os_kernel", "networking", "storage_databases", "distributed_cloud", "gpu_accelerators", "security",
              "devops_tooling", "languages_compilers", "other"]
NEGATIVE_KINDS = {
    "shuffled_words": "the words of a real document in random order",
    "navigation": "navigation stub: menu bars and link lists built from real titles and headings, skip/next/"
                  "copyright/cookie lines",
    "spam": "keyword-stuffed spam template filled with the most frequent content words of a real document",
    "garbled": "character-level garbling of a real document (substitutions, drops, duplications, mojibake)",
}
_CLEAN = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z][A-Za-z_-]{3,}")


class FastTextParams(Section):
    epoch: int = 25
    lr: float = 0.5
    word_ngrams: int = 2
    dim: int = 64
    min_count: int = 1
    seed: int = 0
    max_words: int = 400  # words of each document given to fastText (train and predict)


class QualityTrainConfig(Section):
    positive_paths: list[str] = []  # shard files or stage directories; empty: the run's dedup_exact output
    negative_kinds: list[str] = list(NEGATIVE_KINDS)
    negatives_per_positive: float = 1.0
    max_positives: int = 5000
    min_words: int = 30
    heldout_fraction: float = 0.2
    fasttext: FastTextParams = FastTextParams()


class CategoryTrainConfig(Section):
    paths: list[str] = []
    min_docs_per_label: int = 5
    max_docs_per_label: int = 2000
    heldout_fraction: float = 0.2
    fasttext: FastTextParams = FastTextParams(epoch=40)


class ClassifiersConfig(Section):
    quality: QualityTrainConfig = QualityTrainConfig()
    category: CategoryTrainConfig = CategoryTrainConfig()


def ft_text(text: str, max_words: int) -> str:
    """The text as fastText sees it: one line, lower case, at most `max_words` words."""
    return " ".join(_CLEAN.sub(" ", text).lower().split()[:max_words])


def _heldout(doc_id: str, fraction: float) -> bool:
    return xxhash.xxh64_intdigest(doc_id.encode()) % 10_000 < fraction * 10_000


# --------------------------------------------------------------------------- negatives
def shuffled_words(text: str, rng: random.Random, **_) -> str:
    w = text.split()
    rng.shuffle(w)
    return " ".join(w)


def navigation(text: str, rng: random.Random, titles: list[str], **_) -> str:
    heads = [t for t in titles if t] or ["Home"]
    lines = ["Skip to content", " | ".join(["Home"] + rng.sample(heads, min(5, len(heads))) + ["Contact"])]
    for _ in range(rng.randint(6, 20)):
        lines.append("» " + rng.choice(heads))
    lines += ["« Previous | Next » | Index", f"© {rng.randint(2005, 2025)} All rights reserved. Privacy | Terms",
              "This site uses cookies. Accept | Decline"]
    return "\n".join(lines)


def spam(text: str, rng: random.Random, **_) -> str:
    counts = Counter(w.lower() for w in _WORD.findall(text))
    kws = [w for w, _ in counts.most_common(8)] or ["software"]
    templates = ["Buy cheap {k} online now!", "Best {k} free download {k} {k} crack", "{k} {k} top {k} deals",
                 "Click here for {k} discount", "Get {k} fast, {k} guaranteed, best price {k}",
                 "Download {k} full version free {k} serial key"]
    return " ".join(rng.choice(templates).format(k=rng.choice(kws)) for _ in range(rng.randint(8, 25)))


def garbled(text: str, rng: random.Random, **_) -> str:
    out = []
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789#@%&*"
    for ch in text[:4000]:
        r = rng.random()
        if r < 0.12:
            out.append(rng.choice(alphabet))
        elif r < 0.18:
            continue
        elif r < 0.22:
            out.append(ch * 2)
        else:
            out.append(ch)
    s = "".join(out)
    if rng.random() < 0.5:
        s = s.encode("utf-8", "replace").decode("latin-1", "replace")
    return s


CORRUPTIONS = {"shuffled_words": shuffled_words, "navigation": navigation, "spam": spam, "garbled": garbled}


def make_negatives(docs: list[dict], kinds: list[str], per_positive: float, seed: int) -> list[dict]:
    """Corrupted copies of real documents, cycling through `kinds`; deterministic given `seed`."""
    unknown = set(kinds) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"unknown negative kinds {sorted(unknown)} (known: {sorted(CORRUPTIONS)})")
    rng = random.Random(seed)
    titles = [str((d.get("metadata") or {}).get("title") or "") for d in docs]
    titles += [ln.strip() for d in docs[:500] for ln in d["text"].split("\n")[:30]
               if 2 <= len(ln.split()) <= 6 and ln.strip()[:1].isupper()]
    n = int(round(len(docs) * per_positive))
    negs = []
    for i in range(n):
        base = docs[i % len(docs)]
        kind = kinds[i % len(kinds)]
        negs.append({"id": base["id"], "kind": kind, "text": CORRUPTIONS[kind](base["text"], rng, titles=titles)})
    return negs


# --------------------------------------------------------------------------- training and metrics
def prf(y_true: list[str], y_pred: list[str], labels: Iterable[str]) -> dict:
    per = {}
    for lab in labels:
        tp = sum(t == lab and p == lab for t, p in zip(y_true, y_pred))
        fp = sum(t != lab and p == lab for t, p in zip(y_true, y_pred))
        fn = sum(t == lab and p != lab for t, p in zip(y_true, y_pred))
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[lab] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4),
                    "support": sum(t == lab for t in y_true)}
    labs = [lab for lab in per if per[lab]["support"]]
    macro = {k: round(sum(per[lab][k] for lab in labs) / len(labs), 4) if labs else 0.0
             for k in ("precision", "recall", "f1")}
    acc = sum(t == p for t, p in zip(y_true, y_pred)) / len(y_true) if y_true else 0.0
    return {"per_label": per, "macro": macro, "accuracy": round(acc, 4), "heldout_examples": len(y_true)}


# The child program: reads the training arguments (JSON) and writes the model; imports nothing else.
_TRAIN_CHILD = """import json, sys
import fasttext
args = json.load(open(sys.argv[1], encoding="utf-8"))
fasttext.train_supervised(**args).save_model(sys.argv[2])
"""


def train_fasttext(examples: list[tuple[str, str]], params: FastTextParams, model_path: str | Path):
    """Train a supervised fastText model on (label, text) examples in a fresh interpreter (see the
    module docstring), write it to `model_path` and return it loaded."""
    import fasttext

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fasttext-") as tmp:
        data = os.path.join(tmp, "train.txt")
        with open(data, "w", encoding="utf-8") as f:
            for label, text in examples:
                f.write(f"__label__{label} {ft_text(text, params.max_words)}\n")
        args = {"input": data, "epoch": params.epoch, "lr": params.lr, "wordNgrams": params.word_ngrams,
                "dim": params.dim, "minCount": params.min_count, "thread": 1, "seed": params.seed, "verbose": 0}
        with open(os.path.join(tmp, "args.json"), "w", encoding="utf-8") as f:
            json.dump(args, f)
        out = os.path.join(tmp, "model.bin")
        r = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, "args.json", "model.bin"], cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.isfile(out):
            tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"fastText training failed (exit {r.returncode}): {tail}")
        os.replace(out, model_path)
        storage.committed(model_path)  # a run at a URL: the workers of the classify stage pull it
    return fasttext.load_model(str(model_path))


def predict(model, text: str, max_words: int, k: int = 1) -> tuple[list[str], list[float]]:
    labels, probs = model.predict(ft_text(text, max_words), k=k)
    return [lab.replace("__label__", "") for lab in labels], [float(p) for p in probs]


def _load_docs(paths: list[str]) -> list[dict]:
    docs = []
    for p in paths:
        p = Path(p)
        docs.extend(iter_docs(p) if p.is_dir() else read_docs(p))
    return docs


def train_quality(docs: list[dict], c: QualityTrainConfig, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    t0 = time.time()
    pos = [d for d in docs if isinstance(d.get("text"), str) and len(d["text"].split()) >= c.min_words]
    pos = sorted(pos, key=lambda d: xxhash.xxh64_intdigest(str(d["id"]).encode()))[: c.max_positives]
    if len(pos) < 10:
        raise ValueError(f"quality classifier: only {len(pos)} positive documents with >= {c.min_words} words")
    negs = make_negatives(pos, c.negative_kinds, c.negatives_per_positive, c.fasttext.seed)
    rows = [("hq", d["text"], str(d["id"]), "positive") for d in pos] + [("lq", n["text"], str(n["id"]), n["kind"])
                                                                          for n in negs]
    train = [(lab, t) for lab, t, i, _ in rows if not _heldout(i, c.heldout_fraction)]
    test = [(lab, t, kind) for lab, t, i, kind in rows if _heldout(i, c.heldout_fraction)]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = train_fasttext(train, c.fasttext, out_dir / "model.bin")
    preds = [predict(model, t, c.fasttext.max_words)[0][0] for _, t, _ in test]
    metrics = prf([lab for lab, _, _ in test], preds, ["hq", "lq"])
    by_kind = {}
    for kind in sorted({k for _, _, k in test}):
        sel = [(lab, p) for (lab, _, k), p in zip(test, preds) if k == kind]
        by_kind[kind] = {"heldout": len(sel), "correct": round(sum(a == b for a, b in sel) / len(sel), 4)}
    info = {"classifier": "quality", "labels": {"hq": "positive: real curated documentation",
                                                "lq": "negative: corrupted real documentation"},
            "training_data": {"positives": len(pos), "negatives": dict(sorted(Counter(n["kind"] for n in negs).items())),
                              "negative_procedures": {k: NEGATIVE_KINDS[k] for k in c.negative_kinds},
                              "train_examples": len(train), "heldout_examples": len(test)},
            "heldout": metrics, "heldout_by_kind": by_kind, "config": c.model_dump(mode="json"),
            "seconds": round(time.time() - t0, 2)}
    atomic_write_json(out_dir / "classifier.json", storage.recorded(info, out_dir))  # paths: the run can move
    return info


def train_category(docs: list[dict], c: CategoryTrainConfig, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    t0 = time.time()
    labelled = [d for d in docs if isinstance(d.get("text"), str) and (d.get("metadata") or {}).get("category") in CATEGORIES]
    labelled.sort(key=lambda d: xxhash.xxh64_intdigest(str(d["id"]).encode()))
    counts = Counter(d["metadata"]["category"] for d in labelled)
    keep_labels = sorted(lab for lab, n in counts.items() if n >= c.min_docs_per_label)
    if len(keep_labels) < 2:
        raise ValueError(f"category classifier: need >= 2 labels with >= {c.min_docs_per_label} documents, "
                         f"have {dict(counts)}")
    taken: Counter = Counter()
    rows = []
    for d in labelled:
        lab = d["metadata"]["category"]
        if lab in keep_labels and taken[lab] < c.max_docs_per_label:
            taken[lab] += 1
            rows.append((lab, d["text"], str(d["id"])))
    train = [(lab, t) for lab, t, i in rows if not _heldout(i, c.heldout_fraction)]
    test = [(lab, t) for lab, t, i in rows if _heldout(i, c.heldout_fraction)]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = train_fasttext(train, c.fasttext, out_dir / "model.bin")
    preds = [predict(model, t, c.fasttext.max_words)[0][0] for _, t in test]
    metrics = prf([lab for lab, _ in test], preds, keep_labels)
    info = {"classifier": "category", "labels": keep_labels,
            "left_out_labels": {lab: counts.get(lab, 0) for lab in CATEGORIES if lab not in keep_labels},
            "training_data": {"weak_labels": "metadata.category from the source adapters",
                              "docs_per_label": dict(sorted(taken.items())), "train_examples": len(train),
                              "heldout_examples": len(test)},
            "heldout": metrics, "config": c.model_dump(mode="json"), "seconds": round(time.time() - t0, 2)}
    atomic_write_json(out_dir / "classifier.json", storage.recorded(info, out_dir))  # paths: the run can move
    return info


def train_all(docs: list[dict], c: ClassifiersConfig, out_dir: str | Path) -> dict:
    """Train both classifiers into out_dir/{quality,category}/ (paths in the config override `docs`)."""
    out_dir = Path(out_dir)
    q_docs = _load_docs(c.quality.positive_paths) if c.quality.positive_paths else docs
    c_docs = _load_docs(c.category.paths) if c.category.paths else docs
    return {"quality": train_quality(q_docs, c.quality, out_dir / "quality"),
            "category": train_category(c_docs, c.category, out_dir / "category")}


def load_info(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / "classifier.json").read_text())
