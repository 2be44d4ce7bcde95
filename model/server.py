"""`minisigma serve`: an OpenAI-compatible HTTP endpoint over this project's own model.

Routes: GET /v1/models, GET /health, GET /stats (request counters, for tests and benchmarks),
POST /v1/chat/completions and POST /v1/completions, each non-streaming or streaming
(server-sent events ending with `data: [DONE]`, as the OpenAI API does).

This is the backend side of synth's backend boundary: it imports the model package; the synth
pipeline only ever talks to it over HTTP (synth.backends.OpenAIBackend).

Security and limits (every one answered with an OpenAI-style JSON error, never a traceback):

- **API key**: `Authorization: Bearer KEY` on every route but /health, compared in constant time
  (hmac.compare_digest); 401 without it or with a wrong one. The key comes from the environment
  (MINISIGMA_API_KEY) or a file (`--api-key-file`), never from the command line, where `ps` shows
  it. Without a key the server refuses to start unless `--no-auth` asks for that, and then only on
  a loopback address.
- **request size**: a Content-Length over `max_body_bytes` is answered 413 from the headers, before
  any of the body is read; a chunked body is cut off at the same size (413).
- **slow clients**: the request line and headers must arrive within `header_timeout_s` of the
  connection opening (a byte now and then does not extend it), the body within `body_timeout_s`
  (408); at most `max_connections` connections are open at once, more are answered 503 at once.
- **fields**: every request field is checked (type, finiteness, range); a bad one is a 400 whose
  `param` names it. The prompt's length is checked before it is tokenized: a prompt with more
  characters than the context could hold in tokens (context x the longest token's length) is
  refused without tokenizing it.

Why aiohttp (aiohttp.web) rather than the stdlib http.server this used to be: it is already a
dependency (the crawler's client), well kept, parses HTTP with llhttp (header line and field size
limits built in), and is asynchronous, so idle or slow connections cost no thread each, and it
offers what the limits above need: a client_max_size body cap, a timer from the connection's start
that closes one whose request never completes (keepalive_timeout, used as the header deadline),
and a low-level Server whose protocol factory can refuse connections over the cap. The stdlib
server would need a thread per connection and a hand-written deadline for each of these.
uvicorn/starlette are not installed here; hypercorn would be a new dependency for the same.

Concurrency: the model runs in one worker thread. Non-streaming requests that arrive together are
batched (same sampling parameters -> one left-padded batch in model.generation), so N concurrent
clients get more tokens/s than one. Streaming requests run one at a time under the same model lock
and send each text delta as soon as it is decoded. Greedy decoding (temperature 0) of a prompt
gives the same text whether batched or not. Tokenizing and streaming use a small fixed thread pool.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from minisigma.core.errors import UserError
from model.chat import answer_text, render_prompt, stop_ids
from model.generation import eos_ids_of, stream_ids
from model.io import load_pretrained

DEFAULT_MAX_TOKENS = 64
API_KEY_ENV = "MINISIGMA_API_KEY"
MIN_KEY_CHARS = 16
MAX_SEED = 1 << 63  # torch generators take 64-bit seeds; the range is kept signed-safe
MAX_STOP = 4  # as the OpenAI API
MAX_STOP_CHARS = 256
MAX_MESSAGES = 256


@dataclass
class Limits:
    """What one request and the server as a whole may take."""

    max_body_bytes: int = 1 << 20
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 64
    generation_timeout_s: float = 600.0


class BadRequest(Exception):
    """A 400 naming the request field (`param`) that is wrong."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class GenRequest:
    prompt_ids: list[int]
    params: tuple  # (max_tokens, temperature, top_k, top_p, stop, seed): the batching key
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    done: threading.Event = field(default_factory=threading.Event)

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        def set_it():
            if not self.future.done():
                if error is not None:
                    self.future.set_exception(error)
                else:
                    self.future.set_result(result)
        try:
            self.loop.call_soon_threadsafe(set_it)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass
        self.done.set()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_field(body: dict, name: str, lo: int, hi: int, default=None):
    v = body.get(name, default)
    if v is None:
        return default
    if not _is_int(v):
        raise BadRequest(name, f"'{name}' must be an integer, got {_show(v)}")
    if not lo <= v <= hi:
        raise BadRequest(name, f"'{name}' must be between {lo} and {hi}, got {_show(v)}")
    return v


