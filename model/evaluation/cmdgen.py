"""CMDGen-mini: natural language -> shell command, scored the way the AIMicius CMDGen benchmark is.

Task file format (JSON Lines, UTF-8, one object per line, blank lines ignored)::

    {"id": "sed-0003", "task": "Replace every foo with bar in notes.txt, in place",
     "commands": ["sed -i 's/foo/bar/g' notes.txt", "sed -i -e 's/foo/bar/g' notes.txt"],
     "tool": "sed", "package": "sed",
     "fixtures": [{"path": "notes.txt", "content": "foo and foo\n", "mode": "0644"}]}

- ``id``        unique string
- ``task``      the natural-language request given to the model
- ``command``   the reference command (one line of bash), or
  ``commands``  a non-empty list of accepted reference commands (exact match and Success against
                any; CMD score and Output score take the best)
- ``tool``      the program the task is about; results are averaged per tool, and a reference whose
                tool is not installed is scored ``not_executable``
- ``package``   optional: the Debian package that ships the tool (what the sandbox must have
                installed; ``scripts/sandbox-packages.txt`` lists them for the task set)
- ``suite``     optional: the report group (default ``general``; CMDGen-mini's GPU-tooling
                family is ``gpu``); every summary has a block per suite
- ``fixtures``  optional: files, directories and symlinks that exist before execution, each
                ``{"path", "type": file|dir|symlink (default file), "content" (text) or "base64",
                "mode": "0644" (octal text), "target" (symlinks)}``; relative paths are in the
                working directory /scratch, absolute ones under a top-level directory such as
                /data (minisigma/core/sandbox.py: Fixture)
- ``setup``     optional bash run after the fixtures, in the same sandbox (its output is discarded)
- ``privileged`` optional boolean: the setup, the references and the generated command run as
                namespaced root (uid 0 with every capability in the sandbox's own user namespace,
                minisigma/core/sandbox.py), for tasks such as ``ip link add`` or ``iptables -L``
                that act on the sandbox's own namespaces; every result row records it
- ``no_execute`` optional: why the task is scored without execution (exact match, CMD score and
                Calibration only), e.g. "needs a GPU"
- ``metadata``  reserved: any JSON value, carried by producers (provenance), ignored here; so is
                every key starting with ``x-``

Any other key is an error; a malformed file fails with one line naming the file and line number.
Every execution tracks the file-system state, so a reference and a generated command are compared
by stdout *and* by the created, deleted and changed files (with their sha256) they left. A task
whose references all fail to run with status ok is outside the executable share: it is dropped from
Success and Output score with its reason (``dropped_reason``: ``reference_error``,
``reference_not_executable``, ``no_execute`` ...), and still scored on exact match and CMD score.
A suite is an *executed family* when it has a task not marked ``no_execute`` (CMDGen-mini:
``general``; ``gpu`` and ``textual`` are textual-only families); summaries give every family's
size (``families``) and the executable share over all tasks of the executed ones
(``executable_families``).

For every task the model is prompted with the chat template (``build_messages`` -- the same
template SFT trains on, model/chat.py), the first line of its answer is taken as the command
(``extract_command``), the generated and the reference command run in fresh sandboxes
(minisigma/core/sandbox.py) after the task's setup, and the metrics of
model/evaluation/metrics.py are computed. Outputs, in the output directory:

- ``results.jsonl``  one line per task: the task, the raw and extracted generation, the executions
                     (status, exit code, stdout/stderr truncated to ``keep_output`` characters, the
                     file changes), whether it is in the executable share and the six metrics;
- ``summary.json``   averages overall, per suite and per tool, plus the settings and the task
                     file's sha256.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pydantic import Field

from minisigma.core import storage
from minisigma.core.errors import UserError
from minisigma.core.progress import StageProgress
from minisigma.core.recipes import Section
from minisigma.core.sandbox import (
    Fixture,
    Limits,
    Sandbox,
    SandboxUnavailable,
    check_available,
    fixtures_from,
    program_of,
)
from model.chat import answer_text, pair_to_messages, render_prompt, stop_ids
from model.evaluation.metrics import (
    Embedder,
    Execution,
    executable_families,
    families,
    score_task,
    success,
    summarize,
)
from model.generation import generate_ids
from model.io import load_pretrained

REQUIRED = ("id", "task", "tool")  # plus one of "command" / "commands"
OPTIONAL = ("command", "commands", "setup", "fixtures", "package", "suite", "no_execute", "privileged")
RESERVED = ("metadata",)  # and every key starting with "x-"
_SUITE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class SandboxSection(Section):
    """Resource limits of each command execution (minisigma.core.sandbox.Limits)."""

    wall_seconds: float = Field(10.0, gt=0, le=600)
    cpu_seconds: int = Field(5, ge=1, le=600)
    memory_mb: int = Field(1024, ge=64)
    output_kb: int = Field(64, ge=1)
    processes: int = Field(64, ge=4)
    file_mb: int = Field(16, ge=1)
    scratch_mb: int = Field(32, ge=1)

    def limits(self):
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
    commands: tuple[str, ...]
    tool: str
    setup: str | None = None
    fixtures: tuple[Fixture, ...] = ()
    package: str | None = None
    suite: str = "general"
    no_execute: str | None = None
    privileged: bool = False

    @property
    def command(self) -> str:
        """The first reference (the one shown in tables)."""
        return self.commands[0]


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
    unknown = sorted(k for k in set(obj) - set(REQUIRED) - set(OPTIONAL) - set(RESERVED) if not k.startswith("x-"))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(REQUIRED + OPTIONAL)}; "
                        f"reserved: metadata, x-*)")
    for k in REQUIRED:
        if k not in obj:
            raise UserError(f"{where}: missing key {k!r}")
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise UserError(f"{where}: {k!r} must be a non-empty string")
    if ("command" in obj) == ("commands" in obj):
        raise UserError(f"{where}: give exactly one of 'command' (a string) and 'commands' (a list of strings)")
    if "command" in obj:
        if not isinstance(obj["command"], str) or not obj["command"].strip():
            raise UserError(f"{where}: 'command' must be a non-empty string")
        commands = [obj["command"]]
    else:
        commands = obj["commands"]
        if not isinstance(commands, list) or not commands or \
                not all(isinstance(c, str) and c.strip() for c in commands):
            raise UserError(f"{where}: 'commands' must be a non-empty list of non-empty strings")
    if any("\n" in c.strip() for c in commands):
        raise UserError(f"{where}: " + ("'command' must be a single line" if "command" in obj
                                        else "'commands' must each be a single line"))
    for k in ("setup", "package", "no_execute"):
        if obj.get(k) is not None and not isinstance(obj[k], str):
            raise UserError(f"{where}: {k!r} must be a string")
    if not isinstance(obj.get("privileged", False), bool):
        raise UserError(f"{where}: 'privileged' must be true or false")
    suite = obj.get("suite", "general")
    if not isinstance(suite, str) or not _SUITE.match(suite):
        raise UserError(f"{where}: 'suite' must be a lower-case name like 'general' or 'gpu'")
    fixtures = fixtures_from(obj.get("fixtures", []), where)
    return Task(id=obj["id"], task=obj["task"].strip(), commands=tuple(dict.fromkeys(c.strip() for c in commands)),
                tool=obj["tool"].strip(), setup=obj.get("setup") or None, fixtures=fixtures,
                package=(obj.get("package") or "").strip() or None, suite=suite,
                no_execute=(obj.get("no_execute") or "").strip() or None, privileged=obj.get("privileged", False))


# ----------------------------------------------------------------------------------- prompting
def build_messages(task: Task | str) -> list[dict]:
    """The conversation the model sees for a task: exactly the user turn of an SFT pair
    {"task", "command"} rendered by model.chat.pair_to_messages (no system message), so evaluation
    prompts and SFT data share one template."""
    text = task.task if isinstance(task, Task) else task
    return pair_to_messages({"task": text, "command": "-"})[:-1]


def prompt_ids(task: Task | str, tokenizer) -> list[int]:
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
        self.section = section or CmdgenSection()
        # embedder=False: only the sandbox is wanted (check_references), no scoring model
        self.embedder = None if embedder is False else (embedder or Embedder())
        self.sandbox = None
        if self.section.execute:
            try:
                check_available()
            except SandboxUnavailable as e:
                raise UserError(f"{e} (or score without execution: --no-execute / cmdgen.execute: false)") from None
            self.sandbox = Sandbox(self.section.sandbox.limits())
        self._refs: dict[tuple, object] = {}

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def _run(self, task: Task, command: str, tool: str | None = None):
        return self.sandbox.run(command, setup=task.setup, tool=tool, fixtures=task.fixtures, track=True,
                                privileged=task.privileged)

    def _reference(self, task: Task, command: str):
        key = (command, task.setup, task.fixtures, task.privileged)
        if key not in self._refs:
            self._refs[key] = self._run(task, command, tool=program_of(command))
        return self._refs[key]

    def references(self, task: Task) -> list:
        """The sandbox results of the task's references (cached), or [] when it is not executed."""
        if self.sandbox is None or task.no_execute:
            return []
        return [self._reference(task, c) for c in task.commands]

    @staticmethod
    def dropped_reason(task: Task, refs: list, executed: bool) -> str | None:
        """None when the task is in the executable share (a reference ran with status ok), else why not."""
        if task.no_execute:
            return "no_execute"
        if not executed:
            return "not_executed"
        if any(r.status == "ok" for r in refs):
            return None
        return f"reference_{refs[0].status}"

    def score(self, task: Task, answer: str) -> dict:
        generated = extract_command(answer)
        refs = self.references(task)
        gen = None
        row = {"id": task.id, "tool": task.tool, "suite": task.suite, "task": task.task, "reference": task.command,
               "references": list(task.commands), "generated": generated, "answer": answer,
               "privileged": task.privileged}
        keep = self.section.keep_output
        if refs:
            gen = self._run(task, generated)
            for name, r in (("reference", refs[0]), ("generated", gen)):
                row[f"{name}_status"] = r.status
                row[f"{name}_exit_code"] = r.exit_code
                row[f"{name}_stdout"] = _clip(r.stdout, keep)
                row[f"{name}_stderr"] = _clip(r.stderr, keep)
                row[f"{name}_changes"] = r.changes()
            if len(refs) > 1:
                row["reference_statuses"] = [r.status for r in refs]
        reason = self.dropped_reason(task, refs, self.sandbox is not None)
        row["executable"] = reason is None
        row["dropped_reason"] = reason
        if task.no_execute:
            row["no_execute"] = task.no_execute

        row.update(score_task(
            self.embedder, generated, list(task.commands), _execution(gen) if gen else None,
            [_execution(r) for r in refs] if refs else [None] * len(task.commands), self.section.threshold))
        return row


