"""Parse rendered man pages (plain text from `man -l` / groff or mandoc, `col -b`) into parts.

What the generators and the screen need from a page:
- `sections`: heading -> body lines (headings are the unindented upper-case lines: NAME,
  SYNOPSIS, DESCRIPTION, OPTIONS, EXAMPLES ...);
- `blocks`: the page as paragraphs (runs of non-blank lines) with their indentation, in order;
- `option_entries`: the option list items (term line such as ``-a, --all`` or
  ``--block-size=SIZE`` and the indented description under it);
- `known_options`: every option spelling the page documents (terms, SYNOPSIS, and option-looking
  words anywhere in the text), the reference the screen checks commands against; a spelling
  followed by "=" ("-n=") marks an option the page shows with a value.

Rendering artefacts are undone first: hyphenation at line ends (groff's U+2010 or '-' + newline
inside a word), the running header/footer lines, and justification spaces inside prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HEADING = re.compile(r"^[A-Z][A-Z0-9 /&()'-]{1,40}$")
_OPT = re.compile(r"(?<![\w/.=-])(--?[A-Za-z0-9?@#][A-Za-z0-9_?@#.+-]*)")
_TERM_OPT = re.compile(r"^(--?[A-Za-z0-9?@#][\w?@#.+-]*)(\[?=[^\s,]+\]?|\s+<[^>]+>|\s+[A-Z][A-Z0-9_:.-]*(?:\.\.\.)?"
                       r"|\s+[a-z][a-z_-]*(?=\s*(?:,|$)))?")


@dataclass
class Block:
    indent: int
    lines: list[str]  # stripped of the common indentation, trailing spaces removed
    section: str
    raw: list[str] = field(default_factory=list)  # original lines (indentation kept)

    @property
    def text(self) -> str:
        return " ".join(l.strip() for l in self.lines)


@dataclass
class OptionEntry:
    term: str  # e.g. "-a, --all" or "--block-size=SIZE"
    options: list[tuple[str, str]]  # [(spelling, metavar or "")]
    description: str
    section: str


@dataclass
class ManPage:
    tool: str
    name_line: str
    sections: dict[str, list[str]]
    blocks: list[Block]
    option_entries: list[OptionEntry]
    known_options: set[str]

    @property
    def invocation(self) -> str:
        """How the tool is typed, from the SYNOPSIS: page "git-log" -> "git log", "nvme-fw-log" ->
        "nvme fw-log"; a page documenting a binary's variant ("ffmpeg-all") -> "ffmpeg"."""
        first = next((l.split() for l in self.sections.get("SYNOPSIS", []) if l.strip()), [])
        words = [w.rsplit("/", 1)[-1] for w in first[:4]]
        for k in range(1, len(words) + 1):
            if "-".join(words[:k]) == self.tool:
                return " ".join(words[:k])
        if words and words[0] == self.tool.split("-")[0]:
            return words[0]
        return self.tool

    @property
    def summary(self) -> str:
        """The NAME line's description ("ls - list directory contents" -> "list directory contents")."""
        m = re.split(r"\s+[-\u2010\u2013\u2014]+\s+", self.name_line, maxsplit=1)
        return m[1].strip() if len(m) == 2 else ""


def dehyphenate(text: str) -> str:
    """Join words groff split across lines ("lo\u2010\\n    cated" -> "located")."""
    text = re.sub(r"(\w)\u2010\n\s*(\w)", r"\1\2", text)
    return text.replace("\u2010", "-")


def clean_lines(text: str) -> list[str]:
    lines = dehyphenate(text.replace("\r", "")).split("\n")
    out = [l.rstrip() for l in lines]
    # running header (first non-empty line) and footer (last non-empty line): "LS(1) ... LS(1)"
    nonempty = [i for i, l in enumerate(out) if l.strip()]
    for i in nonempty[:1] + nonempty[-1:]:
        if re.search(r"\(\d\w*\)", out[i]) and re.search(r"\S\s{3,}\S", out[i]):
            out[i] = ""
    return out


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def split_blocks(lines: list[str]) -> list[Block]:
    """Paragraphs with their section; headings end paragraphs and set the section."""
    blocks: list[Block] = []
    section = ""
    cur: list[str] = []

    def flush():
        if cur:
            ind = min(indent_of(l) for l in cur)
            blocks.append(Block(ind, [l[ind:] for l in cur], section, list(cur)))
            cur.clear()

    for line in lines:
        if not line.strip():
            flush()
        elif indent_of(line) == 0 and _HEADING.match(line.strip()):
            flush()
            section = line.strip()
        elif 0 < indent_of(line) <= 3 and len(line.strip()) < 60 and not line.strip().startswith("-"):
            flush()  # a sub-heading (.SS renders at indent 3, "   Option styles"); keep the section
        else:
            cur.append(line)
    flush()
    return blocks