def _number_field(body: dict, name: str, lo: float, hi: float, default=None, lo_open: bool = False):
    v = body.get(name, default)
    if v is None:
        return default
    if not _is_number(v) or not math.isfinite(v):
        raise BadRequest(name, f"'{name}' must be a finite number, got {_show(v)}")
    if v > hi or v < lo or (lo_open and v == lo):
        interval = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise BadRequest(name, f"'{name}' must be in {interval}, got {_show(v)}")
    return float(v)


def _show(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 40 else text[:40] + "..."


class ModelServer:
    """The model, its tokenizer, a batching worker thread, request validation and counters."""

    def __init__(self, checkpoint: str | Path, model_name: str | None = None, max_batch: int = 8,
                 batch_wait_s: float = 0.005, device: str = "auto"):
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.cfg, self.tok = load_pretrained(checkpoint, device=device)
        if self.tok is None:
            raise UserError(f"{checkpoint}: no tokenizer.json next to the weights")
        self.model_name = model_name or Path(checkpoint).resolve().name
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
        self.max_context = self.cfg.max_seq_len * 4  # prompt + completion tokens
        # Every token stands for at least one character of text (byte-level BPE: a token of n
        # characters covers n bytes), so a prompt longer than max_context x the longest token
        # cannot fit: it is refused before tokenizing. Special tokens are never produced from text.
        longest = max((len(t) for t in self.tok.get_vocab()), default=1)
        self.max_prompt_chars = self.max_context * max(longest, 1)
        self.lock = threading.Lock()  # one forward pass at a time
        self.queue: queue.Queue[GenRequest] = queue.Queue()
        self.counts: Counter = Counter()
        self.counts_lock = threading.Lock()
        self.created = int(time.time())
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._batch_loop, name="minisigma-batcher", daemon=True)
        self._worker.start()

    # -- counters
    def count(self, key: str, n: int = 1) -> None:
        with self.counts_lock:
            self.counts[key] += n

    def stats(self) -> dict:
        with self.counts_lock:
            return dict(self.counts)

    # -- validation (cheap, before any tokenizing)
    def _check_length(self, n_chars: int, param: str) -> None:
        if n_chars > self.max_prompt_chars:
            raise BadRequest(param, f"'{param}' is too long: {n_chars} characters, more than the "
                                    f"{self.max_context}-token context can hold")

    def chat_messages(self, messages) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages", "'messages' must be a non-empty list")
        if len(messages) > MAX_MESSAGES:
            raise BadRequest("messages", f"'messages' holds {len(messages)} messages, more than {MAX_MESSAGES}")
        msgs, total = [], 0
        for i, m in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise BadRequest(where, f"'{where}' must be an object")
            role, content = m.get("role"), m.get("content")
            if role not in ("system", "user", "assistant"):
                raise BadRequest(f"{where}.role", f"'{where}.role' must be system, user or assistant, got {_show(role)}")
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                parts = []
                for j, p in enumerate(content):
                    if not isinstance(p, dict) or not isinstance(p.get("text", ""), str):
                        raise BadRequest(f"{where}.content[{j}]", f"'{where}.content[{j}]' must be a text part")
                    parts.append(p.get("text", ""))
                content = "".join(parts)
            if not isinstance(content, str):
                raise BadRequest(f"{where}.content", f"'{where}.content' must be a string")
            total += len(content)
            self._check_length(total, "messages")
            msgs.append({"role": role, "content": content})
        if msgs[-1]["role"] == "assistant":
            raise BadRequest("messages", "the last message must not be the assistant's")
        if any(m["role"] == "system" for m in msgs[1:]):
            raise BadRequest("messages", "a system message may only come first")
        return msgs

    def text_prompt_text(self, prompt) -> str:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("prompt", "'prompt' must be a non-empty string")
        self._check_length(len(prompt), "prompt")
        return prompt

    def sampling(self, body: dict) -> tuple:
        """The sampling parameters, each checked; the prompt's token count is checked later."""
        n = body.get("n")
        if n is not None and not (_is_int(n) and n == 1):
            raise BadRequest("n", f"'n' must be 1 (one choice per request is supported), got {_show(n)}")
        for name in ("max_completion_tokens", "max_tokens"):
            _int_field(body, name, 1, self.max_context)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        temperature = _number_field(body, "temperature", 0.0, 2.0, default=1.0)
        top_p = _number_field(body, "top_p", 0.0, 1.0, lo_open=True)
        top_k = body.get("top_k")
        if top_k is not None and not (_is_int(top_k) and (top_k == -1 or 0 <= top_k <= self.cfg.vocab_size)):
            raise BadRequest("top_k", f"'top_k' must be an integer from 0 to {self.cfg.vocab_size} (or -1), got {_show(top_k)}")
        top_k = None if top_k in (None, 0, -1) else top_k
        seed = _int_field(body, "seed", 0, MAX_SEED - 1)
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("stop", f"'stop' must be a non-empty string or a list of them, got {_show(stop)}")
        if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise BadRequest("stop", f"'stop' holds at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters")
        for name in ("stream", "echo", "logprobs"):
            if body.get(name) is not None and not isinstance(body.get(name), bool):
                raise BadRequest(name, f"'{name}' must be true or false, got {_show(body.get(name))}")
        opts = body.get("stream_options")
        if opts is not None and not (isinstance(opts, dict) and isinstance(opts.get("include_usage", False), bool)):
            raise BadRequest("stream_options", "'stream_options' must be an object like {\"include_usage\": true}")
        if body.get("model") is not None and not isinstance(body.get("model"), str):
            raise BadRequest("model", f"'model' must be a string, got {_show(body.get('model'))}")
        return (max_tokens, temperature, top_k, top_p, tuple(stop), seed)

    def prompt_ids(self, kind: str, body: dict) -> tuple[list[int], str]:
        """Validated, length-checked, then tokenized (run in a worker thread)."""
        if kind == "chat":
            msgs = self.chat_messages(body.get("messages"))
            self.count("prompts_tokenized")
            try:
                ids = render_prompt(msgs, self.tok)
            except ValueError as e:
                raise BadRequest("messages", str(e)) from None
            param = "messages"
        else:
            text = self.text_prompt_text(body.get("prompt"))
            self.count("prompts_tokenized")
            ids = self.tok.encode(text, add_special_tokens=False).ids
            if not ids:
                raise BadRequest("prompt", "'prompt' is empty after tokenization")
            param = "prompt"
        return ids, param

    def check_fits(self, n_prompt: int, params: tuple, param: str) -> None:
        if n_prompt + params[0] > self.max_context:
            raise BadRequest(param, f"the prompt ({n_prompt} tokens) + max_tokens ({params[0]}) exceeds "
                                    f"the context of {self.max_context} tokens")

    # -- generation
    def _eos(self) -> list[int]:
        return sorted(set(stop_ids(self.tok)) | set(eos_ids_of(self.tok)))

    def _run(self, prompts: list[list[int]], params: tuple):
        max_tokens, temperature, top_k, top_p, stop, seed = params
        stop_fn = None
        if stop:
            def stop_fn(r, gen):
                return any(s in self.tok.decode(gen) for s in stop)
        return stream_ids(self.model, prompts, max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, eos_ids=self._eos(), seed=seed, stop_fn=stop_fn)

    def _batch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch, rest = [first], []
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    r = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                (batch if r.params == first.params and len(batch) < self.max_batch else rest).append(r)
            for r in rest:
                self.queue.put(r)
            batch = [r for r in batch if not r.future.cancelled()]  # its client went away
            if not batch:
                continue
            try:
                with self.lock:
                    outs: list[list[int]] = [[] for _ in batch]
                    for tokens in self._run([r.prompt_ids for r in batch], first.params):
                        for i, t in enumerate(tokens):
                            if t is not None:
                                outs[i].append(t)
                self.count("batches")
                self.count("batched_requests", len(batch))
                for r, o in zip(batch, outs):
                    r.resolve(o)
            except Exception as e:  # report to every waiting request, keep serving
                for r in batch:
                    r.resolve(error=e)

    def submit(self, prompt_ids: list[int], params: tuple) -> asyncio.Future:
        """Queue a non-streaming generation; the future gets the generated ids (no thread waits)."""
        loop = asyncio.get_running_loop()
        req = GenRequest(prompt_ids, params, loop, loop.create_future())
        self.queue.put(req)
        return req.future

    def _text(self, gen_ids: list[int], chat: bool) -> str:
        # a chat answer is encoded after one space (model/chat.py); a text completion is not

        return answer_text(self.tok, gen_ids) if chat else self.tok.decode(gen_ids)

    def finish(self, gen_ids: list[int], params: tuple, chat: bool = False) -> tuple[str, str]:
        text = self._text(gen_ids, chat)
        stop = params[4]
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
            return text[:min(hits)], "stop"
        return text, ("length" if len(gen_ids) >= params[0] else "stop")

    def stream(self, prompt_ids: list[int], params: tuple, chat: bool = False,
               cancel: threading.Event | None = None):
        """Yield (text delta, None) while decoding, then ("", (finish_reason, n_generated)).
        Stops early, releasing the model, once `cancel` is set (the client went away)."""
        stop = params[4]
        gen: list[int] = []
        sent = 0
        finish = None
        with self.lock:
            for tokens in self._run([prompt_ids], params):
                if tokens[0] is None or (cancel is not None and cancel.is_set()):
                    break
                gen.append(tokens[0])
                text = self._text(gen, chat)
                hits = [i for i in (text.find(s) for s in stop) if i >= 0]
                if hits:
                    cut = min(hits)
                    if cut > sent:
                        yield text[sent:cut], None
                    sent = cut
                    finish = "stop"
                    break
                safe = len(text) - (1 if text.endswith("\ufffd") else 0)
                for s in stop:  # hold back what may become a stop sequence
                    for n in range(min(len(s) - 1, len(text)), 0, -1):
                        if text.endswith(s[:n]):
                            safe = min(safe, len(text) - n)
                            break
                if safe > sent:
                    yield text[sent:safe], None
                    sent = safe
        if finish is None:
            text = self._text(gen, chat)
            if len(text) > sent:
                yield text[sent:], None
            finish = "length" if len(gen) >= params[0] else "stop"
        yield "", (finish, len(gen))

    def close(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------- HTTP
def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           close: bool = False, headers: dict | None = None) -> web.Response:
    resp = web.json_response({"error": {"message": message, "type": kind, "param": param, "code": status}},
                             status=status, headers=headers)
    if close:
        resp.force_close()
    return resp


