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


def main() -> None:
    """Console entry point: turns a UserError anywhere into one line and exit code 2."""
    try:
        app()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
