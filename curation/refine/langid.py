"""Stage: offline language identification with py3langid (its model ships inside the package).

Code and command lines say little about the natural language of a document, so the language is
identified on the prose lines (`codedetect.split_code`); a document with fewer than
`min_prose_chars` of prose is kept as code ("und") and counted. The language and its probability
go to `metadata.lang` and `metadata.scores.lang`; a document in a language outside `languages`
is dropped with reason "lang_<code>", one below `min_score` with "lang_low_score".
"""

from __future__ import annotations

from minisigma.core.document import Document
from minisigma.core.filters import Filter
from minisigma.core.recipes import Section

from curation.refine.codedetect import split_code
from curation.refine.registry import RefineStep
from curation.refine.textutil import meta, scores


class LangIdConfig(Section):
    languages: list[str] = ["en"]
    min_score: float = 0.5
    min_prose_chars: int = 200
    max_chars: int = 20_000  # identify on the first characters of the prose (enough for a stable answer)


_IDENTIFIER = None


def identifier():
    """The py3langid model with normalised probabilities, loaded once per process."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _IDENTIFIER


def identify(text: str, c: LangIdConfig) -> tuple[str, float, bool]:
    """(language, probability, identified_on_prose). 'und' when there is too little prose."""
    prose = split_code(text).prose_text
    if len(prose) < c.min_prose_chars:
        if len(text) < c.min_prose_chars:
            return "und", 0.0, False
        prose = text  # nothing but code and too much of it to ignore: let the model decide
        lang, p = identifier().classify(prose[: c.max_chars])
        return (lang, float(p), False) if lang in c.languages else ("und", float(p), False)
    lang, p = identifier().classify(prose[: c.max_chars])
    return lang, float(p), True


class LangId(Filter, RefineStep):
    name = "langid"
    Config = LangIdConfig

    def decide(self, doc: Document) -> str | None:
        c = self.config
        lang, p, _ = identify(doc.text, c)
        meta(doc)["lang"] = lang
        scores(doc)["lang"] = round(p, 4)
        if lang == "und":
            self.stat("kept_code_only")
            return None
        if lang not in c.languages:
            return f"lang_{lang}"
        if p < c.min_score:
            return "lang_low_score"
        return None
