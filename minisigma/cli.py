"""The `minisigma` command line.

Each command is a thin shell: it parses arguments, then imports the module that does the work
lazily (so `minisigma --help` stays fast and a torch-free command never loads torch).
Errors a user can fix (bad recipe, missing file) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from minisigma.bench import load_benchmark
from minisigma.core.errors import UserError


def error_line(exc: BaseException) -> str | None:
    """The one line a user sees for an expected failure, or None for a bug (which keeps its traceback).

    Expected: a UserError (bad input, raised where the input is read) and an OSError that names a
    file (a path that is in the way, a read-only or full file system, a permission refused)."""
    if isinstance(exc, UserError):
        return f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        return f"error: {where}: {exc.strerror or exc}"
    return None


class _Commands(TyperGroup):
    """The command group: the one place a command's expected failure becomes `error: ...` and exit 2.

    It wraps every command's invocation (sub-groups included), inside Typer's own handling, which
    would otherwise print a traceback or, for an EOFError, a bare "Aborted!" with exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:  # re-raised below unless it is an expected failure
            line = error_line(e)
            if line is None:
                raise
            print(line.replace("\n", " "), file=sys.stderr)
            raise typer.Exit(2) from None


# What a storage URL given to a `Path` argument has become ("s3://b/x" -> "s3:/b/x").
_URL_AS_PATH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/+(?=[^/])")


def local_only(path: Path, option: str) -> Path:
    """A path argument of a command that works on local files only: a URL is a one-line error."""
    m = _URL_AS_PATH.match(str(path))
    if m and m.group(1).lower() != "file":
        raise UserError(f"{m.group(1)}://{str(path)[m.end():]}: {option}: a URL is not supported for this command"
                        " (`minisigma curate --out`, `refine --run`, `classifier train --run`, `tokenize --in` and"
                        " `manifest show/verify/diff` take one)")
    return path


def location(value: str, option: str) -> str | Path:
    """A run directory argument that may be a storage URL (s3://, gs://, memory:// ...), kept as text."""
    from minisigma.core import storage

    return value if storage.is_url(value) else out_dir(Path(value), option)


def out_dir(path: Path, option: str = "--out", _dirs_of: Path | None = None) -> Path:
    """An output directory argument: neither it nor a parent may be an existing file."""
    local_only(path, option)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{p}: {option} {_dirs_of or path} needs a directory here, but this is a file")
            break
    return path


def out_file(path: Path, option: str = "--out") -> Path:
    """An output file argument: not an existing directory, and no parent an existing file."""
    if path.is_dir():
        raise UserError(f"{path}: {option} names the file to write, but this is a directory")
    out_dir(path.parent, option, _dirs_of=path)
    return path


