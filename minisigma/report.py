"""`minisigma report RUN_DIR`: one static HTML page (plots embedded as PNG) describing a run.

Every section looks for its inputs anywhere under the run directory and says "not run" when they
are missing, or what could not be read when they are malformed; one bad input never stops the
report. Inputs, by section:

- Data funnel        every stage's ``manifest.json`` with ``counts {in, out, dropped{reason: n},
                     quarantined{reason: n}, tokens_in, tokens_out}`` (minisigma/manifest.py)
- Category / source  documents of the last curation stage (``NNNNN.jsonl.gz``): ``source`` and
  mix, quality      ``metadata.category``; numeric ``metadata.scores{name: value}`` (or metadata
                     keys ending in ``score``) for the histograms
- Loss curves        Lightning CSV logs ``**/metrics.csv`` (columns ``step``, ``train_loss``, ``val_loss``)
- CMDGen-mini        ``**/summary.json`` with ``"benchmark": "cmdgen-mini"`` and its ``results.jsonl``
                     (model/evaluation/cmdgen.py)
- Perplexity         ``**/perplexity.json`` (model/evaluation/perplexity.py)
- Attention          ``results.json`` of ``minisigma bench attention`` (``kv_bytes_per_token_bf16``
  efficiency         and ``decode`` rows), or ``**/attention*.json``: records with a variant name,
                     context length, KV-cache bytes and decode latency (keys recognised by name:
                     ``variant|name|model``, ``context|ctx``, ``kv_bytes*``, ``decode_ms*|latency_ms*``),
                     as a list or under ``rows``/``results``
- Ablations          ``**/ablation*.json``: records with a ``variant`` (or ``name``) and ``mean``
                     (optional ``std``, ``n``/``seeds``, ``metric``), shown next to the paper's
                     numbers (the Sigma paper, arXiv 2501.13629, Tables 1-4)
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import gzip
import html
import io
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Iterable

from curation.sources.types import TABLE9, by_type
from minisigma.core.errors import UserError

MAX_DOCS = 50_000  # documents read for the mix and score plots (a sample of bigger runs)
SKIP_DIRS = {"rejects", ".parts", "report", "ckpt", "tb"}

# The paper's ablations (average of 9 zero-shot benchmarks, ~1B params, 100B tokens; higher is better).
PAPER_ABLATIONS = [
    ("Table 1", "mha", "MHA 32/32 heads", 52.40),
    ("Table 1", "v_heads_half", "V heads 32 -> 16", 51.74),
    ("Table 1", "k_heads_half", "K heads 32 -> 16", 52.83),
    ("Table 1", "gqa16", "GQA 16/16", 52.14),
    ("Table 1", "gqa16_v4", "GQA16, V heads -> 4", 51.76),
    ("Table 1", "gqa16_k4", "GQA16, K heads -> 4", 51.97),
    ("Table 1", "gqa4", "GQA 4/4", 51.66),
    ("Table 1", "gqa4_v1", "GQA4, V heads -> 1", 51.03),
    ("Table 1", "gqa4_k1", "GQA4, K heads -> 1", 51.67),
    ("Table 2", "mha_half_k", "MHA, half K width", 52.56),
    ("Table 2", "gqa16_half_k", "GQA16, half K width", 52.06),
    ("Table 2", "gqa4_half_k", "GQA4, half K width", 51.92),
    ("Table 3", "mha_sel_v", "MHA, selective V top-100", 52.10),
    ("Table 3", "gqa16_sel_v", "GQA16, selective V top-100", 52.08),
    ("Table 3", "gqa4_sel_v", "GQA4, selective V top-100", 51.67),
    ("Table 4", "gqa16_augq", "GQA16 + AugQ (d_aug 3072)", 53.38),
    ("Table 4", "gqa16_augq_4096", "GQA16 + AugQ (d_aug 4096)", 52.93),
    ("Table 4", "gqa16_augq_5632", "GQA16 + AugQ (d_aug 5632)", 53.07),
]

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:26px;margin-bottom:4px} h2{font-size:20px;border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
.meta{color:#666;font-size:13px} .notrun{color:#8a6d3b;background:#fcf8e3;padding:8px 12px;border-radius:4px}
.error{color:#a94442;background:#f2dede;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} img{max-width:100%;display:block;margin:8px 0}
code{font-size:12px;background:#f6f6f6}
"""

# Marks <body data-images="loaded/total"> once every plot has decoded: what the browser test reads.
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot');
  var ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0) ok += 1; });
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


