"""MinHash signatures/s on one core, each peer at its best and equal to ours, same documents (man pages):

* the signing step on the same shingle hashes: ours (`SignatureComputer.signatures`) vs datasketch
  `MinHash(scheme="affine32", hashfunc=identity).update_batch` over our 32-bit shingle hashes (Python
  int lists made before the clock starts); the signatures must be identical.
* text to signature with the same tokenisation: ours (words -> 64-bit n-gram hashes -> signature) vs
  datatrove's `MinhashDedupSignature.get_shingles` + `get_signature` with a tokenizer matched to ours
  (`\\w+` of the lower-cased text), its own xxhash shingle hash, in a venv that meets datatrove's own
  `processing` pin xxhash<4 (benchmarks/common.py `peer_python`). The shingle sets must be identical.

Sides alternate (A B A B ...) for `--rounds` rounds; min and median are reported. Writes
benchmarks/results/minhash.json.

    python benchmarks/bench_minhash.py [--docs 2000 --rounds 5]      (or: minisigma bench minhash)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, peer_python, ratio, run_peer, summary, write_result  # noqa: E402
from benchmarks.realtext import man_pages, stdlib_docs  # noqa: E402

PEER_REQUIREMENTS = ["xxhash>=3.4,<4"]  # datatrove[processing] pins xxhash<4


def _identity(x):
    return x


def run(n_docs: int = 2000, rounds: int = 5, num_perm: int = 128, ngram: int = 5, peer: bool = True,
        name: str = "minhash") -> dict:
    import numpy as np
    from datasketch import MinHash

    from curation.refine.minhash import SignatureComputer
    from curation.refine.textutil import words

    started = machine()
    texts = [d["text"] for d in man_pages(n_docs)] or [d["text"] for d in stdlib_docs()]
    n = len(texts)
    comp = SignatureComputer(num_perm=num_perm, ngram=ngram)
    shingles = [comp.shingles(t) for t in texts]
    hashes32 = [comp.to32(s).tolist() for s in shingles]  # datasketch's input: made before its clock starts
    n_shingles = int(sum(len(s) for s in shingles))
    comp.signatures(shingles[:2])  # compile (or load) the kernel before timing

    out: dict[str, object] = {}

    def ours_sign():
        out["ours"] = comp.signatures(shingles)

    def datasketch_sign():
        sigs = np.empty((n, num_perm), dtype=np.uint32)
        for i, h in enumerate(hashes32):
            m = MinHash(num_perm=num_perm, seed=comp.seed, scheme="affine32", hashfunc=_identity)
            m.update_batch(h)
            sigs[i] = m.hashvalues
        out["datasketch"] = sigs

    def ours_text():
        sh = [comp.shingles(t) for t in texts]
        out["ours_text"] = comp.signatures(sh)

    sides = {"ours_sign": ours_sign, "datasketch_update_batch": datasketch_sign, "ours_text": ours_text}
    settings = {
        "ours": {"shingles": f"{ngram}-grams of \\w+ of the lower-cased text, 64-bit xxh3-based n-gram hash",
                 "scheme": "datasketch affine32 (murmur3 pre-mix of the low 32 bits, a*h+b mod 2^32)",
                 "num_perm": num_perm, "seed": comp.seed, "kernel": "numba, one pass"},
        "datasketch": {"api": "MinHash.update_batch", "scheme": "affine32", "num_perm": num_perm, "seed": comp.seed,
                       "hashfunc": "identity over our 32-bit shingle hashes"},
    }
    work = Path(tempfile.mkdtemp(prefix="bench-minhash-"))
    peer_res: list[dict] = []
    if peer:
        py = peer_python("datatrove-processing", PEER_REQUIREMENTS)
        (work / "texts.json").write_text(json.dumps(texts))
        script = Path(__file__).resolve().parent / "peer_datatrove.py"
        buckets = num_perm // 8

        def datatrove_text():
            r = run_peer(py, script, ["minhash", str(work / "texts.json"), str(ngram), str(buckets), "8"])
            peer_res.append(r)
            return r["seconds"]

        sides["datatrove_matched"] = datatrove_text
    times = alternate(sides, rounds)

    res = {"docs": n, "shingles": n_shingles, "rounds": rounds, "settings": settings,
           "sides": {k: summary(v, n) for k, v in times.items()}}
    same = int((out["ours"] == out["datasketch"]).all(axis=1).sum())
    same_text = int((out["ours"] == out["ours_text"]).all(axis=1).sum())
    res["agreement"] = {"identical_signatures_vs_datasketch": f"{same} of {n}",
                        "ours_text_equals_ours_sign": f"{same_text} of {n}"}
    res["ratios"] = {"sign_vs_datasketch_update_batch": ratio(res["sides"]["ours_sign"], res["sides"]["datasketch_update_batch"])}
    if peer:
        settings["datatrove"] = peer_res[-1]["settings"]
        ours_digests = []
        for t in texts:
            w = words(t)
            grams = sorted({" ".join(w[i:i + ngram]) for i in range(len(w) - ngram + 1)})
            ours_digests.append(hashlib.sha1("\n".join(grams).encode("utf-8", "surrogatepass")).hexdigest())
        same_sets = sum(a == b for a, b in zip(ours_digests, peer_res[-1]["shingle_digests"]))
        res["agreement"]["identical_shingle_sets_vs_datatrove"] = f"{same_sets} of {n}"
        res["ratios"]["text_vs_datatrove_matched"] = ratio(res["sides"]["ours_text"], res["sides"]["datatrove_matched"])

    print(f"MinHash signatures/s on one core: {n} man pages, {n_shingles:,} shingles, {ngram}-grams, {num_perm} hashes, "
          f"{rounds} alternating rounds, load average {started['load_average']}")
    for side, s in settings.items():
        print(f"  {side:<10} " + "; ".join(f"{k}: {v}" for k, v in s.items()))
    print(f"  {'side':<26}{'best/s':>10}{'median/s':>10}")
    for k, s in res["sides"].items():
        print(f"  {k:<26}{s['per_s_best']:>10,.0f}{s['per_s_median']:>10,.0f}")
    for k, v in res["agreement"].items():
        print(f"  {k}: {v}")
    targets = {"sign_vs_datasketch_update_batch": 2.0, "text_vs_datatrove_matched": 3.0}
    for k, r in res["ratios"].items():
        print(f"  ratio {k}: {r['best']:.2f}x best, {r['median']:.2f}x median (target >= {targets[k]}x)")
    write_result(name, res, ("numpy", "numba", "datasketch", "datatrove", "xxhash"), started)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-peer", action="store_true", help="skip datatrove (no peer environment)")
    ap.add_argument("--name", default="minhash", help="the result's name: benchmarks/results/NAME.json")
    a = ap.parse_args()
    run(a.docs, a.rounds, peer=not a.no_peer, name=a.name)
