"""Report section "Attention efficiency" (id `attention`): renders what its stage's reader returns."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from minisigma.report.html import esc, figure, png, table
from minisigma.report.runfiles import NotRun, attention_records, key_of


def section_attention(run: Path) -> str:
    recs, src = attention_records(run)
    if not recs:
        raise NotRun("no attention benchmark results (results.json of `minisigma bench attention`) under the run")
    r0 = recs[0]
    kname = key_of(r0, "variant", "name", "model", "config", "attn")
    kctx = key_of(r0, "context", "ctx", "seq")
    kkv = key_of(r0, "kv_bytes", "kv")
    klat = key_of(r0, "decode_ms", "latency_ms", "decode", "latency", "ms")
    kbatch = key_of(r0, "batch")
    if not (kname and kctx and (kkv or klat)):
        raise ValueError(f"{', '.join(src)}: records lack a variant name, context length and KV bytes / latency")
    series: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        label = str(r.get(kname)) + (f" (batch {r.get(kbatch)})" if kbatch and r.get(kbatch) is not None else "")
        series[label].append(r)
    fig, (a1, a2) = figure(12, 3.8, 2)
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r.get(kctx) or 0)
        ctx = [r.get(kctx) for r in rs]
        if kkv:
            a1.plot(ctx, [r.get(kkv) for r in rs], marker="o", label=label)
        if klat:
            a2.plot(ctx, [r.get(klat) for r in rs], marker="o", label=label)
    for a, t, y in ((a1, "KV cache", kkv), (a2, "decode latency", klat)):
        a.set_xscale("log", base=2)
        a.set_xlabel("context (tokens)")
        a.set_ylabel(y or "-")
        a.set_title(t)
        a.legend(fontsize=7)
    a1.set_yscale("log")
    cols = [c for c in (kname, kbatch, kctx, kkv, klat) if c] + [k for k in r0 if k == "kernel_ms"]
    rows = [[r.get(c) for c in cols] for r in recs]
    return (f'<p class="meta">from {", ".join(f"<code>{esc(s)}</code>" for s in src)}</p>' + png(fig) +
            table(cols, rows))