app = typer.Typer(cls=_Commands, no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
manifest_app = typer.Typer(no_args_is_help=True, help="Inspect, verify and compare run manifests.")
bench_app = typer.Typer(no_args_is_help=True, help="Side-by-side performance benchmarks.")
app.add_typer(manifest_app, name="manifest")
app.add_typer(bench_app, name="bench")


# --------------------------------------------------------------------------- the main job
@app.command("reproduce")
def reproduce_cmd(
    recipe: str = typer.Option("mini", "--recipe", help="tiny | mini | a path to a reproduce recipe YAML"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default: the recipe's runs/<name>)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="join this Ray cluster for the curation and synth stages"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
    seed: Optional[int] = typer.Option(None, "--seed", min=0,
                                       help="train every model on this seed (default: the recipes' own, 0)"),
    data_only: bool = typer.Option(False, "--data-only",
                                   help="run the data stages (curation to tokenisation; they do not depend on "
                                        "--seed) and stop, for several seed runs to share (--data-from)"),
    data_from: Optional[Path] = typer.Option(None, "--data-from",
                                             help="start --out as a copy of this --data-only run of the recipe "
                                                  "(seed runs share one curation instead of repeating it)"),
):
    """Curate -> synth -> tokenize -> pretrain -> SFT -> evaluate -> report, resuming where a previous run stopped."""
    from minisigma.reproduce import reproduce

    if out is not None:
        out_dir(out)
    if data_from is not None:
        local_only(data_from, "--data-from")
    reproduce(recipe, out, ray_address=ray_address, progress=not quiet, seed=seed, data_only=data_only,
              data_from=data_from)


# --------------------------------------------------------------------------- curation
@app.command("curate")
def curate_cmd(
    recipe: Path = typer.Argument(..., help="a curation recipe, e.g. recipes/curation/default.yaml"),
    out: str = typer.Option(..., "--out", help="the run directory to write (re-running resumes it): a local path "
                                                "or a URL such as s3://bucket/runs/t"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="join this Ray cluster ('auto' for a local `ray start`)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
):
    """Run a curation recipe: sources -> crawl (WARC) -> extract -> refine, with a manifest per stage."""
    from curation import pipeline, recipe as curation_recipe
    from minisigma.core import manifest

    r = curation_recipe.load(recipe)
    where = location(out, "--out")
    run_dir = pipeline.curate(r, where, ray_address=ray_address, progress=not quiet)
    manifest.show(where if isinstance(where, str) else run_dir)


# --------------------------------------------------------------------------- manifests
@manifest_app.command("show")
def manifest_show(run_dir: str = typer.Argument(..., help="a run directory (or one stage's directory), or its URL")):
    """Print a table of every stage of a run: documents and bytes in/out, drops by reason."""
    from minisigma.core import manifest, storage

    manifest.show(run_dir if storage.is_url(run_dir) else Path(run_dir))


@manifest_app.command("verify")
def manifest_verify(run_dir: str = typer.Argument(..., help="a run directory (or one stage's directory), or its URL")):
    """Re-hash every shard and check in = out + dropped + quarantined; exit 1 on any mismatch."""
    from minisigma.core import manifest, storage

    problems = manifest.verify(run_dir if storage.is_url(run_dir) else Path(run_dir))
    if problems:
        raise typer.Exit(1)


@manifest_app.command("snapshot")
def manifest_snapshot(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    dest: Path = typer.Argument(..., help="where to keep its record, e.g. manifests/reference/mini"),
):
    """Keep the small record of a run (stage manifests, stage times, evaluation summaries) for `manifest diff`."""
    from minisigma.core import manifest

    files = manifest.snapshot(local_only(run_dir, "RUN_DIR"), out_dir(dest, "DEST"))
    print(f"{len(files)} files -> {dest}")


@manifest_app.command("diff")
def manifest_diff(
    run_dir: str = typer.Argument(..., help="your run directory, or its URL"),
    reference: str = typer.Argument(..., help="a reference run, e.g. manifests/reference/mini, or its URL"),
    tolerance: float = typer.Option(0.10, help="relative difference reported as a finding"),
):
    """Compare the per-stage counts of a run with a reference run; exit 1 when they differ beyond the tolerance."""
    from minisigma.core import manifest, storage

    run, ref = (p if storage.is_url(p) else Path(p) for p in (run_dir, reference))
    if manifest.diff(run, ref, rel_tol=tolerance):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- synth
@app.command("synth")
def synth_cmd(
    recipe: Path = typer.Argument(..., help="a synth recipe (recipes/synth/*.yaml)"),
    in_dir: Path = typer.Option(..., "--in", help="curated shards (NNNNN.jsonl.gz)"),
    out: Path = typer.Option(..., "--out", help="run directory for the synth stages"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="join this Ray cluster"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
):
    """Make instruction pairs, Q&A pairs and rewrites from curated documents, screened, with manifests."""
    local_only(in_dir, "--in")
    out_dir(out)
    from synth.pipeline import run_synth

    run_synth(recipe, in_dir, out, ray_address=ray_address, progress=not quiet)


@app.command("serve")
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a model directory (model.safetensors + config.json)"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="model id reported by /v1/models"),
    max_batch: int = typer.Option(8, "--max-batch", help="largest batch of concurrent requests"),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:N"),
    api_key_file: Optional[Path] = typer.Option(
        None, "--api-key-file", help="file whose first line is the API key (else $MINISIGMA_API_KEY; "
                                     "never on the command line)"),
    no_auth: bool = typer.Option(False, "--no-auth", help="serve without an API key (loopback addresses only)"),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="larger requests get 413"),
    header_timeout: float = typer.Option(10.0, "--header-timeout", min=0.1,
                                         help="seconds for a connection's request line and headers"),
    body_timeout: float = typer.Option(30.0, "--body-timeout", min=0.1, help="seconds for a request body (408)"),
    max_connections: int = typer.Option(64, "--max-connections", min=1, help="more are answered 503"),
):
    """Serve a checkpoint over an OpenAI-compatible HTTP API (chat/completions, streaming), with an API key."""
    from model.server import Limits, read_api_key, serve

    if not local_only(checkpoint, "--checkpoint").is_dir():
        raise UserError(f"{checkpoint}: checkpoint directory not found")
    key = read_api_key(api_key_file)
    limits = Limits(max_body_bytes=max_body_bytes, header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                    max_connections=max_connections)
    serve(checkpoint, host=host, port=port, model_name=model_name, max_batch=max_batch, device=device,
          api_key=key, no_auth=no_auth, limits=limits)


@app.command("generate")
def generate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a model directory (model.safetensors + config.json + tokenizer.json)"),
    prompt: list[str] = typer.Option(..., "--prompt", help="prompt text; repeat for a left-padded batch"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy"),
    top_k: Optional[int] = typer.Option(None, "--top-k", min=1),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0),
    stop: list[str] = typer.Option([], "--stop", help="stop sequence (repeatable); output is cut before it"),
    seed: Optional[int] = typer.Option(None, "--seed"),
):
    """Complete prompts with a checkpoint (KV-cache decoding); prints prompt + completion."""
    from model.generation import generate
    from model.io import load_pretrained

    model, _, tok = load_pretrained(local_only(checkpoint, "--checkpoint"))
    if tok is None:
        raise UserError(f"{checkpoint}: tokenizer.json is missing")
    try:
        outs = generate(model, tok, list(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, stop=stop, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    for p, o in zip(prompt, outs):
        print(p + o)


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a model directory (model.safetensors + config.json + tokenizer.json)"),
    format: str = typer.Option("hf", "--format", help="hf: a Hugging Face transformers folder (remote code)"),
    out: Path = typer.Option(..., "--out", help="the folder to write"),
):
    """Export a checkpoint for other tools: `--format hf` writes a folder that transformers'
    AutoModelForCausalLM (trust_remote_code=True) and AutoTokenizer load, chat template included."""
    if format != "hf":
        raise UserError(f"--format: expected hf, got {format!r}")
    from model.hf_export import export_hf

    folder = export_hf(local_only(checkpoint, "--checkpoint"), out_dir(out))
    print(f"{folder}: AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True)")


@bench_app.command("attention")
def bench_attention_cmd(
    contexts: str = typer.Option("1024,4096,16384,32768", "--contexts", help="comma-separated context lengths"),
    batches: str = typer.Option("1,8", "--batches", help="comma-separated batch sizes"),
    layers: int = typer.Option(2, "--layers", min=1, help="attention layers timed per decode step"),
    hidden: int = typer.Option(2048, "--hidden", min=512, help="hidden size, a multiple of 512 (head width 64, n_q = hidden/64)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16"),
    train_seq: int = typer.Option(256, "--train-seq", min=16, help="sequence length of the prefill/training timing"),
    repeats: int = typer.Option(0, "--repeats", min=0, help="timed rounds per point (0 = auto)"),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads (1 is steadiest on a shared machine)"),
    out: Path = typer.Option(Path("runs/bench/attention"), "--out", help="folder for the PNG and JSON results"),
):
    """DiffQKV (4 K / 16 V heads) vs GQA (16/16): KV bytes/token, decode latency vs context, prefill and
    training-step time, printed side by side with the paper's targets; writes a latency PNG."""
    bench_attention = load_benchmark("bench_attention")
    out_dir(out)

    def ints(s: str, what: str) -> list[int]:
        try:
            vals = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--{what}: expected comma-separated integers, got {s!r}") from None
        if not vals or min(vals) < 1:
            raise UserError(f"--{what}: expected positive integers, got {s!r}")
        return vals

    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"--dtype: expected float32 or bfloat16, got {dtype!r}")
    if hidden % 512:
        raise UserError(f"--hidden: must be a multiple of 512 (n_q = hidden/64 divisible by 8), got {hidden}")
    bench_attention.run(contexts=ints(contexts, "contexts"), batches=ints(batches, "batches"), layers=layers,
                        hidden=hidden, dtype=dtype, train_seq=train_seq, repeats=repeats, out_dir=out,
                        threads=threads)


@app.command("eval")
def eval_cmd(
    target: str = typer.Argument(..., help="an eval recipe (recipes/eval/*.yaml), or `cmdgen` to evaluate one checkpoint on a task file"),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="cmdgen: CMDGen-mini task file (JSONL)"),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="cmdgen: model directory (model.safetensors + config.json + tokenizer.json)"),
    out: Optional[Path] = typer.Option(None, "--out", help="cmdgen: output directory (default runs/eval/cmdgen)"),
    threshold: float = typer.Option(0.8, "--threshold", help="cmdgen: Calibration threshold on CMD/Output score"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    no_execute: bool = typer.Option(False, "--no-execute", help="cmdgen: score commands without running them"),
    reference_only: Optional[Path] = typer.Option(None, "--reference-only", help="cmdgen: no model; run every reference command in the sandbox and write this JSON (the executable share)"),
):
    """Evaluate: `minisigma eval RECIPE` (perplexity + CMDGen-mini per the recipe) or
    `minisigma eval cmdgen --tasks FILE.jsonl --checkpoint DIR [--out DIR]` or
    `minisigma eval cmdgen --tasks FILE.jsonl --reference-only OUT.json`."""
    if target == "cmdgen":
        from model.evaluation import cmdgen

        for path, option in ((tasks, "--tasks"), (checkpoint, "--checkpoint")):
            if path is not None:
                local_only(path, option)

        if reference_only is not None:
            if tasks is None or checkpoint is not None or no_execute:
                raise UserError("eval cmdgen --reference-only needs --tasks FILE.jsonl (and no --checkpoint/--no-execute)")
            r = cmdgen.check_references(tasks, out_file(reference_only, "--reference-only"), show_progress=True)
            o = r["overall"]
            print(f"{o['executable']}/{o['tasks']} tasks have a reference that runs with status ok "
                  f"(executable share {o['executable_share']}) -> {reference_only}")
            for suite, b in r["per_suite"].items():
                kind = "executed" if r["families"][suite]["executed"] else "textual only"
                print(f"  {suite} ({kind}): {b['executable']}/{b['tasks']}; dropped: {b['dropped']}")
            f = r["executable_families"]
            print(f"executed families {', '.join(f['suites']) or '-'}: {f['executable']}/{f['tasks']} references "
                  f"ran with status ok (share {f['executable_share']})")
            return
        if tasks is None or checkpoint is None:
            raise UserError("eval cmdgen needs --tasks FILE.jsonl and --checkpoint DIR")
        if not checkpoint.is_dir():
            raise UserError(f"{checkpoint}: checkpoint directory not found")
        section = cmdgen.CmdgenSection(tasks=str(tasks), threshold=threshold, max_new_tokens=max_new_tokens,
                                       execute=not no_execute)
        dest = out_dir(out or Path("runs/eval/cmdgen"))
        s = cmdgen.evaluate_checkpoint(tasks, checkpoint, dest, section, show_progress=True)
        o = s["overall"]
        print(f"{o['tasks']} tasks -> {dest}/results.jsonl, {dest}/summary.json")
        print("  " + "  ".join(f"{m}={'-' if o[m] is None else f'{o[m]:.3f}'}" for m in
                                ("accuracy", "exact_match", "success", "cmd_score", "output_score", "calibration")))
        return
    from model.evaluation import recipe as eval_recipe

    if tasks or checkpoint or out:
        raise UserError("--tasks/--checkpoint/--out belong to `minisigma eval cmdgen`; a recipe names its own")
    summary = eval_recipe.run(target)
    for name, entry in summary["models"].items():
        parts = [name]
        if "perplexity" in entry:
            parts.append(f"bpb={entry['perplexity']['bpb']}")
        if "cmdgen" in entry:
            parts.append(f"cmdgen accuracy={entry['cmdgen']['accuracy']}")
        print("  ".join(parts))


