"""Shards: the unit of data between stages.

A shard is `NNNNN.jsonl.gz`, one Document per line, or `NNNNN.parquet`, one Document per row (a
recipe's `shard_format`); the extension picks the writer and the reader (`shard_writer`,
`read_docs`). Writers are atomic (temporary name, then rename; in a run bound to a URL the final
file is then uploaded, see minisigma.core.storage) and deterministic (gzip header
without a timestamp or file name, JSON with sorted keys and compact separators; Parquet with
pinned writer settings), so the same documents always give the same bytes and a crash never
leaves a half-written shard under its final name.

Parquet shards hold Documents only, in a fixed schema: `id`, `text`, `source`, `url` (strings)
and `metadata` (the metadata object as compact JSON with sorted keys, a string: metadata differs
from document to document, which no fixed Parquet type captures losslessly). `datasets`,
pandas and datatrove's ParquetReader read them as they are; `read_docs` decodes `metadata` again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

from minisigma.core import storage
from minisigma.core.errors import UserError

SHARD_GLOB = "[0-9][0-9][0-9][0-9][0-9].jsonl.gz"
JSONL = ".jsonl.gz"
PARQUET = ".parquet"
DOC_SUFFIXES = (JSONL, PARQUET)  # the shard formats of document stages
FORMATS = {"jsonl.gz": JSONL, "parquet": PARQUET}  # a recipe's `shard_format` -> shard suffix


def shard_name(index: int, suffix: str = ".jsonl.gz") -> str:
    return f"{index:05d}{suffix}"


def stable_id(*parts: str) -> str:
    """The stable id of a record: 20 hex digits of sha1 over its parts joined by NUL. A document's id is
    `stable_id(source, locator)` (locator: URL, path ...); a synthetic pair's, its kind, origin and text."""
    return hashlib.sha1("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:20]


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def read_docs(path: str | os.PathLike, on_bad: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Yield the records of one shard: jsonl.gz, plain .jsonl or .parquet (a local path or a URL).

    A damaged jsonl shard raises UserError naming the file and the line: a line that is not a JSON
    object, invalid UTF-8, or a gzip stream that is cut short or corrupt (the records before it are
    yielded). Readers of files that others write (instruction pairs, a report over any run) pass
    `on_bad`: a line that is not JSON ("bad_json") or not an object ("bad_record") is then given to
    it by that reason and skipped; a damaged file still raises.
    """
    path = path if storage.is_url(path) else Path(path)  # a URL: e.g. `manifest verify s3://...`
    name = storage.name(path)
    if name.endswith(PARQUET):
        yield from read_parquet(path)
        return
    lineno = 0
    try:
        # Binary lines decoded one at a time, so an encoding error names its own line (a text-mode
        # reader decodes in chunks, ahead of the line being parsed). surrogatepass: what ShardWriter
        # encodes with.
        with _open_lines(path, name.endswith(".gz")) as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.decode("utf-8", "surrogatepass")
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    if on_bad is None:
                        # e.pos, not e.colno: the line still ends in its newline, which colno counts
                        raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.pos + 1})") from None
                    on_bad("bad_json")
                    continue
                if not isinstance(record, dict):
                    if on_bad is None:
                        raise UserError(f"{path}:{lineno}: not a JSON object")
                    on_bad("bad_record")
                    continue
                yield record
    except UnicodeDecodeError:
        raise UserError(f"{path}:{lineno}: invalid UTF-8") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        # EOFError: the gzip stream ends before its end marker (a truncated file).
        what = "truncated" if isinstance(e, EOFError) else f"not a valid gzip file ({e})"
        raise UserError(f"{path}: {what}, after line {lineno}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a shard") from None
    except FileNotFoundError:
        raise UserError(f"{path}: shard not found") from None


def _open_lines(path, gz: bool):
    if not storage.is_url(path):
        return gzip.open(path, "rb") if gz else open(path, "rb")
    raw = storage.open_binary(path)
    return gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw


def iter_docs(stage_dir: str | os.PathLike) -> Iterator[dict]:
    """Every document of a stage directory, shard by shard in order."""
    for shard in list_shards(stage_dir):
        yield from read_docs(shard)


def list_shards(stage_dir: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """The finished shards of a stage directory, in shard order (temporary files excluded);
    `suffix` None: document shards of either format."""
    suffixes = DOC_SUFFIXES if suffix is None else (suffix,)
    if storage.is_url(stage_dir):  # URLs (str) of the shards in a stage directory at a URL
        return [storage.join(stage_dir, n) for n in storage.listdir(stage_dir)  # type: ignore[misc]
                if n.endswith(suffixes) and n[:5].isdigit()]
    d = Path(stage_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.endswith(suffixes) and p.name[:5].isdigit())


def count_records(path: str | os.PathLike) -> int:
    """Records in a shard (Parquet: from its footer, without reading the rows)."""
    if storage.name(path).endswith(PARQUET):
        import pyarrow.parquet as pq  # here: only Parquet shards need pyarrow

        with storage.open_binary(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    # Every line parsed: a shard that lists the right count but holds a damaged record is not intact
    # (read_docs names the file and line of the damage).
    return sum(1 for _ in read_docs(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    if storage.is_url(path):
        return storage.sha256(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tmp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


# The names `tmp_path` (and curation.refine.partitions) give files being written: ".NAME.tmp-PID".
TMP_NAME = re.compile(r"\..+\.tmp-[0-9]+")


def remove_stale_tmp(root: str | os.PathLike) -> list[Path]:
    """Remove the temporary files under `root` (recursively) that a killed writer left behind; returns
    them. Call only when no writer is working under `root`: the runner does so before a stage starts
    (one run at a time per stage directory, as the shards and the manifest already require)."""
    removed = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if TMP_NAME.fullmatch(name):
                p = Path(dirpath) / name
                p.unlink(missing_ok=True)
                removed.append(p)
    return sorted(removed)


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(final)
    tmp.write_bytes(data)
    os.replace(tmp, final)
    storage.committed(final)  # a run at a URL: the object is uploaded once it is final here


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


def shard_writer(path: str | os.PathLike):
    """The writer for a shard path, by its extension: ShardWriter (.jsonl.gz) or ParquetShardWriter."""
    return ParquetShardWriter(path) if str(path).endswith(PARQUET) else ShardWriter(path)


# --------------------------------------------------------------------------- Parquet
DOC_COLUMNS = ("id", "text", "source", "url", "metadata")
# Pinned so the same documents give the same bytes (pyarrow's defaults may change between
# releases): zstd level 3, format 2.6, v1 data pages, dictionary encoding, statistics, no page
# index or checksums, row groups of at most PARQUET_ROW_GROUP rows.
PARQUET_ROW_GROUP = 4096
PARQUET_WRITER = dict(compression="zstd", compression_level=3, version="2.6", data_page_version="1.0",
                      use_dictionary=True, write_statistics=True, write_page_index=False,
                      write_page_checksum=False, store_schema=True)
PARQUET_SCHEMA_META = {b"minisigma.format": b"documents/1", b"minisigma.metadata": b"json"}


def _parquet_schema():
    import pyarrow as pa  # here: only Parquet shards need pyarrow

    return pa.schema([(c, pa.string()) for c in DOC_COLUMNS], metadata=PARQUET_SCHEMA_META)


def _to_row(record: dict) -> dict:
    extra = sorted(set(record) - set(DOC_COLUMNS))
    if extra:
        raise ValueError(f"a Parquet shard holds Documents ({', '.join(DOC_COLUMNS)}); got key(s) {', '.join(extra)}")
    row = {}
    for c in DOC_COLUMNS[:4]:
        v = record.get(c)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"Document.{c} must be a string for a Parquet shard, got {type(v).__name__}")
        row[c] = v
    meta = record.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"Document.metadata must be an object, got {type(meta).__name__}")
    row["metadata"] = None if meta is None else dumps(meta)
    return row


class ParquetShardWriter:
    """ShardWriter's twin for `.parquet` (same interface, same atomic and deterministic commit).
    Rows are buffered a row group at a time into an in-memory file, renamed into place on close."""

    def __init__(self, path: str | os.PathLike):
        import pyarrow as pa  # here: only Parquet shards need pyarrow
        import pyarrow.parquet as pq

        self._pa = pa
        self.path = Path(path)
        self.count = 0
        self.text_bytes = 0
        self._rows: list[dict] = []
        self._schema = _parquet_schema()
        self._buf = pa.BufferOutputStream()
        self._pq = pq.ParquetWriter(self._buf, self._schema, **PARQUET_WRITER)

    def write(self, record: dict) -> None:
        self._rows.append(_to_row(record))
        self.count += 1
        self.text_bytes += len((record.get("text") or "").encode("utf-8", "surrogatepass"))
        if len(self._rows) >= PARQUET_ROW_GROUP:
            self._flush()

    def write_all(self, records: Iterable[dict]) -> None:
        for r in records:
            self.write(r)

    def _flush(self) -> None:
        if self._rows:
            self._pq.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema),
                                 row_group_size=PARQUET_ROW_GROUP)
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._pq.close()
        atomic_write_bytes(self.path, self._buf.getvalue().to_pybytes())

    def abort(self) -> None:
        self._rows = []
        self._pq.close()

    def __enter__(self) -> "ParquetShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_parquet(path: str | os.PathLike, batch_size: int = 1024) -> Iterator[dict]:
    """Yield the Documents of a Parquet shard (null columns left out, metadata decoded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq  # here: only Parquet shards need pyarrow

    try:
        f = pq.ParquetFile(storage.open_binary(path) if storage.is_url(path) else path)
    except (pa.ArrowException, OSError) as e:  # a truncated file has lost its footer
        raise UserError(f"{path}: not a readable Parquet shard ({e})") from None
    meta = f.schema_arrow.metadata or {}
    json_meta = meta.get(b"minisigma.metadata") == b"json"
    for batch in f.iter_batches(batch_size=batch_size):
        for row in batch.to_pylist():
            doc = {k: v for k, v in row.items() if v is not None}
            if json_meta and isinstance(doc.get("metadata"), str):
                doc["metadata"] = json.loads(doc["metadata"])
            yield doc
