"""Option tasks with operands: the SYNOPSIS's operand kinds give each mined option task a concrete
operand named in the task, the builder gives it a fixture of that kind, its reference runs against
the fixture and a wrong command is judged by the state it leaves; references that cannot run are
classed by reason (textual family or dropped, counted), and the executable share is computed over
every task of the executed families."""

from __future__ import annotations

import json
import shutil

import pytest

from model.evaluation.cmdgen import CmdgenSection, Evaluator, check_references, evaluate_answers, load_tasks
from model.evaluation.metrics import executable_families, families
from synth.cmdgen_set import (
    TEXTUAL_SUITE,
    UNRUNNABLE,
    FixtureProbe,
    derive_fixtures,
    eval_item,
    eval_problem,
    unrunnable_kind,
    write_jsonl,
)
from synth.commands import mine_manpage, synopsis_operands
from synth.manpage import parse_manpage
from tests.synth_manpages import package_docs

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def page(synopsis: str, tool: str = "foo", options: str = "") -> str:
    return (f"NAME\n       {tool} - do things\n\nSYNOPSIS\n       {synopsis}\n\nDESCRIPTION\n       Does things.\n\n"
            f"OPTIONS\n{options}\n")


@pytest.mark.parametrize("synopsis,kinds", [
    ("foo [OPTION]... [FILE]...", ["file"]),
    ("foo [OPTION...] PATTERNS [FILE...]", ["pattern", "file"]),
    ("foo [OPTION]... DIRECTORY...", ["dir"]),
    ("foo [OPTION]... [-T] SOURCE DEST", ["file", "dest"]),
    ("foo [ OPTIONS ] [-f ARCHIVE] <path>...", ["file"]),  # an optional group holding an option is skipped
    ("foo [OPTION]...", []),
    ("foo [OPTION]... FILES", ["file", "file2"]),  # a required pair (diff)
    ("foo [OPTION]... FILE1 [FILE2 [SKIP1 [SKIP2]]]", ["file", "file2"]),
    ("foo [OPTION]... MYFILE OLDFILE YOURFILE", ["file", "file2", "file3"]),  # diff3
    ("foo [OPTION]... [-T] TARGET LINK_NAME", ["file", "dest"]),  # ln
    ("foo [OPTION]... --config CONFIGFILE", None),
    ("foo [options] destination [command]", None),  # a host is not a file
    ("foo [options] <pid> [...]", None),  # a required operand of no known kind
    ("foo {A|--catenate} [OPTIONS] ARCHIVE", None),  # a required choice of modes
    ("foo --files0-from=F", None),  # the form requires an option
])
def test_synopsis_operand_kinds(synopsis, kinds):
    assert synopsis_operands(parse_manpage(page(synopsis))) == kinds


def test_option_tasks_name_their_operands():
    text = page("foo [OPTION]... PATTERN [FILE]...", options=(
        "       -i, --ignore-case\n              Ignore case distinctions in patterns and data.\n\n"
        "       -m, --max-count=NUM\n              Stop after NUM selected lines.\n\n"
        "       -C, --context=WHEN\n              Color the output according to the setting.\n"))
    pairs, _ = mine_manpage({"id": "d1", "text": text, "metadata": {"tool": "foo"}})
    by_cmd = {p["command"]: p for p in pairs}
    p = by_cmd["foo --ignore-case alpha notes.txt"]
    assert p["task"] == "Using foo, ignore case distinctions in patterns and data, with the pattern alpha on notes.txt"
    assert p["metadata"]["operands"] == [["pattern", "alpha"], ["file", "notes.txt"]]
    assert eval_problem(p) is None  # every value of the command is stated in the task
    n = by_cmd["foo --max-count=2 alpha notes.txt"]  # a number metavar gets a value, named in the task
    assert n["task"].endswith("selected lines, with NUM 2 with the pattern alpha on notes.txt")
    assert eval_problem(n) is None
    # a metavar of no known kind stays a placeholder: the builder drops the item as unanswerable
    assert eval_problem(by_cmd["foo --context=WHEN alpha notes.txt"]) == "placeholder_argument"


