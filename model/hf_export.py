"""Export a checkpoint as a Hugging Face transformers folder (remote code, no minisigma needed).

`export_hf(checkpoint_dir, out_dir)` turns a minisigma model directory (model.safetensors +
config.json + tokenizer.json, as model/io.py writes) into a folder that

    AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)
    AutoTokenizer.from_pretrained(out_dir)

load: the weights under transformers' names, `config.json` with `auto_map` pointing at the shipped
`modeling_minisigma.py` (model/hf/, a one-file mirror of model/gpt.py), `generation_config.json`
(the end-of-sequence tokens `minisigma generate` stops at), the tokenizer files and, when the
tokenizer has the chat tokens, `chat_template.jinja`: model/chat.py's format as a Jinja template.

The files are written here rather than through transformers' `save_pretrained`, so exporting
needs neither transformers (a test extra, not a runtime dependency) nor building the HF model;
the tests load every exported folder with the installed transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from minisigma.core.errors import UserError
from model.generation import eos_ids_of
from model.gpt import GPT, ModelConfig
from model.io import load_pretrained
from model.tokenizer import ASSISTANT, EOT, PAD, SPECIAL_TOKENS

MODELING_FILE = Path(__file__).with_name("hf") / "modeling_minisigma.py"
MODEL_TYPE = "minisigma"

# model/chat.py's rendering, token for token: <|endoftext|>, then per message its role token, one
# space, the content and <|end|>; the generation prompt is <|assistant|>. The {% generation %}
# span is what chat.render's mask marks (assistant content and its closing <|end|>), so
# `return_assistant_tokens_mask=True` gives the SFT loss mask. Content is inserted as it is: pass
# `sanitize_control_tokens=True` to apply_chat_template to have a "<|end|>" typed by a user encoded
# as characters, as chat.py always does.
CHAT_TEMPLATE = (
    "{%- if messages | length == 0 %}{{ raise_exception('a conversation needs at least one message') }}{% endif -%}"
    "<|endoftext|>"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('role must be system, user or assistant, got ' + message['role']) }}"
    "{%- elif message['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('a system message may only come first') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ ' ' + message['content'] }}<|end|>{% endgeneration %}"
    "{%- else %}"
    "{{ '<|' + message['role'] + '|> ' + message['content'] }}<|end|>"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif %}"
)


def hf_config(cfg: ModelConfig, tok=None) -> dict:
    """config.json of the export: ModelConfig under transformers' names + auto_map."""
    ids = {}
    if tok is not None:
        eos = eos_ids_of(tok)
        ids = {"bos_token_id": tok.token_to_id(EOT), "pad_token_id": tok.token_to_id(PAD),
               "eos_token_id": eos[0] if len(eos) == 1 else (eos or None)}
    return {
        "architectures": ["MiniSigmaForCausalLM"],
        "model_type": MODEL_TYPE,
        "auto_map": {"AutoConfig": "modeling_minisigma.MiniSigmaConfig",
                     "AutoModelForCausalLM": "modeling_minisigma.MiniSigmaForCausalLM"},
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_q, "num_key_heads": cfg.n_k, "num_value_heads": cfg.n_v,
        "head_dim": cfg.d_qk, "value_head_dim": cfg.d_v, "half_k": cfg.half_k, "aug_q_size": cfg.d_aug,
        "intermediate_size": cfg.ffn_hidden, "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "v_topk": cfg.v_topk, "initializer_range": cfg.init_std,
        "use_cache": True, "dtype": "float32", "minisigma_preset": cfg.name,
        **{k: v for k, v in ids.items() if v is not None},
    }


_RENAMES = (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"), ("attn.", "self_attn."),
            ("ffn.gate", "mlp.gate_proj"), ("ffn.up", "mlp.up_proj"), ("ffn.down", "mlp.down_proj"),
            ("aug_q.gate", "aug_q.gate_proj"), ("aug_q.up", "aug_q.up_proj"), ("aug_q.down", "aug_q.down_proj"))


def hf_name(name: str) -> str:
    """A GPT parameter name -> its name in MiniSigmaForCausalLM (and in LlamaForCausalLM, where the
    network is a plain Llama)."""
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    if name == "lm_head.weight":
        return name
    new = "model." + name.replace("blocks.", "layers.", 1)
    for a, b in _RENAMES:
        new = new.replace(a, b)
    return new


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names (lm_head left out when tied: transformers re-ties it)."""
    state = {hf_name(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _tokenizer_config(tok, max_len: int) -> dict:
    special = [s for s in SPECIAL_TOKENS if tok.token_to_id(s) is not None]
    conf = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
            "clean_up_tokenization_spaces": False, "padding_side": "left"}
    for key, token in (("bos_token", EOT), ("eos_token", EOT), ("pad_token", PAD)):
        if tok.token_to_id(token) is not None:
            conf[key] = token
    extra = [s for s in special if s not in conf.values()]
    if extra:
        conf["extra_special_tokens"] = extra
    return conf


def has_chat_tokens(tok) -> bool:
    return all(tok.token_to_id(s) is not None for s in SPECIAL_TOKENS)


def export_hf(checkpoint_dir, out_dir) -> Path:
    """Write the transformers folder for a minisigma checkpoint; returns out_dir."""
    model, cfg, tok = load_pretrained(checkpoint_dir)
    if tok is None:
        raise UserError(f"{checkpoint_dir}: tokenizer.json is missing (the export ships the tokenizer)")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    save_file(hf_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, tok), indent=2, sort_keys=True) + "\n")
    eos = eos_ids_of(tok)
    gen = {"bos_token_id": tok.token_to_id(EOT), "eos_token_id": eos, "pad_token_id": tok.token_to_id(PAD),
           "do_sample": False}
    (out / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v not in (None, [])}, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(MODELING_FILE, out / "modeling_minisigma.py")
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(_tokenizer_config(tok, cfg.max_seq_len), indent=2, sort_keys=True) + "\n")
    template = out / "chat_template.jinja"
    if has_chat_tokens(tok):
        template.write_text(CHAT_TEMPLATE)
    elif template.exists():
        template.unlink()  # a stale template from an earlier export of another tokenizer
    return out
