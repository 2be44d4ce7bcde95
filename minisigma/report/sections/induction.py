"""Report section "Copying from context" (id `induction`): renders what model.results.read_induction returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import esc, table
from minisigma.report.runfiles import NotRun
from model.results import read_induction


def section_induction(run: Path) -> str:
    found = read_induction(run)
    if not found:
        raise NotRun("no induction probe results (induction.json from `minisigma eval`) under the run")
    rows = [[label, r.get("tokens"), r.get("sequences"), r.get("uniform_loss"), r["loss_first"], r["loss_repeat"],
             round(r["loss_first"] - r["loss_repeat"], 4)] for label, r in found]
    note = ("<p>" + esc("Loss in nats/token on a random token sequence and on its exact repeat "
                        "(model/evaluation/induction.py). A model with induction heads predicts the repeat "
                        "almost perfectly; a drop near zero means it cannot copy from its context, so a "
                        "command that needs an argument copied from the task is rarely right.") + "</p>")
    return note + table(["model", "tokens", "sequences", "ln(vocab)", "first copy", "repeat", "drop"], rows, left=1)
