"""The `datatrove` source: any datatrove reader, configured in the recipe, feeds the pipeline.

    sources:
      - type: datatrove
        name: fineweb-sample                 # -> <run>/sources/fineweb-sample/
        reader: datatrove.pipeline.readers.ParquetReader
        kwargs: {data_folder: data/fineweb, glob_pattern: "*.parquet", text_key: text}
        tasks: 4                             # Ray tasks = datatrove ranks (world_size)

`reader` is the import path of a class that subclasses datatrove's `BaseReader` (JsonlReader,
ParquetReader, CSVReader, IpcReader, WarcReader, HuggingFaceDatasetReader, or your own); `kwargs` are its
constructor's arguments as datatrove documents them (`data_folder` may be any fsspec URL datatrove
reads). Task i runs `reader.run(rank=i, world_size=tasks)`, so datatrove splits the files among the
tasks exactly as its own executors would.

Each datatrove Document becomes one minisigma Document: `id` and `metadata` are datatrove's, kept
as they are; `text` is its text; `source` is the section's `source` (default: its `name`); `url`
is `metadata["url"]` when datatrove has one, else the locator `datatrove://<name>/<id>`.
datatrove's file readers add `metadata.file_path` (the input file's full path); JsonlReader takes
`add_file_path: false` where the run's documents should not depend on where the input lies. A
document datatrove yields without text (readers skip those themselves) is quarantined
`no_text`. Media (datatrove's images/audio) is not carried: minisigma documents are text.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import Field, field_validator

from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from curation.sources.registry import register_source, stage_runner


class DatatroveSource(Section):
    """Recipe section of the datatrove source."""

    type: Literal["datatrove"] = "datatrove"
    name: str = "datatrove"
    reader: str  # e.g. datatrove.pipeline.readers.JsonlReader
    kwargs: dict[str, Any] = Field(default_factory=dict)
    tasks: int = Field(1, ge=1, le=100_000)
    source: str | None = None  # Document.source (default: name)

    @field_validator("reader")
    @classmethod
    def _importable_reader(cls, v: str) -> str:
        reader_class(v)
        return v


def reader_class(path: str):
    """The datatrove reader class at an import path (a ValueError names what is wrong)."""
    from datatrove.pipeline.readers.base import BaseReader  # here: datatrove is heavy, only this source needs it

    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"expected a class path such as datatrove.pipeline.readers.JsonlReader, got {path!r}")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {path} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseReader)):
        raise ValueError(f"{path} is not a datatrove reader (a subclass of datatrove's BaseReader)")
    return cls


def build_reader(src: DatatroveSource):
    try:
        return reader_class(src.reader)(**src.kwargs)
    except (TypeError, ValueError, OSError) as e:
        raise UserError(f"sources.{src.name}: {src.reader}(**kwargs): {e}") from None


def from_datatrove(doc, source: str, name: str) -> dict:
    """A datatrove Document -> a minisigma Document (id and metadata kept)."""
    meta = dict(doc.metadata or {})
    url = meta.get("url") if isinstance(meta.get("url"), str) else f"datatrove://{name}/{doc.id}"
    return {"id": str(doc.id), "text": doc.text, "source": source, "url": url, "metadata": meta}


class DatatroveStage(Stage):
    name = "datatrove"

    def __init__(self, config: DatatroveSource):
        super().__init__(config)

    def tasks(self, inputs) -> list[Task]:
        c = self.config
        build_reader(c)  # bad kwargs fail here, once, as one line; not in every Ray task
        return [Task(i, (f"datatrove:{c.reader}?rank={i}&world_size={c.tasks}",)) for i in range(c.tasks)]

    def process(self, task: Task, sink: Sink) -> None:
        c = self.config
        source = c.source or c.name
        for doc in build_reader(c).run(rank=task.index, world_size=c.tasks):
            d = from_datatrove(doc, source, c.name)
            sink.take(d)
            if isinstance(d["text"], str) and d["text"]:
                sink.write(d)
            else:
                sink.quarantine(d, "no_text")


register_source(DatatroveSource, stage_runner(DatatroveStage))
