"""CMDGen-mini: natural language -> shell command, scored the way the AIMicius CMDGen benchmark is.

Task file format (JSON Lines, UTF-8, one object per line, blank lines ignored)::

    {"id": "tar-0003", "task": "Extract the gzip-compressed archive backup.tar.gz here",
     "command": "tar -xzf backup.tar.gz", "tool": "tar",
     "setup": "mkdir d && echo hi > d/a && tar -czf backup.tar.gz d && rm -r d"}

- ``id``      unique string
- ``task``    the natural-language request given to the model
- ``command`` the reference command (one line of bash)
- ``tool``    the program the task is about; results are averaged per tool, and a reference whose
              tool is not installed is scored ``not_executable`` (its Output score is undefined)
- ``setup``   optional bash run first, in the same sandbox, to seed the scratch directory with the
              files the command works on (its output is discarded)

No other keys are allowed; a malformed file fails with one line naming the file and line number.

For every task the model is prompted with the chat template (``build_messages`` -- the same
template SFT trains on, model/chat.py), the first line of its answer is taken as the command
(``extract_command``), the generated and the reference command run in fresh sandboxes
(model/evaluation/sandbox.py) after the task's setup, and the metrics of
model/evaluation/metrics.py are computed. Outputs, in the output directory:

- ``results.jsonl``  one line per task: the task, the raw and extracted generation, both
                     executions (status, exit code, stdout/stderr, truncated to ``keep_output``
                     characters) and the six metrics;
- ``summary.json``   averages overall and per tool, plus the settings and the task file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from pydantic import Field

from minisigma.core.errors import UserError
from minisigma.core.recipes import Section

REQUIRED = ("id", "task", "command", "tool")
OPTIONAL = ("setup",)


class SandboxSection(Section):
    """Resource limits of each command execution (model/evaluation/sandbox.Limits)."""

    wall_seconds: float = Field(10.0, gt=0, le=600)
    cpu_seconds: int = Field(5, ge=1, le=600)
    memory_mb: int = Field(1024, ge=64)
    output_kb: int = Field(64, ge=1)
    processes: int = Field(64, ge=4)
    file_mb: int = Field(16, ge=1)
    scratch_mb: int = Field(32, ge=1)

    def limits(self):
        from model.evaluation.sandbox import Limits

        return Limits(wall_seconds=self.wall_seconds, cpu_seconds=self.cpu_seconds,
                      memory_bytes=self.memory_mb << 20, output_bytes=self.output_kb << 10,
                      processes=self.processes, file_bytes=self.file_mb << 20,
                      scratch_bytes=self.scratch_mb << 20)


class CmdgenSection(Section):
    """`cmdgen:` section of an eval recipe."""

    tasks: str | None = None  # the task file (JSONL, format above)
    # which of the recipe's checkpoints to run it on (default: all). Base models that were never
    # instruction-tuned cannot follow a task, so their CMDGen scores mean nothing.
    models: list[str] | None = None
    # Calibration threshold. The paper does not state its value; 0.8 cosine similarity between
    # MiniLM embeddings is where two commands/outputs are near-paraphrases in our hand checks.
    threshold: float = Field(0.8, ge=-1.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int = Field(8, ge=1)
    execute: bool = True  # false: no sandbox (Output score undefined, Success false)
    keep_output: int = Field(2000, ge=0)  # characters of each execution's stdout/stderr kept in results
    sandbox: SandboxSection = Field(default_factory=SandboxSection)


@dataclass(frozen=True)
class Task:
    id: str
    task: str
    command: str
    tool: str
    setup: str | None = None


# ----------------------------------------------------------------------------------- task file
def load_tasks(path: str | Path) -> list[Task]:
    """Parse and validate a CMDGen-mini task file; UserError naming the line on any problem."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: task file not found")
    tasks: list[Task] = []
    seen: dict[str, int] = {}
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{p}:{lineno}: not valid UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            tasks.append(_task_from(obj, p, lineno))
            if tasks[-1].id in seen:
                raise UserError(f"{p}:{lineno}: duplicate id {tasks[-1].id!r} (first on line {seen[tasks[-1].id]})")
            seen[tasks[-1].id] = lineno
    if not tasks:
        raise UserError(f"{p}: no tasks in the file")
    return tasks


