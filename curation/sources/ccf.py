"""Papers of CCF-ranked systems venues from DBLP: the search API, or a local dblp.xml(.gz) dump.

The venues (name, rank A/B/C, area, DBLP key such as `conf/osdi` or `journals/tocs`, category) are
listed in manifests/sources/ccf_venues.yaml. A recipe picks ranks, areas or venues and years.

* `mode: api`  -- one task per venue. For each year it pages through DBLP's publication search
  (`q=stream:streams/<key>: year:<y>:`, `format=json`, `h` hits per page, `f` first hit), with the
  polite client (spacing, retries, User-Agent). Pages and the cursor (year, offset) are checkpointed,
  so an interrupted harvest resumes at the page it stopped and yields the same documents.
* `mode: dump` -- one task that streams dblp.xml(.gz) with lxml iterparse (elements cleared as it
  goes; the DTD next to the dump resolves dblp's named character entities, never the network) and
  keeps the records whose key belongs to a selected venue. A dump cut off mid-record keeps what
  came before the cut and counts the cut.

Documents: text is the title (DBLP has no abstracts); metadata has venue, rank, area, year,
authors, DOI, electronic-edition links (`ee`), the DBLP key and, from the API, the access flag.
With `fulltext:` the open-access `ee` links are followed to a PDF (curation.sources.fulltext).
"""

from __future__ import annotations

import gzip
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Literal
from urllib.parse import urlsplit

from lxml import etree
from pydantic import Field, model_validator

from curation.sources import categories
from curation.sources.common import (SOURCE_MANIFESTS, Checkpoint, harvest_task, iso_utc, load_manifest,
                                     make_doc)
from curation.sources.fulltext import FullTextConfig
from curation.sources.http import HttpConfig, PoliteClient
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.shards import list_shards, read_docs
from curation.sources.registry import register_source, stage_runner

RANKS = ("A", "B", "C")
RECORD_TAGS = ("article", "inproceedings")


class CcfVenue(Section):
    name: str
    full_name: str = ""
    kind: Literal["conference", "journal"]
    rank: Literal["A", "B", "C"]
    area: str
    dblp: str  # DBLP stream key, e.g. conf/osdi or journals/tocs
    category: str | None = None  # default: the area's category


class CcfArea(Section):
    id: str
    name: str
    category: str


class CcfManifest(Section):
    description: str = ""
    edition: str
    areas: list[CcfArea]
    venues: list[CcfVenue]

    @model_validator(mode="after")
    def _check(self) -> "CcfManifest":
        area_ids = {a.id for a in self.areas}
        for v in self.venues:
            if v.area not in area_ids:
                raise ValueError(f"venue {v.name}: unknown area {v.area!r}")
        for a in self.areas:
            categories.check(a.category)
        return self


class CcfSource(Section):
    """Recipe section of the CCF-venues source."""

    type: Literal["ccf"] = "ccf"
    name: str = "ccf"
    manifest: Path = SOURCE_MANIFESTS / "ccf_venues.yaml"
    mode: Literal["api", "dump"] = "api"
    ranks: list[Literal["A", "B", "C"]] = ["A", "B", "C"]
    areas: list[str] | None = None  # None = every area of the manifest
    venues: list[str] | None = None  # venue names; None = all venues of the selected ranks/areas
    years: list[int] = Field(default_factory=list, description="publication years (api mode needs them)")
    endpoint: str = "https://dblp.org/search/publ/api"
    query: str = "stream:streams/{dblp}: year:{year}:"
    page_size: int = Field(1000, ge=1, le=1000, description="DBLP's h parameter (capped at 1000)")
    max_hits_per_query: int = Field(10000, ge=1, description="DBLP serves at most the first 10000 hits")
    malformed_refetches: int = Field(1, ge=0)
    dump: Path | None = None  # dblp.xml or dblp.xml.gz (dblp.dtd beside it)
    # full text from the records' open-access `ee` links (PDF, USENIX/publisher pages, arXiv versions)
    fulltext: FullTextConfig | None = None
    http: HttpConfig | None = None

    @model_validator(mode="after")
    def _mode(self) -> "CcfSource":
        if self.mode == "api" and (self.http is None or not self.years):
            raise ValueError("mode api needs `http` (with a contact) and `years`")
        if self.mode == "dump" and self.dump is None:
            raise ValueError("mode dump needs `dump` (path of dblp.xml or dblp.xml.gz)")
        return self


