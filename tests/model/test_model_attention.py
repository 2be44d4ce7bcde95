"""DiffQKV attention against plain math references, the KV-cache decode path against full forward,
and the model against HF transformers' Llama when DiffQKV degenerates to GQA."""

import dataclasses
import math

import pytest
import torch

from model.gpt import GPT, ModelConfig, diffqkv_sdpa, grouped_decode_attention
from tests.conftest_model import one_thread


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def reference_attention(q, k, v, scale, mask):
    """Textbook attention: repeat K by n_q/n_k and V by n_q/n_v, explicit softmax."""
    n_q = q.shape[1]
    k = k.repeat_interleave(n_q // k.shape[1], dim=1)
    v = v.repeat_interleave(n_q // v.shape[1], dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def causal(T, S):
    return torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)


HEADS = [(8, 1, 4, 16, 16), (8, 4, 1, 16, 16), (8, 2, 8, 8, 16), (4, 4, 4, 16, 16), (8, 1, 4, 8, 16)]


@pytest.mark.parametrize("n_q,n_k,n_v,dk,dv", HEADS)
def test_prefill_matches_reference_forward_and_backward(n_q, n_k, n_v, dk, dv):
    g = torch.Generator().manual_seed(0)
    B, T = 2, 11
    q0 = torch.randn(B, n_q, T, dk, generator=g, dtype=torch.float64)
    k0 = torch.randn(B, n_k, T, dk, generator=g, dtype=torch.float64)
    v0 = torch.randn(B, n_v, T, dv, generator=g, dtype=torch.float64)
    upstream = torch.randn(B, n_q, T, dv, generator=g, dtype=torch.float64)
    scale = 1 / math.sqrt(dk)

    grads = []
    for fn in (lambda q, k, v: diffqkv_sdpa(q, k, v, scale, is_causal=True),
               lambda q, k, v: reference_attention(q, k, v, scale, causal(T, T))):
        q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        out = fn(q, k, v)
        (out * upstream).sum().backward()
        grads.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert grads[0][2].shape == (B, n_k, T, dk) and grads[0][3].shape == (B, n_v, T, dv)


def test_prefill_with_padding_mask_matches_reference():
    g = torch.Generator().manual_seed(1)
    B, T = 3, 9
    q = torch.randn(B, 8, T, 16, generator=g, dtype=torch.float64)
    k = torch.randn(B, 1, T, 16, generator=g, dtype=torch.float64)
    v = torch.randn(B, 4, T, 16, generator=g, dtype=torch.float64)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False
    mask = causal(T, T)[None, None] & valid[:, None, None, :]
    rows = valid  # only real query rows have a defined output
    mask = mask | torch.eye(T, dtype=torch.bool)[None, None]
    got = diffqkv_sdpa(q, k, v, 0.25, attn_mask=mask)
    want = reference_attention(q, k, v, 0.25, mask)
    torch.testing.assert_close(got[rows[:, None].expand(B, 8, T)], want[rows[:, None].expand(B, 8, T)])


@pytest.mark.parametrize("n_q,n_k,n_v,dk,dv", HEADS)
@pytest.mark.parametrize("T", [1, 3])
def test_grouped_decode_matches_reference(n_q, n_k, n_v, dk, dv, T):
    g = torch.Generator().manual_seed(2)
    B, S, cap = 2, 37, 50
    q = torch.randn(B, n_q, T, dk, generator=g, dtype=torch.float64)
    # views into a larger preallocated buffer, as in the real cache
    kbuf = torch.randn(B, n_k, cap, dk, generator=g, dtype=torch.float64)
    vbuf = torch.randn(B, n_v, cap, dv, generator=g, dtype=torch.float64)
    k, v = kbuf[:, :, :S], vbuf[:, :, :S]
    mask = causal(T, S)[None, None]
    got = grouped_decode_attention(q, k, v, 0.3, mask=mask if T > 1 else None)
    torch.testing.assert_close(got, reference_attention(q, k, v, 0.3, mask), rtol=1e-10, atol=1e-10)


def test_selective_v_with_k_at_least_context_is_exact_and_smaller_k_is_topk():
    g = torch.Generator().manual_seed(3)
    B, n_q, n_k, n_v, S = 2, 8, 1, 4, 20
    q = torch.randn(B, n_q, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(B, n_k, S, 16, generator=g, dtype=torch.float64)
    v = torch.randn(B, n_v, S, 16, generator=g, dtype=torch.float64)
    exact = grouped_decode_attention(q, k, v, 0.25)
    for kk in (S, S + 5):
        torch.testing.assert_close(grouped_decode_attention(q, k, v, 0.25, v_topk=kk), exact)
    # k < S: equals attention restricted (per query head) to its top-k keys, renormalised
    kk = 5
    s = (q @ k.repeat_interleave(n_q // n_k, 1).transpose(-1, -2)) * 0.25
    keep = torch.zeros_like(s, dtype=torch.bool).scatter(-1, s.topk(kk, dim=-1).indices, True)
    want = reference_attention(q, k, v, 0.25, keep)
    got = grouped_decode_attention(q, k, v, 0.25, v_topk=kk)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, exact)


CONFIGS = {
    "diffqkv+augq": ModelConfig.preset("tiny"),
    "half_k": ModelConfig.preset("tiny", half_k=True, d_qk=16, d_v=8),
    "kv_more_k": ModelConfig.preset("tiny", n_k=4, n_v=2, d_aug=0),
    "tied": ModelConfig.preset("tiny", tie_embeddings=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cached_decode_matches_full_forward_token_by_token(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = GPT(cfg).double().eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache(2, 32)
        step_logits = [model(idx[:, :10], cache=cache)]  # prefill
        step_logits.append(model(idx[:, 10:13], cache=cache))  # a 3-token chunk through the decode path
        for t in range(13, 24):
            step_logits.append(model(idx[:, t:t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, rtol=1e-9, atol=1e-9)
    assert cache.length == 24
    assert cache.k[0].shape == (2, cfg.n_k, 32, cfg.d_k) and cache.v[0].shape == (2, cfg.n_v, 32, cfg.d_v)


def test_left_padded_batch_matches_unpadded_rows():
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(1)
    model = GPT(cfg).double().eval()
    a = torch.randint(0, cfg.vocab_size, (1, 12))
    b = torch.randint(0, cfg.vocab_size, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    pad = torch.ones(2, 12, dtype=torch.bool)
    pad[1, :5] = False
    nxt = torch.randint(0, cfg.vocab_size, (2, 1))
    with torch.no_grad():
        assert torch.allclose(model(batch, pad_mask=pad)[1, 5:], model(b)[0])
        cache = model.new_cache(2, 16)
        model(batch, cache=cache, pad_mask=pad)
        got = model(nxt, cache=cache)[:, -1]
        want_a = model(torch.cat([a, nxt[:1]], 1))[0, -1]
        want_b = model(torch.cat([b, nxt[1:]], 1))[0, -1]
    torch.testing.assert_close(got[0], want_a)
    torch.testing.assert_close(got[1], want_b)


def test_selective_v_model_with_large_k_matches_exact_decode():
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(2)
    exact = GPT(cfg).double().eval()
    sel = GPT(dataclasses.replace(cfg, v_topk=64)).double().eval()
    sel.load_state_dict(exact.state_dict())
    small = GPT(dataclasses.replace(cfg, v_topk=2)).double().eval()
    small.load_state_dict(exact.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (1, 30))
    outs = []
    with torch.no_grad():
        for m in (exact, sel, small):
            cache = m.new_cache(1, 30)
            m(idx[:, :20], cache=cache)
            outs.append(torch.cat([m(idx[:, t:t + 1], cache=cache) for t in range(20, 30)], 1))
    torch.testing.assert_close(outs[1], outs[0])
    assert not torch.allclose(outs[2], outs[0])


@pytest.mark.parametrize("tie", [False, True])
def test_matches_hf_llama_when_n_k_equals_n_v_and_no_augq(tie):
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.io import llama_config_kwargs, llama_state_dict

    cfg = ModelConfig.preset("tiny", n_k=4, n_v=4, d_aug=0, rope_theta=50000.0, norm_eps=1e-6,
                             tie_embeddings=tie, max_seq_len=64)
    torch.manual_seed(3)
    ours = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for n, p in ours.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    hf = LlamaForCausalLM(LlamaConfig(**llama_config_kwargs(cfg))).eval()
    missing, unexpected = hf.load_state_dict(llama_state_dict(ours), strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    idx = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        want = hf(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # the loss with masked (-100) targets matches HF's token-level cross entropy too
    targets = idx.roll(-1, 1)
    targets[:, :5] = -100
    want_loss = torch.nn.functional.cross_entropy(want.view(-1, cfg.vocab_size), targets.view(-1))
    torch.testing.assert_close(ours(idx, targets), want_loss, rtol=1e-4, atol=1e-4)


def test_param_count_and_costs():
    for name in ("tiny", "mini", "gqa", "mha"):
        cfg = ModelConfig.preset(name)
        assert cfg.num_params() == sum(p.numel() for p in GPT(cfg).parameters()), name
    for extra in ({"half_k": True, "d_qk": 16}, {"tie_embeddings": True}):
        cfg = ModelConfig.preset("tiny", **extra)
        assert cfg.num_params() == sum(p.numel() for p in GPT(cfg).parameters())
    # KV cache: Sigma's 4 K + 16 V heads vs GQA 16 + 16 -> exactly 37.5% smaller
    sigma = ModelConfig.preset("sigma-1.5b")
    gqa = dataclasses.replace(sigma, n_k=16, n_v=16, d_aug=0)
    assert 1 - sigma.kv_bytes_per_token() / gqa.kv_bytes_per_token() == 0.375
    assert sigma.kv_bytes_per_token(2) == 26 * (4 * 64 + 16 * 64) * 2
    assert ModelConfig.preset("sigma-1.5b", half_k=True).kv_bytes_per_token(2) == 26 * (4 * 32 + 16 * 64) * 2
    # AugQ costs exactly the parameters of widening the FFN by d_aug (n_q*d_qk == d here)
    wide = dataclasses.replace(sigma, d_aug=0, ffn_hidden=sigma.ffn_hidden + sigma.d_aug)
    assert sigma.num_params() == wide.num_params()
    # FLOPs grow with context only through attention
    assert sigma.flops_per_token(2048) - sigma.flops_per_token(1024) == 3 * 2 * 26 * 32 * 128 * 1024


def test_config_presets_round_trip_and_validate():
    for name in ("tiny", "mini", "small", "small-gqa", "sigma-1.5b", "sigma-10b", "mha", "gqa"):
        cfg = ModelConfig.preset(name)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # the reproduction's Q1 pair: equal parameters, DiffQKV's KV cache 37.5% smaller
    small, small_gqa = ModelConfig.preset("small"), ModelConfig.preset("small-gqa")
    assert small.num_params() == small_gqa.num_params()
    assert small.kv_bytes_per_token() / small_gqa.kv_bytes_per_token() == 0.625
    s = ModelConfig.preset("sigma-10b")
    assert (s.n_layer, s.n_embd, s.ffn_hidden, s.d_aug, s.n_q, s.n_k, s.n_v, s.rope_theta) == \
        (32, 4096, 14336, 6144, 32, 4, 16, 500000.0)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("nope")
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig.preset("tiny", n_k=3)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ModelConfig.from_dict({**ModelConfig.preset("tiny").to_dict(), "heads": 3})


def test_training_reduces_loss_on_a_repeating_sequence():
    cfg = ModelConfig.preset("tiny", vocab_size=32)
    torch.manual_seed(4)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = torch.arange(64) % 7
    x, y = seq[None, :-1].repeat(4, 1), seq[None, 1:].repeat(4, 1)
    first = None
    for _ in range(60):
        loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_training_forward_traces_as_one_graph():
    """`train.compile: true` compiles the training forward whole: no graph break (a break, such as
    reading a tensor value to size the RoPE tables, splits the graph and costs the fusion)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny"))
    x = torch.randint(0, 512, (2, 32))
    explanation = torch._dynamo.explain(model)(x, x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
