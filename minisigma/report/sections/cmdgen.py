"""Report section "CMDGen-mini (command generation)" (id `cmdgen`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import Raw, esc, figure, png, table
from minisigma.report.runfiles import NotRun
from model.results import read_cmdgen_results, read_summaries

METRIC_NAMES = [("accuracy", "Accuracy"), ("exact_match", "Exact match"), ("success", "Success"),
                ("cmd_score", "CMD score"), ("output_score", "Output score"), ("calibration", "Calibration")]


def section_cmdgen(run: Path) -> str:
    found = read_summaries(run)
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
    results = read_cmdgen_results(d, 12)
    if results:
        sample = [[r.get("tool"), r.get("task"), Raw(f"<code>{esc(r.get('reference'))}</code>"),
                   Raw(f"<code>{esc(r.get('generated'))}</code>"), r.get("generated_status"),
                   r.get("cmd_score"), r.get("accuracy")] for r in results]
        parts.append(f"<h3>sample tasks: {esc(label)}</h3>" +
                     table(["tool", "task", "reference", "generated", "status", "CMD score", "accurate"], sample, left=4))
    return "".join(parts)