def _execution(r) -> Execution:
    """The part of a sandbox result the metrics compare."""
    return Execution(r.status, r.exit_code, r.stdout, r.files, r.files_before)


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
        # how memory outside the commands' address spaces was bounded (sandbox.py): cgroup | rlimit
        "sandbox_memory_limit": evaluator.sandbox.memory_limit if evaluator.sandbox is not None else None,
        "reference_status": _counts(r.get("reference_status") for r in rows),
        "generated_status": _counts(r.get("generated_status") for r in rows),
        "score_seconds": round(time.time() - t0, 3),
        **(meta or {}),
    })
    # paths inside a run relative to out (the run can move), the checkout's relative to it
    (out / "summary.json").write_text(json.dumps(storage.recorded(summary, out), indent=2, sort_keys=True) + "\n")
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
        # the checkpoint relative to out_dir inside a bound run (minisigma reproduce): the run can move
        meta = {"checkpoint": storage.relative(checkpoint, out_dir), "model": cfg.name, "tasks_file": str(tasks_path),
                "tasks_sha256": _sha256(tasks_path), "generate_seconds": round(gen_seconds, 3),
                "max_new_tokens": section.max_new_tokens}
        with StageProgress("cmdgen: execute + score", len(tasks), enabled=show_progress, unit="tasks") as bar:
            return evaluate_answers(tasks, answers, out_dir, evaluator, meta, lambda n: bar.advance(n=n))
    finally:
        if own:
            evaluator.close()


