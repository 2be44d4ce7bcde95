"""Generators and screening over REAL Debian man pages (rendered in the fixture, see synth_manpages),
plus the whole offline synth pipeline with manifests, the CMDGen-mini split and decontamination."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from minisigma.core.errors import UserError
from minisigma.core.shards import iter_docs, list_shards, read_docs
from synth.commands import mine_manpage, mine_snippets
from synth.manpage import parse_manpage
from synth.qa import qa_pairs
from synth.screen import PairScreen, RewriteScreen, key_terms, option_ok, shell_parses, unknown_options
from tests.synth_manpages import SMALL, build_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("manpages")
    summary = build_corpus(d, SMALL, per_shard=150)
    assert summary["packages"] == len(SMALL), summary
    return d


@pytest.fixture(scope="module")
def docs(corpus):
    return {d["metadata"]["tool"]: d for d in iter_docs(corpus)}


@pytest.fixture(scope="module")
def index(docs):
    return {t: parse_manpage(d["text"], t).known_options for t, d in docs.items()}


def test_manpage_parser_on_real_pages(docs):
    ls = parse_manpage(docs["ls"]["text"], "ls")
    assert ls.summary == "list directory contents"
    assert {"NAME", "SYNOPSIS", "DESCRIPTION"} <= set(ls.sections)
    entry = next(e for e in ls.option_entries if ("--all", "") in e.options)
    assert ("-a", "") in entry.options and entry.description == "do not ignore entries starting with ."
    bs = next(e for e in ls.option_entries if e.options[0][0] == "--block-size")
    assert bs.options == [("--block-size", "SIZE")]
    assert {"-l", "--human-readable", "--sort", "-1"} <= ls.known_options
    assert not any(l.strip().startswith("LS(1)") for b in ls.blocks for l in b.lines)  # header/footer gone
    tar = parse_manpage(docs["tar"]["text"], "tar")
    assert any(("--listed-incremental", "FILE") in e.options for e in tar.option_entries)


def test_examples_are_mined_with_provenance(docs):
    pairs, stats = mine_manpage(docs["find"])
    by_cmd = {p["command"]: p for p in pairs}
    p = by_cmd["find /tmp -name core -type f -print | xargs /bin/rm -f"]
    assert p["task"] == "Find files named core in or below the directory /tmp and delete them"
    assert p["tool"] == "find" and p["metadata"]["rule"] == "example_prose" and p["metadata"]["section"] == "EXAMPLES"
    md = docs["find"]["metadata"]
    assert p["metadata"]["source_id"] == docs["find"]["id"] and p["metadata"]["package"] == md["package"]
    assert p["metadata"]["version"] == md["version"] and p["url"] == docs["find"]["url"]
    assert by_cmd["find $HOME -mtime 0"]["task"].startswith("Search for files in your home directory")
    assert stats["example_pairs"] >= 10

    tar, _ = mine_manpage(docs["tar"])
    assert any(p["command"] == "tar cfv etc.tar /etc" and "archive file etc.tar" in p["task"] for p in tar)
    # an option task gets the operand the SYNOPSIS documents ("ls [OPTION]... [FILE]..."), named in the task
    opt = next(p for p in mine_manpage(docs["ls"])[0] if p["command"] == "ls --all notes.txt")
    assert opt["task"] == "Using ls, do not ignore entries starting with ., on notes.txt"
    assert opt["metadata"]["rule"] == "option" and opt["metadata"]["operands"] == [["file", "notes.txt"]]
    assert not any("--help" in p["command"] or "--version" in p["command"] for p in mine_manpage(docs["ls"])[0])


def test_offline_generator_yields_screened_pairs_across_many_tools(docs, index):
    pairs = [p for d in docs.values() for p in mine_manpage(d)[0]]
    screen = PairScreen(index)
    kept = [p for p in pairs if screen.check(p) is None]
    tools = Counter(p["tool"] for p in kept)
    print(f"\n{len(docs)} pages -> {len(pairs)} pairs -> {len(kept)} screened pairs over {len(tools)} tools")
    assert len(kept) >= 900 and len(tools) >= 80
    assert sum(1 for p in kept if p["metadata"]["rule"].startswith("example")) >= 30
    for p in kept:  # what survives the screen really parses and uses documented options only
        assert shell_parses(p["command"]) and unknown_options(p["command"], p["tool"], index) == []


@pytest.mark.slow
def test_offline_generator_on_many_packages(tmp_path):
    """The embedded-default scale: ~100 Debian packages' man pages -> thousands of screened pairs."""
    from tests.synth_manpages import MANY

    build_corpus(tmp_path, MANY)
    docs = list(iter_docs(tmp_path))
    idx = {}
    for d in docs:
        t = d["metadata"]["tool"]
        idx.setdefault(t, set()).update(parse_manpage(d["text"], t).known_options)
    screen = PairScreen(idx)
    kept = [p for d in docs for p in mine_manpage(d)[0] if screen.check(p) is None]
    tools = Counter(p["tool"] for p in kept)
    print(f"\n{len(docs)} pages -> {len(kept)} screened pairs over {len(tools)} tools")
    assert len(kept) >= 5000 and len(tools) >= 500
    assert sum(1 for p in kept if p["metadata"]["rule"].startswith("example")) >= 1000


