"""LLM backends behind one small interface.

- `OpenAIBackend`: a client for any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp,
  `minisigma serve`, a hosted API): /v1/chat/completions and /v1/completions, streaming or not,
  a concurrency limit, retries with exponential backoff (429, 5xx, timeouts, dropped or truncated
  connections), and a persistent response cache so a rerun or a resumed run never pays twice
  (identical requests in flight at the same time are sent once; a sampled answer, temperature > 0,
  is cached like any other, so a rerun reproduces it instead of paying for a new sample).
  The API key is read from the environment variable the recipe names, sent only in the
  Authorization header, and never stored (the cache keeps response bodies only, the stats keep
  counts only).
- `LocalBackend` (synth/local.py): a GGUF or Hugging Face model run in this process (transformers,
  or llama-cpp-python where installed), with the same cache and accounting.
- `OfflineBackend`: deterministic and model-free (an extractive responder), for dry runs and for
  pipelines that must run without any LLM.

`requests` is the HTTP client (already a Ray dependency); a thread pool gives the concurrency.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from minisigma.core.errors import UserError
from synth.cache import ResponseCache, cache_key

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class BackendError(RuntimeError):
    """A request that cannot succeed (bad request, retries exhausted). The message never holds the key."""


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    model: str = ""


class Backend(ABC):
    """Chat and plain completions; `chat_many` keeps the order of its requests."""

    name = "backend"
    model = ""

    @abstractmethod
    def chat(self, messages: list[dict], **params) -> Completion: ...

    @abstractmethod
    def complete(self, prompt: str, **params) -> Completion: ...

    def chat_many(self, batch: Iterable[list[dict]], return_exceptions: bool = False,
                  **params) -> list[Completion | BaseException]:
        return [_call(self.chat, m, params, return_exceptions) for m in batch]

    def stats(self) -> dict:
        return {}

    def describe(self) -> dict:
        """What a manifest may record about this backend (never a secret)."""
        return {"backend": self.name, "model": self.model}


def _call(fn, messages, params, return_exceptions: bool):
    try:
        return fn(messages, **params)
    except BackendError as e:
        if return_exceptions:
            return e
        raise


# --------------------------------------------------------------------------- OpenAI-compatible
@dataclass
class RetryPolicy:
    max_retries: int = 8
    backoff: float = 0.25  # first wait, seconds; doubles per attempt (with jitter)
    max_backoff: float = 10.0

    def wait(self, attempt: int, retry_after: str | None = None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff)
            except ValueError:
                pass
        base = min(self.backoff * (2 ** attempt), self.max_backoff)
        return base * (0.5 + random.random() / 2)


@dataclass
class _Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 max_concurrency: int = 8, timeout: float = 60.0, connect_timeout: float = 5.0,
                 retry: RetryPolicy | None = None, cache_path: str | Path | None = None,
                 stream: bool = False, defaults: dict | None = None):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model
        self.max_concurrency = max(1, int(max_concurrency))
        self.timeout = (connect_timeout, timeout)
        self.retry = retry or RetryPolicy()
        self.stream = stream
        self.defaults = dict(defaults or {})
        self.cache = ResponseCache(cache_path) if cache_path else None
        self._api_key_env = api_key_env
        if api_key_env and not os.environ.get(api_key_env):
            raise UserError(f"backend: environment variable {api_key_env} (the API key) is not set")
        self._sem = threading.BoundedSemaphore(self.max_concurrency)
        self._local = threading.local()
        self._stats = _Stats()
        self._inflight: dict[str, threading.Lock] = {}
        self._inflight_lock = threading.Lock()

    # -- plumbing
    def _session(self):
        import requests

        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            self._local.session = s
        return s

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json"}
        if self._api_key_env:
            h["Authorization"] = "Bearer " + os.environ.get(self._api_key_env, "")
        return h

    def stats(self) -> dict:
        with self._stats.lock:
            return dict(sorted(self._stats.counts.items()))

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": self.base_url,
                "api_key_env": self._api_key_env, "max_concurrency": self.max_concurrency,
                "stream": self.stream}

    def post(self, endpoint: str, body: dict) -> tuple[dict, bool]:
        """POST `body` to `endpoint` with cache and retries. Returns (response json, from_cache)."""
        key = cache_key(endpoint, body)
        if self.cache is None:
            with self._sem:
                return self._post_with_retries(endpoint, body), False
        with self._key_lock(key):  # identical requests in flight together are sent once
            hit = self.cache.get(key)
            if hit is not None:
                self._stats.add("cache_hits")
                return hit, True
            with self._sem:
                resp = self._post_with_retries(endpoint, body)
            self.cache.put(key, body.get("model", ""), resp)
            return resp, False

    def _key_lock(self, key: str) -> threading.Lock:
        with self._inflight_lock:
            return self._inflight.setdefault(key, threading.Lock())

    def _post_with_retries(self, endpoint: str, body: dict) -> dict:
        import requests

        url = f"{self.base_url}/{endpoint}"
        last = ""
        for attempt in range(self.retry.max_retries + 1):
            retry_after = None
            try:
                self._stats.add("requests")
                with self._session().post(url, json=body, headers=self._headers(), timeout=self.timeout,
                                          stream=bool(body.get("stream"))) as r:
                    if r.status_code == 200:
                        data = self._read_stream(r) if body.get("stream") else r.json()
                        if not isinstance(data, dict) or not data.get("choices"):
                            raise ValueError("response without choices")
                        self._stats.add("ok")
                        return data
                    if r.status_code not in RETRY_STATUS:
                        detail = r.text[:200].replace("\n", " ")
                        if r.status_code == 401:  # `minisigma serve` and hosted APIs want a key
                            detail += (" (the key comes from the environment variable named by backend.api_key_env"
                                       + (f", {self._api_key_env}" if self._api_key_env else ", which is not set") + ")")
                        raise BackendError(f"{url}: HTTP {r.status_code}: {detail}")
                    retry_after = r.headers.get("Retry-After")
                    last = f"HTTP {r.status_code}"
                    self._stats.add(f"retry_http_{r.status_code}")
            except BackendError:
                raise
            except (requests.Timeout,) as e:
                last = f"timeout ({type(e).__name__})"
                self._stats.add("retry_timeout")
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                last = f"connection ({type(e).__name__})"
                self._stats.add("retry_connection")
            except ValueError as e:  # truncated/garbled body (JSONDecodeError is a ValueError)
                last = f"bad body ({type(e).__name__})"
                self._stats.add("retry_bad_body")
            if attempt < self.retry.max_retries:
                time.sleep(self.retry.wait(attempt, retry_after))
        self._stats.add("failed")
        raise BackendError(f"{url}: giving up after {self.retry.max_retries + 1} attempts (last: {last})")

    @staticmethod
    def _read_stream(r) -> dict:
        """Assemble an SSE stream into a non-streaming response; a stream cut before [DONE] is an error."""
        text: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        usage = None
        rid, model, obj = None, None, "chat.completion"
        done = False
        for raw in r.iter_lines(decode_unicode=False):
            if not raw:
                continue
            line = raw.decode("utf-8")
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            ev = json.loads(payload)
            rid, model = ev.get("id", rid), ev.get("model", model)
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices", []):
                i = ch.get("index", 0)
                if "delta" in ch:
                    piece = (ch.get("delta") or {}).get("content") or ""
                else:
                    obj = "text_completion"
                    piece = ch.get("text") or ""
                text.setdefault(i, []).append(piece)
                if ch.get("finish_reason"):
                    finish[i] = ch["finish_reason"]
        if not done:
            raise ValueError("stream ended before [DONE]")
        choices = []
        for i in sorted(text):
            content = "".join(text[i])
            c = {"index": i, "finish_reason": finish.get(i)}
            if obj == "chat.completion":
                c["message"] = {"role": "assistant", "content": content}
            else:
                c["text"] = content
            choices.append(c)
        out = {"id": rid, "object": obj, "model": model, "choices": choices}
        if usage:
            out["usage"] = usage
        return out

    # -- the interface
    def _body(self, params: dict) -> dict:
        body = {"model": self.model, **self.defaults, **params}
        if self.stream and "stream" not in params:
            body["stream"] = True
        if body.get("stream"):
            body.setdefault("stream_options", {"include_usage": True})
        return {k: v for k, v in body.items() if v is not None}

    @staticmethod
    def _completion(data: dict, cached: bool) -> Completion:
        ch = data["choices"][0]
        text = ch["message"]["content"] if "message" in ch else ch.get("text", "")
        u = data.get("usage") or {}
        return Completion(text=text or "", finish_reason=ch.get("finish_reason"),
                          prompt_tokens=int(u.get("prompt_tokens", 0)),
                          completion_tokens=int(u.get("completion_tokens", 0)),
                          cached=cached, model=data.get("model") or "")

    def chat(self, messages: list[dict], **params) -> Completion:
        data, cached = self.post("chat/completions", self._body({"messages": messages, **params}))
        return self._completion(data, cached)

    def complete(self, prompt: str, **params) -> Completion:
        data, cached = self.post("completions", self._body({"prompt": prompt, **params}))
        return self._completion(data, cached)

    def chat_many(self, batch: Iterable[list[dict]], return_exceptions: bool = False,
                  **params) -> list[Completion | BaseException]:
        """Run the requests with up to `max_concurrency` in flight; results keep the input order."""
        batch = list(batch)
        if len(batch) <= 1:
            return [_call(self.chat, m, params, return_exceptions) for m in batch]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(batch))) as pool:
            return list(pool.map(lambda m: _call(self.chat, m, params, return_exceptions), batch))

    def models(self) -> list[str]:
        import requests

        r = requests.get(f"{self.base_url}/models", headers=self._headers(), timeout=self.timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", [])]


# --------------------------------------------------------------------------- offline
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9`\"'(])")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{2,}")


class OfflineBackend(Backend):
    """Deterministic, model-free responder: an extractive summary of the last user message.

    It scores sentences by the document frequency of their content words and returns the best ones
    in their original order, up to `max_tokens` words. Same input -> same output, no randomness.
    """

    name = "offline"

    def __init__(self, model: str = "offline-extractive", max_sentences: int = 4):
        self.model = model
        self.max_sentences = max_sentences
        self.calls = 0

    def _respond(self, text: str, max_tokens: int | None) -> str:
        sents = [s.strip() for s in _SENT.split(" ".join(text.split())) if len(s.split()) >= 4]
        if not sents:
            return ""
        freq = Counter(w.lower() for w in _WORD.findall(text))
        scored = sorted(range(len(sents)), key=lambda i: (-sum(freq[w.lower()] for w in _WORD.findall(sents[i]))
                                                          / (1 + len(sents[i].split())) ** 0.5, i))
        keep = sorted(scored[: self.max_sentences])
        words = " ".join(sents[i] for i in keep).split()
        return " ".join(words[: max_tokens or len(words)])

    def chat(self, messages: list[dict], **params) -> Completion:
        self.calls += 1
        user = [m.get("content", "") for m in messages if m.get("role") == "user"]
        out = self._respond(user[-1] if user else "", params.get("max_tokens"))
        return Completion(text=out, finish_reason="stop", completion_tokens=len(out.split()), model=self.model)

    def complete(self, prompt: str, **params) -> Completion:
        self.calls += 1
        out = self._respond(prompt, params.get("max_tokens"))
        return Completion(text=out, finish_reason="stop", completion_tokens=len(out.split()), model=self.model)


def make_backend(cfg, cache_dir: str | Path | None = None) -> Backend:
    """Build a backend from a recipe's `backend` section (see synth.recipe.BackendConfig)."""
    if cfg.kind == "offline":
        return OfflineBackend()
    cache = cfg.cache_path or (Path(cache_dir) / "llm_cache.sqlite" if cache_dir else None)
    if cfg.kind == "local":
        from synth.local import LocalBackend, resolve_model  # synth.local builds on this module

        return LocalBackend(resolve_model(cfg.model_package, cfg.model_path), runtime=cfg.runtime,
                            cache_path=cache, batch_size=cfg.batch_size, threads=cfg.threads,
                            temperature=cfg.temperature, top_p=cfg.top_p,
                            repetition_penalty=cfg.repetition_penalty, seed=cfg.seed)
    if not cfg.base_url:
        raise UserError("backend.base_url: required for kind 'openai'")
    return OpenAIBackend(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env,
                         max_concurrency=cfg.max_concurrency, timeout=cfg.timeout_s,
                         retry=RetryPolicy(cfg.max_retries, cfg.backoff_s, cfg.max_backoff_s),
                         cache_path=cache, stream=cfg.stream)