class NotRun(Exception):
    """A section's inputs are absent: rendered as a 'not run' note."""


# ------------------------------------------------------------------------------------ helpers
def esc(x) -> str:
    return html.escape(str(x))


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:,.{digits}f}" if abs(x) < 1e6 else f"{x:.3g}"
    return esc(x)


def table(headers: list[str], rows: Iterable[list], left: int = 1) -> str:
    h = "".join(f'<th class="{"l" if i < left else ""}">{esc(c)}</th>' for i, c in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, Raw) else fmt(c)}</td>'
                                      for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{h}</tr>{''.join(body)}</table>"


class Raw(str):
    """Already-escaped HTML for a table cell."""


def png(fig) -> str:
    """A matplotlib figure as an embedded <img>."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def figure(w: float = 10, h: float = 3.6, ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(w, h))
    return fig, axes


def walk(run: Path, pattern: str) -> list[Path]:
    return sorted(p for p in run.rglob(pattern) if not SKIP_DIRS.intersection(p.relative_to(run).parts[:-1]))


def read_json(p: Path):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not readable JSON ({e})") from None


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
        except ValueError:
            continue
        c = m.get("counts") if isinstance(m, dict) else None
        if isinstance(c, dict) and "in" in c and "out" in c:
            out.append((p.parent, m))
    out.sort(key=lambda x: (x[1].get("started_at", ""), str(x[0])))
    return out


def section_funnel(run: Path) -> str:
    stages = stage_manifests(run)
    if not stages:
        raise NotRun("no stage manifests (manifest.json with counts) under the run")
    names = [m.get("stage") or d.name for d, m in stages]
    c = [m["counts"] for _, m in stages]
    fig, (a1, a2, a3) = figure(12, 3.8, 3)
    x = range(len(names))
    a1.bar([i - 0.2 for i in x], [k["in"] for k in c], 0.4, label="in")
    a1.bar([i + 0.2 for i in x], [k["out"] for k in c], 0.4, label="out")
    a1.set_title("documents per stage")
    a1.legend()
    a2.bar([i - 0.2 for i in x], [k.get("tokens_in", 0) for k in c], 0.4, label="in")
    a2.bar([i + 0.2 for i in x], [k.get("tokens_out", 0) for k in c], 0.4, label="out")
    unit = next((k.get("token_unit") for k in c if k.get("token_unit")), "tokens")
    a2.set_title(f"tokens per stage ({unit.split()[0]})" if unit else "tokens per stage")
    a2.legend()
    def lost(k: dict, r: str) -> int:
        return k.get("dropped", {}).get(r, 0) + k.get("quarantined", {}).get(r, 0)

    reasons = {r for k in c for r in list(k.get("dropped", {})) + list(k.get("quarantined", {}))}
    totals = {r: sum(lost(k, r) for k in c) for r in reasons}
    # the 8 largest reasons by name, the rest as one bar segment (a legend of 30 hides the plot;
    # the table below lists every reason)
    top = sorted(totals, key=lambda r: (-totals[r], r))[:8]
    rest = sorted(set(totals) - set(top))
    series = [(r, [lost(k, r) for k in c]) for r in top]
    if rest:
        series.append((f"{len(rest)} other reasons", [sum(lost(k, r) for r in rest) for k in c]))
    bottom = [0] * len(names)
    for label, vals in series:
        a3.bar(list(x), vals, 0.6, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a3.set_title("dropped + quarantined, by reason")
    if series:
        a3.legend(fontsize=6, framealpha=0.8)
    for a in (a1, a2, a3):
        a.set_xticks(list(x))
        a.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    rows = []
    for (d, m), name, k in zip(stages, names, c):
        drops = ", ".join(f"{r}={n:,}" for r, n in sorted(k.get("dropped", {}).items(), key=lambda t: -t[1])) or "-"
        quar = ", ".join(f"{r}={n:,}" for r, n in sorted(k.get("quarantined", {}).items(), key=lambda t: -t[1])) or "-"
        rows.append([name, k["in"], k["out"], k.get("tokens_in"), k.get("tokens_out"), Raw(esc(drops)), Raw(esc(quar)),
                     m.get("seconds")])
    return png(fig) + table(["stage", "docs in", "docs out", "tokens in", "tokens out", "dropped", "quarantined",
                             "seconds"], rows, left=1)


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
    docs = []
    for shard in _doc_shards(stage):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                if len(docs) >= limit:
                    return docs
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(d, dict):
                    docs.append(d)
    return docs


def section_mix(run: Path) -> str:
    stage = last_doc_stage(run)
    if stage is None:
        raise NotRun("no curated document shards under the run")
    docs = read_stage_docs(stage)
    if not docs:
        raise NotRun(f"{rel(run, stage)}: no documents")
    cat_docs, cat_words, src_docs, src_words = Counter(), Counter(), Counter(), Counter()
    for d in docs:
        words = len(str(d.get("text", "")).split())
        cat = (d.get("metadata") or {}).get("category") or "uncategorised"
        src = d.get("source") or "unknown"
        cat_docs[cat] += 1
        cat_words[cat] += words
        src_docs[src] += 1
        src_words[src] += words
    fig, (a1, a2) = figure(12, 3.8, 2)
    for ax, docs_c, words_c, title in ((a1, cat_docs, cat_words, "category"), (a2, src_docs, src_words, "source")):
        keys = [k for k, _ in words_c.most_common(15)]
        tot_d, tot_w = sum(docs_c.values()), sum(words_c.values()) or 1
        y = range(len(keys))
        ax.barh([i + 0.2 for i in y], [100 * docs_c[k] / tot_d for k in keys], 0.4, label="% documents")
        ax.barh([i - 0.2 for i in y], [100 * words_c[k] / tot_w for k in keys], 0.4, label="% words")
        ax.set_yticks(list(y))
        ax.set_yticklabels(keys, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{title} mix")
        ax.legend(fontsize=8)
    note = f'<p class="meta">{len(docs):,} documents of stage <code>{esc(rel(run, stage))}</code>' + \
        (f" (first {MAX_DOCS:,})" if len(docs) >= MAX_DOCS else "") + "</p>"
    rows = [[k, cat_docs[k], cat_words[k]] for k, _ in cat_words.most_common()]
    return note + png(fig) + table(["category", "documents", "words"], rows)


OFFLINE_MATERIAL = {  # what the package registries offer of each type (README "The embedded default")
    "papers": "Debian technical PDFs (systemtap-doc, mpich-doc, drbd-doc, slurm-wlm-doc) through the PDF path",
    "arxiv": "none offline: no Debian or PyPI package found ships arXiv metadata records",
    "blogs": "python3.11-doc's What's New articles through the blogs adapter (no package ships a blog feed)",
    "stackexchange": "none offline: no Debian or PyPI package found ships Stack Exchange posts",
}


def section_sources(run: Path) -> str:
    """Documents and tokens (whitespace words, the unit of curation manifests) per source type of
    the curated corpus, next to the paper's Table 9."""
    found = [p.parent for p in walk(run, "manifest.json") if p.parent.name == "curated"]
    if not found and (stage := last_doc_stage(run)) is not None:
        found = [stage]
    if not found:
        raise NotRun("no curated corpus under the run")
    rows, notes = [], []
    for stage in found:
        mp = stage / "manifest.json"
        by_source = ((read_json(mp) if mp.is_file() else {}).get("counts") or {}).get("by_source")
        if not isinstance(by_source, dict):  # a manifest older than the per-source counts: count the shards
            by_source = {}
            for d in read_stage_docs(stage):
                n = by_source.setdefault(str(d.get("source") or "unknown"), {"docs": 0, "tokens": 0})
                n["docs"] += 1
                n["tokens"] += len(str(d.get("text", "")).split())
        types = by_type(by_source)
        four = sum(types.get(t, {}).get("tokens", 0) for t, *_ in TABLE9) or 1
        paper_total = sum(tok for *_, tok in TABLE9)
        for t, row, raw, tok in TABLE9:
            n = types.get(t, {"docs": 0, "tokens": 0, "sources": []})
            rows.append([row, ", ".join(n["sources"]) or "-", n["docs"], n["tokens"],
                         f"{100 * n['tokens'] / four:.1f}%", raw, f"{tok / 1e9:.1f}B", f"{100 * tok / paper_total:.1f}%"])
            if not n["docs"]:
                notes.append(f"{row}: no documents in this run ({OFFLINE_MATERIAL[t]})")
        other = types.get("other")
        if other:
            rows.append(["not one of the four (documentation, man pages, ...)", ", ".join(other["sources"]),
                         other["docs"], other["tokens"], "-", "-", "-", "-"])
        present = sum(1 for t, *_ in TABLE9 if types.get(t, {}).get("docs"))
        notes.insert(0, f"<code>{esc(rel(run, stage))}</code>: {present} of the paper's 4 source types present")
    head = "".join(f'<p class="meta">{n if n.startswith("<code>") else esc(n)}</p>' for n in notes)
    return head + table(["source type (Table 9)", "sources", "documents", "tokens (words)", "share of the four",
                         "paper raw size", "paper tokens", "paper share"], rows)


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


