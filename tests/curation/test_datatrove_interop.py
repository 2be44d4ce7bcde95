"""datatrove interop: its readers feed minisigma's pipeline (the `datatrove` source), and its
JsonlReader / ParquetReader read minisigma's shards."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.pipeline.readers import JsonlReader, ParquetReader

from curation import pipeline
from curation import recipe as curation_recipe
from minisigma.core import manifest
from minisigma.core.errors import UserError
from minisigma.core.shards import ParquetShardWriter, ShardWriter, list_shards, read_docs, sha256_file

DOCS = [
    {"id": f"d{i}", "text": f"document {i}: the scheduler picks the next task ünïcödé", "source": "manpages",
     "url": f"man:sched({i})", "metadata": {"title": f"t{i}", "tags": ["os", str(i)], "scores": {"quality": i / 10}}}
    for i in range(7)
]


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_datatrove_reads_minisigma_shards(tmp_path, fmt):
    writer = ShardWriter if fmt == "jsonl.gz" else ParquetShardWriter
    with writer(tmp_path / f"00000.{fmt}") as w:
        w.write_all(DOCS[:4])
    with writer(tmp_path / f"00001.{fmt}") as w:
        w.write_all(DOCS[4:])
    reader = (JsonlReader if fmt == "jsonl.gz" else ParquetReader)(str(tmp_path), glob_pattern=f"*.{fmt}")
    got = list(reader.run())
    assert [d.id for d in got] == [d["id"] for d in DOCS]
    assert [d.text for d in got] == [d["text"] for d in DOCS]
    # datatrove's default adapter: our metadata, with the other Document fields merged into it (and
    # the file datatrove read it from)
    for d, ours in zip(got, DOCS):
        shard = tmp_path / f"0000{int(ours['id'][1:]) // 4}.{fmt}"
        assert d.metadata == {**ours["metadata"], "source": ours["source"], "url": ours["url"],
                              "file_path": str(shard)}
    # and split across ranks as datatrove's executors would
    parts = [list(reader.run(rank=r, world_size=2)) for r in range(2)]
    assert sorted(d.id for p in parts for d in p) == sorted(d["id"] for d in DOCS) and all(parts)


def _user_data(root):
    """A user's corpus as datatrove reads it: JSONL files with their own fields, and a Parquet file."""
    jl = root / "jsonl"
    jl.mkdir(parents=True)
    n = 0
    for f in range(3):
        with gzip.open(jl / f"part-{f}.jsonl.gz", "wt", encoding="utf-8") as h:
            for k in range(4):
                rec = {"doc_id": f"u{f}-{k}", "content": f"file {f} line {k}: epoll waits for events",
                       "lang": "en", "license": "cc-by", "url": f"https://ex.test/{f}/{k}"}
                if k == 3 and f == 1:
                    rec["content"] = ""  # datatrove's reader skips documents without text
                h.write(json.dumps(rec) + "\n")
                n += 1
    pqd = root / "parquet"
    pqd.mkdir()
    pq.write_table(pa.table({"text": ["raft elects a leader", "a lease bounds clock skew"],
                             "id": ["p0", "p1"], "year": [2014, 2015]}), pqd / "a.parquet")
    return jl, pqd


def _recipe(tmp_path, jl, pqd, shard_format="jsonl.gz"):
    y = tmp_path / "r.yaml"
    y.write_text(f"""
name: dt
shard_format: {shard_format}
ray: {{executor: local}}
sources:
  - type: datatrove
    name: user-jsonl
    reader: datatrove.pipeline.readers.JsonlReader
    kwargs: {{data_folder: "{jl}", glob_pattern: "*.jsonl.gz", text_key: content, id_key: doc_id,
              add_file_path: false}}
    tasks: 2
  - type: datatrove
    name: user-parquet
    source: papers
    reader: datatrove.pipeline.readers.ParquetReader
    kwargs: {{data_folder: "{pqd}"}}
""")
    return curation_recipe.load(y)


