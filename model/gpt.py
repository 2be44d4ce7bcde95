"""The Sigma (DiffQKV) transformer in one file.

A decoder-only Llama-style model (RMSNorm, RoPE, SwiGLU, untied or tied embeddings) whose attention
is Sigma's DiffQKV (arXiv 2501.13629):

- Q, K and V have their own head counts (`n_q`, `n_k`, `n_v`). Query head i reads K head
  i // (n_q/n_k) and V head i // (n_q/n_v) (contiguous groups, the GQA convention).
- AugQ: an optional gated block on the query path, after W_Q and before RoPE:
  q = W_down(silu(W_gate q) * W_up q) with intermediate width `d_aug` (0 = off).
- Half-K width (ablation, `half_k=True`): keys are projected and cached at d_qk/2 values per head.
  The paper only says the width mismatch is bridged "with an extra trainable projection"; we put it
  on the query side (`q_down`: d_qk -> d_qk/2, shared by all heads of a layer, applied after AugQ and
  before RoPE), so the cache holds the narrow keys and decode reads only those.
- Selective V fetching (`v_topk > 0`, decode only): each query head keeps its top-k scores and reads
  just those V rows. The paper does not say whether kept scores are renormalised; we renormalise
  (softmax over the kept scores), which is exact whenever k >= context.

Two attention paths:
- prefill / training: `F.scaled_dot_product_attention`. Only activations are expanded: the head
  group with fewer heads (usually K) is repeated up to the other group's count, and SDPA's
  `enable_gqa` maps the query heads onto it. On CUDA, FlexHeadFA (a FlashAttention-2 fork that takes
  n_k != n_v) is used instead when it is importable.
- decode (appending to a KV cache): grouped matmuls that read every cached K and V vector exactly
  once, with no head expansion and no copy of the cache (the cache is preallocated, K and V are
  separate tensors of different shapes, and the matmuls run on views of it).

Cost accounting (`num_params`, `flops_per_token`, `kv_bytes_per_token`) lives on the config, so
reports can compare configurations without building them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

try:  # FlexHeadFA: FlashAttention-2 with n_k != n_v; only ever used on CUDA tensors.
    from flex_head_fa import flash_attn_func as _flex_head_flash_attn
except Exception:  # not installed (always the case on CPU-only machines): SDPA fallback
    _flex_head_flash_attn = None


# ----------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    vocab_size: int = 512
    n_layer: int = 2
    n_embd: int = 64  # hidden size d
    n_q: int = 8  # query heads
    n_k: int = 1  # key heads
    n_v: int = 4  # value heads
    d_qk: int = 8  # query/key head width
    d_v: int = 8  # value head width
    half_k: bool = False  # cache keys at d_qk // 2 (extra trainable projection on q)
    d_aug: int = 0  # AugQ intermediate width, 0 = off
    ffn_hidden: int = 192  # SwiGLU intermediate width
    rope_theta: float = 10000.0
    max_seq_len: int = 256  # training context length (RoPE tables grow on demand beyond it)
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    v_topk: int = 0  # selective V fetching at decode time, 0 = off (read all V)
    init_std: float = 0.02
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        for f in ("vocab_size", "n_layer", "n_embd", "n_q", "n_k", "n_v", "d_qk", "d_v", "ffn_hidden"):
            if getattr(self, f) <= 0:
                raise ValueError(f"ModelConfig.{f} must be positive, got {getattr(self, f)}")
        if self.n_q % self.n_k or self.n_q % self.n_v:
            raise ValueError(f"n_q={self.n_q} must be a multiple of n_k={self.n_k} and n_v={self.n_v}")
        if max(self.n_k, self.n_v) % min(self.n_k, self.n_v):
            raise ValueError(f"one of n_k={self.n_k}, n_v={self.n_v} must divide the other")
        if self.half_k and self.d_qk % 4:
            raise ValueError(f"half_k needs d_qk divisible by 4 (RoPE pairs), got {self.d_qk}")
        if self.d_qk % 2:
            raise ValueError(f"d_qk must be even for RoPE, got {self.d_qk}")
        if self.d_aug < 0 or self.v_topk < 0:
            raise ValueError("d_aug and v_topk must be >= 0")

    # --- derived sizes
    @property
    def d_k(self) -> int:
        """Width of a cached key head (and of the score dot product)."""
        return self.d_qk // 2 if self.half_k else self.d_qk

    # --- presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        return cls(**d)

    # --- cost accounting
    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of GPT(self) (tests check it against the built model)."""
        d = self.n_embd
        attn = d * self.n_q * self.d_qk + d * self.n_k * self.d_k + d * self.n_v * self.d_v
        attn += self.n_q * self.d_v * d  # W_O
        if self.d_aug:
            attn += 3 * self.n_q * self.d_qk * self.d_aug
        if self.half_k:
            attn += self.d_qk * self.d_k
        ffn = 3 * d * self.ffn_hidden
        per_layer = attn + ffn + 2 * d  # two RMSNorm weights
        n = self.n_layer * per_layer + d  # final norm
        if include_embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        else:
            n += self.vocab_size * d  # lm_head is a matmul even when tied
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> int:
        """Matmul FLOPs per token: 2 per weight (+ lm_head) and 2 per score / weighted-sum MAC at
        `seq_len` context (full window, as nanochat's estimate). Training = 3x forward."""
        t = self.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_params(include_embeddings=False) - self.n_layer * 2 * self.n_embd - self.n_embd
        attn = 2 * self.n_layer * self.n_q * (self.d_k + self.d_v) * t
        fwd = 2 * n_matmul + attn
        return 3 * fwd if training else fwd

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """KV-cache bytes one token occupies across all layers: n_k*d_k + n_v*d_v values per layer."""
        return self.n_layer * (self.n_k * self.d_k + self.n_v * self.d_v) * bytes_per_value


