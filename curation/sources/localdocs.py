"""The embedded default corpus: real system documentation from Debian's package registry.

`localdocs` needs no internet beyond the package registry. It
  1. downloads the packages named in a source manifest (manifests/sources/localdocs.yaml) with
     `apt-get download` and unpacks them with `dpkg-deb -x` into a cache (no root needed); the
     package versions and .deb sha256 are recorded as the `fetch` stage's output records;
  2. renders the man pages of those packages to plain text with groff (`ManPages` stage);
  3. serves each package's HTML tree on its own 127.0.0.1 port (`serve_sites`), so the real crawler
     crawls it like a technical blog or documentation site, and extraction turns it into documents.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import yaml

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.recipes import Section, parse_recipe, project_path
from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.paths import MANIFESTS
from minisigma.core.progress import log
from minisigma.core.shards import list_shards, read_docs, sha256_file, stable_id

from curation.sources.registry import RunContext, register_source

DEFAULT_MANIFEST = MANIFESTS / "sources" / "localdocs.yaml"


class PackageSpec(Section):
    """One Debian package of the source manifest."""

    name: str
    category: str = "other"
    html_roots: list[str] = []  # directories inside the package to serve and crawl
    start_pages: list[str] = ["index.html"]  # seeds, relative to each html root
    man: bool = False  # render its man pages
    man_sections: list[str] = ["1", "5", "7", "8"]
    # plain-text data files (general-domain text for the no-system-pretraining baseline)
    text_files: list[str] = []  # glob patterns inside the package
    text_format: Literal["wordnet", "fortune"] = "fortune"
    source: str = "localdocs"  # the documents' `source` (e.g. "general" for the text corpora)
    # the package that ships the programs these man pages document, when it is another one
    # (git-man -> git); "none" for documentation-only packages (manpages). CMDGen-mini records it.
    tools_package: str | None = None
    # CMDGen-mini suite of the tasks mined from these pages: general (executed in the sandbox) or
    # gpu (scored textually: the tools need a GPU)
    suite: Literal["general", "gpu"] = "general"
    # technical PDFs inside the package (papers, reports, specifications; globs, `.pdf.gz` served
    # decompressed): served on 127.0.0.1, crawled as application/pdf, extracted by curation.pdftext
    pdf_files: list[str] = []
    pdf_source: str = "papers"  # the `source` of the PDF documents (the paper path, Table 9's papers)
    note: str = ""

    def program_package(self) -> str | None:
        if self.tools_package == "none":
            return None
        return self.tools_package or self.name


class LocalDocsManifest(Section):
    description: str = ""
    packages: list[PackageSpec]


class LocalDocsSource(Section):
    """Recipe section of the localdocs source."""

    type: Literal["localdocs"] = "localdocs"
    name: str = "localdocs"
    manifest: Path = DEFAULT_MANIFEST
    packages: list[str] | None = None  # a subset of the manifest's packages (None = all)
    cache_dir: Path | None = None  # default: $MINISIGMA_CACHE or ~/.cache/minisigma/localdocs
    html: bool = True
    man: bool = True
    max_man_pages_per_package: int | None = None


def load_manifest(path: Path) -> LocalDocsManifest:
    path = project_path(path)
    if not path.is_file():
        raise UserError(f"{path}: localdocs source manifest not found")
    return parse_recipe(yaml.safe_load(Path(path).read_text()), LocalDocsManifest, str(path))


def selected_packages(src: LocalDocsSource) -> list[PackageSpec]:
    pkgs = load_manifest(src.manifest).packages
    if src.packages is not None:
        by_name = {p.name: p for p in pkgs}
        unknown = [n for n in src.packages if n not in by_name]
        if unknown:
            raise UserError(f"localdocs: packages not in {src.manifest}: {', '.join(unknown)}")
        pkgs = [by_name[n] for n in src.packages]
    return pkgs


def cache_root(src: LocalDocsSource) -> Path:
    if src.cache_dir:
        return Path(src.cache_dir)
    return storage.cache_base() / "localdocs"


# --------------------------------------------------------------------------- fetch
def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def fetch_package(name: str, cache: Path) -> dict:
    """Download (once) and unpack one package; returns its record. Raises RuntimeError with a one-line reason."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            raise RuntimeError("apt-get not available")
        with tempfile.TemporaryDirectory(dir=debs) as tmp:  # own directory: parallel downloads never collide
            r = subprocess.run(["apt-get", "download", "-q", name], cwd=tmp, capture_output=True, text=True,
                               timeout=600)
            got = sorted(Path(tmp).glob(f"{name}_*.deb"))
            if r.returncode != 0 or not got:
                last = (r.stderr.strip().splitlines() or ["no .deb produced"])[-1]
                raise RuntimeError(f"apt-get download {name} failed: {last}")
            os.replace(got[0], debs / got[0].name)
            found = [debs / got[0].name]
    deb = found[-1]
    version = _deb_field(deb, "Version")
    root = cache / "root" / f"{name}_{version}"
    if not (root / ".complete").exists():
        tmp_root = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_root)], check=True, capture_output=True, timeout=600)
        (tmp_root / ".complete").write_text(version)
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_root, root)
    return {"package": name, "version": version, "deb": deb.name, "sha256": sha256_file(deb),
            "deb_bytes": deb.stat().st_size, "root": str(root)}


