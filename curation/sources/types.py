"""Sigma's four system-domain source types (paper, Table 9) and which document `source` is which.

    source_type("ccf") == "papers"; source_type("manpages") == "other"

`papers` holds full-text papers, technical reports and specifications: the CCF-venue records of
the `ccf` adapter, and the technical PDFs the embedded default takes from Debian packages
(`source: papers`, through the same crawl -> PDF extraction path). `blogs` is the paper's
"technical blogs and developer forums"; `stackexchange` its "Stack Overflow". Everything else
(Debian documentation trees, man pages, general text) is `other`: real system text that is not one
of the four types.
"""

from __future__ import annotations

SOURCE_TYPES = {"arxiv": "arxiv", "ccf": "papers", "papers": "papers", "blogs": "blogs",
                "stackexchange": "stackexchange"}

# type, the paper's row, raw size, tokens (Sigma paper, Table 9)
TABLE9 = [
    ("papers", "CCF-ranked venues (papers)", "14.0 GB", 3.3e9),
    ("arxiv", "arXiv", "33.0 GB", 5.4e9),
    ("blogs", "technical blogs and developer forums", "14.5 GB", 3.2e9),
    ("stackexchange", "Stack Overflow", "38.9 GB", 7.6e9),
]


def source_type(source: str) -> str:
    return SOURCE_TYPES.get(source, "other")


def by_type(by_source: dict[str, dict]) -> dict[str, dict]:
    """{type: {docs, tokens, sources}} from a manifest's `counts.by_source`."""
    out: dict[str, dict] = {}
    for src, n in sorted(by_source.items()):
        t = out.setdefault(source_type(src), {"docs": 0, "tokens": 0, "sources": []})
        t["docs"] += int(n.get("docs", 0))
        t["tokens"] += int(n.get("tokens", 0))
        t["sources"].append(src)
    return out