@pytest.mark.parametrize("shard_format", ["jsonl.gz", "parquet"])
def test_datatrove_source_feeds_the_pipeline(tmp_path, shard_format):
    jl, pqd = _user_data(tmp_path / "data")
    run = pipeline.curate(_recipe(tmp_path, jl, pqd, shard_format), tmp_path / "run", progress=False)
    assert manifest.verify(run) == []
    out = run / "sources" / "user-jsonl"
    shards = list_shards(out)
    assert [p.name for p in shards] == [f"0000{i}.{shard_format}" for i in range(2)]  # one per datatrove rank
    docs = [d for p in shards for d in read_docs(p)]
    assert sorted(d["id"] for d in docs) == sorted(f"u{f}-{k}" for f in range(3) for k in range(4) if (f, k) != (1, 3))
    d = next(x for x in docs if x["id"] == "u2-1")
    assert d == {"id": "u2-1", "text": "file 2 line 1: epoll waits for events", "source": "user-jsonl",
                 "url": "https://ex.test/2/1", "metadata": {"lang": "en", "license": "cc-by",
                                                           "url": "https://ex.test/2/1"}}
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["in"] == m["counts"]["out"] == 11
    papers = [d for p in list_shards(run / "sources" / "user-parquet") for d in read_docs(p)]
    where = str(pqd / "a.parquet")  # datatrove's readers add the input file unless add_file_path: false
    assert papers == [
        {"id": "p0", "text": "raft elects a leader", "source": "papers", "url": "datatrove://user-parquet/p0",
         "metadata": {"year": 2014, "file_path": where}},
        {"id": "p1", "text": "a lease bounds clock skew", "source": "papers", "url": "datatrove://user-parquet/p1",
         "metadata": {"year": 2015, "file_path": where}}]
    # a rerun in a fresh directory gives the same bytes
    again = pipeline.curate(_recipe(tmp_path, jl, pqd, shard_format), tmp_path / "run2", progress=False)
    assert [sha256_file(p) for p in list_shards(again / "sources" / "user-jsonl")] == [sha256_file(p) for p in shards]


def test_round_trip_minisigma_datatrove_minisigma(tmp_path):
    """minisigma shards read through the datatrove source come back with their ids, text and metadata."""
    with ParquetShardWriter(tmp_path / "curated" / "00000.parquet") as w:
        w.write_all(DOCS)
    y = tmp_path / "r.yaml"
    y.write_text(f"""
name: rt
ray: {{executor: local}}
sources:
  - {{type: datatrove, name: again, reader: datatrove.pipeline.readers.ParquetReader,
     kwargs: {{data_folder: "{tmp_path / 'curated'}"}}}}
""")
    run = pipeline.curate(curation_recipe.load(y), tmp_path / "run", progress=False)
    back = [d for p in list_shards(run / "sources" / "again") for d in read_docs(p)]
    assert [(d["id"], d["text"], d["url"]) for d in back] == [(d["id"], d["text"], d["url"]) for d in DOCS]
    shard = str(tmp_path / "curated" / "00000.parquet")
    assert [d["metadata"] for d in back] == [{**d["metadata"], "source": d["source"], "url": d["url"],
                                              "file_path": shard} for d in DOCS]


def test_bad_datatrove_sections_are_one_line_errors(tmp_path):
    y = tmp_path / "r.yaml"
    for reader, kwargs, msg in [
        ("datatrove.pipeline.readers.NoSuchReader", "{}", "cannot import datatrove.pipeline.readers.NoSuchReader"),
        ("json.JSONDecoder", "{}", "is not a datatrove reader"),
        ("JsonlReader", "{}", "expected a class path"),
    ]:
        y.write_text(f"name: x\nsources: [{{type: datatrove, reader: {reader}, kwargs: {kwargs}}}]\n")
        with pytest.raises(UserError, match=msg) as e:
            curation_recipe.load(y)
        assert "\n" not in str(e.value) and str(e.value).startswith(str(y))
    y.write_text("name: x\nray: {executor: local}\n"
                 "sources: [{type: datatrove, reader: datatrove.pipeline.readers.JsonlReader, kwargs: {folder: a}}]\n")
    with pytest.raises(UserError, match=r"sources.datatrove: datatrove.pipeline.readers.JsonlReader\(\*\*kwargs\): "):
        pipeline.curate(curation_recipe.load(y), tmp_path / "run", progress=False)


def test_shipped_datatrove_recipe_runs(tmp_path):
    """recipes/curation/datatrove.yaml, pointed at a folder of minisigma shards, curates them again."""
    from benchmarks.realtext import stdlib_docs

    docs = [d for d in stdlib_docs() if len(d["text"].split()) > 200][:12]
    with ShardWriter(tmp_path / "curated" / "00000.jsonl.gz") as w:
        w.write_all(docs)
    r = curation_recipe.load("recipes/curation/datatrove.yaml")
    src = r.sources[0].model_copy(update={"kwargs": {**r.sources[0].kwargs, "data_folder": str(tmp_path / "curated")}})
    r = r.model_copy(update={"sources": [src], "ray": r.ray.model_copy(update={"executor": "local"}),
                             "refine": r.refine.model_copy(update={"executor": "local"})})
    run = pipeline.curate(r, tmp_path / "run", progress=False)
    assert manifest.verify(run) == []
    curated = list_shards(run / "curated")
    assert curated and all(p.name.endswith(".parquet") for p in curated)
    back = {d["id"]: d for p in curated for d in read_docs(p)}
    assert len(back) >= 10 and set(back) <= {d["id"] for d in docs}  # real documentation: nearly all kept
    assert all(back[d["id"]]["metadata"]["url"] == d["url"] for d in docs if d["id"] in back)
