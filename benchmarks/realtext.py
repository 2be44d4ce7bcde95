"""Real system documentation available offline on this kind of machine, for tests and benchmarks.

* `stdlib_docs()`: docstrings of Python standard-library modules, classes and functions (via
  `inspect.getdoc`), with a weak system-domain category per module (the role the source adapters'
  `metadata.category` plays in a run).
* `stdlib_sources()`: real source files of standard-library modules (code-heavy documents).
* `man_pages()`: man pages under /usr/share/man rendered to plain text by stripping roff requests and
  escapes (a crude renderer: good enough for word statistics, not for display).
"""

from __future__ import annotations

import gzip
import importlib
import inspect
import re
import warnings
from pathlib import Path

from minisigma.core.shards import stable_id

# Weak labels: the category a source adapter would give documentation of these modules.
STDLIB_CATEGORIES: dict[str, list[str]] = {
    "os_kernel": ["os", "signal", "mmap", "resource", "fcntl", "select", "pty", "termios", "posix", "errno",
                  "stat", "tty", "grp", "pwd"],
    "networking": ["socket", "ssl", "http.client", "http.server", "urllib.request", "urllib.parse", "ftplib",
                   "smtplib", "ipaddress", "socketserver", "email.message", "imaplib", "poplib"],
    "storage_databases": ["sqlite3", "dbm", "shelve", "pickle", "zipfile", "tarfile", "gzip", "bz2", "lzma",
                          "csv", "shutil", "tempfile", "io"],
    "distributed_cloud": ["multiprocessing", "concurrent.futures", "asyncio", "queue", "threading", "sched",
                          "xmlrpc.client", "xmlrpc.server"],
    "security": ["hashlib", "hmac", "secrets", "crypt", "getpass"],
    "devops_tooling": ["logging", "argparse", "subprocess", "configparser", "venv", "unittest", "doctest",
                       "pdb", "timeit", "cProfile", "sysconfig", "platform"],
    "languages_compilers": ["ast", "dis", "tokenize", "symtable", "compileall", "py_compile", "inspect",
                            "typing", "re", "codeop", "keyword", "importlib", "abc", "dataclasses"],
}


def _docs_of(modname: str) -> list[tuple[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = importlib.import_module(modname)
        except Exception:
            return []
    out = []
    doc = inspect.getdoc(mod)
    if doc:
        out.append((modname, doc))
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            d = inspect.getdoc(obj)
            if d:
                out.append((f"{modname}.{name}", d))
    return out


def stdlib_docs(min_words: int = 40, categories: dict[str, list[str]] | None = None) -> list[dict]:
    """One document per module / class / function docstring of at least `min_words` words."""
    docs = []
    for cat, mods in sorted((categories or STDLIB_CATEGORIES).items()):
        for m in mods:
            for name, text in _docs_of(m):
                if len(text.split()) >= min_words:
                    docs.append({"id": stable_id("pydoc", name), "text": text, "source": "pydoc",
                                 "url": f"pydoc:{name}", "metadata": {"title": name, "category": cat,
                                                                      "license": "PSF-2.0"}})
    return docs


def stdlib_sources(modules: list[str]) -> list[dict]:
    docs = []
    for m in modules:
        mod = importlib.import_module(m)
        text = inspect.getsource(mod)
        docs.append({"id": stable_id("pysource", m), "text": text, "source": "pysource", "url": f"pysource:{m}",
                     "metadata": {"title": m, "category": "languages_compilers", "license": "PSF-2.0"}})
    return docs


_ROFF_ESC = re.compile(r"\\f[BIRP]|\\f\(..|\\\(..|\\\*\(..|\\\*.|\\[&|^%e{}]|\\s[+-]?\d|\\\"")


def roff_to_text(src: str) -> str:
    lines = []
    for line in src.split("\n"):
        if line.startswith((".\\\"", "'")) or line.strip() in ("\\{\\", "\\}"):
            continue
        if line.startswith("."):
            req = line[1:].split(None, 1)
            if req and req[0] in ("SH", "SS") and len(req) > 1:
                lines.append("")
                lines.append(req[1].strip('"'))
            elif req and req[0] in ("B", "I", "BR", "IR", "RB", "BI", "IB", "RI", "TP", "IP") and len(req) > 1:
                lines.append(req[1].replace('"', ""))
            elif req and req[0] in ("PP", "P", "LP", "sp"):
                lines.append("")
            continue
        lines.append(_ROFF_ESC.sub("", line.replace("\\-", "-")).replace("\\\\", "\\"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def man_pages(limit: int, root: str = "/usr/share/man", sections: tuple[str, ...] = ("man1", "man8", "man5"),
              min_words: int = 80) -> list[dict]:
    """Up to `limit` English man pages as documents (sorted by path, so the sample is stable)."""
    docs = []
    for sec in sections:
        d = Path(root) / sec
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if len(docs) >= limit:
                return docs
            try:
                raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            except (OSError, EOFError, gzip.BadGzipFile):
                continue
            text = roff_to_text(raw.decode("utf-8", "replace"))
            if text.startswith(".so") or len(text.split()) < min_words:
                continue
            docs.append({"id": stable_id("manpages", str(p)), "text": text, "source": "manpages", "url": str(p),
                         "metadata": {"title": p.name, "category": "other"}})
    return docs
