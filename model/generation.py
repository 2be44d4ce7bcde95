"""Text generation with the KV cache: greedy, temperature, top-k / top-p, stop sequences, batches.

Layers, lowest first:
- `sample_next(logits, ...)`: one sampling decision per row.
- `stream_ids(model, prompt_ids, ...)`: token level; left-pads a batch of prompts, prefills once,
  then decodes one token per step and yields the new token of every row (None for finished rows).
  Servers stream from this.
- `generate_ids` collects it; `generate(model, tokenizer, prompts, ...)` works on strings with a HF
  `tokenizers.Tokenizer` and cuts outputs at stop sequences; `stream_text` yields text deltas for
  one prompt, holding back anything that could still turn into a stop sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

# End-of-sequence tokens recognised in a tokenizer's vocabulary when no eos id is given.
EOS_TOKENS = ("<|endoftext|>", "<|eos|>", "</s>", "<eos>", "<|im_end|>", "<|end|>")


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. temperature 0 is greedy (top_k/top_p then do not matter)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def eos_ids_of(tokenizer) -> list[int]:
    ids = [tokenizer.token_to_id(t) for t in EOS_TOKENS]
    return [i for i in ids if i is not None]


@torch.inference_mode()
def stream_ids(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int = 64, temperature: float = 0.0,
               top_k: int | None = None, top_p: float | None = None, eos_ids: Sequence[int] = (),
               seed: int | None = None,
               stop_fn: Callable[[int, list[int]], bool] | None = None) -> Iterator[list[int | None]]:
    """Yield, per decoding step, the new token of each row (None once a row has finished).

    A row finishes on an eos id (not yielded), after max_new_tokens, or when
    stop_fn(row, generated_ids_so_far) returns True (the token that triggered it is yielded).
    """
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if max_new_tokens == 0:
        return
    device = next(model.parameters()).device
    B, L = len(prompt_ids), max(len(p) for p in prompt_ids)
    idx = torch.zeros(B, L, dtype=torch.long, device=device)
    pad = torch.zeros(B, L, dtype=torch.bool, device=device)
    for r, p in enumerate(prompt_ids):  # left padding keeps every row's last token in the last column
        idx[r, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
        pad[r, L - len(p):] = True
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device).manual_seed(seed)
    eos = set(int(e) for e in eos_ids)
    cache = model.new_cache(B, L + max_new_tokens)
    logits = model(idx, cache=cache, pad_mask=pad if not bool(pad.all()) else None)[:, -1]
    done = [False] * B
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, gen)
        tokens: list[int | None] = []
        for r, t in enumerate(nxt.tolist()):
            if done[r] or t in eos:
                done[r] = True
                tokens.append(None)
                continue
            out[r].append(t)
            tokens.append(t)
            if stop_fn is not None and stop_fn(r, out[r]):
                done[r] = True
        yield tokens
        if all(done) or step == max_new_tokens - 1:
            return
        logits = model(nxt[:, None], cache=cache)[:, -1]


def generate_ids(model, prompt_ids: Sequence[Sequence[int]], **kw) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompt_ids]
    for tokens in stream_ids(model, prompt_ids, **kw):
        for r, t in enumerate(tokens):
            if t is not None:
                out[r].append(t)
    return out


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    ids = [e.ids for e in tokenizer.encode_batch(list(prompts))]
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {i} is empty after tokenization")
    return ids


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop: Sequence[str] | None = None,
             seed: int | None = None, eos_ids: Sequence[int] | None = None) -> list[str]:
    """Complete each prompt (batched, left-padded) and return the generated text only, cut before
    the first stop sequence."""
    stop = [s for s in (stop or []) if s]
    ids = _encode(tokenizer, prompts)

    def stop_fn(r, gen_ids):
        return _cut_at_stop(tokenizer.decode(gen_ids), stop)[1]

    outs = generate_ids(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, eos_ids=eos_ids_of(tokenizer) if eos_ids is None else eos_ids,
                        stop_fn=stop_fn if stop else None)
    return [_cut_at_stop(tokenizer.decode(o), stop)[0] for o in outs]


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
                top_k: int | None = None, top_p: float | None = None, stop: Sequence[str] | None = None,
                seed: int | None = None, eos_ids: Sequence[int] | None = None) -> Iterator[str]:
    """Yield text deltas for one prompt; their concatenation equals generate(...)[0]."""
    stop = [s for s in (stop or []) if s]
    ids = _encode(tokenizer, [prompt])
    gen: list[int] = []
    sent = 0
    for tokens in stream_ids(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, seed=seed,
                             eos_ids=eos_ids_of(tokenizer) if eos_ids is None else eos_ids):
        if tokens[0] is None:
            break
        gen.append(tokens[0])
        text, hit = _cut_at_stop(tokenizer.decode(gen), stop)
        if hit:
            if len(text) > sent:
                yield text[sent:]
            return
        safe = len(text)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            safe -= 1
        for s in stop:  # hold back a tail that may be the start of a stop sequence
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    safe = min(safe, len(text) - n)
                    break
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    text = _cut_at_stop(tokenizer.decode(gen), stop)[0]
    if len(text) > sent:
        yield text[sent:]
