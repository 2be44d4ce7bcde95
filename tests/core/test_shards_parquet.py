"""Parquet shards: the writer/reader pair beside jsonl.gz, with the same manifest guarantees, read
by `datasets` as they are, and chosen by a curation recipe's `shard_format`."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from curation.recipe import CurationRecipe
from curation.refine.pipeline import RefineConfig, refine
from minisigma.core import manifest
from minisigma.core.errors import UserError
from minisigma.core.recipes import parse_recipe
from minisigma.core.runner import run_stage
from minisigma.core.shards import (ParquetShardWriter, ShardWriter, count_records, list_shards, read_docs,
                                   sha256_file, shard_writer)
from tests.stages_fixture import MinWords
from tests.core.test_runner import make_inputs

DOCS = [
    {"id": "a1", "text": "The page cache keeps file pages in memory.", "source": "manpages", "url": "man:free(1)",
     "metadata": {"title": "free", "tags": ["mm", "cache"], "scores": {"quality": 0.91}, "n": 3, "ok": True}},
    {"id": "b2", "text": "ünïcödé — 中文 and emoji 🐧\n\ttabs", "source": "blogs", "url": "https://x.test/a",
     "metadata": {}},
    {"id": "c3", "text": "", "source": "arxiv", "metadata": {"category": "os_kernel", "none": None}},  # no url
]


def test_round_trip_is_lossless_and_bytes_are_deterministic(tmp_path):
    a, b = tmp_path / "a" / "00000.parquet", tmp_path / "b" / "00000.parquet"
    for p in (a, b):
        with shard_writer(p) as w:
            assert isinstance(w, ParquetShardWriter)
            w.write_all(DOCS * 3000)  # > one row group
    assert sha256_file(a) == sha256_file(b)
    got = list(read_docs(a))
    assert got == DOCS * 3000 and count_records(a) == 9000
    f = pq.ParquetFile(a)
    assert f.metadata.num_row_groups == 3 and f.schema_arrow.names == ["id", "text", "source", "url", "metadata"]
    assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    # the same documents, same counts as the jsonl.gz writer (text bytes go into the manifest)
    with ShardWriter(tmp_path / "00000.jsonl.gz") as j:
        j.write_all(DOCS)
    with ParquetShardWriter(tmp_path / "p" / "00000.parquet") as w:
        w.write_all(DOCS)
    assert (w.count, w.text_bytes) == (j.count, j.text_bytes)


def test_a_failed_block_leaves_no_shard_and_non_documents_are_refused(tmp_path):
    p = tmp_path / "00000.parquet"
    with pytest.raises(RuntimeError):
        with ParquetShardWriter(p) as w:
            w.write(DOCS[0])
            raise RuntimeError("worker died")
    assert not p.exists() and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="holds Documents"):
        ParquetShardWriter(p).write({"id": "x", "text": "y", "task": "z"})
    with pytest.raises(ValueError, match="Document.id must be a string"):
        ParquetShardWriter(p).write({"id": 7, "text": "y"})


def test_stage_with_parquet_outputs_keeps_the_manifest_guarantees(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    stage = MinWords(3)
    stage.output_suffix = ".parquet"
    out = tmp_path / "out"
    m = run_stage(stage, inputs, out, executor="local", progress=False)
    shards = list_shards(out)
    assert [p.name for p in shards] == [f"{i:05d}.parquet" for i in range(4)]
    assert manifest.verify(out) == []
    assert [o["sha256"] for o in m["outputs"]] == [sha256_file(p) for p in shards]
    assert sum(o["docs"] for o in m["outputs"]) == m["counts"]["out"] == sum(count_records(p) for p in shards)
    # the same documents as the jsonl.gz run, in the same order
    ref = run_stage(MinWords(3), inputs, tmp_path / "ref", executor="local", progress=False)
    assert [d for p in shards for d in read_docs(p)] == [d for p in list_shards(tmp_path / "ref") for d in read_docs(p)]
    assert ref["counts"] == m["counts"]
    # a rerun after losing a shard rewrites it byte for byte
    before = {p.name: sha256_file(p) for p in shards}
    shards[2].unlink()
    run_stage(stage, inputs, out, executor="local", progress=False)
    assert {p.name: sha256_file(p) for p in list_shards(out)} == before
    # a shard rewritten behind the manifest's back is caught by verify
    with ParquetShardWriter(shards[1]) as w:
        w.write(DOCS[0])
    assert any("sha256 mismatch" in p for p in manifest.verify(out))
    # switching the stage back to jsonl.gz leaves no Parquet shard behind to be read twice
    run_stage(MinWords(3), inputs, out, executor="local", progress=False)
    assert [p.name for p in list_shards(out)] == [f"{i:05d}.jsonl.gz" for i in range(4)]
    assert manifest.verify(out) == []


def test_datasets_loads_parquet_shards(tmp_path):
    datasets = pytest.importorskip("datasets")
    with ParquetShardWriter(tmp_path / "00000.parquet") as w:
        w.write_all(DOCS[:2])
    with ParquetShardWriter(tmp_path / "00001.parquet") as w:
        w.write_all(DOCS[2:])
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in list_shards(tmp_path)), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.column_names == ["id", "text", "source", "url", "metadata"]
    assert ds["id"] == ["a1", "b2", "c3"] and ds["text"] == [d["text"] for d in DOCS]
    assert [json.loads(m) for m in ds["metadata"]] == [d["metadata"] for d in DOCS]
    assert ds[2]["url"] is None


def test_recipe_shard_format_field():
    base = {"name": "t", "sources": [{"type": "localdocs", "packages": ["grep"]}]}
    assert parse_recipe(base, CurationRecipe, "r.yaml").shard_suffix == ".jsonl.gz"
    assert parse_recipe({**base, "shard_format": "parquet"}, CurationRecipe, "r.yaml").shard_suffix == ".parquet"
    with pytest.raises(UserError, match="shard_format"):
        parse_recipe({**base, "shard_format": "csv"}, CurationRecipe, "r.yaml")


def test_refine_writes_every_stage_in_parquet(tmp_path):
    """The refine pipeline (dedups included) on Parquet gives the documents it gives on jsonl.gz."""
    words = "kernel page cache scheduler socket epoll mmap inode journal raft lease quorum".split()
    docs = [{"id": f"d{i:03d}", "source": "test", "url": f"test://{i}", "metadata": {"i": i},
             "text": " ".join(words[(i * 7 + k * 3) % len(words)] + str(k % (5 + i % 3)) for k in range(60 + i))}
            for i in range(40)]
    docs += [{**docs[i], "id": f"dup{i}"} for i in range(0, 40, 8)]  # exact duplicates
    cfg = RefineConfig(stages=["normalize", "heuristics", "dedup_exact", "minhash"], executor="local")
    runs = {}
    for fmt in ("jsonl.gz", "parquet"):
        run = tmp_path / fmt
        with shard_writer(run / "sources" / "test" / ("00000." + fmt)) as w:
            w.write_all(docs)
        out = refine(run, cfg, progress=False, shard_format=fmt)
        assert manifest.verify(run) == []
        for stage in ("refine/normalize", "refine/heuristics", "refine/dedup_exact", "curated"):
            names = {p.name for p in (run / stage).iterdir() if p.name[:5].isdigit()}
            assert names and all(n.endswith(fmt) for n in names), (stage, names)
        runs[fmt] = [d for p in list_shards(out) for d in read_docs(p)]
    assert runs["parquet"] == runs["jsonl.gz"]
    assert len(runs["parquet"]) <= 40 and not any(d["id"].startswith("dup") for d in runs["parquet"])


def test_refine_command_reads_the_shard_format(tmp_path):
    from curation.refine.pipeline import load_shard_format

    (tmp_path / "a.yaml").write_text("name: t\nshard_format: parquet\nsources: [{type: localdocs, packages: [grep]}]\n")
    (tmp_path / "b.yaml").write_text("refine: {executor: local}\n")
    (tmp_path / "c.yaml").write_text("shard_format: orc\n")
    assert load_shard_format(tmp_path / "a.yaml") == "parquet"
    assert load_shard_format(tmp_path / "b.yaml") == "jsonl.gz"
    with pytest.raises(UserError, match="shard_format: expected one of jsonl.gz, parquet, got 'orc'"):
        load_shard_format(tmp_path / "c.yaml")