class FetchPackages(Stage):
    """One task per package: apt-get download + dpkg-deb -x into the cache. Output: one record per package."""

    name = "fetch"

    def __init__(self, config: LocalDocsSource, packages: list[PackageSpec]):
        super().__init__(config)
        self.packages = packages

    def tasks(self, inputs):
        return [Task(i, (p.name,)) for i, p in enumerate(self.packages)]

    def process(self, task: Task, sink: Sink) -> None:
        spec = self.packages[task.index]
        sink.take()
        try:
            rec = fetch_package(spec.name, cache_root(self.config))
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            sink.quarantine({"package": spec.name}, f"fetch_failed: {str(e).splitlines()[0][:200]}")
            return
        root = Path(rec["root"])
        rec.update(id=stable_id("localdocs", spec.name), source="localdocs", category=spec.category,
                   html_roots=[r for r in spec.html_roots if (root / r).is_dir()],
                   pdf_files=package_pdfs(root, spec.pdf_files),
                   man_files=len(list(man_files(root, spec.man_sections))) if spec.man else 0)
        missing = [r for r in spec.html_roots if not (root / r).is_dir()]
        if missing:
            sink.stat("html_root_missing", len(missing))
        sink.stat("deb_bytes", rec["deb_bytes"])
        sink.write(rec)


def package_pdfs(root: Path, patterns: list[str]) -> list[str]:
    """The package's PDFs named by the globs, as paths relative to its root (sorted, no symlinks)."""
    return sorted({str(f.relative_to(root)) for pat in patterns for f in root.glob(pat)
                   if f.is_file() and not f.is_symlink()})


# --------------------------------------------------------------------------- man pages
MAN_SUFFIX = re.compile(r"\.(\d\w*)(\.gz)?$")


def man_files(root: Path, sections: list[str]) -> Iterator[Path]:
    """English man pages of the wanted sections (localised trees under man/<lang>/ are skipped)."""
    base = root / "usr" / "share" / "man"
    for sec in sections:
        d = base / f"man{sec}"
        if d.is_dir():
            yield from sorted(p for p in d.iterdir() if p.is_file() or p.is_symlink())


