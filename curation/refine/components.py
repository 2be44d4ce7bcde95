"""Partitioned connected components over the verified-pair graph (min-label propagation).

Nodes are hash-partitioned into P partitions; partition p owns the adjacency of its nodes
(`edges/p/*.npy`, both directions of every pair, written by the bucket tasks). Every node starts
with its own id as label. In iteration i, the task of partition p

  1. applies the messages (node, label) other partitions sent it in iteration i-1: label = min;
  2. for each of its nodes whose label went down (all nodes in iteration 0), sends the new label to
     every neighbour, scattered by the neighbour's partition (`msgs/<i>/<q>/<p>.npy`);

and the driver stops when an iteration sends nothing. Each component ends with the smallest node id
in it as label (after at most diameter + 1 iterations). A task holds one partition's edges, labels
and incoming messages, so memory per task is bounded by `nodes_per_partition`, not by the corpus.
The last step scatters (node, label) by the label's partition (`members/<q>/<p>.npy`) so that
every cluster is whole in one partition for the keep decision.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import tracemalloc
from pathlib import Path

import numpy as np

from minisigma import manifest as mf
from minisigma.errors import UserError

from curation.refine.partitions import node_part, partition_files, save_npy, scatter

LABEL = np.dtype([("node", "<u8"), ("label", "<u8")])
MSG = np.dtype([("node", "<u8"), ("label", "<u8")])
EDGE = np.dtype([("src", "<u8"), ("dst", "<u8")])


def _load(files: list[Path], dtype) -> np.ndarray:
    arrs = [np.load(p, allow_pickle=False) for p in files]
    return np.concatenate(arrs) if arrs else np.zeros(0, dtype=dtype)


def cc_step(work: str, part: int, it: int, n_parts: int) -> dict:
    t0 = time.time()
    work_p = Path(work)
    # List the input files before tracing: glob/fnmatch compile and cache patterns once per process,
    # which would show up as a one-off spike unrelated to the data.
    edge_files = partition_files(work_p / "edges", part)
    msg_files = partition_files(work_p / "msgs" / f"{it - 1:04d}", part) if it else []
    tracemalloc.start()
    edges = _load(edge_files, EDGE)
    edges = edges[np.argsort(edges["src"], kind="stable")]
    if it == 0:
        nodes = np.unique(edges["src"])
        labels = nodes.copy()
        changed = np.ones(len(nodes), dtype=bool)
    else:
        state = np.load(work_p / "labels" / f"{it - 1:04d}" / f"{part:05d}.npy")
        nodes, labels = state["node"], state["label"].copy()
        msgs = _load(msg_files, MSG)
        changed = np.zeros(len(nodes), dtype=bool)
        if len(msgs):
            msgs = msgs[np.lexsort((msgs["label"], msgs["node"]))]
            first = np.concatenate([[True], msgs["node"][1:] != msgs["node"][:-1]])
            tgt, best = msgs["node"][first], msgs["label"][first]  # smallest label per target node
            idx = np.searchsorted(nodes, tgt)
            lower = best < labels[idx]
            labels[idx[lower]] = best[lower]
            changed[idx[lower]] = True
    # Messages: every edge whose source changed carries the source's label to the destination.
    src_idx = np.searchsorted(nodes, edges["src"])
    send = changed[src_idx] if len(edges) else np.zeros(0, dtype=bool)
    out = np.zeros(int(send.sum()), dtype=MSG)
    out["node"] = edges["dst"][send]
    out["label"] = labels[src_idx[send]]
    scatter(work_p / "msgs" / f"{it:04d}", part, node_part(out["node"], n_parts), out, n_parts)
    state = np.zeros(len(nodes), dtype=LABEL)
    state["node"], state["label"] = nodes, labels
    save_npy(work_p / "labels" / f"{it:04d}" / f"{part:05d}.npy", state)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"part": part, "iteration": it, "nodes": int(len(nodes)), "edges": int(len(edges)),
            "changed": int(changed.sum()), "messages": int(len(out)), "peak_traced_bytes": int(peak),
            "seconds": round(time.time() - t0, 3), "host": socket.gethostname(), "pid": os.getpid()}


def cc_finish(work: str, part: int, it: int, n_parts: int) -> dict:
    """Scatter the final (node, label) of partition `part` to the partition of each label."""
    work_p = Path(work)
    state = np.load(work_p / "labels" / f"{it:04d}" / f"{part:05d}.npy")
    save_npy(work_p / "final" / f"{part:05d}.npy", state)
    scatter(work_p / "members", part, node_part(state["label"], n_parts), state, n_parts)
    return {"part": part, "nodes": int(len(state)), "components": int((state["node"] == state["label"]).sum())}


def _run_all(fn, args_list: list[tuple], executor: str) -> list[dict]:
    if executor == "local":
        return [fn(*a) for a in args_list]
    import ray

    remote = ray.remote(num_cpus=1, max_retries=3)(fn)
    return ray.get([remote.remote(*a) for a in args_list])


def connected_components(work: str | Path, n_parts: int, out_dir: str | Path, *, executor: str = "ray",
                         max_iterations: int = 100, recipe: dict | None = None) -> dict:
    """Run the propagation to convergence; write `out_dir/manifest.json`; return it."""
    work, out_dir = Path(work), Path(out_dir)
    started = time.time()
    for sub in ("msgs", "labels", "members", "final"):
        shutil.rmtree(work / sub, ignore_errors=True)
    history, peak = [], 0
    it = 0
    while True:
        if it >= max_iterations:
            raise UserError(f"connected components did not converge in {max_iterations} iterations "
                            f"(raise minhash.max_iterations)")
        results = _run_all(cc_step, [(str(work), p, it, n_parts) for p in range(n_parts)], executor)
        peak = max([peak] + [r["peak_traced_bytes"] for r in results])
        history.append({"iteration": it, "changed": sum(r["changed"] for r in results),
                        "messages": sum(r["messages"] for r in results),
                        "max_task_peak_traced_bytes": max((r["peak_traced_bytes"] for r in results), default=0)})
        if it >= 1:
            shutil.rmtree(work / "msgs" / f"{it - 1:04d}", ignore_errors=True)
            shutil.rmtree(work / "labels" / f"{it - 1:04d}", ignore_errors=True)
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
                                                "max_task_peak_traced_bytes": peak, "history": history,
                                                "unit": "graph nodes (documents with at least one verified pair)"}})
    m["stats"] = {"nodes": nodes, "components": comps, "iterations": len(history)}
    mf.write_manifest(out_dir, m)
    return m
