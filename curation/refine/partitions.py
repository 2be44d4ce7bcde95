"""Partitioned intermediate files for the shuffles of dedup and connected components.

A shuffle writes one small `.npy` per (destination partition, source task):
`<root>/<partition:05d>/<task:05d>.npy`, atomically (temporary name, then rename) so that a task
retried after a crash rewrites the same bytes. A consumer task reads only its own partition's
directory, so no step ever loads the data of every partition into one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from minisigma.shards import tmp_path


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def scatter(root: str | os.PathLike, task_index: int, part_of: np.ndarray, records: np.ndarray,
            n_parts: int) -> None:
    """Write `records` into their partitions (`part_of[i]` is record i's partition). Every partition
    gets a file, empty or not, so consumers can check that all producers have finished."""
    order = np.argsort(part_of, kind="stable")
    part_sorted = part_of[order]
    bounds = np.searchsorted(part_sorted, np.arange(n_parts + 1))
    for p in range(n_parts):
        save_npy(Path(root) / f"{p:05d}" / f"{task_index:05d}.npy", records[order[bounds[p]:bounds[p + 1]]])


def partition_files(root: str | os.PathLike, part: int) -> list[Path]:
    d = Path(root) / f"{part:05d}"
    return sorted(d.glob("[0-9]*.npy")) if d.is_dir() else []


def gather(root: str | os.PathLike, part: int, dtype) -> np.ndarray:
    arrs = [np.load(p, allow_pickle=False) for p in partition_files(root, part)]
    return np.concatenate(arrs) if arrs else np.zeros(0, dtype=dtype)


def node_part(nodes: np.ndarray, n_parts: int) -> np.ndarray:
    """Hash partition of node ids (so a partition's nodes are spread over all input shards)."""
    from curation.refine.textutil import fmix64

    return (fmix64(nodes.astype(np.uint64)) % np.uint64(n_parts)).astype(np.int64)


def make_node(shard: int, row: int | np.ndarray):
    """A document's node id: its input shard index in the high 32 bits, its row in the low 32."""
    return (np.uint64(shard) << np.uint64(32)) | np.asarray(row, dtype=np.uint64)


def node_shard(nodes: np.ndarray) -> np.ndarray:
    return (nodes >> np.uint64(32)).astype(np.int64)


def node_row(nodes: np.ndarray) -> np.ndarray:
    return (nodes & np.uint64(0xFFFFFFFF)).astype(np.int64)
