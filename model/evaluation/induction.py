"""The induction probe: can a model copy a sequence it has just seen?

Boundary: reads one exported checkpoint (model/io.py layout), writes ``induction.json``; knows
nothing of curation or synth. The eval recipe's ``induction:`` section runs it per model.

A sequence of ``tokens`` token ids drawn uniformly at random (never a special token) is repeated
once: ``r_1 .. r_n r_1 .. r_n``. Nothing predicts the first copy, so its loss is about ln(vocab);
a model with induction heads (attend to the earlier occurrence of the current token, copy what
followed it) predicts the second copy almost perfectly. The probe reports the mean loss in nats
per token on each copy and their difference, over ``sequences`` random sequences: a drop near
zero means the model cannot copy an argument from its context (why commands that need an
operand copied from the task are rarely right at the CPU budget).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from minisigma.core.recipes import Section
from model.io import load_pretrained
from model.tokenizer import SPECIAL_TOKENS


class InductionSection(Section):
    """`induction:` section of an eval recipe."""

    tokens: int = Field(100, ge=2)  # length of the random sequence; it is seen twice
    sequences: int = Field(16, ge=1)  # random sequences averaged over
    seed: int = 0  # the random sequences (the same for every model of a recipe)
    models: list[str] | None = None  # checkpoints probed; default: every one


def probe(model: torch.nn.Module, vocab_size: int, section: InductionSection, reserved: int = 0) -> dict:
    """Loss (nats/token) on the first and on the repeated copy of random token sequences.

    ``reserved``: ids below it are special tokens and never drawn. Position 0 of the first copy
    has no context and is not scored, so both copies score ``tokens - 1`` predictions each.
    """
    n = section.tokens
    if 2 * n > model.cfg.max_seq_len:
        raise ValueError(f"induction.tokens: {n} twice exceeds the model's context ({model.cfg.max_seq_len})")
    g = torch.Generator().manual_seed(section.seed)
    seq = torch.randint(reserved, vocab_size, (section.sequences, n), generator=g)
    idx = torch.cat([seq, seq], dim=1)
    with torch.no_grad():
        logits = model(idx).float()
    # logits at position t predict token t+1
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1),
                          reduction="none").view(section.sequences, -1)
    first = nll[:, : n - 1].mean().item()  # predicts r_2 .. r_n from the first copy
    repeat = nll[:, n:].mean().item()  # predicts r_2 .. r_n of the second copy (r_1 is position n-1's target)
    return {"tokens": n, "sequences": section.sequences, "seed": section.seed,
            "uniform_loss": round(math.log(vocab_size - reserved), 4),
            "loss_first": round(first, 4), "loss_repeat": round(repeat, 4), "drop": round(first - repeat, 4)}


def evaluate_checkpoint(ckpt: str | Path, section: InductionSection, out_file: Path) -> dict:
    model, cfg, _ = load_pretrained(ckpt)
    # the special tokens take ids 0 .. len(SPECIAL_TOKENS)-1 (model/tokenizer.py checks it)
    res = probe(model, cfg.vocab_size, section, reserved=len(SPECIAL_TOKENS))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    return res