@app.command("tokenize")
def tokenize_cmd(
    recipe: Path = typer.Argument(..., help="a training recipe (recipes/train/*.yaml): its tokenizer: and data: sections"),
    in_dir: str = typer.Option(..., "--in", help="curated shards (NNNNN.jsonl.gz): a folder or its URL"),
    out: Path = typer.Option(..., "--out", help="output folder: tokenizer.json, train.bin, val.bin, manifest.json"),
):
    """Train the byte-level BPE tokenizer on curated shards, then pack them into train.bin/val.bin."""
    from minisigma.core import storage
    from model import data, train

    r = train.load_train_recipe(recipe)
    source = in_dir if storage.is_url(in_dir) else Path(in_dir)  # shards are read through storage
    if not storage.isdir(source):
        raise UserError(f"{in_dir}: --in is not a directory")
    out_dir(out)
    m = data.tokenize(r.tokenizer, r.data, source, out)
    print(f"vocab {m['vocab_size']}  train {m['train_tokens']:,} tokens  val {m['val_tokens']:,} tokens -> {out}")
    for src, s in m["sources"].items():
        print(f"  {src}: {s['docs']} docs, weight {s['weight']}, train {s['train_tokens']:,} ({s['train_share']:.1%}), "
              f"val {s['val_tokens']:,}")


