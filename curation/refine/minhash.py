"""Stage group: MinHash fuzzy deduplication, partitioned end to end (no step sees every signature).

1. `MinHashSignatures` (one task per input shard). Shingles are word n-grams (`ngram` words of the
   lower-cased text, hashed with xxh3 and combined vectorised, `textutil.ngram_hashes`). Signatures
   use datasketch's MinHash definition, scheme "affine32": the same permutations
   (`MinHash(num_perm, seed, scheme="affine32").permutations`), datasketch's murmur3 pre-mix and
   h -> a*h + b mod 2^32, minimum per permutation; computed for a whole batch of documents at once
   with numpy (`np.minimum.reduceat`) instead of one `update` per shingle. The result equals
   `MinHash(...).update_batch(shingles)` exactly (tests check it). For every band the task hashes
   the band's `rows` values to a 64-bit key and scatters (band, key, node) to
   `bands/<bucket>/<shard>.npy` by key; it also writes its node table (id, quality, length) and,
   for exact verification, the sorted 64-bit shingle set of every document.
2. `MinHashBuckets` (one task per bucket): sort the bucket's records by (band, key); documents sharing
   a key in some band are candidates (all pairs of a group up to `max_group_pairs` members, a star
   around the first member beyond). Candidates are verified (`verify`): "exact" computes the true
   Jaccard of the two shingle sets (memory-mapped, read per pair), "signature" the MinHash estimate,
   "none" keeps every candidate. Pairs at or above `threshold` become edges, scattered by a hash of
   the node to the connected-components partitions.
3. `components.connected_components`: partitioned min-label propagation (see there).
4. `MinHashClusters` (one task per label partition): per cluster, keep one document: highest
   quality score (metadata.scores.quality), then longest text, then smallest id; decisions go to
   the input shard of each member.
5. `DecisionFilter` "minhash" (one task per input shard): drop the others with reason
   "minhash_duplicate"; every member gets metadata.minhash {cluster, size, kept, kept_id}.

LSH bands and rows: unless set in the recipe, (bands, rows) minimise
fp_weight * P(false positive) + fn_weight * P(false negative) around `threshold` over
bands * rows <= num_perm, with datasketch's own optimiser (`datasketch.lsh._optimal_param`).
The default weights favour recall (0.02 / 0.98) because verification removes false positives.
"""

from __future__ import annotations

import math
import tracemalloc
from itertools import combinations
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from minisigma.recipes import Section
from minisigma.runner import Stage, Task
from minisigma.shards import read_docs

from curation.refine.decisions import DECISION, NODE, DecisionFilter, doc_quality, id_bytes
from curation.refine.dedup_exact import tasks_by_partition
from curation.refine.partitions import make_node, node_part, node_row, node_shard, save_npy, scatter
from curation.refine.textutil import _NGRAM_MULTS, fmix64, ngram_hashes, words

BAND = np.dtype([("band", "<u2"), ("key", "<u8"), ("node", "<u8")])
PAIR = np.dtype([("u", "<u8"), ("v", "<u8"), ("jaccard", "<f4")])
EDGE = np.dtype([("src", "<u8"), ("dst", "<u8")])
MEMBER = np.dtype([("node", "<u8"), ("label", "<u8")])
FOREST_ARITY = 16


class MinHashConfig(Section):
    threshold: float = 0.8  # Jaccard similarity of word n-gram sets at which two documents are duplicates
    ngram: int = 5
    num_perm: int = 128
    seed: int = 1
    bands: Optional[int] = None  # derived from threshold unless both bands and rows are set
    rows: Optional[int] = None
    fp_weight: float = 0.02
    fn_weight: float = 0.98
    verify: Literal["exact", "signature", "none"] = "exact"
    max_group_pairs: int = 64
    band_records_per_bucket: int = 1_000_000  # sets the number of band buckets from the corpus size
    nodes_per_partition: int = 200_000  # sets the number of connected-components partitions
    max_iterations: int = 100
    batch_shingles: int = 65_536  # shingles per vectorised signature batch (bounds task memory)


def lsh_params(c: MinHashConfig) -> tuple[int, int]:
    if c.bands and c.rows:
        if c.bands * c.rows > c.num_perm:
            raise ValueError(f"bands*rows = {c.bands * c.rows} > num_perm = {c.num_perm}")
        return c.bands, c.rows
    from datasketch.lsh import _optimal_param

    return _optimal_param(c.threshold, c.num_perm, c.fp_weight, c.fn_weight)


