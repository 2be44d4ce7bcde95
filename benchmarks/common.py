"""What every benchmark shares: alternating timed rounds (A B A B ...), min/median summaries, the
record of the machine it ran on, the JSON result under benchmarks/results/, and the separate
environment a peer runs in when its own pins conflict with the project's."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """benchmarks/results/, or the folder MINISIGMA_BENCH_RESULTS names (scripts/gpu-check.sh, tests)."""
    return Path(os.environ.get("MINISIGMA_BENCH_RESULTS") or RESULTS)
PEER_ENVS = Path(os.environ.get("MINISIGMA_BENCH_ENVS", Path.home() / ".cache" / "minisigma" / "bench-peers"))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set flags that decide the speed of these benchmarks (AVX-512, bf16 matmul)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma"})
    except OSError:
        pass
    return []


def versions(*packages: str) -> dict[str, str | None]:
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def machine() -> dict:
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "platform": platform.platform()}


def alternate(sides: dict[str, Callable[[], float | None]], rounds: int) -> dict[str, list[float]]:
    """Run the sides in turn, `rounds` times (A B A B ...), so a change of load on a shared machine hits
    every side alike. A side returns its own measured seconds (a peer run in a subprocess times itself),
    or None to be timed here."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            r = fn()
            times[name].append(r if r is not None else time.perf_counter() - t0)
    return times


def summary(seconds: list[float], items: int) -> dict:
    """min and median seconds of the rounds, and the items/s each gives."""
    lo, med = min(seconds), statistics.median(seconds)
    return {"rounds_s": [round(s, 4) for s in seconds], "min_s": round(lo, 4), "median_s": round(med, 4),
            "per_s_best": round(items / lo, 1), "per_s_median": round(items / med, 1)}


def ratio(ours: dict, peer: dict) -> dict:
    """ours / peer throughput, from the best round of each and from the medians."""
    return {"best": round(peer["min_s"] / ours["min_s"], 2), "median": round(peer["median_s"] / ours["median_s"], 2)}


def write_result(name: str, result: dict, packages: tuple[str, ...], started: dict) -> Path:
    """benchmarks/results/NAME.json (see `results_dir`): the result, the command line, the machine (load
    average at the start and at the end) and the package versions."""
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    end = machine()
    record = {"benchmark": name, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {**started, "load_average_end": end["load_average"]},
              "versions": versions(*packages), **result}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"results -> {path}")
    return path


def peer_python(name: str, requirements: list[str]) -> str:
    """A Python for a peer whose own pins conflict with the project's: a venv made with
    `--system-site-packages` (so it sees the installed peer) plus `requirements` installed over it with
    pip from the package index. Made once, reused while the requirements stay the same."""
    env = PEER_ENVS / name
    py = env / "bin" / "python"
    stamp = env / "requirements.txt"
    want = "\n".join(requirements) + "\n"
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        return str(py)
    env.parent.mkdir(parents=True, exist_ok=True)
    print(f"making the peer environment {env} ({', '.join(requirements)}) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", str(env)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements], check=True)
    stamp.write_text(want)
    return str(py)


def run_peer(python: str, script: Path, args: list[str]) -> dict:
    """Run `script` under `python` (a peer environment); it prints one JSON object as its last line."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([python, str(script), *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])
