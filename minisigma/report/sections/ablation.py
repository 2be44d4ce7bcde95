"""Report section "Ablations next to the paper" (id `ablation`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import Raw, esc, table
from model.results import read_ablations

# The paper's ablations (average of 9 zero-shot benchmarks, ~1B params, 100B tokens; higher is better).
PAPER_ABLATIONS = [
    ("Table 1", "mha", "MHA 32/32 heads", 52.40),
    ("Table 1", "v_heads_half", "V heads 32 -> 16", 51.74),
    ("Table 1", "k_heads_half", "K heads 32 -> 16", 52.83),
    ("Table 1", "gqa16", "GQA 16/16", 52.14),
    ("Table 1", "gqa16_v4", "GQA16, V heads -> 4", 51.76),
    ("Table 1", "gqa16_k4", "GQA16, K heads -> 4", 51.97),
    ("Table 1", "gqa4", "GQA 4/4", 51.66),
    ("Table 1", "gqa4_v1", "GQA4, V heads -> 1", 51.03),
    ("Table 1", "gqa4_k1", "GQA4, K heads -> 1", 51.67),
    ("Table 2", "mha_half_k", "MHA, half K width", 52.56),
    ("Table 2", "gqa16_half_k", "GQA16, half K width", 52.06),
    ("Table 2", "gqa4_half_k", "GQA4, half K width", 51.92),
    ("Table 3", "mha_sel_v", "MHA, selective V top-100", 52.10),
    ("Table 3", "gqa16_sel_v", "GQA16, selective V top-100", 52.08),
    ("Table 3", "gqa4_sel_v", "GQA4, selective V top-100", 51.67),
    ("Table 4", "gqa16_augq", "GQA16 + AugQ (d_aug 3072)", 53.38),
    ("Table 4", "gqa16_augq_4096", "GQA16 + AugQ (d_aug 4096)", 52.93),
    ("Table 4", "gqa16_augq_5632", "GQA16 + AugQ (d_aug 5632)", 53.07),
]


def section_ablation(run: Path) -> str:
    recs, src = read_ablations(run)
    ours = {str(r.get("variant") or r.get("name")).lower(): r for r in recs}
    rows = []
    for tab, key, label, score in PAPER_ABLATIONS:
        r = ours.pop(key, None)
        mine = "-" if r is None else _mean_std(r)
        rows.append([tab, label, score, Raw(esc(mine)), (r or {}).get("metric", "")])
    for key, r in sorted(ours.items()):  # the run's variants without a paper counterpart
        rows.append(["this run", key, None, Raw(esc(_mean_std(r))), r.get("metric", "")])
    note = ('<p class="notrun">not run: no ablation results (ablation*.json) under the run; '
            'the paper\'s numbers are shown alone.</p>' if not recs else
            f'<p class="meta">from {", ".join(f"<code>{esc(s)}</code>" for s in src)}; '
            "the miniature's metric differs from the paper's (9-benchmark zero-shot average, higher is better): "
            "compare orderings, not values</p>")
    return note + table(["paper", "variant", "paper score", "this run (mean ± std, n)", "metric"], rows, left=2)


def _mean_std(r: dict) -> str:
    n = r.get("n") or (len(r["seeds"]) if isinstance(r.get("seeds"), list) else None)
    s = f"{r['mean']:.4f}"
    if r.get("std") is not None:
        s += f" ± {r['std']:.4f}"
    if n:
        s += f" (n={n})"
    return s
