"""Pretraining and SFT under Lightning (`minisigma train RECIPE [--resume]`).

One recipe file (pydantic `TrainRecipe`, YAML) says everything: model preset, data, optimizer,
schedule, batch shape, precision and the distributed strategy. The same file runs on this CPU and
on GPUs (`precision: auto` = bf16-mixed on CUDA and on CPUs with native bf16, else 32-true).

- `LitGPT`: the LightningModule. AdamW (weight decay on matrices only), warmup then cosine or WSD
  (warmup-stable-decay) per optimizer step, gradient clipping and accumulation by the Trainer,
  optional torch.compile. Tokens/s (and MFU on GPU, from ModelConfig.flops_per_token) are shown in
  the progress bar. Every micro-batch appends {step, micro, loss, lr, batch sha256} to
  `steps.jsonl` (rank 0; loss averaged and batch gathered over ranks), which is how the tests prove
  that a resumed or distributed run saw the same batches as the reference.
- Checkpoints: Lightning `.ckpt` every `ckpt_every` optimizer steps in out_dir/ckpt; `--resume`
  continues from last.ckpt (else the newest stepNNNNNN.ckpt) and restores model, optimizer,
  scheduler, loop counters AND the data position (StreamDataModule.state_dict). At the end the weights are exported with model.io.save_pretrained
  to out_dir/final (model.safetensors + config.json + tokenizer.json).
- Logs: CSV (out_dir/logs/csv) and TensorBoard (out_dir/logs/tb).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import zipfile
from pathlib import Path

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.progress import log, quiet_third_party
from model.data import StreamDataModule, TokenStream, load_tokens, stream_fingerprint
from model.gpt import GPT, Block
from model.io import save_pretrained
from model.recipe import (OptimSection, TrainRecipe, TrainSection, build_model_config, load_init,  # noqa: F401
                          load_train_recipe)  # re-exported: `model.train` is where callers find the recipe
from model.sft import build_sft
from model.tokenizer import load_tokenizer


# ----------------------------------------------------------------------------- schedule
def lr_factor(step: int, total: int, o: OptimSection) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based) of `total`."""
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    lo = o.min_lr_ratio
    if o.schedule == "cosine":
        span = max(1, total - o.warmup_steps)
        p = min(1.0, (step - o.warmup_steps) / span)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
    # WSD: flat at the peak, then a linear decay over the last decay_frac of the run
    decay_steps = max(1, round(total * o.decay_frac))
    start = total - decay_steps
    if step < start:
        return 1.0
    return lo + (1 - lo) * max(0.0, 1 - (step - start + 1) / decay_steps)


# peak dense bf16 TFLOP/s per device, for MFU (vendor datasheets)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for k, v in PEAK_TFLOPS.items():
        if k in device_name:
            return v * 1e12
    return None


