"""Runs on Google Cloud Storage: gs:// through gcsfs against a real GCS emulator on 127.0.0.1
(gcp-storage-emulator's JSON API server, in memory), reached the standard way (STORAGE_EMULATOR_HOST).

gcsfs (2026.x) by default first asks the gRPC Storage Control API what kind of bucket it talks to
(zonal, hierarchical), which no emulator implements: each lookup then waits a minute before falling
back. GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, read when gcsfs is imported, turns that off; the
storage layer carries both variables to Ray workers (storage.CLOUD_ENV).

- a small curation (a source, then refine with exact and MinHash dedup and their work folders) into
  gs:// on two Ray nodes whose workers were started before the GCS settings existed: every shard is
  byte-identical to a local run, and `minisigma manifest verify gs://...` passes;
- a bucket that is not there is one line.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import uuid

import pytest
import yaml

from minisigma.core import manifest, storage
from tests.app.test_s3_run import cli, free_port, local_bytes, s3_bytes


@pytest.fixture
def gcs_server(monkeypatch):
    """The GCS emulator on 127.0.0.1 with one bucket, and this process's GCS settings pointing at it;
    yields the bucket's name."""
    from fsspec.registry import _registry
    from gcp_storage_emulator.server import create_server

    bucket = f"b-{uuid.uuid4().hex[:8]}"
    port = free_port()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    if "gcsfs" in sys.modules:  # imported before with the setting on: import it again with it off
        importlib.reload(sys.modules["gcsfs"])
    for proto in ("gs", "gcs"):  # fsspec resolves the class again (the restored one after the test)
        monkeypatch.delitem(_registry, proto, raising=False)
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    try:
        yield bucket
    finally:
        server.stop()


@pytest.fixture
def gcs(two_node_cluster, gcs_server):  # the cluster first: its workers never see the GCS settings
    """A fresh run location in the emulator's bucket; yields its URL."""
    url = f"gs://{gcs_server}/runs/t"
    cache = storage.run_dir(url)
    try:
        yield url
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        storage.unbind(cache)


def test_curation_to_gcs_on_two_nodes_is_byte_identical_to_a_local_run(tmp_path, gcs):
    import tests.source_plugin  # noqa: F401  (registers type: paragraphs)
    from curation.pipeline import curate
    from curation.recipe import load

    words = "the scheduler picks the next runnable thread from the run queue of each processor core".split()
    paras = [" ".join(words[i:] + words[:i]) + f" and page {i} of the cache keeps blocks in memory" for i in range(12)]
    paras += paras[:3] + [paras[4] + " again"]  # exact and near duplicates
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(paras) + "\n", encoding="utf-8")

    def recipe(executor: str):
        p = tmp_path / f"{executor}.yaml"
        p.write_text(yaml.safe_dump({
            "name": "g", "ray": {"executor": executor},
            "sources": [{"type": "paragraphs", "name": "notes", "path": str(notes)}],
            "refine": {"executor": executor, "stages": ["normalize", "heuristics", "dedup_exact", "minhash"],
                       "heuristics": {"min_words": 5}, "minhash": {"threshold": 0.7}}}))
        return load(p)

    local = curate(recipe("local"), tmp_path / "local", progress=False)
    curate(recipe("ray"), gcs, progress=False)
    theirs = local_bytes(local)
    assert {"sources/notes/00000.jsonl.gz", "refine/dedup_exact/00000.jsonl.gz", "curated/00000.jsonl.gz"} <= \
        set(theirs)
    assert s3_bytes(gcs) == theirs
    m = manifest.read_json(f"{gcs}/curated/manifest.json")
    assert m["cluster"]["nodes"] == 2 and sum(m["counts"]["dropped"].values()) > 0
    r = cli("manifest", "verify", gcs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 problem(s)" in r.stdout


def test_a_gcs_bucket_that_is_not_there_is_one_line(gcs_server):
    r = cli("curate", "recipes/curation/tiny.yaml", "--out", "gs://no-such-bucket/runs/t", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: gs://no-such-bucket/runs/t: no bucket no-such-bucket (or these credentials cannot see it)"]
