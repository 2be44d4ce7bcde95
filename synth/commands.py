"""Offline (natural-language task, command) pairs mined from real documentation. No LLM.

Sources and rules:
- man-page examples (EXAMPLES sections, and examples inside DESCRIPTION/OPTIONS), two layouts:
  * prose ending with ':' then a command paragraph ("Generate an RSA key:\\n\\n    openssl genpkey ..."):
    task = the sentence before the colon;
  * definition lists (command line, then its description indented under it, as in tar, git, ip):
    task = the first sentence(s) of the description;
- man-page option lists (OPTIONS/DESCRIPTION items such as ``-a, --all`` + description):
  task = "Using TOOL, <description>, <operands>", command = TOOL + the option (long spelling
  preferred) with its metavar (a number or operand kind filled with a value) + one concrete operand
  of each kind the SYNOPSIS documents ("grep [OPTION...] PATTERNS [FILE...]" -> `grep
  --ignore-case alpha notes.txt`, "..., with the pattern alpha on notes.txt"; `synopsis_operands`);
- other documents (CLI reference examples shipped in PyPI packages, Q&A pages, blog-like pages):
  a one-line shell command in a fenced/indented block or after a `$ ` prompt, with the prose line
  before it (or the page title for Q&A pages) as the task.

A command line counts only if it invokes the documented tool (its first word, or the first word of
a pipeline segment, after `sudo`/`env`), so prose and file listings are not taken for commands.
Every pair keeps its provenance: document id, URL, package/version, section and the rule used.
"""

from __future__ import annotations

import re
import shlex

from minisigma.core.shards import stable_id

from synth.manpage import Block, ManPage, indent_of, parse_manpage
from synth.qa import split_thread

GENERATOR = "synth.commands/1"
PROMPTS = ("$ ", "# ", "% ", "> ")
_BOILERPLATE = re.compile(r"^(display|print|show|output)\s+(this|a)?\s*(help|usage|version)|"
                          r"^(give|show) this help|version information and exit|^display help", re.I)
_LEAD_IN = re.compile(r"^(for example|for instance|example|examples|e\.g\.|thus|so|then|also|or|and|now|"
                      r"here|finally|alternatively)\b[,:]?\s*", re.I)
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_CONNECTORS = {"|", "||", "&&", ";", "&", "$(", "`", "("}
_WRAPPERS = {"sudo", "env", "nohup", "time", "nice", "doas", "exec", "command", "xargs"}


def family(tool: str) -> str:
    """'git-log' -> 'git', 'ip-address' -> 'ip'; the tool-level split and dedup use it."""
    return tool.split("-")[0].split(".")[0].lower() if tool else ""


