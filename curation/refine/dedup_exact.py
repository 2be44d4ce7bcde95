"""Stage group: exact deduplication on a hash of the normalised text, partitioned.

1. `ExactHash` (one task per input shard): hash the normalised text (NFC, lower case, every run of
   whitespace collapsed to one space) with xxh3-128 and scatter (hash, node, id) records to
   `hash-buckets/<bucket>/<shard>.npy` by hash.
2. `ExactResolve` (one task per bucket): group equal hashes; keep rule: the document with the
   smallest id (ids are content-addressed from source + locator, so the choice does not depend on
   shard order); scatter one decision per group member to `decisions/<shard>/<bucket>.npy`.
3. `DecisionFilter` (one task per input shard): drop non-kept copies with reason "exact_duplicate".
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import xxhash

from minisigma.core.recipes import Section
from minisigma.core.runner import Stage, Task
from minisigma.core.shards import read_docs

from curation.refine.decisions import DECISION, DecisionFilter, id_bytes
from curation.refine.partitions import gather, load_concat, make_node, node_shard, save_npy, scatter
from curation.refine.textutil import nfc

EXACT = np.dtype([("h1", "<u8"), ("h2", "<u8"), ("node", "<u8"), ("id", "S64")])
_WS = re.compile(r"\s+")


class DedupExactConfig(Section):
    records_per_bucket: int = 500_000  # sets the number of hash buckets from the corpus size


def normalised_hash(text: str) -> tuple[int, int]:
    h = xxhash.xxh3_128_intdigest(_WS.sub(" ", nfc(text).lower()).strip().encode("utf-8", "surrogatepass"))
    return h >> 64, h & 0xFFFFFFFFFFFFFFFF


class ExactHash(Stage):
    name = "dedup_exact_hash"
    output_suffix = ".npy"

    def __init__(self, config: DedupExactConfig, work: str | Path, n_buckets: int):
        super().__init__(config)
        self.work = str(work)
        self.n_buckets = n_buckets

    def process(self, task: Task, sink) -> None:
        recs = []
        for row, doc in enumerate(read_docs(task.inputs[0])):
            sink.take(doc)
            h1, h2 = normalised_hash(doc.get("text") or "")
            recs.append((h1, h2, int(make_node(task.index, row)), id_bytes(doc)))
            sink.count_out()
        arr = np.array(recs, dtype=EXACT)
        scatter(Path(self.work) / "hash-buckets", task.index, (arr["h1"] % np.uint64(self.n_buckets)).astype(np.int64),
                arr, self.n_buckets)
        with open(sink.path, "wb") as f:
            np.save(f, arr)


def tasks_by_partition(inputs: list[Path]) -> list[Task]:
    """One task per partition directory (`.../<partition>/<producer>.npy` inputs grouped by partition)."""
    groups: dict[int, list[str]] = defaultdict(list)
    for p in inputs:
        groups[int(Path(p).parent.name)].append(str(p))
    return [Task(k, tuple(sorted(v))) for k, v in sorted(groups.items())]


class ExactResolve(Stage):
    name = "dedup_exact_groups"
    output_suffix = ".npy"

    def __init__(self, config: DedupExactConfig, work: str | Path, n_shards: int):
        super().__init__(config)
        self.work = str(work)
        self.n_shards = n_shards

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return tasks_by_partition(inputs)

    def process(self, task: Task, sink) -> None:
        recs = load_concat([str(p) for p in task.inputs], EXACT)
        sink.take(n=len(recs))
        sink.count_out(len(recs))
        order = np.lexsort((recs["node"], recs["id"], recs["h2"], recs["h1"]))
        recs = recs[order]
        decisions = []
        if len(recs):
            new_group = np.ones(len(recs), dtype=bool)
            new_group[1:] = (recs["h1"][1:] != recs["h1"][:-1]) | (recs["h2"][1:] != recs["h2"][:-1])
            starts = np.flatnonzero(new_group)
            ends = np.append(starts[1:], len(recs))
            for s, e in zip(starts, ends):
                if e - s < 2:
                    continue
                sink.stat("duplicate_groups")
                sink.stat("duplicate_copies", int(e - s - 1))
                keeper = recs[s]
                for i in range(s, e):
                    decisions.append((recs["node"][i], keeper["id"], keeper["node"], e - s, i == s, 1.0))
        dec = np.array(decisions, dtype=DECISION)
        scatter(Path(self.work) / "decisions", task.index, node_shard(dec["node"]), dec, self.n_shards)
        with open(sink.path, "wb") as f:
            np.save(f, dec)


def n_buckets_for(n_records: int, per_bucket: int) -> int:
    return max(1, math.ceil(n_records / max(1, per_bucket)))


def exact_filter(work: str | Path) -> DecisionFilter:
    return DecisionFilter("dedup_exact", Path(work) / "decisions", "exact_duplicate", "exact_dup")


__all__ = ["DedupExactConfig", "ExactHash", "ExactResolve", "exact_filter", "n_buckets_for", "normalised_hash",
           "tasks_by_partition", "gather", "save_npy"]
