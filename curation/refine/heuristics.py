"""Stage: Gopher / C4 / FineWeb-style quality and repetition rules, aware of code and commands.

The rules follow the published ones (Gopher: Rae et al. 2021, C4: Raffel et al. 2020, FineWeb:
Penedo et al. 2024); thresholds live in the recipe. They are written here rather than called from
datatrove because datatrove's filters tokenise with spaCy and report only the first failing rule
for the whole text, while system documentation needs the rules split by content: every document is
first split into code/command lines and prose lines (`codedetect.split_code`), then

* prose rules (stop words, alphabetic words, mean word length, symbol ratio, bullets/ellipses,
  terminal punctuation, short lines, curly brackets, lorem ipsum) run on the prose lines only, and
  only when there are at least `prose_min_words` prose words; a code-heavy document (code fraction
  >= `code_fraction_skip_prose`) skips them entirely;
* repetition rules run on the whole text, ignoring near-empty lines (`}`, `fi`, `end`) that code
  repeats by nature, with the relaxed `code_*` thresholds for code-heavy documents;
* sanity rules run on everything (length bounds, alphanumeric fraction: binary or garbled bytes).

Each drop names the rule that fired first (e.g. "gopher_stop_words"); `metadata.code_fraction` is kept.
"""

from __future__ import annotations

import re
from collections import Counter

from minisigma.core.recipes import Section
from minisigma.core.document import Document
from minisigma.core.filters import Filter

from curation.refine.codedetect import split_code
from curation.refine.registry import RefineStep
from curation.refine.textutil import meta

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])  # Gopher's list
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")
TERMINAL = (".", "!", "?", '"', "'", ":", ";", ")", "”", "’")
_WORD = re.compile(r"\S+")


