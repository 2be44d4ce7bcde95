"""Stage group: MinHash fuzzy deduplication, partitioned end to end (no step sees every signature).

1. `MinHashSignatures` (one task per input shard). Shingles are word n-grams (`ngram` words of the
   lower-cased text, hashed with xxh3 and combined vectorised, `textutil.ngram_hashes`). Signatures
   use datasketch's MinHash definition, scheme "affine32": the same permutations
   (`MinHash(num_perm, seed, scheme="affine32").permutations`), datasketch's murmur3 pre-mix and
   h -> a*h + b mod 2^32, minimum per permutation; computed for a whole batch of documents at once
   by one compiled loop (numba, `_min_affine32`) instead of one `update` per shingle. The result equals
   `MinHash(...).update_batch(shingles)` exactly (tests check it). For every band the task hashes
   the band's `rows` values to a 64-bit key and scatters (band, key, node) to
   `bands/<bucket>/<shard>.npy`, bucket = band * per_band + key % per_band (band-major: a bucket
   holds one band's slice of the key space); it also writes its node table (id, quality, length)
   and, for exact verification, the sorted 64-bit shingle set of every document.
2. `MinHashBuckets` (one task per bucket): sort the bucket's records by (band, key); documents sharing
   a key are candidates (all pairs of a group up to `max_group_pairs` members, a star around the
   first member beyond), streamed group by group into a union-find over the bucket's nodes: a pair
   whose documents are already connected in this bucket is skipped (it cannot change the
   components), the others are verified (`verify`): "exact" computes the true Jaccard of the two
   shingle sets (read per pair with pread), "signature" the MinHash estimate, "none" accepts every
   candidate. The task's output lists the accepted pairs (those that joined two components). The
   bucket's components become tree edges (`spanning_forest`), scattered by a hash of the node to
   the connected-components partitions.
3. `components.connected_components`: partitioned min-label propagation (see there).
4. `clusters`: per cluster, keep one document: highest quality score (metadata.scores.quality),
   then longest text, then smallest id; a partitioned reduction (no task holds a whole cluster);
   decisions go to the input shard of each member.
5. `DecisionFilter` "minhash" (one task per input shard): drop the others with reason
   "minhash_duplicate"; every member gets metadata.minhash {cluster, size, kept, kept_id}.

Memory per task depends on the partition sizes, not on the corpus: a bucket task holds its records
(`band_records_per_bucket` at most) and one int per node; the number of buckets per band and of
components partitions both grow with the corpus (`sizes_for`). Buckets are band-major so that the
number of distinct buckets a duplicate family's band groups fall into (and so the number of tree
edges per node the components step receives) is the number of bands it collides in, whatever the
number of buckets; with key-only hashing it grew with the bucket count up to the number of bands.
What still depends on the data: the documents sharing one band key all land in one bucket (exact
duplicates are removed before, by dedup_exact), and the graph nodes and edges per partition follow
the corpus's share of near-duplicates.

LSH bands and rows: unless set in the recipe, (bands, rows) minimise
fp_weight * P(false positive) + fn_weight * P(false negative) around `threshold` over
bands * rows <= num_perm, with datasketch's own optimiser (`datasketch.lsh._optimal_param`).
The default weights favour recall (0.02 / 0.98) because verification removes false positives.
"""

from __future__ import annotations

import math
import os
from array import array
from collections import OrderedDict
from pathlib import Path
from typing import Literal, Optional

import numba
import numpy as np

from minisigma.core.recipes import Section
from minisigma.core.runner import Stage, Task
from minisigma.core.shards import read_docs

from curation.refine.decisions import NODE, DecisionFilter, doc_quality, id_bytes
from curation.refine.dedup_exact import tasks_by_partition
from curation.refine.memtrace import traced
from curation.refine.partitions import load_concat, make_node, node_part, npy_header, save_npy, scatter, sorted_unique
from curation.refine.textutil import _NGRAM_MULTS, fmix64, ngram_hashes, words

BAND = np.dtype([("band", "<u2"), ("key", "<u8"), ("node", "<u8")])
PAIR = np.dtype([("u", "<u8"), ("v", "<u8"), ("jaccard", "<f4")])
EDGE = np.dtype([("src", "<u8"), ("dst", "<u8")])
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
    band_records_per_bucket: int = 1_000_000  # records (documents) of one band per bucket: sets buckets per band
    nodes_per_partition: int = 200_000  # sets the number of connected-components partitions
    max_iterations: int = 100
    # shingles per signature batch: bounds the extra memory (8 bytes a shingle); the speed barely depends on
    # it since the compiled kernel writes no [shingles x num_perm] temporary (`minisigma bench minhash`)
    batch_shingles: int = 1 << 20


