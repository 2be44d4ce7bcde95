"""The CMDGen-mini builder: each item's Debian package, fixtures derived from the command and kept
when the reference runs under them, and the GPU-tooling suite from a real GPU tool's man page."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from curation.sources.localdocs import DEFAULT_MANIFEST, load_manifest
from synth.cmdgen_set import (
    GPU_NO_EXECUTE,
    TEXTUAL_SUITE,
    UNRUNNABLE,
    FixtureProbe,
    derive_fixtures,
    derive_setups,
    eval_item,
    program_info,
)

REPO = Path(__file__).resolve().parents[2]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def test_sandbox_packages_match_the_manifest():
    listed = [ln.strip() for ln in (REPO / "scripts" / "sandbox-packages.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    specs = load_manifest(DEFAULT_MANIFEST).packages
    want = list(dict.fromkeys(p.program_package() for p in specs
                              if p.man and p.suite == "general" and p.program_package()))
    assert listed == want
    assert "git" in listed and "git-man" not in listed and "manpages" not in listed
    assert "sandbox-packages.txt" in (REPO / "scripts" / "system-deps.sh").read_text()


def test_program_info_from_metadata_or_the_manifest():
    assert program_info({"package": "git-man"}) == {"package": "git", "suite": "general"}
    assert program_info({"package": "manpages"}) == {"package": None, "suite": "general"}
    assert program_info({"package": "rocm-smi"}) == {"package": "rocm-smi", "suite": "gpu"}
    assert program_info({"package": "x", "tools_package": "y", "suite": "general"}) == {"package": "y", "suite": "general"}


def test_derived_fixtures_by_kind():
    pair = {"task": "Count the lines with alpha in notes.txt", "command": "grep -c alpha notes.txt > counts.txt",
            "tool": "grep"}
    fx = derive_fixtures(pair)
    assert [f["path"] for f in fx] == ["notes.txt"]  # counts.txt is an output
    assert "alpha" in fx[0]["content"]
    assert derive_fixtures(pair) == fx  # the same bytes on every build
    tar = derive_fixtures({"task": "t", "command": "tar -tzf /srv/backup.tar.gz", "tool": "tar"})
    assert tar[0]["path"] == "/srv/backup.tar.gz" and "base64" in tar[0]
    assert derive_fixtures({"task": "t", "command": "cat /etc/hostname", "tool": "cat"}) == []  # system files
    assert derive_fixtures({"task": "t", "command": "ls -l --color=auto", "tool": "ls"}) == []
    assert derive_fixtures({"task": "t", "command": "sh run.sh", "tool": "sh"})[0]["mode"] == "0755"


@needs_bwrap
def test_probe_keeps_the_fixtures_under_which_the_reference_runs():
    probe = FixtureProbe()
    try:
        assert probe.available
        cases = [
            ({"task": "Count the lines with alpha in notes.txt", "command": "grep -c alpha notes.txt", "tool": "grep"}, True),
            ({"task": "List backup.tar.gz", "command": "tar -tzf backup.tar.gz", "tool": "tar"}, True),
            ({"task": "Decompress notes.txt.xz", "command": "xz -d notes.txt.xz", "tool": "xz"}, True),
            ({"task": "Count /data/rows.csv", "command": "wc -l /data/rows.csv", "tool": "wc"}, True),
            # a name that looks like a file but is the command's output: without fixtures it runs
            ({"task": "Create the directory build.d", "command": "mkdir build.d", "tool": "mkdir"}, False),
        ]
        for pair, with_fixtures in cases:
            derived = derive_fixtures(pair)
            got = probe.choose(pair, [derived, []])
            assert got.status == "ok" and not got.privileged and got.setup is None, pair
            assert bool(got.fixtures) is with_fixtures, pair
        got = probe.choose({"task": "t", "command": "cat missing.txt.gz", "tool": "cat"}, [[]])
        assert got.status == "error" and got.fixtures == [] and got.why.startswith("error (exit 1): cat: missing.txt.gz")
        assert not got.privileged  # not a want of root: never retried as root
        # a man page's tool name is not the program: git-commit runs as git
        got = probe.choose({"task": "t", "command": "git --version", "tool": "git-version"}, [[]])
        assert got.status == "ok" and got.why == ""
    finally:
        probe.close()


@pytest.fixture(scope="module")
def probe():
    pr = FixtureProbe()
    assert pr.available
    yield pr
    pr.close()


@needs_bwrap
def test_probe_retries_as_namespaced_root_only_for_want_of_root(probe):
    """`iptables -L` fails unprivileged ("you must be root"), so the probe tries it again as
    namespaced root, where it lists the sandbox's own (empty) tables; a failure of another kind is
    never retried, and one that root does not cure keeps the reason it has as root."""
    got = probe.choose({"task": "t", "command": "iptables -L INPUT", "tool": "iptables"}, [[]])
    assert (got.status, got.privileged, got.deterministic) == ("ok", True, True)
    got = probe.choose({"task": "t", "command": "ls missing.txt", "tool": "ls"}, [[]])
    assert (got.status, got.privileged) == ("error", False)
    got = probe.choose({"task": "t", "command": "dmesg", "tool": "dmesg"}, [[]])  # the host's kernel log
    assert (got.status, got.privileged) == ("error", True)
    assert got.why.startswith("error (exit 1, namespaced root): dmesg:")
    item = eval_item({"id": "x", "task": "t", "command": "iptables -L INPUT", "tool": "iptables"},
                     {"package": "iptables", "suite": "general"}, [], None, None, True)
    assert item["privileged"] is True and item["suite"] == "general"


@needs_bwrap
def test_git_command_gets_a_repository(probe):
    """A git command runs in a repository the setup makes (fixed dates: the same commit ids in every
    run, so a second run agrees); `git stash` gets the variant with an uncommitted change; a command
    whose effect carries the time (a new commit) is flagged non-deterministic by the probe."""
    log = {"id": "log", "task": "Show the history one line per commit", "tool": "git-log",
           "command": "git log --oneline"}
    assert derive_setups(log) and derive_setups({"task": "t", "command": "ls", "tool": "ls"}) == []
    got = probe.choose(log, [[]], derive_setups(log))
    assert (got.status, got.privileged, got.deterministic) == ("ok", False, True) and got.setup
    stash = {"id": "stash", "task": "Put the uncommitted changes aside", "tool": "git-stash", "command": "git stash"}
    got_stash = probe.choose(stash, [[]], derive_setups(stash))
    assert got_stash.status == "ok" and got_stash.setup == derive_setups(stash)[0]  # the one with a change
    commit = {"task": "t", "command": "git commit -am 'Save the draft'", "tool": "git-commit"}
    got_commit = probe.choose(commit, [[]], derive_setups(commit))
    assert got_commit.status == "ok" and not got_commit.deterministic
    item = eval_item(log, {"package": "git", "suite": "general"}, [], None, got.setup)
    assert item["setup"] == got.setup and "privileged" not in item


@pytest.mark.slow
@needs_bwrap
def test_gpu_suite_from_the_real_rocm_smi_man_page(tmp_path):
    """rocm-smi's Debian man page mined like every other: its items form the gpu suite, scored
    textually; the general items carry their package and fixtures and their references run."""
    from model.evaluation.cmdgen import CmdgenSection, Evaluator, evaluate_answers, load_tasks
    from synth.pipeline import run_synth
    from tests.synth_manpages import build_corpus

    corpus = tmp_path / "corpus"
    summary = build_corpus(corpus, ["rocm-smi", "coreutils", "grep", "gzip"], per_shard=100)
    assert summary["packages"] == 4, summary
    recipe = tmp_path / "synth.yaml"
    base = yaml.safe_load((REPO / "recipes" / "synth" / "default.yaml").read_text())
    base.update(executor="local")
    base["split"]["heldout_fraction"] = 0.3
    base["cmdgen"]["unrunnable"] = "textual"  # keep the items whose reference does not run (the recipe drops them)
    base["qa"] = {"enabled": False}
    recipe.write_text(yaml.safe_dump(base))
    ms = run_synth(recipe, corpus, tmp_path / "run", progress=False)
    items = [json.loads(x) for x in (tmp_path / "run" / "cmdgen" / "cmdgen.jsonl").read_text().splitlines()]
    gpu = [i for i in items if i["suite"] == "gpu"]
    general = [i for i in items if i["suite"] == "general"]
    textual = [i for i in items if i["suite"] == TEXTUAL_SUITE]
    assert gpu and general, items
    assert len(gpu) + len(general) + len(textual) == len(items)
    assert all(i["tool"] == "rocm-smi" and i["package"] == "rocm-smi" and i["no_execute"] == GPU_NO_EXECUTE
               and "fixtures" not in i for i in gpu)
    assert all(i["package"] in ("coreutils", "grep", "gzip") for i in general + textual)
    stats = ms["cmdgen"]["stats"]
    # the general (executed) family is the items whose reference the builder's probe ran; the others
    # are the textual family, each with the probe's reason, counted by reason class
    runnable = [i for i in general if "no_execute" not in i]
    assert runnable == general and len(general) == stats.get("reference_ok", 0) and general
    assert all(i["no_execute"].startswith(UNRUNNABLE) for i in textual)
    assert sum(v for k, v in stats.items() if k.startswith("textual_")) == len(textual)
    assert (stats["suite_gpu"], stats["suite_general"], stats.get(f"suite_{TEXTUAL_SUITE}", 0)) == \
        (len(gpu), len(general), len(textual))
    # option tasks carry the operands the SYNOPSIS documents, named in the task, with their fixtures
    with_operands = [i for i in general if "notes.txt" in i["command"]]
    assert with_operands and all("notes.txt" in i["task"] for i in with_operands)
    assert any(f["path"] == "notes.txt" for i in with_operands for f in i.get("fixtures", []))
    tasks = load_tasks(tmp_path / "run" / "cmdgen" / "cmdgen.jsonl")
    ev = Evaluator(CmdgenSection())
    try:
        s = evaluate_answers(tasks, [t.command for t in tasks], tmp_path / "eval", ev)
    finally:
        ev.close()
    g = s["per_suite"]["gpu"]
    assert g["exact_match"] == 1.0 and g["executable"] == 0 and g["dropped"] == {"no_execute": len(gpu)}
    assert s["per_suite"]["general"]["executable"] == len(runnable)  # every probed reference runs again
    assert s["executable_families"]["suites"] == ["general"] and s["executable_families"]["executable_share"] == 1.0
    assert s["families"]["gpu"] == {"tasks": len(gpu), "executed": False}