def render_man(path: Path, timeout: float = 30.0) -> str:
    """Render one man page source to plain text with groff (tables via -t, no hyphenation, wide lines)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    env = {**os.environ, "GROFF_NO_SGR": "1", "LC_ALL": "C.UTF-8"}
    r = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-rHY=0", "-rLL=100n", "-P-cbou"], input=raw,
                       capture_output=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"groff exit {r.returncode}")
    text = r.stdout.decode("utf-8", "replace")
    lines = text.splitlines()
    # Drop the running header and footer lines groff puts at the top and bottom of the page.
    if lines and re.match(r"^\S+\(\S+\)\s+.*\s+\S+\(\S+\)\s*$", lines[0]):
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and re.search(r"\S+\(\S+\)\s*$", lines[-1]) and len(lines[-1].split()) <= 8:
        lines = lines[:-1]
    return "\n".join(lines).strip("\n") + "\n"


def _man_title(text: str) -> str:
    m = re.search(r"^NAME\s*\n\s+(.+?)(?:\n\s*\n|\n\S)", text, flags=re.M | re.S)
    return " ".join(m.group(1).split()) if m else ""


class ManPages(Stage):
    """One task per package (from the fetch stage's records): render its man pages to documents."""

    name = "manpages"

    def __init__(self, config: LocalDocsSource, packages: list[PackageSpec]):
        super().__init__(config)
        self.specs = {p.name: p for p in packages}

    def tasks(self, inputs):
        recs = [r for p in inputs for r in read_docs(p)]
        recs = [r for r in recs if self.specs[r["package"]].man and r["man_files"]]
        return [Task(i, (r["root"],), {"package": r["package"], "version": r["version"]}) for i, r in enumerate(recs)]

    def process(self, task: Task, sink: Sink) -> None:
        spec = self.specs[task.params["package"]]
        root = Path(task.inputs[0])
        files = list(man_files(root, spec.man_sections))
        limit = self.config.max_man_pages_per_package
        for path in files[:limit] if limit else files:
            rel = str(path.relative_to(root))
            locator = {"package": spec.name, "path": rel}
            sink.take()
            if path.is_symlink() or _head(path).startswith(b".so "):
                sink.drop(locator, "alias")  # `.so` includes and symlinks duplicate another page
                continue
            try:
                text = render_man(path)
            except (RuntimeError, subprocess.SubprocessError, OSError, EOFError, gzip.BadGzipFile) as e:
                sink.quarantine(locator, f"render_failed: {type(e).__name__}")
                continue
            if len(text.split()) < 5:
                sink.drop(locator, "empty_render")
                continue
            m = MAN_SUFFIX.search(path.name)
            tool = path.name[: m.start()] if m else path.name
            section = m.group(1) if m else ""
            sink.write({
                "id": stable_id("manpages", f"{spec.name}/{rel}"),
                "text": text,
                "source": "manpages",
                "url": f"man:{tool}({section})",
                "metadata": {"tool": tool, "section": section, "package": spec.name,
                             "tools_package": spec.program_package(), "suite": spec.suite,
                             "version": task.params["version"], "title": _man_title(text),
                             "category": spec.category, "path": rel,
                             "license": f"see /usr/share/doc/{spec.name}/copyright (Debian package {spec.name})"},
            })


def _head(path: Path, n: int = 64) -> bytes:
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        return f.read(n)


# --------------------------------------------------------------------------- text data files
def wordnet_entries(path: Path) -> Iterator[str]:
    """'word (pos): gloss' lines from a WordNet data.* file (license header lines start with spaces)."""
    pos_names = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(" ") or "|" not in line:
                continue
            head, gloss = line.split("|", 1)
            fields = head.split()
            if len(fields) < 5:
                continue
            words = [fields[4 + 2 * i].replace("_", " ") for i in range(int(fields[3], 16)) if 4 + 2 * i < len(fields)]
            yield f"{', '.join(words)} ({pos_names.get(fields[2], fields[2])}): {gloss.strip()}"


def fortune_entries(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    for entry in text.split("\n%\n"):
        entry = entry.strip("%\n ")
        if entry:
            yield entry


class TextFiles(Stage):
    """One task per (package, data file): group the file's entries into documents of `per_doc` entries.
    Files that yield nothing are counted in the stats (`empty_files`)."""

    name = "text"

    def __init__(self, config: LocalDocsSource, packages: list[PackageSpec], per_doc: int = 60):
        super().__init__(config)
        self.specs = {p.name: p for p in packages}
        self.per_doc = per_doc

    def tasks(self, inputs):
        out = []
        for rec in (r for p in inputs for r in read_docs(p)):
            spec = self.specs[rec["package"]]
            root = Path(rec["root"])
            files = sorted({f for pat in spec.text_files for f in root.glob(pat) if f.is_file()})
            out += [Task(0, (str(f),), {"package": spec.name, "version": rec["version"],
                                        "rel": str(f.relative_to(root))}) for f in files]
        return [Task(i, t.inputs, t.params) for i, t in enumerate(out)]

    def process(self, task: Task, sink: Sink) -> None:
        spec = self.specs[task.params["package"]]
        entries = wordnet_entries if spec.text_format == "wordnet" else fortune_entries
        batch: list[str] = []
        part = 0

        def flush():
            nonlocal part, batch
            locator = f"{spec.name}/{task.params['rel']}#{part}"
            doc = {"id": stable_id(spec.source, locator), "text": "\n\n".join(batch) + "\n", "source": spec.source,
                   "url": f"localdocs://{locator}",
                   "metadata": {"package": spec.name, "version": task.params["version"], "category": spec.category,
                                "title": f"{spec.name} {task.params['rel']} part {part}",
                                "license": f"see /usr/share/doc/{spec.name}/copyright (Debian package {spec.name})"}}
            sink.take()  # counted in documents made (entries are grouped); entries go to the stats
            sink.stat("entries", len(batch))
            sink.write(doc)
            part += 1
            batch = []

        for e in entries(Path(task.inputs[0])):
            batch.append(e)
            if len(batch) >= self.per_doc:
                flush()
        if batch:
            flush()
        if part == 0:
            sink.stat("empty_files")


# --------------------------------------------------------------------------- serving HTML trees
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the crawler's WARC is the request log
        pass


class _PdfHandler(http.server.BaseHTTPRequestHandler):
    """Serves exactly the package's listed PDFs as application/pdf (a `.pdf.gz` as its `.pdf`),
    with a robots.txt that allows everything; anything else is 404."""

    files: dict[str, Path] = {}

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == "/robots.txt":
            return self._send(200, "text/plain", b"User-agent: *\nAllow: /\n")
        f = self.files.get(path)
        if f is None:
            return self._send(404, "text/plain", b"not found")
        data = f.read_bytes()
        self._send(200, "application/pdf", gzip.decompress(data) if f.suffix == ".gz" else data)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def pdf_url_path(rel: str) -> str:
    return "/" + (rel[:-3] if rel.endswith(".pdf.gz") else rel)


@dataclass
class Site:
    """A documentation site: what the crawler is given for one package's HTML tree (or its PDFs)."""

    name: str
    category: str
    base_url: str
    seeds: list[str]
    allowed_prefixes: list[str]
    package: str
    version: str
    source: str = "localdocs"


def _start(srv, name: str, servers: list) -> str:
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"serve-{name}").start()
    servers.append(srv)
    return f"http://127.0.0.1:{srv.server_address[1]}/"


@contextlib.contextmanager
def serve_directory(directory: Path, name: str = "dir") -> Iterator[str]:
    """Serve one directory on an ephemeral 127.0.0.1 port for the block; yields its base URL."""
    servers: list = []
    try:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        yield _start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler), name, servers)
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


