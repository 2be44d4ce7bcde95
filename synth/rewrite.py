"""Rewrites through an LLM backend: textbook-style rephrasing, summaries, Q&A-ification.

Prompt templates live in the recipe (`rewrite.templates`): each has a name, an optional system
message and a user prompt with the placeholders {title}, {text}, {source}. A document longer than
`max_chars` is cut at a paragraph boundary (the rewrite is of the first part only; the cut is
recorded). Every request of a shard goes through `Backend.chat_many`, which runs them with the
backend's concurrency limit and answers from the response cache when it can.
"""

from __future__ import annotations

from minisigma.core.shards import stable_id

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


def build_messages(template, doc: dict, max_chars: int) -> tuple[list[dict], str, bool]:
    body, truncated = excerpt(doc.get("text", ""), max_chars)
    md = doc.get("metadata") or {}
    values = _SafeDict(text=body, title=md.get("title") or md.get("tool") or "", source=doc.get("source") or "")
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
