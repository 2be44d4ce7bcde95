"""Question-answer pairs from documentation sections and Stack Exchange Q&A documents. No LLM.

- man pages: "What is TOOL used for?" (NAME line + first DESCRIPTION paragraph) and
  "What does the OPTION option of TOOL do?" (the option's description);
- Stack Exchange threads: the question (title, body) and the first answer (the accepted one when
  there is one: the curation adapter writes it first, under "## Accepted answer (score N)");
- other documentation with Markdown or underlined headings: "What does <title> say about
  <heading>?" answered by that section.
Each pair: {id, question, answer, text, source "synthetic", metadata{provenance}}.
"""

from __future__ import annotations

import re

from minisigma.core.shards import stable_id
from synth.manpage import parse_manpage

GENERATOR = "synth.qa/1"
_ANSWER_MARK = re.compile(r"^\s*(?:#+\s*)?(accepted answer|answer|a:)\b.*$", re.I | re.M)
_MD_HEADING = re.compile(r"^(#{1,4})\s+(.+?)\s*#*$", re.M)


def _qa(question: str, answer: str, doc: dict, rule: str, extra: dict | None = None) -> dict:
    md = doc.get("metadata") or {}
    prov = {"generator": GENERATOR, "rule": rule, "source_id": doc.get("id"), "source_url": doc.get("url"),
            "source": doc.get("source"), "package": md.get("package"), "version": md.get("version")}
    prov.update(extra or {})
    answer = " ".join(answer.split())
    return {"id": stable_id(rule, str(doc.get("id")), question, answer), "question": question, "answer": answer,
            "text": f"{question}\n{answer}", "source": "synthetic", "url": doc.get("url"),
            "metadata": {k: v for k, v in prov.items() if v is not None}}


def from_manpage(doc: dict, max_options: int = 20) -> list[dict]:
    md = doc.get("metadata") or {}
    page = parse_manpage(doc.get("text", ""), md.get("tool"))
    out = []
    if not page.tool:
        return out
    desc_blocks = [b for b in page.blocks if b.section == "DESCRIPTION" and not b.lines[0].startswith("-")]
    first = desc_blocks[0].text if desc_blocks else ""
    if page.summary or first:
        ans = (f"{page.tool} - {page.summary}. " if page.summary else "") + first
        out.append(_qa(f"What is {page.tool} used for?", ans, doc, "manpage_purpose", {"tool": page.tool}))
    for e in page.option_entries[:max_options]:
        opt = max((o for o, _ in e.options), key=len)
        out.append(_qa(f"What does the {opt} option of {page.tool} do?", e.description, doc, "manpage_option",
                       {"tool": page.tool, "option_term": e.term}))
    return out


def split_thread(text: str) -> tuple[str, list[str]]:
    """A Q&A thread's text -> (question part, [answer texts]) at the "## Accepted answer (score N)" /
    "## Answer" / "A:" heading lines (the layout curation/sources/stackexchange.py writes)."""
    marks = list(_ANSWER_MARK.finditer(text))
    if not marks:
        return text, []
    answers = [text[m.end():(marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip()
               for i, m in enumerate(marks)]
    return text[:marks[0].start()], [a for a in answers if a]


def from_stackexchange(doc: dict) -> list[dict]:
    md = doc.get("metadata") or {}
    title = (md.get("title") or "").strip()
    body, answers = split_thread(doc.get("text", ""))
    if not answers:
        return []
    lines = body.strip().split("\n")
    if lines and lines[0].lstrip("# ").strip() == title:  # the thread opens with "# <title>"
        lines = lines[1:]
    body = " ".join(" ".join(lines).split())
    question = f"{title}\n{body}" if title and body else (title or body)
    return [_qa(question.strip(), answers[0], doc, "stackexchange")]


def from_sections(doc: dict, max_sections: int = 10) -> list[dict]:
    text = doc.get("text", "")
    title = ((doc.get("metadata") or {}).get("title") or "").strip() or "this documentation"
    heads = list(_MD_HEADING.finditer(text))
    if not heads:  # underlined headings: "Title\n=====" / "Title\n-----"
        heads = list(re.finditer(r"^(?P<t>[^\n]{3,80})\n(?:=+|-+)\s*$", text, re.M))
    out = []
    for i, h in enumerate(heads[:max_sections]):
        heading = (h.group(2) if h.re is _MD_HEADING else h.group("t")).strip().rstrip("\u00b6").strip()
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[h.end():end].strip()
        if len(body.split()) < 15:
            continue
        out.append(_qa(f"What does {title} say about {heading}?", body, doc, "doc_section", {"heading": heading}))
    return out


def qa_pairs(doc: dict, max_options: int = 20) -> list[dict]:
    src = doc.get("source")
    if src == "manpages":
        return from_manpage(doc, max_options)
    if src == "stackexchange":
        return from_stackexchange(doc)
    return from_sections(doc)