@app.command("train")
def train_cmd(
    recipe: Path = typer.Argument(..., help="a training recipe (recipes/train/*.yaml): pretrain or sft"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint in OUT_DIR/ckpt (model, optimizer, schedule, data position)"),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help="stop cleanly after this optimizer step (resume later with --resume)"),
):
    """Pretrain or fine-tune per the recipe (Lightning; CPU or GPU, single device, DDP or FSDP)."""
    from model import train

    s = train.main(recipe, resume=resume, stop_after=stop_after)
    if s is not None and s.get("val_loss") is not None:
        print(f"step {s['global_step']}/{s['max_steps']}  val_loss {s['val_loss']:.4f}  "
              f"{s['seconds']:.0f}s" + (f"  -> {s['export']}" if s.get("export") else ""))


@app.command("ablate")
def ablate_cmd(
    recipe: Path = typer.Argument(..., help="an ablation recipe (recipes/ablations/*.yaml)"),
    quick: bool = typer.Option(False, "--quick", help="use the recipe's quick budget (fewer steps and seeds)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the recipe's out_dir)"),
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="token folder to train and evaluate on instead of the base recipe's"),
    store: Optional[str] = typer.Option(None, "--store", help="also keep the table and every run's score as "
                                        "benchmarks/results/NAME.json, with the machine and command (the README's figures)"),
):
    """Train every variant x seed of an ablation with equal budgets; write a table (mean, spread) and a plot."""
    from model import ablations

    name = _result_name("--store", store) if store is not None else None  # refused before hours of training
    common = load_benchmark("common") if name else None
    started = common.machine() if common else None
    res = ablations.main(recipe, quick=quick, out_dir=out_dir(out) if out is not None else None,
                         tokens_dir=local_only(tokens, "--tokens") if tokens is not None else None)
    print(res["table_md"])
    if common:
        common.write_result(name, {"recipe": str(recipe), "quick": quick, "table": res["table"],
                                   "table_md": res["table_md"], "runs": res["results"]},
                            ("torch", "lightning"), started)


