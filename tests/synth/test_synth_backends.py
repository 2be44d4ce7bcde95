"""Backends against real servers on 127.0.0.1: `minisigma serve` over a tiny trained checkpoint,
the OpenAI-compatible client (streaming and not), a fault-injecting proxy, the response cache
across a killed and resumed synth run, and the API key staying out of every file a run writes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from synth.backends import BackendError, OfflineBackend, OpenAIBackend, RetryPolicy
from tests.synth_helpers import REPO, TOOLS, FaultProxy, ServeProcess, build_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    # max_batch=1: every answer is the unbatched greedy decode, so results can be compared exactly
    s = ServeProcess(checkpoint, max_batch=1, log_dir=tmp_path_factory.mktemp("serve-logs"))
    yield s
    s.close()


def user(text):
    return [{"role": "user", "content": text}]


def test_models_and_chat_non_streaming_matches_the_model(server, checkpoint):
    r = requests.get(server.url + "/v1/models", timeout=10).json()
    assert r["object"] == "list" and [m["id"] for m in r["data"]] == ["tiny"]

    b = OpenAIBackend(server.url, "tiny")
    task, cmd = "show free disk space in human readable units", "df -h"
    out = b.chat(user(task), temperature=0, max_tokens=16)
    assert out.finish_reason == "stop" and out.prompt_tokens > 0 and out.completion_tokens > 0

    # the server's answer is exactly the model's greedy decode of the chat template
    from model.chat import answer_text, render_prompt, stop_ids
    from model.generation import generate_ids
    from model.io import load_pretrained

    model, _, tok = load_pretrained(checkpoint)
    ids = generate_ids(model, [render_prompt(user(task), tok)], max_new_tokens=16, temperature=0.0,
                       eos_ids=stop_ids(tok))[0]
    assert out.text == answer_text(tok, ids)
    assert out.text == cmd  # the tiny model was trained on this pair (no leading space: model/chat.py)


def test_streaming_chat_and_completions(server):
    task = "count the lines of notes.txt"
    plain = OpenAIBackend(server.url, "tiny").chat(user(task), temperature=0, max_tokens=16)
    streamed = OpenAIBackend(server.url, "tiny", stream=True).chat(user(task), temperature=0, max_tokens=16)
    assert streamed.text == plain.text and streamed.completion_tokens == plain.completion_tokens

    # the raw SSE stream: role chunk, content deltas, finish chunk, usage chunk, [DONE]
    r = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=30,
                      json={"model": "tiny", "messages": user(task), "temperature": 0, "max_tokens": 16,
                            "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = [l[len("data: "):] for l in r.iter_lines(decode_unicode=True) if l.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert deltas == plain.text and len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) >= 2
    assert [c for c in chunks if c["choices"]][-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == plain.completion_tokens

    c1 = OpenAIBackend(server.url, "tiny").complete("list all", temperature=0, max_tokens=8)
    c2 = OpenAIBackend(server.url, "tiny", stream=True).complete("list all", temperature=0, max_tokens=8)
    assert c1.text and c1.text == c2.text


def test_bad_request_is_not_retried(server):
    before = server.stats().get("chat_requests", 0)
    b = OpenAIBackend(server.url, "tiny", retry=RetryPolicy(max_retries=5, backoff=0.01))
    with pytest.raises(BackendError, match="HTTP 400"):
        b.chat([{"role": "robot", "content": "hi"}], max_tokens=4)
    assert server.stats()["chat_requests"] == before + 1
    assert b.stats()["requests"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_fault_proxy_is_survived_nothing_lost_or_duplicated(server, tmp_path, stream):
    prompts = [f"{t}" for t in TOOLS.values()] + [f"please {t}" for t in list(TOOLS.values())[:6]]
    direct = OpenAIBackend(server.url, "tiny").chat_many([user(p) for p in prompts], temperature=0, max_tokens=12)

    schedule = ["ok", "429", "500", "stall", "ok", "drop", "503", "cut", "ok", "ok", "429", "cut"]
    proxy = FaultProxy(server.port, schedule, stall_s=2.5)
    try:
        before = server.stats().get("chat_requests", 0)
        b = OpenAIBackend(proxy.url, "tiny", max_concurrency=4, timeout=1.0, stream=stream,
                          retry=RetryPolicy(max_retries=30, backoff=0.01, max_backoff=0.05),
                          cache_path=tmp_path / "cache.sqlite")
        got = b.chat_many([user(p) for p in prompts], temperature=0, max_tokens=12)
        assert [g.text for g in got] == [d.text for d in direct]  # none lost, none swapped
        for action in ("ok", "429", "500", "503", "stall", "drop", "cut"):
            assert proxy.counts[action] >= 1, action
        st = b.stats()
        assert st["ok"] == len(prompts) and "failed" not in st
        assert st["retry_http_429"] >= 1 and st["retry_http_500"] >= 1 and st["retry_timeout"] >= 1
        assert st.get("retry_connection", 0) + st.get("retry_bad_body", 0) >= 2  # drop + cut
        assert len(b.cache) == len(prompts)  # exactly one stored answer per request
        # every request the proxy forwarded reached the server once ("cut" ones were answered, then cut)
        assert server.stats()["chat_requests"] - before == proxy.counts["forwarded"]

        # a rerun is answered from the cache: no request leaves the client
        again = OpenAIBackend(proxy.url, "tiny", stream=stream, cache_path=tmp_path / "cache.sqlite")
        n_forwarded = proxy.counts["forwarded"]
        assert [g.text for g in again.chat_many([user(p) for p in prompts], temperature=0, max_tokens=12)] == \
            [d.text for d in direct]
        assert proxy.counts["forwarded"] == n_forwarded and again.stats() == {"cache_hits": len(prompts)}
    finally:
        proxy.close()


def test_retries_exhausted_raise_one_line_error(server, tmp_path):
    proxy = FaultProxy(server.port, ["500"])
    try:
        b = OpenAIBackend(proxy.url, "tiny", retry=RetryPolicy(max_retries=2, backoff=0.01))
        with pytest.raises(BackendError, match=r"giving up after 3 attempts \(last: HTTP 500\)"):
            b.chat(user("hi there"), max_tokens=4)
    finally:
        proxy.close()


def test_offline_backend_is_deterministic():
    text = ("The tar command stores many files in one archive. Use tar -czf to create a gzip archive. "
            "The -x option extracts files. Archives keep permissions and ownership of the files.")
    a, b = OfflineBackend(), OfflineBackend()
    assert a.chat(user(text)).text == b.chat(user(text)).text
    assert "tar" in a.chat(user(text)).text and a.chat(user(text), max_tokens=5).text.count(" ") == 4


# --------------------------------------------------------------------------- synth run: kill, resume, key
def _rewrite_recipe(path: Path, base_url: str, key_env: str, n_docs: int) -> Path:
    recipe = {
        "name": "rewrite-test", "executor": "local",
        "backend": {"kind": "openai", "base_url": base_url, "model": "tiny", "api_key_env": key_env,
                    "max_concurrency": 2, "timeout_s": 30, "max_retries": 3, "backoff_s": 0.01},
        "commands": {"enabled": False}, "qa": {"enabled": False},
        "rewrite": {"enabled": True, "max_chars": 400, "max_docs_per_shard": n_docs, "batch_size": 4,
                    "min_key_term_recall": 0.0, "min_words": 1,
                    "templates": [{"name": "summary", "prompt": "Summarise {title}:\n{text}", "max_tokens": 24}]},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def _docs_shard(d: Path, n: int) -> Path:
    from minisigma.core.shards import ShardWriter

    d.mkdir(parents=True, exist_ok=True)
    with ShardWriter(d / "00000.jsonl.gz") as w:
        for i in range(n):
            cmd, task = list(TOOLS.items())[i % len(TOOLS)]
            w.write({"id": f"doc{i:03d}", "source": "manpages", "url": f"test://doc/{i}",
                     "metadata": {"title": f"page {i}"},
                     "text": f"Section {i}. To {task}, run {cmd}. " * 3})
    return d


def _synth_cmd(recipe, in_dir, out_dir):
    return [sys.executable, "-c", "from minisigma.cli import main; main()", "synth", str(recipe),
            "--in", str(in_dir), "--out", str(out_dir)]


def test_killed_run_resumes_without_repeating_calls_and_key_never_written(server, tmp_path):
    n = 60
    key_env, key = "MINISIGMA_TEST_API_KEY", "sk-test-" + secrets.token_hex(16)
    in_dir = _docs_shard(tmp_path / "in", n)
    out = tmp_path / "run"
    proxy = FaultProxy(server.port, ["ok"])  # transparent here; it records the Authorization header
    recipe = _rewrite_recipe(tmp_path / "recipe.yaml", proxy.url + "/v1", key_env, n)
    env = {**os.environ, key_env: key, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        start = server.stats().get("chat_requests", 0)
        with open(logs / "run1.log", "wb") as log:
            p = subprocess.Popen(_synth_cmd(recipe, in_dir, out), env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + 120
            while server.stats().get("chat_requests", 0) - start < 12 and time.time() < deadline and p.poll() is None:
                time.sleep(0.01)
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert p.returncode == -signal.SIGKILL
        cache = out / "cache" / "llm_cache.sqlite"
        with sqlite3.connect(cache) as c:
            cached = c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert 0 < cached < n, "the run must be killed part-way"
        assert not (out / "rewrites" / "00000.jsonl.gz").exists()
        killed_at = server.stats()["chat_requests"]

        r = subprocess.run(_synth_cmd(recipe, in_dir, out), env=env, capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        (logs / "run2.log").write_bytes(r.stdout + r.stderr)
        # the resumed run asked only for what the cache did not have: each missing answer once
        assert server.stats()["chat_requests"] - killed_at == n - cached
        m = json.loads((out / "rewrites" / "manifest.json").read_text())
        c = m["counts"]
        assert c["in"] == n == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
        from minisigma.core.shards import read_docs

        recs = list(read_docs(out / "rewrites" / "00000.jsonl.gz"))
        assert len({r["metadata"]["source_id"] for r in recs}) == len(recs) == c["out"]

        # a full rerun from scratch of the stage is served entirely from the cache
        first = (out / "rewrites" / "00000.jsonl.gz").read_bytes()
        import shutil

        shutil.rmtree(out / "rewrites")
        before = server.stats()["chat_requests"]
        r = subprocess.run(_synth_cmd(recipe, in_dir, out), env=env, capture_output=True, timeout=300)
        assert r.returncode == 0
        (logs / "run3.log").write_bytes(r.stdout + r.stderr)
        assert server.stats()["chat_requests"] == before
        assert (out / "rewrites" / "00000.jsonl.gz").read_bytes() == first
        m = json.loads((out / "rewrites" / "manifest.json").read_text())
        assert m["stats"]["backend_cache_hits"] == n and "backend_requests" not in m["stats"]
    finally:
        proxy.close()

    # the key was used (the proxy saw it) ...
    assert proxy.auth_headers and set(proxy.auth_headers) == {f"Bearer {key}"}
    # ... and appears in no file the run wrote (shards, rejects, manifests, .parts, cache + WAL) nor its logs
    files = [f for f in list(out.rglob("*")) + list(logs.rglob("*")) if f.is_file()]
    assert any(f.name.startswith("llm_cache.sqlite") for f in files)
    leaked = [str(f) for f in files if key.encode() in f.read_bytes()]
    assert leaked == []
    assert key_env.encode() in (out / "rewrites" / "manifest.json").read_bytes()  # the NAME is recorded


def test_missing_api_key_is_a_one_line_error(tmp_path):
    recipe = _rewrite_recipe(tmp_path / "r.yaml", "http://127.0.0.1:9/v1", "MINISIGMA_UNSET_KEY_VAR", 1)
    in_dir = _docs_shard(tmp_path / "in", 1)
    env = {k: v for k, v in os.environ.items() if k != "MINISIGMA_UNSET_KEY_VAR"}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run(_synth_cmd(recipe, in_dir, tmp_path / "out"), env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        "error: backend: environment variable MINISIGMA_UNSET_KEY_VAR (the API key) is not set"


def test_identical_concurrent_requests_are_sent_once(server, tmp_path):
    before = server.stats()["chat_requests"]
    b = OpenAIBackend(server.url, "tiny", max_concurrency=4, cache_path=tmp_path / "c.sqlite")
    outs = b.chat_many([user("list every running process")] * 8 + [user("print the kernel version and machine name")] * 4,
                       temperature=0, max_tokens=8)
    assert server.stats()["chat_requests"] - before == 2
    assert len({o.text for o in outs[:8]}) == 1 and b.stats() == {"cache_hits": 10, "ok": 2, "requests": 2}
