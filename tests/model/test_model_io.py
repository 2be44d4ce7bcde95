"""Checkpoint export/import: model.safetensors + config.json + tokenizer.json."""

import json

import pytest
import torch
from safetensors.torch import load_file

from minisigma.core.errors import UserError
from model.gpt import GPT, ModelConfig
from model.io import load_pretrained, save_pretrained
from tests.conftest_model import make_tokenizer, one_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.mark.parametrize("overrides", [{}, {"tie_embeddings": True, "half_k": True, "d_qk": 16}])
def test_save_load_round_trip(tmp_path, overrides):
    cfg = ModelConfig.preset("tiny", **overrides)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    tok = make_tokenizer()
    out = save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((out / "config.json").read_text())["model"]["n_v"] == cfg.n_v

    loaded, cfg2, tok2 = load_pretrained(out)
    assert cfg2 == cfg
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    assert tok2.encode("a stitch in time").ids == tok.encode("a stitch in time").ids
    if cfg.tie_embeddings:
        assert loaded.lm_head.weight is loaded.embed.weight
        assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))


def test_load_without_tokenizer_and_bad_checkpoints(tmp_path):
    model = GPT(ModelConfig.preset("tiny"))
    save_pretrained(model, tmp_path / "a")
    assert load_pretrained(tmp_path / "a")[2] is None

    with pytest.raises(UserError, match="no config.json"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "a" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="invalid JSON"):
        load_pretrained(tmp_path / "a")
    # weights that do not fit the config are named, not silently half-loaded
    save_pretrained(model, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "config.json").read_text())
    meta["model"]["n_layer"] = 3
    (tmp_path / "b" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="do not match"):
        load_pretrained(tmp_path / "b")
