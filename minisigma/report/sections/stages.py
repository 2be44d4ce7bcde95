"""Report section "Reproduction stages and times" (id `stages`): renders what `report.runfiles` reads for it."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import figure, png, table
from minisigma.report.runfiles import NotRun, read_json


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