def test_context_dependent_fragments_are_not_tasks():
    from synth.commands import good_task, looks_like_command

    assert good_task("Show the size of every file in the current directory")
    for t in ("Likewise, but also change its group to staff", "Same as -I -T", "You run this command",
              "Using wdctl, same as -I -T"[len("Using wdctl, "):].capitalize(), "list files", "Ok go"):
        assert not good_task(t), t
    assert looks_like_command("tc filter add dev eth0 parent 1: route", "tc")
    assert not looks_like_command("tc filter add ... route from 2 classid 1:2", "tc")
    assert not looks_like_command("The ls program lists the files of a directory in a nice way.", "ls")


def test_option_rules():
    known = {"-l", "-a", "-n", "-n=", "--all", "--block-size", "-name", "-c:a"}
    assert option_ok("-la", known) and option_ok("-n5", known) and option_ok("--block-size=M", known)
    assert not option_ok("--bl", known) and option_ok("--blo", known)  # unique prefixes of 3+ letters
    assert not option_ok("--a", known)
    assert option_ok("-name", known) and option_ok("-5", known) and option_ok("-", known)
    assert not option_ok("-lz", known) and not option_ok("--frobnicate", known) and not option_ok("-q", known)


def test_screen_drops_are_counted_by_reason(index):
    evals = [{"task": "Show the last lines of the system log as they are written to it right now",
              "command": "tail -f /var/log/syslog"}]
    s = PairScreen(index, heldout_families={"sed"}, eval_items=evals)

    def pair(i, task, command, tool):
        return {"id": f"p{i}", "task": task, "command": command, "tool": tool}

    cases = [
        (pair(1, "List all files in long format", "ls -la /etc", "ls"), None),
        (pair(2, "Print the first five lines of a file", "head -n5 notes.txt", "head"), None),
        (pair(3, "Broken quoting in a command", "ls 'unterminated", "ls"), "unparseable"),
        (pair(4, "Use an option ls does not have", "ls --frobnicate /tmp", "ls"), "unknown_option"),
        (pair(5, "Use an option of a pipeline tool that grep lacks", "ls | grep --no-such-flag x", "ls"),
         "unknown_option"),
        (pair(6, "Run a tool without a man page here", "frobctl --go", "frobctl"), "tool_not_documented"),
        (pair(7, "List all files in long format", "ls -la /etc", "ls"), "duplicate_exact"),
        (pair(8, "List all of the files in long format please", "ls -la  /etc", "ls"), "duplicate_exact"),
        (pair(9, "Count the lines words and bytes of every text file in the current directory tree",
              "find . -name '*.txt' -exec wc {} +", "find"), None),
        (pair(10, "Count the lines words and bytes of every text file in the current directory tree now",
              "find . -name '*.txt' -exec wc {} +  ", "find"), "duplicate_exact"),
        (pair(11, "Count the lines, words and bytes of every text file in the current directory tree!",
              "find . -name '*.txt' -exec wc -c {} +", "find"), "near_duplicate"),
        (pair(12, "Follow the syslog", "tail -f /var/log/syslog", "tail"), "eval_overlap"),
        (pair(13, "Show the last lines of the system log as they are written to it right now please",
              "tail -F /var/log/syslog", "tail"), "eval_overlap"),
        (pair(14, "Replace foo by bar in a file", "sed -i s/foo/bar/ f.txt", "sed"), "heldout_tool"),
        (pair(15, "Test a condition with the shell keyword", "[[ -f x ]] && ls -l x", "ls"), None),  # bash -n path
    ]
    got = Counter()
    for p, want in cases:
        reason = s.check(p)
        assert reason == want, (p, reason)
        got[reason or "kept"] += 1
    assert got == Counter({"kept": 4, "duplicate_exact": 3, "unknown_option": 2, "eval_overlap": 2,
                           "unparseable": 1, "tool_not_documented": 1, "near_duplicate": 1, "heldout_tool": 1})


