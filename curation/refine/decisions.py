"""Per-document dedup decisions, shuffled to the input shard they belong to, and the filter stage
that applies them.

A resolution task (exact hash groups, MinHash clusters) writes one record per member of a group
with more than one document to `<decisions>/<shard>/<task>.npy`; the filter task of input shard s
reads only `<decisions>/s/`, so it never sees other shards' decisions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minisigma.core.runner import Stage, Task
from minisigma.core.shards import read_docs

from curation.refine.partitions import gather, make_node

DECISION = np.dtype([("node", "<u8"), ("keeper", "S64"), ("cluster", "<u8"), ("size", "<i4"), ("keep", "?"),
                     ("similarity", "<f4")])
NODE = np.dtype([("node", "<u8"), ("id", "S64"), ("quality", "<f4"), ("length", "<i8")])


def doc_quality(doc: dict) -> float:
    s = (doc.get("metadata") or {}).get("scores") or {}
    q = s.get("quality")
    return float(q) if isinstance(q, (int, float)) else 0.0


def id_bytes(doc: dict) -> bytes:
    return str(doc.get("id", "")).encode("utf-8")[:64]


class DecisionFilter(Stage):
    """Drop every document whose decision says keep=False (with `reason`), annotate group members."""

    def __init__(self, name: str, decisions_dir: str | Path, reason: str, meta_key: str, config=None):
        super().__init__(config)
        self.name = name
        self.decisions_dir = str(decisions_dir)
        self.reason = reason
        self.meta_key = meta_key

    def process(self, task: Task, sink) -> None:
        dec = gather(self.decisions_dir, task.index, DECISION)
        by_node = {int(r["node"]): r for r in dec}
        for row, doc in enumerate(read_docs(task.inputs[0])):
            sink.take(doc)
            r = by_node.get(int(make_node(task.index, row)))
            if r is None:
                sink.write(doc)
                continue
            info = {"cluster": f"{int(r['cluster']):016x}", "size": int(r["size"]), "kept": bool(r["keep"]),
                    "kept_id": r["keeper"].decode("utf-8")}
            if not np.isnan(r["similarity"]):
                info["similarity"] = round(float(r["similarity"]), 4)
            doc.setdefault("metadata", {})[self.meta_key] = info
            if r["keep"]:
                sink.stat("kept_cluster_representatives")
                sink.write(doc)
            else:
                sink.drop(doc, self.reason)