def select_venues(src: CcfSource) -> tuple[list[CcfVenue], dict[str, str]]:
    """The venues this recipe harvests, and area id -> category."""
    man = load_manifest(src.manifest, CcfManifest)
    area_cat = {a.id: a.category for a in man.areas}
    if src.areas is not None and (bad := [a for a in src.areas if a not in area_cat]):
        raise UserError(f"ccf: areas not in {src.manifest}: {', '.join(bad)}")
    by_name = {v.name: v for v in man.venues}
    if src.venues is not None:
        if bad := [v for v in src.venues if v not in by_name]:
            raise UserError(f"ccf: venues not in {src.manifest}: {', '.join(bad)}")
        venues = [by_name[v] for v in src.venues]
    else:
        venues = [v for v in man.venues if v.rank in src.ranks and (src.areas is None or v.area in src.areas)]
    if not venues:
        raise UserError("ccf: the recipe selects no venue")
    return venues, area_cat


def _as_list(x) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _clean(s) -> str:
    return " ".join(str(s or "").split())


def _doi_of(ees: list[str]) -> str | None:
    for e in ees:
        m = re.match(r"https?://(dx\.)?doi\.org/(.+)$", e)
        if m:
            return m.group(2)
    return None


def paper_doc(*, key: str, title: str, authors: list[str], year: int | None, venue: CcfVenue, category: str,
              ees: list[str], doi: str | None, fetched_at: str, access: str | None = None,
              dblp_type: str | None = None, pages: str | None = None) -> dict:
    title = _clean(title).rstrip(".")
    return make_doc("ccf", key, title, f"https://dblp.org/rec/{key}", {
        "title": title,
        "authors": authors,
        "year": year,
        "venue": venue.name,
        "venue_full_name": venue.full_name,
        "venue_kind": venue.kind,
        "rank": venue.rank,
        "area": venue.area,
        "ccf_rank": f"CCF-{venue.rank}",
        "dblp_key": key,
        "doi": doi or _doi_of(ees),
        "ee": ees,
        "access": access,
        "dblp_type": dblp_type,
        "pages": pages,
        "category": categories.check(categories.from_venue(category, title)),
        "tags": [venue.name, f"CCF-{venue.rank}", venue.area],
        "license": "metadata: CC0 1.0 (dblp); paper: see its publisher",
        "fetched_at": fetched_at,
    })


# --------------------------------------------------------------------------- DBLP search API
def parse_hits(body: bytes) -> tuple[dict | None, str | None]:
    """The `hits` object of a DBLP JSON answer, or (None, reason)."""
    try:
        data = json.loads(body)
        hits = data["result"]["hits"]
        int(hits["@total"])
        return hits, None
    except (ValueError, KeyError, TypeError) as e:
        return None, f"{type(e).__name__}"


