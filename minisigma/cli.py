"""The `minisigma` command line.

Each command is a thin shell: it parses arguments, then imports the module that does the work
lazily (so `minisigma --help` stays fast and a torch-free command never loads torch).
Errors a user can fix (bad recipe, missing file) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from minisigma.errors import UserError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.splitlines()[0])
manifest_app = typer.Typer(no_args_is_help=True, help="Inspect, verify and compare run manifests.")
bench_app = typer.Typer(no_args_is_help=True, help="Side-by-side performance benchmarks.")
app.add_typer(manifest_app, name="manifest")
app.add_typer(bench_app, name="bench")


# --------------------------------------------------------------------------- curation
@app.command("curate")
def curate_cmd(
    recipe: Path = typer.Argument(..., help="a curation recipe, e.g. recipes/curation/default.yaml"),
    out: Path = typer.Option(..., "--out", help="the run directory to write (re-running resumes it)"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                              help="join this Ray cluster ('auto' for a local `ray start`)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
):
    """Run a curation recipe: sources -> crawl (WARC) -> extract -> refine, with a manifest per stage."""
    from curation import pipeline, recipe as curation_recipe
    from minisigma import manifest

    r = curation_recipe.load(recipe)
    run_dir = pipeline.curate(r, out, ray_address=ray_address, progress=not quiet)
    manifest.show(run_dir)


# --------------------------------------------------------------------------- manifests
@manifest_app.command("show")
def manifest_show(run_dir: Path = typer.Argument(..., help="a run directory (or one stage's directory)")):
    """Print a table of every stage of a run: documents and bytes in/out, drops by reason."""
    from minisigma import manifest

    manifest.show(run_dir)


@manifest_app.command("verify")
def manifest_verify(run_dir: Path = typer.Argument(..., help="a run directory (or one stage's directory)")):
    """Re-hash every shard and check in = out + dropped + quarantined; exit 1 on any mismatch."""
    from minisigma import manifest

    problems = manifest.verify(run_dir)
    if problems:
        raise typer.Exit(1)


@manifest_app.command("diff")
def manifest_diff(
    run_dir: Path = typer.Argument(..., help="your run directory"),
    reference: Path = typer.Argument(..., help="a reference run, e.g. manifests/reference/mini"),
    tolerance: float = typer.Option(0.10, help="relative difference reported as a finding"),
):
    """Compare the per-stage counts of a run with a reference run; exit 1 when they differ beyond the tolerance."""
    from minisigma import manifest

    if manifest.diff(run_dir, reference, rel_tol=tolerance):
        raise typer.Exit(1)


# --------------------------------------------------------------------------- synth
@app.command("synth")
def synth_cmd(
    recipe: Path = typer.Argument(..., help="a synth recipe (recipes/synth/*.yaml)"),
    in_dir: Path = typer.Option(..., "--in", help="curated shards (NNNNN.jsonl.gz)"),
    out_dir: Path = typer.Option(..., "--out", help="run directory for the synth stages"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="join this Ray cluster"),
):
    """Make instruction pairs, Q&A pairs and rewrites from curated documents, screened, with manifests."""
    from synth.pipeline import run_synth

    run_synth(recipe, in_dir, out_dir, ray_address=ray_address)


@app.command("serve")
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a model directory (model.safetensors + config.json)"),
    port: int = typer.Option(8000, "--port", help="TCP port (0 = any free port)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="model id reported by /v1/models"),
    max_batch: int = typer.Option(8, "--max-batch", help="largest batch of concurrent requests"),
):
    """Serve a checkpoint over an OpenAI-compatible HTTP API (chat/completions, streaming)."""
    from synth.server import serve

    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: checkpoint directory not found")
    serve(checkpoint, host=host, port=port, model_name=model_name, max_batch=max_batch)


def main() -> None:
    """Console entry point: turns a UserError anywhere into one line and exit code 2."""
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
