"""Extraction pages/s on one core, side by side with datatrove at its best and equal to ours, over the
same WARC records:

* ours: the project's extract stage, run by the stage runner (local executor), three ways: its defaults
  (trafilatura fast mode, and the full algorithm again for a page the fast mode returns nothing for),
  `ours_fast_only` (fast mode, no fallback) and `ours_full` (the full algorithm): the last two give the
  same output as datatrove's two settings, so their ratios are the ones at identical output.
* datatrove `WarcReader -> Trafilatura -> JsonlWriter` (LocalPipelineExecutor, 1 task), with the same
  trafilatura keyword arguments as ours (its step passes extra ones through), once with `fast=True`
  and once with `fast=False`; in the peer environment of benchmarks/common.py, same trafilatura as
  ours so that texts can be compared.

Where the time goes: on both sides almost all of it is inside trafilatura; the WARC reading,
decoding and writing around it are a few percent. About half of trafilatura's time on these pages is
its XPath filters (OVERALL_DISCARD_XPATH, BODY_XPATH, ...), mostly EXSLT `re:test` calls that lxml
runs as a Python callback per element and pattern. Ours evaluates them as exact Python predicates over
lxml's C tree walk (curation/extract_accel.py), and looks element classes up in C; the rest of
trafilatura runs as it is, so the texts are the same. datatrove has no setting for either.

Sides alternate (A B A B ...) for `--rounds` rounds; min and median are reported, with the pages
each side kept and how many texts are identical to ours. Writes benchmarks/results/curation.json.

The input is a crawl directory (NNNNN.warc.gz, e.g. runs/tiny/crawl) or any folder of HTML files
(e.g. the localdocs cache ~/.cache/minisigma/localdocs/root); `--limit` pages are taken, spread
evenly over the sorted list.

    python benchmarks/bench_curation.py DIR [--limit 400 --rounds 3]     (or: minisigma bench curation DIR)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import alternate, machine, peer_python, ratio, run_peer, summary, write_result  # noqa: E402
from minisigma.core.errors import UserError  # noqa: E402

PEER_REQUIREMENTS = ["xxhash>=3.4,<4"]  # the same peer environment as bench_minhash (datatrove's own pins)


def _spread(items: list, limit: int | None) -> list:
    if not limit or len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def html_records(src: Path, limit: int | None) -> list[tuple[str, bytes, list[tuple[str, str]]]]:
    """(url, body, http headers) of the HTML 200 responses of a crawl directory, or of a folder of HTML files."""
    from warcio.archiveiterator import ArchiveIterator

    warcs = sorted(src.glob("*.warc.gz"))
    out = []
    if warcs:
        for w in warcs:
            with open(w, "rb") as f:
                for rec in ArchiveIterator(f):
                    if rec.rec_type != "response" or not rec.http_headers or rec.http_headers.get_statuscode() != "200":
                        continue
                    if "html" not in (rec.http_headers.get_header("Content-Type") or ""):
                        continue
                    out.append((rec.rec_headers.get_header("WARC-Target-URI"), rec.content_stream().read(),
                                rec.http_headers.headers))
        return _spread(out, limit)
    files = _spread(sorted(p for p in src.rglob("*") if p.suffix in (".html", ".htm") and p.is_file()), limit)
    return [(f"http://bench.local/{p.relative_to(src).as_posix()}", p.read_bytes(),
             [("Content-Type", "text/html; charset=utf-8")]) for p in files]


def write_warcs(records, out_dir: Path, shards: int) -> list[Path]:
    """Deal the records round-robin into `shards` WARC files (equal work per shard)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{i:05d}.warc.gz" for i in range(shards)]
    files = [open(p, "wb") for p in paths]
    try:
        writers = [WARCWriter(f, gzip=True) for f in files]
        for n, (url, body, headers) in enumerate(records):
            w = writers[n % shards]
            http = StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"}))
    finally:
        for f in files:
            f.close()
    return paths


def ours_texts(out: Path) -> dict[str, str]:
    from minisigma.core.shards import read_docs

    return {d["url"]: d["text"] for p in sorted(out.glob("0*.jsonl.gz")) for d in read_docs(p)}


