"""Report section "Training and validation loss" (id `loss`): renders what `report.runfiles` reads for it."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from minisigma.report.html import figure, png, table
from minisigma.report.runfiles import NotRun, read_metrics_csv, walk


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