def test_rewrite_screen_key_terms_and_quality_classifier(tmp_path):
    src = ("The rsync command copies files with --archive to keep permissions, --delete to remove extra files "
           "and --exclude=PATTERN to skip paths. Use rsync -avz /srv/data backup:/srv/data for a mirror. "
           "Bandwidth is limited with --bwlimit=RATE in KiB per second.")
    terms = key_terms(src)
    assert {"--archive", "--delete", "--bwlimit"} <= set(terms)
    faithful = ("rsync mirrors a tree: --archive keeps permissions, --delete removes files missing at the source, "
                "--exclude=PATTERN skips paths, and --bwlimit=RATE caps bandwidth; for example rsync -avz "
                "/srv/data backup:/srv/data copies compressed.")
    vague = "This tool copies things from one place to another place and it is quite useful for many people overall."
    rs = RewriteScreen(min_key_term_recall=0.5, min_words=5)
    assert rs.check(src, faithful)[0] is None
    reason, info = rs.check(src, vague)
    assert reason == "lost_key_terms" and info["key_term_recall"] < 0.5
    assert rs.check(src, "too short")[0] == "too_short"

    import fasttext

    train = tmp_path / "q.txt"
    good = ["rsync --archive keeps permissions and --delete removes extra files",
            "use tar -czf to create a compressed archive of the directory",
            "the --bwlimit option limits bandwidth in KiB per second"]
    bad = ["click here to win a free prize now buy now", "best deals cheap cheap subscribe like share",
           "lorem ipsum dolor sit amet consectetur adipiscing"]
    train.write_text("".join(f"__label__high {g}\n" for g in good * 20) + "".join(f"__label__low {b}\n" for b in bad * 20))
    # Trained in a fresh interpreter: in a process that has imported numpy-heavy modules
    # (datasketch, torch), fasttext-numpy2's trainer sporadically stops with "Encountered NaN".
    code = ("import fasttext,sys; m=fasttext.train_supervised(sys.argv[1], epoch=50, lr=0.1, minCount=1, "
            "thread=1, verbose=0); m.save_model(sys.argv[2])")
    for _ in range(5):
        r = subprocess.run([sys.executable, "-c", code, str(train), str(tmp_path / "q.bin")], capture_output=True)
        if r.returncode == 0:
            break
    assert (tmp_path / "q.bin").is_file(), r.stderr.decode()[-500:]
    qs = RewriteScreen(min_key_term_recall=0.0, quality_model=str(tmp_path / "q.bin"), min_quality=0.5, min_words=5)
    assert qs.check(src, faithful)[0] is None
    spam = "click here to win a free prize now buy now best deals cheap subscribe like share lorem ipsum"
    assert qs.check(src, spam)[0] == "low_quality"