def agreement(ours: dict[str, str], peer: dict[str, str]) -> dict:
    both = set(ours) & set(peer)
    return {"pages_kept_ours": len(ours), "pages_kept_peer": len(peer), "kept_by_both": len(both),
            "identical_texts": sum(ours[u] == peer[u] for u in both)}


def run(src: Path, limit: int | None = 400, rounds: int = 3, shards: int = 4, peer: bool = True,
        scaling: bool = False, name: str = "curation") -> dict:
    from curation.extract import Extract, ExtractConfig
    from minisigma.core.runner import run_stage

    src = Path(src)
    started = machine()
    records = html_records(src, limit)
    if not records:
        raise UserError(f"{src}: no WARC shards with HTML responses and no HTML files")
    work = Path(tempfile.mkdtemp(prefix="bench-curation-"))
    try:
        warcs = write_warcs(records, work / "warcs", shards)
        n = len(records)
        config = ExtractConfig(min_chars=0)  # the defaults, keeping every non-empty page (as datatrove does)
        trafilatura_kwargs = dict(favour_precision=config.favor_precision, include_tables=config.include_tables,
                                  deduplicate=config.deduplicate, fast=config.fast)  # include_comments=False in both
        # our side for each peer setting, at identical output: fast mode without the page-by-page
        # fallback is datatrove's fast=True, the full algorithm is its fast=False
        configs = {"ours": config,
                   "ours_fast_only": config.model_copy(update={"fast_fallback": False}),
                   "ours_full": config.model_copy(update={"fast": False})}
        pairs = {"ours_fast_only": "datatrove_fast_True", "ours_full": "datatrove_fast_False"}
        texts: dict[str, dict[str, str]] = {}

        def ours(name: str):
            def side():
                out = work / name
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                run_stage(Extract(configs[name]), [str(p) for p in warcs], out, executor="local", progress=False)
                seconds = time.perf_counter() - t0
                texts[name] = ours_texts(out)
                return seconds
            return side

        sides = {"ours": ours("ours")}
        peer_versions = {}
        if peer:
            py = peer_python("datatrove-processing", PEER_REQUIREMENTS)
            script = Path(__file__).resolve().parent / "peer_datatrove.py"

            def datatrove(fast: bool):
                def side():
                    out = work / f"datatrove-{fast}"
                    shutil.rmtree(out, ignore_errors=True)
                    kw = {**trafilatura_kwargs, "fast": fast, "timeout": config.timeout_s}
                    r = run_peer(py, script, ["extract", str(work / "warcs"), str(out), json.dumps(kw)])
                    texts[f"datatrove_fast_{fast}"] = {u: t for u, t in r["texts"].items() if t}
                    peer_versions.update(r["versions"])
                    return r["seconds"]
                return side

            sides["ours_fast_only"] = ours("ours_fast_only")
            sides["datatrove_fast_True"] = datatrove(True)
            sides["ours_full"] = ours("ours_full")
            sides["datatrove_fast_False"] = datatrove(False)
        times = alternate(sides, rounds)
        peers = [k for k in times if k.startswith("datatrove")]
        res = {"pages": n, "rounds": rounds, "source": str(src),
               "settings": {"ours": {**config.model_dump(), "executor": "local, 1 process",
                                     "sides": {"ours": "the defaults (fast, fast_fallback)",
                                               "ours_fast_only": "fast=True, fast_fallback=False",
                                               "ours_full": "fast=False"}},
                            "datatrove": {"Trafilatura": {**trafilatura_kwargs, "timeout": config.timeout_s,
                                                          "fast": "True / False (two sides)"},
                                          "executor": "LocalPipelineExecutor tasks=1 workers=1",
                                          "versions": peer_versions}},
               "sides": {k: summary(v, n) for k, v in times.items()},
               # ours (the defaults) against each peer side, and each of our sides against its peer setting
               "agreement": {k: agreement(texts["ours"], texts[k]) for k in peers},
               "ratios": {k: ratio(summary(times["ours"], n), summary(times[k], n)) for k in peers},
               "identical_output": {f"{o} vs {p}": {**agreement(texts[o], texts[p]),
                                                    "ratio": ratio(summary(times[o], n), summary(times[p], n))}
                                    for o, p in pairs.items() if p in times}}
        res["agreement"]["ours_pages_kept"] = len(texts["ours"])
        print(f"extraction of {n} HTML pages from {src}, one core each, {rounds} alternating rounds, "
              f"load average {started['load_average']}")
        print("  ours      : " + ", ".join(f"{k}={v}" for k, v in config.model_dump().items() if k != "pdf")
              + "  (ours_fast_only: fast_fallback=False; ours_full: fast=False)")
        if peer:
            print("  datatrove : Trafilatura(" + ", ".join(f"{k}={v}" for k, v in trafilatura_kwargs.items() if k != "fast")
                  + f", timeout={config.timeout_s}, fast=True|False)  {peer_versions}")
        print(f"  {'side':<22}{'best p/s':>10}{'median p/s':>12}{'kept':>7}")
        for k, s in res["sides"].items():
            print(f"  {k:<22}{s['per_s_best']:>10.1f}{s['per_s_median']:>12.1f}{len(texts[k]):>7}")
        for k, r in res["ratios"].items():
            a = res["agreement"][k]
            print(f"  ours (defaults) / {k}: {r['best']:.2f}x best, {r['median']:.2f}x median; kept {a['pages_kept_ours']}"
                  f" vs {a['pages_kept_peer']}, identical {a['identical_texts']} of {a['kept_by_both']}")
        for k, r in res["identical_output"].items():
            print(f"  {k}: {r['ratio']['best']:.2f}x best, {r['ratio']['median']:.2f}x median (target >= 1.5x); kept "
                  f"{r['pages_kept_ours']} vs {r['pages_kept_peer']}, identical {r['identical_texts']} of {r['kept_by_both']}")
        if scaling:
            res["ray_scaling"] = ray_scaling([str(p) for p in warcs], work, config, rounds)
        write_result(name, res, ("trafilatura", "lxml", "warcio", "datatrove", "ray"), started)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ray_scaling(warcs: list[str], work: Path, config, rounds: int = 3) -> dict:
    """The Ray extract stage on a local Ray with 1 and then 2 worker CPUs, alternating `rounds` times
    (meaningful on an otherwise idle machine only). Ray's start is not timed; the first task's worker
    start is, as it is in a real stage."""
    import ray

    from curation.extract import Extract
    from minisigma.core.runner import ensure_ray, run_stage

    def side(workers: int):
        def timed():
            if ray.is_initialized():
                ray.shutdown()
            ensure_ray(None, num_cpus=workers)
            out = work / f"ray{workers}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            run_stage(Extract(config), warcs, out, progress=False)
            seconds = time.perf_counter() - t0
            ray.shutdown()
            return seconds
        return timed

    times = alternate({"workers_1": side(1), "workers_2": side(2)}, rounds)
    one, two = summary(times["workers_1"], len(warcs)), summary(times["workers_2"], len(warcs))
    res = {"shards": len(warcs), "cpus_on_machine": os.cpu_count(), "workers_1": one, "workers_2": two,
           "speedup_1_to_2": ratio(two, one)}
    print(f"Ray extract stage, {len(warcs)} shards, {rounds} alternating rounds: 1 worker {one['median_s']}s, "
          f"2 workers {two['median_s']}s (medians) -> {res['speedup_1_to_2']['median']}x median, "
          f"{res['speedup_1_to_2']['best']}x best")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="a crawl directory (NNNNN.warc.gz) or a folder of HTML files")
    ap.add_argument("--limit", type=int, default=400, help="pages to use (0 = all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--scaling", action="store_true", help="also time the Ray stage with 1 and 2 workers")
    ap.add_argument("--name", default="curation", help="the result's name: benchmarks/results/NAME.json")
    a = ap.parse_args()
    run(a.src, a.limit or None, a.rounds, a.shards, peer=not a.no_peer, scaling=a.scaling, name=a.name)
