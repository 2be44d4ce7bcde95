"""The source types a curation recipe can name (`sources: [{type: NAME, ...}]`), each registered by its
own module with `register_source`, so adding a source is one module and nothing else.

A source type is its recipe section (a pydantic `Section` whose `type` field is the name) and how
`minisigma curate` runs it: `run(section, ctx)` runs the source's stages into the run directory and
returns the crawl sites it wants the shared crawl and extract stages to visit (most return none).
`stage_runner(StageClass)` is the usual `run`: the source's one stage into <run>/sources/<name>/,
or, with a `fulltext:` section, into <run>/harvest/<name>/ and then the full-text stage (the polite
crawler to each record's PDF or HTML) into <run>/sources/<name>/.

`load_builtin()` imports every module of this package, which registers the built-in sources.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import curation.sources as package
from curation.sources.fulltext import FullText
from minisigma.core.recipes import Section
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards


@dataclass
class RunContext:
    """What a source needs from the run it is part of (made by `curation.pipeline.curate`)."""

    run_dir: Path
    ray_address: str | None = None
    executor: str = "ray"
    progress: bool = True
    doc_suffix: str = ".jsonl.gz"  # the recipe's shard_format
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # servers living for the crawl

    def docs(self, stage):
        """A stage that writes Documents, set to write them in the recipe's shard format."""
        stage.output_suffix = self.doc_suffix
        return stage

    def run(self, stage, inputs, out_dir, recipe_section=None, extra=None) -> dict:
        return run_stage(stage, inputs, out_dir, ray_address=self.ray_address, executor=self.executor,
                         recipe_section=recipe_section, progress=self.progress, extra=extra)


@dataclass(frozen=True)
class SourceType:
    name: str
    section: type[Section]
    run: Callable[[Section, RunContext], list[dict]]


SOURCES: dict[str, SourceType] = {}


def register_source(section: type[Section], run: Callable[[Section, RunContext], list[dict]]) -> None:
    """Make a source type known under the default of its section's `type` field."""
    name = section.model_fields["type"].default
    if name in SOURCES and SOURCES[name].section is not section:
        raise ValueError(f"source type {name!r} is registered already ({SOURCES[name].section.__module__})")
    SOURCES[name] = SourceType(name, section, run)


def stage_runner(stage_cls) -> Callable[[Section, RunContext], list[dict]]:
    """The run of a source that is one stage writing Documents (plus the full-text stage if asked)."""

    def run(src: Section, ctx: RunContext) -> list[dict]:
        section = src.model_dump(mode="json", by_alias=True)
        fulltext = getattr(src, "fulltext", None)
        out = ctx.run_dir / ("harvest" if fulltext is not None else "sources") / src.name
        ctx.run(ctx.docs(stage_cls(src)), [], out, recipe_section=section)
        if fulltext is not None:
            ctx.run(ctx.docs(FullText(fulltext, src.type)), list_shards(out), ctx.run_dir / "sources" / src.name,
                    recipe_section=section)
        return []

    return run


def load_builtin() -> dict[str, SourceType]:
    """Import every module of curation.sources (each built-in source registers itself on import)."""
    for mod in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{mod.name}")
    return SOURCES


__all__ = ["RunContext", "SourceType", "SOURCES", "register_source", "stage_runner", "load_builtin"]
