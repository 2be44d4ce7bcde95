"""minisigma's DiffQKV transformer for Hugging Face transformers (remote code, one file).

This file is shipped inside every folder `minisigma export --format hf` writes, and is loaded by

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

It imports only torch and transformers (the user may not have minisigma installed) and mirrors
minisigma's `model/gpt.py` block by block, with Hugging Face names for the modules:

- Q, K and V have their own head counts (`num_attention_heads`, `num_key_heads`,
  `num_value_heads`); query head i reads K head i // (n_q/n_k) and V head i // (n_q/n_v).
- AugQ (`aug_q_size` > 0): q = down(silu(gate q) * up q) after q_proj, before RoPE.
- Half-K (`half_k`): keys are projected and cached at head_dim/2; the queries are brought to
  that width by `q_down` (shared by the heads of a layer), after AugQ and before RoPE.
- Selective V fetching (`v_topk` > 0, decoding only): each query head keeps its top-k scores,
  softmaxes over them and reads only those V rows.
- The KV cache is transformers' `Cache` (a `DynamicCache` by default): K [B, n_k, S, d_k] and
  V [B, n_v, S, d_v] are separate tensors of different shapes, which `DynamicLayer` keeps as they
  come. Caches that preallocate one shape for K and V from the config (StaticCache) do not fit.

Prefill runs `F.scaled_dot_product_attention` on the new tokens (the smaller K/V head group is
repeated in activations, SDPA's enable_gqa maps the query heads); decoding against a cache runs
grouped matmuls that read every cached K and V vector once. minisigma's CUDA FlexHeadFA kernel is
not used here. Padding: a 2D `attention_mask` marks real tokens; real tokens get positions
0, 1, ... per row and padded positions are never attended to.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


# ----------------------------------------------------------------------------- config
class MiniSigmaConfig(PreTrainedConfig):
    """minisigma's ModelConfig under transformers' names (n_embd = hidden_size, n_q =
    num_attention_heads, n_k = num_key_heads, n_v = num_value_heads, d_qk = head_dim,
    d_v = value_head_dim, d_aug = aug_q_size, ffn_hidden = intermediate_size)."""

    model_type = "minisigma"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 512
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    num_key_heads: int = 1
    num_value_heads: int = 4
    head_dim: int = 8
    value_head_dim: int = 8
    half_k: bool = False
    aug_q_size: int = 0
    intermediate_size: int = 192
    rope_theta: float = 10000.0
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    v_topk: int = 0
    initializer_range: float = 0.02
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        n_q, n_k, n_v = self.num_attention_heads, self.num_key_heads, self.num_value_heads
        if n_q % n_k or n_q % n_v or max(n_k, n_v) % min(n_k, n_v):
            raise ValueError(f"num_attention_heads={n_q} must be a multiple of num_key_heads={n_k} and "
                             f"num_value_heads={n_v}, and one of those must divide the other")
        if self.head_dim % (4 if self.half_k else 2):
            raise ValueError(f"head_dim={self.head_dim} must be even (divisible by 4 with half_k)")
        super().__post_init__(**kwargs)

    @property
    def key_head_dim(self) -> int:
        """Width of a cached key head (and of the score dot product)."""
        return self.head_dim // 2 if self.half_k else self.head_dim


# ----------------------------------------------------------------------------- building blocks
class MiniSigmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()  # statistics in float32
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class MiniSigmaRotary(nn.Module):
    """RoPE tables (half-split "rotate_half" layout), built on first use and grown on demand.

    Plain float32 attributes, not buffers: they are neither saved nor cast with the weights, and
    follow the device of the positions they are asked for."""

    def __init__(self, dim: int, theta: float):
        super().__init__()
        self.dim, self.theta = dim, theta
        self.cos = self.sin = torch.empty(0, dim)

    def _build(self, length: int, device):
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, pos: torch.Tensor, dtype: torch.dtype):
        """pos: LongTensor [B, T] -> cos, sin of shape [B, 1, T, dim]."""
        need = int(pos.max()) + 1 if pos.numel() else 0
        if need > self.cos.shape[0] or self.cos.device != pos.device:
            self._build(max(need, self.cos.shape[0]), pos.device)
        return self.cos[pos].unsqueeze(1).to(dtype), self.sin[pos].unsqueeze(1).to(dtype)


def apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class MiniSigmaSwiGLU(nn.Module):
    """down(silu(gate x) * up x): the feed-forward block and the AugQ block."""

    def __init__(self, dim_in: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim_in, hidden, bias=False)
        self.up_proj = nn.Linear(dim_in, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim_in, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ----------------------------------------------------------------------------- attention
def expand_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, h, T, D] -> [B, n, T, D] by repeating each head n/h times (contiguous groups)."""
    h = x.shape[1]
    return x if h == n else x.repeat_interleave(n // h, dim=1)


def diffqkv_sdpa(q, k, v, scale: float, attn_mask=None, is_causal: bool = False):
    """q [B,n_q,T,dk], k [B,n_k,S,dk], v [B,n_v,S,dv] -> [B,n_q,T,dv] with SDPA."""
    g = max(k.shape[1], v.shape[1])
    k, v = expand_heads(k, g), expand_heads(v, g)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.shape[1] != g)


def _softmax(x):
    return torch.softmax(x, dim=-1, dtype=torch.float32 if x.element_size() < 4 else x.dtype)


