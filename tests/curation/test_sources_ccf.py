"""CCF venues from DBLP: the search API (loopback server with DBLP's JSON pages) and a dblp.xml dump."""

from __future__ import annotations

import gzip

import pytest

from curation.sources.ccf import CcfManifest, CcfSource, CcfStage
from curation.sources.common import SOURCE_MANIFESTS, load_manifest
from curation.sources.http import FetchFailed
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import iter_docs, list_shards
from tests.sources_fixtures import HTTP_CONFIG, DblpApp, LoopbackServer, dblp_hit


def papers() -> dict:
    osdi22 = [dblp_hit(f"conf/osdi/P22{i}", f"Kernel bypass scheduling {i}.", 2022, "OSDI",
                       ee=[f"https://doi.org/10.5555/osdi22.{i}", f"https://www.usenix.org/osdi22/p{i}"],
                       authors=("Ada Lovelace", "Linus Torvalds")) for i in range(5)]
    osdi22[1]["info"].pop("title")  # malformed hit
    osdi22[2]["info"]["key"] = "conf/osdiw/X22"  # a different stream slipped into the results
    osdi22.append(dblp_hit("conf/osdi/2022", "16th USENIX OSDI 2022", 2022, "OSDI", typ="Editorship"))
    osdi23 = [dblp_hit(f"conf/osdi/P23{i}", f"Storage paper {i}", 2023, "OSDI",
                       ee=f"https://www.usenix.org/osdi23/p{i}", access="closed" if i else "open") for i in range(3)]
    fast23 = [dblp_hit(f"conf/fast/F23{i}", f"Log-structured merge tree {i}", 2023, "FAST") for i in range(2)]
    return {("conf/osdi", 2022): osdi22, ("conf/osdi", 2023): osdi23, ("conf/fast", 2023): fast23,
            ("conf/fast", 2022): []}


def source(url: str, **kw) -> CcfSource:
    return CcfSource.model_validate({"venues": ["OSDI", "FAST"], "years": [2022, 2023], "page_size": 2,
                                     "endpoint": f"{url}/search/publ/api", "http": HTTP_CONFIG, **kw})


def test_manifest_lists_the_a_venues_of_every_systems_area():
    m = load_manifest(SOURCE_MANIFESTS / "ccf_venues.yaml", CcfManifest)
    a = {v.name for v in m.venues if v.rank == "A"}
    assert {"OSDI", "SOSP", "ISCA", "FAST", "SIGCOMM", "NSDI", "CCS", "USENIX Security", "SIGMOD", "VLDB",
            "ICSE", "PLDI", "EuroSys", "USENIX ATC"} <= a
    assert {v.area for v in m.venues} == {"arch", "net", "sec", "se", "db"}
    assert len({v.dblp for v in m.venues}) == len(m.venues)


def test_ccf_api_pages_and_documents(tmp_path):
    app = DblpApp(papers(), broken={("conf/fast", 2023, 0): b'{"result": {"hits": {"@total": "2", "hit": [{"in'})
    with LoopbackServer(app) as srv:
        m = run_stage(CcfStage(source(srv.url)), [], tmp_path / "ccf", executor="local", progress=False)
    docs = {d["metadata"]["dblp_key"]: d for d in iter_docs(tmp_path / "ccf")}
    assert sorted(docs) == ["conf/osdi/P220", "conf/osdi/P223", "conf/osdi/P224", "conf/osdi/P230",
                            "conf/osdi/P231", "conf/osdi/P232"]
    d = docs["conf/osdi/P220"]
    assert d["text"] == "Kernel bypass scheduling 0" and d["source"] == "ccf"
    md = d["metadata"]
    assert (md["venue"], md["rank"], md["area"], md["year"], md["category"]) == ("OSDI", "A", "se", 2022, "os_kernel")
    assert md["doi"] == "10.5555/osdi22.0" and md["authors"] == ["Ada Lovelace", "Linus Torvalds"]
    c = m["counts"]
    assert c["quarantined"] == {"bad_json": 1, "missing_field:title": 1}
    assert c["dropped"] == {"other_venue": 1, "proceedings_volume": 1}
    assert manifest.verify(tmp_path / "ccf") == []
    offsets = [(h.query["q"], h.query["f"], h.query["h"]) for h in srv.log]
    assert offsets[:4] == [("stream:streams/conf/osdi: year:2022:", "0", "2"),
                           ("stream:streams/conf/osdi: year:2022:", "2", "2"),
                           ("stream:streams/conf/osdi: year:2022:", "4", "2"),
                           ("stream:streams/conf/osdi: year:2023:", "0", "2")]
    assert sum(1 for h in srv.log if "conf/fast: year:2023" in h.query["q"]) == 2  # refetched once, then counted
    assert all(HTTP_CONFIG["contact"] in h.headers["user-agent"] for h in srv.log)
    gaps = [b.t - a.t for a, b in zip(srv.log, srv.log[1:])]
    assert min(gaps) >= HTTP_CONFIG["min_interval_s"] * 0.95


