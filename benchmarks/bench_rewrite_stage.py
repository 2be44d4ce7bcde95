"""The mini recipe's rewrite stage under each local runtime: kept counts, drop reasons, stage time.

    python benchmarks/bench_rewrite_stage.py [--runtimes llama_cpp,transformers] [--work /tmp/rw_run]
        [--recipe recipes/synth/mini.yaml] [--out-prefix benchmarks/results/rewrite-mini-stage]

The input is what the README's rewrite figures use: the man pages of coreutils, findutils, tar,
grep, sed and gzip as tests/synth_manpages.py renders them (WORK/curated), with a quality
classifier curation's own trainer (curation.refine.classifiers.train_quality) makes from them
beside it (WORK/classifiers/quality), so the recipe's `quality_model: curated` finds it; both are
made once and reused. For each runtime, in the order given, the recipe is copied with
`backend.runtime` set to it and `minisigma synth COPY --in WORK/curated --out WORK/synth-RUNTIME`
runs in a subprocess (a fresh output folder: no cached answer). Written per runtime:
OUT_PREFIX-RUNTIME.manifest.json (the rewrite stage's manifest: the model file and sha256, the
counts kept and dropped by reason, the backend's token and time stats) and
OUT_PREFIX-RUNTIME.outputs.json (the command, the load average before and after, every output
with its screen verdict).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PACKAGES = ["coreutils", "findutils", "tar", "grep", "sed", "gzip"]


def prepare(work: Path) -> str:
    from curation.refine.classifiers import QualityTrainConfig, train_quality
    from minisigma.core.shards import list_shards, read_docs
    from tests.synth_manpages import build_corpus

    curated, clf = work / "curated", work / "classifiers" / "quality"
    if not list_shards(curated):
        build_corpus(curated, PACKAGES)
    docs = [d for s in list_shards(curated) for d in read_docs(s)]
    if not (clf / "model.bin").is_file():
        train_quality(docs, QualityTrainConfig(), clf)
    return (f"the man pages of {', '.join(PACKAGES)} as tests/synth_manpages.py renders them ({len(docs)} "
            f"documents), with a quality classifier trained on them by curation.refine.classifiers.train_quality "
            f"into {clf}")


FIELDS = ("template", "command", "finish_reason", "completion_tokens", "flags", "key_term_recall", "quality")


def outputs(stage: Path) -> list[dict]:
    """Every rewrite request's answer, kept or dropped, with the screen's verdict."""
    from minisigma.core.shards import iter_docs

    def row(d: dict, reason: str | None) -> dict:
        m = d.get("metadata", {})
        return {"page": m.get("title"), "reason": reason, **{k: m.get(k) for k in FIELDS}, "text": d["text"]}

    rows = [row(d, None) for d in iter_docs(stage)]
    for p in sorted((stage / "rejects").glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            rows += [row(j["doc"], j["reason"]) for j in map(json.loads, f)]
    return sorted(rows, key=lambda r: (r["page"] or "", r["template"] or ""))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runtimes", default="llama_cpp,transformers")
    ap.add_argument("--work", default="/tmp/rw_run")
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "synth" / "mini.yaml"))
    ap.add_argument("--out-prefix", default=str(REPO / "benchmarks" / "results" / "rewrite-mini-stage"))
    a = ap.parse_args(argv)

    import yaml

    from benchmarks.common import machine

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    described = prepare(work)
    base = yaml.safe_load(Path(a.recipe).read_text())
    for rt in a.runtimes.split(","):
        recipe = work / f"mini-{rt}.yaml"
        base["backend"]["runtime"] = rt
        recipe.write_text(yaml.safe_dump(base, sort_keys=False))
        out = work / f"synth-{rt}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = ["minisigma", "synth", str(recipe), "--in", str(work / "curated"), "--out", str(out), "--quiet"]
        before = [round(x, 2) for x in os.getloadavg()]
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t
        manifest = json.loads((out / "rewrites" / "manifest.json").read_text())
        record = {"command": " ".join(["python benchmarks/bench_rewrite_stage.py"] + (argv or sys.argv[1:])),
                  "stage_command": " ".join(cmd), "runtime": rt, "input": described,
                  "recipe": f"{a.recipe} with backend.runtime: {rt}", "machine": machine(),
                  "loadavg_before": before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                  "synth_wall_seconds": round(wall, 1), "counts": manifest["counts"], "stats": manifest["stats"],
                  "manifest": f"{a.out_prefix}-{rt}.manifest.json", "outputs": outputs(out / "rewrites")}
        Path(f"{a.out_prefix}-{rt}.manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        Path(f"{a.out_prefix}-{rt}.outputs.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        c = manifest["counts"]
        print(json.dumps({"runtime": rt, "in": c["in"], "kept": c["out"], "dropped": c["dropped"],
                          "stage_seconds": manifest["seconds"], "loadavg_before": before}), flush=True)


if __name__ == "__main__":
    main()
