"""The stage runner: one Ray task per output shard, resumable, deterministic, with a manifest.

A stage is a small class with one job (see `Stage`). `run_stage` plans its tasks, skips the
shards a previous run finished, runs the rest as Ray tasks (a local Ray unless `ray_address` or
RAY_ADDRESS names a cluster), shows progress, and writes `manifest.json`.

Files of a stage directory:

    NNNNN.jsonl.gz          output shards (or NNNNN.<suffix> for raw outputs such as WARC)
    rejects/NNNNN.jsonl.gz  dropped and quarantined records, each {"kind","reason","doc"}
    .parts/NNNNN.json       per-shard result (the commit marker): written LAST, so its presence marks
                            a finished shard; it holds the size and sha256 of the shard and its rejects
    manifest.json           the stage's manifest (see minisigma.core.manifest)

Resume: a rerun skips a finished shard only when its files still match their commit marker (size,
then sha256) and the input files it was made from still have the sha256 the marker recorded; a
damaged one (truncated, edited, missing) or a stale one (its input changed) is run again, with a
log line and an entry in the manifest's `repairs`. Temporary files a killed writer left (".NAME.tmp-PID") are removed
before the stage starts and again when all its tasks have finished, and counted as
`stale_tmp_removed`.

Object storage: `out_dir` may be a URL (s3://, gs://, memory:// ...) or lie in a run bound to one
(minisigma.core.storage). Tasks then work in a per-node cache of the run: each pulls its input files,
the stage's side directories (its path attributes: dedup work folders, classifiers) and its own
checkpoint files, and every file it finishes is uploaded at once, the shard and its rejects before the
commit marker. Resume reads the markers, shards and rejects at the URL, never the cache, so a rerun on
another machine trusts exactly what the markers in the store name; the driver pulls what a stage
committed before the next one plans. Paths inside a bound run (markers' inputs, manifests' inputs)
are recorded relative to the stage directory, so a run can be moved (or copied into a bucket).

Determinism: a task's output depends only on its inputs, its params and the stage config, and the
shard writers are byte-deterministic, so a rerun (or a retried task after a worker died) writes
byte-identical shards.
"""

from __future__ import annotations

import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from minisigma.core import manifest as mf
from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.progress import StageProgress, filtered_stderr, log
from minisigma.core.shards import (
    DOC_SUFFIXES,
    ShardWriter,
    atomic_write_json,
    dumps,
    list_shards,
    read_docs,
    remove_stale_tmp,
    sha256_file,
    shard_name,
    shard_writer,
    tmp_path,
)

TOKEN_UNIT = "whitespace-delimited words"


def count_tokens(text: str) -> int:
    # A cheap, tokenizer-independent size measure for manifests (the unit is recorded in them).
    return len(text.split())


@dataclass(frozen=True)
class Task:
    """One unit of work that produces output shard `index` from `inputs` (paths or locators)."""

    index: int
    inputs: tuple[str, ...]
    params: dict = field(default_factory=dict, hash=False, compare=False)


