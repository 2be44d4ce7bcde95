"""The benchmark scripts of benchmarks/ (a package next to the installed ones, not installed: the peers
they compare against are not needed at run time), imported from the source checkout."""

from __future__ import annotations

import importlib
import sys

from minisigma.core.errors import UserError
from minisigma.core.paths import REPO_ROOT


def load_benchmark(name: str):
    """The module benchmarks/<name>.py; a one-line error outside a source checkout or without a peer."""
    path = REPO_ROOT / "benchmarks" / f"{name}.py"
    if not path.is_file():
        raise UserError(f"{path}: benchmark script not found (run from a source checkout)")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ImportError as e:
        raise UserError(f"{path}: {e} (install the peers: pip install -e '.[bench]')") from None
