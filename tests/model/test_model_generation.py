"""Generation on a tiny model trained in the test to recite three sentences."""

import pytest
import torch
from typer.testing import CliRunner

from model.generation import generate, generate_ids, sample_next, stream_ids, stream_text
from tests.conftest_model import EOS, one_thread, trained_model


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def mt():
    return trained_model()


def test_greedy_recites_and_stops_at_eos(mt):
    model, tok = mt
    out = generate(model, tok, ["the quick", "a stitch in"], max_new_tokens=40)
    assert out == [" brown fox jumps over the lazy dog.", " time saves nine stitches today."]
    # EOS ended both rows well before max_new_tokens, and is not part of the text
    ids = generate_ids(model, [tok.encode("every").ids], max_new_tokens=40, eos_ids=[tok.token_to_id(EOS)])
    assert 0 < len(ids[0]) < 40 and tok.token_to_id(EOS) not in ids[0]


def test_stop_sequences_cut_the_output(mt):
    model, tok = mt
    assert generate(model, tok, ["the quick"], max_new_tokens=40, stop=["lazy"]) == [" brown fox jumps over the "]
    # the earliest of several stop strings wins; an absent one changes nothing
    assert generate(model, tok, ["the quick"], max_new_tokens=40, stop=["dog", "fox", "zzz"]) == [" brown "]
    assert generate(model, tok, ["the quick"], max_new_tokens=40, stop=["zzz"]) == [" brown fox jumps over the lazy dog."]
    # stopping ends decoding early: the stopped row yields no tokens after the one completing "fox"
    steps = list(stream_ids(model, [tok.encode("the quick").ids], max_new_tokens=40,
                            stop_fn=lambda r, ids: "fox" in tok.decode(ids)))
    assert "fox" in tok.decode([t for s in steps for t in s if t is not None])
    assert len(steps) < 6


def test_left_padded_batch_equals_unbatched(mt):
    model, tok = mt
    prompts = ["the quick brown fox", "a", "every good boy", "the"]
    assert len({len(tok.encode(p).ids) for p in prompts}) >= 3  # really different lengths -> padding
    batched = generate(model, tok, prompts, max_new_tokens=25)
    single = [generate(model, tok, [p], max_new_tokens=25)[0] for p in prompts]
    assert batched == single
    ids = [tok.encode(p).ids for p in prompts]
    assert generate_ids(model, ids, max_new_tokens=25) == [generate_ids(model, [i], max_new_tokens=25)[0] for i in ids]


def test_sampling_is_seeded_and_filters_respect_limits(mt):
    model, tok = mt
    a = generate(model, tok, ["the", "a"], max_new_tokens=20, temperature=1.5, seed=7)
    b = generate(model, tok, ["the", "a"], max_new_tokens=20, temperature=1.5, seed=7)
    assert a == b
    greedy = generate(model, tok, ["the quick"], max_new_tokens=20)
    assert generate(model, tok, ["the quick"], max_new_tokens=20, temperature=2.0, top_k=1, seed=1) == greedy
    assert generate(model, tok, ["the quick"], max_new_tokens=20, temperature=2.0, top_p=1e-6, seed=1) == greedy
    # hot sampling without filters does leave the memorised path on some seed
    hot = {generate(model, tok, ["the"], max_new_tokens=12, temperature=5.0, seed=s)[0] for s in range(5)}
    assert len(hot) > 1


def test_sample_next_top_k_top_p_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # top_p: probs ~ [.64, .24, .09, .03, .01]; p=0.8 keeps the first two only
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.95, generator=g).tolist()) == {0, 1, 2}
    assert sample_next(logits[:1], 0.0).item() == 0
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, top_p=0.0)


def test_stream_text_concatenates_to_generate(mt):
    model, tok = mt
    for stop in (None, ["lazy"], ["over the l"]):
        pieces = list(stream_text(model, tok, "the quick", max_new_tokens=40, stop=stop))
        assert "".join(pieces) == generate(model, tok, ["the quick"], max_new_tokens=40, stop=stop)[0]
        assert len(pieces) > 1


def test_empty_prompt_is_rejected(mt):
    model, tok = mt
    with pytest.raises(ValueError, match="empty"):
        generate(model, tok, [""], max_new_tokens=5)


def test_cli_generate(mt, tmp_path):
    from minisigma.cli import app
    from model.io import save_pretrained

    model, tok = mt
    save_pretrained(model, tmp_path / "ckpt", tokenizer=tok)
    r = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path / "ckpt"), "--prompt", "the quick",
                                 "--max-new-tokens", "40", "--stop", "lazy"])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "the quick brown fox jumps over the"
    r = CliRunner().invoke(app, ["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"])
    assert r.exit_code != 0
