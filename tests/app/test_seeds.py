"""`minisigma seeds`: the questions of several reproductions compared across seeds."""

import copy
import json
import math
import shutil
import statistics
import subprocess
import sys

import pytest

from minisigma import seeds
from minisigma.core.errors import UserError
from minisigma.core.paths import REPO_ROOT

REFERENCE = REPO_ROOT / "manifests" / "reference" / "mini"


def make_run(root, seed, acc_sigma, acc_base, bpb_sigma=1.77, bpb_base=2.80):
    """A finished run directory as `minisigma reproduce --seed SEED` leaves it, from the reference's
    answers.json with this seed's numbers in the second question."""
    run = root / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    state = json.loads((REFERENCE / "reproduce.json").read_text())
    state["seed"] = seed
    (run / "reproduce.json").write_text(json.dumps(state))
    answers = copy.deepcopy(json.loads((REFERENCE / "eval" / "answers.json").read_text()))
    q = answers["questions"][1]
    q["sigma_results"].update(cmdgen_accuracy=acc_sigma, val_bpb=bpb_sigma)
    q["baseline_results"].update(cmdgen_accuracy=acc_base, val_bpb=bpb_base)
    (run / "eval" / "answers.json").write_text(json.dumps(answers))
    return run


def test_seeds_summarise_each_question_with_a_paired_t_test(tmp_path):
    accs = [(0.221, 0.149), (0.179, 0.179), (0.092, 0.108), (0.185, 0.133)]
    runs = [make_run(tmp_path, s, a, b) for s, (a, b) in enumerate(accs)]
    r = seeds.compare(runs)
    assert r["recipe"] == "mini" and r["seeds"] == [0, 1, 2, 3]
    q = r["questions"][1]
    assert [row["sigma"]["cmdgen_accuracy"] for row in q["runs"]] == [a for a, _ in accs]
    d = [a - b for a, b in accs]
    diff = q["summary"]["cmdgen_accuracy"]["difference"]
    assert diff["mean"] == pytest.approx(statistics.fmean(d), abs=1e-6)
    assert diff["std"] == pytest.approx(statistics.stdev(d), abs=1e-6)
    # the one-sample t statistic of the differences, by its definition
    assert diff["t"] == pytest.approx(statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d))), abs=1e-3)
    assert 0.2 < diff["p"] < 0.4
    # equal bits/byte in every run: no spread, no test
    bpb = q["summary"]["val_bpb"]["difference"]
    assert bpb["std"] == 0 and bpb["t"] is None
    # the first question has no CMDGen numbers (pretrained models): only bits/byte is summarised
    assert list(r["questions"][0]["summary"]) == ["val_bpb"]


def test_seeds_refuses_one_run_the_same_seed_twice_and_an_unfinished_run(tmp_path):
    a = make_run(tmp_path, 1, 0.2, 0.1)
    with pytest.raises(UserError, match="at least two"):
        seeds.compare([a])
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    with pytest.raises(UserError, match="same seed"):
        seeds.compare([a, b])
    c = make_run(tmp_path, 2, 0.2, 0.1)
    state = json.loads((c / "reproduce.json").read_text())
    state["stages"]["eval"]["status"] = "running"
    (c / "reproduce.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="eval stage is not done"):
        seeds.compare([a, c])


def test_seeds_refuses_runs_scored_on_different_cmdgen_tasks(tmp_path):
    """Accuracy differences pair up across seeds only over one task set: a run whose CMDGen-mini tasks
    file differs (another build of the set) is refused, naming both fingerprints."""
    def scored_on(run, sha):
        for model in ("mini-sigma", "no-system"):
            d = run / "eval" / model / "cmdgen"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"tasks_sha256": sha, "tasks": 159}))
        return run

    a = scored_on(make_run(tmp_path, 1, 0.2, 0.1), "a" * 64)
    b = scored_on(make_run(tmp_path, 2, 0.25, 0.2), "a" * 64)
    assert seeds.compare([a, b])["cmdgen_tasks_sha256"] == ["a" * 64]
    c = scored_on(make_run(tmp_path, 3, 0.3, 0.1), "b" * 64)
    with pytest.raises(UserError, match=f"{c}: its CMDGen-mini tasks \\(sha256 b{{12}}\\) differ from {a}'s \\(a{{12}}\\)"):
        seeds.compare([a, b, c])


def test_seeds_command_prints_the_table_and_writes_the_json(tmp_path):
    runs = [make_run(tmp_path, s, a, b) for s, (a, b) in enumerate([(0.2, 0.1), (0.25, 0.2), (0.3, 0.1)])]
    out = tmp_path / "seeds.json"
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "seeds", *map(str, runs), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "cmdgen_accuracy: difference +0.1167" in p.stdout
    result = json.loads(out.read_text())
    assert result["seeds"] == [0, 1, 2]
    assert result["command"] == "minisigma seeds " + " ".join(map(str, runs)) + f" --out {out}"
    ref_minutes = sum(s["seconds"] for s in json.loads((REFERENCE / "reproduce.json").read_text())["stages"].values()) / 60
    row = result["questions"][1]["runs"][0]
    assert row["stage_minutes"] == round(ref_minutes, 1) and row["cpus"] and row["host"]
    bad = subprocess.run([sys.executable, "-m", "minisigma.cli", "seeds", str(runs[0]), str(tmp_path / "nope"),
                          "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "Traceback" not in bad.stderr
