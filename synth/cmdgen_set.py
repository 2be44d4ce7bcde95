"""CMDGen-mini: the command-generation evaluation set, split off the mined pairs before training.

The split is deterministic: a pair is held out when sha256(seed + key) falls below `heldout_fraction`
of the hash range. It depends on nothing but the key, so every stage, shard and rerun agrees on it
without coordination. Two levels (recipe `split.level`):

- ``item`` (the default): the key is the tool and the normalised command, so every copy of an item
  lands on the same side. The tool itself stays known: its other pairs train the model, and CMDGen-mini
  asks for commands the instruction data never showed. This is the paper's setting (CMDGen asks for
  nvidia-smi, NCCL ... commands, tools a system model has met), and the one a few-million-parameter
  model can be measured on: naming a tool it was never taught to answer with would need in-context
  copying (induction heads), which our CPU-budget models have not formed (measured: no loss drop on a
  repeated random sequence after 1.6M tokens).
- ``family``: the key is the tool family ("git-log" and "git-commit" are both "git"), so whole
  families are unseen in instruction tuning: a zero-shot-tool benchmark for larger models.

From the held-out pairs the set keeps, per tool, examples first (real tasks written by the
documentation's authors), then option tasks, up to `max_per_tool` per tool and `max_per_family` per
family; each item must be answerable (`eval_problem`: a task that stands on its own and a command
whose every literal value is stated in the task), parse, use only documented options, and share no
command and no word n-gram with the training-side pairs (decontamination in this direction too).
Each item records the Debian package that ships its tool (`program_info`: the localdocs manifest's
``tools_package``, else the man page's own package) and its suite: ``general``, or ``gpu`` for the
GPU-tooling family (the manifest's ``suite: gpu`` packages), which is scored textually
(``no_execute``). A general item gets fixtures (`derive_fixtures`: the files its command names,
with contents of their kind: text, CSV, JSON, tar/gzip/xz/bzip2/zip archives, scripts) and, where
its command needs a context no file gives, a setup (`derive_setups`: a git repository with history,
a tag, a branch and a local remote for a git command). Where a sandbox can be made, the reference is
run under each variant (with and without the fixtures, each setup) (`FixtureProbe`) and the first
under which it exits 0 is kept; when it failed for want of root (`unrunnable_kind` needs_root), the
variants are tried again as namespaced root (the item's ``privileged``: the sandbox's own user
namespace, minisigma/core/sandbox.py). A reference that ran is run once more, and the manifest
counts those whose stdout or file effect differed (``reference_nondeterministic``: time stamps
of new commits, ...). A general item whose reference exits 0 under none stays in the
``general`` (executable) family only if no probe could be made; otherwise it moves to the
``textual`` family (``no_execute`` with the probe's reason, scored like the GPU family), or with
``cmdgen.unrunnable: drop`` leaves the set; either way its reason class (`unrunnable_kind`:
needs_root, needs_device, needs_systemd, needs_network, needs_operand, timeout ...) is counted in
the stage manifest (``textual_<kind>`` / ``unrunnable_<kind>``).
Output lines: the task-file format of model/evaluation/cmdgen.py ({"id","task","command","tool",
"package","suite","fixtures","setup","privileged","no_execute"}).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from curation.sources.localdocs import DEFAULT_MANIFEST, load_manifest
from minisigma.core.sandbox import (Limits, Sandbox, SandboxUnavailable, check_available, fixtures_from,
                                    program_of)
from minisigma.core.shards import atomic_write_bytes
from synth.commands import _WRAPPERS, command_words, family
from synth.screen import normalize_command

EVAL_KEYS = ("id", "task", "command", "tool", "package", "suite", "fixtures", "setup", "privileged", "no_execute")
GPU_NO_EXECUTE = "a GPU tool: needs a GPU and its driver, which the sandbox has not (scored by exact match and CMD score)"
UNRUNNABLE = "the reference does not run in the sandbox: "  # + the probe's status and stderr line
# the family of general items whose reference the builder's probe could not run: kept, scored by
# exact match and CMD score like the GPU family, reported apart and outside the executable families
TEXTUAL_SUITE = "textual"
# why a reference did not run, from the probe's "status (exit N): first stderr line" (first match wins)
_UNRUNNABLE_KINDS = (
    ("sandbox_limit", re.compile(r"pthread_create failed|resource temporarily unavailable|cannot allocate memory",
                                 re.I)),
    ("needs_systemd", re.compile(r"systemd|d-?bus|failed to connect to bus|has not been booted|logind|"
                                 r"journal|udev", re.I)),
    ("needs_daemon", re.compile(r"daemon|\.sock\b|is the \w+ running|connect to the \w+ (server|service)", re.I)),
    ("needs_root", re.compile(r"permission denied|not permitted|must be (run as )?(root|super-?user)|are you root|"
                              r"superuser|super-user|requires? root|privilege|insufficient permission|cap_\w+|"
                              r"you must be root|permission to|lvm2 system dir|couldn't open log file", re.I)),
    ("needs_network", re.compile(r"network is unreachable|could not resolve|name or service not known|"
                                 r"name resolution|connection refused|no route to host|resolve host|"
                                 r"getaddrinfo|unknown host|socket|missing url|no url|destination address|"
                                 r"inet prefix|hostname", re.I)),
    ("needs_device", re.compile(r"no such device|/dev/|block device|character device|no \w+ devices?|"
                                r"device not found|no device|ioctl|no medium|not a tty|terminal|"
                                r"/sys/|/proc/|sysfs|netlink|module loaded|nowhere to set up|not supported|"
                                r"topology", re.I)),
    ("option_not_supported", re.compile(r"unrecognized option|invalid option|unknown option|is unknown|"
                                        r"deprecated|invalid predicate", re.I)),
    ("needs_operand", re.compile(r"missing .*operand|usage:|requires an argument|too few arguments|"
                                 r"no (input )?files? (specified|given)|argument required|not enough arguments|"
                                 r"missing argument|expects? |no such file|no \w+ specified|no \w+ specification|"
                                 r"missing command|you must specify|must provide|number of operands|"
                                 r"not a git repository|no rule to make|empty archive|unexpected end of file|"
                                 r"not empty", re.I)),
)


def unrunnable_kind(why: str) -> str:
    """The reason class of a reference the probe could not run (`FixtureProbe.choose`'s `why`):
    tool_not_installed, timeout (it waits: input, a device, the network), sandbox_limit (the
    sandbox's process or memory bound), needs_systemd (systemd or D-Bus), needs_daemon (another
    service), needs_root, needs_network (a host or URL), needs_device (a block device, a terminal,
    sysfs, netlink), option_not_supported (the installed program lacks the documented option),
    needs_operand (an operand or context the task does not give: a second file, a repository),
    or reference_error (it ran and failed for another reason)."""
    status = why.split(" ", 1)[0]
    if status == "not_executable":
        return "tool_not_installed"
    if status == "timeout":
        return "timeout"
    for kind, rx in _UNRUNNABLE_KINDS:
        if rx.search(why):
            return kind
    # killed: by a signal (the CPU limit), or an exit status above 128 that says so (git's usage
    # errors exit 129, and then its stderr line has matched above)
    return "timeout" if status == "killed" else "reference_error"


def is_heldout(key: str, fraction: float, seed: str) -> bool:
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


class Split:
    """Which mined pairs are held out for CMDGen-mini (module docstring); `reason` is the drop reason
    the training side counts them under."""

    def __init__(self, level: str, fraction: float, seed: str):
        if level not in ("item", "family"):
            raise ValueError(f"split level must be item or family, got {level!r}")
        self.level, self.fraction, self.seed = level, fraction, seed
        self.reason = "heldout_item" if level == "item" else "heldout_tool"

    @classmethod
    def of(cls, recipe) -> "Split":
        return cls(recipe.split.level, recipe.split.heldout_fraction, recipe.split.seed)

    def key(self, pair: dict) -> str:
        if self.level == "family":
            return family(pair["tool"])
        return f"{pair['tool']}\0{normalize_command(pair['command'])}"

    def heldout(self, pair: dict) -> bool:
        return is_heldout(self.key(pair), self.fraction, self.seed)


# --------------------------------------------------------------------------- answerability
# Prose that points outside the task ("like so", "this option", "In that case ..."): the sentence was
# written to sit next to other text, and without it the command cannot be inferred.
_CONTEXT = re.compile(r"\b(this|these|that|the following)( \w+){0,2} (options?|commands?|examples?|cases?|flags?|"
                      r"modes?|ways?|one)\b|^the following\b|\blike so\b|\bas follows\b|"
                      r"\b(as|shown|described|listed|see) (above|below)\b|\bnamely\b|\bis the default\b|"
                      r"^(in that case|for something|the next step|you can|it is|this is|then|once)\b", re.I)
_DANGLING = re.compile(r"\b(issue|use|like|with|to|by|using|as|of|for|and|or|the|a|an|is|are|via|from|into)\.?$", re.I)
_PLACEHOLDER = re.compile(r"^(\[.*\]|<.*>|[A-Z][A-Z0-9_-]*(\.\.\.)?|\.\.\.|\u2026)$")
_VALUE = re.compile(r"[0-9/.:@~*'\"$%,]")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=False, posix=True)
    except ValueError:
        return command.split()


def eval_problem(pair: dict) -> str | None:
    """Why a held-out pair would not make a fair evaluation item, or None.

    - ``context_dependent_task``: the task refers to text around it or stops mid-sentence;
    - ``placeholder_argument``: the command holds a metavar ("FILE", "N", "<dev>"), which no task
      sentence determines, so no answer could match it;
    - ``ungrounded_argument``: a literal value of the command (a number, path, address, file name,
      quoted string: a word with a digit or punctuation) does not appear in the task. Options and
      plain-word subcommands ("qdisc add dev") are what the model must know; values it cannot guess.
    """
    task, command = pair.get("task") or "", pair.get("command") or ""
    if _CONTEXT.search(task) or _DANGLING.search(task.rstrip()):
        return "context_dependent_task"
    low = task.lower()
    skip = set(command_words(command)) | _WRAPPERS
    for w in _words(command):
        value = w.split("=", 1)[1] if w.startswith("-") and "=" in w else (None if w.startswith("-") else w)
        if value is None or value in skip or value in ("|", "||", "&&", ";", "&"):
            continue
        if _PLACEHOLDER.match(value):
            return "placeholder_argument"
        if _VALUE.search(value) and value.lower().strip("'\"") not in low:
            return "ungrounded_argument"
    return None


def order_key(pair: dict) -> tuple:
    rule = (pair.get("metadata") or {}).get("rule", "")
    return (0 if rule.startswith("example") else 1, hashlib.sha256(pair["id"].encode()).hexdigest())


def eval_item(pair: dict, info: dict | None = None, fixtures: list[dict] | None = None,
              no_execute: str | None = None, setup: str | None = None, privileged: bool = False) -> dict:
    """A task-file item; a general item with `no_execute` (its reference does not run) is in the
    textual family (TEXTUAL_SUITE)."""
    info = info or {}
    item = {"id": f"cmdgen-{pair['id']}", "task": pair["task"], "command": pair["command"], "tool": pair["tool"],
            "suite": info.get("suite") or "general"}
    if info.get("package"):
        item["package"] = info["package"]
    if item["suite"] == "gpu":
        item["no_execute"] = GPU_NO_EXECUTE
    elif no_execute:
        item["no_execute"] = no_execute
        item["suite"] = TEXTUAL_SUITE
    if fixtures:
        item["fixtures"] = fixtures
    if setup:
        item["setup"] = setup
    if privileged:
        item["privileged"] = True
    return item


def write_jsonl(items: list[dict], path: str | Path) -> None:
    data = "".join(json.dumps({k: it[k] for k in EVAL_KEYS if k in it}, sort_keys=True, ensure_ascii=False) + "\n"
                   for it in items)
    atomic_write_bytes(path, data.encode("utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------- packages and suites
@functools.lru_cache(maxsize=1)
def _manifest_specs() -> dict:
    return {p.name: p for p in load_manifest(DEFAULT_MANIFEST).packages}


def program_info(md: dict) -> dict:
    """{"package", "suite"} of a man page's tool: what the curated document's metadata says
    (curation/sources/localdocs.py records both), else the localdocs manifest's entry for the man
    page's package (documents curated before the fields existed)."""
    if "suite" in md:
        return {"package": md.get("tools_package"), "suite": md.get("suite") or "general"}
    spec = _manifest_specs().get(md.get("package") or "")
    if spec is None:
        return {"package": md.get("package"), "suite": "general"}
    return {"package": spec.program_package(), "suite": spec.suite}


# --------------------------------------------------------------------------- fixtures
_FILE_WORD = re.compile(r"^(?:[\w.+-]+/)*[\w+-][\w.+-]*\.(?P<ext>[A-Za-z][A-Za-z0-9]{0,4})$")
_OUTPUT_OPTS = {"-o", "--output", "-O", "--output-document", "--log-file"}
_SYSTEM_TOPS = {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "sys"}
_WORD = re.compile(r"[A-Za-z0-9_]{2,}")
_TAR_MEMBERS = (("example/alpha.txt", b"alpha\n"), ("example/beta.txt", b"beta\n"))


def _tar(compression: str = "") -> bytes:
    """A small tar archive (a directory and two text files), the same bytes on every build."""
    import bz2
    import gzip
    import io
    import lzma
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        d = tarfile.TarInfo("example")
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, 0
        t.addfile(d)
        for name, data in _TAR_MEMBERS:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    return {"": lambda b: b, "gz": lambda b: gzip.compress(b, mtime=0), "bz2": bz2.compress,
            "xz": lzma.compress}[compression](raw)


def _text(pair: dict, path: str) -> str:
    """A small text file for `path`: lines holding the task's and the command's words, so a search
    or an edit the task asks for has something to find."""
    words = []
    for w in _words(pair["command"])[1:] + pair["task"].split():
        for m in _WORD.findall(w):
            if m not in words and m not in path:
                words.append(m)
    lines = ["alpha beta gamma", " ".join(words[:12]), "line three", "example text 42", " ".join(words[12:24])]
    return "\n".join(x for x in lines if x) + "\n"


def _content(pair: dict, path: str) -> tuple[str | bytes, str | None]:
    """(content, mode) of a fixture file by its name."""
    import bz2
    import gzip
    import io
    import lzma
    import zipfile

    low = path.lower()
    text = _text(pair, path)
    if low.endswith((".tar.gz", ".tgz")):
        return _tar("gz"), None
    if low.endswith((".tar.bz2", ".tbz2", ".tbz")):
        return _tar("bz2"), None
    if low.endswith((".tar.xz", ".txz")):
        return _tar("xz"), None
    if low.endswith(".tar"):
        return _tar(), None
    if low.endswith(".gz"):
        return gzip.compress(text.encode(), mtime=0), None
    if low.endswith(".bz2"):
        return bz2.compress(text.encode()), None
    if low.endswith(".xz"):
        return lzma.compress(text.encode()), None
    if low.endswith(".zip"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in _TAR_MEMBERS:
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
        return buf.getvalue(), None
    if low.endswith(".json"):
        return '{"name": "example", "values": [1, 2, 3], "enabled": true}\n', None
    if low.endswith((".csv", ".tsv")):
        sep = "," if low.endswith(".csv") else "\t"
        return sep.join(["name", "value"]) + "\n" + sep.join(["alpha", "1"]) + "\n" + sep.join(["beta", "2"]) + "\n", None
    if low.endswith(".sh"):
        return "#!/bin/sh\necho hello from the script\n", "0755"
    if low.endswith(".py"):
        return "print('hello from the script')\n", None
    if low.endswith((".c", ".h")):
        return "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n", None
    return text, None


def derive_fixtures(pair: dict) -> list[dict]:
    """Task-file fixtures for the files a command names: every argument that looks like a file (a
    name with an extension, or an absolute path outside the system's trees), except outputs
    (after ``>``, ``-o`` ...). Directories named on the way are created by the sandbox."""
    from base64 import b64encode

    words = _words(pair["command"])
    out, seen = [], set()
    # the operands option mining gave the command (synth.commands.OPERANDS): a directory gets a
    # small tree, a destination is what the command writes, not an input
    operands = (pair.get("metadata") or {}).get("operands") or []
    for kind, value in operands:
        if kind == "dest":
            seen.add(value)
        elif kind == "dir" and value not in seen:
            seen.add(value)
            out.append({"path": value, "type": "dir"})
            out += [{"path": f"{value}/readme.txt", "content": _text(pair, value)},
                    {"path": f"{value}/data.csv", "content": _content(pair, "data.csv")[0]}]
    prev = ""
    for w in words[1:]:
        value = w.split("=", 1)[1] if w.startswith("-") and "=" in w else w
        is_output = prev in (">", ">>", "2>", "&>") or prev in _OUTPUT_OPTS or (w.startswith("-") and "=" in w and
                                                                                 w.split("=", 1)[0] in _OUTPUT_OPTS)
        prev = w
        if is_output or value.startswith("-") or value in seen:
            continue
        if value.startswith("/"):
            parts = [x for x in value.split("/") if x]
            if len(parts) < 2 or parts[0] in _SYSTEM_TOPS or ".." in parts or not _FILE_WORD.match(parts[-1]):
                continue
        elif not _FILE_WORD.match(value) or ".." in value.split("/"):
            continue
        seen.add(value)
        content, mode = _content(pair, value)
        fx: dict = {"path": value}
        if isinstance(content, bytes):
            fx["base64"] = b64encode(content).decode("ascii")
        else:
            fx["content"] = content
        if mode:
            fx["mode"] = mode
        out.append(fx)
    return out


# A git repository for a git command (`derive_setups`): two commits on main, a tag, a branch with a
# third commit, a bare remote in /tmp that both branches and the tag are pushed to (so push, fetch
# and pull have somewhere to go without a network), every date fixed so that its commit ids are the
# same in every run, and every file's time stamp fixed (then refreshed into the index) so that
# `git status` finds nothing to rewrite. The fixtures already in /scratch are committed with it.
_GIT_REPO = """\
set -e
export GIT_AUTHOR_NAME='Sandbox User' GIT_AUTHOR_EMAIL=user@example.com
export GIT_COMMITTER_NAME='Sandbox User' GIT_COMMITTER_EMAIL=user@example.com
export GIT_AUTHOR_DATE='2024-01-01T10:00:00+00:00' GIT_COMMITTER_DATE='2024-01-01T10:00:00+00:00'
git init -q --bare --initial-branch=main /tmp/origin.git
git init -q --initial-branch=main .
git config user.name 'Sandbox User'; git config user.email user@example.com
printf '# example\\n\\nA small example project.\\n' > README.md
printf 'print("hello")\\n' > hello.py
git add -A; git commit -q -m 'Initial commit'
git tag -a v1.0 -m 'Version 1.0'
git checkout -q -b feature
printf 'def greet(name):\\n    return "hello " + name\\n' > greet.py
git add greet.py; GIT_AUTHOR_DATE='2024-01-02T10:00:00+00:00' GIT_COMMITTER_DATE='2024-01-02T10:00:00+00:00' git commit -q -m 'Add greet.py'
git checkout -q main
printf '\\nRun it with python3 hello.py.\\n' >> README.md
GIT_AUTHOR_DATE='2024-01-03T10:00:00+00:00' GIT_COMMITTER_DATE='2024-01-03T10:00:00+00:00' git commit -q -am 'Document how to run it'
git remote add origin /tmp/origin.git
git push -q -u origin main feature --tags
"""
_GIT_DIRTY = """\
printf 'Work in progress.\\n' >> README.md
"""
_GIT_STAMPS = """\
find . -path ./.git -prune -o -exec touch -h -d @1704067200 {} +
git update-index -q --refresh
"""
GIT_SETUPS = (_GIT_REPO + _GIT_DIRTY + _GIT_STAMPS, _GIT_REPO + _GIT_STAMPS)


def derive_setups(pair: dict) -> list[str]:
    """The setups a command may need, tried in order (`FixtureProbe`): for a git command (the
    program is git, or the man page is git's: git-log ...) a repository with an uncommitted change
    in README.md, else the same repository clean; none for other commands."""
    if program_of(pair["command"]) == "git" or family(pair.get("tool") or "") == "git":
        return list(GIT_SETUPS)
    return []


@dataclass
class Probed:
    """What the probe chose for an item: the fixtures and setup its reference ran under, whether as
    namespaced root, the status (None: nothing could be run) and, when it did not run, why (the
    status and the first line of stderr); `deterministic` is False when a second run of an ok
    reference printed or left something else."""

    fixtures: list
    setup: str | None = None
    privileged: bool = False
    status: str | None = None
    why: str = ""
    deterministic: bool = True


def _outcome(r) -> tuple:
    """What Success compares of a run: its stdout (trailing blanks aside) and what it did to the files."""
    ch = r.changes()
    effect = None if ch is None else {p: (r.files or {}).get(p) for paths in ch.values() for p in paths}
    return ("\n".join(line.rstrip() for line in r.stdout.rstrip().splitlines()), effect)


class FixtureProbe:
    """Runs a reference in the evaluation sandbox under candidate variants (fixture sets x setups)
    and keeps the first under which it exits 0 (else the first): the task's fixtures and setup are
    what its reference needs. Unprivileged first; only when a variant failed for want of root
    (`unrunnable_kind` needs_root) are the variants tried again as namespaced root. `available` is
    False where no sandbox can be made; then derived fixtures are kept unprobed."""

    def __init__(self, wall_seconds: float = 10.0):
        try:
            check_available()
        except SandboxUnavailable:
            self.sandbox = None
        else:
            self.sandbox = Sandbox(Limits(wall_seconds=wall_seconds))

    @property
    def available(self) -> bool:
        return self.sandbox is not None

    def _run(self, pair: dict, fixtures: list[dict], setup: str | None, privileged: bool):
        return self.sandbox.run(pair["command"], setup=setup, tool=program_of(pair["command"]),
                                fixtures=fixtures_from(fixtures, "probe"), track=True, privileged=privileged)

    def choose(self, pair: dict, candidates: list[list[dict]], setups: list[str] | None = None) -> Probed:
        """Try the fixture sets `candidates`, each under every setup of `setups` (none: no setup),
        unprivileged, then as namespaced root where that is what was missing; return the first
        variant under which the reference exits 0, else the first variant with why it failed (as
        root, where it was retried: what stops it then)."""
        variants = [(f, s) for f in candidates for s in (setups or [None])]
        if self.sandbox is None:
            return Probed(candidates[0], variants[0][1])
        first = None
        for privileged in (False, True):
            if privileged and not any(unrunnable_kind(w) == "needs_root" for w in whys):
                break
            whys = []
            for fixtures, setup in variants:
                r = self._run(pair, fixtures, setup, privileged)
                if r.status == "ok":
                    again = self._run(pair, fixtures, setup, privileged)
                    return Probed(fixtures, setup, privileged, "ok", "",
                                  deterministic=again.status == "ok" and _outcome(again) == _outcome(r))
                line = next((x.strip() for x in r.stderr.splitlines() if x.strip()), "")
                mode = ", namespaced root" if privileged else ""
                whys.append(f"{r.status} (exit {r.exit_code}{mode}): {line[:160]}" if line else
                            f"{r.status} (namespaced root)" if privileged else r.status)
                if first is None or privileged and first.privileged is False:
                    first = Probed(fixtures, setup, privileged, r.status, whys[-1])
        return first

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()


__all__ = ["Split", "is_heldout", "eval_problem", "family", "order_key", "eval_item", "write_jsonl", "read_jsonl",
           "EVAL_KEYS", "program_info", "derive_fixtures", "derive_setups", "FixtureProbe", "Probed", "GPU_NO_EXECUTE",
           "UNRUNNABLE", "TEXTUAL_SUITE", "unrunnable_kind"]
