"""Progress display shared by long-running commands (rich, to stderr; silent when disabled)."""

from __future__ import annotations

import sys

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
