"""curation.extract_accel: the stand-ins for trafilatura's regex XPath filters select exactly the nodes
trafilatura's own expressions select, and extraction through them gives byte-identical text.

Real pages: the HTML documentation installed under /usr/share/doc (Debian packages) and, where a
localdocs crawl is cached, its pages; plus generated pages whose id/class/style/role values are drawn
from the very tokens the expressions test (in random attribute order, with case variants), so every
branch of every predicate is exercised. No timing here: the speed is measured by `minisigma bench curation`.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trafilatura
from lxml import html as lxml_html
from trafilatura import core as tcore
from trafilatura import main_extractor as tmain
from trafilatura import utils as tutils
from trafilatura import xpaths as xp

import curation.extract_accel as accel
from curation.extract import ExtractConfig, decode_html, extract_html

KW = dict(favor_precision=True, include_tables=True, include_comments=False, deduplicate=False)


def _spread(items: list, n: int) -> list:
    return items if len(items) <= n else [items[int(i * len(items) / n)] for i in range(n)]


def _html_files(root: Path, max_bytes: int) -> list[Path]:
    return sorted(p for p in root.rglob("*.htm*") if p.is_file() and p.stat().st_size <= max_bytes)


def real_pages(n: int, max_bytes: int = 120_000) -> list[tuple[str, str]]:
    """n pages spread over the installed docs (and the localdocs cache), up to max_bytes each (the
    multi-megabyte single-page manuals take seconds each and add nothing the smaller ones lack)."""
    files = _html_files(Path("/usr/share/doc"), max_bytes)
    cache = Path.home() / ".cache/minisigma/localdocs/root"
    if cache.is_dir():
        files += _spread(_html_files(cache, max_bytes), 2 * n)
    pages = []
    for p in _spread(files, n):
        text, _ = decode_html(p.read_bytes(), "text/html")
        pages.append((f"http://docs.test/{p.name}", text))
    return pages


TOKENS = ["nav", "Nav", "navbar", "menu", "sidebar", "share", "shariff", "social", "viral", "newsletter", "cookie",
          "tags", "tag-list", "banner", "breadcrumb", "bread-crumb", "button", "author", "byline", "footer", "Footer",
          "related", "premium", "ad-slot", "top ad-x", " ad ", "x-ad-y", "dfpAd", "outbrain", "paid-content",
          "widget", "meta", "rating", "slide", "overlay", "options", "expand", "yin", "hidden", "hide-me",
          "x hide", "noprint", "message", "akismet", "reply-to", "comments-title", "comment", "Comments",
          "commentary", "comol", "disqus_thread", "post-comments", "article-comments", "bottom", "page-bottom",
          "bottom-bar", "padding-bottom-lg", "link", "permalink", "teaser", "Teaser", "caption", "figcaption",
          "article-body", "articleBody", "post-content", "entry-content", "story-body", "primary", "fulltext",
          "FullText", "main-content", "Main-Content", "page-content", "Page-Content", "content-main", "content",
          "main", "mainarea", "post", "entry", "text", "story", "mvp-post-add-box", "infinite-scroll",
          "elementor-share-buttons", "elementor-widget", "jp-relatedposts", "plain", "intro", ""]
STYLES = ["display:none", "display: none", "border: 1px", "color: red", "visibility:hidden"]
TAGS = ["div", "p", "span", "section", "list", "item", "article", "main", "aside", "details", "ol", "ul", "li",
        "header", "table", "h1", "a"]


def generated_page(rng: random.Random, n: int = 400) -> str:
    """A page of nested elements with id/class/style/role/... drawn from TOKENS, attributes in random order."""
    def attrs() -> str:
        cand = []
        if rng.random() < 0.6:
            cand.append(("class", " ".join(rng.sample(TOKENS, rng.randint(1, 3))).strip()))
        if rng.random() < 0.4:
            cand.append(("id", rng.choice(TOKENS)))
        if rng.random() < 0.15:
            cand.append(("style", rng.choice(STYLES)))
        if rng.random() < 0.1:
            cand.append((rng.choice(["role", "itemprop", "aria-hidden", "data-component",
                                     "data-lp-replacement-content"]),
                         rng.choice(["navigation", "Navigation", "main", "article", "articleBody", "true",
                                     "MostPopularStories", "x"])))
        rng.shuffle(cand)
        return "".join(f' {k}="{v}"' for k, v in cand)

    parts, stack = ["<html><head><title>t</title></head><body>"], []
    for i in range(n):
        if stack and rng.random() < 0.35:
            parts.append(f"</{stack.pop()}>")
        tag = rng.choice(TAGS)
        words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "epsilon"]) for _ in range(rng.randint(0, 30)))
        parts.append(f"<{tag}{attrs()}>{words} {i}")
        if tag in ("a", "h1") or rng.random() < 0.3:
            parts.append(f"</{tag}>")
        else:
            stack.append(tag)
    parts += [f"</{t}>" for t in reversed(stack)] + ["</body></html>"]
    return "".join(parts)


def generated_pages(n: int) -> list[tuple[str, str]]:
    rng = random.Random(16)
    return [(f"http://gen.test/{i}.html", generated_page(rng)) for i in range(n)]


def test_supported_on_the_installed_trafilatura():
    """The stand-ins are active: trafilatura's expressions are the ones they were written for."""
    assert accel.SUPPORTED, accel.digests()
    with accel.accelerated():
        assert tmain.OVERALL_DISCARD_XPATH is not xp.OVERALL_DISCARD_XPATH
        assert tcore.REMOVE_COMMENTS_AND_LISTS_XPATH is not xp.REMOVE_COMMENTS_AND_LISTS_XPATH


