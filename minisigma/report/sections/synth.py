"""Report section "Synthetic instruction pairs (sample)" (id `synth`): renders what its stage's reader returns."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from minisigma.report.html import Raw, esc, table
from minisigma.report.runfiles import NotRun
from synth.pipeline import read_pairs


def section_synth(run: Path) -> str:
    """A sample of the screened instruction pairs synth made (and its counts)."""
    found = read_pairs(run)
    if found is None:
        raise NotRun("no synth pairs stage (manifest.json of `minisigma synth`) under the run")
    _, m, docs = found
    tools = Counter(r.get("tool") for r in docs)
    step = max(1, len(docs) // 15)
    sample = [[r.get("tool"), r.get("task"), Raw(f"<code>{esc(r.get('command'))}</code>"),
               (r.get("metadata") or {}).get("rule"), (r.get("metadata") or {}).get("package")]
              for r in docs[::step][:15]]
    c = m["counts"]
    head = (f"<p>{c['out']:,} screened command pairs over {len(tools):,} tools from {c['in']:,} mined "
            f"(dropped: {', '.join(f'{k} {v:,}' for k, v in sorted(c['dropped'].items(), key=lambda kv: -kv[1]))}).</p>")
    return head + table(["tool", "task", "command", "rule", "package"], sample, left=5)
