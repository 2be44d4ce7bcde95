"""`Filter`: a stage that decides about one document at a time.

A filter implements one decision, `decide(doc)`, on a typed `minisigma.core.document.Document`:
return None to keep the document (it may have changed it in place: text, metadata, scores), or a
reason string to drop it. The base writes the loop once: it reads the task's input shard, counts
every document in, quarantines records without a text string ("no_text") and records that are not
Documents (a missing id or source, a key outside `document.FIELDS`: "not_a_document"), converts each
record to a `Document` once, and writes it back: the kept ones to the output shard, the dropped ones
to rejects/ with their reason. `self.stat(key)` counts something about the documents into the
manifest's stats.
"""

from __future__ import annotations

from abc import abstractmethod

from minisigma.core.document import Document
from minisigma.core.runner import Sink, Stage, Task, text_docs


class Filter(Stage):
    """Base of the document-at-a-time stages (normalize, heuristics, langid, classify, decontam ...)."""

    _sink: Sink | None = None
    Config: type | None = None  # the recipe section class; a filter made without a config gets its defaults

    def __init__(self, config=None):
        super().__init__(self.Config() if config is None and self.Config is not None else config)

    def process(self, task: Task, sink: Sink) -> None:
        self._sink = sink
        try:
            for record in text_docs(task.inputs[0], sink):
                try:
                    doc = Document.from_dict(record)
                except ValueError:
                    sink.quarantine(record, "not_a_document")
                    continue
                reason = self.decide(doc)
                if reason is None:
                    sink.write(doc.to_dict())
                else:
                    sink.drop(doc.to_dict(), reason)
        finally:
            self._sink = None

    def stat(self, key: str, n: int = 1) -> None:
        """Count `n` under `key` in this shard's stats (summed into the stage manifest)."""
        self._sink.stat(key, n)

    @abstractmethod
    def decide(self, doc: Document) -> str | None:
        """Keep `doc` (return None; changing it in place is allowed) or drop it (return the reason)."""


__all__ = ["Filter"]