def _task_from(obj, p: Path, lineno: int) -> Task:
    where = f"{p}:{lineno}"
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    for k in REQUIRED:
        if k not in obj:
            raise UserError(f"{where}: missing key {k!r}")
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise UserError(f"{where}: {k!r} must be a non-empty string")
    setup = obj.get("setup")
    if setup is not None and not isinstance(setup, str):
        raise UserError(f"{where}: 'setup' must be a string")
    if "\n" in obj["command"].strip():
        raise UserError(f"{where}: 'command' must be a single line")
    return Task(id=obj["id"], task=obj["task"].strip(), command=obj["command"].strip(),
                tool=obj["tool"].strip(), setup=setup or None)


# ----------------------------------------------------------------------------------- prompting
def build_messages(task: Task | str) -> list[dict]:
    """The conversation the model sees for a task: exactly the user turn of an SFT pair
    {"task", "command"} rendered by model.chat.pair_to_messages (no system message), so evaluation
    prompts and SFT data share one template."""
    from model.chat import pair_to_messages

    text = task.task if isinstance(task, Task) else task
    return pair_to_messages({"task": text, "command": "-"})[:-1]


def prompt_ids(task: Task | str, tokenizer) -> list[int]:
    from model.chat import render_prompt

    return render_prompt(build_messages(task), tokenizer)


_FENCE = re.compile(r"^```[\w-]*\s*$")


def extract_command(text: str) -> str:
    """The command in a model answer: the first non-empty line, without a Markdown code fence,
    inline backticks or a leading shell prompt ("$ ")."""
    for line in text.splitlines():
        s = line.strip()
        if not s or _FENCE.match(s):
            continue
        if len(s) >= 2 and s[0] == "`" and s[-1] == "`":
            s = s.strip("`").strip()
        if s.startswith("$ "):
            s = s[2:].strip()
        return s
    return ""