def candidate_probability(j: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - j ** rows) ** bands


class SignatureComputer:
    """datasketch-compatible MinHash signatures (scheme affine32) for many documents at once."""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, batch_shingles: int = 65_536):
        from datasketch import MinHash

        self.num_perm, self.seed, self.ngram, self.batch_shingles = num_perm, seed, ngram, batch_shingles
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a = a.astype(np.uint32)[None, :]
        self.b = b.astype(np.uint32)[None, :]

    def shingles(self, text: str) -> np.ndarray:
        """64-bit shingle hashes of a text (duplicates included)."""
        return ngram_hashes(words(text), self.ngram)

    @staticmethod
    def to32(sh64: np.ndarray) -> np.ndarray:
        return (sh64 & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def signatures(self, shingle_lists: list[np.ndarray]) -> np.ndarray:
        """[n_docs, num_perm] uint32 signatures; a document without shingles gets all 0xFFFFFFFF."""
        from datasketch.minhash import _fmix

        out = np.full((len(shingle_lists), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        i = 0
        while i < len(shingle_lists):
            j, total = i, 0
            while j < len(shingle_lists) and (total == 0 or total + len(shingle_lists[j]) <= self.batch_shingles):
                total += len(shingle_lists[j])
                j += 1
            chunk = [(k, s) for k, s in zip(range(i, j), shingle_lists[i:j]) if len(s)]
            if chunk:
                hv = _fmix(self.to32(np.concatenate([s for _, s in chunk])), 32)[:, None]
                with np.errstate(over="ignore"):
                    phv = hv * self.a + self.b
                starts = np.cumsum([0] + [len(s) for _, s in chunk[:-1]])
                out[[k for k, _ in chunk]] = np.minimum.reduceat(phv, starts, axis=0)
            i = j
        return out

    def lean(self, sig: np.ndarray):
        """The datasketch LeanMinHash of one signature row."""
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=sig, scheme="affine32")


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[n_docs, bands] 64-bit keys: a polynomial hash of each band's `rows` values, finalised."""
    keys = np.zeros((sigs.shape[0], bands), dtype=np.uint64)
    s64 = sigs.astype(np.uint64)
    mults = np.resize(_NGRAM_MULTS, rows)
    with np.errstate(over="ignore"):
        for band in range(bands):
            block = s64[:, band * rows:(band + 1) * rows]
            keys[:, band] = fmix64((block * mults[None, :]).sum(axis=1, dtype=np.uint64) + np.uint64(band))
    return keys


# --------------------------------------------------------------------------- 1. signatures
class MinHashSignatures(Stage):
    name = "minhash_signatures"
    output_suffix = ".npy"

    def __init__(self, config: MinHashConfig, work: str | Path, n_buckets: int):
        super().__init__(config)
        self.work = str(work)
        self.n_buckets = n_buckets
        self.bands, self.rows = lsh_params(config)

    def process(self, task: Task, sink) -> None:
        c = self.config
        comp = SignatureComputer(c.num_perm, c.seed, c.ngram, c.batch_shingles)
        table, shingles = [], []
        for row, doc in enumerate(read_docs(task.inputs[0])):
            sink.take(doc)
            text = doc.get("text") or ""
            sh = comp.shingles(text)
            shingles.append(sh)
            table.append((int(make_node(task.index, row)), id_bytes(doc), doc_quality(doc), len(text)))
            if not len(sh):
                sink.stat("docs_without_shingles")
            sink.count_out()
        nodes = np.array(table, dtype=NODE)
        sigs = comp.signatures(shingles)
        sink.stat("shingles", int(sum(len(s) for s in shingles)))
        work = Path(self.work)
        has = np.array([len(s) > 0 for s in shingles], dtype=bool)
        keys = band_keys(sigs[has], self.bands, self.rows)
        recs = np.zeros(keys.size, dtype=BAND)
        recs["band"] = np.tile(np.arange(self.bands, dtype=np.uint16), keys.shape[0])
        recs["key"] = keys.reshape(-1)
        recs["node"] = np.repeat(nodes["node"][has], self.bands)
        scatter(work / "bands", task.index, (recs["key"] % np.uint64(self.n_buckets)).astype(np.int64), recs,
                self.n_buckets)
        if c.verify == "exact":
            sets = [np.unique(s) for s in shingles]
            offsets = np.cumsum([0] + [len(s) for s in sets]).astype(np.int64)
            flat = np.concatenate(sets) if sets else np.zeros(0, np.uint64)
            save_npy(work / "shingles" / f"{task.index:05d}.npy", flat.astype(np.uint64))
            save_npy(work / "shingles" / f"{task.index:05d}.off.npy", offsets)
        if c.verify == "signature":
            save_npy(work / "sigs" / f"{task.index:05d}.npy", sigs)
        with open(sink.path, "wb") as f:
            np.save(f, nodes)


# --------------------------------------------------------------------------- 2. buckets -> verified edges
class _Store:
    """Memory-mapped per-shard arrays (shingle sets or signatures), opened on first use."""

    def __init__(self, root: Path, kind: str):
        self.root, self.kind, self.open = root, kind, {}

    def get(self, node: int) -> np.ndarray:
        shard, row = int(node) >> 32, int(node) & 0xFFFFFFFF
        if shard not in self.open:
            if self.kind == "exact":
                self.open[shard] = (np.load(self.root / "shingles" / f"{shard:05d}.npy", mmap_mode="r"),
                                    np.load(self.root / "shingles" / f"{shard:05d}.off.npy", mmap_mode="r"))
            else:
                self.open[shard] = (np.load(self.root / "sigs" / f"{shard:05d}.npy", mmap_mode="r"), None)
        data, off = self.open[shard]
        return np.asarray(data[off[row]:off[row + 1]]) if off is not None else np.asarray(data[row])


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a) and not len(b):
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


def group_pairs(nodes: np.ndarray, max_all: int) -> list[tuple[int, int]]:
    nodes = np.unique(nodes)
    if len(nodes) <= max_all:
        return [(int(u), int(v)) for u, v in combinations(nodes.tolist(), 2)]
    first = int(nodes[0])
    return [(first, int(v)) for v in nodes[1:].tolist()]


def spanning_forest(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Tree edges connecting the nodes of each connected component of the pairs (same components,
    at most size - 1 edges per component)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in zip(u.tolist(), v.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    comps: dict[int, list[int]] = {}
    for n in sorted(set(parent) | set(parent.values())):
        comps.setdefault(find(n), []).append(n)
    out = []
    for members in comps.values():
        # A 16-ary tree over the sorted members: degree <= 17 and depth log16(size), so neither a hub
        # partition nor the number of propagation iterations grows with a large duplicate family.
        out.extend((members[i], members[(i - 1) // FOREST_ARITY]) for i in range(1, len(members)))
    return np.array(out, dtype=np.uint64).reshape(-1, 2)


class MinHashBuckets(Stage):
    name = "minhash_buckets"
    output_suffix = ".npy"

    def __init__(self, config: MinHashConfig, work: str | Path, n_parts: int):
        super().__init__(config)
        self.work = str(work)
        self.n_parts = n_parts

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return tasks_by_partition(inputs)

    def process(self, task: Task, sink) -> None:
        c = self.config
        tracemalloc.start()
        arrs = [np.load(p) for p in task.inputs]
        recs = np.concatenate(arrs) if arrs else np.zeros(0, BAND)
        del arrs
        sink.take(n=len(recs))
        sink.count_out(len(recs))
        recs = recs[np.lexsort((recs["node"], recs["key"], recs["band"]))]
        cands: set[tuple[int, int]] = set()
        if len(recs) > 1:
            same = (recs["band"][1:] == recs["band"][:-1]) & (recs["key"][1:] == recs["key"][:-1])
            starts = np.flatnonzero(np.concatenate([[True], ~same]))
            ends = np.append(starts[1:], len(recs))
            for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                sink.stat("colliding_groups")
                cands.update(group_pairs(recs["node"][s:e], c.max_group_pairs))
        del recs
        cands_sorted = sorted(cands)
        sink.stat("candidate_pairs", len(cands_sorted))
        store = _Store(Path(self.work), c.verify) if c.verify != "none" else None
        pairs = []
        for u, v in cands_sorted:
            if c.verify == "exact":
                j = exact_jaccard(store.get(u), store.get(v))
            elif c.verify == "signature":
                j = float(np.count_nonzero(store.get(u) == store.get(v))) / c.num_perm
            else:
                j = float("nan")
            if c.verify == "none" or j >= c.threshold:
                pairs.append((u, v, j))
        out = np.array(pairs, dtype=PAIR)
        sink.stat("verified_pairs", len(out))
        # Only connectivity matters downstream: a spanning forest of this bucket's verified pairs has the same
        # components with fewer than one edge per node, so large duplicate families do not make the graph
        # quadratic (see spanning_forest for the bounded degree).
        tree = spanning_forest(out["u"], out["v"])
        sink.stat("forest_edges", len(tree))
        edges = np.zeros(2 * len(tree), dtype=EDGE)
        edges["src"] = np.concatenate([tree[:, 0], tree[:, 1]]) if len(tree) else np.zeros(0, np.uint64)
        edges["dst"] = np.concatenate([tree[:, 1], tree[:, 0]]) if len(tree) else np.zeros(0, np.uint64)
        scatter(Path(self.work) / "edges", task.index, node_part(edges["src"], self.n_parts), edges, self.n_parts)
        with open(sink.path, "wb") as f:
            np.save(f, out)
        # Peak Python+numpy memory of this task (per-task value in .parts/NNNNN.json; benchmarks take the max).
        sink.stat("peak_traced_kib", tracemalloc.get_traced_memory()[1] // 1024)
        tracemalloc.stop()


# --------------------------------------------------------------------------- 4. clusters -> decisions
class MinHashClusters(Stage):
    name = "minhash_clusters"
    output_suffix = ".npy"

    def __init__(self, config: MinHashConfig, work: str | Path, signatures_dir: str | Path, n_shards: int):
        super().__init__(config)
        self.work = str(work)
        self.signatures_dir = str(signatures_dir)
        self.n_shards = n_shards

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return tasks_by_partition(inputs)

    def process(self, task: Task, sink) -> None:
        arrs = [np.load(p) for p in task.inputs]
        mem = np.concatenate(arrs) if arrs else np.zeros(0, MEMBER)
        sink.take(n=len(mem))
        sink.count_out(len(mem))
        # Attributes of each member, read from the node tables of the signature stage (memory-mapped).
        table = np.zeros(len(mem), dtype=NODE)
        tables: dict[int, np.ndarray] = {}
        shards, rows = node_shard(mem["node"]), node_row(mem["node"])
        for s in np.unique(shards):
            if s not in tables:
                tables[int(s)] = np.load(Path(self.signatures_dir) / f"{int(s):05d}.npy", mmap_mode="r")
            sel = shards == s
            table[sel] = tables[int(s)][rows[sel]]
        order = np.lexsort((mem["node"], table["id"], -table["length"], -table["quality"].astype(np.float64),
                            mem["label"]))
        mem, table = mem[order], table[order]
        dec = np.zeros(len(mem), dtype=DECISION)
        if len(mem):
            start = np.concatenate([[True], mem["label"][1:] != mem["label"][:-1]])
            starts = np.flatnonzero(start)
            sizes = np.diff(np.append(starts, len(mem)))
            group = np.cumsum(start) - 1
            first = starts[group]
            dec["node"] = mem["node"]
            dec["keeper"] = table["id"][first]
            dec["cluster"] = mem["label"]
            dec["size"] = sizes[group]
            dec["keep"] = np.arange(len(mem)) == first
            dec["similarity"] = np.nan
            sink.stat("clusters", len(starts))
            sink.stat("removed", int(len(mem) - len(starts)))
            for lo, hi, name in [(2, 2, "2"), (3, 5, "3-5"), (6, 20, "6-20"), (21, 1 << 62, "21+")]:
                sink.stat(f"clusters_of_size_{name}", int(((sizes >= lo) & (sizes <= hi)).sum()))
        scatter(Path(self.work) / "decisions", task.index, node_shard(dec["node"]), dec, self.n_shards)
        with open(sink.path, "wb") as f:
            np.save(f, dec)


def minhash_filter(work: str | Path) -> DecisionFilter:
    return DecisionFilter("minhash", Path(work) / "decisions", "minhash_duplicate", "minhash")


def sizes_for(c: MinHashConfig, n_docs: int) -> tuple[int, int]:
    """(band buckets, components partitions) for a corpus of n_docs: both grow with the corpus so that
    per-task memory stays bounded."""
    bands, _ = lsh_params(c)
    return (max(1, math.ceil(n_docs * bands / c.band_records_per_bucket)),
            max(1, math.ceil(n_docs / c.nodes_per_partition)))


__all__ = ["MinHashConfig", "SignatureComputer", "MinHashSignatures", "MinHashBuckets", "MinHashClusters",
           "minhash_filter", "lsh_params", "sizes_for", "band_keys", "exact_jaccard", "PAIR", "EDGE", "MEMBER",
           "candidate_probability"]
