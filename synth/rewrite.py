"""Rewrites through an LLM backend: textbook-style rephrasing, summaries, Q&A-ification.

Prompt templates live in the recipe (`rewrite.templates`): each has a name, an optional system
message and a user prompt with the placeholders {title}, {text}, {source}, {tool}, {command}
(a command line from the page's EXAMPLES, else its first documented option; a template that uses
{command} is skipped for a document that has none) and {command_help} (what the page says that
command does: the example's prose or the option's description). The passage ({text}) is the document, or with
`passage: manpage_section` the DESCRIPTION section of a man page; one longer than `max_chars` is
cut at a paragraph boundary (the rewrite is of the first part only; the cut is recorded). Every request of a shard goes through `Backend.chat_many`, which runs them with the
backend's concurrency limit and answers from the response cache when it can.
"""

from __future__ import annotations

import re

from minisigma.core.shards import stable_id
from synth.commands import mine_examples, mine_options
from synth.manpage import ManPage, parse_manpage

GENERATOR = "synth.rewrite/1"


class _SafeDict(dict):
    def __missing__(self, key):  # unknown placeholders stay as written
        return "{" + key + "}"


def excerpt(text: str, max_chars: int) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    cut = text.rfind("\n\n", 0, max_chars)
    if cut < max_chars // 2:
        cut = text.rfind("\n", 0, max_chars)
    if cut < max_chars // 2:
        cut = max_chars
    return text[:cut], True


def page_of(doc: dict, manpage_sources: tuple[str, ...] = ("manpages",)) -> ManPage | None:
    if doc.get("source") not in manpage_sources:
        return None
    page = parse_manpage(doc.get("text", ""), (doc.get("metadata") or {}).get("tool"))
    return page if page.tool else None


def passage_of(doc: dict, page: ManPage | None, mode: str) -> str:
    """The text a rewrite is of: the document, or a man page's DESCRIPTION section (dedented)."""
    if mode == "manpage_section" and page is not None:
        lines = page.sections.get("DESCRIPTION") or []
        if lines:
            ind = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
            return re.sub(r"\n{3,}", "\n\n", "\n".join(l[ind:] for l in lines).strip())
    return doc.get("text", "")


def command_of(page: ManPage | None, doc: dict) -> tuple[str, str]:
    """A command line to explain and what the page says it does: the page's first example (its prose),
    else its first documented option (the option's description); ("", "") when the page has neither."""
    if page is None:
        return "", ""
    for pairs in (mine_examples(page, doc), mine_options(page, doc, 1)[0]):
        for p in pairs:
            if p.get("command"):
                help_text = re.sub(rf"^Using {re.escape(page.tool)}, ", "", p.get("task") or "")
                return p["command"], help_text[:1].upper() + help_text[1:]
    return "", ""


def build_messages(template, doc: dict, max_chars: int, passage: str | None = None,
                   command: str = "", command_help: str = "") -> tuple[list[dict], str, bool]:
    body, truncated = excerpt(doc.get("text", "") if passage is None else passage, max_chars)
    md = doc.get("metadata") or {}
    values = _SafeDict(text=body, title=md.get("title") or md.get("tool") or "", source=doc.get("source") or "",
                       tool=md.get("tool") or md.get("title") or "", command=command,
                       command_help=command_help)
    msgs = []
    if template.system:
        msgs.append({"role": "system", "content": template.system.format_map(values)})
    msgs.append({"role": "user", "content": template.prompt.format_map(values)})
    return msgs, body, truncated


def rewrite_record(template, doc: dict, text: str, model: str, truncated: bool, extra: dict) -> dict:
    md = doc.get("metadata") or {}
    return {"id": stable_id("rewrite", template.name, str(doc.get("id")), model), "text": text.strip(),
            "source": "synthetic", "url": doc.get("url"),
            "metadata": {"generator": GENERATOR, "template": template.name, "model": model,
                         "source_id": doc.get("id"), "source": doc.get("source"), "source_url": doc.get("url"),
                         "title": md.get("title"), "category": md.get("category"), "truncated": truncated, **extra}}
