"""Perplexity / bits per byte: hand-checked with a model whose prediction is known exactly, the
held-out selection, and `minisigma eval RECIPE` end to end."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from minisigma.core.errors import UserError
from minisigma.core.shards import ShardWriter, shard_name
from model.evaluation.perplexity import doc_nll, evaluate, select_docs


@pytest.fixture(scope="module")
def tok():
    from model.tokenizer import train_tokenizer
    from tests.train_corpus import stdlib_docs

    t, _ = train_tokenizer(stdlib_docs(["shlex", "glob"]), vocab_size=400, max_train_chars=200_000)
    return t


def uniform_model(vocab: int, ctx: int = 32):
    """A real GPT whose output layer is zero: every next-token distribution is uniform, so the loss
    of any token is exactly ln(vocab)."""
    from model.gpt import GPT, ModelConfig

    m = GPT(ModelConfig.preset("tiny", vocab_size=vocab, max_seq_len=ctx))
    with torch.no_grad():
        m.lm_head.weight.zero_()
    return m.eval()


DOCS = [
    {"id": "a", "text": "tar -xzf archive.tar.gz extracts the archive.", "source": "manpages",
     "metadata": {"category": "os"}},
    {"id": "b", "text": "ip route show lists the kernel routing table.", "source": "manpages",
     "metadata": {"category": "networking"}},
    {"id": "c", "text": "Überprüfen Sie die Festplatte mit fsck — täglich.", "source": "blogs",
     "metadata": {"category": "os"}},
]


def test_bits_per_byte_by_hand(tok):
    from model.chat import encode_text

    V = tok.get_vocab_size()
    res = evaluate(uniform_model(V), tok, DOCS, context=16)
    n_tok = {d["id"]: len(encode_text(tok, d["text"])) for d in DOCS}  # predicted: every text token
    n_bytes = {d["id"]: len(d["text"].encode()) for d in DOCS}
    total_t, total_b = sum(n_tok.values()), sum(n_bytes.values())
    o = res["overall"]
    assert o["tokens"] == total_t and o["bytes"] == total_b and o["docs"] == 3
    assert o["loss"] == pytest.approx(math.log(V), abs=1e-5)
    assert o["ppl"] == pytest.approx(V, rel=1e-4)
    assert o["bpb"] == pytest.approx(total_t * math.log2(V) / total_b, abs=1e-5)
    # per source / per category partition the documents
    ms = res["per_source"]["manpages"]
    assert ms["docs"] == 2 and ms["bytes"] == n_bytes["a"] + n_bytes["b"]
    assert ms["bpb"] == pytest.approx((n_tok["a"] + n_tok["b"]) * math.log2(V) / ms["bytes"], abs=1e-5)
    assert set(res["per_category"]) == {"os", "networking"} and res["per_category"]["os"]["docs"] == 2
    # multi-byte UTF-8 counts bytes, not characters
    assert res["per_source"]["blogs"]["bytes"] > len(DOCS[2]["text"])


def test_every_token_is_predicted_once_across_windows(tok):
    torch.manual_seed(0)
    from model.gpt import GPT, ModelConfig

    m = GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())).eval()
    ids = list(range(10, 10 + 37))
    ((nll_small, n_small),) = doc_nll(m, [ids], context=8)
    ((nll_big, n_big),) = doc_nll(m, [ids], context=64)
    assert n_small == n_big == len(ids) - 1
    # one window: the same as the model's own mean cross entropy
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    with torch.no_grad():
        assert nll_big / n_big == pytest.approx(float(m(x, y)), abs=1e-5)
    assert nll_small != pytest.approx(nll_big)  # shorter windows see less context
    # batching with padding does not change a document's score
    (alone,) = doc_nll(m, [ids[:20]], context=64)
    together = doc_nll(m, [ids[:20], ids], context=64, batch_size=2)
    assert together[0][0] == pytest.approx(alone[0], abs=1e-4)


def test_select_docs_uses_the_training_split():
    from model.data import is_val

    docs = [{"id": f"d{i}", "text": f"text {i}", "source": "s" + str(i % 2)} for i in range(400)]
    sel = select_docs(docs, "val", 0.1, max_per_source=1000)
    assert [d["id"] for d in sel] == [d["id"] for d in docs if is_val(d["id"], 0.1)]
    assert 10 < len(sel) < 80
    assert len(select_docs(docs, "all", 0.1, max_per_source=7)) == 14
    assert select_docs([{"id": "x", "text": "  "}, {"text": "no id"}], "all") == []


def test_no_documents_is_a_user_error(tok):
    with pytest.raises(UserError, match="no held-out documents"):
        evaluate(uniform_model(tok.get_vocab_size()), tok, [])


# ----------------------------------------------------------------------------- eval recipe
def test_eval_recipe_rejects_unknown_keys(tmp_path):
    from model.evaluation.recipe import EvalRecipe
    from minisigma.core.recipes import load_recipe

    p = tmp_path / "r.yaml"
    p.write_text("checkpoints: {a: x}\ncmdgen:\n  treshold: 0.5\n")
    with pytest.raises(UserError) as e:
        load_recipe(p, EvalRecipe)
    assert str(e.value) == f"{p}: cmdgen.treshold: unknown key"


def test_eval_recipe_cmdgen_models_must_be_checkpoints(tmp_path):
    from model.evaluation.recipe import run

    (tmp_path / "a").mkdir()
    p = tmp_path / "r.yaml"
    p.write_text(f"checkpoints: {{a: {tmp_path / 'a'}}}\ncmdgen:\n  tasks: t.jsonl\n  models: [a, b]\n")
    with pytest.raises(UserError) as e:
        run(p, show_progress=False)
    assert str(e.value) == f"{p}: cmdgen.models: b not in checkpoints"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_eval_recipe_end_to_end(tmp_path, tok):
    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained

    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_pretrained(GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())), ckpt, tokenizer=tok)
    shards = tmp_path / "curated"
    with ShardWriter(shards / shard_name(0)) as w:
        for d in DOCS:
            w.write(d)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "1", "task": "print hello", "command": "echo hello", "tool": "echo"}) + "\n")
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"""
out: {tmp_path / 'eval'}
checkpoints:
  random: {ckpt}
  base: {ckpt}
