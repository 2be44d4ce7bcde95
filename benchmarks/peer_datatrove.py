"""datatrove's side of `minisigma bench minhash` and `minisigma bench curation`, run as a script in the
peer environment (benchmarks/common.py `peer_python`: datatrove with its own pins). It times itself
(after its imports and a warm-up) and prints one JSON line.

    peer_datatrove.py minhash TEXTS.json NGRAM NUM_BUCKETS HASHES_PER_BUCKET
    peer_datatrove.py extract WARC_DIR OUT_DIR KWARGS_JSON
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import time
from pathlib import Path


def _versions(*packages: str) -> dict:
    from importlib import metadata

    return {p: metadata.version(p) for p in packages}


def minhash(texts_path: str, ngram: int, num_buckets: int, hashes_per_bucket: int) -> dict:
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
    from datatrove.utils.word_tokenizers import WordTokenizer

    word = re.compile(r"\w+")

    class MatchedTokenizer(WordTokenizer):
        """The project's tokenisation (curation/refine/textutil.py `words`: \\w+ of the lower-cased text)
        in datatrove's tokenizer interface, in place of its spaCy English tokenizer."""

        def word_tokenize(self, text: str) -> list[str]:
            return word.findall(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in word.finditer(text)]

    texts = json.loads(Path(texts_path).read_text())
    # simplify_text reduced to lower-casing (and whitespace), so its tokens are exactly the project's words
    norm = TextNormConfig(lowercase=True, norm_whitespace=True, remove_punctuation=False,
                          norm_unicode_diacritics=False, norm_numbers=False)
    config = MinhashConfig(n_grams=ngram, num_buckets=num_buckets, hashes_per_bucket=hashes_per_bucket,
                           hash_config=HashConfig(precision=64, hash_fc="xxhash"), norm_config=norm)
    # datatrove takes a WordTokenizer instance in place of a language name (its API for custom
    # tokenizers), so its spaCy English tokenizer is never loaded and spaCy need not be installed
    step = MinhashDedupSignature(output_folder="/tmp", config=config, language=MatchedTokenizer())
    step.get_signature(step.get_shingles(texts[0]))  # warm-up (parameters, imports)
    t0 = time.perf_counter()
    n_sig = 0
    for t in texts:
        sh = step.get_shingles(t)
        if sh.size:
            step.get_signature(sh)
            n_sig += 1
    seconds = time.perf_counter() - t0
    # untimed: the shingle set of every document, to check the tokenisation matches the project's
    digests = []
    for t in texts:
        grams = sorted({" ".join(x) for x in ngrams(step.word_tokenizer.word_tokenize(simplify_text(t, norm)), ngram)})
        digests.append(hashlib.sha1("\n".join(grams).encode("utf-8", "surrogatepass")).hexdigest())
    return {"seconds": seconds, "signatures": n_sig, "shingle_digests": digests,
            "settings": {"tokenizer": "\\w+ of simplify_text(lowercase, whitespace)", "n_grams": ngram,
                         "hashes": num_buckets * hashes_per_bucket, "hash_fc": "xxhash (xxh64 of the n-gram string)",
                         "precision": 64, "versions": _versions("datatrove", "xxhash", "numpy")}}


def extract(warc_dir: str, out_dir: str, kwargs_json: str) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import JsonlWriter

    kwargs = json.loads(kwargs_json)
    out = Path(out_dir)
    ex = LocalPipelineExecutor(
        pipeline=[WarcReader(warc_dir, glob_pattern="*.warc.gz"), Trafilatura(**kwargs),
                  JsonlWriter(str(out / "data"), compression=None)],
        tasks=1, workers=1, logging_dir=str(out / "logs"), skip_completed=False)
    t0 = time.perf_counter()
    ex.run()
    seconds = time.perf_counter() - t0
    texts = {}
    for p in sorted((out / "data").glob("*.jsonl*")):
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt") as f:
            for line in f:
                d = json.loads(line)
                texts[d["metadata"].get("url") or d["id"]] = d["text"]
    return {"seconds": seconds, "texts": texts, "versions": _versions("datatrove", "trafilatura")}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "minhash":
        res = minhash(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "extract":
        res = extract(args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    print(json.dumps(res))
