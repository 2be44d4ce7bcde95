"""Where a run's files live: a local directory, or a URL of any fsspec file system (s3://, gs://,
memory:// ...).

A run directory given as a URL is *bound* to a local working directory, its cache
(`$MINISIGMA_CACHE/runs/<sha1 of the URL>`, the same absolute path on every node): stages keep
working on POSIX paths there (fastText training, dpkg extraction, WARC writing, memory-mapped dedup
partitions need one), and what they commit is written through to the URL. The URL is the truth: a
rerun, on any machine, trusts only what the commit markers in the object store name.

- `run_dir(location)` binds a run: a URL to its cache, a local path to itself (a local run then
  records its paths relative to its root in the manifests, so it can be moved); `open_run` is what a
  command calls with the run it was given (options set, a URL's bucket checked, the run bound).
- `recorded(value, base)`: the one rule for every path a record of a run writes (manifests, markers,
  summaries): relative inside the run, else to the checkout, $MINISIGMA_CACHE or site-packages.
- `committed(path)` uploads a file that has just reached its final local name (the shard writers
  and `atomic_write_*` call it): object first, marker last gives the same commit semantics on object
  storage as `os.replace` gives locally (a PUT is atomic: an object is whole or absent).
- `pull(path)` brings a bound file or directory from its URL (workers pull their inputs and side
  files, the driver pulls what a stage wrote); `remove` / `rmtree` delete both copies.
- `exists`, `isfile`, `size`, `read_bytes`, `open_binary`, `sha256`, `listdir`, `find`, `join`
  take a local path or a URL (for `manifest verify s3://...`).

Credentials and endpoints come from the usual places: the AWS_* environment (AWS_ENDPOINT_URL for an
S3-compatible server), the cloud SDK's own files, or fsspec storage options (`set_options`, e.g. a
recipe's `storage_options: {s3: {endpoint_url: ...}}`). `spec()` carries the options, the bindings and
the driver's AWS_* variables to Ray workers explicitly (`configure(spec)` on the worker), so a worker on
another node writes to the same place with the same settings.

Local paths keep the plain os calls (no fsspec on the local fast path).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Schemes that name documents to fetch (crawl seeds, source endpoints), never a place to store a run.
LOCATORS = frozenset({"http", "https", "ftp"})
# The environment a worker needs to reach the same object store as the driver: S3's, and GCS's
# (STORAGE_EMULATOR_HOST: a GCS emulator's endpoint, which gcsfs honours; GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
# =false turns off gcsfs's bucket-type lookup over the gRPC Storage Control API, which emulators lack).
CLOUD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS",
             "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
# Temporary names of files being written (".NAME.tmp-PID", see minisigma.core.shards.tmp_path): never synced.
_TMP = re.compile(r"\..+\.tmp-[0-9]+")
_CHUNK = 1 << 20


def scheme(location) -> str | None:
    m = _URL.match(str(location))
    return m.group(1).lower() if m else None


def is_url(location) -> bool:
    """True for a storage URL (s3://, gs://, memory:// ...); local paths, file:// and http(s) locators are not."""
    s = scheme(location)
    return s is not None and s not in ("file", "local") and s not in LOCATORS


# --------------------------------------------------------------------------- options
_OPTIONS: dict[str, dict] = {}  # protocol -> fsspec storage options


def set_options(options: dict[str, dict] | None) -> None:
    """fsspec storage options by protocol, e.g. {"s3": {"endpoint_url": "http://127.0.0.1:9000"}}."""
    for proto, opts in (options or {}).items():
        _OPTIONS[proto] = dict(opts or {})


def filesystem(url: str):
    """(fsspec file system, path inside it) of a URL, with the options set for its protocol."""
    import fsspec  # here: local runs never need it

    proto = scheme(url) or ""
    opts = dict(_OPTIONS.get(proto, {}))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if proto in ("s3", "s3a") and endpoint and "endpoint_url" not in opts:
        # botocore reads it too; named here so that fsspec's cached file system follows a changed endpoint
        opts["endpoint_url"] = endpoint
    try:
        return fsspec.core.url_to_fs(str(url), **opts)
    except (ImportError, ValueError) as e:  # e.g. s3:// without s3fs installed, an unknown protocol
        from minisigma.core.errors import UserError

        raise UserError(f"{url}: cannot open this storage URL ({e})") from None


def check_reachable(url: str) -> None:
    """Fail early, in one line, when a run's URL cannot be used: no client for its protocol, or (object
    storage) a bucket that is absent or that these credentials and endpoint cannot reach."""
    from minisigma.core.errors import UserError

    fs, path = filesystem(url)
    bucket = path.strip("/").split("/", 1)[0]
    if getattr(fs, "root_marker", "") == "" and bucket:  # bucketed stores (s3, gs); not memory:// or local
        try:
            found = fs.exists(bucket)
        except Exception as e:  # any client error (refused connection, bad credentials) is the user's to fix
            raise UserError(f"{url}: cannot reach the bucket {bucket} ({type(e).__name__}: {e})") from None
        if not found:
            raise UserError(f"{url}: no bucket {bucket} (or these credentials cannot see it)")


# --------------------------------------------------------------------------- bindings
@dataclass(frozen=True)
class Binding:
    local: str  # absolute local root
    url: str | None  # the URL it mirrors, None for a local run


_BINDINGS: dict[str, Binding] = {}


def cache_base() -> Path:
    """minisigma's cache on this machine: $MINISIGMA_CACHE, default ~/.cache/minisigma."""
    return Path(os.environ.get("MINISIGMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minisigma"))


def cache_root() -> Path:
    return cache_base() / "runs"


def run_dir(location) -> Path:
    """The local directory a run works in, bound to `location`: a URL's cache, or the local path itself."""
    if is_url(location):
        url = str(location).rstrip("/")
        local = cache_root() / hashlib.sha1(url.encode()).hexdigest()[:16]
        bind(local, url)
        return local
    p = Path(location)
    bind(p, None)
    return p


def open_run(location, options: dict[str, dict] | None = None) -> Path:
    """A run directory a command was given (a local path or a URL), ready to work in: the recipe's
    storage `options` set, a URL's bucket checked (one-line error when it cannot be reached), and the
    run bound (`run_dir`), so its manifests record paths relative to it. Returns the local directory.
    A local path inside a run bound already (a URL's cache that curate hands to refine, a corpus of a
    reproduction) is that run's: it is not bound again."""
    set_options(options)
    if is_url(location):
        check_reachable(str(location))
        return run_dir(location)
    if binding_of(location) is not None:
        return Path(location)
    return run_dir(location)


def local_of(url: str) -> Path:
    """The local directory mirroring `url`: inside the bound run that holds it, else the URL bound as a
    run of its own."""
    url = str(url).rstrip("/")
    for b in _BINDINGS.values():
        if b.url and (url == b.url or url.startswith(b.url + "/")):
            return Path(b.local, *url[len(b.url):].strip("/").split("/")) if url != b.url else Path(b.local)
    return run_dir(url)


def bind(local, url: str | None) -> None:
    root = os.path.abspath(local)
    _BINDINGS[root] = Binding(root, url.rstrip("/") if url else None)


def unbind(local) -> None:
    _BINDINGS.pop(os.path.abspath(local), None)


def binding_of(path) -> tuple[Binding, str] | None:
    """The binding whose root holds `path` (the innermost), and `path` relative to that root."""
    if not _BINDINGS or is_url(path):
        return None
    p = os.path.abspath(path)
    best = None
    for root, b in _BINDINGS.items():
        if (p == root or p.startswith(root + os.sep)) and (best is None or len(root) > len(best.local)):
            best = b
    if best is None:
        return None
    return best, os.path.relpath(p, best.local)


def url_of(path) -> str | None:
    """The URL a bound local path mirrors (None for a local run or an unbound path)."""
    found = binding_of(path)
    if found is None or found[0].url is None:
        return None
    b, rel = found
    return b.url if rel == "." else f"{b.url}/{rel.replace(os.sep, '/')}"


def target(path) -> str:
    """Where `path` really lives: its URL when bound to one, else the path itself."""
    return url_of(path) or str(path)


def relative(path, base) -> str:
    """`path` relative to `base` when both lie in one bound run (so a moved run still finds it; a run
    bound inside another, such as a reproduction's second corpus, counts as part of the outer one),
    else `path` as given."""
    if is_url(path) or is_url(base):
        return str(path)
    p, b = os.path.abspath(path), os.path.abspath(base)
    for root in _BINDINGS:
        if all(x == root or x.startswith(root + os.sep) for x in (p, b)):
            return os.path.relpath(p, b)
    return str(path)


def _library_roots() -> list[str]:
    """The folders installed packages live in (site-packages), longest first: this environment's, and
    those on sys.path besides (a venv made with --system-site-packages imports from the base's too)."""
    import sys
    import sysconfig

    roots = {os.path.abspath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    roots |= {os.path.abspath(e) for e in sys.path if os.path.basename(e) in ("site-packages", "dist-packages")}
    return sorted(roots, key=len, reverse=True)


def recorded(value, base):
    """`value` as a file in folder `base` records it, with no absolute path of this machine in it: the
    one rule for every path a manifest, summary or record of a run writes (a recipe section echoed, an
    input, a checkpoint, a task file). Strings that are absolute paths (and Path objects), anywhere in
    a JSON-like value (dicts, lists, their keys too), are rewritten:

    - inside the same bound run as `base` (storage.run_dir): relative to `base`, like a relative link
      (`../../extract/00000.jsonl.gz` from a stage directory, `sft/final` from the run's root), so the
      run can be moved or copied into a bucket;
    - else inside the project checkout: relative to it (`recipes/...`, `manifests/sources/...`, as the
      recipes name them);
    - else inside minisigma's cache (a package unpacked by the localdocs source): as
      `$MINISIGMA_CACHE/...` (whatever folder that is on the machine, default ~/.cache/minisigma);
    - else inside the Python environment's site-packages (a model file a package ships): as
      `site-packages/<package>/...`;
    - else as given. Relative paths, URLs and other strings are kept."""
    if isinstance(value, dict):
        return {recorded(k, base) if isinstance(k, str) else k: recorded(v, base) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recorded(v, base) for v in value]
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
        if not os.path.isabs(value):
            return value
    elif not (isinstance(value, str) and os.path.isabs(value) and not is_url(value)):
        return value
    rel = relative(value, base)
    if not os.path.isabs(rel):
        return rel.replace(os.sep, "/")
    from minisigma.core.paths import REPO_ROOT

    p = os.path.abspath(value)
    roots = [(str(REPO_ROOT), None), (os.path.abspath(cache_base()), "$MINISIGMA_CACHE")]
    for root, shown in roots + [(r, os.path.basename(r)) for r in _library_roots()]:
        if p == root or p.startswith(root + os.sep):
            inside = os.path.relpath(p, root).replace(os.sep, "/")
            return inside if shown is None else f"{shown}/{inside}"
    return value


def spec() -> dict:
    """What a Ray worker needs to reach the same storage as this process (see `configure`)."""
    return {"options": {k: dict(v) for k, v in _OPTIONS.items()},
            "bindings": [[b.local, b.url] for b in _BINDINGS.values()],
            "env": {k: os.environ[k] for k in CLOUD_ENV if k in os.environ}}


def configure(s: dict | None) -> None:
    """Apply a driver's `spec()` in a worker (options, bindings, the driver's cloud credentials)."""
    if not s:
        return
    for k, v in s.get("env", {}).items():
        os.environ[k] = v
    set_options(s.get("options"))
    for local, url in s.get("bindings", []):
        bind(local, url)


# --------------------------------------------------------------------------- operations on a path or a URL
def join(base, *parts: str) -> str:
    """`base` joined with relative parts ('..' resolved), for a local path or a URL."""
    if is_url(base):
        m = _URL.match(str(base))
        head, rest = str(base)[:m.end()], str(base)[m.end():]
        joined = posixpath.normpath(posixpath.join(rest, *parts))
        return head + joined.lstrip("/") if not rest.startswith("/") else head + joined
    return os.path.normpath(os.path.join(str(base), *parts))


def name(location) -> str:
    return posixpath.basename(str(location).rstrip("/")) if is_url(location) else os.path.basename(str(location))


def exists(location) -> bool:
    if is_url(location):
        fs, p = filesystem(location)
        fs.invalidate_cache(p)
        return fs.exists(p)
    return os.path.exists(location)


def isfile(location) -> bool:
    if is_url(location):
        fs, p = filesystem(location)
        fs.invalidate_cache(p)
        return fs.isfile(p)
    return os.path.isfile(location)


def isdir(location) -> bool:
    if is_url(location):
        fs, p = filesystem(location)
        fs.invalidate_cache(p)
        return fs.isdir(p)
    return os.path.isdir(location)


def size(location) -> int:
    if is_url(location):
        fs, p = filesystem(location)
        return int(fs.size(p))
    return os.stat(location).st_size


def open_binary(location) -> IO[bytes]:
    """A binary reader of a local file or a URL (FileNotFoundError when absent, as `open`)."""
    if is_url(location):
        fs, p = filesystem(location)
        return fs.open(p, "rb")
    return open(location, "rb")


def read_bytes(location) -> bytes:
    with open_binary(location) as f:
        return f.read()


def sha256(location) -> str:
    h = hashlib.sha256()
    with open_binary(location) as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def write_bytes(url: str, data: bytes) -> None:
    """One object (a single PUT on object storage: whole or absent)."""
    fs, p = filesystem(url)
    fs.pipe_file(p, data)


def listdir(location) -> list[str]:
    """Names of the entries directly under a directory (empty when it does not exist)."""
    if is_url(location):
        fs, p = filesystem(location)
        fs.invalidate_cache(p)
        try:
            return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
        except FileNotFoundError:
            return []
    try:
        return sorted(os.listdir(location))
    except (FileNotFoundError, NotADirectoryError):
        return []


def find(location) -> dict[str, int]:
    """Every file under a directory, by path relative to it, with its size (temporary files left out)."""
    out: dict[str, int] = {}
    if is_url(location):
        fs, p = filesystem(location)
        fs.invalidate_cache(p)
        prefix = p.rstrip("/") + "/"
        for full, info in fs.find(p, detail=True).items():
            if info.get("type") == "directory" or not full.startswith(prefix):
                continue
            rel = full[len(prefix):]
            if not _TMP.fullmatch(posixpath.basename(rel)):
                out[rel] = int(info.get("size") or 0)
        return out
    for dirpath, _dirs, files in os.walk(location):
        for f in files:
            if not _TMP.fullmatch(f):
                full = os.path.join(dirpath, f)
                try:
                    out[os.path.relpath(full, location).replace(os.sep, "/")] = os.stat(full).st_size
                except FileNotFoundError:  # removed while we walked
                    pass
    return out


def rm(location, recursive: bool = False) -> None:
    """Delete a file (or a tree); absent is fine."""
    if is_url(location):
        fs, p = filesystem(location)
        try:
            fs.rm(p, recursive=recursive)
        except FileNotFoundError:
            pass
        fs.invalidate_cache(p)
        return
    if recursive:
        shutil.rmtree(location, ignore_errors=True)
    else:
        Path(location).unlink(missing_ok=True)


def _download(url: str, local: str) -> None:
    """Copy an object to a local file atomically (parallel workers of one node may fetch the same file)."""
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = os.path.join(os.path.dirname(local), f".{os.path.basename(local)}.tmp-{os.getpid()}")
    with open_binary(url) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    os.replace(tmp, local)


def _upload(local: str, url: str) -> None:
    fs, p = filesystem(url)
    fs.put_file(local, p)


# --------------------------------------------------------------------------- bound paths (write-through)
def committed(path) -> None:
    """`path` has just reached its final local name: upload it when its run is bound to a URL."""
    url = url_of(path)
    if url is not None:
        _upload(str(path), url)


def remove(path) -> None:
    """Delete a bound file here and at its URL."""
    Path(path).unlink(missing_ok=True)
    url = url_of(path)
    if url is not None:
        rm(url)


def rmtree(path) -> None:
    """Delete a bound directory here and at its URL."""
    shutil.rmtree(path, ignore_errors=True)
    url = url_of(path)
    if url is not None:
        rm(url, recursive=True)


def remote_files(path) -> dict[str, int]:
    """Files under a bound directory at its URL (relative path -> size); a local run's, on disk."""
    url = url_of(path)
    return find(url) if url is not None else find(path)


def pull(path, skip: tuple[str, ...] = ()) -> int:
    """Bring a bound file or directory from its URL into the local cache (files missing here or of
    another size; `skip`: leading parts of relative paths to leave out). Returns the files fetched."""
    url = url_of(path)
    if url is None:
        return 0
    path = str(path)
    if isfile(url):
        if not os.path.isfile(path) or os.stat(path).st_size != size(url):
            _download(url, path)
            return 1
        return 0
    fetched = 0
    for rel, n in find(url).items():
        if skip and rel.split("/", 1)[0] in skip:
            continue
        local = os.path.join(path, *rel.split("/"))
        try:
            if os.stat(local).st_size == n:
                continue
        except FileNotFoundError:
            pass
        _download(f"{url}/{rel}", local)
        fetched += 1
    return fetched


def iter_bound_dirs(values) -> Iterator[Path]:
    """The values among `values` that are paths inside a run bound to a URL (a stage's side directories)."""
    for v in values:
        if isinstance(v, os.PathLike) and url_of(v) is not None:
            yield Path(v)


def run_pulled(storage_spec: dict, dirs: list[str], fn, *args):
    """Call `fn(*args)` in a Ray worker after applying the driver's storage `spec()` and pulling the
    bound directories `dirs` (for Ray tasks that are not runner stages, e.g. connected components)."""
    configure(storage_spec)
    for d in dirs:
        pull(d)
    return fn(*args)


__all__ = ["is_url", "scheme", "set_options", "filesystem", "check_reachable", "open_run", "run_dir", "local_of", "bind", "unbind", "binding_of",
           "url_of", "target", "relative", "recorded", "spec", "configure", "join", "name", "exists", "isfile", "isdir", "size",
           "open_binary", "read_bytes", "sha256", "write_bytes", "listdir", "find", "rm", "committed", "remove",
           "rmtree", "remote_files", "pull", "run_pulled", "iter_bound_dirs", "cache_base", "cache_root", "LOCATORS"]