def generate_answers(model, tokenizer, tasks: Sequence[Task], max_new_tokens: int = 64,
                     batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers of the model for each task (raw text, before extract_command)."""
    from model.chat import answer_text, stop_ids
    from model.generation import generate_ids

    out: list[str] = []
    stops = stop_ids(tokenizer)
    for i in range(0, len(tasks), batch_size):
        chunk = tasks[i:i + batch_size]
        ids = [prompt_ids(t, tokenizer) for t in chunk]
        gen = generate_ids(model, ids, max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=stops)
        out.extend(answer_text(tokenizer, g) for g in gen)
        if on_batch:
            on_batch(len(chunk))
    return out


# ----------------------------------------------------------------------------------- scoring
def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n] + f"... [{len(s) - n} more characters]"


class Evaluator:
    """Runs and scores (task, answer) pairs. Reference executions are cached by (command, setup),
    so evaluating several checkpoints on one task file runs each reference once."""

    def __init__(self, section: CmdgenSection | None = None, embedder=None):
        from model.evaluation.metrics import Embedder

        self.section = section or CmdgenSection()
        self.embedder = embedder or Embedder()
        self.sandbox = None
        if self.section.execute:
            from model.evaluation.sandbox import Sandbox, SandboxUnavailable, check_available

            try:
                check_available()
            except SandboxUnavailable as e:
                raise UserError(f"{e} (or score without execution: --no-execute / cmdgen.execute: false)") from None
            self.sandbox = Sandbox(self.section.sandbox.limits())
        self._refs: dict[tuple, object] = {}

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def _reference(self, task: Task):
        key = (task.command, task.setup, task.tool)
        if key not in self._refs:
            self._refs[key] = self.sandbox.run(task.command, setup=task.setup, tool=task.tool)
        return self._refs[key]

    def score(self, task: Task, answer: str) -> dict:
        from model.evaluation.metrics import Execution, score_task

        generated = extract_command(answer)
        ref = gen = None
        row = {"id": task.id, "tool": task.tool, "task": task.task, "reference": task.command,
               "generated": generated, "answer": answer}
        if self.sandbox is not None:
            ref = self._reference(task)
            gen = self.sandbox.run(generated, setup=task.setup)
            keep = self.section.keep_output
            for name, r in (("reference", ref), ("generated", gen)):
                row[f"{name}_status"] = r.status
                row[f"{name}_exit_code"] = r.exit_code
                row[f"{name}_stdout"] = _clip(r.stdout, keep)
                row[f"{name}_stderr"] = _clip(r.stderr, keep)
        row.update(score_task(
            self.embedder, generated, task.command,
            Execution(gen.status, gen.exit_code, gen.stdout) if gen else None,
            Execution(ref.status, ref.exit_code, ref.stdout) if ref else None,
            self.section.threshold))
        return row


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluate_answers(tasks: Sequence[Task], answers: Sequence[str], out_dir: str | Path,
                     evaluator: Evaluator, meta: dict | None = None,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Score answers (one per task), write results.jsonl and summary.json; return the summary."""
    from model.evaluation.metrics import summarize

    if len(answers) != len(tasks):
        raise ValueError(f"{len(answers)} answers for {len(tasks)} tasks")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    tmp = out / "results.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for task, answer in zip(tasks, answers):
            row = evaluator.score(task, answer)
            rows.append(row)
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()  # a crash mid-run leaves every finished task on disk
            if progress:
                progress(1)
    tmp.replace(out / "results.jsonl")
    summary = summarize(rows)
    section = evaluator.section
    summary.update({
        "benchmark": "cmdgen-mini",
        "threshold": section.threshold,
        "executed": section.execute,
        "sandbox": section.sandbox.model_dump() if section.execute else None,
        "reference_status": _counts(r.get("reference_status") for r in rows),
        "generated_status": _counts(r.get("generated_status") for r in rows),
        "score_seconds": round(time.time() - t0, 3),
        **(meta or {}),
    })
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _counts(values) -> dict:
    d: dict[str, int] = {}
    for v in values:
        if v is not None:
            d[v] = d.get(v, 0) + 1
    return dict(sorted(d.items()))


def evaluate_checkpoint(tasks_path: str | Path, checkpoint: str | Path, out_dir: str | Path,
                        section: CmdgenSection | None = None, evaluator: Evaluator | None = None,
                        show_progress: bool = False) -> dict:
    """Generate with a saved model (model/io.py layout) and score: the `minisigma eval cmdgen` job."""
    from minisigma.core.progress import StageProgress
    from model.io import load_pretrained

    section = section or CmdgenSection()
    tasks_path = Path(tasks_path)
    tasks = load_tasks(tasks_path)
    model, cfg, tok = load_pretrained(checkpoint)
    if tok is None:
        raise UserError(f"{checkpoint}: no tokenizer.json next to the model")
    own = evaluator is None
    evaluator = evaluator or Evaluator(section)
    try:
        t0 = time.time()
        with StageProgress("cmdgen: generate", len(tasks), enabled=show_progress, unit="tasks") as bar:
            answers = generate_answers(model, tok, tasks, section.max_new_tokens, section.batch_size,
                                       lambda n: bar.advance(n=n))
        gen_seconds = time.time() - t0
        meta = {"checkpoint": str(checkpoint), "model": cfg.name, "tasks_file": str(tasks_path),
                "tasks_sha256": _sha256(tasks_path), "generate_seconds": round(gen_seconds, 3),
                "max_new_tokens": section.max_new_tokens}
        with StageProgress("cmdgen: execute + score", len(tasks), enabled=show_progress, unit="tasks") as bar:
            return evaluate_answers(tasks, answers, out_dir, evaluator, meta, lambda n: bar.advance(n=n))
    finally:
        if own:
            evaluator.close()


def task_to_dict(t: Task) -> dict:
    return {k: v for k, v in asdict(t).items() if v is not None}
