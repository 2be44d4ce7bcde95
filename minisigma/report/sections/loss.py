"""Report section "Training and validation loss" (id `loss`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import figure, png, table
from minisigma.report.runfiles import NotRun
from model.results import read_loss_curves


def section_loss(run: Path) -> str:
    runs = read_loss_curves(run)
    if not runs:
        raise NotRun("no training logs (Lightning metrics.csv) under the run")
    fig, ax = figure(10, 4)
    rows = []
    for label, series in sorted(runs.items()):
        for k, pts in sorted(series.items()):
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
