"""A small real stage for runner tests: keeps documents whose text has >= min_words words."""

from __future__ import annotations

import os
import time

from minisigma.core.runner import Stage, Task
from minisigma.core.shards import read_docs


class MinWords(Stage):
    name = "minwords"

    def __init__(self, min_words: int = 3, slow: float = 0.0, marker_dir: str | None = None):
        super().__init__({"min_words": min_words, "slow": slow})
        self.marker_dir = marker_dir  # tests find the worker running a shard through these files

    def process(self, task: Task, sink) -> None:
        if self.marker_dir:
            node = "local"
            try:
                import ray

                if ray.is_initialized():
                    node = ray.get_runtime_context().get_node_id()[:12]
            except ImportError:
                pass
            open(os.path.join(self.marker_dir, f"start.{task.index}.{os.getpid()}.{node}"), "w").close()
        for doc in read_docs(task.inputs[0]):
            sink.take(doc)
            if not isinstance(doc.get("text"), str):
                sink.quarantine(doc, "no_text")
            elif len(doc["text"].split()) < self.config["min_words"]:
                sink.drop(doc, "too_short")
            else:
                sink.write({**doc, "metadata": {**doc.get("metadata", {}), "words": len(doc["text"].split())}})
            if self.config["slow"]:
                time.sleep(self.config["slow"])
