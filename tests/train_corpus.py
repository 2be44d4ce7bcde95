"""A small corpus of real system documentation for the training tests.

Before the curation pipeline has produced shards, the tests need real text that every machine with
Python has: the rendered documentation (pydoc) of standard-library modules about processes, files,
sockets and the like (source "pydoc"), and those modules' source code (source "pysource"). Written
as curated shards with minisigma.core.shards.ShardWriter, so the code under test reads them exactly as
it will read the curation output.
"""

from __future__ import annotations

import importlib
import inspect
import pydoc
from pathlib import Path

from minisigma.core.shards import ShardWriter, stable_id, shard_name

MODULES = ["argparse", "subprocess", "shutil", "os", "pathlib", "socket", "threading", "logging", "json",
           "tarfile", "zipfile", "gzip", "http.client", "urllib.request", "ssl", "signal", "tempfile",
           "sqlite3", "multiprocessing.pool", "email.message", "csv", "sched", "selectors", "configparser",
           "getopt", "glob", "fnmatch", "platform", "sysconfig", "pty", "tty", "shlex", "zipapp", "venv"]


def stdlib_docs(modules=MODULES) -> list[dict]:
    docs = []
    for name in modules:
        mod = importlib.import_module(name)
        text = pydoc.render_doc(mod, renderer=pydoc.plaintext)
        docs.append({"id": stable_id("pydoc", name), "text": text, "source": "pydoc", "url": f"pydoc:{name}",
                     "metadata": {"title": name, "category": "docs"}})
        try:
            src = inspect.getsource(mod)
        except (OSError, TypeError):
            continue
        docs.append({"id": stable_id("pysource", name), "text": src, "source": "pysource", "url": f"file:{name}",
                     "metadata": {"title": name, "category": "code"}})
    return docs


def split_docs(docs: list[dict], max_chars: int = 6000) -> list[dict]:
    """Cut long documents into sections (ids stay content-addressed), so the by-document val split
    has enough documents to be meaningful."""
    out = []
    for d in docs:
        text, part = d["text"], 0
        while text:
            cut = text.rfind("\n\n", 0, max_chars) if len(text) > max_chars else len(text)
            cut = cut if cut > max_chars // 4 else min(len(text), max_chars)
            out.append({**d, "id": stable_id(d["source"], f"{d['url']}#{part}"), "text": text[:cut],
                        "url": f"{d['url']}#{part}"})
            text, part = text[cut:].lstrip("\n"), part + 1
    return out


def write_corpus(out_dir: Path, docs: list[dict], per_shard: int = 200) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(docs), per_shard):
        with ShardWriter(out_dir / shard_name(i // per_shard)) as w:
            w.write_all(docs[i:i + per_shard])
    return out_dir


def build(out_dir: Path, modules=MODULES) -> Path:
    return write_corpus(out_dir, split_docs(stdlib_docs(modules)))


# ----------------------------------------------------------------------------- shared test data
TEST_MODULES = ["argparse", "subprocess", "shutil", "os", "pathlib", "socket", "logging", "tarfile",
                "tempfile", "signal", "selectors", "shlex", "glob", "platform"]
_CACHE: dict[str, Path] = {}


def tiny_tokens(tmp_path_factory, vocab_size: int = 384, val_fraction: float = 0.1) -> Path:
    """Curated shards of TEST_MODULES -> tokenizer + train.bin/val.bin, built once per test process."""
    key = f"{vocab_size}-{val_fraction}"
    if key not in _CACHE:
        from model.data import DataSection, tokenize_corpus
        from model.tokenizer import TokenizerSection, build_tokenizer

        root = tmp_path_factory.mktemp("train-corpus")
        curated = build(root / "curated", TEST_MODULES)
        tok = build_tokenizer(TokenizerSection(vocab_size=vocab_size), curated, root / "tokens")
        tokenize_corpus(curated, tok, root / "tokens", DataSection(val_fraction=val_fraction))
        _CACHE[key] = root
    return _CACHE[key]


def write_recipe(path: Path, **sections) -> Path:
    """A training recipe YAML from nested dicts (tests build small variants of recipes/train/tiny.yaml)."""
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def doc_pairs(modules=("shutil", "os", "os.path", "subprocess", "pathlib", "tempfile", "glob", "shlex")) -> list[dict]:
    """Instruction pairs from real docstrings: "What does shutil.copy do?" -> its summary line."""
    pairs = []
    for name in modules:
        mod = importlib.import_module(name)
        for attr in sorted(dir(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or not callable(obj):
                continue
            doc = inspect.getdoc(obj) or ""
            summary = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
            if 10 <= len(summary) <= 200:
                pairs.append({"task": f"What does {name}.{attr} do?", "command": summary, "tool": name})
    return pairs
