"""The induction probe (model/evaluation/induction.py): its scoring is aligned with the copies."""

import math

import pytest
import torch

from model.evaluation.induction import InductionSection, probe
from model.gpt import GPT, ModelConfig


class Copier(torch.nn.Module):
    """A perfect induction model: at position t it predicts the token that followed the previous
    occurrence of token t (uniform when the token has not occurred before)."""

    def __init__(self, vocab: int, max_seq_len: int = 256):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab, max_seq_len=max_seq_len)
        self.vocab = vocab

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            last = {}
            for t in range(T):
                tok = int(idx[b, t])
                if tok in last and last[tok] + 1 < T:
                    logits[b, t, int(idx[b, last[tok] + 1])] = 50.0
                last[tok] = t
        return logits


def test_a_copying_model_has_no_loss_on_the_repeat_and_uniform_loss_on_the_first_copy():
    vocab, reserved = 50000, 6
    s = InductionSection(tokens=40, sequences=4, seed=3)
    r = probe(Copier(vocab), vocab, s, reserved=reserved)
    # random draws of 40 out of ~50000 ids rarely repeat (none does for this seed), so the first copy is ~ln(vocab)
    assert r["loss_first"] == pytest.approx(math.log(vocab), abs=0.05)
    assert r["loss_repeat"] < 1e-3
    assert r["drop"] == pytest.approx(r["loss_first"] - r["loss_repeat"], abs=1e-3)
    assert r["uniform_loss"] == round(math.log(vocab - reserved), 4)


def test_an_untrained_model_does_not_copy_and_the_probe_is_deterministic():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=300, n_layer=1, n_embd=32, n_q=2, n_k=1, n_v=2, d_qk=16, d_v=16,
                      ffn_hidden=64, max_seq_len=64)
    model = GPT(cfg).eval()
    s = InductionSection(tokens=20, sequences=3)
    a, b = probe(model, cfg.vocab_size, s), probe(model, cfg.vocab_size, s)
    assert a == b
    assert abs(a["drop"]) < 0.5


def test_a_sequence_longer_than_half_the_context_is_refused():
    with pytest.raises(ValueError, match="exceeds the model's context"):
        probe(Copier(100, max_seq_len=64), 100, InductionSection(tokens=40))


def test_eval_recipe_runs_the_probe_on_the_models_it_names(tmp_path):
    import json

    from minisigma.core.errors import UserError
    from model.evaluation.recipe import run
    from model.io import save_pretrained
    from model.tokenizer import train_tokenizer
    from tests.train_corpus import stdlib_docs

    tok, _ = train_tokenizer(stdlib_docs(["shlex"]), vocab_size=300, max_train_chars=100_000)
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_pretrained(GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())), ckpt, tokenizer=tok)
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"out: {tmp_path / 'eval'}\ncheckpoints: {{a: {ckpt}, b: {ckpt}}}\n"
                      "induction: {tokens: 30, sequences: 2, models: [a]}\n")
    summary = run(recipe, show_progress=False)
    written = json.loads((tmp_path / "eval" / "a" / "induction.json").read_text())
    assert summary["models"]["a"]["induction"] == written and written["tokens"] == 30
    assert "induction" not in summary["models"]["b"]
    recipe.write_text(f"out: {tmp_path / 'eval'}\ncheckpoints: {{a: {ckpt}}}\ninduction: {{tokens: 500}}\n")
    with pytest.raises(UserError, match="exceeds the model's context"):
        run(recipe, show_progress=False)
