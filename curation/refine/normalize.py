"""Stage: Unicode and whitespace normalisation.

NFC composition; CR/LF and Unicode line/paragraph separators become "\\n"; control characters other
than tab and newline are removed; exotic spaces (NBSP, thin space, ideographic space...) become a
plain space; zero-width characters and BOMs are removed; trailing spaces are stripped per line and
runs of more than two blank lines collapse to two. Leading indentation is kept (code depends on it).
"""

from __future__ import annotations

import re
import unicodedata

from minisigma.core.document import Document
from minisigma.core.filters import Filter
from minisigma.core.recipes import Section

from curation.refine.registry import RefineStep

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85\x0b\x0c]")
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH = re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANKS = re.compile(r"\n{4,}")


class NormalizeConfig(Section):
    form: str = "NFC"
    min_chars: int = 1  # documents shorter than this after normalisation are dropped ("empty_after_normalize")


def normalize_text(text: str, form: str = "NFC") -> tuple[str, int]:
    """Return the normalised text and how many control characters were removed."""
    text = unicodedata.normalize(form, text)
    text = _NEWLINES.sub("\n", text)
    text = _SPACES.sub(" ", text)
    text = _ZERO_WIDTH.sub("", text)
    text, n_ctrl = _CONTROL.subn("", text)
    text = _TRAILING.sub("", text)
    text = _BLANKS.sub("\n\n\n", text)
    return text.strip("\n"), n_ctrl


class Normalize(Filter, RefineStep):
    name = "normalize"
    Config = NormalizeConfig

    def decide(self, doc: Document) -> str | None:
        text = doc.text
        new, n_ctrl = normalize_text(text, self.config.form)
        if n_ctrl:
            self.stat("control_chars_removed", n_ctrl)
        if new != text:
            self.stat("docs_changed")
        if len(new.strip()) < self.config.min_chars:
            return "empty_after_normalize"
        doc.text = new
        return None