def grouped_decode_attention(q, k, v, scale: float, mask=None, v_topk: int = 0):
    """A few new queries against the cache, reading every K and V vector once: the query heads
    are folded into the rows of one matmul per K head (and per V head). mask: bool
    [B, 1 or n_q, T, S] (True = attend) or None."""
    B, n_q, T, dk = q.shape
    n_k, S, n_v = k.shape[1], k.shape[2], v.shape[1]
    q = (q * scale).reshape(B, n_k, (n_q // n_k) * T, dk)
    scores = torch.matmul(q, k.transpose(-1, -2)).view(B, n_q, T, S)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    if v_topk and v_topk < S:
        top, idx = scores.topk(v_topk, dim=-1)  # selective V fetching
        probs = _softmax(top).to(v.dtype)
        g, dv = n_q // n_v, v.shape[-1]
        idx = idx.view(B, n_v, g * T * v_topk, 1).expand(B, n_v, g * T * v_topk, dv)
        picked = torch.gather(v, 2, idx).view(B, n_q, T, v_topk, dv)
        return (probs.unsqueeze(-1) * picked).sum(-2)
    probs = _softmax(scores).to(v.dtype)
    out = torch.matmul(probs.view(B, n_v, (n_q // n_v) * T, S), v)
    return out.view(B, n_q, T, v.shape[-1])


class MiniSigmaAttention(nn.Module):
    def __init__(self, config: MiniSigmaConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        c, d = config, config.hidden_size
        self.n_q, self.n_k, self.n_v = c.num_attention_heads, c.num_key_heads, c.num_value_heads
        self.d_qk, self.d_k, self.d_v = c.head_dim, c.key_head_dim, c.value_head_dim
        self.q_proj = nn.Linear(d, self.n_q * self.d_qk, bias=False)
        self.k_proj = nn.Linear(d, self.n_k * self.d_k, bias=False)
        self.v_proj = nn.Linear(d, self.n_v * self.d_v, bias=False)
        self.o_proj = nn.Linear(self.n_q * self.d_v, d, bias=False)
        self.aug_q = MiniSigmaSwiGLU(self.n_q * self.d_qk, c.aug_q_size) if c.aug_q_size else None
        self.q_down = nn.Linear(self.d_qk, self.d_k, bias=False) if c.half_k else None
        self.scale = 1.0 / math.sqrt(self.d_k)

    def forward(self, x, cos, sin, attn_mask=None, cache: Cache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x)
        if self.aug_q is not None:
            q = self.aug_q(q)
        q = q.view(B, T, self.n_q, self.d_qk)
        if self.q_down is not None:
            q = self.q_down(q)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # [B, n_q, T, d_k]
        k = apply_rope(self.k_proj(x).view(B, T, self.n_k, self.d_k).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(B, T, self.n_v, self.d_v).transpose(1, 2)

        past = 0
        if cache is not None:
            past = cache.get_seq_length(self.layer_idx)
            k_all, v_all = cache.update(k, v, self.layer_idx)
        if past == 0:  # training, or prefill into an empty cache
            y = diffqkv_sdpa(q, k, v, self.scale, attn_mask=attn_mask, is_causal=attn_mask is None)
        else:
            y = grouped_decode_attention(q, k_all, v_all, self.scale, attn_mask, self.config.v_topk)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_q * self.d_v))


class MiniSigmaDecoderLayer(nn.Module):
    def __init__(self, config: MiniSigmaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = MiniSigmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MiniSigmaAttention(config, layer_idx)
        self.post_attention_layernorm = MiniSigmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MiniSigmaSwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, attn_mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------- models
class MiniSigmaPreTrainedModel(PreTrainedModel):
    config_class = MiniSigmaConfig
    config: MiniSigmaConfig
    base_model_prefix = "model"
    _no_split_modules = ["MiniSigmaDecoderLayer"]
    _can_compile_fullgraph = False  # the decode path reads the cache length on the host


def _attention_mask(valid: torch.Tensor | None, past: int, T: int, device) -> torch.Tensor | None:
    """The bool mask [B, 1, T, S] (True = attend) for T new tokens after `past` cached ones, or
    None where plain causal attention (SDPA's is_causal, or a single decoded token) is exact."""
    S = past + T
    if valid is not None and not bool(valid.all()):
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)
        mask = causal[None, None] & valid[:, None, None, :]
        # a fully padded query row would softmax over nothing: let it see itself (its output is unused)
        return mask | torch.eye(T, S, dtype=torch.bool, device=device).roll(S - T, 1)[None, None]
    if past > 0 and T > 1:
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)[None, None]
    return None


class MiniSigmaModel(MiniSigmaPreTrainedModel):
    def __init__(self, config: MiniSigmaConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(MiniSigmaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = MiniSigmaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = MiniSigmaRotary(config.key_head_dim, config.rope_theta)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, use_cache: bool | None = None, **kwargs):
        """-> (last hidden states [B, T, d], cache). attention_mask: [B, past + T], 1 = real token."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0

        valid = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("MiniSigma takes a 2D attention_mask [batch, past + new tokens]")
            valid = attention_mask[:, -(past + T):].bool()
        if position_ids is None:
            if valid is not None:
                position_ids = (valid.long().cumsum(-1) - 1).clamp_min(0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)
        cos, sin = self.rotary(position_ids, x.dtype)
        mask = _attention_mask(valid, past, T, x.device)

        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        return self.norm(x), cache


class MiniSigmaForCausalLM(MiniSigmaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MiniSigmaConfig):
        super().__init__(config)
        self.model = MiniSigmaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache: Cache | None = None,
                inputs_embeds=None, labels=None, use_cache: bool | None = None,
                logits_to_keep: int = 0, **kwargs) -> CausalLMOutputWithPast:
        """Logits [B, T, V] (the last `logits_to_keep` positions when > 0); with `labels`, the mean
        next-token cross entropy (labels are shifted inside, -100 is ignored)."""
        hidden, cache = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