@bench_app.command("train")
def bench_train_cmd(
    steps: int = typer.Option(4, "--steps", min=1, help="timed optimizer steps per model and round"),
    batch: int = typer.Option(4, "--batch", min=1),
    seq_len: int = typer.Option(256, "--seq-len", min=8),
    rounds: int = typer.Option(3, "--rounds", min=1, help="alternating rounds (mini, gqa, mini, gqa, ...)"),
    models: str = typer.Option("mini,gqa", "--models",
                               help="two model presets, DiffQKV then its baseline (small,small-gqa: the mini reproduction's)"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the models, as the training recipes do"),
    name: str = typer.Option("train", "--name", help="the result's name: benchmarks/results/NAME.json"),
    busy_neighbour: bool = typer.Option(False, "--neighbour", help="time the rounds beside one busy process "
                                        "(a machine whose cores are not all training's); OMP_* settings are recorded"),
):
    """Training tokens/s and MFU of a DiffQKV preset vs its GQA baseline (default: `mini` vs `gqa`), in float32
    and bf16 (where native), against the matmul peak measured here; writes benchmarks/results/NAME.json.
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 runs the kernels as on a CPU without AVX-512."""
    from model.gpt import PRESETS

    pair = tuple(m.strip() for m in models.split(","))
    if len(pair) != 2 or not all(m in PRESETS for m in pair):
        raise UserError(f"--models: {models}: two of the presets {', '.join(sorted(PRESETS))}, separated by a comma")
    load_benchmark("bench_train").run(steps=steps, batch=batch, seq_len=seq_len, rounds=rounds, models=pair,
                                      compile=compile, name=_result_name("--name", name),
                                      busy_neighbour=busy_neighbour)


def _result_name(option: str, name: str) -> str:
    """A benchmark result's name (it becomes benchmarks/results/NAME.json)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"{option}: {name}: letters, digits, '.', '_' and '-' only (it names a file)")
    return name


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory (stage manifests, training logs, eval results)"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default RUN_DIR/report/index.html)"),
    screenshot: Optional[Path] = typer.Option(None, "--screenshot", help="also save a PNG of the page (headless Chromium)"),
):
    """Write a static HTML report with plots: data funnel, mixes, quality scores, loss curves,
    evaluation tables, attention efficiency and the ablation table next to the paper's numbers."""
    from minisigma import report

    if screenshot is not None:
        out_file(screenshot, "--screenshot")
    path = report.build(local_only(run_dir, "RUN_DIR"), out_file(out) if out is not None else None)
    print(path)
    if screenshot is not None:
        print(report.screenshot(path, screenshot, height=5600))


@app.command("seeds")
def seeds_cmd(
    runs: list[Path] = typer.Argument(..., help="finished reproductions of one recipe, one per seed (minisigma reproduce --seed N --out DIR)"),
    out: Path = typer.Option(..., "--out", help="JSON file to write (e.g. benchmarks/results/seeds.json)"),
):
    """Compare a reproduction's questions across seeds: each run's numbers, mean and std, and a
    paired t-test of the per-seed differences."""
    from minisigma import seeds

    result = seeds.write([local_only(r, "RUNS") for r in runs], out_file(out),
                         command=" ".join(["minisigma", *sys.argv[1:]]))
    for q in result["questions"]:
        print(q["title"])
        for row in q["runs"]:
            cells = [f"seed {row['seed']}"]
            for m in seeds.METRICS:
                if row["sigma"][m] is not None and row["baseline"][m] is not None:
                    cells.append(f"{m} {row['sigma'][m]:.4f} / {row['baseline'][m]:.4f}")
            if "paired" in row:
                cells.append(f"only {row['paired']['sigma_only']} / {row['paired']['baseline_only']}, "
                             f"McNemar p {row['paired']['mcnemar_p']:.3g}")
            print("  " + "  ".join(cells))
        for m, s in q["summary"].items():
            d = s["difference"]
            test = f", t = {d['t']}, p = {d['p']}" if d["t"] is not None else ""
            print(f"  {m}: difference {d['mean']:+.4f} ± {d['std'] if d['std'] is not None else '-'} over {d['n']} seeds{test}")
    print(out)


@bench_app.command("curation")
def bench_curation(
    src: Path = typer.Argument(..., help="a crawl directory (NNNNN.warc.gz, e.g. runs/tiny/crawl) or a folder of HTML files"),
    limit: int = typer.Option(400, min=0, help="pages to use, spread over the input (0 = all)"),
    rounds: int = typer.Option(3, min=1, help="alternating timed rounds per side (A B A B ...)"),
    shards: int = typer.Option(4, min=1, help="WARC shards the pages are dealt into"),
    peer: bool = typer.Option(True, help="also time datatrove (same trafilatura settings, fast=True and fast=False)"),
    scaling: bool = typer.Option(False, help="also time the Ray stage with 1 and 2 workers (alternating rounds; an idle machine only)"),
    name: str = typer.Option("curation", "--name", help="the result's name: benchmarks/results/NAME.json"),
):
    """Extraction pages/s per core vs datatrove with the same trafilatura settings: pages kept, identical
    texts, ratios; writes benchmarks/results/NAME.json."""
    if not local_only(src, "SRC").is_dir():
        raise UserError(f"{src}: not a directory")
    load_benchmark("bench_curation").run(src, limit or None, rounds, shards, peer=peer, scaling=scaling,
                                         name=_result_name("--name", name))


# --------------------------------------------------------------------------- refine (curation.refine)
classifier_app = typer.Typer(no_args_is_help=True, help="Train the fastText quality and category classifiers.")
app.add_typer(classifier_app, name="classifier")


@app.command("refine")
def refine_cmd(
    recipe: Path = typer.Argument(..., help="a curation recipe with a refine section (defaults when absent)"),
    run: str = typer.Option(..., "--run", help="a run directory with extract/ and/or sources/*/ shards: a local path "
                                                "or a URL such as s3://bucket/runs/t"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS", help="join this Ray cluster"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
):
    """Refine a run: normalize, heuristics, langid, exact dedup, classify, MinHash dedup, decontam -> <run>/curated."""
    from curation.refine.pipeline import load_refine_config, load_shard_format, load_storage_options, refine
    from minisigma.core import manifest, storage

    c = load_refine_config(recipe)
    storage.set_options(load_storage_options(recipe))
    where = location(run, "--run")
    local = refine(where, c, ray_address=ray_address, progress=not quiet, shard_format=load_shard_format(recipe))
    manifest.show(where if isinstance(where, str) else local.parent)


@classifier_app.command("train")
def classifier_train_cmd(
    recipe: Path = typer.Argument(..., help="a curation recipe (refine.classifiers section)"),
    run: str = typer.Option(..., "--run", help="the run whose documents train the classifiers: a local path or a URL"),
    docs: Optional[str] = typer.Option(None, "--docs", help="a stage directory (or its URL) to train on "
                                                          "(default: refine/dedup_exact)"),
):
    """Train the quality and category classifiers into <run>/classifiers/ and print held-out P/R/F1."""
    import json

    from curation.refine.pipeline import load_refine_config, load_storage_options, train_classifiers
    from minisigma.core import storage

    c = load_refine_config(recipe)
    storage.set_options(load_storage_options(recipe))
    where = location(run, "--run")
    docs_dir = None if docs is None else docs if storage.is_url(docs) else Path(docs)
    info = train_classifiers(where, c, docs_dir)
    for name, i in info.items():
        print(name, json.dumps({"heldout": i["heldout"]["macro"], "accuracy": i["heldout"]["accuracy"],
                                "training_data": i["training_data"]}))


@bench_app.command("dedup")
def bench_dedup_cmd(
    docs: int = typer.Option(3000, min=1, help="base documents of the quality corpus (variants are added)"),
    scale_docs: int = typer.Option(3000, min=1, help="documents of the 1x corpus for the memory check (10x is also run)"),
    executor: str = typer.Option("ray", help="ray or local"),
):
    """MinHash dedup quality vs brute-force exact Jaccard, and clustering memory at 1x vs 10x corpus size."""
    if executor not in ("ray", "local"):
        raise UserError(f"--executor: expected ray or local, got {executor!r}")
    load_benchmark("bench_dedup").run(docs, scale_docs, executor)


@bench_app.command("minhash")
def bench_minhash_cmd(
    docs: int = typer.Option(2000, min=1, help="man-page documents to sign"),
    rounds: int = typer.Option(5, min=1, help="alternating timed rounds per side (A B A B ...)"),
    peer: bool = typer.Option(True, help="also time datatrove (in its own venv: datatrove's pin xxhash<4)"),
    name: str = typer.Option("minhash", "--name", help="the result's name: benchmarks/results/NAME.json"),
):
    """MinHash signatures/s per core: ours vs datasketch update_batch on the same shingle hashes, and vs
    datatrove with a matched tokenizer; prints settings, agreement, ratios; writes benchmarks/results/NAME.json."""
    load_benchmark("bench_minhash").run(docs, rounds, peer=peer, name=_result_name("--name", name))


def main() -> None:
    """Console entry point (expected failures become one line and exit code 2 in `_Commands.invoke`)."""
    app()


if __name__ == "__main__":
    main()