def test_ccf_api_interrupted_harvest_resumes_at_offset(tmp_path):
    with LoopbackServer(DblpApp(papers())) as srv:
        run_stage(CcfStage(source(srv.url)), [], tmp_path / "ref", executor="local", progress=False)
    app = DblpApp(papers(), down_after=2)
    with LoopbackServer(app) as srv:
        with pytest.raises(FetchFailed):
            run_stage(CcfStage(source(srv.url)), [], tmp_path / "ccf", executor="local", progress=False)
        n = len(srv.log)
        app.down_after = None
        m = run_stage(CcfStage(source(srv.url)), [], tmp_path / "ccf", executor="local", progress=False)
    assert (srv.log[n].query["q"], srv.log[n].query["f"]) == ("stream:streams/conf/osdi: year:2022:", "4")
    assert m["stats"]["dblp_resumed_from_checkpoint"] == 1
    # Same documents, shard by shard (fetched_at is the honest wall time of each page's fetch).
    assert [p.name for p in list_shards(tmp_path / "ccf")] == [p.name for p in list_shards(tmp_path / "ref")]
    assert without_fetch_time(tmp_path / "ccf") == without_fetch_time(tmp_path / "ref")
    assert manifest.verify(tmp_path / "ccf") == []


def without_fetch_time(d):
    out = []
    for doc in iter_docs(d):
        doc["metadata"].pop("fetched_at")
        out.append(doc)
    return out


DTD = '<!ELEMENT dblp ANY>\n<!ENTITY uuml "&#252;">\n<!ENTITY eacute "&#233;">\n'


def dump_xml(n: int = 6) -> str:
    recs = []
    for i in range(n):
        recs.append(f'<inproceedings key="conf/sosp/S{i}" mdate="2024-01-01"><author>J&uuml;rgen M{i}</author>'
                    f'<author>Ren&eacute;e K</author><title>Paging <i>at</i> scale {i}.</title><pages>1-14</pages>'
                    f'<year>{2021 + i % 3}</year><booktitle>SOSP</booktitle>'
                    f'<ee>https://doi.org/10.1145/sosp.{i}</ee><crossref>conf/sosp/2021</crossref></inproceedings>')
    recs.insert(2, '<article key="journals/tocs/T1" mdate="2024-01-01"><author>A B</author><title>Journal on '
                   'consensus</title><year>2022</year><journal>ACM Trans. Comput. Syst.</journal></article>')
    recs.insert(3, '<article key="journals/cacm/X" mdate="2024-01-01"><title>Out of scope</title><year>2022</year>'
                   '</article>')
    recs.insert(4, '<inproceedings key="conf/sosp/NoTitle" mdate="2024-01-01"><year>2022</year></inproceedings>')
    return ('<?xml version="1.0" encoding="ISO-8859-1"?>\n<!DOCTYPE dblp SYSTEM "dblp.dtd">\n<dblp>\n'
            + "\n".join(recs) + "\n</dblp>\n")


def test_ccf_dump_streaming_entities_years_and_truncation(tmp_path):
    (tmp_path / "dblp.dtd").write_text(DTD)
    full = dump_xml().encode("latin-1")
    (tmp_path / "dblp.xml.gz").write_bytes(gzip.compress(full))
    cfg = {"mode": "dump", "dump": str(tmp_path / "dblp.xml.gz"), "venues": ["SOSP", "TOCS"], "years": [2022, 2023]}
    m = run_stage(CcfStage(CcfSource.model_validate(cfg)), [], tmp_path / "ccf", executor="local", progress=False)
    docs = {d["metadata"]["dblp_key"]: d for d in iter_docs(tmp_path / "ccf")}
    assert sorted(docs) == ["conf/sosp/S1", "conf/sosp/S2", "conf/sosp/S4", "conf/sosp/S5", "journals/tocs/T1"]
    assert docs["conf/sosp/S1"]["metadata"]["authors"] == ["Jürgen M1", "Renée K"]
    assert docs["conf/sosp/S1"]["text"] == "Paging at scale 1"
    assert docs["journals/tocs/T1"]["metadata"]["rank"] == "A"
    assert m["counts"]["dropped"] == {"year_not_selected": 2}
    assert m["counts"]["quarantined"] == {"missing_field:title": 1}
    assert manifest.verify(tmp_path / "ccf") == []

    # A dump that ends mid-record: what came before the cut is kept, the cut is counted.
    cut = full[: full.index(b"scale 4") + 3]
    (tmp_path / "cut.xml").write_bytes(cut)
    cfg["dump"] = str(tmp_path / "cut.xml")
    m = run_stage(CcfStage(CcfSource.model_validate(cfg)), [], tmp_path / "cut", executor="local", progress=False)
    assert sorted(d["metadata"]["dblp_key"] for d in iter_docs(tmp_path / "cut")) == \
        ["conf/sosp/S1", "conf/sosp/S2", "journals/tocs/T1"]
    assert m["counts"]["quarantined"]["truncated_xml"] == 1
    assert manifest.verify(tmp_path / "cut") == []
