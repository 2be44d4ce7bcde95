"""Synth backend throughput: concurrency N vs 1 against a local `minisigma serve`, side by side.

    python benchmarks/bench_synth.py [--checkpoint DIR] [--requests 48] [--concurrency 8] [--max-tokens 32]
                                     [--out benchmarks/results/synth.json]

Without --checkpoint a small model (random weights, a BPE tokenizer trained on a few sentences) is
built in a temporary directory: throughput does not depend on what the weights say. The server
runs as a real subprocess (`minisigma serve`), the client is synth.backends.OpenAIBackend with no
cache, so every request is generated. Prints requests/s and completion tokens/s for both
settings and their ratio, and stores them with the machine's description in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_checkpoint(out: Path) -> Path:
    import torch

    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained
    from model.tokenizer import train_tokenizer

    torch.manual_seed(0)
    text = ("List the files in a directory with ls -la. Show disk usage with du -sh. Compress a directory with "
            "tar -czf. Search text with grep -rn. Follow a log with tail -f. Copy trees with rsync -a. ") * 50
    tok, _ = train_tokenizer([{"text": text}], vocab_size=512, min_frequency=1)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=4, n_embd=128, n_q=8, n_k=2, n_v=4, d_qk=16,
                      d_v=16, ffn_hidden=384, max_seq_len=256, name="bench-synth")
    save_pretrained(GPT(cfg).eval(), out, tokenizer=tok)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    from synth.backends import OpenAIBackend

    b = OpenAIBackend(url, "bench", max_concurrency=concurrency, timeout=600, api_key_env="MINISIGMA_API_KEY")
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    t0 = time.perf_counter()
    outs = b.chat_many(msgs, temperature=0.8, max_tokens=max_tokens, seed=7)
    dt = time.perf_counter() - t0
    toks = sum(o.completion_tokens for o in outs)
    return {"requests": len(outs), "seconds": dt, "req_s": len(outs) / dt, "tok_s": toks / dt, "tokens": toks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "synth.json")
    args = ap.parse_args()

    import requests

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or build_checkpoint(Path(tmp) / "ckpt")
        port = free_port()
        # the server wants a key; this process's client sends it (api_key_env in run())
        os.environ["MINISIGMA_API_KEY"] = "bench-" + secrets.token_hex(16)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        log = open(Path(tmp) / "serve.log", "w")
        proc = subprocess.Popen([sys.executable, "-c", "from minisigma.cli import main; main()", "serve",
                                 "--checkpoint", str(ckpt), "--port", str(port), "--model-name", "bench",
                                 "--max-batch", str(args.concurrency)], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if requests.get(url + "/health", timeout=1).ok:
                        break
                except requests.RequestException:
                    time.sleep(0.2)
            prompts = [f"Task {i}: show the command that lists files sorted by size in directory d{i}"
                       for i in range(args.requests)]
            run(url, prompts[:4], 1, 4)  # warm-up
            one = run(url, prompts, 1, args.max_tokens)
            many = run(url, prompts, args.concurrency, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
    print(f"bench synth: {args.requests} chat requests, max_tokens={args.max_tokens}, server max_batch="
          f"{args.concurrency}, {os.cpu_count()} CPUs")
    print(f"{'':>16} {'concurrency 1':>15} {'concurrency ' + str(args.concurrency):>15} {'ratio':>8}")
    for key, label in (("req_s", "requests/s"), ("tok_s", "tokens/s")):
        print(f"{label:>16} {one[key]:>15.2f} {many[key]:>15.2f} {many[key] / one[key]:>7.2f}x")
    print(f"{'seconds':>16} {one['seconds']:>15.2f} {many['seconds']:>15.2f}")
    import aiohttp

    result = {"command": "python benchmarks/bench_synth.py", "requests": args.requests,
              "max_tokens": args.max_tokens, "server_max_batch": args.concurrency,
              "server": f"minisigma serve (aiohttp {aiohttp.__version__}, API key on)",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_average_1m": round(os.getloadavg()[0], 2)},
              "concurrency_1": {k: round(v, 3) for k, v in one.items()},
              f"concurrency_{args.concurrency}": {k: round(v, 3) for k, v in many.items()},
              "ratio_req_s": round(many["req_s"] / one["req_s"], 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"stored in {args.out}")


if __name__ == "__main__":
    main()
