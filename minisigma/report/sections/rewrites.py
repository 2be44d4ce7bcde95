"""Report section "Model rewrites (synth)" (id `rewrites`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import Raw, esc, table
from minisigma.report.runfiles import NotRun
from synth.pipeline import read_rewrites


def section_rewrites(run: Path) -> str:
    """The model rewrites synth made: kept share, drop reasons, the model, a sample of both."""
    found = read_rewrites(run)
    if found is None:
        raise NotRun("no rewrite stage (the synth recipe has rewrite.enabled: false)")
    m, kept, rej = found
    c, b, st = m["counts"], m.get("backend") or {}, m.get("stats") or {}
    n = c["in"]
    dropped = sum(c["dropped"].values())
    quarantined = sum(c["quarantined"].values())
    model = b.get("model") or "?"
    sha = b.get("model_sha256")
    head = (f"<p>Model: <b>{esc(model)}</b> ({esc(b.get('kind') or b.get('backend'))}"
            + (f", runtime {esc(b['runtime'])}" if b.get("runtime") else "")
            + (f", sha256 <code>{esc(sha[:16])}…</code>" if sha else "") + "). "
            f"{c['out']:,} of {n:,} rewrites kept ({c['out'] / n:.0%}), {dropped:,} dropped by the screen"
            + (f", {quarantined:,} backend errors" if quarantined else "") + "; "
            f"model calls {st.get('backend_requests', 0):,}, answered from the cache {st.get('backend_cache_hits', 0):,}. "
            "Only kept rewrites enter pretraining.</p>") if n else "<p>No rewrite requests were made.</p>"
    q = m.get("quality_model")
    if q and n:  # the fastText classifier behind low_quality (synth.pipeline.resolve_quality_model)
        head += (f"<p>Quality classifier (<code>low_quality</code> under {q.get('min_quality')}): "
                 + (f"<b>missing</b> at <code>{esc(q['path'])}</code>, not applied" if q.get("missing") else
                    f"<code>{esc(q['path'])}</code>, sha256 <code>{esc(q.get('sha256', '')[:16])}…</code>") + ".</p>")
    reasons = table(["drop reason", "rewrites"], [[k, v] for k, v in
                                                  sorted(c["dropped"].items(), key=lambda kv: -kv[1])])
    small = any(t in model.lower() for t in ("135m", "270m", "360m"))
    verdict = ""
    if n and small:
        verdict = (f"<p><b>How useful these are:</b> {esc(model)} is a 135M-parameter model; "
                   f"{c['out'] / n:.0%} of its rewrites pass a screen for loops, echoes, invented options, URLs and "
                   "numbers and lost key terms, and passing it does not make a rewrite correct: read the sample. "
                   "At this size the rewrites add little to the corpus; the stage is here to show the path "
                   "end to end. A real model (README: rewrites with a real model) is what makes them worth having.</p>")
    rows = [[(r.get("metadata") or {}).get("template"), (r.get("metadata") or {}).get("title"),
             Raw(f"<pre>{esc(r.get('text', '')[:600])}</pre>")] for r in kept[:4]]
    seen, drows = set(), []
    for r in rej:
        if r.get("reason") in seen:
            continue
        seen.add(r.get("reason"))
        doc = r["doc"]
        drows.append([r.get("reason"), (doc.get("metadata") or {}).get("template"),
                      Raw(f"<pre>{esc((doc.get('text') or '')[:400])}</pre>")])
    return (head + verdict + reasons + "<h3>Kept (sample)</h3>"
            + (table(["template", "page", "rewrite"], rows, left=3) if rows else "<p>none kept</p>")
            + "<h3>Dropped (one per reason)</h3>" + table(["reason", "template", "output"], drows[:8], left=3))
