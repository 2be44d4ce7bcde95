"""Partitioned connected components over the verified-pair graph (min-label propagation).

Nodes are hash-partitioned into P partitions; partition p owns the adjacency of its nodes
(`edges/p/*.npy`, both directions of every pair, written by the bucket tasks). Every node starts
with its own id as label. In iteration i, the task of partition p

  1. applies the messages (node, label) other partitions sent it in iteration i-1: label = min;
  2. for each of its nodes whose label went down (all nodes in iteration 0), sends the new label to
     every neighbour, scattered by the neighbour's partition (`msgs/<i>/<q>/<p>.npy`);

and the driver stops when an iteration sends nothing. Each component ends with the smallest node id
in it as label (after at most diameter + 1 iterations). In iteration 0 the task also merges the
edge files of its partition into one sorted adjacency without repeated edges (`adj/p.npy`: bucket
tasks of different bands send the same tree edges for a family of identical documents), read
one file at a time; later iterations read only that file. A task holds one partition's
adjacency, labels and incoming messages, so memory per task is bounded by `nodes_per_partition`
(times the edges per node, at most about 2 x bands), not by the corpus or the number of partitions.
The last step writes each partition's (node, label) to `final/p.npy` for the keep decision
(`clusters.py`).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np

from minisigma.core import manifest as mf
from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.runner import ray_result

from curation.refine.memtrace import traced
from curation.refine.partitions import load_concat, node_part, partition_files, save_npy, scatter, sorted_unique

LABEL = np.dtype([("node", "<u8"), ("label", "<u8")])
MSG = np.dtype([("node", "<u8"), ("label", "<u8")])
EDGE = np.dtype([("src", "<u8"), ("dst", "<u8")])


def unique_edges(files: list[str], batch: int = 65_536) -> np.ndarray:
    """The edges of `files` sorted by (src, dst) without repeats, merged a few files at a time (peak:
    about twice the unique edges plus one batch, whatever the number of repeats or of files)."""
    acc = np.zeros(0, dtype=EDGE)
    pending: list[str] = []
    rows = 0

    def merge(acc: np.ndarray, more: list[str]) -> np.ndarray:
        both = np.concatenate([acc, load_concat(more, EDGE)])
        both = both[np.lexsort((both["dst"], both["src"]))]
        keep = np.ones(len(both), dtype=bool)
        keep[1:] = (both["src"][1:] != both["src"][:-1]) | (both["dst"][1:] != both["dst"][:-1])
        return both[keep]

    for p in files:
        pending.append(p)
        rows += os.path.getsize(p) // EDGE.itemsize
        if rows >= max(batch, len(acc)):
            acc, pending, rows = merge(acc, pending), [], 0
    return merge(acc, pending) if pending else acc


def cc_step(work: str, part: int, it: int, n_parts: int) -> dict:
    t0 = time.time()
    name = f"{part:05d}.npy"
    adj_path = os.path.join(work, "adj", name)
    # List the input files before tracing (a directory listing is not the partition's data).
    edge_files = partition_files(os.path.join(work, "edges"), part) if it == 0 else []
    msg_files = partition_files(os.path.join(work, "msgs", f"{it - 1:04d}"), part) if it else []
    with traced() as peak:
        if it == 0:
            edges = unique_edges(edge_files)
            save_npy(adj_path, edges)
            nodes = sorted_unique(edges["src"])
            labels = nodes.copy()
            changed = np.ones(len(nodes), dtype=bool)
        else:
            edges = np.load(adj_path)
            state = np.load(os.path.join(work, "labels", f"{it - 1:04d}", name))
            nodes, labels = state["node"], state["label"].copy()
            del state
            msgs = load_concat(msg_files, MSG)
            changed = np.zeros(len(nodes), dtype=bool)
            if len(msgs):
                msgs = msgs[np.lexsort((msgs["label"], msgs["node"]))]
                first = np.concatenate([[True], msgs["node"][1:] != msgs["node"][:-1]])
                tgt, best = msgs["node"][first], msgs["label"][first]  # smallest label per target node
                del msgs, first
                idx = np.searchsorted(nodes, tgt)
                lower = best < labels[idx]
                labels[idx[lower]] = best[lower]
                changed[idx[lower]] = True
                del tgt, best, idx, lower
        # Messages: every edge whose source changed carries the source's label to the destination.
        src_idx = np.searchsorted(nodes, edges["src"])
        send = changed[src_idx] if len(edges) else np.zeros(0, dtype=bool)
        out = np.zeros(int(send.sum()), dtype=MSG)
        out["node"] = edges["dst"][send]
        out["label"] = labels[src_idx[send]]
        n_edges = len(edges)
        del edges, src_idx, send
        scatter(os.path.join(work, "msgs", f"{it:04d}"), part, node_part(out["node"], n_parts), out, n_parts)
        state = np.zeros(len(nodes), dtype=LABEL)
        state["node"], state["label"] = nodes, labels
        save_npy(os.path.join(work, "labels", f"{it:04d}", name), state)
    return {"part": part, "iteration": it, "nodes": int(len(nodes)), "edges": int(n_edges),
            "changed": int(changed.sum()), "messages": int(len(out)), "peak_traced_bytes": int(peak.bytes),
            "seconds": round(time.time() - t0, 3), "host": socket.gethostname(), "pid": os.getpid()}


def peak_summary(peaks: list[int]) -> dict:
    """Median, p95 and max of per-task peaks (bytes), and how many tasks."""
    a = np.asarray(peaks, dtype=np.float64)
    if not len(a):
        return {"tasks": 0, "median": 0, "p95": 0, "max": 0}
    return {"tasks": int(len(a)), "median": int(np.median(a)), "p95": int(np.percentile(a, 95)), "max": int(a.max())}


def cc_finish(work: str, part: int, it: int, n_parts: int) -> dict:
    """Write the final (node, label) of partition `part` to final/."""
    work_p = Path(work)
    state = np.load(work_p / "labels" / f"{it:04d}" / f"{part:05d}.npy")
    save_npy(work_p / "final" / f"{part:05d}.npy", state)
    return {"part": part, "nodes": int(len(state)), "components": int((state["node"] == state["label"]).sum())}


def _run_all(fn, args_list: list[tuple], executor: str) -> list[dict]:
    if executor == "local":
        return [fn(*a) for a in args_list]
    import ray

    # A run at a URL: each worker pulls the work folder first (its files are uploaded as they are
    # saved), and the driver pulls what the step wrote.
    remote = ray.remote(num_cpus=1, max_retries=3)(storage.run_pulled)
    spec = storage.spec()
    results = [ray_result(ref) for ref in [remote.remote(spec, [a[0]], fn, *a) for a in args_list]]
    for work in sorted({a[0] for a in args_list}):
        storage.pull(work)
    return results


def connected_components(work: str | Path, n_parts: int, out_dir: str | Path, *, executor: str = "ray",
                         max_iterations: int = 100, recipe: dict | None = None) -> dict:
    """Run the propagation to convergence; write `out_dir/manifest.json`; return it."""
    work, out_dir = Path(work), Path(out_dir)
    started = time.time()
    for sub in ("adj", "msgs", "labels", "members", "final"):
        storage.rmtree(work / sub)
    history, peaks = [], []
    it = 0
    while True:
        if it >= max_iterations:
            raise UserError(f"connected components did not converge in {max_iterations} iterations "
                            f"(raise minhash.max_iterations)")
        results = _run_all(cc_step, [(str(work), p, it, n_parts) for p in range(n_parts)], executor)
        peaks += [r["peak_traced_bytes"] for r in results]
        history.append({"iteration": it, "changed": sum(r["changed"] for r in results),
                        "messages": sum(r["messages"] for r in results),
                        "edges": sum(r["edges"] for r in results),
                        "max_task_peak_traced_bytes": max((r["peak_traced_bytes"] for r in results), default=0)})
        if it >= 1:
            storage.rmtree(work / "msgs" / f"{it - 1:04d}")
            storage.rmtree(work / "labels" / f"{it - 1:04d}")
        if history[-1]["messages"] == 0:
            break
        it += 1
    finals = _run_all(cc_finish, [(str(work), p, it, n_parts) for p in range(n_parts)], executor)
    nodes = sum(f["nodes"] for f in finals)
    comps = sum(f["components"] for f in finals)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for f in finals:
        p = work / "final" / f"{f['part']:05d}.npy"
        parts.append({"outputs": [{"path": os.path.relpath(p, out_dir), "sha256": mf.sha256_file(p), "docs": f["nodes"],
                                   "bytes": p.stat().st_size, "text_bytes": 0}],
                      "rejects": None, "stats": {},
                      "counts": {"in": f["nodes"], "out": f["nodes"], "dropped": {}, "quarantined": {},
                                 "tokens_in": 0, "tokens_out": 0}})
    m = mf.build_manifest(stage="minhash_components", recipe=recipe, inputs=[], parts=parts, started=started,
                          cluster={"executor": executor, "partitions": n_parts},
                          extra={"components": {"partitions": n_parts, "iterations": len(history),
                                                "nodes": nodes, "components": comps,
                                                "max_task_peak_traced_bytes": max(peaks, default=0),
                                                "task_peak_traced_bytes": peak_summary(peaks), "history": history,
                                                "unit": "graph nodes (documents with at least one verified pair)"}})
    m["stats"] = {"nodes": nodes, "components": comps, "iterations": len(history)}
    mf.write_manifest(out_dir, m)
    return m
