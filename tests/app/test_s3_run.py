"""Runs on object storage: a real S3-compatible server (moto's standalone server) on 127.0.0.1 and a
two-node `ray.cluster_utils` cluster. The workers are started before the S3 settings exist in this
process, so they reach the server only through the settings the runner passes them.

- a stage on two nodes into s3:// with a worker killed mid-shard: byte-identical to a local run, and a
  rerun from an empty cache (another machine) resumes every shard from the markers in the bucket;
- a small curation (localdocs fetch, man pages, crawl, extract, refine with exact and MinHash dedup)
  into s3:// on two nodes: `minisigma manifest verify s3://...` passes and every shard is
  byte-identical to the same recipe run locally from the same crawl (see CRAWLS);
- (slow) `minisigma curate recipes/curation/tiny.yaml --out s3://bucket/runs/t` on two nodes;
- `minisigma classifier train` and `minisigma refine` with `--run` at a URL: in-process on memory://
  (byte-identical to a local run, resumed from an empty cache without training again) and (slow) on
  the command line into S3 on two nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from minisigma.core import manifest, storage
from minisigma.core.runner import run_stage
from minisigma.core.shards import sha256_file
from tests.core.test_runner import hashes, make_inputs
from tests.stages_fixture import MinWords

REPO = Path(__file__).resolve().parents[2]
needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("groff") is None,
                               reason="needs apt-get (Debian registry) and groff")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 server on 127.0.0.1, and this process's AWS_* settings pointing at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        yield port
    finally:
        server.stop()


@pytest.fixture
def s3(two_node_cluster, s3_server):  # (the cluster first: its workers never see AWS_*)
    """A fresh run location in a new bucket; yields its URL."""
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/runs/t"
    cache = storage.run_dir(url)  # bound here, so a stage under it caches inside (removed below)
    try:
        yield url
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        storage.unbind(cache)


def s3_bytes(url: str, suffixes=(".jsonl.gz", ".warc.gz", ".parquet")) -> dict[str, str]:
    """sha256 of every shard under `url`, by relative path (work files and rejects included)."""
    return {rel: storage.sha256(f"{url}/{rel}") for rel in storage.find(url) if rel.endswith(suffixes)}


def local_bytes(root: Path, suffixes=(".jsonl.gz", ".warc.gz", ".parquet")) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*")
            if p.is_file() and p.name.endswith(suffixes) and not p.name.startswith(".")}


# The stages that crawl record each page's fetch time and loopback port, so no two crawls give the
# same bytes; every other stage is a function of its inputs. A run on S3 is compared with a local run
# from the same crawl: the local run's crawl stages are moved into the bucket first (a moved run
# directory resumes: its markers name paths relative to the run), and the rest is made on two nodes.
CRAWLS = ("fetch", "crawl")


def seed(local: Path, url: str, stages=CRAWLS) -> None:
    fs, root = storage.filesystem(url)
    for stage in stages:
        for p in sorted((local / stage).rglob("*")):
            if p.is_file():
                fs.put_file(str(p), f"{root}/{p.relative_to(local).as_posix()}")


def cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "minisigma.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_stage_to_s3_on_two_nodes_survives_a_killed_worker_and_resumes_elsewhere(tmp_path, s3):
    inputs = make_inputs(tmp_path / "in", shards=6, docs=40)
    run_stage(MinWords(3), inputs, tmp_path / "reference", executor="local", progress=False)
    stage = f"{s3}/minwords"
    markers = tmp_path / "markers"
    markers.mkdir()
    result: dict = {}

    def run():
        try:
            result["m"] = run_stage(MinWords(3, slow=0.05, marker_dir=str(markers)), inputs, stage,
                                    progress=False, max_retries=3)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    victim, deadline = None, time.time() + 120
    while victim is None and time.time() < deadline:
        started = sorted(markers.iterdir())
        if started:
            victim = int(started[0].name.split(".")[2])
        else:
            time.sleep(0.05)
    assert victim is not None, "no task started"
    os.kill(victim, signal.SIGKILL)  # a worker dies in the middle of its shard
    t.join(timeout=300)
    assert "error" not in result, result.get("error")
    m = result["m"]
    assert m["cluster"]["nodes"] == 2
    assert len({p.name.split(".")[3] for p in markers.iterdir()}) == 2  # tasks ran on both nodes
    restarted = [p for p in markers.iterdir() if p.name.split(".")[1] == started[0].name.split(".")[1]]
    assert len(restarted) >= 2, "the killed shard was not retried"
    assert {k: v for k, v in s3_bytes(stage).items() if "/" not in k} == hashes(tmp_path / "reference")
    assert manifest.verify(stage) == []
    # Another machine: an empty cache. The rerun trusts the markers in the bucket and runs nothing.
    shutil.rmtree(storage.local_of(stage))
    again = run_stage(MinWords(3), inputs, stage, progress=False)
    assert again["resumed_shards"] == 6 and again["repairs"] == []
    assert hashes(storage.local_of(stage)) == hashes(tmp_path / "reference")


def small_recipe(tmp_path: Path, executor: str, storage_options: dict | None = None) -> Path:
    """Every stage kind of `minisigma curate`, cheaply: two small Debian packages (fetch, man pages, an
    HTML tree crawled over loopback, extraction) and refine with exact and MinHash dedup."""
    recipe = {
        "name": "s3-small",
        "ray": {"executor": executor},
        "sources": [{"type": "localdocs", "packages": ["grep", "bash-doc"]}],
        "crawl": {"allow_loopback": True, "max_pages": 20, "max_depth": 2, "per_host_rate": 200.0,
                  "per_host_concurrency": 4},
        "extract": {"min_chars": 200},
        "refine": {"executor": executor, "stages": ["normalize", "heuristics", "dedup_exact", "minhash"],
                   "heuristics": {"min_words": 30}, "minhash": {"threshold": 0.8, "num_perm": 64}},
    }
    if storage_options:
        recipe["storage_options"] = storage_options
    p = tmp_path / f"small-{executor}.yaml"
    p.write_text(yaml.safe_dump(recipe))
    return p


def test_curation_to_a_memory_url_is_byte_identical_to_a_local_run(tmp_path):
    """A source and the refine stages (exact and MinHash dedup, with their work folders) into memory://
    in-process: the same shards as a local run, paths in the manifests relative to the run."""
    import tests.source_plugin  # noqa: F401  (registers type: paragraphs)
    from curation.pipeline import curate
    from curation.recipe import load

    words = "the scheduler picks the next runnable thread from the run queue of each processor core".split()
    paras = [" ".join(words[i:] + words[:i]) + f" and page {i} of the cache keeps blocks in memory" for i in range(12)]
    paras += paras[:3] + [paras[4] + " again"]  # exact and near duplicates
    notes = tmp_path / "notes.txt"
    notes.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "m", "ray": {"executor": "local"},
                                 "sources": [{"type": "paragraphs", "name": "notes", "path": str(notes)}],
                                 "refine": {"executor": "local", "stages": ["normalize", "heuristics", "dedup_exact",
                                                                            "minhash"],
                                            "heuristics": {"min_words": 5}, "minhash": {"threshold": 0.7}}}))
    local = curate(load(p), tmp_path / "local", progress=False)
    url = f"memory://m-{uuid.uuid4().hex[:8]}/runs/t"
    try:
        cache = curate(load(p), url, progress=False)
        theirs = local_bytes(local)
        assert {"sources/notes/00000.jsonl.gz", "refine/dedup_exact/00000.jsonl.gz", "curated/00000.jsonl.gz"} <= \
            set(theirs)
        assert s3_bytes(url) == theirs
        assert manifest.verify(url) == []
        dropped = manifest.read_json(f"{url}/refine/dedup_exact/manifest.json")["counts"]["dropped"]
        assert sum(dropped.values()) == 3
        text = storage.read_bytes(f"{url}/refine/normalize/manifest.json").decode()
        assert str(cache) not in text and '"../../sources/notes/00000.jsonl.gz"' in text
    finally:
        storage.rm("memory://" + url.split("://")[1].split("/")[0], recursive=True)
        shutil.rmtree(storage.local_of(url), ignore_errors=True)


@pytest.mark.slow
@needs_apt
def test_small_curation_to_s3_on_two_nodes_is_byte_identical_to_a_local_run(tmp_path, s3, two_node_cluster,
                                                                           monkeypatch):
    from curation.pipeline import curate
    from curation.recipe import load

    local = curate(load(small_recipe(tmp_path, "local")), tmp_path / "local", progress=False)
    seed(local, s3)
    # the endpoint from the recipe's storage options this time, not the environment
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setattr(storage, "_OPTIONS", {})  # restored after the test
    curate(load(small_recipe(tmp_path, "ray", {"s3": {"endpoint_url": endpoint}})), s3, progress=False)
    m = manifest.read_json(f"{s3}/extract/manifest.json")
    assert m["cluster"]["nodes"] == 2 and m["resumed_shards"] == 0  # made here, on two nodes
    assert manifest.read_json(f"{s3}/crawl/manifest.json")["resumed_shards"] >= 1  # moved in, trusted
    ours = s3_bytes(s3)
    theirs = local_bytes(local)
    assert {"fetch/00000.jsonl.gz", "sources/manpages/00000.jsonl.gz", "crawl/00000.warc.gz",
            "extract/00000.jsonl.gz", "refine/dedup_exact/00000.jsonl.gz", "curated/00000.jsonl.gz"} <= set(theirs)
    assert ours == theirs
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the command line takes it from the environment
    r = cli("manifest", "verify", s3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 problem(s)" in r.stdout
    # the manifests record paths relative to the run: nothing names the local cache
    m = storage.read_bytes(f"{s3}/refine/normalize/manifest.json").decode()
    assert str(storage.local_of(s3)) not in m and '"../../extract/00000.jsonl.gz"' in m


@pytest.mark.slow
@needs_apt
def test_tiny_curation_cli_to_s3_on_two_nodes(tmp_path, s3, two_node_cluster):
    local = tmp_path / "local"
    r = cli("curate", "recipes/curation/tiny.yaml", "--out", local, "--quiet", timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    seed(local, s3)
    r = cli("curate", "recipes/curation/tiny.yaml", "--out", s3, "--quiet", "--ray-address",
            two_node_cluster.address, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli("manifest", "verify", s3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 problem(s)" in r.stdout
    ours, theirs = s3_bytes(s3), local_bytes(local)
    assert {"sources/manpages/00000.jsonl.gz", "extract/00000.jsonl.gz", "curated/00000.jsonl.gz"} <= set(theirs)
    assert ours == theirs
    assert manifest.read_json(f"{s3}/extract/manifest.json")["cluster"]["nodes"] == 2


def test_commands_without_url_support_say_so_in_one_line(tmp_path):
    r = cli("synth", "recipes/synth/mini.yaml", "--in", "s3://bucket/runs/t/curated", "--out", tmp_path / "synth")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: s3://bucket/runs/t/curated: --in: a URL is not supported for this command "
        "(`minisigma curate --out`, `refine --run`, `classifier train --run`, `tokenize --in` and "
        "`manifest show/verify/diff` take one)"]
    r = cli("tokenize", "recipes/train/tiny.yaml", "--in", tmp_path, "--out", "gs://bucket/tokens")
    assert r.returncode == 2 and r.stderr.startswith("error: gs://bucket/tokens: --out: a URL is not supported")


def test_export_and_training_refuse_a_url_in_one_line(tmp_path):
    r = cli("export", "--checkpoint", tmp_path, "--out", "s3://bucket/hf")
    assert r.returncode == 2 and r.stderr.startswith("error: s3://bucket/hf: --out: a URL is not supported")
    assert not (REPO / "s3:").exists()  # no local folder named after the URL
    # training writes Lightning checkpoints and memory-maps its tokens: a recipe naming a URL is refused
    recipe = tmp_path / "train.yaml"
    recipe.write_text(yaml.safe_dump({"name": "t", "out_dir": "s3://bucket/runs/t/pretrain"}))
    r = cli("train", recipe)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {recipe}: out_dir: s3://bucket/runs/t/pretrain: a URL is not supported here, give a local path "
        "(README: On object storage)"]


def test_tokenize_reads_curated_shards_from_a_url(tmp_path):
    """`minisigma tokenize --in URL`: the same tokenizer and token files as from the local shards."""
    from model.data import DataSection, tokenize
    from model.tokenizer import TokenizerSection
    from tests.train_corpus import TEST_MODULES, build

    curated = build(tmp_path / "curated", TEST_MODULES[:3])
    url = f"memory://tok-{uuid.uuid4().hex[:8]}/runs/t/curated"
    fs, root = storage.filesystem(url)
    try:
        for p in sorted(curated.glob("*.jsonl.gz")):
            fs.put_file(str(p), f"{root}/{p.name}")
        section, data = TokenizerSection(vocab_size=300), DataSection(val_fraction=0.2)
        a = tokenize(section, data, curated, tmp_path / "a")
        b = tokenize(section, data, url, tmp_path / "b")
        assert a["train_tokens"] == b["train_tokens"] > 0
        for name in ("tokenizer.json", "train.bin", "val.bin"):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    finally:
        storage.rm("memory://" + url.split("://")[1].split("/")[0], recursive=True)


def test_a_bucket_that_is_not_there_is_one_line(s3_server):
    r = cli("curate", "recipes/curation/tiny.yaml", "--out", "s3://no-such-bucket/runs/t", "--quiet")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: s3://no-such-bucket/runs/t: no bucket no-such-bucket (or these credentials cannot see it)"]


# --------------------------------------------------------------------------- refine and classifiers at a URL
SMALL_CATEGORIES = {"os_kernel": ["os", "signal", "select"], "networking": ["socket", "ssl", "http.client"],
                    "storage_databases": ["sqlite3", "tarfile", "shutil"]}


def refine_run(root: Path) -> Path:
    """A run with two source shards of real documentation (weak categories, exact duplicates): what
    `minisigma classifier train` and `minisigma refine` start from."""
    from benchmarks.realtext import stdlib_docs
    from minisigma.core.shards import ShardWriter

    docs = stdlib_docs(categories=SMALL_CATEGORIES)
    docs += [{**d, "id": d["id"] + "-copy"} for d in docs[::9]]
    for s in range(2):
        with ShardWriter(root / "sources" / "pydoc" / f"{s:05d}.jsonl.gz") as w:
            w.write_all(docs[s::2])
    return root


def refine_recipe(tmp_path: Path, executor: str, storage_options: dict | None = None) -> Path:
    data = {"refine": {"executor": executor, "stages": ["normalize", "heuristics", "dedup_exact", "classify"],
                       "heuristics": {"min_words": 20}, "classify": {"quality_keep_fraction": 0.9}}}
    p = tmp_path / f"refine-{executor}.yaml"
    p.write_text(yaml.safe_dump(data))
    if storage_options:  # a whole curation recipe carries the storage options
        p.write_text(yaml.safe_dump({"name": "refine", "sources": [], "storage_options": storage_options,
                                     "refine": data["refine"]}))
    return p


def classifier_bytes(url_or_dir) -> dict[str, str]:
    return {f"{k}/model.bin": storage.sha256(storage.join(str(url_or_dir), k, "model.bin"))
            for k in ("quality", "category")}


def test_classifier_train_and_refine_on_a_memory_url_are_byte_identical_to_a_local_run(tmp_path, monkeypatch):
    """`classifier train --run URL` and `refine --run URL` in-process (memory://): the same classifiers
    and shards as the local run, verified at the URL; rerun from an empty cache, every shard resumes from
    the markers and the classifiers come from the URL (none is trained again)."""
    from curation.refine import classify
    from curation.refine.pipeline import load_refine_config, refine, train_classifiers

    monkeypatch.setenv("MINISIGMA_CACHE", str(tmp_path / "cache"))
    local = refine_run(tmp_path / "local")
    url = f"memory://r-{uuid.uuid4().hex[:8]}/runs/t"
    seed(local, url, stages=("sources",))
    c = load_refine_config(refine_recipe(tmp_path, "local"))
    try:
        train_classifiers(local, c)
        info = train_classifiers(url, c, f"{url}/sources/pydoc")  # --docs at the URL: the same documents
        assert info["category"]["labels"] == sorted(SMALL_CATEGORIES)
        assert classifier_bytes(url + "/classifiers") == classifier_bytes(local / "classifiers")
        refine(local, c, progress=False)
        refine(url, c, progress=False)
        ours, theirs = s3_bytes(url), local_bytes(local)
        assert {"refine/dedup_exact/00000.jsonl.gz", "curated/00001.jsonl.gz"} <= set(theirs) and ours == theirs
        assert manifest.verify(url) == []
        m = manifest.read_json(f"{url}/curated/manifest.json")
        assert m["counts"]["dropped"].get("quality_below_threshold", 0) > 0
        assert m["inputs"][0]["path"] == "../refine/dedup_exact/00000.jsonl.gz"
        # another machine: an empty cache; the classifiers are pulled from the URL, not trained again
        shutil.rmtree(storage.local_of(url))
        monkeypatch.setattr(classify, "train_from_shards", lambda *a: pytest.fail("trained the classifiers again"))
        refine(url, c, progress=False)
        again = manifest.read_json(f"{url}/curated/manifest.json")
        assert again["resumed_shards"] == 2 and again["repairs"] == []
        assert s3_bytes(url) == theirs
    finally:
        storage.rm("memory://" + url.split("://")[1].split("/")[0], recursive=True)


@pytest.mark.slow  # about a minute here: two command-line processes joining the cluster, fastText twice
def test_classifier_train_and_refine_cli_to_s3_on_two_nodes(tmp_path, s3, two_node_cluster):
    """The two commands on the command line into moto's S3 server, refine's tasks on two Ray nodes, the
    endpoint from the recipe's storage_options: the shards and classifiers of the local run, verified."""
    from curation.refine.pipeline import load_refine_config, refine, train_classifiers

    local = refine_run(tmp_path / "local")
    c = load_refine_config(refine_recipe(tmp_path, "local"))
    train_classifiers(local, c)
    refine(local, c, progress=False)
    seed(local, s3, stages=("sources",))
    recipe = refine_recipe(tmp_path, "ray", {"s3": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}})
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}  # from the recipe only
    r = cli("classifier", "train", recipe, "--run", s3, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("quality {")
    r = cli("refine", recipe, "--run", s3, "--quiet", "--ray-address", two_node_cluster.address, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "curated" in r.stdout  # the run's table, read from the bucket
    assert s3_bytes(s3) == local_bytes(local)
    assert classifier_bytes(f"{s3}/classifiers") == classifier_bytes(local / "classifiers")
    assert manifest.read_json(f"{s3}/curated/manifest.json")["cluster"]["nodes"] == 2
    assert manifest.verify(s3) == []
