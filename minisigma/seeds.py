"""`minisigma seeds RUN RUN ...`: a reproduction's questions compared across seeds.

Boundary: reads what `minisigma reproduce` wrote in each finished run directory (reproduce.json
for the recipe and seed, <eval out>/answers.json for the questions' numbers, the CMDGen-mini
summaries' tasks_sha256 so that only runs scored on one task set are compared) and writes one JSON;
it trains and evaluates nothing. Runs are made with `minisigma reproduce --seed N --out DIR`.

One seed cannot separate two models whose difference is smaller than the spread between seeds
of the same model, so per question this gives, over the runs:
- each run's row (bits/byte and CMDGen accuracy of both models, the paired task split, McNemar p);
- mean and sample standard deviation of every metric;
- the per-seed differences (sigma minus baseline) with a one-sample t-test of "mean difference is
  zero" (scipy.stats.ttest_1samp; the seeds pair the two models, so this is the paired t-test).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from scipy import stats

from minisigma.core.errors import UserError
from minisigma.core.shards import atomic_write_json

METRICS = ("val_bpb", "cmdgen_accuracy")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is this a finished `minisigma reproduce` run?)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None


def _answers_path(run: Path) -> Path:
    """Where the run's evaluation wrote answers.json: the eval recipe's out, rerooted into the run
    (<run>/eval for the shipped recipes)."""
    for p in [run / "eval" / "answers.json", *sorted(run.glob("*/answers.json"))]:
        if p.is_file():
            return p
    raise UserError(f"{run}: no answers.json (the run has no finished eval stage with questions)")


def load_run(run: Path) -> dict:
    state = _read_json(run / "reproduce.json")
    if state.get("stages", {}).get("eval", {}).get("status") != "done":
        raise UserError(f"{run}: its eval stage is not done (finish it with `minisigma reproduce --out {run}`)")
    answers_path = _answers_path(run)
    answers = _read_json(answers_path)
    # the CMDGen-mini task set each model was scored on (its summary's sha256 of the tasks file)
    tasks = sorted({_read_json(p).get("tasks_sha256") for p in answers_path.parent.glob("*/cmdgen/summary.json")} - {None})
    minutes = round(sum(s.get("seconds", 0.0) for s in state["stages"].values()) / 60, 1)
    return {"run": str(run), "recipe": state.get("recipe"), "seed": state.get("seed"),
            "questions": answers.get("questions", []), "cmdgen_tasks_sha256": tasks,
            "host": state.get("host"), "cpus": state.get("cpus"), "stage_minutes": minutes}


def _spread(values: list[float]) -> dict:
    return {"n": len(values), "mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else None}


def _difference(deltas: list[float]) -> dict:
    out = _spread(deltas)
    if len(deltas) > 1 and len(set(deltas)) > 1:
        t = stats.ttest_1samp(deltas, 0.0)
        out.update(t=round(float(t.statistic), 4), p=round(float(t.pvalue), 4))
    else:  # one seed, or identical differences: no spread to test against
        out.update(t=None, p=None)
    return out


def compare(runs: list[Path]) -> dict:
    """The questions of several reproductions of one recipe, side by side and summarised."""
    if len(runs) < 2:
        raise UserError("seeds: give at least two run directories (one per seed)")
    loaded = [load_run(Path(r)) for r in runs]
    recipes = {r["recipe"] for r in loaded}
    if len(recipes) != 1:
        raise UserError(f"seeds: the runs are of different recipes ({', '.join(sorted(map(str, recipes)))})")
    seeds = [r["seed"] for r in loaded]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds: two runs have the same seed ({seeds}); each run must use its own --seed")
    for r in loaded[1:]:
        a, b = loaded[0]["cmdgen_tasks_sha256"], r["cmdgen_tasks_sha256"]
        if a and b and a != b:  # accuracies over different tasks are not paired draws of one quantity
            raise UserError(f"{r['run']}: its CMDGen-mini tasks (sha256 {', '.join(x[:12] for x in b)}) differ from "
                            f"{loaded[0]['run']}'s ({', '.join(x[:12] for x in a)}): seeds compare runs over one task set")
    titles = [q["title"] for q in loaded[0]["questions"]]
    for r in loaded[1:]:
        if [q["title"] for q in r["questions"]] != titles:
            raise UserError(f"{r['run']}: its questions differ from {loaded[0]['run']}'s")
    questions = []
    for i, title in enumerate(titles):
        rows = []
        for r in loaded:
            q = r["questions"][i]
            row = {"run": r["run"], "seed": r["seed"], "host": r["host"], "cpus": r["cpus"],
                   "stage_minutes": r["stage_minutes"]}
            for role in ("sigma", "baseline"):
                row[role] = {m: q[role + "_results"].get(m) for m in METRICS}
            if "accuracy_paired" in q:
                row["paired"] = q["accuracy_paired"]
            rows.append(row)
        summary: dict = {}
        for m in METRICS:
            a = [row["sigma"][m] for row in rows]
            b = [row["baseline"][m] for row in rows]
            if any(v is None for v in a + b):
                continue
            summary[m] = {"sigma": _spread(a), "baseline": _spread(b),
                          "difference": _difference([x - y for x, y in zip(a, b)])}
        q0 = loaded[0]["questions"][i]
        questions.append({"title": title, "sigma": q0["sigma"], "baseline": q0["baseline"],
                          "runs": rows, "summary": summary})
    return {"recipe": recipes.pop(), "seeds": seeds, "cmdgen_tasks_sha256": loaded[0]["cmdgen_tasks_sha256"],
            "questions": questions}


def write(runs: list[Path], out: Path, command: str | None = None) -> dict:
    """compare() into `out`, with the command line that made it (a README figure names its file and command)."""
    result = {"command": command, **compare(runs)} if command else compare(runs)
    atomic_write_json(out, result)
    return result
