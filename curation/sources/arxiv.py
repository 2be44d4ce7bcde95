"""arXiv metadata through OAI-PMH (ListRecords, metadataPrefix=arXiv, resumptionToken paging).

One task per (set, date window). A task harvests its window page by page into a checkpoint (raw
pages + the next resumptionToken, see `common.Checkpoint`), then turns the kept pages into
Documents: title + abstract as text; authors, categories, license and dates in metadata; only
records with at least one category of the source manifest (manifests/sources/arxiv.yaml) are kept.

Protocol behaviour (OAI-PMH 2.0, section 3.6 errors):
  * `noRecordsMatch`: an empty window, not an error (counted in stats);
  * `badResumptionToken` (expired or invalid, e.g. resuming a day later): counted as a quarantined
    page, and the window is harvested again from the start (at most `max_restarts` times);
  * any other OAI error or an HTTP error status: counted as quarantined, the window ends;
  * a page that is not well-formed XML (cut off by a proxy) is fetched again `malformed_refetches`
    times; if it stays broken, the records before the break are kept, the record the break went
    through is quarantined, and the harvest continues if a resumptionToken survived.
Network failures that outlast the HTTP retries fail the task; its checkpoint makes the re-run
continue from the last token and yield the same documents.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

from lxml import etree
from pydantic import Field, model_validator

from curation.sources import categories
from curation.sources.common import (SOURCE_MANIFESTS, Checkpoint, date_windows, iso_utc, load_manifest,
                                     make_doc, parse_xml, harvest_task)
from curation.sources.fulltext import FullTextConfig
from curation.sources.http import HttpConfig, PoliteClient
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from curation.sources.registry import register_source, stage_runner

OAI = "http://www.openarchives.org/OAI/2.0/"
ARXIV = "http://arxiv.org/OAI/arXiv/"
NS = {"o": OAI, "a": ARXIV}


class ArxivCategory(Section):
    id: str  # e.g. cs.OS
    name: str = ""
    category: str | None = None  # overrides categories.ARXIV for this arXiv category


class ArxivManifest(Section):
    description: str = ""
    sets: list[str] = ["cs"]  # OAI-PMH sets that contain the categories
    categories: list[ArxivCategory]


class ArxivSource(Section):
    """Recipe section of the arXiv source."""

    type: Literal["arxiv"] = "arxiv"
    name: str = "arxiv"
    endpoint: str = "https://oaipmh.arxiv.org/oai"
    metadata_prefix: Literal["arXiv"] = "arXiv"
    manifest: Path = SOURCE_MANIFESTS / "arxiv.yaml"
    sets: list[str] | None = None  # default: the manifest's sets
    categories: list[str] | None = None  # a subset of the manifest's categories (None = all)
    from_date: date = Field(alias="from")
    until: date
    window_days: int = Field(31, ge=1)
    max_restarts: int = Field(1, ge=0, description="re-harvests of a window after badResumptionToken")
    malformed_refetches: int = Field(1, ge=0)
    max_pages: int | None = Field(None, ge=1, description="pages per window at most (None = all)")
    # full text of the kept records from arXiv's PDF (or HTML rendering): curation.sources.fulltext
    fulltext: FullTextConfig | None = None
    http: HttpConfig

    model_config = {**Section.model_config, "populate_by_name": True}

    @model_validator(mode="after")
    def _order(self) -> "ArxivSource":
        if self.until < self.from_date:
            raise ValueError(f"until ({self.until}) is before from ({self.from_date})")
        return self


def wanted_categories(src: ArxivSource) -> dict[str, str]:
    """arXiv category id -> our category, for the categories this recipe harvests."""
    man = load_manifest(src.manifest, ArxivManifest)
    known = {c.id: c for c in man.categories}
    ids = src.categories if src.categories is not None else list(known)
    unknown = [c for c in ids if c not in known]
    if unknown:
        raise UserError(f"arxiv: categories not in {src.manifest}: {', '.join(unknown)}")
    return {c: known[c].category or categories.ARXIV.get(c, "other") for c in ids}


# --------------------------------------------------------------------------- OAI-PMH pages
class Page:
    """One parsed ListRecords response."""

    def __init__(self, body: bytes):
        self.root, self.syntax_error = parse_xml(body)
        self.records: list[etree._Element] = []
        self.token: str | None = None
        self.error_code: str | None = None
        self.error_text = ""
        self.response_date = ""
        if self.root is None:
            return
        self.response_date = (self.root.findtext("o:responseDate", namespaces=NS) or "").strip()
        err = self.root.find("o:error", namespaces=NS)
        if err is not None:
            self.error_code = err.get("code", "unknown")
            self.error_text = " ".join((err.text or "").split())[:200]
        lr = self.root.find("o:ListRecords", namespaces=NS)
        if lr is not None:
            self.records = lr.findall("o:record", namespaces=NS)
            tok = lr.find("o:resumptionToken", namespaces=NS)
            # An empty resumptionToken element marks the last page of a list (OAI-PMH 3.5).
            self.token = (tok.text or "").strip() or None if tok is not None else None
        if self.root is not None and self.root.tag != f"{{{OAI}}}OAI-PMH" and self.syntax_error is None:
            self.syntax_error = f"not an OAI-PMH response (root <{etree.QName(self.root).localname}>)"


def _text(el: etree._Element | None, path: str) -> str:
    if el is None:
        return ""
    return " ".join((el.findtext(path, namespaces=NS) or "").split())


def _paragraphs(raw: str) -> str:
    # arXiv abstracts are hard-wrapped; a line that starts with spaces begins a new paragraph.
    paras, cur = [], []
    for line in (raw or "").strip("\n").split("\n"):
        if (line.startswith("  ") or not line.strip()) and cur:
            paras.append(" ".join(cur))
            cur = []
        if line.strip():
            cur.append(" ".join(line.split()))
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


REQUIRED = ("id", "title", "abstract", "categories")


def record_to_doc(rec: etree._Element, wanted: dict[str, str], fetched_at: str) -> tuple[str, dict]:
    """('ok', doc) | ('dropped:<reason>', stub) | ('quarantined:<reason>', stub)."""
    header = rec.find("o:header", namespaces=NS)
    ident = _text(header, "o:identifier")
    stub = {"identifier": ident}
    if header is None or not ident:
        return "quarantined:missing_field:header", stub
    if header.get("status") == "deleted":
        return "dropped:deleted", stub
    meta = rec.find("o:metadata/a:arXiv", namespaces=NS)
    if meta is None:
        return "quarantined:missing_field:metadata", stub
    fields = {k: _text(meta, f"a:{k}") for k in REQUIRED}
    missing = [k for k in REQUIRED if not fields[k]]
    if missing:
        return f"quarantined:missing_field:{missing[0]}", stub
    cats = fields["categories"].split()
    if not any(c in wanted for c in cats):
        return "dropped:category_not_listed", {**stub, "categories": cats}
    authors = []
    for a in meta.findall("a:authors/a:author", namespaces=NS):
        parts = [_text(a, "a:forenames"), _text(a, "a:keyname"), _text(a, "a:suffix")]
        name = " ".join(p for p in parts if p)
        if name:
            authors.append(name)
    abstract = _paragraphs(meta.findtext("a:abstract", namespaces=NS) or "")
    title = fields["title"]
    primary = next((c for c in cats if c in wanted), cats[0])
    category = wanted[primary] if wanted.get(primary, "other") != "other" else categories.from_arxiv(cats, title)
    arxiv_id = fields["id"]
    doc = make_doc("arxiv", arxiv_id, f"{title}\n\n{abstract}", f"https://arxiv.org/abs/{arxiv_id}", {
        "title": title,
        "authors": authors,
        "abstract": abstract,
        "arxiv_id": arxiv_id,
        "categories": cats,
        "tags": cats,
        "category": categories.check(category),
        "license": _text(meta, "a:license") or None,
        "created": _text(meta, "a:created") or None,
        "updated": _text(meta, "a:updated") or None,
        "datestamp": _text(header, "o:datestamp") or None,
        "doi": _text(meta, "a:doi") or None,
        "journal_ref": _text(meta, "a:journal-ref") or None,
        "comments": _text(meta, "a:comments") or None,
        "fetched_at": fetched_at,
    })
    return "ok", doc


# --------------------------------------------------------------------------- the stage
class ArxivStage(Stage):
    """One task per (OAI set, date window); documents of the manifest's categories."""

    name = "arxiv"

    def __init__(self, config: ArxivSource):
        super().__init__(config)
        self.wanted = wanted_categories(config)
        self.sets = config.sets or load_manifest(config.manifest, ArxivManifest).sets

    def tasks(self, inputs) -> list[Task]:
        c = self.config
        out = []
        for s in self.sets:
            for a, b in date_windows(c.from_date, c.until, c.window_days):
                params = {"set": s, "from": a.isoformat(), "until": b.isoformat()}
                out.append(Task(len(out), (f"{c.endpoint}?set={s}&from={a}&until={b}",), params))
        return out

    # -- harvesting
    def harvest(self, task: Task, ckpt: Checkpoint, client: PoliteClient, sink: Sink) -> None:
        c = self.config
        while not ckpt.get("done"):
            if c.max_pages is not None and len(ckpt.get("pages", [])) >= c.max_pages:
                sink.stat("oai_max_pages_reached")
                ckpt.save(done=True)
                break
            token = ckpt.get("cursor")
            if token:
                params = {"verb": "ListRecords", "resumptionToken": token}
            else:
                params = {"verb": "ListRecords", "metadataPrefix": c.metadata_prefix, "set": task.params["set"],
                          "from": task.params["from"], "until": task.params["until"]}
            for attempt in range(c.malformed_refetches + 1):
                got = client.get(c.endpoint, params=params)
                page = Page(got.body) if got.status == 200 else None
                if page is None or page.syntax_error is None or page.error_code or attempt == c.malformed_refetches:
                    break
                sink.stat("oai_refetch_malformed")
            meta = {"url": got.url, "status": got.status, "fetched_at_unix": round(got.fetched_at, 3)}
            if got.status != 200:
                self._event(ckpt, {"reason": f"http_{got.status}", "url": got.url})
                ckpt.save(done=True)
            elif page.error_code == "noRecordsMatch":
                ckpt.save(done=True, no_records=True)
            elif page.error_code == "badResumptionToken":
                self._event(ckpt, {"reason": "oai_error:badResumptionToken", "token": token, "url": got.url})
                restarts = ckpt.get("restarts", 0)
                if restarts < c.max_restarts:
                    # Tokens expire; the window is harvested again from its start, old pages forgotten.
                    ckpt.reset(events=ckpt.get("events", []), restarts=restarts + 1)
                else:
                    ckpt.save(done=True)
            elif page.error_code:
                self._event(ckpt, {"reason": f"oai_error:{page.error_code}", "detail": page.error_text,
                                   "url": got.url})
                ckpt.save(done=True)
            else:
                ckpt.add_page(got.body, page.token, **meta)
                if not page.token:
                    ckpt.save(done=True)

    @staticmethod
    def _event(ckpt: Checkpoint, event: dict) -> None:
        ckpt.save(events=ckpt.get("events", []) + [event])

    def process(self, task: Task, sink: Sink) -> None:
        ckpt = harvest_task(sink, task.index, self.config.http, "oai",
                            lambda ckpt, client: self.harvest(task, ckpt, client, sink))
        if ckpt.get("no_records"):
            sink.stat("oai_no_records_match")
        seen: set[str] = set()
        for meta, body in ckpt.iter_pages():
            page = Page(body)
            sink.stat("oai_pages")
            records = page.records
            if page.syntax_error:
                sink.take()
                sink.quarantine({"url": meta["url"], "error": page.syntax_error}, "truncated_xml")
                if records:  # the record the break went through may be cut short: never trust it
                    last = records.pop()
                    sink.take()
                    sink.quarantine({"identifier": _text(last.find("o:header", namespaces=NS), "o:identifier")},
                                    "truncated_record")
            fetched_at = page.response_date or iso_utc(meta["fetched_at_unix"])
            for rec in records:
                sink.take()
                status, doc = record_to_doc(rec, self.wanted, fetched_at)
                if status == "ok":
                    if doc["id"] in seen:
                        sink.drop({"arxiv_id": doc["metadata"]["arxiv_id"]}, "duplicate_in_window")
                        continue
                    seen.add(doc["id"])
                    sink.write(doc)
                else:
                    kind, reason = status.split(":", 1)
                    (sink.drop if kind == "dropped" else sink.quarantine)(doc, reason)


register_source(ArxivSource, stage_runner(ArxivStage))
