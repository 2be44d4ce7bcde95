"""Dedup quality evaluation: a corpus with planted near-duplicates and an exact ground truth.

`planted_corpus` takes real base texts and, for some of them, makes variants by random word edits
(replace a word by a word from another document, delete one, or insert one), one edit at a time,
stopping just before the exact Jaccard similarity of the variant's shingle set with its base falls
below the target level. So a variant planted at level 0.8 has Jaccard in [0.80, 0.80 + one edit).
`exact_pairs` then computes the exact Jaccard of EVERY pair of documents that shares at least one
shingle (an inverted index; pairs sharing none have Jaccard 0), which is the brute-force truth
including accidental similarity between variants of the same base or between base texts.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

from curation.refine.textutil import ngram_hashes, words

LEVELS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3)


def shingle_set(text: str, n: int) -> set[int]:
    return set(ngram_hashes(words(text), n).tolist())


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def make_variant(base: str, level: float, n: int, rng: random.Random, vocab: list[str]) -> tuple[str, float]:
    toks = base.split()
    ref = shingle_set(base, n)
    if level >= 1.0:
        return base, 1.0
    current, j = list(toks), 1.0
    for _ in range(10 * len(toks)):
        trial = list(current)
        op = rng.random()
        i = rng.randrange(len(trial))
        if op < 0.6:
            trial[i] = rng.choice(vocab)
        elif op < 0.8 and len(trial) > n + 1:
            del trial[i]
        else:
            trial.insert(i, rng.choice(vocab))
        jt = jaccard(ref, shingle_set(" ".join(trial), n))
        if jt < level:
            break
        current, j = trial, jt
    return " ".join(current), j


def planted_corpus(bases: list[str], *, dup_fraction: float = 0.3, max_variants: int = 3,
                   levels: tuple[float, ...] = LEVELS, ngram: int = 5, seed: int = 0) -> list[dict]:
    """Documents: every base once, plus 1..max_variants variants of a `dup_fraction` of the bases."""
    rng = random.Random(seed)
    vocab = sorted({w for b in bases[:200] for w in b.split()})
    docs = []
    for bi, base in enumerate(bases):
        docs.append({"id": f"b{bi:06d}", "text": base, "source": "planted", "metadata": {"base": bi, "level": 1.0}})
        if rng.random() < dup_fraction:
            for k in range(rng.randint(1, max_variants)):
                level = rng.choice(levels)
                text, j = make_variant(base, level, ngram, rng, vocab)
                docs.append({"id": f"b{bi:06d}v{k}", "text": text, "source": "planted",
                             "metadata": {"base": bi, "level": level, "planted_jaccard": round(j, 4)}})
    rng.shuffle(docs)
    return docs


def exact_pairs(texts: list[str], ngram: int, min_jaccard: float) -> dict[tuple[int, int], float]:
    """{(i, j): jaccard} for every pair i < j with exact Jaccard >= min_jaccard."""
    sets = [np.unique(ngram_hashes(words(t), ngram)) for t in texts]
    post: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for h in s.tolist():
            post[h].append(i)
    inter: dict[tuple[int, int], int] = defaultdict(int)
    for ids in post.values():
        if len(ids) > 1:
            for x in range(len(ids)):
                for y in range(x + 1, len(ids)):
                    inter[(ids[x], ids[y])] += 1
    out = {}
    for (i, j), c in inter.items():
        jac = c / (len(sets[i]) + len(sets[j]) - c)
        if jac >= min_jaccard:
            out[(i, j)] = jac
    return out


def evaluate(truth: dict[tuple[int, int], float], found: dict[tuple[int, int], float],
             cluster_of: dict[int, str]) -> dict:
    """Pair recall (a true pair is recovered when both documents end in the same cluster, so one
    of them is removed) and pair precision (reported duplicate pairs with true Jaccard >= threshold),
    plus recall by Jaccard band."""
    recovered = {p for p in truth if cluster_of.get(p[0]) is not None and cluster_of.get(p[0]) == cluster_of.get(p[1])}
    true_found = [p for p in found if p in truth]
    by_band = {}
    for lo, hi in [(0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.01)]:
        ps = [p for p, j in truth.items() if lo <= j < hi]
        if ps:
            by_band[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = {"pairs": len(ps), "recall": sum(p in recovered for p in ps) / len(ps)}
    return {"true_pairs": len(truth), "reported_pairs": len(found),
            "recall": len(recovered) / len(truth) if truth else 1.0,
            "precision": len(true_found) / len(found) if found else 1.0,
            "recall_by_jaccard": by_band}