class Sink:
    """What a stage's `process` writes to: output documents, rejects with reasons, counters."""

    def __init__(self, out_final: Path, suffix: str):
        self.out_final = out_final
        self.suffix = suffix
        self.path = tmp_path(out_final)  # for stages writing raw (non-jsonl) outputs themselves
        self.docs_in = 0
        self.docs_out = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.dropped: Counter = Counter()
        self.quarantined: Counter = Counter()
        self.stats: Counter = Counter()
        self.errors: list[dict] = []
        self.by_source: dict[str, list[int]] = {}  # a document's `source` -> [documents, tokens] written
        self._writer = shard_writer(out_final) if suffix in DOC_SUFFIXES else None
        rejects = out_final.parent / "rejects" / shard_name(_index_of(out_final))
        self._rejects = ShardWriter(rejects)

    # -- counting what comes in
    def take(self, doc: dict | None = None, n: int = 1) -> None:
        self.docs_in += n
        if doc is not None and isinstance(doc.get("text"), str):
            self.tokens_in += count_tokens(doc["text"])

    # -- what goes out
    def write(self, doc: dict) -> None:
        if self._writer is None:
            raise TypeError(f"stage writes raw {self.suffix} outputs: write to sink.path and call count_out()")
        self._writer.write(doc)
        self.docs_out += 1
        tokens = count_tokens(doc.get("text", ""))
        self.tokens_out += tokens
        per = self.by_source.setdefault(str(doc.get("source") or "unknown"), [0, 0])
        per[0] += 1
        per[1] += tokens

    def count_out(self, n: int = 1) -> None:
        """For raw outputs written to `self.path` (e.g. WARC records)."""
        self.docs_out += n

    def drop(self, doc: dict | None, reason: str) -> None:
        self.dropped[reason] += 1
        self._rejects.write({"kind": "dropped", "reason": reason, "doc": doc})

    def quarantine(self, doc: Any, reason: str) -> None:
        self.quarantined[reason] += 1
        self._rejects.write({"kind": "quarantined", "reason": reason, "doc": doc})

    def stat(self, key: str, n: int = 1) -> None:
        self.stats[key] += n

    def error(self, where: dict, reason: str, detail: str = "") -> None:
        """List one failure by name in the manifest's `errors` (e.g. a URL the crawl could not fetch,
        with its reason), beyond the counts. Counts nothing: call `quarantine`/`drop` or `stat` too."""
        self.errors.append({**where, "reason": reason, **({"detail": detail} if detail else {})})

    # -- finishing
    def finish(self) -> dict:
        outputs = []
        if self._writer is not None:
            self._writer.close()
            text_bytes = self._writer.text_bytes
        else:
            if not self.path.exists():
                self.path.write_bytes(b"")
            os.replace(self.path, self.out_final)
            storage.committed(self.out_final)  # a run at a URL: uploaded before its marker
            text_bytes = 0
        outputs.append(
            {
                "path": self.out_final.name,
                "sha256": sha256_file(self.out_final),
                "docs": self.docs_out,
                "bytes": self.out_final.stat().st_size,
                "text_bytes": text_bytes,
            }
        )
        rejects = None
        if self._rejects.count:
            self._rejects.close()
            p = self._rejects.path
            rejects = {"path": f"rejects/{p.name}", "sha256": sha256_file(p), "docs": self._rejects.count,
                       "bytes": p.stat().st_size}
        else:
            self._rejects.abort()
        return {
            "outputs": outputs,
            "rejects": rejects,
            "counts": {
                "in": self.docs_in,
                "out": self.docs_out,
                "dropped": dict(sorted(self.dropped.items())),
                "quarantined": dict(sorted(self.quarantined.items())),
                "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out,
                "by_source": {k: {"docs": d, "tokens": t} for k, (d, t) in sorted(self.by_source.items())},
            },
            "stats": dict(sorted(self.stats.items())),
            # sorted: a crawl settles its URLs in an order that depends on timing
            "errors": sorted(self.errors, key=dumps),
        }

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        self._rejects.abort()
        self.path.unlink(missing_ok=True)


def text_docs(path: str | Path, sink: Sink):
    """The documents of an input shard, each counted in; those without a text string are quarantined
    as "no_text" and not yielded. The common head of every document-to-document stage."""
    for doc in read_docs(path):
        sink.take(doc)
        if isinstance(doc.get("text"), str):
            yield doc
        else:
            sink.quarantine(doc, "no_text")


def _index_of(path: Path) -> int:
    return int(path.name[:5])


class Stage(ABC):
    """Base class of a stage. Subclasses set `name`, keep their recipe section in `self.config`,
    and implement `process`. The default plan is one task per input shard."""

    name: str = "stage"
    output_suffix: str = ".jsonl.gz"

    def __init__(self, config: Any = None):
        self.config = config

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return [Task(i, (str(p),)) for i, p in enumerate(inputs)]

    @abstractmethod
    def process(self, task: Task, sink: Sink) -> None:
        """Read the task's inputs, `sink.take` each unit, then write, drop or quarantine it."""

    def config_dict(self) -> Any:
        c = self.config
        return c.model_dump(mode="json") if hasattr(c, "model_dump") else c


