"""Build llama-cpp-python lean, as a wheel for this CPU, and record how long it took.

    python benchmarks/build_llama_cpp.py [--version 0.3.36] [--wheel-dir wheels] [--jobs 2] [--nice 15]
        [--out benchmarks/results/llama-cpp-build.json]
    pip install --find-links wheels llama-cpp-python==0.3.36      # then: seconds, no compile

PyPI has only llama-cpp-python's sdist for CPython 3.11 on manylinux x86_64, so the optional
`llama_cpp` runtime of synth/local.py needs a compile. This one builds only what the Python binding
loads (libllama and the ggml libraries) for this CPU:
- `-DLLAVA_BUILD=OFF`: no libmtmd (only llama-cpp-python's multimodal chat handlers load it);
- llama.cpp's `common` library off: llama-cpp-python's CMakeLists forces LLAMA_BUILD_COMMON ON
  (a -D cannot override a FORCEd cache entry), and the binding never loads libllama-common, so a
  one-line CMake file run after llama.cpp's project() (`CMAKE_PROJECT_llama.cpp_INCLUDE`) turns
  it off again (it also drops the vendored cpp-httplib that only `common` uses);
- `-DGGML_NATIVE=ON` (-march=native: the wheel is for CPUs with this one's instruction set) and
  `-DGGML_OPENMP=OFF` (ggml's own thread pool, no libgomp).
Tests, tools, examples and the server are off already when llama.cpp is a subproject.
The wheel goes to --wheel-dir (pip's cache is not used, so the time is a full compile). The JSON
records the command, the CMake arguments, wall and CPU seconds, the compile steps, the wheel's
name, size and sha256, the CPU and the load average before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NO_COMMON = 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)\n'


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--version", default="0.3.36")
    ap.add_argument("--wheel-dir", default="wheels")
    ap.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (CMAKE_BUILD_PARALLEL_LEVEL)")
    ap.add_argument("--nice", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "llama-cpp-build.json"))
    a = ap.parse_args(argv)

    from benchmarks.common import machine

    work = Path(tempfile.mkdtemp(prefix="llama-cpp-build-"))
    include = work / "no_common.cmake"
    include.write_text(NO_COMMON)
    cmake_args = ("-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=OFF "
                  f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={include}")
    wheel_dir = Path(a.wheel_dir).resolve()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", str(a.nice), sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-v",
           "--no-binary", "llama-cpp-python", "-w", str(wheel_dir), f"llama-cpp-python=={a.version}"]
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(a.jobs)}
    started = machine()
    before = [round(x, 2) for x in os.getloadavg()]
    log = work / "build.log"
    t = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = log.read_text(errors="replace")
    steps = re.findall(r"\[(\d+)/(\d+)\]", text)
    result = {"benchmark": "llama-cpp-build",
              "command": "python benchmarks/build_llama_cpp.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "pip_command": " ".join(cmd[3:]), "CMAKE_ARGS": cmake_args, "cmake_include": NO_COMMON.strip(),
              "CMAKE_BUILD_PARALLEL_LEVEL": a.jobs, "nice": a.nice, "version": a.version, "returncode": rc,
              "wall_seconds": round(wall, 1), "cpu_user_seconds": round(ru.ru_utime, 1),
              "cpu_system_seconds": round(ru.ru_stime, 1),
              "compile_steps": int(steps[-1][1]) if steps else None,
              "machine": started, "loadavg_before": before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    wheels = sorted(wheel_dir.glob(f"llama_cpp_python-{a.version}-*.whl"), key=lambda p: p.stat().st_mtime)
    if rc == 0 and wheels:
        w = wheels[-1]
        result["wheel"] = {"name": w.name, "bytes": w.stat().st_size,
                           "sha256": hashlib.sha256(w.read_bytes()).hexdigest()}
    else:
        result["log_tail"] = text[-4000:]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "log_tail"}, indent=1))
    print(f"build log: {log}")
    if rc != 0:
        raise SystemExit(f"error: pip wheel exited {rc} (log: {log})")
    return result


if __name__ == "__main__":
    main()
