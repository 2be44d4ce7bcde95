"""How the report finds and reads what a run's stages wrote (manifests, shards, results, logs).

Sections only render; what they show comes through these readers.
"""

from __future__ import annotations

import csv
import itertools
from collections import defaultdict
from pathlib import Path

from minisigma.core.errors import UserError
from minisigma.core.manifest import read_json
from minisigma.core.shards import read_docs

MAX_DOCS = 50_000  # documents read for the mix and score plots (a sample of bigger runs)


SKIP_DIRS = {"rejects", ".parts", "report", "ckpt", "tb"}


class NotRun(Exception):
    """A section's inputs are absent: rendered as a 'not run' note."""


def walk(run: Path, pattern: str) -> list[Path]:
    return sorted(p for p in run.rglob(pattern) if not SKIP_DIRS.intersection(p.relative_to(run).parts[:-1]))


def rel(run: Path, p: Path) -> str:
    try:
        return str(p.relative_to(run)) or "."
    except ValueError:
        return str(p)


# ------------------------------------------------------------------------------------ data
def stage_manifests(run: Path) -> list[tuple[Path, dict]]:
    out = []
    for p in walk(run, "manifest.json"):
        try:
            m = read_json(p)
        except UserError:  # an unreadable file is left out
            continue
        c = m.get("counts") if isinstance(m, dict) else None
        if isinstance(c, dict) and "in" in c and "out" in c:
            out.append((p.parent, m))
    out.sort(key=lambda x: (x[1].get("started_at", ""), str(x[0])))
    return out


def _doc_shards(stage_dir: Path) -> list[Path]:
    return sorted(p for p in stage_dir.glob("*.jsonl.gz") if p.name[:5].isdigit())


def last_doc_stage(run: Path) -> Path | None:
    """The curated corpus: train_corpus/ or curated/ when present, else the last curation stage (by
    manifest time) whose outputs are document shards; synth's pair stages are not a corpus."""
    for name in ("train_corpus", "curated"):
        if _doc_shards(run / name):
            return run / name
    for d, _m in reversed(stage_manifests(run)):
        if "synth" in d.relative_to(run).parts:
            continue
        if _doc_shards(d):
            return d
    return None


def read_stage_docs(stage: Path, limit: int = MAX_DOCS) -> list[dict]:
    """The first `limit` documents of a stage directory; malformed lines are skipped (a report shows
    what it can)."""
    docs = (d for shard in _doc_shards(stage) for d in read_docs(shard, on_bad=_ignore))
    return list(itertools.islice(docs, limit))


def _ignore(reason: str) -> None:
    """Malformed lines are left out of the report's samples (`manifest verify` is where they count)."""


def doc_scores(d: dict) -> dict[str, float]:
    meta = d.get("metadata") or {}
    out = {}
    scores = meta.get("scores")
    if isinstance(scores, dict):
        for k, v in scores.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    for k, v in meta.items():
        if k.endswith("score") and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def read_metrics_csv(p: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with p.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            for k, v in row.items():
                if k and "loss" in k and v not in (None, ""):
                    try:
                        series[k].append((step, float(v)))
                    except ValueError:
                        pass
    return series


def cmdgen_summaries(run: Path) -> list[tuple[str, Path, dict]]:
    out = []
    for p in walk(run, "summary.json"):
        try:
            s = read_json(p)
        except UserError:  # an unreadable file is left out
            continue
        if isinstance(s, dict) and s.get("benchmark") == "cmdgen-mini":
            label = rel(run, p.parent)
            label = label[:-len("/cmdgen")] if label.endswith("/cmdgen") else label
            out.append((label, p.parent, s))
    return out


def _records(obj) -> list[dict]:
    if isinstance(obj, dict):
        for k in ("rows", "results", "records", "decode"):
            if isinstance(obj.get(k), list):
                return [r for r in obj[k] if isinstance(r, dict)]
        return []
    return [r for r in obj if isinstance(r, dict)] if isinstance(obj, list) else []


def _key(rec: dict, *prefixes: str) -> str | None:
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
    recs, src = [], []
    for p in walk(run, "*.json"):
        if not (p.name.startswith("attention") or p.name == "results.json"):
            continue
        try:
            obj = read_json(p)
        except UserError:  # an unreadable file is left out
            continue
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


def _rejects(stage_dir: Path, limit: int = 2000) -> list[dict]:
    out = []
    for p in sorted((stage_dir / "rejects").glob("*.jsonl.gz")):
        out += [r for r in read_stage_docs_file(p) if isinstance(r.get("doc"), dict)]
    return out[:limit]


def read_stage_docs_file(p: Path) -> list[dict]:
    return list(read_docs(p, on_bad=_ignore))