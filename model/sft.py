"""Supervised fine-tuning data: instruction pairs -> packed rows with loss on assistant tokens only.

Input: JSONL files (or directories of *.jsonl / *.jsonl.gz) of pairs made by synth, e.g.
{"task": "...", "command": "..."} or {"instruction": "...", "response": "..."} (model.chat
.pair_to_messages lists the accepted keys). Each pair is rendered by the chat template
(model/chat.py) into ids and an assistant mask; the target of position t is ids[t+1] when that
token is an assistant token and -100 (ignored by the loss) otherwise, so the system and user turns
and the role markers never contribute to the loss.

Packing: whole conversations are packed into rows of seq_len tokens (first-fit decreasing, in a
deterministic order), the rest of a row is <|pad|> with target -100. A conversation never
straddles two rows; one longer than seq_len is cut at seq_len (counted; dropped if no assistant
token is left). As in most packed SFT, a conversation may attend to the earlier ones in its row;
each starts with <|endoftext|>, the document separator the model saw in pretraining.
The validation pairs are held out by a hash of their text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from minisigma.core.errors import UserError
from minisigma.core.shards import read_docs

from model.chat import pair_to_messages, render
from model.data import StreamDataModule, unit_hash
from model.recipe import TrainRecipe, build_model_config, load_init
from model.tokenizer import PAD, SPECIAL_TOKENS, load_tokenizer

IGNORE = -100


def pair_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # a stage folder keeps dropped records under rejects/: never train on those
            files += sorted(q for q in p.rglob("*") if q.name.endswith((".jsonl", ".jsonl.gz"))
                            and "rejects" not in q.relative_to(p).parts and not q.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"sft.pairs: {p} does not exist")
    if not files:
        raise UserError(f"sft.pairs: no .jsonl files in {', '.join(paths)}")
    return files


def read_pairs(paths: list[str], counts: dict) -> list[dict]:
    """All well-formed pairs of the files; malformed lines are counted under counts['bad_*']."""
    def bad(reason: str) -> None:
        counts[reason] = counts.get(reason, 0) + 1

    return [rec for f in pair_files(paths) for rec in read_docs(f, on_bad=bad)]


def example(ids: list[int], mask: list[bool], seq_len: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Rendered conversation -> (x, y) of length <= seq_len, and whether it was cut."""
    ids_a = np.asarray(ids, dtype=np.int64)
    x, y = ids_a[:-1], ids_a[1:].copy()
    y[~np.asarray(mask[1:], dtype=bool)] = IGNORE
    cut = len(x) > seq_len
    return x[:seq_len], y[:seq_len], cut


def pack(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int, pack_rows: bool = True):
    """First-fit-decreasing packing -> X, Y int64 arrays [rows, seq_len]."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i][0])
        for b, room in enumerate(free) if pack_rows else ():
            if n <= room:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(seq_len - n)
    X = np.full((len(bins), seq_len), pad_id, dtype=np.int64)
    Y = np.full((len(bins), seq_len), IGNORE, dtype=np.int64)
    for r, members in enumerate(bins):
        pos = 0
        for i in members:
            x, y = examples[i]
            X[r, pos:pos + len(x)] = x
            Y[r, pos:pos + len(y)] = y
            pos += len(x)
    return X, Y


class Rows:
    """Packed SFT rows as a dataset: item i -> (x, y) int64 tensors."""

    def __init__(self, X: np.ndarray, Y: np.ndarray):
        self.X, self.Y = X, Y

    def __len__(self) -> int:
        return len(self.X)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.X[i]), torch.from_numpy(self.Y[i])


def build_rows(pairs: list[dict], tok, seq_len: int, val_fraction: float, system: str | None,
               pack_rows: bool = True) -> tuple[Rows, Rows, dict]:
    stats = {"pairs": len(pairs), "invalid": 0, "truncated": 0, "dropped_too_long": 0,
             "train_pairs": 0, "val_pairs": 0}
    split: dict[str, list] = {"train": [], "val": []}
    for p in pairs:
        try:
            msgs = pair_to_messages(p, system)
        except ValueError:
            stats["invalid"] += 1
            continue
        ids, mask = render(msgs, tok)
        x, y, cut = example(ids, mask, seq_len)
        if cut:
            stats["truncated"] += 1
            if not (y != IGNORE).any():
                stats["dropped_too_long"] += 1
                continue
        side = "val" if unit_hash("sft-val", msgs[-2]["content"], msgs[-1]["content"]) < val_fraction else "train"
        split[side].append((x, y))
        stats[f"{side}_pairs"] += 1
    if not split["train"]:
        raise UserError("sft: no usable training pairs (all invalid, too long or held out)")
    pad = tok.token_to_id(PAD)
    out = {}
    for side, exs in split.items():
        X, Y = pack(exs, seq_len, pad, pack_rows) if exs else (np.zeros((0, seq_len), np.int64),) * 2
        out[side] = Rows(X, Y)
        stats[f"{side}_rows"] = len(X)
        stats[f"{side}_target_tokens"] = int((Y != IGNORE).sum())
        stats[f"{side}_fill"] = round(float((X != pad).mean()), 4) if len(X) else 0.0
    return out["train"], out["val"], stats


def build_sft(recipe: TrainRecipe):
    """-> (StreamDataModule, tokenizer, ModelConfig, initial state dict or None) for model/train.py."""
    s, t = recipe.sft, recipe.train
    if s.init_from:
        cfg, init_state, tok = load_init(s.init_from, t.seq_len)
        if tok is None:
            raise UserError(f"sft.init_from: {s.init_from} has no tokenizer.json")
        if any(tok.token_to_id(x) is None for x in SPECIAL_TOKENS):
            raise UserError(f"sft.init_from: the tokenizer of {s.init_from} lacks the chat special tokens")
    else:  # from scratch (no pretraining): tokenizer of the data recipe, model of the recipe
        tok = load_tokenizer(recipe.data.tokens_dir)
        cfg, init_state = build_model_config(recipe, tok.get_vocab_size()), None

    counts: dict = {}
    pairs = read_pairs(s.pairs, counts)
    train, val, stats = build_rows(pairs, tok, t.seq_len, s.val_fraction, s.system_prompt, s.pack)
    stats.update(counts)
    out = Path(recipe.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_data.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    fp = {"rows_sha256": hashlib.sha256(train.X.tobytes() + train.Y.tobytes()).hexdigest()[:16],
          "seq_len": t.seq_len, "seed": t.seed}
    dm = StreamDataModule(train, val, t.micro_batch, t.seed, t.eval_batches, fp)
    return dm, tok, cfg, init_state