class HeuristicsConfig(Section):
    # sanity (all documents)
    min_words: int = 30
    max_words: int = 200_000
    min_alnum_fraction: float = 0.25  # letters+digits / non-space chars
    # Gopher quality (prose)
    min_stop_words: int = 2
    min_alpha_word_fraction: float = 0.7  # Gopher uses 0.8; docs mention many identifiers
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 12.0
    max_symbol_word_ratio: float = 0.1  # "#" and "..." per word
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    # C4 / FineWeb (prose)
    c4_drop_curly_bracket: bool = True
    c4_drop_lorem_ipsum: bool = True
    min_terminal_punct_line_fraction: float = 0.12  # FineWeb line_punct_thr
    max_short_line_fraction: float = 0.67  # FineWeb: lines shorter than short_line_chars
    short_line_chars: int = 30
    # Gopher repetition (all documents)
    max_dup_line_fraction: float = 0.3
    max_dup_para_fraction: float = 0.3
    max_dup_line_char_fraction: float = 0.2
    max_dup_para_char_fraction: float = 0.2
    top_ngram_char_fraction: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
    dup_ngram_char_fraction: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    # code and commands
    detect_code: bool = True
    code_fraction_skip_prose: float = 0.5
    prose_min_words: int = 50
    code_max_dup_line_fraction: float = 0.5
    code_max_dup_line_char_fraction: float = 0.4
    code_dup_ngram_relax: float = 2.0  # code-heavy: dup n-gram thresholds multiplied by this


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """Fraction of items that repeat an earlier item, and the fraction of characters they hold."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for x in items:
        total_chars += len(x)
        if x in seen:
            dup += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return (dup / len(items) if items else 0.0, dup_chars / total_chars if total_chars else 0.0)


def _top_ngram_fraction(words: list[str], n: int) -> float:
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    gram, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    return len(gram) * count / max(1, sum(len(w) for w in words))


def _dup_ngram_fraction(words: list[str], n: int) -> float:
    """Characters of words covered by an n-gram seen earlier in the text (Gopher's definition)."""
    if len(words) < n:
        return 0.0
    seen: set[tuple] = set()
    covered = [False] * len(words)
    i = 0
    while i <= len(words) - n:
        g = tuple(words[i:i + n])
        if g in seen:
            for j in range(i, i + n):
                covered[j] = True
            i += n
        else:
            seen.add(g)
            i += 1
    total = sum(len(w) for w in words)
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def prose_rules(text: str, c: HeuristicsConfig, has_code: bool = False) -> str | None:
    words = _WORD.findall(text)
    n = len(words)
    lines = [x.strip() for x in text.split("\n") if x.strip()]
    lower_words = [w.lower().strip(".,;:!?\"'()") for w in words]
    if sum(w in STOP_WORDS for w in lower_words) < c.min_stop_words:
        return "gopher_stop_words"
    if sum(any(ch.isalpha() for ch in w) for w in words) / n < c.min_alpha_word_fraction:
        return "gopher_alpha_words"
    mean_len = sum(len(w) for w in words) / n
    if not c.min_mean_word_length <= mean_len <= c.max_mean_word_length:
        return "gopher_mean_word_length"
    if (text.count("#") + text.count("...") + text.count("…")) / n > c.max_symbol_word_ratio:
        return "gopher_symbol_ratio"
    if lines and sum(x.startswith(BULLETS) for x in lines) / len(lines) > c.max_bullet_line_fraction:
        return "gopher_bullet_lines"
    if lines and sum(x.endswith(("...", "…")) for x in lines) / len(lines) > c.max_ellipsis_line_fraction:
        return "gopher_ellipsis_lines"
    lowered = text.lower()
    if c.c4_drop_lorem_ipsum and "lorem ipsum" in lowered:
        return "c4_lorem_ipsum"
    # C4 drops any page with "{" (JavaScript leftovers); in a document that has code lines a brace in
    # the prose is inline code, so the rule only applies to documents without code.
    if c.c4_drop_curly_bracket and not has_code and "{" in text:
        return "c4_curly_bracket"
    if lines and sum(x.endswith(TERMINAL) for x in lines) / len(lines) < c.min_terminal_punct_line_fraction:
        return "fineweb_line_punct"
    if lines and sum(len(x) < c.short_line_chars for x in lines) / len(lines) > c.max_short_line_fraction:
        return "fineweb_short_lines"
    return None


def repetition_rules(text: str, c: HeuristicsConfig, code_heavy: bool) -> str | None:
    # Lines and paragraphs with fewer than 3 alphanumerics ("}", "fi", "end;") repeat by nature in code.
    lines = [x.strip() for x in text.split("\n") if sum(ch.isalnum() for ch in x) >= 3]
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if sum(ch.isalnum() for ch in p) >= 3]
    line_frac, line_chars = _dup_fraction(lines)
    para_frac, para_chars = _dup_fraction(paras)
    max_line = c.code_max_dup_line_fraction if code_heavy else c.max_dup_line_fraction
    max_line_chars = c.code_max_dup_line_char_fraction if code_heavy else c.max_dup_line_char_fraction
    if line_frac > max_line:
        return "rep_dup_lines"
    if para_frac > c.max_dup_para_fraction and not code_heavy:
        return "rep_dup_paragraphs"
    if line_chars > max_line_chars:
        return "rep_dup_line_chars"
    if para_chars > c.max_dup_para_char_fraction and not code_heavy:
        return "rep_dup_para_chars"
    words = [w.lower() for w in _WORD.findall(text)]
    relax = c.code_dup_ngram_relax if code_heavy else 1.0
    for n, thr in sorted(c.top_ngram_char_fraction.items()):
        if _top_ngram_fraction(words, n) > thr * relax:
            return f"rep_top_{n}gram"
    for n, thr in sorted(c.dup_ngram_char_fraction.items()):
        if _dup_ngram_fraction(words, n) > thr * relax:
            return f"rep_dup_{n}gram"
    return None


def check(text: str, c: HeuristicsConfig) -> tuple[str | None, dict]:
    """Return (reason or None, facts) for one document's text."""
    n_words = len(_WORD.findall(text))
    split = split_code(text) if c.detect_code else None
    code_fraction = split.code_fraction if split else 0.0
    facts = {"code_fraction": round(code_fraction, 3)}
    if n_words < c.min_words:
        return "too_few_words", facts
    if n_words > c.max_words:
        return "too_many_words", facts
    nonspace = sum(not ch.isspace() for ch in text)
    if nonspace and sum(ch.isalnum() for ch in text) / nonspace < c.min_alnum_fraction:
        return "low_alnum_fraction", facts
    code_heavy = code_fraction >= c.code_fraction_skip_prose
    if split is None:
        reason = prose_rules(text, c)
    elif code_heavy:
        facts["prose_rules"] = "skipped_code"
        reason = None
    elif len(_WORD.findall(split.prose_text)) >= c.prose_min_words:
        facts["prose_rules"] = "prose_lines" if split.code_lines else "all"
        reason = prose_rules(split.prose_text, c, has_code=split.code_lines > 0)
    else:
        facts["prose_rules"] = "skipped_short_prose"
        reason = None
    if reason is None:
        reason = repetition_rules(text, c, code_heavy)
    return reason, facts


class Heuristics(Filter, RefineStep):
    name = "heuristics"
    Config = HeuristicsConfig

    def decide(self, doc: Document) -> str | None:
        reason, facts = check(doc.text, self.config)
        meta(doc)["code_fraction"] = facts["code_fraction"]
        self.stat(f"prose_rules_{facts.get('prose_rules', 'none')}")
        return reason or None
