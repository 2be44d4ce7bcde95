"""scripts/gpu-check.sh (benchmarks/gpu_check.py): its plan for one H200 checked here, and the whole
sequence run on this CPU at toy sizes (`--dry-run`)."""

import json

import pytest
import yaml

from benchmarks import gpu_check
from model.train import load_train_recipe


def test_gpu_plan_fits_8_minutes_and_trains_at_100x_the_cpu_budget(tmp_path):
    repro = yaml.safe_load((gpu_check.ROOT / "recipes" / "reproduce" / "mini.yaml").read_text())
    t = repro["models"][0]["pretrain_overrides"]["train"]
    assert gpu_check.CPU_BUDGET_TOKENS == t["max_steps"] * t["micro_batch"] * t["accumulate"] * t["seq_len"]
    plan = gpu_check.PLANS["gpu"]
    assert sum(v for k, v in plan["time_limits_s"].items() if k != "pretrain") + 2 * plan["time_limits_s"]["pretrain"] <= 470
    assert plan["contexts"].split(",") == ["16384", "32768", "65536"]
    assert "tests/model/test_model_bench.py" in gpu_check.gpu_test_files()
    for name, preset in plan["models"].items():
        info = gpu_check.write_recipe(tmp_path / f"{name}.yaml", plan, name, preset, tmp_path / "tokens",
                                      tmp_path / name, dry=False)
        r = load_train_recipe(tmp_path / f"{name}.yaml")  # a valid training recipe
        assert r.model.preset == preset and r.train.max_steps == info["steps"]
        assert r.train.max_steps * r.train.micro_batch * r.train.seq_len >= 100 * gpu_check.CPU_BUDGET_TOKENS
    assert plan["models"] == {"mini-sigma": "small", "gqa": "small-gqa"}  # the CPU reproduction's pair


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_result_under_one_folder(tmp_path):
    s = gpu_check.run(tmp_path / "gpu", dry=True)
    assert s["ok"], json.dumps(s["phases"], indent=1)
    out = tmp_path / "gpu"
    assert json.loads((out / "summary.json").read_text())["mode"].startswith("dry-run")
    assert (out / "attention" / "results.json").is_file() and (out / "tests.xml").is_file()
    c = json.loads((out / "curves.json").read_text())
    for name in ("mini-sigma", "gqa"):
        assert len(c[name]["train"]) == s["phases"][f"pretrain_{name}"]["steps"] and c[name]["val"]
        assert c[name]["summary"]["finished"]
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