def _sigma(n_layer, d, ffn, d_aug, head, theta, tie):
    return ModelConfig(
        vocab_size=128256, n_layer=n_layer, n_embd=d, n_q=32, n_k=4, n_v=16, d_qk=head, d_v=head,
        d_aug=d_aug, ffn_hidden=ffn, rope_theta=theta, max_seq_len=4096, tie_embeddings=tie,
    )


# Table 7 of the paper for the two Sigma sizes. Not stated there, chosen here: max_seq_len 4096,
# tied embeddings for 1.5B (as Llama-3.2-1B at that width) and untied for 10B (as Llama-3-8B).
# `mini` keeps Sigma's head ratios n_q:n_k:n_v = 8:1:4 and AugQ = 1.5x hidden; `gqa` is the paper's
# "Std" baseline in miniature (n_k = n_v = n_q/2, no AugQ); `mha` has n_k = n_v = n_q.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=512, n_layer=2, n_embd=64, n_q=8, n_k=1, n_v=4, d_qk=8, d_v=8,
                        d_aug=96, ffn_hidden=192, max_seq_len=256, name="tiny"),
    "mini": ModelConfig(vocab_size=8192, n_layer=6, n_embd=384, n_q=8, n_k=1, n_v=4, d_qk=48, d_v=48,
                        d_aug=576, ffn_hidden=1024, max_seq_len=512, name="mini"),
    "gqa": ModelConfig(vocab_size=8192, n_layer=6, n_embd=384, n_q=8, n_k=4, n_v=4, d_qk=48, d_v=48,
                       d_aug=0, ffn_hidden=1024, max_seq_len=512, name="gqa"),
    # `small`: the mini architecture cut to what 2 CPU cores train within the 45-minute reproduction
    # (recipes/reproduce/mini.yaml): 3.5x the tokens/s of `mini`, so it sees ~3x the tokens in the
    # same minutes and ends at a lower loss. `small-gqa`: its same-size GQA 4/4 baseline, the
    # FFN widened (704 -> 1056) so the parameter counts are equal (8,227,072).
    "small": ModelConfig(vocab_size=8192, n_layer=4, n_embd=256, n_q=8, n_k=1, n_v=4, d_qk=32, d_v=32,
                         d_aug=384, ffn_hidden=704, max_seq_len=512, name="small"),
    "small-gqa": ModelConfig(vocab_size=8192, n_layer=4, n_embd=256, n_q=8, n_k=4, n_v=4, d_qk=32, d_v=32,
                             d_aug=0, ffn_hidden=1056, max_seq_len=512, name="small-gqa"),
    "mha": ModelConfig(vocab_size=8192, n_layer=6, n_embd=384, n_q=8, n_k=8, n_v=8, d_qk=48, d_v=48,
                       d_aug=0, ffn_hidden=1024, max_seq_len=512, name="mha"),
    "sigma-1.5b": dataclasses.replace(_sigma(26, 2048, 6144, 3072, 64, 50000.0, True), name="sigma-1.5b"),
    "sigma-10b": dataclasses.replace(_sigma(32, 4096, 14336, 6144, 128, 500000.0, False), name="sigma-10b"),
}