def section_quality(run: Path) -> str:
    best = None
    for d, _m in reversed(stage_manifests(run)):  # the last stage whose documents carry scores
        if _doc_shards(d) and any(doc_scores(x) for x in read_stage_docs(d, 2000)):
            best = d
            break
    if best is None:
        raise NotRun("no documents with quality scores (metadata.scores) under the run")
    values: dict[str, list[float]] = defaultdict(list)
    for doc in read_stage_docs(best):
        for k, v in doc_scores(doc).items():
            values[k].append(v)
    names = sorted(values)[:6]
    fig, axes = figure(4 * len(names), 3.2, len(names))
    axes = axes if len(names) > 1 else [axes]
    for ax, k in zip(axes, names):
        ax.hist(values[k], bins=30, color="#1f77b4")
        ax.set_title(k)
        ax.set_ylabel("documents")
    rows = [[k, len(v), min(v), sum(v) / len(v), max(v)] for k, v in sorted(values.items())]
    return (f'<p class="meta">scores of stage <code>{esc(rel(run, best))}</code></p>' + png(fig) +
            table(["score", "documents", "min", "mean", "max"], rows))


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


def section_loss(run: Path) -> str:
    files = walk(run, "metrics.csv")
    if not files:
        raise NotRun("no training logs (Lightning metrics.csv) under the run")
    runs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for p in files:  # logs/csv/version_N/metrics.csv: versions of one run are restarts, concatenated
        parts = p.relative_to(run).parts
        label = "/".join(parts[:parts.index("logs")]) if "logs" in parts else str(p.parent.relative_to(run))
        for k, pts in read_metrics_csv(p).items():
            runs[label or "."][k].extend(pts)
    fig, ax = figure(10, 4)
    rows = []
    for label, series in sorted(runs.items()):
        for k, pts in sorted(series.items()):
            pts = sorted(pts)
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o" if "val" in k else None,
                    markersize=3, label=f"{label}: {k}")
            rows.append([label, k, len(pts), pts[0][1], pts[-1][1], min(v for _, v in pts)])
    if not rows:
        raise NotRun("training logs hold no loss values yet")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("training and validation loss")
    ax.legend(fontsize=7)
    return png(fig) + table(["run", "series", "points", "first", "last", "min"], rows, left=2)


