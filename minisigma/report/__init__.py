"""`minisigma report RUN_DIR`: one static HTML page (plots embedded as PNG) describing a run.

Every section looks for its inputs anywhere under the run directory and says "not run" when they
are missing, or what could not be read when they are malformed; one bad input never stops the
report. Inputs, by section:

- Data funnel        every stage's ``manifest.json`` with ``counts {in, out, dropped{reason: n},
                     quarantined{reason: n}, tokens_in, tokens_out}`` (minisigma/manifest.py)
- Category / source  documents of the last curation stage (``NNNNN.jsonl.gz``): ``source`` and
  mix, quality      ``metadata.category``; numeric ``metadata.scores{name: value}`` (or metadata
                     keys ending in ``score``) for the histograms
- Loss curves        Lightning CSV logs ``**/metrics.csv`` (columns ``step``, ``train_loss``, ``val_loss``)
- CMDGen-mini        ``**/summary.json`` with ``"benchmark": "cmdgen-mini"`` and its ``results.jsonl``
                     (model/evaluation/cmdgen.py)
- Perplexity         ``**/perplexity.json`` (model/evaluation/perplexity.py)
- Attention          ``results.json`` of ``minisigma bench attention`` (``kv_bytes_per_token_bf16``
  efficiency         and ``decode`` rows), or ``**/attention*.json``: records with a variant name,
                     context length, KV-cache bytes and decode latency (keys recognised by name:
                     ``variant|name|model``, ``context|ctx``, ``kv_bytes*``, ``decode_ms*|latency_ms*``),
                     as a list or under ``rows``/``results``
- Ablations          ``**/ablation*.json``: records with a ``variant`` (or ``name``) and ``mean``
                     (optional ``std``, ``n``/``seeds``, ``metric``), shown next to the paper's
                     numbers (the Sigma paper, arXiv 2501.13629, Tables 1-4)
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Callable

from minisigma.core.errors import UserError
from minisigma.report.html import CSS, SCRIPT, esc
from minisigma.report.runfiles import NotRun
from minisigma.report.screenshot import screenshot  # noqa: F401  (`minisigma report --screenshot`)
from minisigma.report.sections.ablation import section_ablation
from minisigma.report.sections.attention import section_attention
from minisigma.report.sections.cmdgen import section_cmdgen
from minisigma.report.sections.funnel import section_funnel
from minisigma.report.sections.induction import section_induction
from minisigma.report.sections.loss import section_loss
from minisigma.report.sections.mix import section_mix
from minisigma.report.sections.perplexity import section_perplexity
from minisigma.report.sections.quality import section_quality
from minisigma.report.sections.questions import section_questions
from minisigma.report.sections.rewrites import section_rewrites
from minisigma.report.sections.sources import section_sources
from minisigma.report.sections.stages import section_stages
from minisigma.report.sections.synth import section_synth

SECTIONS: list[tuple[str, str, Callable[[Path], str]]] = [
    ("questions", "The paper's questions in miniature", section_questions),
    ("stages", "Reproduction stages and times", section_stages),
    ("funnel", "Data funnel", section_funnel),
    ("mix", "Category and source mix", section_mix),
    ("sources", "Source types next to the paper's Table 9", section_sources),
    ("quality", "Quality scores", section_quality),
    ("loss", "Training and validation loss", section_loss),
    ("synth", "Synthetic instruction pairs (sample)", section_synth),
    ("rewrites", "Model rewrites (synth)", section_rewrites),
    ("cmdgen", "CMDGen-mini (command generation)", section_cmdgen),
    ("perplexity", "Perplexity per source", section_perplexity),
    ("induction", "Copying from context (induction probe)", section_induction),
    ("attention", "Attention efficiency", section_attention),
    ("ablation", "Ablations next to the paper", section_ablation),
]


def render(run: Path) -> str:
    body = []
    for sid, title, fn in SECTIONS:
        try:
            content = fn(run)
        except NotRun as e:
            content = f'<p class="notrun">not run: {esc(e)}</p>'
        except Exception as e:  # a malformed input spoils its own section only
            content = f'<p class="error">could not render this section: {esc(type(e).__name__)}: {esc(e)}</p>'
        body.append(f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>')
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>minisigma report: {esc(run.name)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body>"
            f"<h1>minisigma report: {esc(run.name)}</h1>"
            f'<p class="meta">run directory <code>{esc(run)}</code> · generated {when}</p>'
            + "".join(body) + "</body></html>")


def build(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    out_path = Path(out) if out else run / "report" / "index.html"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(render(run.resolve()), encoding="utf-8")
    tmp.replace(out_path)
    return out_path
