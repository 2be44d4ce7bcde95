"""A small real stage for runner tests: keeps documents whose text has >= min_words words."""

from __future__ import annotations

import os
import time

from minisigma.runner import Stage, Task
from minisigma.shards import read_docs


class MinWords(Stage):
    name = "minwords"

    def __init__(self, min_words: int = 3, slow: float = 0.0):
        super().__init__({"min_words": min_words, "slow": slow})

    def process(self, task: Task, sink) -> None:
        for doc in read_docs(task.inputs[0]):
            sink.take(doc)
            if not isinstance(doc.get("text"), str):
                sink.quarantine(doc, "no_text")
            elif len(doc["text"].split()) < self.config["min_words"]:
                sink.drop(doc, "too_short")
            else:
                sink.write({**doc, "metadata": {**doc.get("metadata", {}), "words": len(doc["text"].split()),
                                                "pid": 0}})
            if self.config["slow"]:
                time.sleep(self.config["slow"])
        # Write a marker so tests can find which worker ran the shard.
        marker = os.environ.get("MINISIGMA_TEST_MARKER_DIR")
        if marker:
            open(os.path.join(marker, f"{task.index}.{os.getpid()}"), "w").close()