def test_snippets_and_qa_pages():
    readme = {"id": "d1", "source": "pypi", "url": "pypi://awscli/examples/s3.md", "metadata": {"title": "s3 examples"},
              "text": "# Copy\n\nThe following cp command copies a single file to a bucket:\n\n```bash\n"
                      "aws s3 cp test.txt s3://mybucket/test2.txt\n```\n\nSome prose without a command.\n"}
    pairs, _ = mine_snippets(readme)
    assert [(p["task"], p["command"], p["tool"]) for p in pairs] == [
        ("The following cp command copies a single file to a bucket", "aws s3 cp test.txt s3://mybucket/test2.txt",
         "aws")]
    # the layout of curation/sources/stackexchange.py: "# title", question, "## Accepted answer (score N)", ...
    se = {"id": "q1", "source": "stackexchange", "url": "https://unix.stackexchange.com/q/1",
          "metadata": {"title": "How do I list files sorted by size?", "answers": [{"id": 2, "accepted": True}]},
          "text": "# How do I list files sorted by size?\n\nI tried\n\n$ ls -l | sort\n\nbut want the largest first."
                  "\n\n## Accepted answer (score 12)\n\nUse\n\n$ ls -lS\n\nfor that.\n\n## Answer (score 3)\n\n"
                  "$ du -a | sort -n"}
    pairs, _ = mine_snippets(se)
    assert [(p["task"], p["command"]) for p in pairs] == [("How do I list files sorted by size?", "ls -lS"),
                                                          ("How do I list files sorted by size?", "du -a | sort -n")]
    assert pairs[0]["metadata"]["rule"] == "qa_page"
    qa = qa_pairs(se)
    assert qa[0]["question"] == ("How do I list files sorted by size?\n"
                                 "I tried $ ls -l | sort but want the largest first.")
    assert qa[0]["answer"] == "Use $ ls -lS for that."


def test_qa_from_manpages(docs):
    qa = qa_pairs(docs["grep"])
    purpose = qa[0]
    assert purpose["question"] == "What is grep used for?" and "print lines that match patterns" in purpose["answer"]
    assert any(q["question"] == "What does the --ignore-case option of grep do?" for q in qa)
    assert all(q["metadata"]["source_id"] == docs["grep"]["id"] for q in qa)


def test_pipeline_default_recipe(corpus, tmp_path, ray_local):
    from minisigma.core.manifest import verify
    from synth.cmdgen_set import EVAL_KEYS, Split, eval_problem
    from synth.pipeline import run_synth
    from synth.screen import normalize_command

    out = tmp_path / "run"
    ms = run_synth(REPO / "recipes" / "synth" / "default.yaml", corpus, out, progress=False)
    for name, m in ms.items():
        c = m["counts"]
        assert c["in"] == c["out"] + sum(c["dropped"].values()) + sum(c["quarantined"].values()), name
    assert verify(out) == []
    pairs = [p for s in list_shards(out / "pairs") for p in read_docs(s)]
    split = ms["pairs"]["split"]
    assert split == {"level": "item", "heldout_fraction": 0.2, "seed": "cmdgen-mini-v1"}
    item_split = Split("item", 0.2, "cmdgen-mini-v1")
    assert len(pairs) >= 800 and not any(item_split.heldout(p) for p in pairs)
    assert ms["pairs"]["counts"]["dropped"]["heldout_item"] > 0

    lines = (out / "cmdgen" / "cmdgen.jsonl").read_text().splitlines()
    items = [json.loads(l) for l in lines]
    assert len(items) >= 10 and all({"id", "task", "command", "tool", "suite"} <= set(i) <= set(EVAL_KEYS) for i in items)
    assert all(item_split.heldout(i) and eval_problem(i) is None for i in items)
    train_cmds = {normalize_command(p["command"]) for p in pairs}
    assert not any(normalize_command(i["command"]) in train_cmds for i in items)
    # item level: every evaluated tool is one the instruction data teaches (through its other pairs)
    train_tools = {p["tool"] for p in pairs}
    assert all(i["tool"] in train_tools for i in items)
    cm = ms["cmdgen"]["counts"]["dropped"]
    assert cm.get("placeholder_argument", 0) > 0  # option pairs with metavars ("--block-size=SIZE")
    qa = [q for s in list_shards(out / "qa") for q in read_docs(s)]
    assert len(qa) > 500
    # no Q&A pair explains an option an item asks for
    asked = {(i["tool"], w.split("=")[0]) for i in items for w in i["command"].split() if w.startswith("-")}
    for q in qa:
        md = q["metadata"]
        if md.get("tool") and md.get("option_term"):
            term = {w.strip(",").split("=")[0] for w in md["option_term"].split() if w.startswith("-")}
            assert not {(md["tool"], o) for o in term} & asked, q["question"]

    # rerun: every shard is skipped, and the outputs stay byte-identical
    before = {p: p.read_bytes() for p in out.rglob("*.jsonl.gz")}
    ms2 = run_synth(REPO / "recipes" / "synth" / "default.yaml", corpus, out, progress=False)
    assert all(m["resumed_shards"] == len(m["outputs"]) for m in ms2.values())
    assert {p: p.read_bytes() for p in out.rglob("*.jsonl.gz")} == before