@contextlib.contextmanager
def serve_sites(fetch_records: list[dict], specs: dict[str, PackageSpec]) -> Iterator[list[Site]]:
    """Serve each package's HTML roots on its own 127.0.0.1 port (one host per site, so per-host
    politeness applies per site) for the duration of the block."""
    servers, sites = [], []
    try:
        for rec in fetch_records:
            spec = specs[rec["package"]]
            for html_root in rec.get("html_roots", []):
                directory = Path(rec["root"]) / html_root
                handler = functools.partial(_QuietHandler, directory=str(directory))
                base = _start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler), spec.name, servers)
                seeds = [base + s for s in spec.start_pages if (directory / s).is_file()] or [base]
                sites.append(Site(name=f"{spec.name}:{html_root}", category=spec.category, base_url=base,
                                  seeds=seeds, allowed_prefixes=[base], package=spec.name, version=rec["version"]))
            if rec.get("pdf_files"):
                files = {pdf_url_path(r): Path(rec["root"]) / r for r in rec["pdf_files"]}
                handler = type("PdfHandler", (_PdfHandler,), {"files": files})
                base = _start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler), spec.name, servers)
                seeds = [base.rstrip("/") + p for p in sorted(files)]
                sites.append(Site(name=f"{spec.name}:pdf", category=spec.category, base_url=base, seeds=seeds,
                                  allowed_prefixes=seeds, package=spec.name, version=rec["version"],
                                  source=spec.pdf_source))
        yield sites
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def run_localdocs(src: LocalDocsSource, ctx: RunContext) -> list[dict]:
    """Fetch the packages, render their man pages, and serve their HTML trees for the crawl."""
    specs = selected_packages(src)
    section = src.model_dump(mode="json")
    fetch_dir = ctx.run_dir / "fetch"
    m = ctx.run(FetchPackages(src, specs), [], fetch_dir, recipe_section=section)
    records = [r for p in list_shards(fetch_dir) for r in read_docs(p)]
    log(f"localdocs: {len(records)} packages in cache ({sum(r['deb_bytes'] for r in records) / 1e6:.1f} MB of .deb); "
        f"{sum(m['counts']['quarantined'].values())} failed")
    if src.man and any(s.man for s in specs):
        ctx.run(ctx.docs(ManPages(src, specs)), list_shards(fetch_dir), ctx.run_dir / "sources" / "manpages",
                recipe_section=section)
    if any(s.text_files for s in specs):
        ctx.run(ctx.docs(TextFiles(src, specs)), list_shards(fetch_dir), ctx.run_dir / "sources" / "text",
                recipe_section=section)
    if not src.html:
        records = [{**r, "html_roots": []} for r in records]  # the PDFs are still served and crawled
    sites = ctx.stack.enter_context(serve_sites(records, {s.name: s for s in specs}))
    return [{"name": s.name, "seeds": s.seeds, "allowed_prefixes": s.allowed_prefixes,
             "source": src.name if s.source == "localdocs" else s.source,
             "category": s.category, "package": s.package, "version": s.version,
             "locator": f"localdocs://{s.package}"} for s in sites]


register_source(LocalDocsSource, run_localdocs)