def shell_tokens(command: str) -> list[str]:
    """A command line's words and operators (`|`, `&&`, `;`, `>` ... each its own token), as the shell
    splits them; an unbalanced quote falls back to splitting on whitespace."""
    try:
        lex = shlex.shlex(command, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        return list(lex)
    except ValueError:
        return command.split()


def command_words(command: str) -> list[str]:
    """The words that start each simple command of a line (after wrappers such as sudo/env)."""
    words, expect = [], True
    for t in shell_tokens(command):
        if t in _CONNECTORS or set(t) <= set("|&;()"):
            expect = True
            continue
        if expect:
            if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", t):  # VAR=value prefix
                continue
            base = t.rsplit("/", 1)[-1]
            words.append(base)
            if base in _WRAPPERS:
                continue
            expect = False
    return words


def invokes(command: str, tool: str) -> bool:
    words = command_words(command)
    names = {tool, family(tool)} if "-" in tool else {tool}
    return any(w in names for w in words)


def strip_prompt(line: str) -> str:
    for p in PROMPTS:
        if line.startswith(p):
            return line[len(p):].strip()
    return line.strip()


def logical_lines(lines: list[str]) -> list[str]:
    """Join backslash continuations; one string per logical command line."""
    out, cur = [], ""
    for l in lines:
        s = l.rstrip()
        if s.endswith("\\"):
            cur += s[:-1].rstrip() + " "
        else:
            out.append(" ".join((cur + s).split()) if cur else s.strip())
            cur = ""
    if cur:
        out.append(" ".join(cur.split()))
    return out


def clean_task(text: str, last_sentence: bool = True) -> str:
    """Prose -> a task sentence: the sentence before a colon, lead-ins and 'To ' removed."""
    t = " ".join(text.split()).strip()
    t = t.lstrip("\u2022*\u00b7 ").rstrip(":").strip()
    if last_sentence:
        sents = _SENT_SPLIT.split(t)
        t = sents[-1] if sents else t
    else:
        sents = _SENT_SPLIT.split(t)
        t = sents[0] if sents else t
    t = _LEAD_IN.sub("", t).strip(" ,")
    if t.lower().startswith("to ") and len(t.split()) > 2:
        t = t[3:]
    t = re.sub(r"(?<=[\w)\]'\"])[.,;:]+$", "", t.rstrip(" ,;:"))  # the sentence's period, not "with ."
    return t[:1].upper() + t[1:] if t else t


_CONTEXTUAL = re.compile(r"^(likewise|same|similar(ly)?|as above|ditto|equivalent to|alias (for|of)|an alias|"
                         r"the same|this is the same|opposite of|synonym)\b|^(you|we|i) (can |could |may |might )?"
                         r"(run|type|use|do|try|say|enter)\b", re.I)


def good_task(t: str) -> bool:
    """A task that stands on its own: a sentence, not a fragment that needs the text around it."""
    words = t.split()
    if not 3 <= len(words) <= 60:
        return False
    if not t[:1].isupper() or _CONTEXTUAL.search(t):
        return False
    if re.match(r"^(The following|This|These|Here|Example|See|Note|In this)\b", t) and len(words) < 6:
        return False
    return True


def looks_like_command(line: str, tool: str) -> bool:
    if not line or len(line) > 400 or line.endswith(":"):
        return False
    if re.search(r"(^|\s)(\.\.\.|\u2026)(\s|$)", line):
        return False  # "tc filter add ... route": elided, not a runnable command
    if re.search(r"[.!?]$", line) and len(line.split()) > 6 and not re.search(r"[|<>$'\"=/-]", line):
        return False  # a prose sentence mentioning the tool
    return invokes(line, tool)


def _pair(task: str, command: str, tool: str, doc: dict, kind: str, section: str, extra: dict | None = None) -> dict:
    md = doc.get("metadata") or {}
    prov = {"generator": GENERATOR, "rule": kind, "source_id": doc.get("id"), "source_url": doc.get("url"),
            "source": doc.get("source"), "package": md.get("package"), "version": md.get("version"),
            "section": section}
    prov.update(extra or {})
    return {"id": stable_id(kind, str(doc.get("id")), task, command), "task": task, "command": command,
            "tool": tool, "text": f"{task}\n{command}", "source": "synthetic", "url": doc.get("url"),
            "metadata": {k: v for k, v in prov.items() if v is not None}}


# --------------------------------------------------------------------------- man pages
def _single_command(block: Block, tool: str) -> str | None:
    cmds = [strip_prompt(l) for l in logical_lines([l for l in block.lines if not l.lstrip().startswith("#!")])]
    cmds = [c for c in cmds if c]
    if len(cmds) == 1 and looks_like_command(cmds[0], tool):
        return cmds[0]
    return None


def _is_examples(section: str) -> bool:
    return section in ("EXAMPLE", "USAGE") or "EXAMPLES" in section


def mine_examples(page: ManPage, doc: dict) -> list[dict]:
    tool = page.tool
    out: list[dict] = []
    blocks = page.blocks
    skip = {"NAME", "SYNOPSIS", "SEE ALSO", "AUTHOR", "AUTHORS", "COPYRIGHT", "REPORTING BUGS"}
    for i, b in enumerate(blocks):
        if b.section in skip:
            continue
        # layout 1: prose ending with ':' followed by a one-command paragraph
        if b.text.endswith(":") and i + 1 < len(blocks) and blocks[i + 1].section == b.section:
            nxt = blocks[i + 1]
            cmd = _single_command(nxt, tool) if nxt.indent >= b.indent else None
            if cmd:
                task = clean_task(b.text)
                if task.lower() in ("example", "examples") or len(task.split()) < 3:
                    # "Example:" alone (curl): the task is the prose that opens the option entry
                    prev = next((p for p in reversed(blocks[:i]) if not p.text.endswith(":")), None)
                    task = clean_task(prev.text, last_sentence=False) if prev else ""
                    task = re.sub(r"^\([A-Z /]+\)\s*", "", task)  # curl's "(HTTP) " protocol tag
                    task = task[:1].upper() + task[1:]
                if good_task(task):
                    out.append(_pair(task, cmd, tool, doc, "example_prose", b.section))
                continue
        # layout 3: an example's prose (not ending with ':') then its command, indented deeper
        if _is_examples(b.section) and i + 1 < len(blocks) and blocks[i + 1].section == b.section \
                and blocks[i + 1].indent > b.indent and not _single_command(b, tool):
            cmd = _single_command(blocks[i + 1], tool)
            if cmd:
                task = clean_task(b.text, last_sentence=False)
                if good_task(task):
                    out.append(_pair(task, cmd, tool, doc, "example_prose", b.section))
                continue
        # layout 2: definition list -- a command line with its description indented under it
        if _is_examples(b.section):
            j = 0
            while j < len(b.lines):
                line = b.lines[j]
                if b.lines[j].startswith(" "):
                    j += 1
                    continue
                head = [line]
                k = j + 1
                while line.rstrip().endswith("\\") and k < len(b.lines):
                    line = b.lines[k]
                    head.append(line)
                    k += 1
                desc = []
                while k < len(b.lines) and b.lines[k].startswith(" "):
                    desc.append(b.lines[k].strip())
                    k += 1
                if not desc and k >= len(b.lines) and i + 1 < len(blocks) and blocks[i + 1].indent > b.indent \
                        and blocks[i + 1].section == b.section and not _single_command(blocks[i + 1], tool):
                    desc = [blocks[i + 1].text]
                cmds = logical_lines(head)
                cmd = strip_prompt(cmds[0]) if len(cmds) == 1 else ""
                if len(cmd.split()) > 4 and not re.search(r"[-/.=|$<>'\"0-9:]", cmd):
                    cmd = ""  # a title line in plain words ("git daemon as regular daemon for ..."), no command
                if desc and looks_like_command(cmd, tool):
                    task = clean_task(" ".join(desc), last_sentence=False)
                    if good_task(task):
                        out.append(_pair(task, cmd, tool, doc, "example_deflist", b.section))
                j = k
    return out


# --------------------------------------------------------------------------- operands
# An option line alone ("Using sort, reverse the result of comparisons" -> `sort --reverse`) gives
# a command with nothing to act on. The SYNOPSIS says what a tool acts on ("sort [OPTION]...
# [FILE]...", "grep [OPTION...] PATTERNS [FILE...]", "mkdir [OPTION]... DIRECTORY..."), so each
# option task gets one concrete operand of every documented kind, named in the task, and the
# CMDGen builder gives the item a fixture of that kind (synth/cmdgen_set.derive_fixtures).
# kind -> (the value in the command, how the task names it: "{}" is the value)
OPERANDS = {
    "pattern": ("alpha", "with the pattern {}"),
    "file": ("notes.txt", "on {}"),
    "dir": ("docs", "on the directory {}"),
    "file2": ("other.txt", "and {}"),
    "file3": ("third.txt", "and {}"),
    "dest": ("backup.txt", "into {}"),
    "number": ("2", "with {meta} {}"),
}
# SYNOPSIS placeholders (lower-cased, digits dropped: FILE1 -> file) -> operand kind
_OPERAND_NAMES = {
    "pattern": "pattern", "patterns": "pattern", "regexp": "pattern", "regex": "pattern",
    "file": "file", "files": "file", "filename": "file", "filenames": "file", "path": "file", "paths": "file",
    "pathname": "file", "input": "file", "inputfile": "file", "infile": "file", "source": "file",
    "textfile": "file", "datafile": "file", "dir": "dir", "directory": "dir", "directories": "dir", "dirs": "dir",
    "dest": "dest", "outfile": "dest", "target": "file", "link_name": "dest",
}
# an option's own metavar that takes a small number ("--lines=NUM", "-w COLS")
_NUMBER_METAVARS = {"n", "num", "number", "count", "lines", "cols", "columns", "width", "depth", "level",
                    "bytes", "digits", "chars", "fields", "k", "m"}
_OPTION_WORDS = {"option", "options", "opts", "flags", "--"}


def _placeholder_kind(word: str) -> str | None:
    """'[FILE]...' -> 'file', '<path>...' -> 'file', 'FILE1' -> 'file', 'FILE2' -> 'file2' (a second
    file), 'CONFIGFILE' -> 'file'; None: not an operand we know."""
    w = word.strip("[]{}<>().,;\u2026").rstrip(".").strip("[]<>").lower()
    if w == "file2":
        return "file2"
    w = re.sub(r"\d+$", "", w)
    if w.endswith("file") and w.isalpha():
        return "file"
    return _OPERAND_NAMES.get(w)


def synopsis_operands(page: ManPage) -> list[str] | None:
    """The operand kinds of the SYNOPSIS's first form, in order (one of each), or None when that
    form needs something no kind covers (a required option or an unknown required placeholder:
    "tar {A|--catenate} ARCHIVE", "kill PID"). An optional group that holds an option
    ("[-f ARCHIVE]") is skipped whole; an optional placeholder of a known kind is given."""
    lines = [l for l in page.sections.get("SYNOPSIS", []) if l.strip()]
    if not lines:
        return None
    first = [lines[0]] + [l for l in _continuation(lines)]
    words = " ".join(first).split()
    inv = page.invocation.split()
    if [w.rsplit("/", 1)[-1] for w in words[:len(inv)]] != inv:
        return None
    kinds: list[str] = []
    depth, group, group_has_option = 0, [], False
    for raw in words[len(inv):]:
        opens = raw.count("[") + raw.count("{")
        closes = raw.count("]") + raw.count("}")
        if raw.startswith("{"):
            return None  # a required choice of modes (tar's {A|c|d...}): no single form
        bare = raw.strip("[]{}<>.\u2026|")
        is_option = bare.startswith("-") and bare != "--"
        if depth + opens > 0:  # inside an optional group
            group.append(bare)
            group_has_option |= is_option
            depth += opens - closes
            if depth <= 0:
                if not group_has_option:
                    kinds += [k for k in map(_placeholder_kind, group) if k]
                depth, group, group_has_option = 0, [], False
            continue
        if not bare or bare.lower() in _OPTION_WORDS or raw in ("|", "...", "\u2026"):
            continue
        if is_option:
            return None  # the first form requires an option ("sort --files0-from=F"): no plain form
        kind = _placeholder_kind(bare)
        if kind is None:
            return None
        kinds.append(kind)
        if bare == "FILES":  # "diff [OPTION]... FILES": a required pair
            kinds.append("file2")
    # a second and third file placeholder ("diff3 MYFILE OLDFILE YOURFILE") are other files
    files = 0
    for i, k in enumerate(kinds):
        if k in ("file", "file2"):
            files += 1
            kinds[i] = "file" if files == 1 else f"file{min(files, 3)}"
    return list(dict.fromkeys(kinds))


def _continuation(lines: list[str]) -> list[str]:
    """The lines that continue the SYNOPSIS's first form (indented deeper than it)."""
    base = indent_of(lines[0])
    out = []
    for l in lines[1:]:
        if indent_of(l) <= base:
            break
        out.append(l)
    return out


def operand_phrase(operands: list[tuple[str, str]], meta: str = "") -> str:
    """How the task names the operands: 'with the pattern alpha on notes.txt', 'on the directory
    docs and notes.txt' (a second "on" joins the first)."""
    parts: list[str] = []
    for k, v in operands:
        part = OPERANDS[k][1].format(v, meta=meta)
        if parts and part.startswith("on ") and parts[-1].startswith("on "):
            part = "and " + part[3:]
        parts.append(part)
    return " ".join(parts)


def _option_command(invocation: str, opts: list[tuple[str, str]],
                    kinds: list[str] | None = None) -> tuple[str, list[tuple[str, str]], str]:
    """(command, operands given [(kind, value)], the option's metavar when it was filled).

    The option's spelling (long preferred), its metavar filled when it is a number or an operand
    kind (`--lines=NUM` -> `--lines=2`), else kept as the placeholder (an unanswerable item, which
    the CMDGen builder drops), then one operand of each SYNOPSIS kind (`kinds`)."""
    longs = [o for o in opts if o[0].startswith("--")]
    opt, arg = (longs or opts)[0]
    operands: list[tuple[str, str]] = []
    meta = ""
    words = [invocation]
    if not arg:
        words.append(opt)
    else:
        arg = arg.strip("[]<>").strip("=") or "VALUE"
        arg = re.sub(r"[^A-Za-z0-9_.:/-]+", "_", arg).strip("_") or "VALUE"
        arg = arg.upper() if not arg.isupper() else arg
        sep = "=" if opt.startswith("--") else " "
        kind = "number" if re.sub(r"[^a-z]", "", arg.lower()) in _NUMBER_METAVARS else _placeholder_kind(arg)
        if kind is not None:
            value = OPERANDS[kind][0]
            operands.append((kind, value))
            meta = re.sub(r"[^A-Za-z0-9]", "", arg)  # "-_NUM" ("[-]NUM") -> "NUM"
            arg = value
        words.append(f"{opt}{sep}{arg}")
    for k in kinds or []:
        if all(k != have for have, _ in operands):
            operands.append((k, OPERANDS[k][0]))
            words.append(OPERANDS[k][0])
    return " ".join(words), operands, meta


def mine_options(page: ManPage, doc: dict, max_per_tool: int) -> tuple[list[dict], int]:
    tool = page.tool
    out, boiler, seen = [], 0, set()
    kinds = synopsis_operands(page)
    for e in page.option_entries:
        desc = clean_task(e.description, last_sentence=False)
        desc = re.sub(r"^\([A-Z /]+\)\s*", "", desc)  # curl's "(HTTP) "
        if not desc or _BOILERPLATE.search(desc) or any(o in ("--help", "--version", "--usage") for o, _ in e.options):
            boiler += 1
            continue
        command, operands, meta = _option_command(page.invocation, e.options, kinds)
        if command in seen:
            continue
        seen.add(command)
        task = f"Using {tool}, {desc[:1].lower() + desc[1:]}"
        if operands:
            task += ", " + operand_phrase(operands, meta)
        if not good_task(task) or _CONTEXTUAL.search(desc):
            continue
        extra = {"option_term": e.term}
        if operands:
            extra["operands"] = [list(o) for o in operands]
        out.append(_pair(task, command, tool, doc, "option", e.section, extra))
        if len(out) >= max_per_tool:
            break
    return out, boiler


def mine_manpage(doc: dict, max_option_pairs: int = 60, options: bool = True) -> tuple[list[dict], dict]:
    md = doc.get("metadata") or {}
    page = parse_manpage(doc.get("text", ""), md.get("tool"))
    stats = {}
    if not page.tool:
        return [], {"no_tool_name": 1}
    pairs = mine_examples(page, doc)
    stats["example_pairs"] = len(pairs)
    if options:
        opt_pairs, boiler = mine_options(page, doc, max_option_pairs)
        pairs += opt_pairs
        stats["option_pairs"] = len(opt_pairs)
        stats["boilerplate_options_skipped"] = boiler
    return pairs, stats


# --------------------------------------------------------------------------- other documents
_FENCE = re.compile(r"```(?:bash|sh|shell|console|zsh)?\s*\n(.*?)```", re.S)


def mine_snippets(doc: dict, known_tools: set[str] | None = None) -> tuple[list[dict], dict]:
    """Commands in READMEs/examples/Q&A pages: fenced blocks, indented blocks and `$ ` lines with
    the prose line before them (or the title of a Q&A page) as the task."""
    text = doc.get("text", "")
    md = doc.get("metadata") or {}
    title = (md.get("title") or "").strip()
    qa_page = doc.get("source") == "stackexchange"
    out: list[dict] = []
    if qa_page:  # commands of the answers only: the question's are what did not work
        question, answers = split_thread(text)
        text = "\n\n".join(answers)
    lines = text.replace("\r", "").split("\n")
    candidates: list[tuple[int, str]] = []  # (line index, command)
    for m in _FENCE.finditer(text):
        body = [strip_prompt(l) for l in logical_lines(m.group(1).strip("\n").split("\n")) if l.strip()]
        if len(body) == 1:
            candidates.append((text[:m.start()].count("\n"), body[0]))
    for i, l in enumerate(lines):
        s = l.strip()
        if s.startswith("$ ") and not any(c[0] == i for c in candidates):
            candidates.append((i, strip_prompt(s)))
    seen = set()
    for idx, cmd in sorted(candidates):
        words = command_words(cmd)
        tool = next((w for w in words if w not in _WRAPPERS), "")
        if not tool or (known_tools is not None and tool not in known_tools) or cmd in seen:
            continue
        prose = ""
        for back in range(idx - 1, max(-1, idx - 6), -1):
            s = lines[back].strip().strip("#").strip()
            if s and not s.startswith(("$", "```")):
                prose = s
                break
        task = clean_task(prose) if prose.endswith(":") else ""
        if qa_page and title and not good_task(task):
            task = title.rstrip("?") + "?" if title.endswith("?") else title
        if not good_task(task) or not looks_like_command(cmd, tool):
            continue
        seen.add(cmd)
        out.append(_pair(task, cmd, tool, doc, "qa_page" if qa_page else "snippet", "",
                         {"title": title or None}))
    return out, {"snippet_pairs": len(out)}
