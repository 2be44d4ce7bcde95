"""MinHash clusters -> one kept document per cluster, decided without gathering any cluster.

Keep rule: highest quality score (metadata.scores.quality), then longest text, then smallest id, then
smallest node id; that is the smallest (-quality, -length, id, node). Picking it is a reduction, so it
is done in three partitioned steps and no task ever holds a whole cluster (a single cluster can be a
large part of a corpus: one chain of near-duplicate pages):

1. `ClusterBest` (one task per components partition p): for every label among p's nodes, the count
   and the best member (attributes read from the signature stage's node tables); one record per
   (label, p), scattered by the label's partition to `best/<q>/<p>.npy`.
2. `ClusterKeepers` (one task per label partition q): per label, the cluster size (sum of counts) and
   the best of the partial bests; sent back to every partition that holds members of the label
   (`keepers/<p>/<q>.npy`). Cluster statistics (count, removed, sizes) are counted here.
3. `ClusterDecisions` (one task per components partition p): every node of p gets its decision
   (cluster, size, keeper, keep), scattered to its input shard (`decisions/<shard>/<p>.npy`) for the
   `DecisionFilter`.

Memory per task: a partition's nodes, or one record per (label, partition) pair.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from curation.refine.decisions import DECISION, NODE
from curation.refine.dedup_exact import tasks_by_partition
from curation.refine.memtrace import traced
from curation.refine.partitions import (
    load_concat,
    node_part,
    node_row,
    node_shard,
    npy_header,
    partition_files,
    scatter,
    sorted_unique,
)
from minisigma.core.runner import Stage, Task

LABEL = np.dtype([("node", "<u8"), ("label", "<u8")])
BEST = np.dtype([("label", "<u8"), ("count", "<i8"), ("node", "<u8"), ("quality", "<f4"), ("length", "<i8"),
                 ("id", "S64"), ("src", "<i8")])
KEEPER = np.dtype([("label", "<u8"), ("size", "<i8"), ("node", "<u8"), ("id", "S64")])


def _by_keep_rule(label, quality, length, ids, node) -> np.ndarray:
    """Order: by label, then best member first."""
    return np.lexsort((node, ids, -length, -quality.astype(np.float64), label))


def _group_starts(sorted_labels: np.ndarray) -> np.ndarray:
    if not len(sorted_labels):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate([[True], sorted_labels[1:] != sorted_labels[:-1]]))


def node_attributes(nodes: np.ndarray, signatures_dir: str) -> np.ndarray:
    """The NODE records (id, quality, length) of `nodes`, read from the signature stage's node tables,
    one table open at a time (memory-mapped past the header, which is checked, not parsed by numpy)."""
    table = np.zeros(len(nodes), dtype=NODE)
    shards, rows = node_shard(nodes), node_row(nodes)
    for s in sorted_unique(shards).tolist():
        path = os.path.join(signatures_dir, f"{s:05d}.npy")
        with open(path, "rb") as f:
            header = npy_header(f)
            offset = f.tell()
        if repr(np.lib.format.dtype_to_descr(NODE)) not in header:
            raise ValueError(f"{path}: not a node table ({header.strip()})")
        n = (os.path.getsize(path) - offset) // NODE.itemsize
        sel = shards == s
        table[sel] = np.memmap(path, dtype=NODE, mode="r", offset=offset, shape=(n,))[rows[sel]]
    return table


def _final_tasks(inputs: list[Path]) -> list[Task]:
    return [Task(int(Path(p).name[:5]), (str(p),)) for p in inputs]


class ClusterBest(Stage):
    name = "minhash_cluster_best"
    output_suffix = ".npy"

    def __init__(self, config, work: str | Path, signatures_dir: str | Path, n_parts: int):
        super().__init__(config)
        self.work, self.signatures_dir, self.n_parts = str(work), str(signatures_dir), n_parts

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return _final_tasks(inputs)

    def process(self, task: Task, sink) -> None:
        with traced() as peak:
            state = load_concat([task.inputs[0]], LABEL)
            sink.take(n=len(state))
            sink.count_out(len(state))
            t = node_attributes(state["node"], self.signatures_dir)
            order = _by_keep_rule(state["label"], t["quality"], t["length"], t["id"], state["node"])
            state, t = state[order], t[order]
            starts = _group_starts(state["label"])
            best = np.zeros(len(starts), dtype=BEST)
            best["label"] = state["label"][starts]
            best["count"] = np.diff(np.append(starts, len(state)))
            best["node"] = state["node"][starts]
            for k in ("quality", "length", "id"):
                best[k] = t[k][starts]
            best["src"] = task.index
            del state, t, order, starts
            scatter(os.path.join(self.work, "best"), task.index, node_part(best["label"], self.n_parts), best,
                    self.n_parts)
            with open(sink.path, "wb") as f:
                np.save(f, best)
        sink.stat("peak_traced_bytes", peak.bytes)


class ClusterKeepers(Stage):
    name = "minhash_cluster_keepers"
    output_suffix = ".npy"

    def __init__(self, config, work: str | Path, n_parts: int):
        super().__init__(config)
        self.work, self.n_parts = str(work), n_parts

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return tasks_by_partition(inputs)

    def process(self, task: Task, sink) -> None:
        with traced() as peak:
            best = load_concat([str(p) for p in task.inputs], BEST)
            sink.take(n=len(best))
            sink.count_out(len(best))
            best = best[_by_keep_rule(best["label"], best["quality"], best["length"], best["id"], best["node"])]
            starts = _group_starts(best["label"])
            group = np.cumsum(np.concatenate([[True], best["label"][1:] != best["label"][:-1]])) - 1 \
                if len(best) else np.zeros(0, dtype=np.int64)
            sizes = np.add.reduceat(best["count"], starts) if len(starts) else np.zeros(0, dtype=np.int64)
            # One keeper record per (label, source partition): every partition that sent a partial best.
            keep = np.zeros(len(best), dtype=KEEPER)
            keep["label"] = best["label"]
            keep["size"] = sizes[group]
            keep["node"] = best["node"][starts][group]
            keep["id"] = best["id"][starts][group]
            scatter(os.path.join(self.work, "keepers"), task.index, best["src"], keep, self.n_parts)
            with open(sink.path, "wb") as f:
                np.save(f, keep[starts])
            sink.stat("clusters", len(starts))
            sink.stat("removed", int((sizes - 1).sum()))
            for lo, hi, name in [(2, 2, "2"), (3, 5, "3-5"), (6, 20, "6-20"), (21, 1 << 62, "21+")]:
                sink.stat(f"clusters_of_size_{name}", int(((sizes >= lo) & (sizes <= hi)).sum()))
            sink.stat("largest_cluster", int(sizes.max()) if len(sizes) else 0)
        sink.stat("peak_traced_bytes", peak.bytes)


class ClusterDecisions(Stage):
    name = "minhash_clusters"
    output_suffix = ".npy"

    def __init__(self, config, work: str | Path, n_shards: int):
        super().__init__(config)
        self.work, self.n_shards = str(work), n_shards

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return _final_tasks(inputs)

    def process(self, task: Task, sink) -> None:
        files = partition_files(os.path.join(self.work, "keepers"), task.index)
        with traced() as peak:
            state = load_concat([task.inputs[0]], LABEL)
            sink.take(n=len(state))
            sink.count_out(len(state))
            keep = load_concat(files, KEEPER)
            keep = keep[np.argsort(keep["label"], kind="stable")]
            at = np.searchsorted(keep["label"], state["label"])
            if len(state) and (not len(keep) or (at >= len(keep)).any() or (keep["label"][at] != state["label"]).any()):
                raise RuntimeError(f"partition {task.index}: a cluster label has no keeper record")
            k = keep[at]
            del keep, at
            dec = np.zeros(len(state), dtype=DECISION)
            dec["node"] = state["node"]
            dec["keeper"] = k["id"]
            dec["cluster"] = state["label"]
            dec["size"] = k["size"]
            dec["keep"] = state["node"] == k["node"]
            dec["similarity"] = np.nan
            sink.stat("kept", int(dec["keep"].sum()))
            scatter(os.path.join(self.work, "decisions"), task.index, node_shard(dec["node"]), dec, self.n_shards)
            with open(sink.path, "wb") as f:
                np.save(f, dec)
        sink.stat("peak_traced_bytes", peak.bytes)


__all__ = ["ClusterBest", "ClusterKeepers", "ClusterDecisions", "node_attributes", "BEST", "KEEPER", "LABEL"]
