"""Report section "Data funnel" (id `funnel`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.core.manifest import read_stages
from minisigma.report.html import Raw, esc, figure, png, table
from minisigma.report.runfiles import NotRun


def section_funnel(run: Path) -> str:
    stages = read_stages(run)
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
