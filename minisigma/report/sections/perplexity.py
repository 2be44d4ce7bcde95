"""Report section "Perplexity per source" (id `perplexity`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import figure, png, table
from minisigma.report.runfiles import NotRun
from model.results import read_perplexity


def section_perplexity(run: Path) -> str:
    found = read_perplexity(run)
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