def test_real_pages_give_operands():
    docs = {d["metadata"]["tool"]: d for pkg in ("grep", "coreutils") for d in package_docs(pkg)}
    assert synopsis_operands(parse_manpage(docs["grep"]["text"], "grep")) == ["pattern", "file"]
    assert synopsis_operands(parse_manpage(docs["sort"]["text"], "sort")) == ["file"]
    assert synopsis_operands(parse_manpage(docs["mkdir"]["text"], "mkdir")) == ["dir"]
    assert synopsis_operands(parse_manpage(docs["cp"]["text"], "cp")) == ["file", "dest"]
    grep = {p["command"]: p for p in mine_manpage(docs["grep"])[0]}
    assert "with the pattern alpha on notes.txt" in grep["grep --ignore-case alpha notes.txt"]["task"]
    sort = {p["command"]: p for p in mine_manpage(docs["sort"])[0]}
    assert sort["sort --reverse notes.txt"]["task"] == "Using sort, reverse the result of comparisons, on notes.txt"


def test_directory_and_destination_operands_get_their_fixtures():
    pair = {"task": "Using ls, list subdirectories recursively, on the directory docs", "command": "ls --recursive docs",
            "tool": "ls", "metadata": {"operands": [["dir", "docs"]]}}
    fx = derive_fixtures(pair)
    assert [(f["path"], f.get("type", "file")) for f in fx] == [("docs", "dir"), ("docs/readme.txt", "file"),
                                                                  ("docs/data.csv", "file")]
    cp = {"task": "Using cp, explain what is being done, on notes.txt into backup.txt",
          "command": "cp --verbose notes.txt backup.txt", "tool": "cp",
          "metadata": {"operands": [["file", "notes.txt"], ["dest", "backup.txt"]]}}
    assert [f["path"] for f in derive_fixtures(cp)] == ["notes.txt"]  # the destination is written, not given


@pytest.mark.parametrize("why,kind", [
    ("error (exit 1): System has not been booted with systemd as init system (PID 1). Can't operate.", "needs_systemd"),
    ("error (exit 1): Failed to connect to bus: No such file or directory", "needs_systemd"),
    ("error (exit 1): dmesg: read kernel buffer failed: Operation not permitted", "needs_root"),
    ("error (exit 1): wipefs: cannot open /dev/sda: No such file or directory", "needs_device"),
    ("error (exit 2): ping: example.com: Temporary failure in name resolution", "needs_network"),
    ("error (exit 1): diff: missing operand after 'notes.txt'", "needs_operand"),
    ("not_executable (exit 127): bash: nvidia-smi: command not found", "tool_not_installed"),
    ("timeout", "timeout"),
    ("error (exit 1): Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", "needs_daemon"),
    ("error (exit 2): runtime/cgo: pthread_create failed: Resource temporarily unavailable", "sandbox_limit"),
    ("error (exit 1): findmnt: unrecognized option '--deleted'", "option_not_supported"),
    ("error (exit 1): wget: missing URL", "needs_network"),
    ("error (exit 1): blockdev: no device specified", "needs_device"),
    ("error (exit 3): frobnicate failed", "reference_error"),
    ("killed (exit 129): usage: git ls-tree [<options>] <tree-ish> [<path>...]", "needs_operand"),  # git's usage exit
    ("killed (exit 137)", "timeout"),
    ("error (exit 1, namespaced root): dmesg: read kernel buffer failed: Operation not permitted", "needs_root"),
])
def test_unrunnable_references_are_classed_by_reason(why, kind):
    assert unrunnable_kind(why) == kind


