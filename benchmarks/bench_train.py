"""Training throughput: the `mini` preset (DiffQKV 8/1/4 heads + AugQ 1.5d) vs `gqa` (its Std
baseline: 8/4/4 heads, no AugQ) of the same width and depth, tokens/s side by side.

What is timed is one optimizer step of the model itself -- forward, backward, gradient clipping and
AdamW -- on a fixed batch, in the precision the training recipes use (fp32 on CPU, bf16 autocast on
CUDA). The two models are measured in alternating rounds and the median round is reported, so a
load change on a shared machine hits both alike.

    python benchmarks/bench_train.py [--steps 4 --batch 4 --seq-len 256 --rounds 3]
    minisigma bench train
"""

from __future__ import annotations

import argparse
import statistics
import time


def _step_fn(name: str, batch: int, seq_len: int, device: str):
    import torch

    from model.gpt import GPT, ModelConfig

    cfg = ModelConfig.preset(name, max_seq_len=max(seq_len, 8))
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return cfg, step


def run(steps: int = 4, batch: int = 4, seq_len: int = 256, rounds: int = 3, device: str | None = None) -> dict:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = ("mini", "gqa")
    models = {n: _step_fn(n, batch, seq_len, device) for n in names}
    for _, step in models.values():  # warm-up (allocator, kernels)
        step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            t0 = time.perf_counter()
            for _ in range(steps):
                models[n][1]()
            times[n].append(time.perf_counter() - t0)
    tokens = steps * batch * seq_len
    res = {}
    for n in names:
        cfg = models[n][0]
        tps = tokens / statistics.median(times[n])
        res[n] = {"tok_s": tps, "params": cfg.num_params(), "flops_per_token": cfg.flops_per_token(seq_len),
                  "kv_bytes_per_token": cfg.kv_bytes_per_token(), "heads": f"{cfg.n_q}/{cfg.n_k}/{cfg.n_v}",
                  "d_aug": cfg.d_aug}
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"training throughput on {where}: batch {batch} x {seq_len} tokens, {steps} steps x {rounds} rounds (median)")
    print(f"{'model':<6} {'Q/K/V heads':>11} {'AugQ':>5} {'params':>12} {'GFLOP/token':>12} {'KV B/token':>11} {'tokens/s':>10}")
    for n in names:
        r = res[n]
        print(f"{n:<6} {r['heads']:>11} {r['d_aug']:>5} {r['params']:>12,} {r['flops_per_token'] / 1e9:>12.4f} "
              f"{r['kv_bytes_per_token']:>11,} {r['tok_s']:>10,.0f}")
    ratio = res["mini"]["tok_s"] / res["gqa"]["tok_s"]
    print(f"mini / gqa tokens/s: {ratio:.3f}  (FLOPs per token ratio {res['mini']['flops_per_token'] / res['gqa']['flops_per_token']:.3f})")
    res["ratio"] = ratio
    return res


if __name__ == "__main__":
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    run(a.steps, a.batch, a.seq_len, a.rounds)
