"""Partitioned intermediate files for the shuffles of dedup and connected components.

A shuffle writes one small `.npy` per (destination partition, source task):
`<root>/<partition:05d>/<task:05d>.npy`, atomically (temporary name, then rename) so that a task
retried after a crash rewrites the same bytes. A consumer task reads only its own partition's
directory, so no step ever loads the data of every partition into one process.

Paths are plain strings here (os.path), not pathlib: in Python 3.11 every Path interns its parts
(`sys.intern`), and the churn of thousands of short-lived shuffle file names makes the interpreter
rebuild its interned-string table (about 1 MB) at random moments inside a task, which is process
state, not data, and shows up as a spike in the per-task memory measurements.
"""

from __future__ import annotations

import os

import numpy as np


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def part_dir(root: str | os.PathLike, part: int) -> str:
    return os.path.join(os.fspath(root), f"{part:05d}")


def scatter(root: str | os.PathLike, task_index: int, part_of: np.ndarray, records: np.ndarray,
            n_parts: int) -> None:
    """Write `records` into their partitions (`part_of[i]` is record i's partition). Every partition
    gets a file, empty or not, so consumers can check that all producers have finished."""
    order = np.argsort(part_of, kind="stable")
    bounds = np.searchsorted(part_of[order], np.arange(n_parts + 1))
    name = f"{task_index:05d}.npy"
    for p in range(n_parts):
        save_npy(os.path.join(part_dir(root, p), name), records[order[bounds[p]:bounds[p + 1]]])


def partition_files(root: str | os.PathLike, part: int) -> list[str]:
    d = part_dir(root, part)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".npy") and n[:1].isdigit())


def _rows(path: str) -> int:
    """Rows of a 1-d .npy file, from its header (the data is not read)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return int(shape[0]) if shape else 1


def load_concat(files: list[str], dtype) -> np.ndarray:
    """The records of many small .npy files in one array, read one file at a time into an array
    allocated once (peak: the result plus one file, instead of every file plus the result)."""
    out = np.empty(sum(_rows(p) for p in files), dtype=dtype)
    at = 0
    for p in files:
        a = np.load(p, allow_pickle=False)
        out[at:at + len(a)] = a
        at += len(a)
    return out


def gather(root: str | os.PathLike, part: int, dtype) -> np.ndarray:
    return load_concat(partition_files(root, part), dtype)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique for a 1-d array, written out because np.unique imports numpy.ma on its first call in
    a process (about 1 MB, a one-off that is not data)."""
    a = np.sort(a)
    keep = np.ones(len(a), dtype=bool)
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


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
