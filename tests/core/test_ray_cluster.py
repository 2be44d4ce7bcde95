"""The runner on a real multi-node Ray cluster on this machine, including a worker killed mid-stage."""

from __future__ import annotations

import os
import signal
import threading
import time

from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import list_shards, sha256_file
from tests.stages_fixture import MinWords
from tests.core.test_runner import make_inputs


def hashes(d):
    return {p.name: sha256_file(p) for p in list_shards(d)}


def test_stage_on_two_nodes_survives_a_killed_worker(tmp_path, two_node_cluster):
    inputs = make_inputs(tmp_path / "in", shards=6, docs=40)
    run_stage(MinWords(3), inputs, tmp_path / "reference", executor="local", progress=False)

    markers = tmp_path / "markers"
    markers.mkdir()
    result: dict = {}

    def run():
        try:
            result["m"] = run_stage(MinWords(3, slow=0.05, marker_dir=str(markers)), inputs, tmp_path / "out",
                                    progress=False, max_retries=3)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 120
    victim = None
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
    restarted = [p for p in markers.iterdir() if p.name.split(".")[1] == started[0].name.split(".")[1]]
    assert len(restarted) >= 2, "the killed shard was not retried"
    pids = {p.name.split(".")[2] for p in markers.iterdir()}
    assert len(pids) >= 2
    assert hashes(tmp_path / "out") == hashes(tmp_path / "reference")
    assert manifest.verify(tmp_path / "out") == []
    # tasks ran on both nodes
    assert len({p.name.split(".")[3] for p in markers.iterdir()}) == 2


def test_rerun_after_interrupted_driver_is_byte_identical(tmp_path, two_node_cluster):
    inputs = make_inputs(tmp_path / "in", shards=5, docs=30)
    run_stage(MinWords(3), inputs, tmp_path / "reference", executor="local", progress=False)
    out = tmp_path / "out"
    # An interrupted run leaves some finished shards and a stray temporary file behind.
    run_stage(MinWords(3), inputs[:2], out, progress=False)
    (out / ".00003.jsonl.gz.tmp-999").write_bytes(b"partial garbage")
    m = run_stage(MinWords(3), inputs, out, progress=False)
    assert m["resumed_shards"] == 2
    assert m["stale_tmp_removed"] == 1 and not (out / ".00003.jsonl.gz.tmp-999").exists()
    assert hashes(out) == hashes(tmp_path / "reference")
    assert manifest.verify(out) == []