def task_to_dict(t: Task) -> dict:
    """The task as a task-file line (the inverse of load_tasks' parsing)."""
    d = {"id": t.id, "task": t.task, "tool": t.tool}
    if len(t.commands) == 1:
        d["command"] = t.commands[0]
    else:
        d["commands"] = list(t.commands)
    for k in ("setup", "package", "no_execute"):
        if getattr(t, k):
            d[k] = getattr(t, k)
    if t.suite != "general":
        d["suite"] = t.suite
    if t.privileged:
        d["privileged"] = True
    if t.fixtures:
        d["fixtures"] = [fixture_to_dict(f) for f in t.fixtures]
    return d


def fixture_to_dict(f: Fixture) -> dict:
    d: dict = {"path": f.path}
    if f.type != "file":
        d["type"] = f.type
    if isinstance(f.content, bytes):  # declared as base64: stays base64
        d["base64"] = base64.b64encode(f.content).decode("ascii")
    elif f.content:
        d["content"] = f.content
    if f.mode is not None:
        d["mode"] = f"{f.mode:04o}"
    if f.target is not None:
        d["target"] = f.target
    return d


def check_references(tasks_path: str | Path, out_path: str | Path, section: CmdgenSection | None = None,
                     show_progress: bool = False) -> dict:
    """Run every task's references in the sandbox (no model): the executable share of a task set,
    per suite and per reason, and each task's status, written as JSON to `out_path`. A reference
    that ran is run once more in a fresh sandbox: ``reproducible`` says whether the two runs would
    count as a Success against each other (same stdout, same file effect), i.e. whether a correct
    answer can be told right by execution (a new git commit carries the time it was made)."""
    section = section or CmdgenSection()
    tasks_path = Path(tasks_path)
    tasks = load_tasks(tasks_path)
    evaluator = Evaluator(section, embedder=False)
    rows = []
    t0 = time.time()
    try:
        with StageProgress("cmdgen: run references", len(tasks), enabled=show_progress, unit="tasks") as bar:
            for t in tasks:
                refs = evaluator.references(t)
                reason = evaluator.dropped_reason(t, refs, True)
                reproducible = None
                if reason is None:
                    i, first = next((i, r) for i, r in enumerate(refs) if r.status == "ok")
                    again = evaluator._run(t, t.commands[i], tool=program_of(t.commands[i]))
                    reproducible = success(_execution(again), _execution(first))
                rows.append({"id": t.id, "tool": t.tool, "suite": t.suite, "package": t.package,
                             "fixtures": len(t.fixtures), "setup": t.setup is not None, "privileged": t.privileged,
                             "executable": reason is None, "dropped_reason": reason,
                             "statuses": [r.status for r in refs], "commands": list(t.commands),
                             "no_execute": t.no_execute, "reproducible": reproducible,
                             "stderr": _clip(refs[0].stderr, 300) if refs else None})
                bar.advance(n=1)
    finally:
        evaluator.close()

    def block(rs):
        ex = sum(r["executable"] for r in rs)
        return {"tasks": len(rs), "executable": ex, "executable_share": round(ex / len(rs), 4) if rs else None,
                "dropped": _counts(r["dropped_reason"] for r in rs if not r["executable"]),
                # how the executable ones ran: as namespaced root, after a setup (a git repository ...)
                "executable_privileged": sum(r["executable"] and r["privileged"] for r in rs),
                # executable, but a second run of the reference differs from the first (time stamps)
                "executable_not_reproducible": sum(r["reproducible"] is False for r in rs),
                "executable_with_setup": sum(r["executable"] and r["setup"] for r in rs)}

    suites = sorted({r["suite"] for r in rows})
    general = [r for r in rows if not r["dropped_reason"] == "no_execute"]
    fams = executable_families(rows)
    report = {"benchmark": "cmdgen-mini-references", "tasks_file": str(tasks_path),
              "tasks_sha256": _sha256(tasks_path), "sandbox": section.sandbox.model_dump(),
              "overall": block(rows), "executed_tasks": block(general),
              # the target's measure: every task of the executed families (a no_execute task in one counts against it)
              "families": families(rows),
              "executable_families": {"suites": fams, **block([r for r in rows if r["suite"] in fams])},
              "per_suite": {k: block([r for r in rows if r["suite"] == k]) for k in suites},
              "seconds": round(time.time() - t0, 1), "tasks": rows}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report
