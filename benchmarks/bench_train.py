"""Training throughput: the `mini` preset (DiffQKV 8/1/4 heads + AugQ 1.5d) vs `gqa` (its Std
baseline: 8/4/4 heads, no AugQ) of the same width and depth, tokens/s side by side, and the model
FLOPs utilisation (MFU) against the matmul peak measured on this machine.

What is timed is one optimizer step of the model itself -- forward, backward, gradient clipping and
AdamW -- on a fixed batch, in float32 and, where the device multiplies bf16 natively (CUDA, or a CPU
with AVX512-BF16 / AMX-BF16), in bf16 autocast (what `precision: auto` trains in). The two models are
measured in alternating rounds (A B A B ...) and min and median are reported, so a load change on a
shared machine hits both alike.

The peak is measured, not taken from a datasheet: the best of several square matmuls (`torch.mm`,
n = 1024 and 2048 on a CPU, 8192 on a GPU) in each precision, with the threads training uses. MFU =
tokens/s x training FLOPs per token (`ModelConfig.flops_per_token`, 3x forward) / that peak. Writes
benchmarks/results/NAME.json (`--name`, default train).

Any two presets can be compared (`--models small,small-gqa`: the mini reproduction's pair), with
`torch.compile` as the reproduction trains (`--compile`). A CPU kind that is not at hand can be
approximated on one with more instructions by capping them: ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` runs PyTorch's and oneDNN's kernels as on a CPU without AVX-512 (and
`precision: auto` then trains in float32, as it would there); the caps in force are recorded.

`--neighbour` times the rounds beside one busy process (a pure-Python loop, started after the matmul
peak is measured and stopped after the rounds): what training meets on a machine whose cores are not
all its own, such as a test run beside a reproduction. The OpenMP settings in force (`OMP_NUM_THREADS`,
`OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) are recorded, since they decide how much a neighbour costs: the
default libgomp threads spin at every barrier, so a thread that lost its core holds up the others.

    python benchmarks/bench_train.py [--steps 4 --batch 4 --seq-len 256 --rounds 3]
    minisigma bench train [--models small,small-gqa --batch 8 --compile --name train-small] [--neighbour]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine, write_result  # noqa: E402


def precisions(device: str) -> list[str]:
    import torch

    from model.train import cpu_has_native_bf16

    native = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_native_bf16()
    return ["float32", "bfloat16"] if native else ["float32"]


def matmul_peak(dtype: str, device: str, sizes: tuple[int, ...] | None = None, reps: int = 5) -> dict:
    """The best FLOP/s of square matmuls in `dtype` (2 n^3 FLOPs each)."""
    import torch

    dt = getattr(torch, dtype)
    sizes = sizes or ((8192,) if device == "cuda" else (1024, 2048))
    best = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        torch.mm(a, b)  # warm-up (kernel choice, allocation)
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        best[n] = 2 * n ** 3 / min(times)
    n_best = max(best, key=best.get)
    return {"flops": best[n_best], "n": n_best, "by_size": {str(k): round(v / 1e9, 1) for k, v in best.items()}}


# the environment variables that cap the instruction sets PyTorch's and oneDNN's CPU kernels use
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
# the OpenMP settings that decide how training threads wait (and so what a busy neighbour costs)
OPENMP = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
NEIGHBOUR = "while True: pass  # minisigma bench train --neighbour"


@contextmanager
def neighbour(on: bool):
    """One busy process beside the block when `on`: a pure-Python loop, one core's worth of load."""
    proc = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if on else None
    try:
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def _step_fn(name: str, batch: int, seq_len: int, device: str, dtype: str, compile: bool = False):
    import torch

    from model.gpt import GPT, ModelConfig

    cfg = ModelConfig.preset(name, max_seq_len=max(seq_len, 8))
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    amp_device = "cuda" if device == "cuda" else "cpu"

    def step():
        with torch.autocast(amp_device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            loss = forward(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return cfg, step


def run(steps: int = 4, batch: int = 4, seq_len: int = 256, rounds: int = 3, device: str | None = None,
        dtypes: list[str] | None = None, write: bool = True, models: tuple[str, str] = ("mini", "gqa"),
        compile: bool = False, name: str = "train", busy_neighbour: bool = False) -> dict:
    """Time `models` (a DiffQKV preset, then its baseline) in alternating rounds in each precision."""
    import torch

    started = machine()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = dtypes or precisions(device)
    names = tuple(models)
    tokens = steps * batch * seq_len
    caps = {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}
    openmp = {k: os.environ[k] for k in OPENMP if os.environ.get(k)}
    where = torch.cuda.get_device_name() if device == "cuda" else f"{started['cpu']}, {torch.get_num_threads()} threads"
    res: dict = {"device": where, "batch": batch, "seq_len": seq_len, "steps": steps, "rounds": rounds,
                 "models": list(names), "compile": compile, "isa_caps": caps, "openmp": openmp,
                 "neighbour": busy_neighbour, "precisions": {}}
    print(f"training throughput on {where}: batch {batch} x {seq_len} tokens, {steps} steps a round, {rounds} "
          f"alternating rounds{', torch.compile' if compile else ''}, load average {started['load_average']}"
          + (f", instruction sets capped: {caps}" if caps else "") + (f", OpenMP {openmp}" if openmp else "")
          + (", beside one busy process (--neighbour)" if busy_neighbour else ""))
    for dtype in dtypes:
        peak = matmul_peak(dtype, device)
        models = {n: _step_fn(n, batch, seq_len, device, dtype, compile) for n in names}
        for _, step in models.values():  # warm-up (allocator, kernels)
            step()
        times: dict[str, list[float]] = {n: [] for n in names}
        with neighbour(busy_neighbour):
            for _ in range(rounds):
                for n in names:
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        models[n][1]()
                    times[n].append(time.perf_counter() - t0)
        out = {"matmul_peak_gflops": round(peak["flops"] / 1e9, 1), "matmul_peak_n": peak["n"],
               "matmul_gflops_by_size": peak["by_size"]}
        for n in names:
            cfg = models[n][0]
            fpt = cfg.flops_per_token(seq_len)
            best, med = tokens / min(times[n]), tokens / statistics.median(times[n])
            out[n] = {"tok_s_best": round(best, 1), "tok_s_median": round(med, 1),
                      "rounds_s": [round(t, 3) for t in times[n]], "params": cfg.num_params(),
                      "flops_per_token": fpt, "mfu_best": round(best * fpt / peak["flops"], 4),
                      "mfu_median": round(med * fpt / peak["flops"], 4), "heads": f"{cfg.n_q}/{cfg.n_k}/{cfg.n_v}",
                      "d_aug": cfg.d_aug, "kv_bytes_per_token": cfg.kv_bytes_per_token()}
        a, b = names
        out["ratio_median"] = round(out[a]["tok_s_median"] / out[b]["tok_s_median"], 3)
        res["precisions"][dtype] = out
        print(f"{dtype}: measured matmul peak {out['matmul_peak_gflops']:,.1f} GFLOP/s (torch.mm n={peak['n']}; "
              f"by n: {peak['by_size']})")
        w = max(6, *(len(n) for n in names))
        print(f"  {'model':<{w}} {'Q/K/V':>7} {'AugQ':>5} {'params':>11} {'GFLOP/tok':>10} {'tok/s best':>11} "
              f"{'tok/s med':>10} {'MFU best':>9} {'MFU med':>8}")
        for n in names:
            r = out[n]
            print(f"  {n:<{w}} {r['heads']:>7} {r['d_aug']:>5} {r['params']:>11,} {r['flops_per_token'] / 1e9:>10.4f} "
                  f"{r['tok_s_best']:>11,.0f} {r['tok_s_median']:>10,.0f} {r['mfu_best']:>9.1%} {r['mfu_median']:>8.1%}")
        print(f"  {a} / {b} tokens/s (median): {out['ratio_median']:.3f}  (FLOPs per token ratio "
              f"{out[a]['flops_per_token'] / out[b]['flops_per_token']:.3f})")
    if write:
        write_result(name, res, ("torch",), started)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="mini,gqa", help="two presets: a DiffQKV one, then its baseline")
    ap.add_argument("--compile", action="store_true", help="torch.compile the models, as the recipes train")
    ap.add_argument("--name", default="train", help="the result's name: benchmarks/results/NAME.json")
    ap.add_argument("--neighbour", action="store_true", help="time the rounds beside one busy process")
    a = ap.parse_args()
    run(a.steps, a.batch, a.seq_len, a.rounds, models=tuple(a.models.split(",")), compile=a.compile, name=a.name,
        busy_neighbour=a.neighbour)
