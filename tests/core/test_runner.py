"""The stage runner: resume, determinism, rejects, manifests and their verification."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest
from rich.console import Console

from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import ShardWriter, list_shards, read_docs, sha256_file
from tests.stages_fixture import MinWords


def make_inputs(d: Path, shards: int = 4, docs: int = 50, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    words = "kernel page cache scheduler socket epoll mmap inode journal raft lease quorum".split()
    paths = []
    for s in range(shards):
        p = d / f"{s:05d}.jsonl.gz"
        with ShardWriter(p) as w:
            for i in range(docs):
                if i % 17 == 5:
                    w.write({"id": f"{s}-{i}", "source": "test", "metadata": {}})  # no text: quarantined
                    continue
                n = rng.randint(0, 12)
                w.write({"id": f"{s}-{i}", "source": "test", "text": " ".join(rng.choice(words) for _ in range(n)),
                         "metadata": {}})
        paths.append(p)
    return paths


def hashes(d: Path) -> dict:
    return {p.name: sha256_file(p) for p in list_shards(d)}


def test_local_run_counts_rejects_and_manifest(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    m = run_stage(MinWords(3), inputs, tmp_path / "out", executor="local", progress=False)
    c = m["counts"]
    assert c["in"] == 200
    assert c["quarantined"] == {"no_text": 4 * 3}
    assert c["in"] == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values())
    assert c["dropped"]["too_short"] > 0
    kept = [d for p in list_shards(tmp_path / "out") for d in read_docs(p)]
    assert len(kept) == c["out"] and all(d["metadata"]["words"] >= 3 for d in kept)
    rejects = [r for p in sorted((tmp_path / "out" / "rejects").iterdir()) for r in read_docs(p)]
    assert {r["reason"] for r in rejects} == {"no_text", "too_short"}
    assert len(rejects) == sum(c["dropped"].values()) + sum(c["quarantined"].values())
    assert manifest.verify(tmp_path / "out") == []
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["inputs"][0]["sha256"] == sha256_file(inputs[0])
    assert on_disk["code"]["package"]


def test_resume_skips_finished_shards_and_is_byte_identical(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    run_stage(MinWords(3), inputs, tmp_path / "a", executor="local", progress=False)
    # Simulate a crash after two shards: remove the last two shards' commit markers and files.
    b = tmp_path / "b"
    run_stage(MinWords(3), inputs[:2], b, executor="local", progress=False)
    m = run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    assert m["resumed_shards"] == 2
    assert hashes(tmp_path / "a") == hashes(b)
    again = run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    assert again["resumed_shards"] == 4 and hashes(b) == hashes(tmp_path / "a")


def all_hashes(d: Path) -> dict:
    """Every shard and rejects file of a stage directory (the commit markers hold timings, not data)."""
    return {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*.jsonl.gz"))}


def test_rerun_repairs_damaged_finished_shards_byte_identically(tmp_path, capsys):
    inputs = make_inputs(tmp_path / "in")
    run_stage(MinWords(3), inputs, tmp_path / "a", executor="local", progress=False)
    b = tmp_path / "b"
    run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    shards = list_shards(b)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated
    rejects = b / "rejects" / shards[2].name
    edited = bytearray(rejects.read_bytes())
    edited[len(edited) // 2] ^= 0xFF  # same size, one byte changed
    rejects.write_bytes(bytes(edited))
    shards[3].unlink()  # missing
    capsys.readouterr()
    m = run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    err = capsys.readouterr().err
    assert m["resumed_shards"] == 1 and m["repaired_shards"] == 3
    problems = {r["shard"]: r["problem"] for r in m["repairs"]}
    assert sorted(problems) == [s.name for s in shards[1:]]
    assert "bytes, its commit marker says" in problems[shards[1].name]
    assert "sha256" in problems[shards[2].name] and "missing" in problems[shards[3].name]
    assert err.count("cannot be trusted") == 3 and shards[1].name in err
    assert all_hashes(b) == all_hashes(tmp_path / "a")
    assert manifest.verify(b) == []
    console = Console(record=True, width=200)
    manifest.show(b, console=console)
    assert f"ran again shard {shards[1].name}, not trusted: {problems[shards[1].name]}" in console.export_text()
    again = run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    assert again["resumed_shards"] == 4 and again["repaired_shards"] == 0


def test_shard_made_from_an_input_that_changed_since_is_made_again(tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=3)
    out = tmp_path / "out"
    run_stage(MinWords(3), inputs, out, executor="local", progress=False)
    changed = make_inputs(tmp_path / "other", shards=3, seed=7)[1]
    inputs[1].write_bytes(changed.read_bytes())  # an upstream shard made again with other bytes
    m = run_stage(MinWords(3), inputs, out, executor="local", progress=False)
    assert m["resumed_shards"] == 2 and [r["shard"] for r in m["repairs"]] == ["00001.jsonl.gz"]
    assert "has changed since it was made" in m["repairs"][0]["problem"]
    run_stage(MinWords(3), inputs, tmp_path / "fresh", executor="local", progress=False)
    assert all_hashes(out) == all_hashes(tmp_path / "fresh") and manifest.verify(out) == []


def test_unreadable_commit_marker_reruns_its_shard(tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=2)
    run_stage(MinWords(3), inputs, tmp_path / "a", executor="local", progress=False)
    b = tmp_path / "b"
    run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    (b / ".parts" / "00000.json").write_text('{"outputs": [')
    m = run_stage(MinWords(3), inputs, b, executor="local", progress=False)
    assert m["repaired_shards"] == 1 and "unreadable" in m["repairs"][0]["problem"]
    assert all_hashes(b) == all_hashes(tmp_path / "a") and manifest.verify(b) == []


def test_stale_temporary_files_are_removed_on_the_next_run(tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=2)
    out = tmp_path / "out"
    run_stage(MinWords(3), inputs[:1], out, executor="local", progress=False)
    stale = [out / ".00001.jsonl.gz.tmp-4242", out / "rejects" / ".00001.jsonl.gz.tmp-4242",
             out / ".parts" / ".00001.json.tmp-77", out / "work" / "00003" / ".00001.npy.tmp-9"]
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a shard")
    kept = [out / "work" / "notes.tmp", out / ".hidden-tmp-1"]  # not the writers' temporary names
    for p in kept:
        p.write_bytes(b"x")
    m = run_stage(MinWords(3), inputs, out, executor="local", progress=False)
    assert m["stale_tmp_removed"] == 4 and m["resumed_shards"] == 1
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert manifest.verify(out) == []


class LeavesDebris(MinWords):
    """MinWords whose task 1 finds the temporary file of an earlier attempt that was killed mid-shard
    (as a Ray task retried in a new worker does)."""

    def process(self, task, sink) -> None:
        if task.index == 1:
            (sink.out_final.parent / f".{sink.out_final.name}.tmp-{os.getpid() + 1}").write_bytes(b"half")
        super().process(task, sink)


def test_temporary_files_of_killed_attempts_are_removed_when_the_stage_ends(tmp_path):
    inputs = make_inputs(tmp_path / "in", shards=2)
    run_stage(MinWords(3), inputs, tmp_path / "a", executor="local", progress=False)
    m = run_stage(LeavesDebris(3), inputs, tmp_path / "b", executor="local", progress=False)
    assert m["stale_tmp_removed"] == 1 and not [p for p in (tmp_path / "b").rglob("*") if ".tmp-" in p.name]
    assert all_hashes(tmp_path / "b") == all_hashes(tmp_path / "a") and manifest.verify(tmp_path / "b") == []


def test_verify_detects_tampered_shard_and_broken_counts(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    run_stage(MinWords(3), inputs, out, executor="local", progress=False)
    shard = list_shards(out)[1]
    docs = list(read_docs(shard))
    docs[0]["text"] = docs[0]["text"] + " tampered"
    with gzip.open(shard, "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    problems = manifest.verify(out)
    assert any("sha256 mismatch" in p for p in problems)

    out2 = tmp_path / "out2"
    run_stage(MinWords(3), inputs, out2, executor="local", progress=False)
    m = json.loads((out2 / "manifest.json").read_text())
    m["counts"]["dropped"]["too_short"] -= 1
    (out2 / "manifest.json").write_text(json.dumps(m))
    assert any("do not add up" in p for p in manifest.verify(out2))


def test_ray_run_matches_local_run(tmp_path, ray_local):
    inputs = make_inputs(tmp_path / "in", shards=3)
    run_stage(MinWords(3), inputs, tmp_path / "local", executor="local", progress=False)
    m = run_stage(MinWords(3), inputs, tmp_path / "ray", progress=False)
    assert m["cluster"]["executor"] == "ray" and m["cluster"]["cpus"] >= 1
    assert hashes(tmp_path / "local") == hashes(tmp_path / "ray")


def test_snapshot_and_diff_against_a_reference(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    run = tmp_path / "run"
    run_stage(MinWords(3), inputs, run / "minwords", executor="local", progress=False)
    ref = tmp_path / "ref"
    files = manifest.snapshot(run, ref)
    assert [f.relative_to(ref).as_posix() for f in files] == ["minwords/manifest.json"]
    assert manifest.diff(run, ref) == []
    other = tmp_path / "other"
    run_stage(MinWords(8), inputs, other / "minwords", executor="local", progress=False)
    findings = manifest.diff(other, ref)
    assert any(f.startswith("minwords: out") for f in findings)