def cmdgen_summaries(run: Path) -> list[tuple[str, Path, dict]]:
    out = []
    for p in walk(run, "summary.json"):
        try:
            s = read_json(p)
        except ValueError:
            continue
        if isinstance(s, dict) and s.get("benchmark") == "cmdgen-mini":
            label = rel(run, p.parent)
            label = label[:-len("/cmdgen")] if label.endswith("/cmdgen") else label
            out.append((label, p.parent, s))
    return out


METRIC_NAMES = [("accuracy", "Accuracy"), ("exact_match", "Exact match"), ("success", "Success"),
                ("cmd_score", "CMD score"), ("output_score", "Output score"), ("calibration", "Calibration")]


def section_cmdgen(run: Path) -> str:
    found = cmdgen_summaries(run)
    if not found:
        raise NotRun("no CMDGen-mini results (summary.json from `minisigma eval`) under the run")
    parts = []
    def executable(b: dict) -> str | None:
        # Success and Output score are computed on the executable share: the tasks whose reference
        # ran with status ok in the sandbox (model/evaluation/metrics.summarize)
        return f"{b['executable']}/{b['tasks']}" if "executable" in b else None

    rows = [[label] + [s["overall"].get(k) for k, _ in METRIC_NAMES] + [s["overall"].get("tasks"), executable(s["overall"])]
            for label, _, s in found]
    parts.append(table(["model"] + [n for _, n in METRIC_NAMES] + ["tasks", "executable"], rows))
    suites = [[label, suite] + [b.get(k) for k, _ in METRIC_NAMES] + [b.get("tasks"), executable(b),
                                                                      ", ".join(f"{k} {v}" for k, v in b.get("dropped", {}).items())]
              for label, _, s in found for suite, b in s.get("per_suite", {}).items()]
    if suites:
        parts.append("<h3>per suite (Success and Output score on the executable share)</h3>" +
                     table(["model", "suite"] + [n for _, n in METRIC_NAMES] + ["tasks", "executable", "dropped"],
                           suites, left=2))
    tools = sorted({t for _, _, s in found for t in s.get("per_tool", {})})
    fig, ax = figure(max(8, 0.6 * len(tools) * len(found) + 2), 3.8)
    w = 0.8 / len(found)
    for j, (label, _, s) in enumerate(found):
        pt = s.get("per_tool", {})
        ax.bar([i + j * w for i in range(len(tools))], [(pt.get(t) or {}).get("accuracy") or 0 for t in tools], w,
               label=label)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(tools))])
    ax.set_xticklabels(tools, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("CMDGen-mini accuracy per tool")
    ax.legend(fontsize=8)
    parts.append(png(fig))
    label, d, s = found[0]
    per_tool = [[t] + [v.get(k) for k, _ in METRIC_NAMES] + [v.get("tasks")] for t, v in s.get("per_tool", {}).items()]
    parts.append(f"<h3>per tool: {esc(label)}</h3>" + table(["tool"] + [n for _, n in METRIC_NAMES] + ["tasks"], per_tool))
    res = d / "results.jsonl"
    if res.is_file():
        sample = []
        for line in res.read_text(encoding="utf-8").splitlines()[:12]:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            sample.append([r.get("tool"), r.get("task"), Raw(f"<code>{esc(r.get('reference'))}</code>"),
                           Raw(f"<code>{esc(r.get('generated'))}</code>"), r.get("generated_status"),
                           r.get("cmd_score"), r.get("accuracy")])
        parts.append(f"<h3>sample tasks: {esc(label)}</h3>" +
                     table(["tool", "task", "reference", "generated", "status", "CMD score", "accurate"], sample, left=4))
    return "".join(parts)


def section_perplexity(run: Path) -> str:
    found = []
    for p in walk(run, "perplexity.json"):
        try:
            r = read_json(p)
        except ValueError:
            continue
        if isinstance(r, dict) and "per_source" in r:
            found.append((rel(run, p.parent), r))
    if not found:
        raise NotRun("no perplexity results (perplexity.json from `minisigma eval`) under the run")
    sources = sorted({s for _, r in found for s in r["per_source"]})
    fig, ax = figure(max(8, 0.6 * len(sources) * len(found) + 2), 3.6)
    w = 0.8 / len(found)
    for j, (label, r) in enumerate(found):
        ax.bar([i + j * w for i in range(len(sources))],
               [(r["per_source"].get(s) or {}).get("bpb") or 0 for s in sources], w, label=label)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(sources))])
    ax.set_xticklabels(sources, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("held-out bits per byte per source")
    ax.legend(fontsize=8)
    rows = []
    for label, r in found:
        for group in ("overall",):
            o = r[group]
            rows.append([label, "all", o.get("docs"), o.get("tokens"), o.get("loss"), o.get("ppl"), o.get("bpb")])
        for s, o in sorted(r["per_source"].items()):
            rows.append([label, f"source: {s}", o.get("docs"), o.get("tokens"), o.get("loss"), o.get("ppl"), o.get("bpb")])
        for c, o in sorted(r.get("per_category", {}).items()):
            rows.append([label, f"category: {c}", o.get("docs"), o.get("tokens"), o.get("loss"), o.get("ppl"),
                         o.get("bpb")])
    return png(fig) + table(["model", "documents", "docs", "tokens", "loss", "ppl", "bpb"], rows, left=2)


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
        except ValueError:
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


def section_attention(run: Path) -> str:
    recs, src = attention_records(run)
    if not recs:
        raise NotRun("no attention benchmark results (results.json of `minisigma bench attention`) under the run")
    r0 = recs[0]
    kname = _key(r0, "variant", "name", "model", "config", "attn")
    kctx = _key(r0, "context", "ctx", "seq")
    kkv = _key(r0, "kv_bytes", "kv")
    klat = _key(r0, "decode_ms", "latency_ms", "decode", "latency", "ms")
    kbatch = _key(r0, "batch")
    if not (kname and kctx and (kkv or klat)):
        raise ValueError(f"{', '.join(src)}: records lack a variant name, context length and KV bytes / latency")
    series: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        label = str(r.get(kname)) + (f" (batch {r.get(kbatch)})" if kbatch and r.get(kbatch) is not None else "")
        series[label].append(r)
    fig, (a1, a2) = figure(12, 3.8, 2)
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r.get(kctx) or 0)
        ctx = [r.get(kctx) for r in rs]
        if kkv:
            a1.plot(ctx, [r.get(kkv) for r in rs], marker="o", label=label)
        if klat:
            a2.plot(ctx, [r.get(klat) for r in rs], marker="o", label=label)
    for a, t, y in ((a1, "KV cache", kkv), (a2, "decode latency", klat)):
        a.set_xscale("log", base=2)
        a.set_xlabel("context (tokens)")
        a.set_ylabel(y or "-")
        a.set_title(t)
        a.legend(fontsize=7)
    a1.set_yscale("log")
    cols = [c for c in (kname, kbatch, kctx, kkv, klat) if c] + [k for k in r0 if k == "kernel_ms"]
    rows = [[r.get(c) for c in cols] for r in recs]
    return (f'<p class="meta">from {", ".join(f"<code>{esc(s)}</code>" for s in src)}</p>' + png(fig) +
            table(cols, rows))


