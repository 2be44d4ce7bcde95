"""Report section "The paper's questions in miniature" (id `questions`): renders what its stage's reader returns."""

from __future__ import annotations

from pathlib import Path

from minisigma.report.html import esc, table
from minisigma.report.runfiles import read_answers


def section_questions(run: Path) -> str:
    """The paper's two questions in miniature, from `minisigma reproduce`'s eval/answers.json."""
    parts = []
    for q in read_answers(run)["questions"]:
        a, b = q["sigma_results"], q["baseline_results"]
        rows = [[label, r.get("params"), r.get("kv_bytes_per_token_bf16"), r.get("val_bpb"), r.get("cmdgen_accuracy"),
                 r.get("cmdgen_cmd_score")] for label, r in ((q["sigma"], a), (q["baseline"], b))]
        verdict = []
        if q.get("kv_cache_reduction") is not None:
            verdict.append(f"KV cache per token {q['kv_cache_reduction']:.1%} smaller")
        if q.get("bpb_delta") is not None:
            of = " of {} vs {}".format(*q["perplexity_models"]) if q.get("perplexity_models") else ""
            verdict.append(f"held-out system-text bits/byte{of} {q['bpb_delta']:+.4f} "
                           f"({'better' if q['bpb_delta'] < 0 else 'worse' if q['bpb_delta'] > 0 else 'equal'})")
        if q.get("accuracy_delta") is not None:
            verdict.append(f"CMDGen-mini accuracy {q['accuracy_delta']:+.3f}")
        if q.get("accuracy_paired"):
            pa = q["accuracy_paired"]
            verdict.append(f"over {pa['tasks']} shared tasks {pa['sigma_only']} solved by {q['sigma']} only, "
                           f"{pa['baseline_only']} by {q['baseline']} only (exact McNemar p = {pa['mcnemar_p']:.2g})")
        parts.append(f"<h3>{esc(q['title'])}</h3>"
                     + table(["model", "params", "KV bytes/token (bf16)", "val bits/byte", "CMDGen accuracy",
                              "CMD score"], rows)
                     + f"<p>{esc('; '.join(verdict))}.</p>"
                     + (f'<p class="meta">paper: {esc(q["paper"])}</p>' if q.get("paper") else ""))
    return "".join(parts)
