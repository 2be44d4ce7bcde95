"""Pieces every source adapter shares: Documents, harvest checkpoints, safe XML parsing, manifests.

Checkpoints make API harvests resumable inside one task. Each fetched page's raw body is kept
under `<stage dir>/.checkpoints/<task>/pages/` and the cursor that names the next page (OAI-PMH
resumptionToken, DBLP offset) in `state.json`, both written atomically, the page before the
state. An interrupted task re-run reads the kept pages and continues from the cursor, so it yields
the same documents; and the raw pages stay on disk (like a crawl's WARC) so parsing can be
re-run without re-harvesting.
"""

from __future__ import annotations

import gzip
import json
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from lxml import etree
from pydantic import BaseModel

from curation.sources.http import HttpConfig, PoliteClient
from minisigma.core.document import Document
from minisigma.core.errors import UserError
from minisigma.core.recipes import load_yaml, parse_recipe
from minisigma.core.runner import Sink
from minisigma.core.shards import atomic_write_bytes, atomic_write_json
from minisigma.core.paths import MANIFESTS

SOURCE_MANIFESTS = MANIFESTS / "sources"

M = TypeVar("M", bound=BaseModel)


def make_doc(source: str, locator: str, text: str, url: str, metadata: dict) -> dict:
    """The shard record of a new Document; the id is content-addressed from source + locator."""
    return Document.create(source, locator, text, url, metadata).to_dict()


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def load_manifest(path: str | Path, model: type[M]) -> M:
    """Load a YAML source manifest, validated (unknown keys and wrong types are one-line errors)."""
    return parse_recipe(load_yaml(path), model, str(path))


def stage_dir(sink: Sink) -> Path:
    return sink.out_final.parent


def xml_parser(recover: bool = False) -> etree.XMLParser:
    """An lxml parser that never fetches anything or expands external entities."""
    return etree.XMLParser(resolve_entities=False, no_network=True, recover=recover, huge_tree=False,
                           remove_blank_text=False)


def parse_xml(body: bytes) -> tuple[etree._Element | None, str | None]:
    """Parse strictly; on a syntax error, parse again in recovery mode and return what survived
    with the error (e.g. a response cut off mid-record keeps the records before the cut)."""
    try:
        return etree.fromstring(body, parser=xml_parser()), None
    except etree.XMLSyntaxError as e:
        err = f"{type(e).__name__}: {str(e)[:160]}"
    try:
        root = etree.fromstring(body, parser=xml_parser(recover=True))
    except etree.XMLSyntaxError:
        root = None
    return root, err


def date_windows(start: date, end: date, days: int) -> list[tuple[date, date]]:
    """Consecutive inclusive windows [a, b] of at most `days` days covering start..end."""
    if end < start:
        raise UserError(f"date window: until ({end}) is before from ({start})")
    out, a = [], start
    while a <= end:
        b = min(a + timedelta(days=days - 1), end)
        out.append((a, b))
        a = b + timedelta(days=1)
    return out


class Checkpoint:
    """Harvest state of one task: raw pages in order plus the cursor of the next page."""

    def __init__(self, root: Path):
        self.root = root
        self.pages_dir = root / "pages"
        self.state_path = root / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    @classmethod
    def for_task(cls, sink: Sink, index: int) -> "Checkpoint":
        return cls(stage_dir(sink) / ".checkpoints" / f"{index:05d}")

    @property
    def resumed(self) -> bool:
        return bool(self.state.get("pages"))

    def get(self, key: str, default=None):
        return self.state.get(key, default)

    def save(self, **updates) -> None:
        self.state.update(updates)
        atomic_write_json(self.state_path, self.state)

    def add_page(self, body: bytes, cursor_after, **meta) -> None:
        """Keep one fetched page, then record it and the cursor of the page after it."""
        pages = self.state.setdefault("pages", [])
        n = len(pages)
        name = f"{n:06d}.gz"
        atomic_write_bytes(self.pages_dir / name, gzip.compress(body, compresslevel=6, mtime=0))
        pages.append({"file": name, **meta})
        self.save(pages=pages, cursor=cursor_after)

    def iter_pages(self) -> Iterator[tuple[dict, bytes]]:
        for meta in self.state.get("pages", []):
            yield meta, gzip.decompress((self.pages_dir / meta["file"]).read_bytes())

    def reset(self, **keep) -> None:
        """Forget the pages (e.g. after the server rejected our resumption token)."""
        if self.pages_dir.exists():
            shutil.rmtree(self.pages_dir)
        self.state = dict(keep)
        atomic_write_json(self.state_path, self.state)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def harvest_task(sink: Sink, index: int, config: HttpConfig, label: str,
                 harvest: Callable[[Checkpoint, PoliteClient], None]) -> Checkpoint:
    """Run one paged API harvest under its task checkpoint: `harvest(ckpt, client)` fetches and
    keeps pages (resuming where an interrupted run stopped); then the HTTP counts go to the stage
    stats and every event the harvest recorded (a rejected token, a bad page) is quarantined with
    its reason. Returns the checkpoint, whose pages the caller parses into documents.
    Shared by the arXiv (OAI-PMH) and DBLP adapters, which differ only in their paging."""
    ckpt = Checkpoint.for_task(sink, index)
    if ckpt.resumed and not ckpt.get("done"):
        sink.stat(f"{label}_resumed_from_checkpoint")
    client = PoliteClient(config, stage_dir(sink) / ".spacing")
    try:
        harvest(ckpt, client)
    finally:
        client.close()
        sink.stat("http_requests", client.requests)
        sink.stat("http_retries", client.retries)
    for ev in ckpt.get("events", []):
        sink.take()
        sink.quarantine(ev, ev["reason"])
    return ckpt
