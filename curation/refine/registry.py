"""The refine stages the pipeline knows, by name: the built-in ones and any a user registers.

A refine stage is one class with a `name`, a recipe section class `Config` and a way to run over a
list of input shards into a directory (`run_step`). Most stages are runner stages (often a
`minisigma.core.filters.Filter`) and need nothing more: the default `run_step` runs the class over the
shards. Stages that plan their own work (the dedup groups, classify with its threshold) override
`run_step`. The built-in order is `curation.refine.config.BUILTIN`; `register` adds another stage,
which a recipe then names in `refine.stages` and configures under `refine.<name>`:

    @register
    class DropShort(Filter, RefineStep):
        name = "drop_short"
        Config = DropShortConfig
        def decide(self, doc: Document): return "too_short" if len(doc.text) < self.config.min_chars else None
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from minisigma.core.recipes import Section
from minisigma.core.runner import run_stage


@dataclass
class RefineContext:
    """What a refine stage may need beyond its own section: the run, the whole refine section, the executor."""

    run_dir: Path
    refine: Any  # the RefineConfig (classify reads `classifiers` from it)
    stage_kw: dict = field(default_factory=dict)  # executor, ray_address, progress for run_stage
    doc_suffix: str = ".jsonl.gz"  # the recipe's shard_format: .jsonl.gz or .parquet

    def docs(self, stage):
        """A stage writing the run's documents, set to write them in the recipe's shard format."""
        stage.output_suffix = self.doc_suffix
        return stage


class RefineStep:
    """Mixin of every refine stage: its name, its recipe section and how the pipeline runs it."""

    name: ClassVar[str]
    Config: ClassVar[type[Section]]

    @classmethod
    def run_step(cls, config: Section, inputs: list[Path], dest: Path, ctx: RefineContext) -> None:
        run_stage(ctx.docs(cls(config)), inputs, dest, **ctx.stage_kw)


REGISTRY: dict[str, type[RefineStep]] = {}


def register(cls: type[RefineStep]) -> type[RefineStep]:
    """Make a refine stage known by its name (a class decorator); a second class with a taken name fails."""
    name = cls.name
    if REGISTRY.get(name, cls) is not cls:
        raise ValueError(f"refine stage {name!r} is registered already ({REGISTRY[name].__module__})")
    REGISTRY[name] = cls
    return cls


__all__ = ["RefineContext", "RefineStep", "REGISTRY", "register"]
