"""Byte-level BPE tokenizer trained on curated shards (Hugging Face `tokenizers`).

Byte-level means every string round-trips (no unknown token): the 256 byte symbols are the initial
alphabet and merges are learned on top. The special tokens of the chat format (model/chat.py) and
the document separator are added first, so their ids are fixed and small (0..len(SPECIAL_TOKENS)-1)
whatever the vocabulary size.

Output: `tokenizer.json` (the HF file, loadable by `tokenizers.Tokenizer.from_file` and by
transformers' PreTrainedTokenizerFast) and `tokenizer.manifest.json` (recipe, input shards with
sha256, documents/characters seen, special token ids, sha256 of tokenizer.json).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.shards import atomic_write_bytes, atomic_write_json, list_shards, read_docs, sha256_file

# Order matters: ids 0.. are assigned in this order. EOT separates documents in the packed
# pretraining stream; PAD fills SFT rows (never a target); the rest are the chat roles (chat.py).
EOT = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"
SPECIAL_TOKENS = [EOT, PAD, SYSTEM, USER, ASSISTANT, END]


class TokenizerSection(Section):
    """`tokenizer:` section of a training recipe."""

    vocab_size: int = Field(512, ge=len(SPECIAL_TOKENS) + 256 + 1, le=1 << 20)
    min_frequency: int = Field(2, ge=1)
    # Cap on the characters fed to the BPE trainer (documents are taken in shard order until the
    # cap); the merges of a small vocabulary converge long before the whole corpus is seen.
    max_train_chars: int = Field(20_000_000, ge=1000)
    # Reuse an existing tokenizer.json instead of training one (e.g. the data ablation tokenizes
    # raw and curated data with the same tokenizer). Relative paths are taken from the cwd.
    path: str | None = None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _limited_texts(docs: Iterable[dict], max_chars: int, stats: dict) -> Iterator[str]:
    for doc in docs:
        text = doc.get("text") or ""
        if not text:
            continue
        if stats["chars"] + len(text) > max_chars:
            text = text[: max_chars - stats["chars"]]
        stats["docs"] += 1
        stats["chars"] += len(text)
        yield text
        if stats["chars"] >= max_chars:
            return


def train_tokenizer(docs: Iterable[dict], vocab_size: int, min_frequency: int = 2,
                    max_train_chars: int = 20_000_000):
    """Train a byte-level BPE on the `text` of documents -> (tokenizers.Tokenizer, stats)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    stats = {"docs": 0, "chars": 0}
    tok.train_from_iterator(_limited_texts(docs, max_train_chars, stats), trainer=trainer)
    if stats["docs"] == 0:
        raise UserError("no documents with text to train the tokenizer on")
    for i, s in enumerate(SPECIAL_TOKENS):  # the trainer adds them first; make sure of it
        if tok.token_to_id(s) != i:
            raise RuntimeError(f"special token {s} got id {tok.token_to_id(s)}, expected {i}")
    return tok, stats


def read_tokenizer_file(path: str | Path):
    """`tokenizers.Tokenizer.from_file`, with a damaged file (bad JSON, not a tokenizer, unreadable) as a
    UserError naming it."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for every malformed file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a valid tokenizer.json ({first})") from None


def load_tokenizer(path: str | Path):
    """Load tokenizer.json (a file, or a directory that holds one) and check the special tokens."""
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UserError(f"{p}: tokenizer.json not found")
    tok = read_tokenizer_file(p)
    missing = [s for s in SPECIAL_TOKENS if tok.token_to_id(s) is None]
    if missing:
        raise UserError(f"{p}: tokenizer lacks the special tokens {', '.join(missing)}")
    return tok


def special_ids(tok) -> dict[str, int]:
    return {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}


def build_tokenizer(section: TokenizerSection, in_dir: str | Path, out_dir: str | Path):
    """Train (or copy, when `section.path` is set) the tokenizer for a corpus into out_dir.

    Writes out_dir/tokenizer.json and out_dir/tokenizer.manifest.json; returns the Tokenizer.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if section.path:
        tok = load_tokenizer(section.path)
        stats = {"docs": 0, "chars": 0, "reused": str(section.path)}
        shards = []
    else:
        shards = list_shards(in_dir)
        if not shards:
            raise UserError(f"{in_dir}: no NNNNN.jsonl.gz shards to train the tokenizer on")

        def docs():
            for s in shards:
                yield from read_docs(s)

        tok, stats = train_tokenizer(docs(), section.vocab_size, section.min_frequency,
                                     section.max_train_chars)
    data = tok.to_str().encode("utf-8")
    atomic_write_bytes(out / "tokenizer.json", data)
    atomic_write_json(out / "tokenizer.manifest.json", storage.recorded({
        "kind": "byte-level BPE (HF tokenizers)",
        "recipe": section.model_dump(),
        "vocab_size": tok.get_vocab_size(),
        "special_tokens": special_ids(tok),
        "inputs": [{"path": str(s), "sha256": sha256_file(s)} for s in shards],
        "trained_on": stats,
        "sha256": _sha256_bytes(data),
        "seconds": round(time.time() - t0, 2),
    }, out))  # inputs inside a run relative to out (the run can move), the checkout's relative to it
    return tok
