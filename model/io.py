"""Export and load a model: `model.safetensors` + `config.json` (+ `tokenizer.json`).

The directory layout follows the Hugging Face convention so the files can be inspected with the
usual tools; config.json holds ModelConfig.to_dict() plus a format marker. With n_k = n_v, no AugQ
and full K width, the model is a plain Llama and `llama_state_dict` gives HF LlamaForCausalLM names.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minisigma.core.errors import UserError
from model.gpt import GPT, ModelConfig
from model.tokenizer import read_tokenizer_file

FORMAT = "minisigma-diffqkv"
FORMAT_VERSION = 1


def save_pretrained(model: GPT, out_dir, tokenizer=None) -> Path:
    """Write model.safetensors, config.json and (if given) tokenizer.json into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # safetensors refuses shared storage; re-tied on load
    save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": str(next(model.parameters()).dtype),
            "model": model.cfg.to_dict()}
    (out / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save(str(out / "tokenizer.json"))
    return out


def load_config(ckpt_dir) -> ModelConfig:
    path = Path(ckpt_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{ckpt_dir}: not a model checkpoint (no config.json)")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        meta = meta if isinstance(meta, dict) else {}
        raise UserError(f"{path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        return ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: model: {e}") from None


def load_pretrained(ckpt_dir, device="cpu", dtype: torch.dtype | None = None):
    """-> (model in eval mode, config, tokenizers.Tokenizer or None)."""
    ckpt = Path(ckpt_dir)
    cfg = load_config(ckpt)
    weights = ckpt / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{ckpt}: model.safetensors is missing")
    model = GPT(cfg)
    try:
        state = load_file(str(weights))
    except SafetensorError as e:  # a truncated file, a bad header, not safetensors at all
        raise UserError(f"{weights}: not a readable safetensors file ({e})") from None
    if cfg.tie_embeddings and "embed.weight" in state:
        state["lm_head.weight"] = state["embed.weight"]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape for config.json
        first = str(e).splitlines()[-1].strip()
        raise UserError(f"{weights}: weights do not match config.json ({first})") from None
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match config.json "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    tok = None
    if (ckpt / "tokenizer.json").is_file():
        tok = read_tokenizer_file(ckpt / "tokenizer.json")
    return model, cfg, tok


# ----------------------------------------------------------------------------- Llama interop
def llama_config_kwargs(cfg: ModelConfig) -> dict:
    """Keyword arguments for transformers.LlamaConfig describing the same network (n_k = n_v only)."""
    if cfg.n_k != cfg.n_v or cfg.d_aug or cfg.half_k or cfg.d_qk != cfg.d_v:
        raise ValueError("only n_k == n_v, d_aug == 0, half_k off and d_qk == d_v is a plain Llama")
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.ffn_hidden,
                num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_q, num_key_value_heads=cfg.n_k,
                head_dim=cfg.d_qk, rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len,
                tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF LlamaForCausalLM parameter names."""
    llama_config_kwargs(model.cfg)  # validates
    ren = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn.": "self_attn.",
           "ffn.gate": "mlp.gate_proj", "ffn.up": "mlp.up_proj", "ffn.down": "mlp.down_proj"}
    out = {}
    for name, t in model.state_dict().items():
        if name == "embed.weight":
            new = "model.embed_tokens.weight"
        elif name == "norm.weight":
            new = "model.norm.weight"
        elif name == "lm_head.weight":
            new = name
        else:
            new = "model." + name.replace("blocks.", "layers.")
            for a, b in ren.items():
                new = new.replace(a, b)
        out[new] = t
    return out