def test_pipeline_family_split_holds_out_whole_tools(corpus, tmp_path):
    import yaml

    from synth.cmdgen_set import is_heldout
    from synth.commands import family
    from synth.pipeline import run_synth

    recipe = tmp_path / "family.yaml"
    recipe.write_text(yaml.safe_dump({"executor": "local", "split": {"level": "family", "heldout_fraction": 0.1}}))
    ms = run_synth(recipe, corpus, tmp_path / "run", progress=False)
    held = set(ms["pairs"]["split"]["heldout_families"])
    assert held and ms["pairs"]["counts"]["dropped"]["heldout_tool"] > 0
    pairs = [p for s in list_shards(tmp_path / "run" / "pairs") for p in read_docs(s)]
    assert pairs and not any(family(p["tool"]) in held for p in pairs)
    items = [json.loads(l) for l in (tmp_path / "run" / "cmdgen" / "cmdgen.jsonl").read_text().splitlines()]
    assert items and all(is_heldout(family(i["tool"]), 0.1, "cmdgen-mini-v1") for i in items)
    qa = [q for s in list_shards(tmp_path / "run" / "qa") for q in read_docs(s)]
    assert ms["qa"]["counts"]["dropped"]["heldout_tool"] > 0
    assert not any(family(q["metadata"].get("tool") or "-") in held for q in qa)


def test_eval_items_must_be_answerable_from_their_task():
    from synth.cmdgen_set import Split, eval_problem

    def item(task, command):
        return {"task": task, "command": command, "tool": command.split()[0]}

    ok = [item("Using ls, do not ignore entries starting with .", "ls --all"),
          item("Shows classes as ASCII graph on eth0 interface", "tc -g class show dev eth0"),
          item("Clean up the container named mywebserver", "podman container cleanup mywebserver"),
          item("Find files named core in or below the directory /tmp and delete them",
               "find /tmp -name core -type f -print | xargs rm -f")]
    for it in ok:
        assert eval_problem(it) is None, it
    bad = {"placeholder_argument": [item("Using ls, scale sizes by a block size", "ls --block-size=SIZE"),
                                    item("Using nproc, exclude some processing units", "nproc --ignore N")],
           "ungrounded_argument": [item("Request profiling at 2kHz per CPU", "readprofile -M 20"),
                                   item("Print only filesystem profile", "readprofile | grep _ext2"),
                                   item("Attach a classifier to the device", "tc filter add dev em1 bpf obj bpf.o")],
           "context_dependent_task": [item("Filters for certain subnets can be created like so", "tc filter show"),
                                      item("For something more complicated, namely a hash table", "tc filter show"),
                                      item("Using nsupdate, this option enables standard GSS-TSIG mode", "nsupdate -g"),
                                      item("Attach an inner qdisc, for example sfq, issue", "tc qdisc show"),
                                      item("Once a makefile exists, this simple shell command", "make"),
                                      item("Show all is the default action", "ip tcp_metrics")]}
    for reason, items in bad.items():
        for it in items:
            assert eval_problem(it) == reason, it

    # the item split keys on the tool and the normalised command: both spellings of one item agree
    s = Split("item", 0.5, "seed")
    a, b = item("List all", "ls  --all"), item("Show every file", "ls --all ")
    assert s.key(a) == s.key(b) and s.heldout(a) == s.heldout(b)
    keys = [s.heldout(item("t", f"ls -{c}")) for c in "abcdefghijklmnopqrstuvwxyz"]
    assert 0 < sum(keys) < len(keys)  # about half, deterministically
    assert Split("family", 0.5, "seed").key(item("t", "git-log --all") | {"tool": "git-log"}) == "git"
    with pytest.raises(ValueError, match="item or family"):
        Split("tool", 0.1, "seed")


