"""Tokenize curated shards into flat token arrays, and serve them to training reproducibly.

Tokenizing (`tokenize_corpus`, CLI `minisigma tokenize`):
- every document becomes `<|endoftext|> + ids(text)`; the separator also starts every chat
  conversation (model/chat.py);
- the validation split is held out BY DOCUMENT: a document goes to val when a hash of its id falls
  under `val_fraction`, so the same document is always on the same side whatever else changes;
- per-source mixing weights act on the train split as repetition factors: weight 2 puts every
  document of that source in twice, 0.5 keeps a hash-chosen half, 0 drops the source. (The paper
  mixes sources in phases; a phase is a recipe with its own weights.) Train documents are then
  shuffled deterministically so sources interleave;
- outputs `train.bin` / `val.bin` (flat uint16, or uint32 past 65,536 ids) and `manifest.json` with
  tokens and documents per source before and after mixing.

Serving (`TokenStream`, `StreamSampler`, `StreamDataModule`): the train stream is a pure function
of (array, seq_len, seed, sample index). Sample g of the stream is chunk perm_e[g mod n] of epoch
e = g div n (a seeded permutation of the non-overlapping seq_len+1 windows). Each micro-batch takes
the next G = micro_batch x world_size samples, rank r taking its slice, so single-process training
with batch G and DDP with world_size ranks see the same global batches. The only state is the
number of samples consumed, saved in the Lightning checkpoint (DataModule.state_dict) so --resume
continues the very same token stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
from pydantic import Field

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.manifest import read_json
from minisigma.core.recipes import LocalPath, Section
from minisigma.core.shards import atomic_write_json, list_shards, read_docs, sha256_file
from model.tokenizer import EOT, TokenizerSection, build_tokenizer

ENCODE_BATCH = 256  # documents per encode_batch call (the Rust side parallelises within it)


class DataSection(Section):
    """`data:` section of a pretraining recipe."""

    tokens_dir: LocalPath = "runs/tokens"  # where `minisigma tokenize` wrote train.bin/val.bin
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    weights: dict[str, float] = Field(default_factory=dict)  # source -> repetition factor (>= 0)
    default_weight: float = Field(1.0, ge=0.0)  # for sources not named in `weights`
    shuffle_seed: int = 0  # order of train documents in train.bin

    def weight(self, source: str) -> float:
        w = self.weights.get(source, self.default_weight)
        if w < 0:
            raise UserError(f"data.weights.{source}: must be >= 0, got {w}")
        return w


def unit_hash(*parts) -> float:
    """A deterministic number in [0, 1) from the parts (sha256; stable across runs and machines)."""
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_val(doc_id: str, val_fraction: float) -> bool:
    return unit_hash("val", doc_id) < val_fraction


def copies(doc_id: str, weight: float) -> int:
    whole = math.floor(weight)
    return whole + (1 if unit_hash("mix", doc_id) < weight - whole else 0)


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


# ----------------------------------------------------------------------------- tokenizing
def tokenize(tokenizer: TokenizerSection, data: DataSection, in_dir: str | Path, out_dir: str | Path,
             progress: bool = False) -> dict:
    """`minisigma tokenize`: train the byte-level BPE tokenizer on the curated shards of `in_dir`, then
    pack them into out_dir/{train.bin,val.bin}; returns the tokens manifest."""
    tok = build_tokenizer(tokenizer, in_dir, out_dir)
    return tokenize_corpus(in_dir, tok, out_dir, data, progress=progress)


def tokenize_corpus(in_dir: str | Path, tok, out_dir: str | Path, section: DataSection,
                    progress: bool = False) -> dict:
    """Curated shards in `in_dir` -> out_dir/{train.bin,val.bin,manifest.json}; returns the manifest."""
    shards = list_shards(in_dir)
    if not shards:
        raise UserError(f"{in_dir}: no NNNNN.jsonl.gz shards to tokenize")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tok.get_vocab_size())
    eot = tok.token_to_id(EOT)
    t0 = time.time()

    # Pass 1: tokenize every document once into a scratch file (streaming: only offsets stay in
    # memory), writing val documents straight to val.bin.
    scratch_path, val_tmp = out / ".train.scratch", out / ".val.bin.tmp"
    train_docs: list[tuple[str, str, int, int]] = []  # (doc id, source, offset, length)
    per_source: dict[str, dict] = {}
    n_scratch = 0
    skipped = 0
    prev = tok.encode_special_tokens
    tok.encode_special_tokens = True  # literal "<|endoftext|>" in a document stays text
    try:
        with open(scratch_path, "wb") as scratch, open(val_tmp, "wb") as val_f:
            batch: list[dict] = []

            def flush():
                nonlocal n_scratch
                encs = tok.encode_batch([d["text"] for d in batch], add_special_tokens=False)
                for d, enc in zip(batch, encs):
                    arr = np.asarray([eot] + enc.ids, dtype=dtype)
                    src = str(d.get("source") or "unknown")
                    s = per_source.setdefault(src, {"docs": 0, "tokens": 0, "val_docs": 0, "val_tokens": 0,
                                                    "train_docs": 0, "train_tokens": 0, "weight": section.weight(src)})
                    s["docs"] += 1
                    s["tokens"] += len(arr)
                    if is_val(d["id"], section.val_fraction):
                        s["val_docs"] += 1
                        s["val_tokens"] += len(arr)
                        val_f.write(arr.tobytes())
                    else:
                        train_docs.append((d["id"], src, n_scratch, len(arr)))
                        scratch.write(arr.tobytes())
                        n_scratch += len(arr)
                batch.clear()

            for shard in shards:
                for d in read_docs(shard):
                    if not isinstance(d.get("text"), str) or not d["text"] or "id" not in d:
                        skipped += 1
                        continue
                    batch.append(d)
                    if len(batch) >= ENCODE_BATCH:
                        flush()
            if batch:
                flush()
    finally:
        tok.encode_special_tokens = prev

    # Pass 2: apply the mixing weights and write the shuffled train stream.
    order = []
    for doc_id, src, off, n in train_docs:
        for c in range(copies(doc_id, per_source[src]["weight"])):
            order.append((unit_hash("order", section.shuffle_seed, doc_id, c), off, n, src))
    order.sort()
    scratch_arr = np.memmap(scratch_path, dtype=dtype, mode="r") if n_scratch else np.zeros(0, dtype)
    train_tmp = out / ".train.bin.tmp"
    with open(train_tmp, "wb") as f:
        for _, off, n, src in order:
            f.write(np.asarray(scratch_arr[off:off + n]).tobytes())
            per_source[src]["train_docs"] += 1
            per_source[src]["train_tokens"] += n
    del scratch_arr
    os.remove(scratch_path)
    os.replace(train_tmp, out / "train.bin")
    os.replace(val_tmp, out / "val.bin")

    train_tokens = sum(s["train_tokens"] for s in per_source.values())
    val_tokens = sum(s["val_tokens"] for s in per_source.values())
    if train_tokens == 0:
        raise UserError(f"{in_dir}: no training tokens (all documents held out, empty, or weighted 0)")
    for s in per_source.values():
        s["train_share"] = round(s["train_tokens"] / train_tokens, 6)
    manifest = {
        "stage": "tokens",
        "recipe": section.model_dump(),
        "dtype": np.dtype(dtype).name,
        "vocab_size": tok.get_vocab_size(),
        "split": "by document: sha256('val', id) < val_fraction",
        "mixing": "train repetition factor per source: floor(w) copies + 1 more when sha256('mix', id) < frac(w)",
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "skipped_docs": skipped,
        "sources": dict(sorted(per_source.items())),
        "inputs": [{"path": str(s), "sha256": sha256_file(s)} for s in shards],
        "outputs": {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size}
                    for name in ("train.bin", "val.bin")},
        "seconds": round(time.time() - t0, 2),
    }
    if (out / "tokenizer.json").is_file():
        manifest["tokenizer_sha256"] = sha256_file(out / "tokenizer.json")
    # inputs inside a run relative to out (the run can move), the checkout's relative to it
    atomic_write_json(out / "manifest.json", storage.recorded(manifest, out))
    return manifest


def read_manifest(tokens_dir: str | Path) -> dict:
    p = Path(tokens_dir) / "manifest.json"
    if not p.is_file():
        raise UserError(f"{tokens_dir}: no manifest.json (run `minisigma tokenize` first)")
    man = read_json(p)
    if not isinstance(man, dict) or man.get("dtype") not in ("uint16", "uint32", "int32", "int64"):
        raise UserError(f"{p}: not a token manifest (no integer `dtype`)")
    return man


def load_tokens(tokens_dir: str | Path, split: str) -> np.ndarray:
    """Memory-map train.bin / val.bin with the dtype recorded in the manifest.

    The file must hold whole tokens, and as many as the manifest's `<split>_tokens` says: a truncated
    or replaced .bin is a UserError, not a run on the wrong data."""
    man = read_manifest(tokens_dir)
    path = Path(tokens_dir) / f"{split}.bin"
    if not path.is_file():
        raise UserError(f"{path}: missing")
    size, width = path.stat().st_size, np.dtype(man["dtype"]).itemsize
    expected = man.get(f"{split}_tokens")
    if size % width or (isinstance(expected, int) and size != expected * width):
        what = f"{expected:,} {man['dtype']} tokens" if isinstance(expected, int) else f"whole {man['dtype']} tokens"
        raise UserError(f"{path}: {size:,} bytes, not the {what} of {Path(tokens_dir) / 'manifest.json'} "
                        f"(truncated or replaced; run `minisigma tokenize` again)")
    if size == 0:
        return np.zeros(0, dtype=man["dtype"])
    return np.memmap(path, dtype=man["dtype"], mode="r")


# ----------------------------------------------------------------------------- serving
class TokenStream:
    """Non-overlapping windows of seq_len+1 tokens of a flat array: item i -> (x, y) int64."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len
        self.n_items = max(0, (len(tokens) - 1) // seq_len)

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int):
        import torch

        t = self.seq_len
        w = np.asarray(self.tokens[i * t: i * t + t + 1], dtype=np.int64)
        return torch.from_numpy(w[:-1].copy()), torch.from_numpy(w[1:].copy())