def sections_of(lines: list[str]) -> tuple[dict[str, list[str]], str]:
    sections: dict[str, list[str]] = {}
    name = ""
    for line in lines:
        if line and indent_of(line) == 0 and _HEADING.match(line.strip()):
            name = line.strip()
            sections.setdefault(name, [])
        elif name:
            sections[name].append(line)
    name_line = " ".join(" ".join(sections.get("NAME", [])).split())
    return sections, name_line


def parse_term(term: str) -> list[tuple[str, str]]:
    """'-g, --listed-incremental=FILE' -> [('-g',''), ('--listed-incremental','FILE')]."""
    opts = []
    for part in re.split(r",\s*|\s+or\s+|\s*\|\s*", term.strip()):
        part = part.strip()
        m = _TERM_OPT.match(part)
        if not m or m.end() != len(part):
            return []  # prose that happens to start with '-', not an option term
        opts.append((m.group(1), (m.group(2) or "").strip().lstrip("=")))
    return opts


def option_entries(blocks: list[Block]) -> list[OptionEntry]:
    """Option list items: a line starting with '-' followed by deeper-indented description lines
    (or the description on the same line after 2+ spaces, as in "-c     with -lt: ...")."""
    entries: list[OptionEntry] = []
    skip = {"NAME", "SYNOPSIS", "SEE ALSO", "EXAMPLES", "EXAMPLE", "AUTHOR", "AUTHORS"}
    for bi, b in enumerate(blocks):
        if b.section in skip:
            continue
        i = 0
        while i < len(b.lines):
            line = b.lines[i]
            starts_item = i == 0 or indent_of(b.lines[i - 1]) > 0
            if starts_item and indent_of(line) == 0 and line.startswith("-") and not line.startswith("--- "):
                m = re.match(r"(\S.*?)(?:\s{2,}(\S.*))?$", line)
                term, same = m.group(1), m.group(2) or ""
                desc = [same] if same.strip() else []
                j = i + 1
                while j < len(b.lines) and indent_of(b.lines[j]) > 0:
                    desc.append(b.lines[j].strip())
                    j += 1
                if not desc and j >= len(b.lines) and bi + 1 < len(blocks) and blocks[bi + 1].indent > b.indent \
                        and blocks[bi + 1].section == b.section:
                    desc.append(blocks[bi + 1].text)  # description after a blank line
                opts = parse_term(term)
                if opts and desc:
                    entries.append(OptionEntry(term.strip(), opts, " ".join(" ".join(desc).split()), b.section))
                i = j
            else:
                i += 1
    return entries


def parse_manpage(text: str, tool: str | None = None) -> ManPage:
    lines = clean_lines(text)
    sections, name_line = sections_of(lines)
    blocks = split_blocks(lines)
    entries = option_entries(blocks)
    if tool is None:
        tool = name_line.split()[0].rstrip(",") if name_line else ""
    known: set[str] = set()
    for e in entries:
        known.update(o for o, _ in e.options)
        if any(arg for _, arg in e.options):  # "-n, --lines=NUM": every spelling takes a value
            known.update(o + "=" for o, _ in e.options)
    for l in lines:
        for m in _OPT.finditer(l):
            tok = m.group(1).rstrip(".,;:)")
            if len(tok) > 1 and not tok.startswith("---"):
                known.add(tok.split("=")[0].split("[")[0])
    return ManPage(tool=tool, name_line=name_line, sections=sections, blocks=blocks, option_entries=entries,
                   known_options=known)
