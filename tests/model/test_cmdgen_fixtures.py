"""CMDGen-mini task format v2: fixtures judged by the file system they leave, several references per
task, the GPU-tooling suite scored textually, and the one-line errors of the format."""

from __future__ import annotations

import json
import shutil

import pytest

from minisigma.core.errors import UserError
from model.evaluation.cmdgen import (
    CmdgenSection,
    Evaluator,
    check_references,
    evaluate_answers,
    load_tasks,
    task_to_dict,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

NOTES = {"path": "notes.txt", "content": "foo one\nfoo two\n"}
FILE_TASKS = [
    {"id": "sed-1", "task": "Replace every foo with bar in notes.txt, in place", "tool": "sed",
     "command": "sed -i 's/foo/bar/g' notes.txt", "fixtures": [NOTES]},
    {"id": "rm-1", "task": "Delete old.log", "tool": "rm", "command": "rm old.log",
     "fixtures": [{"path": "old.log", "content": "x\n"}, {"path": "new.log", "content": "y\n"}]},
    {"id": "mv-1", "task": "Rename /data/in/a.txt to b.txt in the same directory", "tool": "mv",
     "command": "mv /data/in/a.txt /data/in/b.txt",
     "fixtures": [{"path": "/data/in/a.txt", "content": "A\n", "mode": "0600"}]},
]
# (task id, answer, success?): every wrong answer prints exactly what the reference prints
# (nothing), so only the file system tells them apart.
FILE_ANSWERS = [
    ("sed-1", "sed -i -e 's/foo/bar/g' notes.txt", True),
    ("sed-1", "sed -i 's/foo/baz/g' notes.txt", False),
    ("sed-1", "sed -i 's/foo/bar/' notes.txt", True),  # one foo per line: the same file results
    ("rm-1", "rm -f old.log", True),
    ("rm-1", "rm -f new.log", False),
    ("mv-1", "cd /data/in && mv a.txt b.txt", True),
    ("mv-1", "cp /data/in/a.txt /data/in/b.txt", False),  # a.txt is still there
    ("mv-1", "mv /data/in/a.txt /data/in/b.txt && chmod 644 /data/in/b.txt", False),  # mode differs
]


def write(path, tasks):
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


@pytest.fixture(scope="module")
def evaluator():
    ev = Evaluator(CmdgenSection(sandbox={"wall_seconds": 20}))
    yield ev
    ev.close()


@needs_bwrap
def test_fixture_commands_are_judged_by_the_file_system(tmp_path, evaluator):
    by_id = {t.id: t for t in load_tasks(write(tmp_path / "t.jsonl", FILE_TASKS))}
    tasks = [by_id[i] for i, _, _ in FILE_ANSWERS]
    summary = evaluate_answers(tasks, [a for _, a, _ in FILE_ANSWERS], tmp_path / "out", evaluator)
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    for (tid, answer, want), r in zip(FILE_ANSWERS, rows):
        assert r["reference_status"] == "ok" and r["executable"], r
        assert r["generated_status"] == "ok" and r["generated_stdout"] == r["reference_stdout"] == "", r
        assert r["success"] is want, (answer, r["generated_changes"], r["reference_changes"])
        assert not r["exact_match"]
    sed, rm, mv = rows[0], rows[3], rows[5]
    assert sed["reference_changes"] == {"created": [], "deleted": [], "changed": ["/scratch/notes.txt"]}
    assert rm["reference_changes"] == {"created": [], "deleted": ["/scratch/old.log"], "changed": []}
    # (a directory's entry is its type and mode: its contents show up as their own paths)
    assert mv["reference_changes"] == {"created": ["/data/in/b.txt"], "deleted": ["/data/in/a.txt"], "changed": []}
    assert rows[4]["generated_changes"]["deleted"] == ["/scratch/new.log"]
    assert rows[1]["output_score"] < 1.0  # the changed file's hash differs, so the output text does
    o = summary["overall"]
    assert o["executable"] == o["tasks"] == len(FILE_ANSWERS) and o["success"] == pytest.approx(4 / 8)


@needs_bwrap
def test_two_references_exact_and_success_against_either(tmp_path, evaluator):
    two = {"id": "uniq-1", "task": "Print the distinct names in names.txt, sorted", "tool": "sort",
           "commands": ["sort -u names.txt", "sort names.txt | uniq"],
           "fixtures": [{"path": "names.txt", "content": "bob\nalice\nbob\n"}]}
    (task,) = load_tasks(write(tmp_path / "t.jsonl", [two]))
    assert task.commands == ("sort -u names.txt", "sort names.txt | uniq")
    answers = ["sort names.txt  |  uniq", "uniq <(sort names.txt)", "sort names.txt"]
    evaluate_answers([task] * 3, answers, tmp_path / "out", evaluator)
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert rows[0]["exact_match"] and rows[0]["cmd_score"] == 1.0  # the second reference, exactly
    assert not rows[1]["exact_match"] and rows[1]["success"]
    assert not rows[2]["exact_match"] and not rows[2]["success"]
    assert rows[0]["references"] == list(task.commands) and rows[0]["reference_statuses"] == ["ok", "ok"]
    assert task_to_dict(task)["commands"] == two["commands"]


@needs_bwrap
def test_gpu_task_is_scored_textually_and_reported_separately(tmp_path, evaluator):
    tasks = load_tasks(write(tmp_path / "t.jsonl", [
        {"id": "gpu-1", "task": "Show the temperature of every AMD GPU", "tool": "rocm-smi",
         "package": "rocm-smi", "suite": "gpu", "command": "rocm-smi --showtemp",
         "no_execute": "needs an AMD GPU and its driver"},
        {"id": "gpu-2", "task": "Show the memory use of every AMD GPU", "tool": "rocm-smi",
         "package": "rocm-smi", "suite": "gpu", "command": "rocm-smi --showmeminfo vram",
         "no_execute": "needs an AMD GPU and its driver"},
        FILE_TASKS[1]]))
    summary = evaluate_answers(tasks, ["rocm-smi  --showtemp", "rocm-smi --showuse", "rm old.log"],
                               tmp_path / "out", evaluator)
    rows = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    g1, g2 = rows[0], rows[1]
    assert "reference_status" not in g1 and "generated_status" not in g1  # nothing ran
    assert g1["exact_match"] and g1["accuracy"] and g1["cmd_score"] == 1.0 and g1["output_score"] is None
    assert not g2["exact_match"] and 0 < g2["cmd_score"] < 1 and not g2["accuracy"]
    assert not g1["executable"] and g1["dropped_reason"] == "no_execute"
    gpu = summary["per_suite"]["gpu"]
    assert gpu["tasks"] == 2 and gpu["executable"] == 0 and gpu["success"] is None
    assert gpu["exact_match"] == 0.5 and gpu["dropped"] == {"no_execute": 2}
    assert summary["per_suite"]["general"]["success"] == 1.0


@needs_bwrap
def test_reference_only_check_measures_the_executable_share(tmp_path):
    tasks = FILE_TASKS + [
        {"id": "missing-1", "task": "List the GPUs", "tool": "nvidia-smi", "command": "nvidia-smi -L"},
        {"id": "fails-1", "task": "Show nothing.txt", "tool": "cat", "command": "cat nothing.txt"},
        {"id": "gpu-1", "task": "Show GPU temperatures", "tool": "rocm-smi", "suite": "gpu",
         "command": "rocm-smi --showtemp", "no_execute": "needs an AMD GPU"}]
    r = check_references(write(tmp_path / "t.jsonl", tasks), tmp_path / "refs.json")
    assert json.loads((tmp_path / "refs.json").read_text())["overall"] == r["overall"]
    assert r["overall"] == {"tasks": 6, "executable": 3, "executable_share": 0.5,
                            "dropped": {"no_execute": 1, "reference_error": 1, "reference_not_executable": 1},
                            "executable_privileged": 0, "executable_not_reproducible": 0,
                            "executable_with_setup": 0}
    assert [t["reproducible"] for t in r["tasks"]] == [True, True, True, None, None, None]
    assert r["executed_tasks"]["tasks"] == 5 and r["executed_tasks"]["executable"] == 3
    assert r["per_suite"]["gpu"]["executable"] == 0


@pytest.mark.parametrize("line,message", [
    ({"id": "x", "task": "t", "tool": "ls"}, "give exactly one of 'command'"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "commands": ["ls"]}, "give exactly one of 'command'"),
    ({"id": "x", "task": "t", "tool": "ls", "commands": []}, "'commands' must be a non-empty list"),
    ({"id": "x", "task": "t", "tool": "ls", "commands": ["ls", 3]}, "'commands' must be a non-empty list"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixture": []}, "unknown key 'fixture'"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": {}}, "'fixtures' must be a list"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "a", "size": 3}]},
     "fixtures[0]: unknown key 'size'"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "/etc/passwd"}]},
     "fixtures[0]: fixture path '/etc/passwd' is under /etc"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "../up"}]},
     "must not contain '..'"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "a", "mode": "rw"}]},
     "'mode' must be octal text"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "a", "type": "fifo"}]},
     "fixture type 'fifo'"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "fixtures": [{"path": "a"}, {"path": "./a"}]},
     "fixtures[1]: path './a' is declared twice"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "suite": "GPU!"}, "'suite' must be"),
    ({"id": "x", "task": "t", "tool": "ls", "command": "ls", "privileged": "yes"}, "'privileged' must be true or false"),
])
def test_format_errors_are_one_line(tmp_path, line, message):
    p = write(tmp_path / "t.jsonl", [line])
    with pytest.raises(UserError) as e:
        load_tasks(p)
    assert str(e.value).startswith(f"{p}:1: ") and message in str(e.value) and "\n" not in str(e.value)


