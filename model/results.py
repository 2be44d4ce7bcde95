"""Readers of what the model stages write, for the report (which only renders them):

    loss curves        model.train: Lightning's CSVLogger, <out>/logs/csv/version_N/metrics.csv
    CMDGen-mini        model.evaluation.cmdgen.score: <dir>/summary.json and <dir>/results.jsonl
    perplexity         model.evaluation.perplexity.evaluate_checkpoint: perplexity.json
    induction probe    model.evaluation.induction.evaluate_checkpoint: induction.json
    ablations          model.ablations.run: ablation.json

They sit apart from the writers so that reading a run loads neither torch nor Lightning (the
writers' modules import both at the top; `minisigma report` would wait ~20 s for them). Each finds its
files under a run by the names its writer uses; an unreadable file is left out (the report shows
what it can; `minisigma manifest verify` is where damage counts).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from minisigma.core.manifest import read_json_files
from minisigma.core.paths import find, rel


def read_metrics_csv(p: Path) -> dict[str, list[tuple[float, float]]]:
    """The loss series of one Lightning CSVLogger `metrics.csv` (columns step, *loss*): {column: [(step,
    value)]}; rows and cells that are not numbers are left out."""
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


def read_loss_curves(run: str | Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """The loss curves of every training run under `run` (`run` logs to <out>/logs/csv/version_N/
    metrics.csv): {training run label: {series: sorted (step, value)}}; the versions of one training
    run are its restarts, concatenated. The label is the run's directory relative to `run`."""
    runs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p in find(Path(run), "metrics.csv"):
        parts = p.relative_to(run).parts
        label = "/".join(parts[:parts.index("logs")]) if "logs" in parts else str(p.parent.relative_to(run))
        for k, pts in read_metrics_csv(p).items():
            runs[label or "."][k].extend(pts)
    return {label: {k: sorted(pts) for k, pts in series.items()} for label, series in runs.items()}


def read_summaries(run: str | Path) -> list[tuple[str, Path, dict]]:
    """Every CMDGen-mini `summary.json` under a run (what `score` writes): (label, its directory, the
    summary), the label being the directory relative to the run without a trailing "/cmdgen".
    Unreadable summaries are left out (the report shows what it can)."""
    out = []
    for p, s in read_json_files(run, "summary.json"):
        if isinstance(s, dict) and s.get("benchmark") == "cmdgen-mini":
            label = rel(Path(run), p.parent)
            out.append((label[:-len("/cmdgen")] if label.endswith("/cmdgen") else label, p.parent, s))
    return out


def read_cmdgen_results(cmdgen_dir: str | Path, limit: int) -> list[dict]:
    """The first `limit` rows of a `results.jsonl` (one per task); unparsable lines are skipped."""
    p = Path(cmdgen_dir) / "results.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines()[:limit]:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_perplexity(run: str | Path) -> list[tuple[str, dict]]:
    """Every `perplexity.json` under a run (what `evaluate_checkpoint` writes) with per-source
    results: (its directory relative to the run, the result). Unreadable files are left out."""
    out = []
    for p, r in read_json_files(run, "perplexity.json"):
        if isinstance(r, dict) and "per_source" in r:
            out.append((rel(Path(run), p.parent), r))
    return out


def read_induction(run: str | Path) -> list[tuple[str, dict]]:
    """Every `induction.json` under a run: (the model's directory relative to the run, the result).
    Unreadable files, or ones without both losses, are left out."""
    return [(rel(Path(run), p.parent), r) for p, r in read_json_files(run, "induction.json")
            if isinstance(r, dict) and {"loss_first", "loss_repeat"} <= set(r)]


def read_ablations(run: str | Path) -> tuple[list[dict], list[str]]:
    """The per-variant records of every `ablation*.json` under a run (`run` writes ablation.json: a
    list; a {"rows": [...]} object is read too): those with a variant (or name) and a mean, and the
    files they came from. Unreadable files are left out."""
    recs, src = [], []
    for p, obj in read_json_files(run, "ablation*.json"):
        rows = obj.get("rows") if isinstance(obj, dict) else obj
        rs = [r for r in rows if isinstance(r, dict) and (r.get("variant") or r.get("name")) is not None
              and r.get("mean") is not None] if isinstance(rows, list) else []
        if rs:
            recs += rs
            src.append(rel(Path(run), p))
    return recs, src
