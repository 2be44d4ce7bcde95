"""Where the project's own files are: the checkout's root (recipes/, manifests/, benchmarks/)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
MANIFESTS = REPO_ROOT / "manifests"

# Not a stage's outputs: dropped documents, commit markers, the report itself, checkpoints and logs.
NOT_OUTPUTS = {"rejects", ".parts", "report", "ckpt", "tb"}


def find(run: Path, pattern: str) -> list[Path]:
    """The files matching `pattern` anywhere under a run directory (sorted), outside NOT_OUTPUTS:
    how a stage's reader finds the files its stage wrote, wherever the run put that stage."""
    run = Path(run)
    return sorted(p for p in run.rglob(pattern) if not NOT_OUTPUTS.intersection(p.relative_to(run).parts[:-1]))


def rel(run: Path, p: Path) -> str:
    """`p` relative to the run directory, for labels ("." for the run itself)."""
    try:
        return str(Path(p).relative_to(run)) or "."
    except ValueError:
        return str(p)
