"""SFT: prompt tokens get no loss, assistant tokens do; fine-tuning from a pretrained export works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.train_corpus import doc_pairs, tiny_tokens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_tokens(tmp_path_factory)


@pytest.fixture(scope="module")
def tok(corpus):
    from model.tokenizer import load_tokenizer

    return load_tokenizer(corpus / "tokens")


def test_targets_are_exactly_the_assistant_tokens(tok):
    from model.sft import IGNORE, build_rows

    pairs = doc_pairs()[:40]
    train, val, stats = build_rows(pairs, tok, seq_len=256, val_fraction=0.0, system="Answer briefly.")
    assert stats["train_pairs"] == 40 and stats["invalid"] == 0 and stats["truncated"] == 0
    assert stats["train_rows"] < 40  # packed: several conversations per row
    # decoding the targets of every row gives back exactly the answers, each closed by <|end|>
    from model.chat import answer_text

    end = tok.token_to_id("<|end|>")
    got = []
    for y in train.Y:
        t = y[y != IGNORE].tolist()
        while t:
            k = t.index(end)
            got.append(answer_text(tok, t[:k]))
            t = t[k + 1:]
    assert sorted(got) == sorted(p["command"] for p in pairs)
    # no prompt text is a target: the user/system turns and role markers are all IGNORE
    for x, y in zip(train.X, train.Y):
        for i in np.flatnonzero(y != IGNORE):
            if y[i] != end and i + 1 < len(x):  # a target is the next input token (the final
                assert x[i + 1] == y[i]        # <|end|> of a conversation is a target only)
        roles = {tok.token_to_id(s) for s in ("<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>", "<|pad|>")}
        assert not roles & set(y[y != IGNORE].tolist())


def test_prompt_tokens_get_no_gradient_and_assistant_tokens_do(tok):
    """The proof on the loss itself: d loss / d logits is exactly zero at every position whose next
    token is prompt (or padding), and non-zero at every position that predicts an assistant token."""
    from model.gpt import GPT, ModelConfig
    from model.sft import IGNORE, build_rows

    train, _, _ = build_rows(doc_pairs()[:12], tok, seq_len=192, val_fraction=0.0, system=None)
    x, y = train[0]
    x, y = x[None], y[None]
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size()))
    captured = {}

    def keep(module, inputs, out):
        out.retain_grad()
        captured["logits"] = out

    model.lm_head.register_forward_hook(keep)
    loss = model(x, y)
    loss.backward()
    g = captured["logits"].grad[0].abs().sum(-1)  # [T]
    learn = (y[0] != IGNORE)
    assert learn.sum() > 10 and (~learn).sum() > 10
    assert torch.all(g[~learn] == 0)
    assert torch.all(g[learn] > 0)
    # and the loss is the mean CE over assistant targets only
    logits = captured["logits"][0].detach()
    ce = torch.nn.functional.cross_entropy(logits[learn], y[0][learn])
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5)


def test_sft_from_pretrained_checkpoint_learns_the_answers(corpus, tok, tmp_path):
    from model.train import TrainRecipe, run

    common = {"micro_batch": 8, "seq_len": 128, "eval_batches": 4, "progress_bar": False, "threads": 1}
    pre = run(TrainRecipe(name="pre", out_dir=str(tmp_path / "pre"), data={"tokens_dir": str(corpus / "tokens")},
                          model={"preset": "tiny"}, optim={"lr": 3e-3, "warmup_steps": 2},
                          train={"max_steps": 8, "eval_every": 8, "ckpt_every": 8, **common}))
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "00000.jsonl").write_text("".join(json.dumps(p) + "\n" for p in doc_pairs()) + "not json\n")
    (pairs / "rejects").mkdir()
    (pairs / "rejects" / "00000.jsonl").write_text(json.dumps({"task": "bad", "command": "rm -rf /"}) + "\n")
    s = run(TrainRecipe(name="sft", kind="sft", out_dir=str(tmp_path / "sft"),
                        sft={"pairs": [str(pairs)], "init_from": pre["export"], "val_fraction": 0.15},
                        optim={"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.0},
                        train={"max_steps": 30, "eval_every": 10, "ckpt_every": 30, **common}))
    stats = json.loads((tmp_path / "sft" / "sft_data.json").read_text())
    assert stats["bad_json"] == 1 and stats["pairs"] == len(doc_pairs())  # rejects/ never read
    assert stats["val_pairs"] > 10 and stats["train_fill"] > 0.8
    evals = [json.loads(x) for x in open(tmp_path / "sft" / "evals.jsonl")]
    # starts from the pretrained weights (not from scratch, ~ln(384) = 5.95) and improves on held-out answers
    assert evals[0]["val_loss"] < 5.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals
    assert s["finished"] and (tmp_path / "sft" / "final" / "tokenizer.json").is_file()
