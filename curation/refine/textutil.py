"""Text helpers shared by the refine stages: word splitting, n-gram hashing, a Document's metadata and scores."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import xxhash

from minisigma.core.document import Document

WORD_RE = re.compile(r"\w+")
# Tokens for decontamination: words and runs of punctuation (commands are full of "-", "|", "/").
TOKEN_RE = re.compile(r"\w+|[^\w\s]+")

_U64 = np.uint64
# Odd 64-bit multipliers that combine n consecutive token hashes into one n-gram hash
# (a polynomial hash with wrap-around, followed by the murmur3 finaliser).
_NGRAM_MULTS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                         0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB,
                         0xBF58476D1CE4E5B9, 0x2545F4914F6CDD1D, 0x9FB21C651E98DF25, 0x7FB5D329728EA185,
                         0x81DADEF4BC2DD44D, 0xCF8C3D9E7E2B1A43, 0xA24BAED4963EE407, 0x6A09E667F3BCC909],
                        dtype=_U64)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore), the unit of shingles and n-grams."""
    return WORD_RE.findall(text.lower())


def tokens(text: str) -> list[str]:
    return TOKEN_RE.findall(text.lower())


def fmix64(h: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finaliser (element-wise, wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xFF51AFD7ED558CCD)
        h = h ^ (h >> _U64(33))
        h = h * _U64(0xC4CEB9FE1A85EC53)
        return h ^ (h >> _U64(33))


def token_hashes(toks: list[str]) -> np.ndarray:
    """64-bit xxh3 hash of every token (one C call per token; the rest is vectorised)."""
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(t.encode("utf-8", "surrogatepass")) for t in toks), dtype=_U64, count=len(toks))


def ngram_hashes(toks: list[str], n: int) -> np.ndarray:
    """64-bit hashes of every window of `n` consecutive tokens (vectorised).

    A text with fewer than n tokens (but at least one) gives one hash of all its tokens, so short
    documents still get a signature. The hash of an n-gram depends only on its tokens, so equal
    n-grams in different documents hash equally.
    """
    if n > len(_NGRAM_MULTS):
        raise ValueError(f"n-gram size {n} > {len(_NGRAM_MULTS)} is not supported")
    th = token_hashes(toks)
    m = len(th)
    if m == 0:
        return th
    k = min(n, m)
    count = m - k + 1
    acc = np.zeros(count, dtype=_U64)
    with np.errstate(over="ignore"):
        for j in range(k):
            acc += th[j:j + count] * _NGRAM_MULTS[j]
    return fmix64(acc + _U64(k))


def ngram_hash_scalar(toks: list[str], n: int) -> int:
    """Reference (scalar) form of `ngram_hashes` for one window: used as a datasketch hashfunc in tests."""
    return int(ngram_hashes(list(toks), n)[0])


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def meta(doc: Document) -> dict:
    """The document's metadata, made an empty dict where a record had none (or not an object)."""
    if not isinstance(doc.metadata, dict):
        doc.metadata = {}
    return doc.metadata


def scores(doc: Document) -> dict:
    """metadata.scores, made where missing."""
    m = meta(doc)
    s = m.get("scores")
    if not isinstance(s, dict):
        s = {}
        m["scores"] = s
    return s
