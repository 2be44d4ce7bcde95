"""Detect code and command content so that prose rules do not throw it away.

A line counts as code when it is inside a ``` / ~~~ fence, is indented by a tab or 4+ spaces, starts
with a shell or REPL prompt ("$ ", "# ", ">>> ", "... ", "% ", "PS> ", "C:\\>"), or has a high density
of programming symbols / typical code shapes (`foo(bar);`, `x = y`, `{`, `}`, `#include`, `def f():`).
The split lets the heuristics apply prose rules to the prose lines only.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_FENCE = re.compile(r"^\s*(```|~~~)")
_PROMPT = re.compile(r"^\s*(\$|#|>>>|\.\.\.|%|PS[^>]*>|[A-Z]:\\[^>]*>|\w+@[\w.-]+[:~][^$#]*[$#])\s")
_KEYWORDS = re.compile(
    r"^\s*(def|class|import|from|return|if|elif|else|for|while|try|except|with|fn|let|var|const|func|public|"
    r"private|static|struct|enum|impl|package|use|int|void|char|switch|case|echo|export|sudo|apt|apt-get|git|"
    r"cd|ls|mkdir|cp|mv|rm|make|cmake|pip|python3?|docker|kubectl|systemctl|chmod|chown|curl|wget|grep|sed|awk|"
    r"cat|tar|ssh|fi|done|then|esac|local|unset|set)\b")
_SYMBOLS = set("{}[]()<>;=|&$#\\/*_:`~^%@+-")
_SHAPES = re.compile(
    r"""^\s*(
        [{}()\[\];,]+\s*$                              # lone braces/brackets
      | \#\s*(include|define|ifdef|ifndef|endif|pragma)\b
      | [\w.\[\]"'$]+\s*(=|\+=|-=|:=|==|->|=>)\s*\S.*  # assignment
      | .*\{\s*$                                      # opens a block
      | [\w.]+\(.*\)\s*;?\s*$                         # a call on its own line
      | --?[\w-]+(\s|=|,|$).*                          # an option (man pages, --help)
    )""",
    re.X,
)
@dataclass
class CodeSplit:
    code_lines: int
    prose_lines: int
    code_fraction: float  # of non-blank lines
    symbol_density: float  # programming symbols / non-space characters
    prose_text: str

    @property
    def lines(self) -> int:
        return self.code_lines + self.prose_lines


def _symbol_density(line: str) -> float:
    chars = [c for c in line if not c.isspace()]
    if not chars:
        return 0.0
    return sum(c in _SYMBOLS for c in chars) / len(chars)


def _indent(line: str) -> int:
    n = 0
    for c in line:
        if c == " ":
            n += 1
        elif c == "\t":
            n += 8
        else:
            break
    return n


def _is_code_line(line: str, stripped: str, base_indent: int, threshold: float) -> bool:
    if _indent(line) >= base_indent + 4 or _PROMPT.match(stripped + " ") or _SHAPES.match(stripped):
        return True
    density = _symbol_density(stripped)
    if density >= threshold:
        return True
    # A command or keyword line: starts with a keyword, carries some symbols, is not a sentence.
    return bool(_KEYWORDS.match(stripped)) and density >= 0.04 and not stripped.endswith(".")


def split_code(text: str, symbol_line_threshold: float = 0.25) -> CodeSplit:
    """Split `text` into code lines and prose lines. Indentation counts relative to the most common
    indentation of the text (man pages and pydoc indent their prose uniformly)."""
    indents = Counter(_indent(x) for x in text.split("\n") if x.strip())
    base_indent = indents.most_common(1)[0][0] if indents else 0
    in_fence = False
    code = prose = 0
    sym_chars = nonspace = 0
    prose_lines: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip()
        ns = len(stripped.replace(" ", ""))
        nonspace += ns
        sym_chars += sum(c in _SYMBOLS for c in stripped)
        if _FENCE.match(line):
            in_fence = not in_fence
            code += 1
            continue
        if not stripped:
            continue
        if in_fence or _is_code_line(line, stripped, base_indent, symbol_line_threshold):
            code += 1
        else:
            prose += 1
            prose_lines.append(line)
    total = code + prose
    return CodeSplit(code, prose, code / total if total else 0.0, sym_chars / nonspace if nonspace else 0.0,
                     "\n".join(prose_lines))