def test_reserved_keys_are_accepted_and_ignored(tmp_path):
    t = {"id": "x", "task": "t", "tool": "ls", "command": "ls", "metadata": {"rule": "example"}, "x-note": 1,
         "fixtures": [{"path": "bin.dat", "base64": "AAEC", "mode": "0400"}, {"path": "d", "type": "dir"},
                      {"path": "link", "type": "symlink", "target": "d"}]}
    (task,) = load_tasks(write(tmp_path / "t.jsonl", [t]))
    assert task.fixtures[0].content == b"\x00\x01\x02" and task.fixtures[0].mode == 0o400
    d = task_to_dict(task)
    assert "metadata" not in d and d["fixtures"][0] == {"path": "bin.dat", "base64": "AAEC", "mode": "0400"}
    assert load_tasks(write(tmp_path / "u.jsonl", [d])) == [task]


# A bridge only namespaced root can add (in the sandbox's own network namespace); the interface
# list shows what the command did.
LINKS = "ip -o link show | awk -F': ' '{print $2}'"
BRIDGE = {"id": "ip-1", "task": "Add a bridge named br0, then list the network interfaces", "tool": "ip",
          "command": f"ip link add br0 type bridge && {LINKS}", "privileged": True}


@needs_bwrap
def test_privileged_task_runs_as_namespaced_root_and_is_judged_by_stdout(tmp_path, evaluator):
    plain = dict(BRIDGE, id="ip-2", privileged=False)
    tasks = load_tasks(write(tmp_path / "t.jsonl", [BRIDGE, plain]))
    assert tasks[0].privileged and not tasks[1].privileged
    assert task_to_dict(tasks[0])["privileged"] is True and "privileged" not in task_to_dict(tasks[1])
    answers = [(0, f"ip link add name br0 type bridge && {LINKS}", True),
               (0, f"ip link add br1 type bridge && {LINKS}", False),  # another name: another listing
               (0, LINKS, False),  # nothing added
               (1, BRIDGE["command"], False)]  # the same command without root cannot add it
    evaluate_answers([tasks[i] for i, _, _ in answers], [a for _, a, _ in answers], tmp_path / "eval", evaluator)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["privileged"] for r in rows] == [True, True, True, False]
    assert rows[0]["reference_stdout"] == "lo\nbr0\n" and rows[0]["generated_stdout"] == "lo\nbr0\n"
    assert [r["success"] for r in rows] == [ok for _, _, ok in answers]
    assert rows[3]["executable"] is False and rows[3]["dropped_reason"] == "reference_error"
    assert "Operation not permitted" in rows[3]["reference_stderr"]


