"""Where the project's own files are: the checkout's root (recipes/, manifests/, benchmarks/)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
MANIFESTS = REPO_ROOT / "manifests"
