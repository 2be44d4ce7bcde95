"""`minisigma serve`: an OpenAI-compatible HTTP endpoint over this project's own model.

Routes: GET /v1/models, GET /health, GET /stats (request counters, for tests and benchmarks),
POST /v1/chat/completions and POST /v1/completions, each non-streaming or streaming
(server-sent events ending with `data: [DONE]`, as the OpenAI API does).

This is the backend side of synth's backend boundary: it imports the model package; the synth
pipeline only ever talks to it over HTTP (synth.backends.OpenAIBackend).

Concurrency: HTTP handling is threaded; the model runs in one worker thread. Non-streaming
requests that arrive together are batched (same sampling parameters -> one left-padded batch in
model.generation), so N concurrent clients get more tokens/s than one. Streaming requests run one
at a time under the same model lock and send each text delta as soon as it is decoded.
Greedy decoding (temperature 0) of a prompt gives the same text whether batched or not.
The stdlib http.server is enough here: this is a test/dev endpoint, not a production server.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from minisigma.core.errors import UserError

DEFAULT_MAX_TOKENS = 64


class BadRequest(Exception):
    pass


@dataclass
class GenRequest:
    prompt_ids: list[int]
    params: tuple  # (max_tokens, temperature, top_k, top_p, stop, seed): the batching key
    done: threading.Event = field(default_factory=threading.Event)
    result: list[int] | None = None
    error: BaseException | None = None


class ModelServer:
    """The model, its tokenizer, a batching worker thread and counters."""

    def __init__(self, checkpoint: str | Path, model_name: str | None = None, max_batch: int = 8,
                 batch_wait_s: float = 0.005, device: str = "auto"):
        import torch

        from model.io import load_pretrained

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, self.cfg, self.tok = load_pretrained(checkpoint, device=device)
        if self.tok is None:
            raise UserError(f"{checkpoint}: no tokenizer.json next to the weights")
        self.model_name = model_name or Path(checkpoint).resolve().name
        self.max_batch = max(1, max_batch)
        self.batch_wait_s = batch_wait_s
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

    # -- prompts
    def chat_prompt(self, messages) -> list[int]:
        from model.chat import render_prompt

        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        msgs = []
        for m in messages:
            if not isinstance(m, dict):
                raise BadRequest("each message must be an object")
            content = m.get("content")
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            msgs.append({"role": m.get("role"), "content": content})
        try:
            return render_prompt(msgs, self.tok)
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def text_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise BadRequest("'prompt' must be a non-empty string")
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        if not ids:
            raise BadRequest("'prompt' is empty after tokenization")
        return ids

    def sampling(self, body: dict, n_prompt: int) -> tuple:
        if int(body.get("n", 1) or 1) != 1:
            raise BadRequest("only n=1 is supported")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
        temperature = body.get("temperature", 1.0)
        top_p = body.get("top_p")
        top_k = body.get("top_k")
        seed = body.get("seed")
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        try:
            max_tokens, temperature = int(max_tokens), float(temperature)
            top_p = None if top_p is None else float(top_p)
            top_k = None if top_k in (None, 0, -1) else int(top_k)
            seed = None if seed is None else int(seed)
        except (TypeError, ValueError):
            raise BadRequest("max_tokens/temperature/top_p/top_k/seed must be numbers") from None
        if max_tokens < 1 or temperature < 0 or (top_p is not None and not 0 < top_p <= 1):
            raise BadRequest("max_tokens must be >= 1, temperature >= 0, top_p in (0, 1]")
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest("'stop' must be a string or a list of strings")
        limit = self.cfg.max_seq_len * 4
        if n_prompt + max_tokens > limit:
            raise BadRequest(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds {limit}")
        return (max_tokens, temperature, top_k, top_p, tuple(stop), seed)

    # -- generation
    def _eos(self) -> list[int]:
        from model.chat import stop_ids
        from model.generation import eos_ids_of

        return sorted(set(stop_ids(self.tok)) | set(eos_ids_of(self.tok)))

    def _run(self, prompts: list[list[int]], params: tuple):
        from model.generation import stream_ids

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
                    r.result = o
                    r.done.set()
            except BaseException as e:  # report to every waiting request, keep serving
                for r in batch:
                    r.error = e
                    r.done.set()

    def generate(self, prompt_ids: list[int], params: tuple, timeout: float = 600) -> list[int]:
        req = GenRequest(prompt_ids, params)
        self.queue.put(req)
        if not req.done.wait(timeout):
            raise TimeoutError("generation timed out")
        if req.error is not None:
            raise req.error
        return req.result or []

    def _text(self, gen_ids: list[int], chat: bool) -> str:
        # a chat answer is encoded after one space (model/chat.py); a text completion is not
        from model.chat import answer_text

        return answer_text(self.tok, gen_ids) if chat else self.tok.decode(gen_ids)

    def finish(self, gen_ids: list[int], params: tuple, chat: bool = False) -> tuple[str, str]:
        text = self._text(gen_ids, chat)
        stop = params[4]
        hits = [i for i in (text.find(s) for s in stop) if i >= 0]
        if hits:
            return text[:min(hits)], "stop"
        return text, ("length" if len(gen_ids) >= params[0] else "stop")

    def stream(self, prompt_ids: list[int], params: tuple, chat: bool = False):
        """Yield (text delta, None) while decoding, then ("", finish_reason, n_generated)."""
        stop = params[4]
        gen: list[int] = []
        sent = 0
        finish = None
        with self.lock:
            for tokens in self._run([prompt_ids], params):
                if tokens[0] is None:
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


def make_handler(ms: ModelServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "minisigma-serve/1"

        def log_message(self, fmt, *args):  # quiet; counters are at /stats
            pass

        def _json(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, msg: str, kind: str = "invalid_request_error") -> None:
            self._json(code, {"error": {"message": msg, "type": kind, "code": code}})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._json(200, {"object": "list", "data": [
                    {"id": ms.model_name, "object": "model", "created": ms.created, "owned_by": "minisigma"}]})
            elif path == "/health":
                self._json(200, {"status": "ok"})
            elif path == "/stats":
                self._json(200, ms.stats())
            else:
                self._error(404, f"no route {path}")

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            kind = {"/v1/chat/completions": "chat", "/chat/completions": "chat",
                    "/v1/completions": "text", "/completions": "text"}.get(path)
            try:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
            except (ValueError, OSError):
                return
            if kind is None:
                return self._error(404, f"no route {path}")
            ms.count(f"{kind}_requests")
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                ids = ms.chat_prompt(body.get("messages")) if kind == "chat" else ms.text_prompt(body.get("prompt"))
                params = ms.sampling(body, len(ids))
            except json.JSONDecodeError:
                return self._error(400, "the request body is not valid JSON")
            except BadRequest as e:
                return self._error(400, str(e))
            rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
            try:
                if body.get("stream"):
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._stream(kind, rid, ids, params, include_usage)
                else:
                    gen = ms.generate(ids, params)
                    text, finish = ms.finish(gen, params, chat=kind == "chat")
                    ms.count("completion_tokens", len(gen))
                    choice = {"index": 0, "finish_reason": finish}
                    if kind == "chat":
                        choice["message"] = {"role": "assistant", "content": text}
                    else:
                        choice["text"] = text
                    self._json(200, {"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                                     "created": int(time.time()), "model": ms.model_name, "choices": [choice],
                                     "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen),
                                               "total_tokens": len(ids) + len(gen)}})
            except (BrokenPipeError, ConnectionResetError):
                ms.count("client_disconnects")
            except Exception as e:  # a server-side failure is a 500 with one line
                ms.count("errors")
                try:
                    self._error(500, f"{type(e).__name__}: {e}", "server_error")
                except OSError:
                    pass

        def _event(self, obj) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()

        def _stream(self, kind, rid, ids, params, include_usage) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            created = int(time.time())
            obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

            def chunk(piece, finish, role=False):
                if kind == "chat":
                    delta = {"role": "assistant", "content": piece} if role else ({"content": piece} if piece else {})
                    ch = {"index": 0, "delta": delta, "finish_reason": finish}
                else:
                    ch = {"index": 0, "text": piece, "finish_reason": finish}
                return {"id": rid, "object": obj, "created": created, "model": ms.model_name, "choices": [ch]}

            if kind == "chat":
                self._event(chunk("", None, role=True))
            n_gen = 0
            for piece, end in ms.stream(ids, params, chat=kind == "chat"):
                if end is None:
                    self._event(chunk(piece, None))
                else:
                    finish, n_gen = end
                    self._event(chunk("", finish))
            ms.count("completion_tokens", n_gen)
            if include_usage:
                self._event({"id": rid, "object": obj, "created": created, "model": ms.model_name, "choices": [],
                             "usage": {"prompt_tokens": len(ids), "completion_tokens": n_gen,
                                       "total_tokens": len(ids) + n_gen}})
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          max_batch: int = 8, device: str = "auto", ready=None) -> None:
    """Run the server until interrupted. `ready(port)` is called once it listens (port 0 = any free port)."""
    ms = ModelServer(checkpoint, model_name=model_name, max_batch=max_batch, device=device)
    try:
        httpd = _Server((host, port), make_handler(ms))
    except OSError as e:
        ms.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    actual = httpd.server_address[1]
    print(f"minisigma serve: model {ms.model_name!r} ({ms.device}) on http://{host}:{actual}/v1", flush=True)
    if ready:
        ready(actual)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        ms.close()