@needs_bwrap
def test_git_task_in_the_builders_repository_is_judged_by_stdout_and_files(tmp_path, evaluator):
    from synth.cmdgen_set import GIT_SETUPS

    dirty, clean = GIT_SETUPS
    tasks = load_tasks(write(tmp_path / "t.jsonl", [
        {"id": "log", "task": "Show the history, one line per commit", "tool": "git-log",
         "command": "git log --oneline", "setup": clean},
        {"id": "tag", "task": "Tag the current commit v2.0", "tool": "git-tag",
         "command": "git tag v2.0", "setup": dirty}]))
    answers = [(0, "git log --pretty=oneline --abbrev-commit", True), (0, "git log --oneline -1", False),
               (1, "git tag v2.0 HEAD", True), (1, "git tag v2.0 HEAD~1", False), (1, "git tag v2.1", False)]
    evaluate_answers([tasks[i] for i, _, _ in answers], [a for _, a, _ in answers], tmp_path / "eval", evaluator)
    rows = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert rows[0]["reference_stdout"].splitlines()[-1].endswith(" Initial commit")
    assert [r["success"] for r in rows] == [ok for _, _, ok in answers]
    # the three tag answers print the same (nothing): what they left in .git tells them apart
    assert rows[2]["reference_changes"]["created"] == ["/scratch/.git/refs/tags/v2.0"]
    assert all(r["generated_stdout"] == "" for r in rows[2:])


@needs_bwrap
def test_reference_check_flags_references_a_second_run_disagrees_with(tmp_path):
    from synth.cmdgen_set import GIT_SETUPS

    tasks = [{"id": "now", "task": "Print the time in nanoseconds", "tool": "date", "command": "date +%s%N"},
             {"id": "commit", "task": "Commit every change", "tool": "git-commit", "command": "git commit -qam draft",
              "setup": GIT_SETUPS[0]},  # the new commit's id carries the time it was made
             {"id": "tag", "task": "Tag the current commit v2.0", "tool": "git-tag", "command": "git tag v2.0",
              "setup": GIT_SETUPS[0]}]
    r = check_references(write(tmp_path / "t.jsonl", tasks), tmp_path / "refs.json")
    assert [t["reproducible"] for t in r["tasks"]] == [False, False, True]
    assert r["overall"]["executable"] == 3 and r["overall"]["executable_not_reproducible"] == 2