def part_path(out_dir: Path, index: int) -> Path:
    return out_dir / ".parts" / f"{index:05d}.json"


class _OtherShard(Exception):
    """The commit marker is of a shard this plan does not write (e.g. the other document format)."""


def damage(out_dir: Path, index: int, suffix: str, sha256_of: Callable[[str], str] = sha256_file) -> str | None:
    """Why finished shard `index` (its commit marker exists) cannot be trusted, or None when the shard
    and its rejects still have the size and sha256 its commit marker recorded and the input files it
    was made from are unchanged. Raises _OtherShard when the marker commits a shard of another name
    (not damage: the plan changed)."""
    marker = part_path(out_dir, index)
    where = storage.target(out_dir)  # the URL of a run at one: what is there is the truth, not the cache
    try:
        part = json.loads(storage.read_bytes(storage.join(where, ".parts", marker.name)).decode("utf-8"))
        entries = list(part["outputs"]) + ([part["rejects"]] if part.get("rejects") else [])
        paths = [e["path"] for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its commit marker {marker.name} is unreadable ({type(e).__name__})"
    if shard_name(index, suffix) not in paths:
        raise _OtherShard(paths)
    for e in entries:
        p = storage.join(where, e["path"])
        if not isinstance(e.get("bytes"), int) or not isinstance(e.get("sha256"), str):
            return f"{e['path']}: its commit marker has no size and sha256 to check it against"
        if not storage.isfile(p):
            return f"{e['path']} is missing"
        if (size := storage.size(p)) != e["bytes"]:
            return f"{e['path']} has {size:,} bytes, its commit marker says {e['bytes']:,}"
        if sha256_file(p) != e["sha256"]:
            return f"{e['path']} does not match the sha256 in its commit marker"
    for src, digest in (part.get("input_sha256") or {}).items():
        local = os.path.join(out_dir, src)  # recorded relative to the stage directory inside a run
        if os.path.isfile(local) and sha256_of(local) != digest:
            return f"its input {src} has changed since it was made"
    return None


def _discard(out_dir: Path, index: int, suffix: str) -> None:
    """Remove a damaged shard's files, its commit marker first (so it is never half-trusted)."""
    storage.remove(part_path(out_dir, index))
    storage.remove(out_dir / shard_name(index, suffix))
    storage.remove(out_dir / "rejects" / shard_name(index))


def side_dirs(stage: Stage) -> list[Path]:
    """The directories of a run bound to a URL that a stage reads or writes beside its own shards
    (its path-valued attributes, e.g. a dedup work folder or the classifiers): pulled before a task."""
    return list(storage.iter_bound_dirs(vars(stage).values()))


def _pull_own(out: Path, index: int) -> None:
    """Bring the files a task keeps beside its shard to resume from (a harvest's checkpoint, a crawl's
    finished WARC: `<stage>/<folder>/NNNNN...` with the task's index) from the URL into this node."""
    own = f"{index:05d}"
    for rel in storage.remote_files(out):
        parts = rel.split("/")
        if len(parts) > 1 and parts[0] not in ("rejects", ".parts") and any(p.startswith(own) for p in parts[1:]):
            storage.pull(out.joinpath(*parts))


def run_task(stage: Stage, task: Task, out_dir: str, storage_spec: dict | None = None) -> dict:
    """Run one task and commit its shard. Runs inside a Ray worker (or in-process).

    In a run bound to a URL (`storage_spec`: the driver's `storage.spec()`), the task first pulls
    what it reads into this node's cache (its input files, the stage's side directories and its own
    harvest checkpoint); everything it commits is uploaded as it becomes final, the marker last."""
    storage.configure(storage_spec)
    out = Path(out_dir)
    if storage.url_of(out) is not None:
        for p in task.inputs:
            if storage.url_of(p) is not None:
                storage.pull(p)
        for d in side_dirs(stage):
            storage.pull(d)
        _pull_own(out, task.index)
    sink = Sink(out / shard_name(task.index, stage.output_suffix), stage.output_suffix)
    t0 = time.time()
    # What the shard was made from: a rerun makes it again when one of these files has changed since
    # (e.g. an upstream shard that was damaged and made again with other bytes, as a re-crawl does).
    # Paths inside the run are recorded relative to the stage directory (a run can be moved).
    made_from = {storage.relative(p, out): sha256_file(p) for p in task.inputs if os.path.isfile(p)}
    try:
        stage.process(task, sink)
        part = sink.finish()
    except BaseException:
        sink.abort()
        raise
    # `inputs` as every record of a run writes paths (storage.recorded); the keys of `input_sha256` stay
    # relative to the stage directory (or absolute outside the run): damage() opens them
    part.update(index=task.index, inputs=storage.recorded(list(task.inputs), out), input_sha256=made_from,
                seconds=round(time.time() - t0, 3),
                host=socket.gethostname(), pid=os.getpid())
    atomic_write_json(part_path(out, task.index), part)  # the commit marker: written last
    return part


# --------------------------------------------------------------------------- Ray
# What Ray's core prints at `ray.init` that is no news to a user of this tool (the local cluster keeps
# Ray's default token authentication; the notice only says so).
RAY_NOISE = ("Token authentication is enabled for this Ray cluster",)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Start a local Ray (or join `address` / RAY_ADDRESS). Returns a small description of the cluster."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict = dict(ignore_reinit_error=True, log_to_driver=True, configure_logging=False)
        with filtered_stderr(RAY_NOISE):
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": always a new cluster of our own, never another process's `ray start` cluster
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"address": ray.get_runtime_context().gcs_address, "nodes": len(nodes),
            "cpus": int(ray.cluster_resources().get("CPU", 0))}


