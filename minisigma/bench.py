"""The benchmark scripts of benchmarks/ (a folder next to the packages, not installed), loaded by path."""

from __future__ import annotations

import importlib.util

from minisigma.core.errors import UserError
from minisigma.core.paths import REPO_ROOT


def load_benchmark(name: str):
    """The module benchmarks/<name>.py; a one-line error outside a source checkout."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise UserError(f"{path}: benchmark script not found (run from a source checkout)")
    spec = importlib.util.spec_from_file_location(f"benchmarks.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
