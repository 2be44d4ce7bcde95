"""Progress display shared by long-running commands (rich, to stderr; silent when disabled)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class StageProgress:
    """A progress bar over a stage's shards, with running document counts."""

    def __init__(self, name: str, total: int, done: int = 0, enabled: bool = True, unit: str = "shards"):
        self.enabled = enabled
        self.name = name
        self.docs_out = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn(unit + " {task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task(name, total=total, completed=done, info="")

    def advance(self, part: dict | None = None, n: int = 1) -> None:
        if part is not None:
            self.docs_out += part.get("counts", {}).get("out", 0)
        self._progress.update(self._task, advance=n, info=f"· {self.docs_out:,} out")

    def __enter__(self) -> "StageProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def log(msg: str) -> None:
    console.print(msg)


def is_tty() -> bool:
    return sys.stderr.isatty()


# Libraries whose deprecation notices and tips are theirs to fix, not the user's to read.
_THIRD_PARTY = r"(lightning|lightning_fabric|pytorch_lightning|torch|ray|transformers|datasets|sentence_transformers|tensorboard)(\.|$)"
_CHATTY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def quiet_third_party() -> None:
    """Keep third-party noise off the user's terminal: deprecation and future warnings raised inside the
    libraries above, and Lightning's INFO lines (accelerator banner, "Tip: try installing ..."). Their
    real warnings (UserWarning and up) and errors still show. Call after importing Lightning: it sets
    its loggers' levels at import."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=_THIRD_PARTY)
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def filtered_stderr(noise: tuple[str, ...]):
    """Run a block with file descriptor 2 captured, then print what it wrote except lines containing one
    of `noise`. For native code that writes notices straight to fd 2 (Ray's core at `ray.init`), where
    neither `warnings` nor `logging` can reach them."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(n in line for n in noise):
                    print(line, file=sys.stderr)
