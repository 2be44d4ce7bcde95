"""The training recipe (`minisigma train RECIPE`): one YAML file, validated section by section.

A recipe says everything about a run: model preset, data, optimizer, schedule, batch shape,
precision, the distributed strategy and, for `kind: sft`, the instruction pairs. Pretraining
(model/train.py) and SFT (model/sft.py) both read it here, and `build_model_config` / `load_init`
turn it into the model to train.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import Field, model_validator

from minisigma.core.errors import UserError
from minisigma.core.recipes import LocalPath, Section, load_recipe

from model.data import DataSection
from model.gpt import ModelConfig
from model.io import load_pretrained
from model.tokenizer import TokenizerSection


class ModelSection(Section):
    preset: str = "tiny"  # a ModelConfig preset (model/gpt.py)
    overrides: dict[str, Any] = Field(default_factory=dict)  # ModelConfig fields to change
    # Start from an exported model (model.safetensors + config.json), e.g. the next pretraining
    # phase with other data.weights; its config replaces preset/overrides.
    init_from: LocalPath | None = None


class OptimSection(Section):
    lr: float = Field(3e-3, gt=0)  # peak learning rate
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # final LR = min_lr_ratio * lr
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(10, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_frac: float = Field(0.2, gt=0, le=1)  # wsd: the last fraction of steps decays linearly
    grad_clip: float = Field(1.0, ge=0)  # 0 = off


class TrainSection(Section):
    max_steps: int = Field(100, ge=1)  # optimizer steps; the LR schedule spans exactly these
    micro_batch: int = Field(8, ge=1)  # sequences per device per micro-batch
    accumulate: int = Field(1, ge=1)  # micro-batches per optimizer step
    seq_len: int = Field(128, ge=8)
    seed: int = 0  # model init and data order
    eval_every: int = Field(50, ge=1)  # optimizer steps between validations
    eval_batches: int = Field(8, ge=1)
    eval_at_start: bool = True  # a validation before the first step (the step-0 point of the curve)
    ckpt_every: int = Field(100, ge=1)  # optimizer steps between checkpoints
    keep_checkpoints: int = Field(3, ge=1)
    log_every: int = Field(10, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp"] = "auto"
    fsdp_sharding: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD"] = "FULL_SHARD"
    activation_checkpointing: bool = False  # fsdp only: recompute each Block in backward
    compile: bool = False  # torch.compile the model's forward
    peak_tflops: float | None = None  # per-device peak for MFU; default from the GPU model
    threads: int | None = None  # torch.set_num_threads on CPU
    progress_bar: bool = True


class SFTSection(Section):
    pairs: list[LocalPath]  # instruction-pair JSONL files (or directories of *.jsonl) made by synth
    init_from: LocalPath | None = None  # exported pretrained model dir (model.safetensors + config.json + tokenizer.json)
    system_prompt: str | None = None  # system turn for pairs without their own "system"
    val_fraction: float = Field(0.05, ge=0, lt=1)  # held out by pair (hash of its text)
    pack: bool = True  # pack whole conversations into rows (first-fit decreasing) or one per row


class TrainRecipe(Section):
    name: str
    kind: Literal["pretrain", "sft"] = "pretrain"
    out_dir: LocalPath  # run directory: ckpt/, logs/, steps.jsonl, final/ (local: README, On object storage)
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    train: TrainSection = Field(default_factory=TrainSection)
    sft: SFTSection | None = None

    @model_validator(mode="after")
    def _sft_needs_section(self):
        if self.kind == "sft" and self.sft is None:
            raise ValueError("kind: sft needs an `sft:` section")
        return self


def load_train_recipe(path) -> TrainRecipe:
    return load_recipe(path, TrainRecipe)


def build_model_config(recipe: TrainRecipe, vocab_size: int) -> ModelConfig:
    """The model of the recipe (preset + overrides), sized for the tokenizer and the sequence length."""
    try:
        cfg = ModelConfig.preset(recipe.model.preset, **recipe.model.overrides)
    except (ValueError, TypeError) as e:
        raise UserError(f"model: {e}") from None
    if "vocab_size" not in recipe.model.overrides or cfg.vocab_size < vocab_size:
        if "vocab_size" in recipe.model.overrides:
            raise UserError(f"model.overrides.vocab_size={cfg.vocab_size} is smaller than the tokenizer's {vocab_size}")
        cfg = type(cfg).from_dict({**cfg.to_dict(), "vocab_size": vocab_size})
    if recipe.train.seq_len > cfg.max_seq_len:
        cfg = type(cfg).from_dict({**cfg.to_dict(), "max_seq_len": recipe.train.seq_len})
    return cfg


def load_init(model_dir, seq_len: int, vocab_size: int | None = None):
    """(config, state dict, tokenizer or None) of an exported model to start from. The tokenizer must
    fit it (`vocab_size`, when the data's tokenizer is another one); the context grows to `seq_len`."""
    model, cfg, tok = load_pretrained(model_dir)
    if vocab_size is not None and cfg.vocab_size < vocab_size:
        raise UserError(f"{model_dir}: vocab_size {cfg.vocab_size} < the tokenizer's {vocab_size}")
    if seq_len > cfg.max_seq_len:
        cfg = dataclasses.replace(cfg, max_seq_len=seq_len)
    return cfg, model.state_dict(), tok
