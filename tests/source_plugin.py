"""A source type added from outside curation/: one module, one registration."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from minisigma.core.document import Document
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task

from curation.sources.registry import register_source, stage_runner


class ParagraphsSource(Section):
    type: Literal["paragraphs"] = "paragraphs"
    name: str = "paragraphs"
    path: str  # a text file: one document per blank-line separated paragraph


class ParagraphsStage(Stage):
    name = "paragraphs"

    def tasks(self, inputs) -> list[Task]:
        return [Task(0, (self.config.path,))]

    def process(self, task: Task, sink: Sink) -> None:
        text = Path(task.inputs[0]).read_text(encoding="utf-8")
        for i, para in enumerate(p.strip() for p in text.split("\n\n")):
            sink.take()
            if para:
                sink.write(Document.create(self.config.name, f"{task.inputs[0]}#{i}", para).to_dict())
            else:
                sink.drop(None, "empty")


register_source(ParagraphsSource, stage_runner(ParagraphsStage))
