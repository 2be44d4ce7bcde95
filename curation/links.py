"""Finding URLs in fetched documents: HTML links, sitemaps (and sitemap indexes), RSS/Atom feeds.

Parsing is done here with lxml on bytes the crawler already fetched (politely, and recorded in
the WARC). trafilatura's sitemap/feed helpers download by themselves, outside the crawler's
robots, rate-limit, address and WARC rules, so they are not used for the fetching; the parsing
itself is a few XPath lines.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin

import lxml.etree
import lxml.html

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_META_ROBOTS = re.compile(rb"""<meta[^>]+name\s*=\s*["']?robots["']?[^>]*>""", re.I)

SITEMAP_TYPES = {"application/xml", "text/xml", "application/gzip", "application/x-gzip"}
FEED_TYPES = {"application/rss+xml", "application/atom+xml", "application/rdf+xml", "application/xml", "text/xml"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}


def sniff_charset(body: bytes, declared: str | None) -> str:
    """The charset a body claims: the Content-Type's, else an HTML <meta charset>, else UTF-8."""
    if declared:
        return declared
    m = _META_CHARSET.search(body[:4096])
    return m.group(1).decode("ascii").lower() if m else "utf-8"


def decodes(body: bytes, charset: str) -> bool:
    try:
        body.decode(charset)
        return True
    except (UnicodeDecodeError, LookupError):
        return False


def html_links(body: bytes, base_url: str, charset: str | None = None) -> list[str]:
    """Absolute URLs of <a>/<area> links of an HTML page (none when <meta name=robots> says nofollow)."""
    head = body[:65536]
    for tag in _META_ROBOTS.findall(head):
        if b"nofollow" in tag.lower() or b"none" in tag.lower():
            return []
    try:
        parser = lxml.html.HTMLParser(encoding=charset) if charset and decodes(b"", charset) else None
        doc = lxml.html.document_fromstring(body, parser=parser)
    except (lxml.etree.ParserError, ValueError, LookupError):
        return []
    base = base_url
    for b in doc.xpath("//base[@href]/@href")[:1]:
        base = urljoin(base_url, b.strip())
    out = []
    for href in doc.xpath("//a/@href | //area/@href"):
        href = href.strip()
        if href and not href.startswith(("javascript:", "mailto:", "#", "data:", "tel:")):
            out.append(urljoin(base, href))
    return out


_CITATION_PDF = re.compile(rb"""<meta\s[^>]*name\s*=\s*["']?citation_pdf_url["']?[^>]*>""", re.I)
_CONTENT = re.compile(rb"""content\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)


def citation_pdf_urls(body: bytes, base_url: str) -> list[str]:
    """The `<meta name="citation_pdf_url" content=...>` links of a landing page (Highwire Press tags,
    what Google Scholar reads: USENIX, ACM, IEEE, Springer and arXiv pages carry them)."""
    out = []
    for tag in _CITATION_PDF.findall(body[:262144]):
        m = _CONTENT.search(tag)
        if m:
            url = next(g for g in m.groups() if g is not None).decode("utf-8", "replace").strip()
            if url:
                out.append(urljoin(base_url, url))
    return out


_XML_PARSER = dict(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


def parse_discovery(body: bytes, base_url: str) -> tuple[str, list[str]] | None:
    """("sitemap" | "sitemapindex" | "feed", urls) for a sitemap or an RSS/Atom feed, else None."""
    try:
        root = lxml.etree.fromstring(
            body.lstrip(), parser=lxml.etree.XMLParser(**_XML_PARSER), base_url=base_url
        )
    except (lxml.etree.XMLSyntaxError, ValueError):
        return None
    if not isinstance(root.tag, str):
        return None
    kind = lxml.etree.QName(root).localname.lower()
    local = "local-name()"
    if kind == "urlset":
        return "sitemap", _texts(root.xpath(f"./*[{local}='url']/*[{local}='loc']/text()"), base_url)
    if kind == "sitemapindex":
        return "sitemapindex", _texts(root.xpath(f"./*[{local}='sitemap']/*[{local}='loc']/text()"), base_url)
    if kind in ("rss", "rdf"):  # RSS 2.0 (<rss><channel><item>) and RSS 1.0 (<rdf:RDF><item>)
        return "feed", _texts(root.xpath(f"//*[{local}='item']/*[{local}='link']/text()"), base_url)
    if kind == "feed":  # Atom: the entry's alternate link (a link without rel is an alternate)
        links = root.xpath(f"./*[{local}='entry']/*[{local}='link'][not(@rel) or @rel='alternate']")
        urls = []
        for link in links:
            href = link.get("href")
            if href:
                base = link.base or base_url  # honours xml:base
                urls.append(urljoin(base, href.strip()))
        return "feed", urls
    return None


def _texts(values: list[str], base_url: str) -> list[str]:
    return [urljoin(base_url, v.strip()) for v in values if v.strip()]