perplexity:
  docs: {shards}
  split: all
cmdgen:
  tasks: {tasks}
  max_new_tokens: 8
  models: [random]
""")
    r = subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "eval", str(recipe)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ppl = json.loads((tmp_path / "eval" / "random" / "perplexity.json").read_text())
    assert ppl["overall"]["docs"] == 3 and set(ppl["per_source"]) == {"manpages", "blogs"}
    # an untrained model is near uniform: loss close to ln(V)
    assert abs(ppl["overall"]["loss"] - math.log(tok.get_vocab_size())) < 0.5
    summary = json.loads((tmp_path / "eval" / "random" / "cmdgen" / "summary.json").read_text())
    assert summary["overall"]["tasks"] == 1 and summary["reference_status"] == {"ok": 1}
    index = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert index["models"]["random"]["perplexity"]["bpb"] == ppl["overall"]["bpb"]
    # cmdgen.models: the base checkpoint gets perplexity only
    assert "cmdgen" not in index["models"]["base"] and not (tmp_path / "eval" / "base" / "cmdgen").exists()
    assert index["models"]["base"]["perplexity"]["bpb"] == ppl["overall"]["bpb"]
    assert f"bpb={ppl['overall']['bpb']}" in r.stdout


def test_shipped_eval_recipes_validate():
    from pathlib import Path

    from minisigma.core.recipes import load_recipe
    from model.evaluation.recipe import EvalRecipe

    files = sorted((Path(__file__).resolve().parents[2] / "recipes" / "eval").glob("*.yaml"))
    assert files
    for f in files:
        r = load_recipe(f, EvalRecipe)
        assert r.checkpoints and r.perplexity and r.cmdgen and r.cmdgen.tasks