def lsh_params(c: MinHashConfig) -> tuple[int, int]:
    if c.bands and c.rows:
        if c.bands * c.rows > c.num_perm:
            raise ValueError(f"bands*rows = {c.bands * c.rows} > num_perm = {c.num_perm}")
        return c.bands, c.rows
    from datasketch.lsh import _optimal_param

    return _optimal_param(c.threshold, c.num_perm, c.fp_weight, c.fn_weight)


def candidate_probability(j: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - j ** rows) ** bands


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _min_affine32(hv: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[d, p] = min(out[d, p], (a[p] * h + b[p]) mod 2^32) over the pre-mixed shingle hashes h of
    document d (hv[offsets[d]:offsets[d + 1]])."""
    n_perm = a.shape[0]
    for d in range(offsets.shape[0] - 1):
        row = out[d]
        for i in range(offsets[d], offsets[d + 1]):
            h = hv[i]
            for p in range(n_perm):
                v = np.uint32(h * a[p] + b[p])  # truncation to 32 bits: the affine32 arithmetic mod 2^32
                if v < row[p]:
                    row[p] = v


class SignatureComputer:
    """datasketch-compatible MinHash signatures (scheme affine32) for many documents at once.

    What makes it cheaper than datasketch's `update_batch` at identical signatures: datasketch builds a
    Python list of the shingle hashes of each document, then materialises the whole
    [shingles x num_perm] product a*h + b in memory and reduces it with `min`: three passes over a
    temporary of 4 * num_perm bytes per shingle, plus a Python call per document. Here one compiled
    loop (`_min_affine32`, numba) keeps each document's num_perm minima in registers / L1 and makes a
    single pass over the shingle hashes of a whole batch of documents, so nothing of size
    shingles x num_perm is ever written; the loop over permutations is vectorised by LLVM.
    (`minisigma bench minhash` measures both on the same shingle hashes and checks the signatures are
    equal; tests/curation/test_refine_minhash.py checks equality with `MinHash.update_batch`.)"""

    def __init__(self, num_perm: int = 128, seed: int = 1, ngram: int = 5, batch_shingles: int = 1 << 20):
        from datasketch import MinHash

        self.num_perm, self.seed, self.ngram, self.batch_shingles = num_perm, seed, ngram, batch_shingles
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a = np.ascontiguousarray(a, dtype=np.uint32)
        self.b = np.ascontiguousarray(b, dtype=np.uint32)

    def shingles(self, text: str) -> np.ndarray:
        """64-bit shingle hashes of a text (duplicates included)."""
        return ngram_hashes(words(text), self.ngram)

    @staticmethod
    def to32(sh64: np.ndarray) -> np.ndarray:
        return (sh64 & np.uint64(0xFFFFFFFF)).astype(np.uint32)

    def signatures(self, shingle_lists: list[np.ndarray]) -> np.ndarray:
        """[n_docs, num_perm] uint32 signatures; a document without shingles gets all 0xFFFFFFFF.

        Documents go to the kernel in batches of about `batch_shingles` shingles (each batch's hashes
        are concatenated and pre-mixed: 8 bytes per shingle of extra memory)."""
        from datasketch.minhash import _fmix

        out = np.full((len(shingle_lists), self.num_perm), 0xFFFFFFFF, dtype=np.uint32)
        lens = np.fromiter((len(s) for s in shingle_lists), dtype=np.int64, count=len(shingle_lists))
        i = 0
        while i < len(shingle_lists):
            j, total = i, 0
            while j < len(shingle_lists) and (total == 0 or total + lens[j] <= self.batch_shingles):
                total += lens[j]
                j += 1
            if total:
                offsets = np.zeros(j - i + 1, dtype=np.int64)
                np.cumsum(lens[i:j], out=offsets[1:])
                hv = _fmix(self.to32(np.concatenate(shingle_lists[i:j])), 32)  # datasketch's murmur3 pre-mix
                _min_affine32(hv, offsets, self.a, self.b, out[i:j])
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
        if n_buckets % self.bands:
            raise ValueError(f"{n_buckets} buckets is not a multiple of {self.bands} bands")
        self.per_band = n_buckets // self.bands

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
        bucket = recs["band"].astype(np.int64) * self.per_band + (recs["key"] % np.uint64(self.per_band)).astype(np.int64)
        scatter(work / "bands", task.index, bucket, recs, self.n_buckets)
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
    """Per-document arrays of the signature stage (shingle sets or signatures), read per document with
    `os.pread`: no array per shard is kept, and at most `max_open` shard files stay open (least recently
    used closed first), so a bucket task's memory does not grow with the number of input shards."""

    def __init__(self, root: Path, kind: str, num_perm: int, max_open: int = 64):
        self.root, self.kind, self.num_perm, self.max_open = str(root), kind, num_perm, max_open
        self.open: OrderedDict[int, tuple] = OrderedDict()

    def _fd(self, path: str) -> tuple[int, int]:
        with open(path, "rb") as f:
            npy_header(f)
            offset = f.tell()
        return os.open(path, os.O_RDONLY), offset

    def _shard(self, shard: int) -> tuple:
        if shard in self.open:
            self.open.move_to_end(shard)
            return self.open[shard]
        if len(self.open) >= self.max_open:
            self.close_one()
        if self.kind == "exact":
            d = os.path.join(self.root, "shingles")
            entry = (*self._fd(os.path.join(d, f"{shard:05d}.npy")), *self._fd(os.path.join(d, f"{shard:05d}.off.npy")))
        else:
            entry = (*self._fd(os.path.join(self.root, "sigs", f"{shard:05d}.npy")), -1, 0)
        self.open[shard] = entry
        return entry

    def close_one(self) -> None:
        _, (fd, _, ofd, _) = self.open.popitem(last=False)
        os.close(fd)
        if ofd >= 0:
            os.close(ofd)

    def close(self) -> None:
        while self.open:
            self.close_one()

    def get(self, node: int) -> np.ndarray:
        shard, row = int(node) >> 32, int(node) & 0xFFFFFFFF
        fd, off, ofd, ooff = self._shard(shard)
        if ofd < 0:
            size = 4 * self.num_perm
            return np.frombuffer(os.pread(fd, size, off + row * size), dtype="<u4")
        lo, hi = np.frombuffer(os.pread(ofd, 16, ooff + 8 * row), dtype="<i8").tolist()
        return np.frombuffer(os.pread(fd, 8 * (hi - lo), off + 8 * lo), dtype="<u8")


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not len(a) and not len(b):
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


def group_pairs(members: list[int], max_all: int):
    """Candidate pairs of one colliding group (sorted, distinct members): every pair up to `max_all`
    members, a star around the first member beyond."""
    if len(members) <= max_all:
        for i in range(len(members)):
            for j in range(i + 1, len(members)):
                yield members[i], members[j]
    else:
        first = members[0]
        for v in members[1:]:
            yield first, v


class UnionFind:
    """Union-find over 0..n-1 in a compact int array (8 bytes a node, no Python object per node);
    the root of a set is its smallest member."""

    def __init__(self, n: int):
        self.parent = array("q", range(n))

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if ra < rb:
            self.parent[rb] = ra
        else:
            self.parent[ra] = rb
        return True

    def roots(self) -> np.ndarray:
        """The root of every element (vectorised pointer jumping)."""
        r = np.frombuffer(self.parent, dtype=np.int64).copy()
        while True:
            nxt = r[r]
            if np.array_equal(nxt, r):
                return r
            r = nxt


def spanning_forest(roots: np.ndarray) -> np.ndarray:
    """[n_edges, 2] (child, parent) local indices: for every set of more than one element (given the
    root of each element, the root being the set's smallest member), a 16-ary tree over its sorted
    members: degree <= 17 and depth log16(size), so neither a hub partition nor the number of
    propagation iterations grows with a large duplicate family."""
    idx = np.arange(len(roots))
    has_members = np.zeros(len(roots), dtype=bool)
    has_members[roots[roots != idx]] = True
    members = idx[(roots != idx) | has_members]
    members = members[np.lexsort((members, roots[members]))]  # by set (its smallest member), then member
    if not len(members):
        return np.zeros((0, 2), dtype=np.int64)
    r = roots[members]
    start = np.concatenate([[True], r[1:] != r[:-1]])
    first = np.flatnonzero(start)[np.cumsum(start) - 1]  # position of each member's set start
    pos = np.arange(len(members)) - first
    child = pos > 0
    parent = members[first[child] + (pos[child] - 1) // FOREST_ARITY]
    return np.stack([members[child], parent], axis=1)


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
        files = [str(p) for p in task.inputs]
        with traced() as peak:
            recs = load_concat(files, BAND)
            sink.take(n=len(recs))
            sink.count_out(len(recs))
            recs = recs[np.lexsort((recs["node"], recs["key"], recs["band"]))]
            nodes = sorted_unique(recs["node"])  # local index i <-> node id nodes[i] (ascending)
            local = np.searchsorted(nodes, recs["node"])
            if len(recs) > 1:
                same = (recs["band"][1:] == recs["band"][:-1]) & (recs["key"][1:] == recs["key"][:-1])
                starts = np.flatnonzero(np.concatenate([[True], ~same]))
            else:
                starts = np.zeros(min(1, len(recs)), dtype=np.int64)
            ends = np.append(starts[1:], len(recs))
            big = ends - starts > 1
            starts, ends = starts[big], ends[big]
            del recs
            sink.stat("colliding_groups", len(starts))
            store = _Store(Path(self.work), c.verify, c.num_perm) if c.verify != "none" else None
            uf = UnionFind(len(nodes))
            us, vs, js = array("q"), array("q"), array("f")
            n_cand = n_skip = 0
            for s, e in zip(starts.tolist(), ends.tolist()):
                # Streamed group by group: no set of candidate pairs is built. A pair already connected in
                # this bucket is skipped: it cannot change the components, so the edges are the same as
                # when every candidate is verified.
                for a, b in group_pairs(local[s:e].tolist(), c.max_group_pairs):
                    n_cand += 1
                    if uf.find(a) == uf.find(b):
                        n_skip += 1
                        continue
                    if c.verify == "exact":
                        j = exact_jaccard(store.get(nodes[a]), store.get(nodes[b]))
                    elif c.verify == "signature":
                        j = float(np.count_nonzero(store.get(nodes[a]) == store.get(nodes[b]))) / c.num_perm
                    else:
                        j = float("nan")
                    if c.verify == "none" or j >= c.threshold:
                        uf.union(a, b)
                        us.append(a)
                        vs.append(b)
                        js.append(j)
            if store is not None:
                store.close()
            del starts, ends, local, store
            sink.stat("candidate_pairs", n_cand)
            sink.stat("skipped_already_connected", n_skip)
            sink.stat("verified_pairs", len(us))
            out = np.zeros(len(us), dtype=PAIR)
            out["u"] = nodes[np.frombuffer(us, dtype=np.int64)] if len(us) else 0
            out["v"] = nodes[np.frombuffer(vs, dtype=np.int64)] if len(vs) else 0
            out["jaccard"] = np.frombuffer(js, dtype=np.float32) if len(js) else 0
            out = out[np.lexsort((out["v"], out["u"]))]
            # Only connectivity matters downstream: a spanning forest of the bucket's components, fewer
            # than one edge per node, so large duplicate families do not make the graph quadratic.
            tree = nodes[spanning_forest(uf.roots())]
            del uf
            sink.stat("forest_edges", len(tree))
            edges = np.zeros(2 * len(tree), dtype=EDGE)
            edges["src"] = np.concatenate([tree[:, 0], tree[:, 1]])
            edges["dst"] = np.concatenate([tree[:, 1], tree[:, 0]])
            scatter(os.path.join(self.work, "edges"), task.index, node_part(edges["src"], self.n_parts), edges,
                    self.n_parts)
            with open(sink.path, "wb") as f:
                np.save(f, out)
        # Peak Python+numpy memory of this task above what the worker held before (per-task value in
        # buckets/.parts/NNNNN.json; the benchmark reports median, p95 and max over tasks).
        sink.stat("peak_traced_bytes", peak.bytes)


def minhash_filter(work: str | Path) -> DecisionFilter:
    return DecisionFilter("minhash", Path(work) / "decisions", "minhash_duplicate", "minhash")


def sizes_for(c: MinHashConfig, n_docs: int) -> tuple[int, int]:
    """(band buckets, components partitions) for a corpus of n_docs: buckets = bands x buckets per band,
    so that a bucket holds at most `band_records_per_bucket` records, and partitions of at most
    `nodes_per_partition` documents; both counts grow with the corpus so that per-task memory does not."""
    bands, _ = lsh_params(c)
    return (bands * max(1, math.ceil(n_docs / c.band_records_per_bucket)),
            max(1, math.ceil(n_docs / c.nodes_per_partition)))


__all__ = ["MinHashConfig", "SignatureComputer", "MinHashSignatures", "MinHashBuckets",
           "minhash_filter", "lsh_params", "sizes_for", "band_keys", "exact_jaccard", "PAIR", "EDGE",
           "candidate_probability"]
