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

from curation.refine.textutil import fmix64
from minisigma.core import storage


def save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)
    storage.committed(path)  # a run at a URL: uploaded once final (workers on other nodes read it)


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


def npy_header(f) -> str:
    """The header dict of an open .npy file as text; leaves the file at the start of the data."""
    magic = f.read(8)
    if magic[:6] != b"\x93NUMPY" or magic[6] not in (1, 2, 3):
        raise ValueError(f"{f.name}: not a .npy file")
    n = int.from_bytes(f.read(2 if magic[6] == 1 else 4), "little")
    return f.read(n).decode("latin-1")


def _layout(f, dtype: np.dtype) -> tuple[int, int]:
    """(rows, data offset) of a 1-d .npy file of records of `dtype` written by `save_npy`.

    Read by hand because numpy's header parser (`ast.literal_eval`) leaves about 1 KB of reference-cycle
    garbage per file until the next garbage collection, which made a task's traced memory grow with the
    number of producer files (the number of producer tasks, so with the corpus). The header is still
    checked: magic, version, and the dtype's description."""
    header = npy_header(f)
    if repr(np.lib.format.dtype_to_descr(dtype)) not in header or "'fortran_order': False" not in header:
        raise ValueError(f"{f.name}: expected records of {dtype}, header {header.strip()}")
    offset = f.tell()
    size = os.fstat(f.fileno()).st_size - offset
    if size % dtype.itemsize:
        raise ValueError(f"{f.name}: {size} data bytes is not a whole number of {dtype.itemsize}-byte records")
    return size // dtype.itemsize, offset


def load_concat(files: list[str], dtype) -> np.ndarray:
    """The records of many small .npy files in one array, read one file at a time straight into an
    array allocated once (peak: the result, instead of every file plus the result)."""
    dtype = np.dtype(dtype)
    rows = []
    for p in files:
        with open(p, "rb") as f:
            rows.append(_layout(f, dtype)[0])
    out = np.empty(sum(rows), dtype=dtype)
    at = 0
    for p, n in zip(files, rows):
        with open(p, "rb") as f:
            _layout(f, dtype)
            if n and f.readinto(out[at:at + n].view(np.uint8)) != n * dtype.itemsize:
                raise ValueError(f"{p}: truncated")
        at += n
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
    return (fmix64(nodes.astype(np.uint64)) % np.uint64(n_parts)).astype(np.int64)


def make_node(shard: int, row: int | np.ndarray):
    """A document's node id: its input shard index in the high 32 bits, its row in the low 32."""
    return (np.uint64(shard) << np.uint64(32)) | np.asarray(row, dtype=np.uint64)


def node_shard(nodes: np.ndarray) -> np.ndarray:
    return (nodes >> np.uint64(32)).astype(np.int64)


def node_row(nodes: np.ndarray) -> np.ndarray:
    return (nodes & np.uint64(0xFFFFFFFF)).astype(np.int64)
