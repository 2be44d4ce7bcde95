"""CMDGen-mini end to end: task files, the prompt, a tiny trained checkpoint generating commands
that are executed in the sandbox and scored; malformed task files fail with the line number."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minisigma.core.errors import UserError
from model.evaluation.cmdgen import (
    CmdgenSection,
    Evaluator,
    Task,
    build_messages,
    evaluate_answers,
    evaluate_checkpoint,
    extract_command,
    load_tasks,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SETUP_NAMES = "printf 'bob\\nalice\\nbob\\ncarol\\n' > names.txt"
TASKS = [
    {"id": "wc-1", "task": "Count the lines of names.txt", "command": "wc -l < names.txt", "tool": "wc",
     "setup": SETUP_NAMES},
    {"id": "sort-1", "task": "Print the distinct names in names.txt, sorted", "command": "sort -u names.txt",
     "tool": "sort", "setup": SETUP_NAMES},
    {"id": "grep-1", "task": "Show the lines of names.txt that contain bob", "command": "grep bob names.txt",
     "tool": "grep", "setup": SETUP_NAMES},
    {"id": "tar-1", "task": "List the files inside the archive docs.tar", "command": "tar -tf docs.tar",
     "tool": "tar", "setup": "mkdir docs && echo a > docs/a.txt && tar -cf docs.tar docs && rm -r docs"},
    {"id": "mkdir-1", "task": "Create the directory build/out with its parents", "command": "mkdir -p build/out",
     "tool": "mkdir"},
    {"id": "smi-1", "task": "List the GPUs of this machine", "command": "nvidia-smi -L", "tool": "nvidia-smi"},
]
# What the model is trained to answer. sort-1 gets an equivalent but different command (scores as
# success, not exact match); grep-1 a wrong one (bob vs alice); the rest the reference itself.
TRAIN_ANSWERS = {"sort-1": "sort names.txt | uniq", "grep-1": "grep alice names.txt"}


def write_tasks(path: Path, tasks=TASKS) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def build_checkpoint(out: Path, pairs: list[tuple[str, str]], steps: int = 250):
    """A tiny DiffQKV model fine-tuned (SFT objective, loss on assistant tokens only) to answer
    the given (task, command) pairs, with a BPE tokenizer trained on real documentation text."""
    import torch

    from model.chat import pair_to_messages, render
    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained
    from model.tokenizer import train_tokenizer
    from tests.train_corpus import stdlib_docs

    docs = stdlib_docs(["shlex", "glob", "tarfile"]) + [{"text": f"{t}\n{c}\n"} for t, c in pairs] * 20
    tok, _ = train_tokenizer(docs, vocab_size=600, max_train_chars=300_000)
    rows = []
    for t, c in pairs:
        ids, mask = render(pair_to_messages({"task": t, "command": c}), tok)
        rows.append((ids, mask))
    T = max(len(ids) for ids, _ in rows)
    x = torch.zeros(len(rows), T - 1, dtype=torch.long)
    y = torch.full((len(rows), T - 1), -100, dtype=torch.long)
    for r, (ids, mask) in enumerate(rows):
        x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
        y[r, :len(ids) - 1] = torch.tensor([i if m else -100 for i, m in zip(ids[1:], mask[1:])])
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a busy shared box: one thread is fastest
    try:
        model = GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size()))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    save_pretrained(model, out, tokenizer=tok)
    return loss.item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    pairs = [(t["task"], TRAIN_ANSWERS.get(t["id"], t["command"])) for t in TASKS]
    final_loss = build_checkpoint(out, pairs)
    assert final_loss < 0.05, final_loss
    return out


# ----------------------------------------------------------------------------- task file
def test_load_tasks_roundtrip(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(TASKS[0]) + "\n\n" + json.dumps(TASKS[4]) + "\n")
    tasks = load_tasks(p)
    assert tasks == [Task("wc-1", "Count the lines of names.txt", ("wc -l < names.txt",), "wc", SETUP_NAMES),
                     Task("mkdir-1", "Create the directory build/out with its parents", ("mkdir -p build/out",),
                          "mkdir", None)]


@pytest.mark.parametrize("bad_line,message", [
    ('{"id": "x", "task": "t", "command": "ls"', "line 3: invalid JSON"),
    ('["id", "task"]', "line 3: expected a JSON object"),
    ('{"id": "x", "task": "t", "command": "ls"}', "line 3: missing key 'tool'"),
    ('{"id": "x", "task": "t", "command": "ls", "tool": "ls", "answer": 1}', "line 3: unknown key 'answer'"),
    ('{"id": "x", "task": "", "command": "ls", "tool": "ls"}', "line 3: 'task' must be a non-empty string"),
    ('{"id": "x", "task": "t", "command": "ls", "tool": "ls", "setup": 5}', "line 3: 'setup' must be a string"),
    ('{"id": "wc-1", "task": "t", "command": "ls", "tool": "ls"}', "line 3: duplicate id 'wc-1' (first on line 1)"),
    ('{"id": "x", "task": "t", "command": "ls\\nrm x", "tool": "ls"}', "line 3: 'command' must be a single line"),
])
def test_malformed_task_file_names_the_line(tmp_path, bad_line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(TASKS[0]) + "\n" + json.dumps(TASKS[1]) + "\n" + bad_line + "\n")
    with pytest.raises(UserError) as e:
        load_tasks(p)
    # "<file>:<line>: <problem>", one line
    assert str(e.value).startswith(f"{p}:3: " + message.split(": ", 1)[1]) and "\n" not in str(e.value)


def test_malformed_task_file_cli_one_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(TASKS[0]) + "\nnot json\n")
    r = subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "eval", "cmdgen",
                        "--tasks", str(p), "--checkpoint", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {p}:2: invalid JSON (Expecting value at column 1)"]


def test_empty_and_binary_task_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="no tasks"):
        load_tasks(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_bytes(json.dumps(TASKS[0]).encode() + b"\n\xff\xfe\n")
    with pytest.raises(UserError, match=r"b.jsonl:2: not valid UTF-8"):
        load_tasks(tmp_path / "b.jsonl")


# ----------------------------------------------------------------------------- prompt / extraction
def test_prompt_is_the_sft_chat_template():
    from model.chat import pair_to_messages

    msgs = build_messages(Task("a", "List files", ("ls",), "ls"))
    assert msgs == [{"role": "user", "content": "List files"}]
    assert msgs == pair_to_messages({"task": "List files", "command": "ls"})[:-1]


@pytest.mark.parametrize("answer,command", [
    ("ls -la\nThis lists files.", "ls -la"),
    ("```bash\ndf -h\n```", "df -h"),
    ("`du -sh .`", "du -sh ."),
    ("$ uname -a", "uname -a"),
    ("\n\n  free -m  ", "free -m"),
    ("", ""),
])
def test_extract_command(answer, command):
    assert extract_command(answer) == command


# ----------------------------------------------------------------------------- end to end
@needs_bwrap
def test_cmdgen_end_to_end_tiny_checkpoint(tmp_path, checkpoint):
    tasks_file = write_tasks(tmp_path / "cmdgen-mini.jsonl")
    out = tmp_path / "eval"
    section = CmdgenSection(tasks=str(tasks_file), threshold=0.8, max_new_tokens=24)
    summary = evaluate_checkpoint(tasks_file, checkpoint, out, section)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [t["id"] for t in TASKS]
    by = {r["id"]: r for r in rows}
    # memorised answers come back as generated commands
    for t in TASKS:
        assert by[t["id"]]["generated"] == TRAIN_ANSWERS.get(t["id"], t["command"]), by[t["id"]]["answer"]
    # exact answers: exact match and (when runnable) success, with the real outputs recorded
    assert by["wc-1"]["exact_match"] and by["wc-1"]["success"] and by["wc-1"]["reference_stdout"].strip() == "4"
    assert by["tar-1"]["success"] and "docs/a.txt" in by["tar-1"]["generated_stdout"]
    assert by["mkdir-1"]["success"] and by["mkdir-1"]["output_score"] == 1.0
    # a different command with the same output: success (so accuracy) without exact match
    s = by["sort-1"]
    assert not s["exact_match"] and s["success"] and s["accuracy"] and s["generated_stdout"] == "alice\nbob\ncarol\n"
    # a wrong command: ran fine, different output -> neither
    g = by["grep-1"]
    assert g["generated_status"] == "ok" and not g["success"] and not g["accuracy"]
    assert g["generated_stdout"] == "alice\n" and 0 < g["cmd_score"] < 1
    # the tool is not installed: not executable, no output score, exact match still counts
    n = by["smi-1"]
    assert n["reference_status"] == "not_executable" and n["output_score"] is None and n["accuracy"]

    o = summary["overall"]
    assert o["tasks"] == 6 and o["accuracy"] == pytest.approx(5 / 6, abs=1e-5)
    assert o["exact_match"] == pytest.approx(4 / 6, abs=1e-5) and o["output_scored"] == 5
    assert set(summary["per_tool"]) == {t["tool"] for t in TASKS}
    assert summary["per_tool"]["grep"]["accuracy"] == 0.0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["overall"] == o and saved["reference_status"] == {"not_executable": 1, "ok": 5}
    assert saved["sandbox_memory_limit"] in ("cgroup", "rlimit")  # how the sandbox bounded memory


@needs_bwrap
def test_hostile_answers_do_not_stop_the_evaluation(tmp_path):
    """Model answers that attack the host are scored like any other and the run completes."""
    tasks = [Task(f"t{i}", "count lines", ("wc -l < names.txt",), "wc", SETUP_NAMES) for i in range(4)]
    answers = ["rm -rf / --no-preserve-root", ":(){ :|:& };:; wait", "yes", "cat /etc/shadow"]
    section = CmdgenSection(sandbox={"wall_seconds": 3, "cpu_seconds": 2})
    ev = Evaluator(section)
    try:
        summary = evaluate_answers(tasks, answers, tmp_path / "out", ev)
    finally:
        ev.close()
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and summary["overall"]["accuracy"] == 0.0
    assert {r["generated_status"] for r in rows} <= {"ok", "error", "timeout", "output_limit", "killed"}
    assert rows[2]["generated_status"] == "output_limit"
    assert all(r["reference_status"] == "ok" and r["reference_stdout"] == "4\n" for r in rows)


@pytest.mark.slow
@needs_bwrap
def test_cli_eval_cmdgen(tmp_path, checkpoint):
    tasks_file = write_tasks(tmp_path / "t.jsonl", TASKS[:2])
    out = tmp_path / "cli-out"
    r = subprocess.run([sys.executable, "-c", "from minisigma.cli import main; main()", "eval", "cmdgen",
                        "--tasks", str(tasks_file), "--checkpoint", str(checkpoint), "--out", str(out),
                        "--max-new-tokens", "24"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "accuracy=1.000" in r.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
