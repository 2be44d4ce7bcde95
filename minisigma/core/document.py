"""`Document`: the one record that flows from a source to the training tokens.

On disk a document is one JSON object per shard line (`minisigma.core.shards`), with exactly the
fields below; in memory, code that makes or converts documents uses this dataclass, so a record's
shape is written down once; the refine filters (`minisigma.core.filters.Filter`) get each record
as a `Document`.

datatrove interop: `to_datatrove` / `from_datatrove` map onto `datatrove.data.Document` (text, id,
metadata): `source` and `url` travel in datatrove's metadata under the same names, so a datatrove
reader can feed the pipeline and datatrove can read minisigma's shards.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minisigma.core.shards import read_docs, stable_id

FIELDS = ("id", "text", "source", "url", "metadata")


@dataclass
class Document:
    """One document of a shard."""

    id: str
    """Stable and content-addressed: `stable_id(source, locator)`, so a re-crawl gives the same id."""
    text: str
    """The content as plain UTF-8 text: extracted, then normalised by refine."""
    source: str
    """The source type: arxiv | ccf | stackexchange | blogs | localdocs | manpages | synthetic | ..."""
    url: str | None = None
    """Where it came from: a URL, or a locator such as localdocs://PACKAGE/PATH."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Everything else: title, license, fetched_at, tags, category, lang, scores {quality, lang ...},
    dedup cluster, the WARC record it was extracted from. Stages add keys; none removes one."""

    @classmethod
    def create(cls, source: str, locator: str, text: str, url: str | None = None,
               metadata: dict | None = None) -> "Document":
        """A new document whose id is derived from its source and locator (the url by default)."""
        return cls(stable_id(source, locator), text, source, url if url is not None else locator, metadata or {})

    @classmethod
    def from_dict(cls, record: dict) -> "Document":
        """The document of a shard line (the record's own objects, not copies); a key outside FIELDS
        or a missing id, text or source is an error (ValueError naming it)."""
        extra = set(record) - set(FIELDS)
        if extra:
            raise ValueError(f"unknown document field {sorted(extra)[0]!r}")
        missing = [k for k in FIELDS[:3] if k not in record]
        if missing:
            raise ValueError(f"document field {missing[0]!r} missing")
        return cls(**record)

    def to_dict(self) -> dict:
        """The shard line's object (the writer sorts keys, so the bytes do not depend on field order)."""
        return {"id": self.id, "text": self.text, "source": self.source, "url": self.url, "metadata": self.metadata}

    def to_datatrove(self):
        """This document as a `datatrove.data.Document` (datatrove is an optional dependency)."""
        from datatrove.data import Document as DTDocument  # optional: only interop needs datatrove

        return DTDocument(text=self.text, id=self.id, metadata={**self.metadata, "source": self.source,
                                                                 "url": self.url})

    @classmethod
    def from_datatrove(cls, doc, source: str | None = None) -> "Document":
        """A minisigma document from a datatrove one: its id and metadata kept; `source` and `url` come
        from its metadata when there, else `source` (the recipe's name for the reader)."""
        meta = dict(doc.metadata or {})
        src = meta.pop("source", None) or source or "datatrove"
        url = meta.pop("url", None)
        return cls(str(doc.id), doc.text, str(src), None if url is None else str(url), meta)


def doc_shards(stage_dir: str | Path) -> list[Path]:
    """The document shards (NNNNN.jsonl.gz) of a stage directory."""
    return sorted(p for p in Path(stage_dir).glob("*.jsonl.gz") if p.name[:5].isdigit())


def read_sample(stage_dir: str | Path, limit: int) -> list[dict]:
    """The first `limit` records of a stage directory's shards, malformed lines left out (for a
    report: `minisigma manifest verify` is where they count)."""
    docs = (d for shard in doc_shards(stage_dir) for d in read_docs(shard, on_bad=_ignore))
    return list(itertools.islice(docs, limit))


def read_file_sample(path: str | Path) -> list[dict]:
    """Every readable record of one shard (e.g. a rejects/ shard), malformed lines left out."""
    return list(read_docs(path, on_bad=_ignore))


def _ignore(reason: str) -> None:
    """A malformed line is left out of a sample."""


__all__ = ["Document", "FIELDS", "doc_shards", "read_sample", "read_file_sample"]
