"""Report section "Source types next to the paper's Table 9" (id `sources`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from curation.refine.pipeline import curated_stages, source_counts
from curation.sources.types import TABLE9, by_type
from minisigma.core.paths import rel
from minisigma.report.html import esc, table
from minisigma.report.runfiles import MAX_DOCS, NotRun

OFFLINE_MATERIAL = {  # what the package registries offer of each type (README "The embedded default")
    "papers": "Debian technical PDFs (systemtap-doc, mpich-doc, drbd-doc, slurm-wlm-doc) through the PDF path",
    "arxiv": "none offline: no Debian or PyPI package found ships arXiv metadata records",
    "blogs": "python3.11-doc's What's New articles through the blogs adapter (no package ships a blog feed)",
    "stackexchange": "none offline: no Debian or PyPI package found ships Stack Exchange posts",
}


def section_sources(run: Path) -> str:
    """Documents and tokens (whitespace words, the unit of curation manifests) per source type of
    the curated corpus, next to the paper's Table 9."""
    found = curated_stages(run)
    if not found:
        raise NotRun("no curated corpus under the run")
    rows, notes = [], []
    for stage in found:
        types = by_type(source_counts(stage, MAX_DOCS))
        four = sum(types.get(t, {}).get("tokens", 0) for t, *_ in TABLE9) or 1
        paper_total = sum(tok for *_, tok in TABLE9)
        for t, row, raw, tok in TABLE9:
            n = types.get(t, {"docs": 0, "tokens": 0, "sources": []})
            rows.append([row, ", ".join(n["sources"]) or "-", n["docs"], n["tokens"],
                         f"{100 * n['tokens'] / four:.1f}%", raw, f"{tok / 1e9:.1f}B", f"{100 * tok / paper_total:.1f}%"])
            if not n["docs"]:
                notes.append(f"{row}: no documents in this run ({OFFLINE_MATERIAL[t]})")
        other = types.get("other")
        if other:
            rows.append(["not one of the four (documentation, man pages, ...)", ", ".join(other["sources"]),
                         other["docs"], other["tokens"], "-", "-", "-", "-"])
        present = sum(1 for t, *_ in TABLE9 if types.get(t, {}).get("docs"))
        notes.insert(0, f"<code>{esc(rel(run, stage))}</code>: {present} of the paper's 4 source types present")
    head = "".join(f'<p class="meta">{n if n.startswith("<code>") else esc(n)}</p>' for n in notes)
    return head + table(["source type (Table 9)", "sources", "documents", "tokens (words)", "share of the four",
                         "paper raw size", "paper tokens", "paper share"], rows)
