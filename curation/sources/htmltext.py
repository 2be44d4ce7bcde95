"""HTML fragments (Stack Exchange post bodies) to plain text that keeps code.

`<pre>` blocks become fenced code blocks with their whitespace intact, inline `<code>` becomes
`backticks`, list items get "- ", headings "#", blockquotes "> ", `<br>` a line break; other
markup is dropped and whitespace in running text collapsed. lxml's HTML parser repairs broken
markup (unclosed or stray tags) the way browsers do. Hand-written because trafilatura and
html2text are built for whole pages (boilerplate removal, link references), not for trusted
fragments where every code line matters.
"""

from __future__ import annotations

import re

import lxml.html
from lxml import etree

BLOCKS = {"p", "div", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr",
          "hr", "dl", "dt", "dd", "section", "article", "details", "summary", "figure"}
SKIP = {"script", "style", "head", "title", "template"}
_WS = re.compile(r"[ \t\r\f\v\n]+")


class EmptyHTML(ValueError):
    pass


class _Renderer:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.cur: list[str] = []

    def flush(self) -> None:
        text = "".join(self.cur)
        self.cur = []
        lines = [" ".join(line.split()) for line in text.split("\n")]
        text = "\n".join(lines).strip("\n ")
        if text.strip():
            self.blocks.append(text)

    def inline(self, s: str | None) -> None:
        if s:
            self.cur.append(_WS.sub(" ", s))

    def children(self, el) -> None:
        self.inline(el.text)
        for child in el:
            self.walk(child)
            self.inline(child.tail)

    def walk(self, el) -> None:
        if not isinstance(el.tag, str):  # comments, processing instructions
            return
        tag = el.tag.lower()
        if tag in SKIP:
            return
        if tag == "pre":
            self.flush()
            code = el.text_content().strip("\n")
            if code.strip():
                self.blocks.append(f"```\n{code}\n```")
        elif tag == "code" and any(isinstance(d.tag, str) and d.tag in BLOCKS | {"pre"} for d in el.iterdescendants()):
            self.children(el)  # an unclosed <code> that swallowed blocks (broken markup): render its parts
        elif tag == "code":
            code = el.text_content()
            if code:
                self.cur.append(f"`{code}`")
        elif tag == "br":
            self.cur.append("\n")
        elif tag == "img":
            alt = (el.get("alt") or "").strip()
            if alt:
                self.inline(f"[image: {alt}]")
        elif tag in BLOCKS:
            self.flush()
            start = len(self.blocks)
            if tag == "li":
                self.cur.append("- ")
            elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.cur.append("#" * int(tag[1]) + " ")
            elif tag == "hr":
                self.cur.append("---")
            self.children(el)
            self.flush()
            if tag == "blockquote":
                for i in range(start, len(self.blocks)):
                    self.blocks[i] = "\n".join("> " + line for line in self.blocks[i].split("\n"))
            if tag in ("ul", "ol", "li") and len(self.blocks) > start:
                # list items are lines of one block, not separate paragraphs
                merged = "\n".join(self.blocks[start:])
                del self.blocks[start:]
                self.blocks.append(merged)
        else:
            self.children(el)


def html_to_text(html: str) -> str:
    """Plain text of an HTML fragment; raises EmptyHTML when nothing textual is left."""
    if not html or not html.strip():
        raise EmptyHTML("empty body")
    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except (etree.ParserError, ValueError) as e:
        raise EmptyHTML(f"unparsable: {e}") from None
    r = _Renderer()
    r.walk(root)
    r.flush()
    text = "\n\n".join(r.blocks).strip()
    if not text:
        raise EmptyHTML("no text in body")
    return text