def section_ablation(run: Path) -> str:
    recs, src = [], []
    for p in walk(run, "ablation*.json"):
        try:
            rs = _records(read_json(p))
        except ValueError:
            continue
        rs = [r for r in rs if (r.get("variant") or r.get("name")) is not None and r.get("mean") is not None]
        if rs:
            recs += rs
            src.append(rel(run, p))
    ours = {str(r.get("variant") or r.get("name")).lower(): r for r in recs}
    rows = []
    for tab, key, label, score in PAPER_ABLATIONS:
        r = ours.pop(key, None)
        mine = "-" if r is None else _mean_std(r)
        rows.append([tab, label, score, Raw(esc(mine)), (r or {}).get("metric", "")])
    for key, r in sorted(ours.items()):  # the run's variants without a paper counterpart
        rows.append(["this run", key, None, Raw(esc(_mean_std(r))), r.get("metric", "")])
    note = ('<p class="notrun">not run: no ablation results (ablation*.json) under the run; '
            'the paper\'s numbers are shown alone.</p>' if not recs else
            f'<p class="meta">from {", ".join(f"<code>{esc(s)}</code>" for s in src)}; '
            "the miniature's metric differs from the paper's (9-benchmark zero-shot average, higher is better): "
            "compare orderings, not values</p>")
    return note + table(["paper", "variant", "paper score", "this run (mean ± std, n)", "metric"], rows, left=2)