def batch_sha(x) -> str:
    return hashlib.sha256(x.detach().to("cpu").contiguous().numpy().tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------- lightning module
def _lightning():
    import lightning.pytorch as pl

    return pl


class LitGPT(_lightning().LightningModule):
    def __init__(self, model_cfg, optim: OptimSection, total_steps: int, seq_len: int,
                 init_state: dict | None = None, compile: bool = False, steps_log: str | None = None,
                 peak_tflops: float | None = None):
        super().__init__()
        self.model_cfg, self.optim_cfg, self.total_steps, self.seq_len = model_cfg, optim, total_steps, seq_len
        self._init_state, self._compile, self.steps_log = init_state, compile, steps_log
        self._peak_tflops = peak_tflops
        self.model = None
        self._fwd = []  # the (possibly compiled) forward; a list so it is not a registered submodule
        self._t_last = None
        self._peak = None

    def configure_model(self):
        """Build the model here (not in __init__) so FSDP can shard it as it is created."""
        if self.model is not None:
            return

        self.model = GPT(self.model_cfg)
        if self._init_state is not None:
            self.model.load_state_dict(self._init_state)
            self._init_state = None
        if self._compile:
            import torch

            self._fwd = [torch.compile(self.model)]
        else:
            self._fwd = [self.model]

    def forward(self, idx, targets=None):
        return self._fwd[0](idx, targets)

    # --- optimizer
    def configure_optimizers(self):
        import torch

        o = self.optim_cfg
        decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
        total = self.total_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, o))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- steps
    def on_train_start(self):
        import torch

        self._t_last = None
        if self.device.type == "cuda":
            self._peak = peak_flops(torch.cuda.get_device_name(self.device), self._peak_tflops)
        if self.steps_log and self.trainer.is_global_zero:
            # a resumed run replays from the checkpoint's step: drop records of steps after it
            for path, last in ((self.steps_log, self.global_step - 1),
                               (str(Path(self.steps_log).with_name("evals.jsonl")), self.global_step)):
                if os.path.exists(path):
                    keep = [ln for ln in open(path) if ln.strip() and json.loads(ln)["step"] <= last]
                    with open(path, "w") as f:
                        f.writelines(keep)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self(x, y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        if self.steps_log:
            self._record(x, loss, batch_idx)
        return loss

    def _record(self, x, loss, batch_idx):
        ws = self.trainer.world_size
        loss_all = self.all_gather(loss.detach()).float().mean()
        xs = self.all_gather(x) if ws > 1 else x
        if self.trainer.is_global_zero:
            acc = self.trainer.accumulate_grad_batches
            rec = {"step": self.global_step, "micro": batch_idx % acc, "loss": float(loss_all),
                   "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
                   "batch": batch_sha(xs.reshape(-1, xs.shape[-1]))}
            with open(self.steps_log, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def on_train_batch_start(self, batch, batch_idx):
        # counted before the batch runs: a checkpoint (saved at batch end) then includes this batch
        self.trainer.datamodule.advance()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        now = time.perf_counter()
        if self._t_last is not None:
            tokens = batch[0].numel() * self.trainer.world_size
            tps = tokens / max(now - self._t_last, 1e-9)
            self.log("tok_s", tps, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
            if self._peak:
                mfu = tps * self.model_cfg.flops_per_token(self.seq_len) / (self._peak * self.trainer.world_size)
                self.log("mfu", mfu, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t_last = now

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = self(x, y)
        self.log("val_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_validation_epoch_end(self):
        if self.steps_log and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            v = self.trainer.callback_metrics.get("val_loss")
            if v is not None:
                with open(Path(self.steps_log).with_name("evals.jsonl"), "a") as f:
                    f.write(json.dumps({"step": self.global_step, "val_loss": float(v)}) + "\n")
        self._t_last = None  # do not count validation time in tokens/s


class StopAfter(_lightning().Callback):
    """Stop cleanly after optimizer step `step` (simulates a preemption in tests and `--stop-after`)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


# ----------------------------------------------------------------------------- assembling a run
# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) below which it has no native bf16 matmul
_ONEDNN_ISA_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX-BF16).

    Read from /proc/cpuinfo: oneDNN also runs bf16 on CPUs without these instructions, by
    emulation, which is slower than float32; only the native instructions make bf16 pay. A cap
    set with ONEDNN_MAX_CPU_ISA (e.g. AVX2, to run as a CPU without AVX-512 would) is honoured.
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_ISA_WITHOUT_BF16:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(p: str) -> str:
    """`auto`: bf16-mixed on a GPU with bf16 (16-mixed otherwise); on a CPU, bf16-mixed when it has
    native bf16 matmuls (measured on this project's 2-core AVX512-BF16 machine: 2.0x the tokens/s
    of float32 for the `small` model), else 32-true."""
    import torch

    if p != "auto":
        return p
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def _strategy(t: TrainSection):
    if t.strategy != "fsdp":
        return t.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(auto_wrap_policy={Block}, sharding_strategy=t.fsdp_sharding,
                        activation_checkpointing_policy={Block} if t.activation_checkpointing else None,
                        state_dict_type="full")


def build_pretrain_data(recipe: TrainRecipe):
    tdir = Path(recipe.data.tokens_dir)
    tok = load_tokenizer(tdir)
    t = recipe.train
    train_tokens = load_tokens(tdir, "train")
    dm = StreamDataModule(TokenStream(train_tokens, t.seq_len), TokenStream(load_tokens(tdir, "val"), t.seq_len),
                          t.micro_batch, t.seed, t.eval_batches, stream_fingerprint(train_tokens, t.seq_len, t.seed))
    return dm, tok


def _is_launcher_rank() -> bool:
    """False in the processes Lightning's DDP launcher starts for ranks > 0 (they rerun this command)."""
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint to resume from: last.ckpt, else the newest stepNNNNNN.ckpt.

    Lightning writes each file atomically, but the step checkpoint before last.ckpt; a run killed
    between the two has only the step file, and it is as good a place to resume from.
    """
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return last
    steps = sorted(ckpt_dir.glob("step*.ckpt"), key=lambda f: int(re.sub(r"\D", "", f.stem) or -1))
    return steps[-1] if steps else None


CKPT_KEYS = ("state_dict", "global_step", "optimizer_states", "loops")


def check_checkpoint(path: Path) -> None:
    """Fail with a UserError naming `path` unless it is a loadable Lightning checkpoint.

    Lightning would otherwise fail deep inside `fit` with a traceback, or resume from damaged weights.
    The file is memory-mapped (mmap=True), so checking a large checkpoint costs no second copy of its
    tensors. A sharded (FSDP) checkpoint is a directory; Lightning's strategy checks those itself.
    """
    import torch

    if path.is_dir():
        return
    # torch.save writes a zip archive; a truncated one has lost its central directory at the end
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)")
    # torch.load does not check the members' CRC-32: damaged tensor bytes would load as bad weights
    # (one sequential read of the file, which Lightning then reads again)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"{path}: not a readable checkpoint ({e})") from None
    if bad is not None:
        raise UserError(f"{path}: damaged checkpoint ({bad} fails its CRC-32 check)")
    try:
        # weights_only=False: Lightning's own resume loads it the same way (optimizer and loop state
        # are not plain tensors); this is the run's own checkpoint, written by this project.
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # torch.load's errors for a damaged file have no common type
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first})") from None
    missing = [k for k in CKPT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path}: not a Lightning training checkpoint (no {', '.join(missing)})")


def run(recipe: TrainRecipe, resume: bool = False, stop_after: int | None = None, callbacks=()) -> dict:
    """Train per the recipe; returns a summary dict (also written to out_dir/summary.json)."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    quiet_third_party()  # after Lightning's import: it sets its loggers' levels then
    t = recipe.train
    out = Path(recipe.out_dir)
    ckpt_dir = out / "ckpt"
    ckpt_path = None
    if resume:
        ckpt_path = latest_checkpoint(ckpt_dir)
        if ckpt_path is None:
            raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
        check_checkpoint(ckpt_path)
    elif _is_launcher_rank() and ((out / "steps.jsonl").exists() or latest_checkpoint(ckpt_dir)):
        raise UserError(f"{out} already holds a run; use --resume to continue it or choose another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    if t.threads and not torch.cuda.is_available():
        torch.set_num_threads(t.threads)
    pl.seed_everything(t.seed, workers=True, verbose=False)

    init_state = None
    if recipe.kind == "pretrain":
        dm, tok = build_pretrain_data(recipe)
        if recipe.model.init_from:
            cfg, init_state, _ = load_init(recipe.model.init_from, t.seq_len, tok.get_vocab_size())
        else:
            cfg = build_model_config(recipe, tok.get_vocab_size())
    else:
        dm, tok, cfg, init_state = build_sft(recipe)

    lit = LitGPT(cfg, recipe.optim, t.max_steps, t.seq_len, init_state=init_state, compile=t.compile,
                 steps_log=str(out / "steps.jsonl"), peak_tflops=t.peak_tflops)
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:06d}", auto_insert_metric_name=False,
                              every_n_train_steps=t.ckpt_every, save_last=True, save_top_k=t.keep_checkpoints,
                              monitor="step", mode="max")
    cbs = [ckpt_cb, *callbacks]
    if stop_after is not None:
        cbs.append(StopAfter(stop_after))
    trainer = pl.Trainer(
        accelerator="gpu" if t.accelerator == "cuda" else t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=_strategy(t), precision=resolve_precision(t.precision), max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate, gradient_clip_val=recipe.optim.grad_clip or None,
        val_check_interval=t.eval_every * t.accumulate, check_val_every_n_epoch=None, limit_val_batches=t.eval_batches,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every, callbacks=cbs,
        # a new version_N per (re)start: Lightning's CSVLogger would otherwise truncate the old metrics
        logger=[CSVLogger(out / "logs", name="csv"), TensorBoardLogger(out / "logs", name="tb")],
        use_distributed_sampler=False, enable_progress_bar=t.progress_bar, enable_model_summary=False,
        default_root_dir=out, deterministic=False,
    )
    if trainer.is_global_zero:
        device = type(trainer.accelerator).__name__.removesuffix("Accelerator")
        resumed = f", resumed from {ckpt_path.name}" if ckpt_path else ""
        log(f"{recipe.name}: {recipe.kind}, {cfg.num_params() / 1e6:.2f}M parameters, {t.max_steps} steps, "
            f"precision {trainer.precision} on {trainer.num_devices} {device}{resumed}")
    t0 = time.time()
    if ckpt_path is None and t.eval_at_start:
        trainer.validate(lit, datamodule=dm, verbose=False)
    trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None)
    seconds = time.time() - t0

    summary = {"name": recipe.name, "kind": recipe.kind, "global_step": trainer.global_step,
               "max_steps": t.max_steps, "finished": trainer.global_step >= t.max_steps,
               "params": cfg.num_params(), "seconds": round(seconds, 2),
               "val_loss": float(trainer.callback_metrics["val_loss"]) if "val_loss" in trainer.callback_metrics else None,
               "consumed_samples": dm.consumed_samples}
    state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP (full state dict)
    if trainer.is_global_zero:
        if summary["finished"]:
            _export(state, cfg, tok, out / "final")
            summary["export"] = str(out / "final")
        # paths inside a run relative to out (the run can move), the checkout's relative to it
        (out / "summary.json").write_text(json.dumps(storage.recorded(summary, out), indent=2) + "\n")
    return summary


def _export(state: dict, cfg, tok, out_dir: Path) -> None:
    """Write model.safetensors + config.json + tokenizer.json from the LightningModule state dict."""
    model = GPT(cfg)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict({k: v.float().cpu() for k, v in weights.items()})
    save_pretrained(model, out_dir, tokenizer=tok)


def main(recipe_path, resume: bool = False, stop_after: int | None = None) -> dict:
    return run(load_train_recipe(recipe_path), resume=resume, stop_after=stop_after)