def _execute_ray(stage: Stage, tasks: list[Task], out_dir: Path, on_done: Callable[[dict], None],
                 max_retries: int) -> None:
    import ray

    remote = ray.remote(num_cpus=getattr(stage, "cpus_per_task", 1), max_retries=max_retries)(run_task)
    stage_ref = ray.put(stage)
    spec = storage.spec()  # explicit: a worker on another node has not got the driver's settings
    pending = [remote.remote(stage_ref, t, str(out_dir), spec) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            on_done(ray_result(ref))


def ray_result(ref):
    """`ray.get(ref)`, except that a task's UserError (or OSError naming a file: bad input) reaches the
    driver as itself, not wrapped in a RayTaskError whose message carries the worker's traceback, so
    the CLI prints it as one line like any other UserError."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = e.cause
        if isinstance(cause, UserError) or (isinstance(cause, OSError) and cause.filename):
            raise cause from None
        raise


def _execute_local(stage: Stage, tasks: list[Task], out_dir: Path, on_done: Callable[[dict], None]) -> None:
    for t in tasks:
        on_done(run_task(stage, t, str(out_dir)))


# --------------------------------------------------------------------------- run_stage
def run_stage(
    stage: Stage,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    ray_address: str | None = None,
    executor: str = "ray",
    recipe_section: Any = None,
    progress: bool = True,
    max_retries: int = 3,
    extra: dict | None = None,
) -> dict:
    """Run `stage` over `inputs` into `out_dir` and return its manifest (also written to disk).

    `out_dir` may be a URL (s3://, gs://, memory:// ...) or a directory inside a run bound to one
    (minisigma.core.storage): the shards, rejects, commit markers and manifest are then committed
    there, and what is there decides what a rerun resumes."""
    out_dir = storage.local_of(out_dir) if storage.is_url(out_dir) else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    where = storage.target(out_dir)  # the stage directory's URL, or out_dir itself
    remote = where != str(out_dir)
    inputs = [Path(p) for p in inputs]
    tasks = stage.tasks(inputs)
    started = time.time()

    hashed: dict[tuple, str] = {}

    def sha256_of(path: str | Path) -> str:  # each input hashed once per run (resume check, manifest)
        st = os.stat(path)
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in hashed:
            hashed[key] = sha256_file(path)
        return hashed[key]

    stale = remove_stale_tmp(out_dir)
    if stale:
        log(f"{stage.name}: removed {len(stale)} temporary file(s) an interrupted run left in {out_dir}")
    finished: set[int] = set()
    repairs: list[dict] = []
    markers = set(storage.listdir(storage.join(where, ".parts")))
    for t in tasks:
        if part_path(out_dir, t.index).name not in markers:
            continue
        try:
            problem = damage(out_dir, t.index, stage.output_suffix, sha256_of)
        except _OtherShard:
            continue  # e.g. written in the other shard format before: run it, no repair to report
        if problem is None:
            finished.add(t.index)
            continue
        shard = shard_name(t.index, stage.output_suffix)
        log(f"{stage.name}: finished shard {out_dir / shard} cannot be trusted ({problem}): running it again")
        repairs.append({"shard": shard, "problem": problem})
        _discard(out_dir, t.index, stage.output_suffix)
    todo = [t for t in tasks if t.index not in finished]
    cluster = {"executor": executor, "nodes": 1, "cpus": os.cpu_count()}
    with StageProgress(stage.name, total=len(tasks), done=len(finished), enabled=progress) as bar:
        if todo:
            if executor == "ray":
                cluster.update(ensure_ray(ray_address))
                _execute_ray(stage, todo, out_dir, bar.advance, max_retries)
            elif executor == "local":
                _execute_local(stage, todo, out_dir, bar.advance)
            else:
                raise ValueError(f"unknown executor {executor!r} (ray or local)")
    # Every task has finished: temporary files still here belong to none of them (a worker killed
    # mid-shard, its task retried under another process), so they go now, not on the next run.
    stale += remove_stale_tmp(out_dir)
    # Remove shards of an earlier run that this plan no longer produces (e.g. fewer inputs now, or
    # documents now written in the other shard format).
    planned = {t.index for t in tasks}
    suffixes = DOC_SUFFIXES if stage.output_suffix in DOC_SUFFIXES else (stage.output_suffix,)
    old = {p.name for p in list_shards(out_dir, stage.output_suffix if len(suffixes) == 1 else None)}
    if remote:
        old |= {n for n in storage.listdir(where) if n.endswith(suffixes) and n[:5].isdigit()}
    for name in sorted(old):
        if int(name[:5]) not in planned:
            storage.remove(out_dir / name)
            storage.remove(part_path(out_dir, int(name[:5])))
        elif not name.endswith(stage.output_suffix):
            storage.remove(out_dir / name)  # its index was just rewritten in this stage's format (and committed)
    parts = [mf.read_json(storage.join(where, ".parts", part_path(out_dir, t.index).name)) for t in tasks]
    m = mf.build_manifest(
        stage=stage.name,
        recipe=recipe_section if recipe_section is not None else stage.config_dict(),
        inputs=inputs,
        parts=parts,
        started=started,
        resumed_shards=len(finished),
        repairs=repairs,
        stale_tmp_removed=len(stale),
        sha256_of=sha256_of,
        cluster=cluster,
        extra=extra,
        base=out_dir,
    )
    mf.write_manifest(out_dir, m)
    if remote:
        # The driver's code after a stage reads its shards and side files (the next stage's plan, the
        # dedup work folders): bring what the workers committed into this node's cache.
        storage.pull(out_dir, skip=("rejects",))
        for d in side_dirs(stage):
            storage.pull(d)
    return m


__all__ = ["Stage", "Task", "Sink", "run_stage", "text_docs", "run_task", "ensure_ray", "count_tokens", "TOKEN_UNIT", "dumps",
           "ray_result"]
