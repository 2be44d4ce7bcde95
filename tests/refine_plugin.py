"""A refine stage added from outside the pipeline: one class and one registration."""

from __future__ import annotations

from minisigma.core.document import Document
from minisigma.core.filters import Filter
from minisigma.core.recipes import Section

from curation.refine.registry import RefineStep, register


class DropMentionsConfig(Section):
    word: str = "forbidden"  # documents whose text contains this word are dropped


@register
class DropMentions(Filter, RefineStep):
    name = "drop_mentions"
    Config = DropMentionsConfig

    def decide(self, doc: Document) -> str | None:
        if self.config.word in doc.text:
            return f"mentions_{self.config.word}"
        self.stat("checked")
        return None