def _mean_std(r: dict) -> str:
    n = r.get("n") or (len(r["seeds"]) if isinstance(r.get("seeds"), list) else None)
    s = f"{r['mean']:.4f}"
    if r.get("std") is not None:
        s += f" ± {r['std']:.4f}"
    if n:
        s += f" (n={n})"
    return s


def section_questions(run: Path) -> str:
    """The paper's two questions in miniature, from `minisigma reproduce`'s eval/answers.json."""
    found = walk(run, "answers.json")
    if not found:
        raise NotRun("no answers.json (written by `minisigma reproduce` after evaluation)")
    parts = []
    for q in read_json(found[0])["questions"]:
        a, b = q["sigma_results"], q["baseline_results"]
        rows = [[label, r.get("params"), r.get("kv_bytes_per_token_bf16"), r.get("val_bpb"), r.get("cmdgen_accuracy"),
                 r.get("cmdgen_cmd_score")] for label, r in ((q["sigma"], a), (q["baseline"], b))]
        verdict = []
        if q.get("kv_cache_reduction") is not None:
            verdict.append(f"KV cache per token {q['kv_cache_reduction']:.1%} smaller")
        if q.get("bpb_delta") is not None:
            of = " of {} vs {}".format(*q["perplexity_models"]) if q.get("perplexity_models") else ""
            verdict.append(f"held-out system-text bits/byte{of} {q['bpb_delta']:+.4f} "
                           f"({'better' if q['bpb_delta'] < 0 else 'worse' if q['bpb_delta'] > 0 else 'equal'})")
        if q.get("accuracy_delta") is not None:
            verdict.append(f"CMDGen-mini accuracy {q['accuracy_delta']:+.3f}")
        if q.get("accuracy_paired"):
            pa = q["accuracy_paired"]
            verdict.append(f"over {pa['tasks']} shared tasks {pa['sigma_only']} solved by {q['sigma']} only, "
                           f"{pa['baseline_only']} by {q['baseline']} only (exact McNemar p = {pa['mcnemar_p']:.2g})")
        parts.append(f"<h3>{esc(q['title'])}</h3>"
                     + table(["model", "params", "KV bytes/token (bf16)", "val bits/byte", "CMDGen accuracy",
                              "CMD score"], rows)
                     + f"<p>{esc('; '.join(verdict))}.</p>"
                     + (f'<p class="meta">paper: {esc(q["paper"])}</p>' if q.get("paper") else ""))
    return "".join(parts)