class CcfStage(Stage):
    name = "ccf"

    def __init__(self, config: CcfSource):
        super().__init__(config)
        self.venues, self.area_cat = select_venues(config)

    def tasks(self, inputs) -> list[Task]:
        if self.config.mode == "dump":
            return [Task(0, (str(self.config.dump),))]
        return [Task(i, (v.dblp,), {"venue": v.name}) for i, v in enumerate(self.venues)]

    def category(self, v: CcfVenue) -> str:
        return v.category or self.area_cat[v.area]

    def process(self, task: Task, sink: Sink) -> None:
        if self.config.mode == "dump":
            self.process_dump(Path(task.inputs[0]), sink)
        else:
            self.process_api(self.venues[task.index], task, sink)

    # -- api
    def harvest(self, venue: CcfVenue, ckpt: Checkpoint, client: PoliteClient, sink: Sink) -> None:
        c = self.config
        years = sorted(c.years)
        while not ckpt.get("done"):
            yi, offset = ckpt.get("cursor") or [0, 0]
            if yi >= len(years):
                ckpt.save(done=True)
                break
            year = years[yi]
            params = {"q": c.query.format(dblp=venue.dblp, year=year), "format": "json", "h": c.page_size,
                      "f": offset, "c": 0}
            for attempt in range(c.malformed_refetches + 1):
                got = client.get(c.endpoint, params=params, accept="application/json")
                hits, problem = parse_hits(got.body) if got.status == 200 else (None, f"http_{got.status}")
                if hits is not None or attempt == c.malformed_refetches:
                    break
                sink.stat("dblp_refetch_malformed")
            if hits is None:  # this year's listing cannot be trusted further: record it, go on
                events = ckpt.get("events", []) + [{"reason": "bad_json" if not problem.startswith("http_")
                                                    else problem, "url": got.url, "year": year, "offset": offset,
                                                    "detail": problem}]
                ckpt.save(events=events, cursor=[yi + 1, 0])
                continue
            total = min(int(hits["@total"]), c.max_hits_per_query)
            sent = len(_as_list((hits.get("hit") or [])))
            nxt = offset + c.page_size
            cursor = [yi, nxt] if sent and nxt < total else [yi + 1, 0]
            ckpt.add_page(got.body, cursor, url=got.url, year=year, fetched_at=iso_utc(got.fetched_at))

    def process_api(self, venue: CcfVenue, task: Task, sink: Sink) -> None:
        ckpt = harvest_task(sink, task.index, self.config.http, "dblp",
                            lambda ckpt, client: self.harvest(venue, ckpt, client, sink))
        seen: set[str] = set()
        prefix = venue.dblp.rstrip("/") + "/"
        for meta, body in ckpt.iter_pages():
            hits, _ = parse_hits(body)
            for hit in _as_list(hits.get("hit")):
                sink.take()
                info = hit.get("info") if isinstance(hit, dict) else None
                if not isinstance(info, dict):
                    sink.quarantine({"hit": hit}, "missing_field:info")
                    continue
                key, title = info.get("key"), _clean(info.get("title"))
                if not key or not title:
                    sink.quarantine({"key": key, "url": meta["url"]}, f"missing_field:{'key' if not key else 'title'}")
                    continue
                if not key.startswith(prefix):
                    sink.drop({"key": key}, "other_venue")  # the search is by stream, yet be strict
                    continue
                if info.get("type") == "Editorship":
                    sink.drop({"key": key}, "proceedings_volume")
                    continue
                if key in seen:
                    sink.drop({"key": key}, "duplicate")
                    continue
                seen.add(key)
                authors = [_clean(a.get("text") if isinstance(a, dict) else a)
                           for a in _as_list((info.get("authors") or {}).get("author"))]
                try:
                    year = int(info.get("year"))
                except (TypeError, ValueError):
                    year = meta.get("year")
                sink.write(paper_doc(key=key, title=title, authors=[a for a in authors if a], year=year,
                                     venue=venue, category=self.category(venue),
                                     ees=[_clean(e) for e in _as_list(info.get("ee")) if e],
                                     doi=info.get("doi"), fetched_at=meta["fetched_at"], access=info.get("access"),
                                     dblp_type=info.get("type"), pages=info.get("pages")))

    # -- dump
    def process_dump(self, path: Path, sink: Sink) -> None:
        if not path.is_file():
            sink.take()
            sink.quarantine({"path": str(path)}, "dump_missing")
            return
        by_prefix = {v.dblp.rstrip("/") + "/": v for v in self.venues}
        years = set(self.config.years)
        fetched_at = iso_utc(path.stat().st_mtime)
        try:
            for key, el in iter_dump(path):
                sink.stat("dump_records")
                venue = next((v for p, v in by_prefix.items() if key.startswith(p)), None)
                if venue is None:
                    continue  # not a selected venue: out of scope, not an input
                sink.take()
                title = _clean("".join(el.find("title").itertext())) if el.find("title") is not None else ""
                year_s = el.findtext("year")
                year = int(year_s) if year_s and year_s.strip().isdigit() else None
                if not title:
                    sink.quarantine({"key": key}, "missing_field:title")
                    continue
                if years and year not in years:
                    sink.drop({"key": key, "year": year}, "year_not_selected")
                    continue
                if el.get("publtype") in ("informal", "withdrawn"):
                    sink.drop({"key": key}, f"publtype_{el.get('publtype')}")
                    continue
                ees = [_clean(e.text) for e in el.findall("ee") if e.text]
                sink.write(paper_doc(key=key, title=title, authors=[_clean("".join(a.itertext()))
                                                                    for a in el.findall("author")],
                                     year=year, venue=venue, category=self.category(venue), ees=ees, doi=None,
                                     fetched_at=fetched_at, dblp_type=el.tag, pages=el.findtext("pages")))
        except etree.XMLSyntaxError as e:
            sink.take()
            sink.quarantine({"path": path.name, "error": str(e)[:200]}, "truncated_xml")
        except (OSError, EOFError) as e:  # a .gz cut short
            sink.take()
            sink.quarantine({"path": path.name, "error": f"{type(e).__name__}: {str(e)[:160]}"}, "truncated_archive")


def iter_dump(path: Path) -> Iterator[tuple[str, etree._Element]]:
    """Stream (key, element) of the article/inproceedings records of a dblp.xml(.gz), clearing as it goes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        ctx = etree.iterparse(f, events=("end",), tag=RECORD_TAGS, load_dtd=True, resolve_entities="internal",
                              no_network=True, huge_tree=True, dtd_validation=False)
        for _, el in ctx:
            key = el.get("key")
            if key:
                yield key, el
            el.clear(keep_tail=False)
            while el.getprevious() is not None:
                del el.getparent()[0]


register_source(CcfSource, stage_runner(CcfStage))