# ----------------------------------------------------------------------------- building blocks
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # statistics in float32 like HF Llama, so low-precision runs stay stable
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """RoPE tables (half-split "rotate_half" layout, as HF Llama), grown on demand.

    The tables are plain float32 attributes rather than buffers, so `model.to(bfloat16)` cannot
    round them; they follow the device of the positions they are asked for.
    """

    def __init__(self, dim: int, theta: float, length: int):
        super().__init__()
        self.dim, self.theta = dim, theta
        self.cos = self.sin = torch.empty(0, dim)
        self._build(length, torch.device("cpu"))

    def _build(self, length: int, device):
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.dim, 2, dtype=torch.float32, device=device) / self.dim))
        freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()

    def forward(self, pos: torch.Tensor, dtype: torch.dtype, length: int | None = None):
        """pos: LongTensor [B, T] -> cos, sin of shape [B, 1, T, dim] (broadcast over heads).

        `length`: an upper bound of pos.max() + 1 the caller already knows (T in training), so the
        tables are checked without reading a tensor value: that read would break a torch.compile graph.
        """
        need = length if length is not None else (int(pos.max()) + 1 if pos.numel() else 0)
        if need > self.cos.shape[0] or self.cos.device != pos.device:
            self._build(max(need, self.cos.shape[0]), pos.device)
        return self.cos[pos].unsqueeze(1).to(dtype), self.sin[pos].unsqueeze(1).to(dtype)


def apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class SwiGLU(nn.Module):
    """down(silu(gate x) * up x); used for the FFN and for the AugQ block."""

    def __init__(self, dim_in: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim_in, hidden, bias=False)
        self.up = nn.Linear(dim_in, hidden, bias=False)
        self.down = nn.Linear(hidden, dim_in, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Preallocated per-layer caches with *separate* K [B, n_k, S, d_k] and V [B, n_v, S, d_v].

    `valid[b, s]` marks real (non left-padding) positions; `length` is how many slots are filled
    (shared by the batch: left padding keeps rows aligned).
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        self.cfg, self.max_len = cfg, max_len
        self.k = [torch.zeros(batch_size, cfg.n_k, max_len, cfg.d_k, device=device, dtype=dtype)
                  for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(batch_size, cfg.n_v, max_len, cfg.d_v, device=device, dtype=dtype)
                  for _ in range(cfg.n_layer)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


# ----------------------------------------------------------------------------- attention
def expand_heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, h, T, D] -> [B, n, T, D] by repeating each head n/h times (contiguous groups)."""
    h = x.shape[1]
    return x if h == n else x.repeat_interleave(n // h, dim=1)


def diffqkv_sdpa(q, k, v, scale: float, attn_mask=None, is_causal: bool = False):
    """Prefill/training attention. q [B,n_q,T,dk], k [B,n_k,S,dk], v [B,n_v,S,dv] -> [B,n_q,T,dv].

    Only the smaller of the K/V head groups is repeated (in activations) to the larger one's count;
    SDPA's enable_gqa then maps n_q query heads onto those groups without a further copy.
    """
    g = max(k.shape[1], v.shape[1])
    k, v = expand_heads(k, g), expand_heads(v, g)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=q.shape[1] != g)


def grouped_decode_attention(q, k, v, scale: float, mask=None, v_topk: int = 0):
    """Attention of a few new queries against a cache, reading every K and V vector once.

    q [B, n_q, T, dk]; k [B, n_k, S, dk] and v [B, n_v, S, dv] may be (non-contiguous) views of the
    preallocated cache; mask: bool [B, 1 or n_q, T, S] (True = attend) or None.
    Query heads are folded into the rows of one matmul per K head (and again per V head), so no
    head is expanded and the cache is streamed exactly once.
    """
    B, n_q, T, dk = q.shape
    n_k, S, n_v = k.shape[1], k.shape[2], v.shape[1]
    q = (q * scale).reshape(B, n_k, (n_q // n_k) * T, dk)  # scale the few queries, not the scores
    scores = torch.matmul(q, k.transpose(-1, -2)).view(B, n_q, T, S)
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf"))
    if v_topk and v_topk < S:
        return _topk_values(scores, v, v_topk)
    probs = _softmax(scores).to(v.dtype)
    out = torch.matmul(probs.view(B, n_v, (n_q // n_v) * T, S), v)
    return out.view(B, n_q, T, v.shape[-1])


def _softmax(x):
    # float32 statistics for half-precision inputs; float32/float64 stay as they are
    return torch.softmax(x, dim=-1, dtype=torch.float32 if x.element_size() < 4 else x.dtype)


def _topk_values(scores, v, k: int):
    """Selective V fetching: per query head keep the top-k scores, softmax over them, and gather
    only those V rows (k*dv values per head instead of S*dv)."""
    B, n_q, T, S = scores.shape
    n_v, dv = v.shape[1], v.shape[-1]
    top, idx = scores.topk(k, dim=-1)  # [B, n_q, T, k]
    probs = _softmax(top).to(v.dtype)
    # map each query head to its V head, then gather the selected rows of that head
    g = n_q // n_v
    idx = idx.view(B, n_v, g * T * k, 1).expand(B, n_v, g * T * k, dv)
    picked = torch.gather(v, 2, idx).view(B, n_q, T, k, dv)
    return (probs.unsqueeze(-1) * picked).sum(-2)


class DiffQKVAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d = cfg.n_embd
        self.q_proj = nn.Linear(d, cfg.n_q * cfg.d_qk, bias=False)
        self.k_proj = nn.Linear(d, cfg.n_k * cfg.d_k, bias=False)
        self.v_proj = nn.Linear(d, cfg.n_v * cfg.d_v, bias=False)
        self.o_proj = nn.Linear(cfg.n_q * cfg.d_v, d, bias=False)
        self.aug_q = SwiGLU(cfg.n_q * cfg.d_qk, cfg.d_aug) if cfg.d_aug else None
        self.q_down = nn.Linear(cfg.d_qk, cfg.d_k, bias=False) if cfg.half_k else None
        self.scale = 1.0 / math.sqrt(cfg.d_k)

    def forward(self, x, cos, sin, cache: KVCache | None = None, attn_mask=None):
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x)
        if self.aug_q is not None:
            q = self.aug_q(q)
        q = q.view(B, T, cfg.n_q, cfg.d_qk)
        if self.q_down is not None:
            q = self.q_down(q)
        q = apply_rope(q.transpose(1, 2), cos, sin)  # [B, n_q, T, d_k]
        k = apply_rope(self.k_proj(x).view(B, T, cfg.n_k, cfg.d_k).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(B, T, cfg.n_v, cfg.d_v).transpose(1, 2)

        if cache is None:
            y = self._prefill(q, k, v, attn_mask)
        else:
            start = cache.length
            kc, vc = cache.k[self.layer_idx], cache.v[self.layer_idx]
            kc[:, :, start:start + T] = k
            vc[:, :, start:start + T] = v
            end = start + T
            if start == 0:  # prefill into an empty cache: same path as training
                y = self._prefill(q, k, v, attn_mask)
            else:
                y = grouped_decode_attention(q, kc[:, :, :end], vc[:, :, :end], self.scale, attn_mask,
                                             cfg.v_topk)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_q * cfg.d_v)
        return self.o_proj(y)

    def _prefill(self, q, k, v, attn_mask):
        if attn_mask is None and _flex_head_flash_attn is not None and q.is_cuda \
                and q.dtype in (torch.float16, torch.bfloat16):
            out = _flex_head_flash_attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        softmax_scale=self.scale, causal=True)
            return out.transpose(1, 2)
        return diffqkv_sdpa(q, k, v, self.scale, attn_mask=attn_mask, is_causal=attn_mask is None)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = DiffQKVAttention(cfg, layer_idx)
        self.ffn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.n_embd, cfg.ffn_hidden)

    def forward(self, x, cos, sin, cache=None, attn_mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, attn_mask)
        return x + self.ffn(self.ffn_norm(x))


# ----------------------------------------------------------------------------- model
class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(cfg.d_k, cfg.rope_theta, cfg.max_seq_len)
        self.apply(self._init_weights)
        # GPT-2 style: scale the residual-branch output projections by depth
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("ffn.down.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)

    def new_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        p = self.embed.weight
        return KVCache(self.cfg, batch_size, max_len, device=p.device, dtype=dtype or p.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                pad_mask: torch.Tensor | None = None):
        """idx [B, T] -> logits [B, T, V], or the mean cross entropy (ignore_index=-100) with targets.

        With `cache`, the T tokens are appended after `cache.length` positions already cached
        (prefill when the cache is empty, decode otherwise) and the cache advances by T.
        `pad_mask` [B, T] (True = real token) marks left padding in a batched prefill; padded
        positions are never attended to and real tokens get positions 0, 1, ... per row.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"KV cache overflow: {start}+{T} > {cache.max_len}")
        x = self.embed(idx)

        if cache is not None and pad_mask is not None:
            cache.valid[:, start:start + T] = pad_mask
        if cache is not None:
            valid = cache.valid[:, :start + T]
            pos = (valid.long().cumsum(-1) - 1).clamp_min(0)[:, start:]
        elif pad_mask is not None:
            valid = pad_mask
            pos = (pad_mask.long().cumsum(-1) - 1).clamp_min(0)
        else:
            valid = None
            pos = torch.arange(T, device=idx.device).expand(B, T)
        cos, sin = self.rotary(pos, x.dtype, length=T if valid is None else None)

        attn_mask = None
        if valid is not None and not bool(valid.all()):
            S = valid.shape[1]
            causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=S - T)
            attn_mask = causal[None, None] & valid[:, None, None, :]
            # a fully padded query row would softmax over nothing: let it see itself (output unused)
            attn_mask = attn_mask | torch.eye(T, S, dtype=torch.bool, device=idx.device).roll(S - T, 1)[None, None]
        elif cache is not None and start > 0 and T > 1:
            S = start + T
            attn_mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=S - T)[None, None]

        for block in self.blocks:
            x = block(x, cos, sin, cache, attn_mask)
        if cache is not None:
            cache.length = start + T
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    @torch.no_grad()
    def decode_step(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append tokens idx [B, T] to the cache and return the logits of the last one, [B, V]."""
        return self.forward(idx, cache=cache)[:, -1]