def test_bad_recipe_is_a_one_line_error(tmp_path, corpus):
    from synth.pipeline import run_synth

    bad = tmp_path / "bad.yaml"
    bad.write_text("screen:\n  minhash_treshold: 0.8\n")
    with pytest.raises(UserError, match=r"bad.yaml: screen.minhash_treshold: unknown key"):
        run_synth(bad, corpus, tmp_path / "o")
    with pytest.raises(UserError, match="no NNNNN.jsonl.gz shards"):
        run_synth(REPO / "recipes" / "synth" / "default.yaml", tmp_path / "empty", tmp_path / "o")


def test_offline_rewrites_are_screened_and_counted(corpus, tmp_path):
    import yaml

    from synth.pipeline import run_synth

    recipe = tmp_path / "rw.yaml"
    recipe.write_text(yaml.safe_dump({
        "executor": "local", "backend": {"kind": "offline"}, "commands": {"enabled": False},
        "qa": {"enabled": False},
        "rewrite": {"enabled": True, "max_docs_per_shard": 6, "min_key_term_recall": 0.4, "min_words": 15,
                    "templates": [{"name": "summary", "prompt": "Summarise {title}:\n\n{text}", "max_tokens": 120},
                                  {"name": "short", "prompt": "One line on {title}: {text}", "max_tokens": 12}]}}))
    m = run_synth(recipe, corpus, tmp_path / "out", progress=False)["rewrites"]
    c = m["counts"]
    n_shards = len(list_shards(corpus))
    assert c["in"] == 2 * 6 * n_shards == c["out"] + sum(c["dropped"].values())
    assert c["dropped"]["too_short"] == 6 * n_shards  # the 12-word outputs are under min_words
    recs = list(iter_docs(tmp_path / "out" / "rewrites"))
    assert recs and all(r["metadata"]["template"] == "summary" and r["metadata"]["key_term_recall"] >= 0.4
                        for r in recs)
    assert all(r["source"] == "synthetic" and r["metadata"]["source_id"] for r in recs)
    assert m["backend"]["kind"] == "offline"


def test_cmdgen_set_is_the_same_when_a_second_probe_run_agrees_by_chance(corpus, tmp_path, monkeypatch):
    """Two builds of the same inputs make the same CMDGen-mini set even where whether a reference's
    second run agreed with its first is a coin flip (`ss --all` lists netlink sockets in a varying
    order): the per-tool caps rank by whether the reference runs, not by that flip."""
    import random

    import yaml

    import synth.stages
    from synth.cmdgen_set import Probed
    from synth.pipeline import run_synth

    class CoinFlipProbe:
        """Every reference runs; its second run agrees or not at random (unseeded: each build draws anew)."""
        available = True

        def __init__(self):
            self.rng = random.Random()

        def choose(self, pair, candidates, setups=None):
            return Probed(candidates[0], setups[0] if setups else None, False, "ok", "",
                          deterministic=self.rng.random() < 0.5)

        def close(self):
            pass

    monkeypatch.setattr(synth.stages, "FixtureProbe", CoinFlipProbe)
    base = yaml.safe_load((REPO / "recipes" / "synth" / "default.yaml").read_text())
    base.update(executor="local")
    base["split"]["heldout_fraction"] = 0.3
    base["cmdgen"]["max_per_tool"] = 1  # the cap chooses among each tool's runnable candidates
    base["qa"] = {"enabled": False}
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(yaml.safe_dump(base))
    sets = []
    for run in ("a", "b", "c"):
        ms = run_synth(recipe, corpus, tmp_path / run, progress=False)
        sets.append((tmp_path / run / "cmdgen" / "cmdgen.jsonl").read_text())
    assert ms["cmdgen"]["counts"]["dropped"].get("over_max_per_tool", 0) >= 3  # the cap had choices to make
    assert 0 < ms["cmdgen"]["stats"].get("reference_nondeterministic", 0) < ms["cmdgen"]["stats"]["reference_ok"]
    assert sets[0] and sets[0] == sets[1] == sets[2]