@needs_bwrap
def test_option_task_runs_against_its_fixture_and_a_wrong_command_is_judged_by_state(tmp_path):
    """A mined option task of the real rm page: `rm --force notes.txt` (the SYNOPSIS's FILE operand)
    gets a notes.txt fixture, its reference runs with it, and answers that print the same (nothing)
    are told apart by what they did to the file system."""
    rm = next(d for d in package_docs("coreutils") if d["metadata"]["tool"] == "rm")
    pair = next(p for p in mine_manpage(rm)[0] if p["command"] == "rm --force notes.txt")
    assert pair["task"].endswith(", on notes.txt")
    derived = derive_fixtures(pair)
    assert [f["path"] for f in derived] == ["notes.txt"]
    probe = FixtureProbe()
    try:
        got = probe.choose(pair, [derived, []])
        assert (got.status, got.why, got.fixtures, got.deterministic) == ("ok", "", derived, True)
        fixtures = got.fixtures
        # a task whose operand is missing does not run: its reason class says so
        got = probe.choose({"task": "t", "command": "diff --brief notes.txt", "tool": "diff"}, [derived])
        assert got.status == "error" and unrunnable_kind(got.why) == "needs_operand"
    finally:
        probe.close()
    item = eval_item(pair, {"package": "coreutils", "suite": "general"}, fixtures)
    write_jsonl([item], tmp_path / "t.jsonl")
    tasks = load_tasks(tmp_path / "t.jsonl")
    answers = ["rm --force notes.txt", "rm notes.txt", "rm --force other.txt", "true", "cat notes.txt > /dev/null"]
    ev = Evaluator(CmdgenSection(sandbox={"wall_seconds": 20}))
    try:
        evaluate_answers(tasks * len(answers), answers, tmp_path / "eval", ev)
    finally:
        ev.close()
    rows = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert [r["success"] for r in rows] == [True, True, False, False, False]
    assert [r["exact_match"] for r in rows] == [True, False, False, False, False]
    assert all(r["executable"] and r["reference_stdout"] == "" for r in rows)
    assert rows[2]["generated_status"] == "ok" and rows[2]["generated_stdout"] == ""  # only the state differs


def test_share_is_over_every_task_of_the_executed_families():
    rows = [{"suite": "general", "dropped_reason": None}, {"suite": "general", "dropped_reason": "reference_error"},
            {"suite": "general", "dropped_reason": "no_execute"},  # a general task marked no_execute still counts
            {"suite": TEXTUAL_SUITE, "dropped_reason": "no_execute"}, {"suite": "gpu", "dropped_reason": "no_execute"}]
    assert executable_families(rows) == ["general"]
    assert families(rows) == {"general": {"tasks": 3, "executed": True}, "gpu": {"tasks": 1, "executed": False},
                              TEXTUAL_SUITE: {"tasks": 1, "executed": False}}


@needs_bwrap
def test_reference_check_reports_families_and_the_executed_share(tmp_path):
    unrunnable = {"id": "cmdgen-b", "task": "Using dmesg, print the kernel ring buffer", "command": "dmesg",
                  "tool": "dmesg"}
    item = eval_item(unrunnable, {"package": "util-linux", "suite": "general"}, None,
                     UNRUNNABLE + "error (exit 1): dmesg: read kernel buffer failed: Operation not permitted")
    assert item["suite"] == TEXTUAL_SUITE and item["no_execute"].startswith(UNRUNNABLE)
    tasks = [
        {"id": "ok-1", "task": "Print hi", "tool": "echo", "command": "echo hi"},
        {"id": "ok-2", "task": "Count the lines of notes.txt", "tool": "wc", "command": "wc -l notes.txt",
         "fixtures": [{"path": "notes.txt", "content": "a\nb\n"}]},
        {"id": "bad-1", "task": "Show nothing.txt", "tool": "cat", "command": "cat nothing.txt"},
        item,
        {"id": "gpu-1", "task": "Show GPU temperatures", "tool": "rocm-smi", "suite": "gpu",
         "command": "rocm-smi --showtemp", "no_execute": "needs an AMD GPU"}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    r = check_references(path, tmp_path / "refs.json")
    assert r["families"] == {"general": {"tasks": 3, "executed": True}, "gpu": {"tasks": 1, "executed": False},
                             TEXTUAL_SUITE: {"tasks": 1, "executed": False}}
    f = r["executable_families"]
    assert f["suites"] == ["general"] and (f["tasks"], f["executable"]) == (3, 2)
    assert f["executable_share"] == round(2 / 3, 4) and f["dropped"] == {"reference_error": 1}
    assert r["overall"]["tasks"] == 5 and r["overall"]["executable"] == 2
