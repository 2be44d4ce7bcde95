"""Stage manifests: build, write, show, verify and diff.

One `manifest.json` per stage directory. It records what went in and out (paths, sha256, document
and byte counts), the counts {in, out, dropped{reason}, quarantined{reason}} with the invariant
in = out + sum(dropped) + sum(quarantined), summed per-shard statistics (e.g. a crawl's request
log), failures by name (`errors`: e.g. each URL a crawl could not fetch, with its reason), the
resolved recipe section, the code version, timings, where it ran, and how a rerun resumed
(`resumed_shards`, damaged or stale shards run again in `repairs`, `stale_tmp_removed`).
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console
from rich.table import Table

from minisigma import __version__
from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.paths import find
from minisigma.core.recipes import format_validation_error
from minisigma.core.shards import DOC_SUFFIXES, atomic_write_json, count_records, dumps, sha256_file

MANIFEST = "manifest.json"
SHOWN_ERRORS = 20  # `show` lists this many of a stage's failures by name; the manifest holds them all
SCHEMA = "minisigma.core.manifest/1"


def read_json(path: str | Path):
    """A JSON file's value (a local path or a URL); a missing, unreadable or malformed file is a UserError
    naming it (and the line)."""
    path = path if storage.is_url(path) else Path(path)
    try:
        return json.loads(storage.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a directory, not a JSON file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


class _Entry(BaseModel):
    """One output or rejects shard listed in a stage manifest."""

    model_config = ConfigDict(extra="allow")
    path: str = Field(min_length=1)  # relative to the stage directory (may lead to a sibling work folder)
    sha256: str
    docs: int = Field(ge=0)


class _Counts(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    in_: int = Field(alias="in", ge=0)
    out: int = Field(ge=0)
    dropped: dict[str, int]
    quarantined: dict[str, int]


class _StageManifest(BaseModel):
    """The fields of a stage manifest that show, verify and diff rely on (others are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    counts: _Counts
    outputs: list[_Entry]
    rejects: list[_Entry] = []


def load_manifest(path: str | Path) -> dict:
    """A stage manifest (as written by build_manifest), checked: a malformed one is a UserError naming the
    file and the first bad key, e.g. ``run/crawl/manifest.json: outputs: Field required``."""
    m = read_json(path)
    if not isinstance(m, dict):
        raise UserError(f"{path}: a manifest must be a JSON object")
    try:
        _StageManifest.model_validate(m)
    except ValidationError as e:
        raise UserError(format_validation_error(str(path), e)) from None
    return m


def code_version() -> dict:
    """Git commit and dirty flag of the code that ran (or just the package version outside git)."""
    here = Path(__file__).resolve().parent.parent
    out = {"package": __version__, "commit": None, "dirty": None}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                       timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        out["dirty"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def describe_inputs(inputs: Iterable[Path], sha256_of: Callable[[Path], str] = sha256_file,
                    base: Path | None = None) -> list[dict]:
    """Inputs with their sha256 and, when a sibling manifest lists them, their document counts. A path
    inside the same run as `base` (the stage directory) is recorded relative to it, so the run can move."""
    known: dict[str, dict] = {}
    rows = []
    for p in inputs:
        p = Path(p)
        shown = storage.relative(p, base) if base is not None else str(p)
        if not p.exists():  # a locator (URL, package name), not a file
            rows.append({"path": shown})
            continue
        m = p.parent / MANIFEST
        if str(p.parent) not in known:
            known[str(p.parent)] = {o["path"]: o for o in load_manifest(m)["outputs"]} if m.exists() else {}
        row = {"path": shown, "sha256": sha256_of(p), "bytes": p.stat().st_size}
        listed = known[str(p.parent)].get(p.name)
        if listed is not None:
            row["docs"] = listed["docs"]
        rows.append(row)
    return rows


def build_manifest(*, stage: str, recipe, inputs: list[Path], parts: list[dict], started: float,
                   resumed_shards: int = 0, repairs: list[dict] | None = None, stale_tmp_removed: int = 0,
                   sha256_of: Callable[[Path], str] = sha256_file, cluster: dict | None = None,
                   extra: dict | None = None, base: Path | None = None) -> dict:
    dropped: Counter = Counter()
    quarantined: Counter = Counter()
    stats: Counter = Counter()
    by_source: dict[str, Counter] = {}
    c_in = c_out = t_in = t_out = 0
    outputs, rejects, errors = [], [], []
    for part in parts:
        c = part["counts"]
        c_in += c["in"]
        c_out += c["out"]
        t_in += c.get("tokens_in", 0)
        t_out += c.get("tokens_out", 0)
        dropped.update(c["dropped"])
        quarantined.update(c["quarantined"])
        for src, n in (c.get("by_source") or {}).items():
            by_source.setdefault(src, Counter()).update(n)
        stats.update(part.get("stats", {}))
        outputs.extend(part["outputs"])
        if part.get("rejects"):
            rejects.append(part["rejects"])
        if part.get("errors"):
            shard = part["outputs"][0]["path"] if part.get("outputs") else part.get("index")
            errors.extend({"shard": shard, **e} for e in part["errors"])
    ended = time.time()
    m = {
        "schema": SCHEMA,
        "stage": stage,
        "recipe": recipe,
        "code": code_version(),
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "seconds": round(ended - started, 3),
        "shard_seconds": round(sum(p.get("seconds", 0.0) for p in parts), 3),
        "resumed_shards": resumed_shards,
        "repaired_shards": len(repairs or []),
        "repairs": repairs or [],
        "stale_tmp_removed": stale_tmp_removed,
        "host": platform.node(),
        "cluster": cluster or {},
        "inputs": describe_inputs(inputs, sha256_of, base),
        "outputs": outputs,
        "rejects": rejects,
        "counts": {
            "in": c_in,
            "out": c_out,
            "dropped": dict(sorted(dropped.items())),
            "quarantined": dict(sorted(quarantined.items())),
            "tokens_in": t_in,
            "tokens_out": t_out,
            "token_unit": "whitespace-delimited words",
            # documents and tokens written per document `source` (the report groups them by Table 9's types)
            "by_source": {k: dict(sorted(v.items())) for k, v in sorted(by_source.items())},
        },
        "stats": dict(sorted(stats.items())),
        "errors": errors,  # failures by name (e.g. each URL a crawl could not fetch, with its reason)
    }
    if extra:
        m.update(extra)
    return m


def write_manifest(stage_dir: str | Path, manifest: dict) -> Path:
    """Write a stage's manifest; every path in it (the recipe section echoed, inputs, `extra`) is written
    relative to the stage directory or the checkout (`storage.recorded`), so the run can move."""
    p = Path(stage_dir) / MANIFEST
    atomic_write_json(p, storage.recorded(manifest, p.parent))
    return p


def stage_dirs(run_dir: str | Path) -> list:
    """All stage directories under a run (a directory with a manifest.json), in pipeline order: Paths,
    or URLs (str) for a run at a URL."""
    if storage.is_url(run_dir):
        return _url_stage_dirs(str(run_dir).rstrip("/"))
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such directory")
    if (run_dir / MANIFEST).exists():
        return [run_dir]
    # Stage manifests carry `counts`; other manifest.json files (tokenizer, training) are not stages.
    dirs = [p.parent for p in run_dir.rglob(MANIFEST) if "rejects" not in p.parts and _is_stage(p)]
    if not dirs:
        raise UserError(f"{run_dir}: no stage manifests (manifest.json) found")
    return sorted(dirs, key=lambda d: (str(load_manifest(d / MANIFEST).get("started_at", "")), str(d)))


def _url_stage_dirs(url: str) -> list[str]:
    files = storage.find(url)
    if not files:
        raise UserError(f"{url}: no such directory")
    if MANIFEST in files:
        return [url]
    dirs = [storage.join(url, rel.rsplit("/", 1)[0]) for rel in files
            if rel.endswith("/" + MANIFEST) and "rejects" not in rel.split("/")]
    dirs = [d for d in dirs if _is_stage(storage.join(d, MANIFEST))]
    if not dirs:
        raise UserError(f"{url}: no stage manifests (manifest.json) found")
    return sorted(dirs, key=lambda d: (str(load_manifest(storage.join(d, MANIFEST)).get("started_at", "")), d))


def _in(d, *parts: str):
    """A file of stage directory `d` (a Path, or a URL string)."""
    return storage.join(d, *parts) if isinstance(d, str) else d.joinpath(*parts)


def _rel(d, root) -> str:
    if isinstance(d, str):
        return d[len(str(root).rstrip("/")):].strip("/") or storage.name(d)
    return str(d.relative_to(root)) if d != root else d.name


def _is_stage(path: Path) -> bool:
    m = read_json(path)
    return isinstance(m, dict) and "counts" in m


def _fmt_reasons(d: dict) -> str:
    return ", ".join(f"{k}={v:,}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


def _console() -> Console:
    # Tables are wide; when output is piped (no terminal width), do not squeeze them to 80 columns.
    c = Console()
    return c if c.is_terminal else Console(width=160)


def show(run_dir: str | Path, console: Console | None = None) -> None:
    console = console or _console()
    run_dir = str(run_dir).rstrip("/") if storage.is_url(run_dir) else Path(run_dir)
    table = Table(title=f"minisigma run: {run_dir}", show_lines=False)
    for col, j in [("stage", "left"), ("shards", "right"), ("in", "right"), ("out", "right"),
                   ("tokens out", "right"), ("MB text out", "right"), ("dropped", "left"),
                   ("quarantined", "left"), ("seconds", "right")]:
        table.add_column(col, justify=j)
    for d in stage_dirs(run_dir):
        m = load_manifest(_in(d, MANIFEST))
        c = m["counts"]
        rel = _rel(d, run_dir)
        table.add_row(rel, str(len(m["outputs"])), f"{c['in']:,}", f"{c['out']:,}", f"{c.get('tokens_out', 0):,}",
                      _mb(sum(o.get("text_bytes", 0) for o in m["outputs"])), _fmt_reasons(c["dropped"]),
                      _fmt_reasons(c["quarantined"]), f"{m.get('seconds', 0):,.1f}")
    console.print(table)
    stats_rows = [(d, load_manifest(_in(d, MANIFEST)).get("stats", {})) for d in stage_dirs(run_dir)]
    for d, stats in stats_rows:
        if stats:
            console.print(f"[bold]{storage.name(d)}[/bold] stats: " + _fmt_reasons(stats))
    for d in stage_dirs(run_dir):
        m = read_json(_in(d, MANIFEST))
        name = storage.name(d)
        for r in m.get("repairs", []):
            console.print(f"{name} ran again shard {r['shard']}, not trusted: {r['problem']}", markup=False,
                          highlight=False)
        errors = m.get("errors", [])
        if errors:
            console.print(f"{name} errors ({len(errors):,}):", markup=False, highlight=False)
        for e in errors[:SHOWN_ERRORS]:
            what = e.get("url") or dumps({k: v for k, v in e.items() if k not in ("reason", "detail")})
            console.print(f"  {what}  {e['reason']}" + (f"  ({e['detail']})" if e.get("detail") else ""),
                          markup=False, highlight=False)
        if len(errors) > SHOWN_ERRORS:
            console.print(f"  ... and {len(errors) - SHOWN_ERRORS:,} more in {_in(d, MANIFEST)}", markup=False)
    curated = _in(run_dir, "curated", MANIFEST)
    if storage.isfile(curated) and (by := read_json(curated)["counts"].get("by_source")):
        console.print("[bold]curated[/bold] by source (documents / tokens as words): " +
                      ", ".join(f"{k}={v.get('docs', 0):,}/{v.get('tokens', 0):,}" for k, v in by.items()))


def verify_stage(stage_dir: Path | str) -> list[str]:
    """Problems found in one stage directory, a Path or a URL (empty list = verified)."""
    problems = []
    m = load_manifest(_in(stage_dir, MANIFEST))
    name = m.get("stage", storage.name(stage_dir))
    c = m["counts"]
    dropped = sum(c["dropped"].values())
    quarantined = sum(c["quarantined"].values())
    if c["in"] != c["out"] + dropped + quarantined:
        problems.append(f"{name}: counts do not add up: in={c['in']} != out={c['out']} + dropped={dropped}"
                        f" + quarantined={quarantined}")
    listed_out = sum(o["docs"] for o in m["outputs"])
    if listed_out != c["out"]:
        problems.append(f"{name}: outputs list {listed_out} documents but counts.out is {c['out']}")
    listed_rej = sum(r["docs"] for r in m.get("rejects", []))
    if listed_rej != dropped + quarantined:
        problems.append(f"{name}: rejects hold {listed_rej} records but dropped+quarantined is {dropped + quarantined}")
    for entry in list(m["outputs"]) + list(m.get("rejects", [])):
        p = _in(stage_dir, entry["path"])
        if not storage.exists(p):
            problems.append(f"{name}: missing shard {entry['path']}")
            continue
        if sha256_file(p) != entry["sha256"]:
            problems.append(f"{name}: sha256 mismatch for {entry['path']} (tampered or rewritten)")
            continue
        if storage.name(p).endswith(DOC_SUFFIXES):
            n = count_records(p)
            if n != entry["docs"]:
                problems.append(f"{name}: {entry['path']} holds {n} documents, manifest says {entry['docs']}")
    return problems


def verify(run_dir: str | Path, console: Console | None = None) -> list[str]:
    console = console or _console()
    problems: list[str] = []
    dirs = stage_dirs(run_dir)
    for d in dirs:
        ps = verify_stage(d)
        problems.extend(ps)
        console.print(f"{'[red]FAIL[/red]' if ps else '[green]ok[/green]  '} {d}")
    for p in problems:
        console.print(f"  [red]{p}[/red]")
    console.print(f"{len(dirs)} stage(s), {len(problems)} problem(s)")
    return problems


def diff(run_dir: str | Path, reference_dir: str | Path, rel_tol: float = 0.10,
         console: Console | None = None) -> list[str]:
    """Compare the counts of a run with a reference run, stage by stage; differences beyond
    `rel_tol` (relative) are reported."""
    console = console or _console()
    run_dir, reference_dir = (str(p).rstrip("/") if storage.is_url(p) else Path(p) for p in (run_dir, reference_dir))

    def by_stage(root) -> dict:  # relative stage directory ("." for the root) -> manifest
        return {(_rel(d, root) if str(d) != str(root) else "."): load_manifest(_in(d, MANIFEST))
                for d in stage_dirs(root)}

    ours, ref = by_stage(run_dir), by_stage(reference_dir)
    table = Table(title=f"{run_dir} vs reference {reference_dir}")
    for col in ["stage", "metric", "run", "reference", "delta"]:
        table.add_column(col)
    findings = []
    for stage in sorted(set(ours) | set(ref)):
        if stage not in ours or stage not in ref:
            findings.append(f"{stage}: only in {'reference' if stage in ref else 'run'}")
            continue
        a, b = ours[stage]["counts"], ref[stage]["counts"]
        for key in ["in", "out", "tokens_out"]:
            x, y = a.get(key, 0), b.get(key, 0)
            rel = abs(x - y) / max(abs(y), 1)
            table.add_row(stage, key, f"{x:,}", f"{y:,}", f"{rel:+.1%}" if y else "-")
            if rel > rel_tol:
                findings.append(f"{stage}: {key} {x:,} vs reference {y:,} ({rel:.1%} apart)")
    console.print(table)
    for f in findings:
        console.print(f"[yellow]{f}[/yellow]")
    return findings


REFERENCE_FILES = ("reproduce.json", "eval/eval.json", "eval/answers.json", "bench/attention/results.json")


def snapshot(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy the small record of a run (every stage manifest, reproduce.json, the evaluation summaries
    and the attention bench results) into `dest`, keeping relative paths, for `manifest diff`."""
    import shutil

    run_dir, dest = Path(run_dir), Path(dest)
    copied = []
    files = [d / MANIFEST for d in stage_dirs(run_dir)] + [run_dir / f for f in REFERENCE_FILES]
    files += sorted(run_dir.glob("eval/*/cmdgen/summary.json")) + sorted(run_dir.glob("eval/*/perplexity.json"))
    for f in files:
        if f.is_file():
            target = dest / f.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
            copied.append(target)
    return copied


def read_json_files(run_dir: str | Path, pattern: str) -> Iterator[tuple[Path, Any]]:
    """(path, object) of every readable JSON file matching `pattern` under a run (`paths.find`);
    unreadable ones are left out: for the readers a report uses, which show what they can
    (`verify` is where damage counts)."""
    for p in find(Path(run_dir), pattern):
        try:
            yield p, read_json(p)
        except UserError:
            continue


def read_stages(run_dir: str | Path) -> list[tuple[Path, dict]]:
    """(stage directory, manifest) of every readable stage manifest under a run (one with counts in
    and out), in pipeline order (started_at)."""
    out = []
    for p, m in read_json_files(run_dir, MANIFEST):
        c = m.get("counts") if isinstance(m, dict) else None
        if isinstance(c, dict) and "in" in c and "out" in c:
            out.append((p.parent, m))
    return sorted(out, key=lambda x: (str(x[1].get("started_at", "")), str(x[0])))