class App:
    """The aiohttp application over a ModelServer, with the key and the limits."""

    ROUTES = {"/v1/chat/completions": "chat", "/chat/completions": "chat",
              "/v1/completions": "text", "/completions": "text"}

    def __init__(self, ms: ModelServer, api_key: str | None, limits: Limits | None = None):
        self.ms = ms
        self.limits = limits or Limits()
        self._key = None if api_key is None else ("Bearer " + api_key).encode()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="minisigma-serve")
        self.app = web.Application(client_max_size=self.limits.max_body_bytes,
                                   middlewares=[self._guard])
        self.app.router.add_get("/health", self.health)
        for path in ("/v1/models", "/models"):
            self.app.router.add_get(path, self.models)
        self.app.router.add_get("/stats", self.stats)
        for path in self.ROUTES:
            self.app.router.add_post(path, self.complete)

    def authorized(self, request: web.Request) -> bool:
        if self._key is None:
            return True
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._key)

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        """Key, size and time limits, and one JSON line for whatever goes wrong."""
        path = request.path.rstrip("/") or "/"
        try:
            if path != "/health" and not self.authorized(request):
                self.ms.count("unauthorized")
                return _error(401, "a valid API key is required: Authorization: Bearer KEY",
                              "authentication_error", headers={"WWW-Authenticate": "Bearer"})
            n = request.content_length
            if n is not None and n > self.limits.max_body_bytes:
                self.ms.count("too_large")
                # answered from the headers: none of the body is read, and the connection is closed
                return _error(413, f"the request body ({n} bytes) is larger than {self.limits.max_body_bytes} bytes",
                              close=True)
            return await handler(request)
        except web.HTTPException as e:
            if e.status == 413:
                self.ms.count("too_large")
                return _error(413, f"the request body is larger than {self.limits.max_body_bytes} bytes", close=True)
            if e.status in (404, 405):
                return _error(e.status, f"no route {request.method} {path}")
            return _error(e.status, e.reason)
        except (ConnectionResetError, asyncio.CancelledError):
            self.ms.count("client_disconnects")
            raise
        except Exception as e:  # a server-side failure is a 500 with one line
            self.ms.count("errors")
            return _error(500, f"{type(e).__name__}: {e}", "server_error")

    async def health(self, request):
        return web.json_response({"status": "ok"})

    async def models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": self.ms.model_name, "object": "model", "created": self.ms.created, "owned_by": "minisigma"}]})

    async def stats(self, request):
        return web.json_response(self.ms.stats())

    async def _body(self, request: web.Request) -> dict:
        try:
            raw = await asyncio.wait_for(request.read(), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise _Reply(_error(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                                close=True)) from None
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, too-long integers, nesting
            raise BadRequest(None, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(None, "the request body must be a JSON object")
        return body

    async def complete(self, request: web.Request):
        kind = self.ROUTES[request.path.rstrip("/")]
        ms = self.ms
        ms.count(f"{kind}_requests")
        loop = asyncio.get_running_loop()
        try:
            body = await self._body(request)
            params = ms.sampling(body)
            ids, param = await loop.run_in_executor(self.pool, ms.prompt_ids, kind, body)
            ms.check_fits(len(ids), params, param)
        except _Reply as r:
            return r.response
        except BadRequest as e:
            ms.count("bad_requests")
            return _error(400, str(e), param=e.param)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, kind, rid, ids, params, include_usage)
        fut = ms.submit(ids, params)
        try:
            gen = await asyncio.wait_for(fut, self.limits.generation_timeout_s)
        except asyncio.TimeoutError:
            return _error(504, "generation timed out", "server_error")
        text, finish = ms.finish(gen, params, chat=kind == "chat")
        ms.count("completion_tokens", len(gen))
        choice = {"index": 0, "finish_reason": finish}
        if kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response({
            "id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()), "model": ms.model_name, "choices": [choice],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen), "total_tokens": len(ids) + len(gen)}})

    async def _stream(self, request, kind, rid, ids, params, include_usage):
        ms = self.ms
        loop = asyncio.get_running_loop()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(piece, finish, role=False):
            if kind == "chat":
                delta = {"role": "assistant", "content": piece} if role else ({"content": piece} if piece else {})
                ch = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                ch = {"index": 0, "text": piece, "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": ms.model_name, "choices": [ch]}

        async def event(o):
            await resp.write(f"data: {o if isinstance(o, str) else json.dumps(o)}\n\n".encode())

        pieces: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def produce():  # in a pool thread: the model's decode loop, one piece at a time to the loop
            def put(item):
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, item)
                except RuntimeError:
                    cancel.set()
            try:
                for piece, end in ms.stream(ids, params, chat=kind == "chat", cancel=cancel):
                    put(("piece", (piece, end)))
            except Exception as e:
                put(("error", e))
            finally:
                put(("end", None))

        producer = loop.run_in_executor(self.pool, produce)
        n_gen = 0
        try:
            if kind == "chat":
                await event(chunk("", None, role=True))
            while True:
                what, item = await pieces.get()
                if what == "end":
                    break
                if what == "error":  # headers are sent: the error travels as an event
                    ms.count("errors")
                    await event({"error": {"message": f"{type(item).__name__}: {item}", "type": "server_error",
                                           "param": None, "code": 500}})
                    continue
                piece, end = item
                if end is None:
                    await event(chunk(piece, None))
                else:
                    finish, n_gen = end
                    await event(chunk("", finish))
            ms.count("completion_tokens", n_gen)
            if include_usage:
                await event({"id": rid, "object": obj, "created": created, "model": ms.model_name, "choices": [],
                             "usage": {"prompt_tokens": len(ids), "completion_tokens": n_gen,
                                       "total_tokens": len(ids) + n_gen}})
            await event("[DONE]")
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            ms.count("client_disconnects")
            cancel.set()
        finally:
            cancel.set()
            await asyncio.shield(producer)
        return resp

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Reply(Exception):
    """Carries a ready error response out of a helper."""

    def __init__(self, response: web.Response):
        super().__init__(response.status)
        self.response = response


_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s")


class _Busy(asyncio.Protocol):
    """A connection over the cap: answered 503 at once and closed, nothing read."""

    def __init__(self, on_refuse):
        self.on_refuse = on_refuse

    def connection_made(self, transport):
        body = json.dumps({"error": {"message": "too many connections; retry later", "type": "server_error",
                                     "param": None, "code": 503}}).encode()
        transport.write(_BUSY % (len(body), body))
        transport.close()
        self.on_refuse()


class _Capped:
    """The protocol factory: aiohttp's Server below the cap, _Busy above it.

    Connections accepted in one event-loop pass get their protocol before any of them is
    `connection_made` (and so counted in server.connections): those are counted here until the
    next pass, so a burst cannot overshoot the cap."""

    def __init__(self, server: web.Server, cap: int, count):
        self.server = server
        self.cap = max(1, cap)
        self.count = count
        self._this_pass = 0

    def _reset(self):
        self._this_pass = 0

    def __call__(self):
        if self._this_pass == 0:
            asyncio.get_running_loop().call_soon(self._reset)
        if len(self.server.connections) + self._this_pass >= self.cap:
            return _Busy(lambda: self.count("connections_refused"))
        self._this_pass += 1
        self.count("connections")
        return self.server()


# --------------------------------------------------------------------------- key and start-up
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_key(key_file: Path | None, env: dict | None = None) -> str | None:
    """The key from `key_file` (its first line), else from $MINISIGMA_API_KEY, else None."""
    env = os.environ if env is None else env
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{key_file}: cannot read the API key: {getattr(e, 'strerror', None) or e}") from None
        key = lines[0].strip() if lines else ""
        where = str(key_file)
    elif env.get(API_KEY_ENV):
        key, where = env[API_KEY_ENV].strip(), API_KEY_ENV
    else:
        return None
    if len(key) < MIN_KEY_CHARS or not key.isprintable() or " " in key:
        raise UserError(f"{where}: the API key must be at least {MIN_KEY_CHARS} printable characters without spaces")
    return key


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (bad request line, header too long, broken chunk) with its
    traceback; here each is one line: the message and the exception, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            detail = " ".join(str(exc).split())
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {detail[:200]}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def _one_line_logs() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("minisigma serve: %(message)s"))
    handler.addFilter(_OneLine())
    for name in ("aiohttp.server", "aiohttp.web", "asyncio"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.propagate = False
        log.setLevel(logging.WARNING)


async def _serve_async(app: App, host: str, port: int, ready, stop: asyncio.Event | None = None) -> None:
    limits = app.limits
    runner = web.AppRunner(app.app, handle_signals=False, access_log=None,
                           # keepalive_timeout runs from the connection's start until its first
                           # request is complete, and between requests: the header deadline
                           keepalive_timeout=limits.header_timeout_s, lingering_time=1.0,
                           max_line_size=8190, max_field_size=8190)
    await runner.setup()
    loop = asyncio.get_running_loop()
    try:
        srv = await loop.create_server(_Capped(runner.server, limits.max_connections, app.ms.count),
                                       host=host, port=port, reuse_address=True, backlog=128)
    except OSError as e:
        await runner.cleanup()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    actual = srv.sockets[0].getsockname()[1]
    auth = "API key required" if app._key is not None else "no API key (--no-auth, loopback)"
    print(f"minisigma serve: model {app.ms.model_name!r} ({app.ms.device}) on http://{host}:{actual}/v1, {auth}",
          flush=True)
    if ready:
        ready(actual)
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        srv.close()
        await runner.cleanup()


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          max_batch: int = 8, device: str = "auto", ready=None, api_key: str | None = None,
          no_auth: bool = False, limits: Limits | None = None) -> None:
    """Run the server until interrupted. `ready(port)` is called once it listens (port 0 = any free
    port). Without `api_key`, `no_auth` must be asked for, and `host` must be a loopback address."""
    if api_key is None and not no_auth:
        raise UserError(f"no API key: set {API_KEY_ENV} or pass --api-key-file FILE "
                        "(or --no-auth to serve without one, on a loopback address only)")
    if api_key is None and not is_loopback(host):
        raise UserError(f"--no-auth serves only on a loopback address (127.0.0.1, ::1), not {host}; "
                        f"set {API_KEY_ENV} or pass --api-key-file to listen on {host}")
    if api_key is not None and no_auth:
        raise UserError("--no-auth and an API key exclude each other")
    ms = ModelServer(checkpoint, model_name=model_name, max_batch=max_batch, device=device)
    app = App(ms, api_key, limits)
    _one_line_logs()
    try:
        asyncio.run(_serve_async(app, host, port, ready))
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        ms.close()
