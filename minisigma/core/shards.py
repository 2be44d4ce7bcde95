"""Shards: the unit of data between stages.

A shard is `NNNNN.jsonl.gz`, one Document per line. Writers are atomic (temporary name, then
rename) and deterministic (gzip header without a timestamp or file name, JSON with sorted keys and
compact separators), so the same documents always give the same bytes and a crash never leaves a
half-written shard under its final name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

SHARD_GLOB = "[0-9][0-9][0-9][0-9][0-9].jsonl.gz"


def shard_name(index: int, suffix: str = ".jsonl.gz") -> str:
    return f"{index:05d}{suffix}"


def stable_id(*parts: str) -> str:
    """The stable id of a record: 20 hex digits of sha1 over its parts joined by NUL. A document's id is
    `stable_id(source, locator)` (locator: URL, path ...); a synthetic pair's, its kind, origin and text."""
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def read_docs(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of one jsonl.gz (or plain .jsonl) shard."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def iter_docs(stage_dir: str | os.PathLike) -> Iterator[dict]:
    """Every document of a stage directory, shard by shard in order."""
    for shard in list_shards(stage_dir):
        yield from read_docs(shard)


def list_shards(stage_dir: str | os.PathLike, suffix: str = ".jsonl.gz") -> list[Path]:
    """The finished shards of a stage directory, in shard order (temporary files excluded)."""
    d = Path(stage_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.endswith(suffix) and p.name[:5].isdigit())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(final)
    tmp.write_bytes(data)
    os.replace(tmp, final)


def atomic_write_json(final: str | os.PathLike, obj) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


class ShardWriter:
    """Write documents to a jsonl.gz shard atomically and deterministically.

    Use as a context manager; the shard appears under its final name only when the block exits
    without an exception. `count` and `bytes` (uncompressed text) are kept for the manifest.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self.text_bytes = 0
        self._buf = io.BytesIO()
        # mtime=0 and an empty filename keep the gzip header free of run-dependent bytes.
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._buf, mtime=0, compresslevel=6)

    def write(self, record: dict) -> None:
        self._gz.write((dumps(record) + "\n").encode("utf-8", "surrogatepass"))
        self.count += 1
        self.text_bytes += len(record.get("text", "").encode("utf-8", "surrogatepass"))

    def write_all(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        self._gz.close()
        atomic_write_bytes(self.path, self._buf.getvalue())

    def abort(self) -> None:
        self._gz.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
