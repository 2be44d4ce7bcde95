"""`Filter`: a stage that decides about one document at a time.

A filter implements one decision, `decide(doc)`: return None to keep the document (it may have
changed it in place: text, metadata, scores), or a reason string to drop it. The base writes the
loop once: it reads the task's input shard, counts every document in, quarantines documents without
a text string ("no_text"), writes the kept ones, and puts the dropped ones in rejects/ with their
reason. `self.stat(key)` counts something about the documents into the manifest's stats.
"""

from __future__ import annotations

from abc import abstractmethod

from minisigma.core.runner import Sink, Stage, Task, text_docs


class Filter(Stage):
    """Base of the document-at-a-time stages (normalize, heuristics, langid, classify, decontam ...)."""

    _sink: Sink | None = None

    def process(self, task: Task, sink: Sink) -> None:
        self._sink = sink
        try:
            for doc in text_docs(task.inputs[0], sink):
                reason = self.decide(doc)
                if reason is None:
                    sink.write(doc)
                else:
                    sink.drop(doc, reason)
        finally:
            self._sink = None

    def stat(self, key: str, n: int = 1) -> None:
        """Count `n` under `key` in this shard's stats (summed into the stage manifest)."""
        self._sink.stat(key, n)

    @abstractmethod
    def decide(self, doc: dict) -> str | None:
        """Keep `doc` (return None; changing it in place is allowed) or drop it (return the reason)."""


__all__ = ["Filter"]