def test_trafilatura_objects_restored_after_the_block_even_on_error():
    with pytest.raises(RuntimeError):
        with accel.accelerated():
            with accel.accelerated():  # re-entrant
                pass
            assert tmain.BODY_XPATH is not xp.BODY_XPATH
            raise RuntimeError("boom")
    for mod, names in accel._TARGETS:
        for name in names:
            assert getattr(mod, name) is getattr(xp, name)
    assert type(lxml_html.fromstring("<html><body><p>x</p></body></html>", parser=tutils.HTML_PARSER)[0][0]) \
        is lxml_html.HtmlElement


def test_predicates_never_match_an_element_without_attributes():
    """What lets the walk skip attribute-less elements (and memoise by attributes)."""
    for name, matchers in accel._REPLACEMENTS.items():
        for m in matchers:
            if isinstance(m, accel._Matcher) and not m.bare:
                for tag in m.tags or ("div", "p", "span", "form"):
                    assert m.pred(lxml_html.Element(tag)) is False, (name, tag)


def test_same_element_classes_under_the_c_lookup():
    page = "<html><body><form><input name=a><select></select><textarea></textarea><label>l</label></form>" \
           "<div>d</div></body></html>"
    plain = [type(e) for e in lxml_html.fromstring(page, parser=tutils.HTML_PARSER).iter()]
    with accel.accelerated():
        fast = [type(e) for e in lxml_html.fromstring(page, parser=tutils.HTML_PARSER).iter()]
    assert fast == plain and lxml_html.FormElement in fast and lxml_html.InputElement in fast


@pytest.mark.parametrize("source", ["real", "generated"])
def test_stand_ins_select_the_same_nodes_as_trafilatura(source):
    """On every tree, each stand-in returns the node list of the XPath it replaces (for the `[1]`
    expressions: its first node, which is all trafilatura reads)."""
    pages = real_pages(15) if source == "real" else generated_pages(12)
    assert len(pages) >= 10
    checked = 0
    for _url, page in pages:
        tree = tutils.load_html(page)
        if tree is None:
            continue
        for variant in (tree, trafilatura.htmlprocessing.convert_tags(trafilatura.htmlprocessing.tree_cleaning(
                tree.__copy__(), trafilatura.settings.Extractor(precision=True, comments=False)),
                trafilatura.settings.Extractor(precision=True, comments=False))):
            for name, matchers in accel._REPLACEMENTS.items():
                for original, m in zip(getattr(xp, name), matchers):
                    if m is original:
                        continue
                    want = original(variant)
                    got = m(variant)
                    assert got == (want[:1] if m.first else want), (name, m, _url)
                    checked += len(want)
    assert checked > 50  # the expressions did select nodes


@pytest.mark.parametrize("fast", [True, False])
def test_texts_identical_to_plain_trafilatura_extract(fast):
    """extract_html (the stand-ins) against trafilatura.extract itself, with our settings."""
    pages = real_pages(15) + generated_pages(6)
    kept = 0
    for url, page in pages:
        plain = trafilatura.extract(page, url=url, fast=fast, **KW) or ""
        ours, _ = extract_html(page, url, ExtractConfig(fast=fast, fast_fallback=False))
        assert ours == plain, url
        kept += bool(plain)
    assert kept >= 10


def test_default_mode_identical_to_plain_trafilatura_with_its_fallback():
    """The defaults (fast, and the full algorithm for a page fast mode returns nothing for)."""
    for url, page in real_pages(12):
        plain = trafilatura.extract(page, url=url, fast=True, **KW) or ""
        if not plain.strip():
            plain = trafilatura.extract(page, url=url, fast=False, **KW) or ""
        assert extract_html(page, url, ExtractConfig())[0] == plain, url


@pytest.mark.slow
def test_texts_identical_on_many_real_pages():
    """The same check on more pages, in both modes (run with -m slow)."""
    for url, page in real_pages(150, max_bytes=1_000_000) + generated_pages(40):
        for fast in (True, False):
            plain = trafilatura.extract(page, url=url, fast=fast, **KW) or ""
            assert extract_html(page, url, ExtractConfig(fast=fast, fast_fallback=False))[0] == plain, (url, fast)
