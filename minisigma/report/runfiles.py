"""What the report reads itself: the files of producers that have no reader of their own below it.

Every other section reads a stage's outputs through that stage's own reader, in the domain module
that writes them (curation.refine.pipeline: the corpus, its per-source counts and scores;
synth.pipeline: pairs and rewrites; model.train: loss curves; model.evaluation.cmdgen and
.perplexity: results; model.ablations: ablation records; minisigma.core.manifest: stage manifests).
Two producers sit outside that order, so their files are read here:
- `minisigma reproduce` (reproduce.json, eval/answers.json) sits above the report in the layers: it
  builds the report, so the report cannot import it;
- `minisigma bench attention` writes results.json from benchmarks/bench_attention.py, a script
  outside the installed package.
"""

from __future__ import annotations

from pathlib import Path

from minisigma.core.manifest import read_json, read_json_files
from minisigma.core.paths import find, rel

MAX_DOCS = 50_000  # documents read for the mix and score plots (a sample of bigger runs)


class NotRun(Exception):
    """A section's inputs are absent: rendered as a 'not run' note."""


def read_reproduce_state(run: Path) -> dict:
    """<run>/reproduce.json: the status and time of every stage of `minisigma reproduce`."""
    p = run / "reproduce.json"
    if not p.is_file():
        raise NotRun("no reproduce.json (this run was not made by `minisigma reproduce`)")
    return read_json(p)


def read_answers(run: Path) -> dict:
    """The answers.json `minisigma reproduce` writes after evaluation (the paper's questions)."""
    found = find(run, "answers.json")
    if not found:
        raise NotRun("no answers.json (written by `minisigma reproduce` after evaluation)")
    return read_json(found[0])


def _records(obj) -> list[dict]:
    if isinstance(obj, dict):
        for k in ("rows", "results", "records", "decode"):
            if isinstance(obj.get(k), list):
                return [r for r in obj[k] if isinstance(r, dict)]
        return []
    return [r for r in obj if isinstance(r, dict)] if isinstance(obj, list) else []


def key_of(rec: dict, *prefixes: str) -> str | None:
    """The first key of `rec` starting with one of `prefixes` (in their order)."""
    for p in prefixes:
        for k in rec:
            if k.lower().startswith(p):
                return k
    return None


def _bench_attention_records(obj: dict) -> list[dict]:
    """Flat records from `minisigma bench attention`'s results.json: per decode row and variant,
    the KV-cache bytes held at that context (per-token bytes x context x batch) and the latency."""
    kv = obj.get("kv_bytes_per_token_bf16") or {}
    out = []
    for row in obj.get("decode") or []:
        for variant, ms in (row.get("layer_ms") or {}).items():
            per_tok = kv.get(variant)
            out.append({"variant": variant, "batch": row.get("batch"), "context": row.get("context"),
                        "kv_bytes": None if per_tok is None else per_tok * row["context"] * (row.get("batch") or 1),
                        "decode_ms": ms, "kernel_ms": (row.get("kernel_ms") or {}).get(variant)})
    return out


def attention_records(run: Path) -> tuple[list[dict], list[str]]:
    """Records of `minisigma bench attention` (results.json) or any attention*.json list of records."""
    recs, src = [], []
    files = sorted([*read_json_files(run, "attention*.json"), *read_json_files(run, "results.json")],
                   key=lambda f: f[0])
    for p, obj in files:
        if isinstance(obj, dict) and "decode" in obj and "kv_bytes_per_token_bf16" in obj:
            rs = _bench_attention_records(obj)
        elif p.name.startswith("attention"):
            rs = _records(obj)
        else:
            continue
        if rs:
            recs += rs
            src.append(rel(run, p))
    return recs, src