def section_stages(run: Path) -> str:
    """Stage status and times of `minisigma reproduce` (reproduce.json)."""
    p = run / "reproduce.json"
    if not p.is_file():
        raise NotRun("no reproduce.json (this run was not made by `minisigma reproduce`)")
    state = read_json(p)
    stages = state.get("stages", {})
    rows = [[name, s.get("status"), s.get("seconds")] for name, s in stages.items()]
    total = sum(s.get("seconds") or 0 for s in stages.values())
    rows.append(["total", "", round(total, 1)])
    fig, ax = figure(10, 0.3 * len(stages) + 1.2)
    names = list(stages)
    ax.barh(names[::-1], [(stages[n].get("seconds") or 0) / 60 for n in names[::-1]], color="#4c72b0")
    ax.set_xlabel("minutes")
    ax.set_title(f"stage times: recipe {state.get('recipe')}, {state.get('cpus')} CPUs, {total / 60:.1f} min in all")
    return png(fig) + table(["stage", "status", "seconds"], rows)


def section_synth(run: Path) -> str:
    """A sample of the screened instruction pairs synth made (and its counts)."""
    pairs = [p for p in walk(run, "manifest.json") if read_json(p).get("stage") in ("pairs", "synth.pairs")]
    if not pairs:
        raise NotRun("no synth pairs stage (manifest.json of `minisigma synth`) under the run")
    d = pairs[0].parent
    m = read_json(pairs[0])
    docs = read_stage_docs(d, limit=20_000)
    tools = Counter(r.get("tool") for r in docs)
    step = max(1, len(docs) // 15)
    sample = [[r.get("tool"), r.get("task"), Raw(f"<code>{esc(r.get('command'))}</code>"),
               (r.get("metadata") or {}).get("rule"), (r.get("metadata") or {}).get("package")]
              for r in docs[::step][:15]]
    c = m["counts"]
    head = (f"<p>{c['out']:,} screened command pairs over {len(tools):,} tools from {c['in']:,} mined "
            f"(dropped: {', '.join(f'{k} {v:,}' for k, v in sorted(c['dropped'].items(), key=lambda kv: -kv[1]))}).</p>")
    return head + table(["tool", "task", "command", "rule", "package"], sample, left=5)


def _rejects(stage_dir: Path, limit: int = 2000) -> list[dict]:
    out = []
    for p in sorted((stage_dir / "rejects").glob("*.jsonl.gz")):
        out += [r for r in read_stage_docs_file(p) if isinstance(r.get("doc"), dict)]
    return out[:limit]


def read_stage_docs_file(p: Path) -> list[dict]:
    with gzip.open(p, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def section_rewrites(run: Path) -> str:
    """The model rewrites synth made: kept share, drop reasons, the model, a sample of both."""
    ms = [p for p in walk(run, "manifest.json") if read_json(p).get("stage") == "synth.rewrites"]
    if not ms:
        raise NotRun("no rewrite stage (the synth recipe has rewrite.enabled: false)")
    d = ms[0].parent
    m = read_json(ms[0])
    c, b, st = m["counts"], m.get("backend") or {}, m.get("stats") or {}
    n = c["in"]
    dropped = sum(c["dropped"].values())
    quarantined = sum(c["quarantined"].values())
    model = b.get("model") or "?"
    sha = b.get("model_sha256")
    head = (f"<p>Model: <b>{esc(model)}</b> ({esc(b.get('kind') or b.get('backend'))}"
            + (f", runtime {esc(b['runtime'])}" if b.get("runtime") else "")
            + (f", sha256 <code>{esc(sha[:16])}…</code>" if sha else "") + "). "
            f"{c['out']:,} of {n:,} rewrites kept ({c['out'] / n:.0%}), {dropped:,} dropped by the screen"
            + (f", {quarantined:,} backend errors" if quarantined else "") + "; "
            f"model calls {st.get('backend_requests', 0):,}, answered from the cache {st.get('backend_cache_hits', 0):,}. "
            "Only kept rewrites enter pretraining.</p>") if n else "<p>No rewrite requests were made.</p>"
    reasons = table(["drop reason", "rewrites"], [[k, v] for k, v in
                                                  sorted(c["dropped"].items(), key=lambda kv: -kv[1])])
    small = any(t in model.lower() for t in ("135m", "270m", "360m"))
    verdict = ""
    if n and small:
        verdict = (f"<p><b>How useful these are:</b> {esc(model)} is a 135M-parameter model; "
                   f"{c['out'] / n:.0%} of its rewrites pass a screen for loops, echoes, invented options, URLs and "
                   "numbers and lost key terms, and passing it does not make a rewrite correct: read the sample. "
                   "At this size the rewrites add little to the corpus; the stage is here to show the path "
                   "end to end. A real model (README: rewrites with a real model) is what makes them worth having.</p>")
    kept = read_stage_docs(d, limit=50)
    rows = [[(r.get("metadata") or {}).get("template"), (r.get("metadata") or {}).get("title"),
             Raw(f"<pre>{esc(r.get('text', '')[:600])}</pre>")] for r in kept[:4]]
    rej = _rejects(d)
    seen, drows = set(), []
    for r in rej:
        if r.get("reason") in seen:
            continue
        seen.add(r.get("reason"))
        doc = r["doc"]
        drows.append([r.get("reason"), (doc.get("metadata") or {}).get("template"),
                      Raw(f"<pre>{esc((doc.get('text') or '')[:400])}</pre>")])
    return (head + verdict + reasons + "<h3>Kept (sample)</h3>"
            + (table(["template", "page", "rewrite"], rows, left=3) if rows else "<p>none kept</p>")
            + "<h3>Dropped (one per reason)</h3>" + table(["reason", "template", "output"], drows[:8], left=3))


SECTIONS: list[tuple[str, str, Callable[[Path], str]]] = [
    ("questions", "The paper's questions in miniature", section_questions),
    ("stages", "Reproduction stages and times", section_stages),
    ("funnel", "Data funnel", section_funnel),
    ("mix", "Category and source mix", section_mix),
    ("sources", "Source types next to the paper's Table 9", section_sources),
    ("quality", "Quality scores", section_quality),
    ("loss", "Training and validation loss", section_loss),
    ("synth", "Synthetic instruction pairs (sample)", section_synth),
    ("rewrites", "Model rewrites (synth)", section_rewrites),
    ("cmdgen", "CMDGen-mini (command generation)", section_cmdgen),
    ("perplexity", "Perplexity per source", section_perplexity),
    ("attention", "Attention efficiency", section_attention),
    ("ablation", "Ablations next to the paper", section_ablation),
]


def render(run: Path) -> str:
    body = []
    for sid, title, fn in SECTIONS:
        try:
            content = fn(run)
        except NotRun as e:
            content = f'<p class="notrun">not run: {esc(e)}</p>'
        except Exception as e:  # a malformed input spoils its own section only
            content = f'<p class="error">could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        body.append(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>')
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>minisigma report: {esc(run.name)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>"
            f"<h1>minisigma report: {esc(run.name)}</h1>"
            f'<p class="meta">run directory <code>{esc(run)}</code> · generated {when}</p>'
            + "".join(body) + "</body></html>")


def build(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    out_path = Path(out) if out else run / "report" / "index.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(render(run.resolve()), encoding="utf-8")
    tmp.replace(out_path)
    return out_path


# ------------------------------------------------------------------------------------ screenshot
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars"]


def chromium_binary() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise UserError("chromium is not installed (scripts/system-deps.sh installs it)")


def screenshot(page: str | Path, png_out: str | Path, width: int = 1200, height: int = 2400,
               max_height: int | None = None, out_width: int = 800) -> Path:
    """Render the report in headless Chromium and save a PNG, downscaled to `out_width` pixels and
    palette-quantised so it stays small enough for a README."""
    import subprocess
    import tempfile

    from PIL import Image

    page, png_out = Path(page).resolve(), Path(png_out)
    png_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="minisigma-chromium-") as tmp:
        raw = Path(tmp) / "shot.png"
        r = subprocess.run([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                            f"--window-size={width},{height}", f"--screenshot={raw}", "--virtual-time-budget=5000",
                            page.as_uri()], capture_output=True, text=True, timeout=180)
        if not raw.is_file():
            raise UserError(f"chromium wrote no screenshot: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
        img = Image.open(raw).convert("RGB")
    if max_height:
        img = img.crop((0, 0, img.width, min(img.height, max_height)))
    if out_width and img.width > out_width:
        img = img.resize((out_width, round(img.height * out_width / img.width)), Image.LANCZOS)
    img.quantize(colors=64).save(png_out, optimize=True)
    return png_out
