"""Report section "Reproduction stages and times" (id `stages`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import figure, png, table
from minisigma.report.runfiles import read_reproduce_state


def section_stages(run: Path) -> str:
    """Stage status and times of `minisigma reproduce` (reproduce.json)."""
    state = read_reproduce_state(run)
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
