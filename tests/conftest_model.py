"""A tiny model trained (in seconds) to recite a few sentences, and its byte-level BPE tokenizer.

Imported by the model tests (not a conftest.py, so other areas' tests do not pay for it)."""

from __future__ import annotations

import contextlib
import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.gpt import GPT, ModelConfig

SENTENCES = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine stitches today.",
    "every good boy deserves fudge and cake.",
]
EOS = "<|endoftext|>"


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest single-threaded; on a shared, busy 2-core box extra OpenMP threads
    mostly spin (measured: 9 s vs 2 min for the training below)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def make_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 10, trainer=trainer)
    return tok


@functools.lru_cache(maxsize=1)
def trained_model():
    """-> (model, tokenizer): greedy decoding after a sentence's first words recites the rest + EOS."""
    with one_thread():
        return _train()


def _train():
    tok = make_tokenizer()
    cfg = ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=128)
    torch.manual_seed(0)
    model = GPT(cfg)
    stream = []
    for i in range(40):
        stream += tok.encode(SENTENCES[(i * 7) % 3] + EOS).ids
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    T = 48
    for step in range(200):
        starts = torch.randint(0, len(data) - T - 1, (16,))
        x = torch.stack([data[s:s + T] for s in starts])
        y = torch.stack([data[s + 1:s + T + 1] for s in starts])
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok
