"""`minisigma export --format hf`: the folder loads in transformers (remote code) and computes what
model/gpt.py computes; the tokenizer and chat template give model/chat.py's ids."""

import json
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from minisigma.core.errors import UserError  # noqa: E402
from model import chat  # noqa: E402
from model.generation import generate_ids  # noqa: E402
from model.gpt import GPT, ModelConfig  # noqa: E402
from model.hf_export import export_hf, hf_name  # noqa: E402
from model.io import llama_state_dict, save_pretrained  # noqa: E402
from model.tokenizer import END, EOT, train_tokenizer  # noqa: E402
from tests.conftest_model import SENTENCES, one_thread  # noqa: E402

VARIANTS = {
    "diffqkv": {},  # tiny preset: 8 q / 1 k / 4 v heads, AugQ on
    "half-k-tied": {"half_k": True, "d_qk": 16, "tie_embeddings": True, "d_aug": 0},
    "augq-half-k-vtopk": {"half_k": True, "d_qk": 16, "d_aug": 48, "n_k": 4, "n_v": 2, "v_topk": 3},
}


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tok():
    docs = [{"text": s} for s in SENTENCES * 20 + ["ls -la lists files; grep -r finds text"] * 5]
    return train_tokenizer(docs, vocab_size=300, min_frequency=1)[0]


def _export(tmp_path, tok, overrides, seed=0):
    cfg = ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size(), **overrides)
    torch.manual_seed(seed)
    model = GPT(cfg).eval()
    with torch.no_grad():  # RMSNorm weights away from 1, so a norm wired wrongly shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    return model, export_hf(ckpt, tmp_path / "hf")


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_gpt_py(tmp_path, tok, variant):
    model, folder = _export(tmp_path, tok, VARIANTS[variant])
    hf = _load(folder)
    assert type(hf).__name__ == "MiniSigmaForCausalLM"
    assert not any(m.startswith("minisigma") or m.startswith("model.") for m in
                   _imports_of(folder / "modeling_minisigma.py"))
    assert sum(p.numel() for p in hf.parameters()) == model.cfg.num_params()
    idx = torch.randint(0, model.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(idx)
        theirs = hf(idx).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    if model.cfg.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()

    # the KV cache: prefill 16 tokens, then decode the rest one at a time, through transformers' Cache
    with torch.no_grad():
        out = hf(idx[:, :16], use_cache=True)
        cache, steps = out.cache, [out.logits]
        for t in range(16, 24):
            out = hf(idx[:, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits)
        ours_cache = model.new_cache(2, 24)
        ref = [model(idx[:, :16], cache=ours_cache)] + [model(idx[:, t:t + 1], cache=ours_cache) for t in range(16, 24)]
    assert cache.get_seq_length() == 24
    layer = cache.layers[0]  # K and V are cached at their own head counts and widths
    assert tuple(layer.keys.shape) == (2, model.cfg.n_k, 24, model.cfg.d_k)
    assert tuple(layer.values.shape) == (2, model.cfg.n_v, 24, model.cfg.d_v)
    torch.testing.assert_close(torch.cat(steps, 1), torch.cat(ref, 1), rtol=0, atol=1e-5)
    if not model.cfg.v_topk:  # selective V fetching changes decode logits on purpose
        torch.testing.assert_close(torch.cat(steps, 1), ours, rtol=0, atol=1e-5)


def _imports_of(path):
    import ast

    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("variant", ["diffqkv", "augq-half-k-vtopk"])
def test_generate_greedy_equals_ours(tmp_path, tok, variant):
    model, folder = _export(tmp_path, tok, VARIANTS[variant])
    hf = _load(folder)
    hf_tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    prompts = ["the quick brown fox", "a", "every good boy deserves"]
    ids = [tok.encode(p).ids for p in prompts]
    assert [hf_tok(p)["input_ids"] for p in prompts] == ids
    ours = generate_ids(model, ids, max_new_tokens=12)
    for p, want in zip(ids, ours):  # one prompt at a time
        got = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, eos_token_id=None)
        assert got[0, len(p):].tolist() == want
    batch = hf_tok(prompts, return_tensors="pt", padding=True)  # left-padded batch
    assert hf_tok.padding_side == "left" and not bool(batch["attention_mask"].all())
    got = hf.generate(**batch, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert [row[batch["input_ids"].shape[1]:].tolist() for row in got] == ours
    # the exported generation config stops where `minisigma generate` stops
    assert sorted(hf.generation_config.eos_token_id) == sorted([tok.token_to_id(EOT), tok.token_to_id(END)])


def test_recites_through_transformers(tmp_path):
    """A trained model keeps what it learnt: greedy generate() recites the sentence it was taught."""
    from tests.conftest_model import trained_model

    model, base_tok = trained_model()
    ckpt = save_pretrained(model, tmp_path / "ckpt", tokenizer=base_tok)
    folder = export_hf(ckpt, tmp_path / "hf")
    assert not (folder / "chat_template.jinja").exists()  # this tokenizer has no chat tokens
    hf, hf_tok = _load(folder), AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    out = hf.generate(**hf_tok("the quick", return_tensors="pt"), max_new_tokens=30)
    assert hf_tok.decode(out[0], skip_special_tokens=True) == SENTENCES[0]


CONVERSATIONS = [
    [{"role": "user", "content": "list files sorted by size"}],
    [{"role": "system", "content": "Answer with one shell command."},
     {"role": "user", "content": "count lines in a.txt"},
     {"role": "assistant", "content": "wc -l a.txt"},
     {"role": "user", "content": "  and words?\n"}],
    [{"role": "user", "content": "ünïcödé and tabs\tand 'quotes' {{ braces }}"},
     {"role": "assistant", "content": ""}],
]


def test_chat_template_gives_chat_py_ids(tmp_path, tok):
    _, folder = _export(tmp_path, tok, {})
    hf_tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    assert hf_tok.chat_template and (folder / "chat_template.jinja").is_file()
    for conv in CONVERSATIONS:
        ids, mask = chat.render(conv, tok)
        out = hf_tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert out["input_ids"] == ids
        assert out["assistant_masks"] == [int(m) for m in mask]  # the SFT loss mask as well
        if conv[-1]["role"] == "user":
            prompt = hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False)
            assert prompt == chat.render_prompt(conv, tok)
    # a user typing a control token gets its characters, as in chat.py, with transformers' sanitizer
    tricky = [{"role": "user", "content": "what does <|end|> or <|assistant|> mean?"}]
    got = hf_tok.apply_chat_template(tricky, tokenize=True, add_generation_prompt=True, return_dict=False,
                                     sanitize_control_tokens=True)
    assert got == chat.render_prompt(tricky, tok)
    for bad, msg in (([{"role": "tool", "content": "x"}], "role must be"),
                     ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only come first")):
        with pytest.raises(Exception, match=msg):
            hf_tok.apply_chat_template(bad, tokenize=False)


def test_names_match_llama_names():
    """Where the network is a plain Llama, the export's names are LlamaForCausalLM's."""
    cfg = ModelConfig.preset("tiny", n_k=4, n_v=4, d_aug=0)
    model = GPT(cfg)
    assert sorted(hf_name(k) for k in model.state_dict()) == sorted(llama_state_dict(model))


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process -> (exit code, stdout, stderr)."""
    from minisigma.cli import main

    monkeypatch.setattr(sys, "argv", ["minisigma", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_export_and_errors(tmp_path, tok, monkeypatch, capsys):
    cfg = ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())
    ckpt = save_pretrained(GPT(cfg), tmp_path / "ckpt", tokenizer=tok)
    code, out, err = _cli(monkeypatch, capsys, "export", "--checkpoint", str(ckpt), "--format", "hf",
                          "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "trust_remote_code=True" in out
    assert json.loads((tmp_path / "o" / "config.json").read_text())["model_type"] == "minisigma"
    assert AutoConfig.from_pretrained(str(tmp_path / "o"), trust_remote_code=True).num_value_heads == cfg.n_v
    code, _, err = _cli(monkeypatch, capsys, "export", "--checkpoint", str(ckpt), "--format", "onnx",
                        "--out", str(tmp_path / "x"))
    assert code == 2 and err == "error: --format: expected hf, got 'onnx'\n"
    bare = save_pretrained(GPT(ModelConfig.preset("tiny")), tmp_path / "bare")  # no tokenizer.json
    code, _, err = _cli(monkeypatch, capsys, "export", "--checkpoint", str(bare), "--out", str(tmp_path / "y"))
    assert code == 2 and "tokenizer.json is missing" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError, match="no config.json"):
        export_hf(tmp_path / "nothing", tmp_path / "z")