class StreamSampler:
    """Infinite, seeded sequence of item indices for one rank (see the module docstring).

    `start` is the number of GLOBAL samples already consumed (a multiple of micro_batch*world).
    """

    def __init__(self, n_items: int, micro_batch: int, seed: int = 0, start: int = 0, rank: int = 0,
                 world_size: int = 1):
        if n_items <= 0:
            raise UserError("the training split has fewer tokens than one sequence")
        self.n, self.b, self.seed, self.start, self.rank, self.world = n_items, micro_batch, seed, start, rank, world_size
        self._perm_epoch, self._perm = -1, None

    def global_index(self, g: int) -> int:
        epoch, k = divmod(g, self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def __iter__(self) -> Iterator[int]:
        gb = self.b * self.world
        m = self.start // gb
        while True:
            base = m * gb + self.rank * self.b
            for j in range(self.b):
                yield self.global_index(base + j)
            m += 1


def stream_fingerprint(tokens: np.ndarray, seq_len: int, seed: int) -> dict:
    """What must not change under a resume: array length, a content sample, seq_len and seed."""
    head = np.asarray(tokens[: 1 << 16]).tobytes()
    return {"n_tokens": int(len(tokens)), "head_sha256": hashlib.sha256(head).hexdigest()[:16],
            "seq_len": seq_len, "seed": seed}


def _lightning_datamodule_base():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class StreamDataModule(_lightning_datamodule_base()):
    """Lightning DataModule over a train stream and a fixed validation set, with a resumable position.

    train / val: objects with __len__ and __getitem__ -> (x, y) (TokenStream or the SFT rows).
    The LightningModule calls `advance()` after every micro-batch; `state_dict` stores the count.
    """

    def __init__(self, train, val, micro_batch: int, seed: int, eval_batches: int, fingerprint: dict):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.micro_batch, self.seed, self.eval_batches = micro_batch, seed, eval_batches
        self.fingerprint = fingerprint
        self.consumed_samples = 0

    # the world size is known only once the Trainer is attached
    def _world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self._world()[1]

    def advance(self) -> None:
        self.consumed_samples += self.global_batch

    def train_dataloader(self):
        import torch
        from torch.utils.data import DataLoader

        rank, world = self._world()
        sampler = StreamSampler(len(self.train_set), self.micro_batch, self.seed, self.consumed_samples, rank, world)
        return DataLoader(self.train_set, batch_size=self.micro_batch, sampler=sampler, num_workers=0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        from torch.utils.data import DataLoader, Subset

        if len(self.val_set) == 0:
            raise UserError("the validation split has fewer tokens than one sequence (raise data.val_fraction)")
        # The same eval_batches x GLOBAL batch items whatever the world size, split into one block per
        # rank: the mean over ranks (sync_dist) equals the single-process mean.
        rank, world = self._world()
        n = min(len(self.val_set), self.eval_batches * self.micro_batch * world) // world
        if n == 0:
            raise UserError("the validation split has fewer sequences than ranks")
        return DataLoader(Subset(self.val_set, range(rank * n, (rank + 1) * n)), batch_size=self.micro_batch,
                          shuffle=False, num_workers=0)

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"cannot resume: the checkpoint was trained on a different token stream "
                            f"({state.get('fingerprint')} != {self.fingerprint})")
        self.consumed_samples = int(state["consumed_samples"])
