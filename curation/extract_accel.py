"""Faster, exact stand-ins for trafilatura's regex XPath expressions.

Profiled on the 400 localdocs pages of `minisigma bench curation` (trafilatura 2.3.1, fast mode):
about half of `trafilatura.extract` is spent evaluating the XPath expressions of
trafilatura/xpaths.py, and most of that in the ones using EXSLT `re:test(...)`. libxml2 evaluates
the XPath in C, but lxml implements `re:test` as a Python callback: for every candidate element and
every `re:test` in the predicate, libxml2 calls back into Python, which converts the attribute
node-set into Python "smart strings" (each holding a reference to its parent element), looks the
pattern up in a cache and runs `re.search`. OVERALL_DISCARD_XPATH alone makes three such calls per
div/p/span/... and three per element of any kind, on every subtree the main extractor tries.

Here each of those expressions is a plain Python predicate over the element's attributes, with
the same regular expressions precompiled (lxml's `re:test` is Python's `re.search` of the pattern,
so the matching is the same function), walked over the same nodes in the same (document) order:
the node lists are identical, so trafilatura deletes the same elements and returns byte-identical
text, with a fraction of the calls. Two XPath details are reproduced exactly:

* the string value of a missing attribute is "" (`re:test(@id, p)` tests "" when there is no id);
* `f(@id|@class, ...)` tests only the attribute that comes first in the source (XPath's string of a
  node-set is its first node in document order; for attributes of one element, their source order).

datatrove's `Trafilatura` step calls `trafilatura.extract` on the page string and has no setting
for this: it is an implementation difference, not an option. `accelerated()` swaps the stand-ins
into trafilatura's modules for the duration of a call and restores trafilatura's own objects after.
It only engages when trafilatura's expressions are exactly the ones these predicates were written
for (their source text is compared at import); with any other trafilatura version, trafilatura runs
unchanged. tests/curation/test_extract_accel.py checks node lists and texts against trafilatura's.
"""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from hashlib import sha1

from lxml import etree
from lxml import html as _lxml_html
from trafilatura import core as _core
from trafilatura import external as _external
from trafilatura import main_extractor as _main
from trafilatura import utils as _utils
from trafilatura import xpaths as _xp

def _first_of(el, a: str, b: str) -> str:
    """XPath string value of `@a|@b`: the attribute of the two that comes first in the source,
    "" when neither is present."""
    va, vb = el.get(a), el.get(b)
    if va is None:
        return vb or ""
    if vb is None:
        return va
    for k in el.keys():  # both present: source order decides
        if k == a:
            return va
        if k == b:
            return vb
    return va  # not reached: both keys are among el.keys()


def _s(v: str | None) -> str:
    return v or ""


# --- OVERALL_DISCARD_XPATH -----------------------------------------------------------------------
_OD0_TAGS = ("div", "item", "list", "p", "section", "span")
_OD0_CONSENT = re.compile(_xp._alt(_xp._CONSENT_ID_CLASS_TOKENS)).search
_OD0_ID = re.compile(_xp._alt(_xp._OVERALL_DISCARD_BOTH_TOKENS + _xp._OVERALL_DISCARD_ID_TOKENS)).search
_OD0_CLASS = re.compile(_xp._alt(_xp._OVERALL_DISCARD_BOTH_TOKENS + _xp._OVERALL_DISCARD_CLASS_TOKENS)).search


def _overall_discard_0(el) -> bool:
    get = el.get
    return (get("data-lp-replacement-content") is not None
            or "nav" in _s(get("role")).replace("N", "n")
            or "MostPopularStories" in _s(get("data-component"))
            or _OD0_CONSENT(_first_of(el, "id", "class")) is not None
            or _OD0_ID(_s(get("id"))) is not None
            or _OD0_CLASS(_s(get("class"))) is not None)


_OD1_HIDDEN = re.compile("hidden").search
_OD1_ID = re.compile("reader-comments|akismet").search
_OD1_CLASS = re.compile("^hide-|comments-title|nocomments|-reply-|message|akismet|suggest-links|-hide-|hide-print"
                        "| hidden| hide|noprint|notloaded").search


def _overall_discard_1(el) -> bool:
    get = el.get
    style = _s(get("style"))
    return (get("class") == "comments-title"
            or _first_of(el, "id", "class").startswith("reply-")
            or _OD1_HIDDEN(_first_of(el, "id", "style")) is not None
            or "display:none" in style or "display: none" in style
            or _OD1_ID(_s(get("id"))) is not None
            or _OD1_CLASS(_s(get("class"))) is not None
            or get("aria-hidden") == "true")


# --- PRECISION_DISCARD_XPATH[1] ------------------------------------------------------------------
_PD_BOTTOM = re.compile(r"(^|\s)bottom|bottom(\s|$)").search
_PD_LINK = re.compile(r"(^|\s)link(\s|$)").search


def _precision_discard_1(el) -> bool:
    first = _first_of(el, "id", "class")
    return (_PD_BOTTOM(first) is not None or _PD_LINK(first) is not None
            or "border" in _s(el.get("style")))


# --- REMOVE_COMMENTS_XPATH, REMOVE_COMMENTS_AND_LISTS_XPATH --------------------------------------
_RC_ID = re.compile(f"^(?:{_xp._COMMENTS_ID}|disqus_thread|dsq-comments)").search
_RC_ID_LISTS = re.compile(f"^(?:{_xp._COMMENTS_ID})").search
_RC_CLASS = re.compile(_xp._COMMENTS_CLASS).search
_RC_TAGS = ("div", "list", "section", "details")
_RCL_TAGS = _RC_TAGS + ("ol", "ul")


def _remove_comments(el) -> bool:
    return _RC_ID(_s(el.get("id"))) is not None or _RC_CLASS(_s(el.get("class"))) is not None


def _remove_comments_and_lists(el) -> bool:
    if not _remove_comments(el):
        return False
    return (el.tag not in ("ol", "ul") or _RC_ID_LISTS(_s(el.get("id"))) is not None
            or _RC_CLASS(_s(el.get("class"))) is not None)


# --- RAW_TREE_PRUNE_XPATH[0] ---------------------------------------------------------------------
_RT_TAGS = ("div", "section", "aside")
_RT_ANY = re.compile("mvp-post-add-(?:box|wrap)|infinite-?scroll").search
_RT_MVP = re.compile("mvp-post-add-(?:box|wrap)").search


def _raw_tree_prune_0(el) -> bool:
    i, c = _s(el.get("id")), _s(el.get("class"))
    if _RT_ANY(i) is None and _RT_ANY(c) is None:
        return False
    return next(el.iterdescendants("h1"), None) is None or _RT_MVP(i) is not None or _RT_MVP(c) is not None


# --- BODY_XPATH[0], [2], [3]: the main extractor takes the first match in document order ----------
_BX_TAGS = ("article", "div", "main", "section")
_B0_ID = re.compile(_xp._alt(_xp._ARTICLE_CONTENT_ID_TOKENS)).search
_B0_CLASS = re.compile(_xp._alt(_xp._ARTICLE_CONTENT_CLASS_TOKENS)).search
_B2_ID = re.compile(_xp._alt(_xp._STORY_ID_TOKENS)).search
_B2_FULLTEXT = re.compile("fulltext", re.IGNORECASE).search  # re:test(@class, 'fulltext', 'i')
_B2_CLASS = re.compile(_xp._alt(_xp._STORY_CLASS_TOKENS)).search
_B3_ID = re.compile(_xp._alt(_xp._MAIN_CONTENT_ID_TOKENS)).search
_B3_CLASS = re.compile(_xp._alt(_xp._MAIN_CONTENT_CLASS_TOKENS)).search


def _body_0(el) -> bool:
    c, i = el.get("class"), el.get("id")
    return (c == "post" or c == "entry" or el.get("itemprop") == "articleBody" or i == "articleContent"
            or _B0_ID(_s(i)) is not None or _B0_CLASS(_s(c)) is not None)


def _body_2(el) -> bool:
    c, i = el.get("class"), el.get("id")
    return (el.get("role") == "article" or i == "article" or i == "story"
            or c in ("postarea", "art-postcontent", "text", "cell", "story")
            or _B2_ID(_s(i)) is not None or _B2_FULLTEXT(_s(c)) is not None or _B2_CLASS(_s(c)) is not None)


def _body_3(el) -> bool:
    c, i = _s(el.get("class")), _s(el.get("id"))
    return (el.get("id") == "content" or el.get("class") == "content"
            or _B3_ID(i) is not None or _B3_CLASS(c) is not None
            or "main-content" in i.replace("C", "c").replace("M", "m")
            or "main-content" in c.replace("C", "c").replace("M", "m")
            or "page-content" in c.replace("C", "c").replace("P", "p"))


# --- the callback-free ones: lxml's C walk plus a Python test is still cheaper than libxml2's `.//*` --
def _teaser(el) -> bool:
    return "teaser" in _s(el.get("id")).replace("T", "t") or "teaser" in _s(el.get("class")).replace("T", "t")


def _caption(el) -> bool:
    return "caption" in _s(el.get("id")) or "caption" in _s(el.get("class"))


def _share_buttons(el) -> bool:
    return "elementor-share-buttons" in _s(el.get("class"))


def _body_4(el) -> bool:
    """`(.//*[self::article or self::div or self::section][starts-with(@class|@id|@role, 'main')])[1]
    |(.//main)[1]`: of the two, the one earlier in the document."""
    if el.tag == "main":
        return True
    return (_s(el.get("class")).startswith("main") or _s(el.get("id")).startswith("main")
            or _s(el.get("role")).startswith("main"))


_ELEMENT = etree.Element  # iterdescendants(_ELEMENT): elements only, as XPath's `*`
_CACHE_LIMIT = 200_000


class _Matcher:
    """Callable like an lxml XPath object: `m(tree)` -> the matching descendants in document order
    (`first=True`: a list of the first one, or empty, which is all `_extract` reads of `[1]`).

    The walk is lxml's `iterdescendants(*tags)` (a C loop over the tree, measured 5-6x cheaper than
    libxml2 evaluating even a callback-free `.//*[self::div or ...][@id or @class]` here). An element
    without attributes never matches (no pattern matches the empty string; the tests check this), and
    an element's result depends only on its attributes (with `by_tag`, also its tag), so results are
    memoised by the attribute list in source order: the same class/id strings recur on every page of
    a site and in every subtree trafilatura tries, and then no regex runs at all. `structural`
    predicates (those that look below the element) are not memoised."""

    __slots__ = ("tags", "pred", "first", "path", "by_tag", "structural", "bare", "cache")

    def __init__(self, original: etree.XPath, tags: tuple[str, ...] | None, pred, first: bool = False,
                 by_tag: bool = False, structural: bool = False, bare: bool = False):
        self.tags, self.pred, self.first, self.path = tags, pred, first, original.path
        self.by_tag, self.structural, self.bare, self.cache = by_tag, structural, bare, {}

    def _matches(self, tree):
        pred, cache, by_tag, structural, bare = self.pred, self.cache, self.by_tag, self.structural, self.bare
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        for el in (tree.iterdescendants(*self.tags) if self.tags else tree.iterdescendants(_ELEMENT)):
            items = el.items()
            if not items and not bare:  # `bare`: an element may match on its tag alone
                continue
            if structural:
                if pred(el):
                    yield el
                continue
            key = (el.tag, *items) if by_tag else tuple(items)
            hit = cache.get(key)
            if hit is None:
                hit = cache[key] = pred(el)
            if hit:
                yield el

    def __call__(self, tree) -> list:
        if self.first:
            return next(([el] for el in self._matches(tree)), [])
        return list(self._matches(tree))

    def __repr__(self) -> str:
        return f"_Matcher({' '.join(self.path.split())[:60]!r}...)"


def _digest(xpaths: list) -> str:
    return sha1("\x00".join(x.path for x in xpaths).encode()).hexdigest()


# The source text of the expressions the predicates above reproduce (trafilatura 2.3.1). Any change
# there disables the stand-ins instead of silently diverging.
_EXPECTED = {
    "OVERALL_DISCARD_XPATH": "a46f4f9d632aba692dbc1788794ffe60357b9222",
    "PRECISION_DISCARD_XPATH": "35467041e98ceb06ad7419607a5ff767f9274725",
    "REMOVE_COMMENTS_XPATH": "97b3a45900e751deb0c5446b7456a1274778d954",
    "REMOVE_COMMENTS_AND_LISTS_XPATH": "7e7d885e629a511978658d1420f16b1a4ac09d85",
    "RAW_TREE_PRUNE_XPATH": "f8947e28179af2893c73314f3e614af8bec78837",
    "BODY_XPATH": "3c4d8e234605b9e599de3e00abe93734ac8fc6be",
    "TEASER_DISCARD_XPATH": "db87f1790b6b744970979d0892598c4445ee10e1",
    "DISCARD_IMAGE_ELEMENTS": "1c87660c9ae9af66a3b616601505d9d8b4c5624b",
}


def _replacements() -> dict[str, list]:
    od, pd, raw, body = _xp.OVERALL_DISCARD_XPATH, _xp.PRECISION_DISCARD_XPATH, _xp.RAW_TREE_PRUNE_XPATH, _xp.BODY_XPATH
    return {
        "OVERALL_DISCARD_XPATH": [_Matcher(od[0], _OD0_TAGS, _overall_discard_0),
                                  _Matcher(od[1], None, _overall_discard_1)],
        "PRECISION_DISCARD_XPATH": [pd[0], _Matcher(pd[1], _OD0_TAGS, _precision_discard_1)],
        "TEASER_DISCARD_XPATH": [_Matcher(_xp.TEASER_DISCARD_XPATH[0], _OD0_TAGS, _teaser)],
        "DISCARD_IMAGE_ELEMENTS": [_Matcher(_xp.DISCARD_IMAGE_ELEMENTS[0], _OD0_TAGS, _caption)],
        "REMOVE_COMMENTS_XPATH": [_Matcher(_xp.REMOVE_COMMENTS_XPATH[0], _RC_TAGS, _remove_comments)],
        "REMOVE_COMMENTS_AND_LISTS_XPATH": [_Matcher(_xp.REMOVE_COMMENTS_AND_LISTS_XPATH[0], _RCL_TAGS,
                                                     _remove_comments_and_lists, by_tag=True)],
        "RAW_TREE_PRUNE_XPATH": [_Matcher(raw[0], _RT_TAGS, _raw_tree_prune_0, structural=True),
                                 _Matcher(raw[1], _RT_TAGS, _share_buttons)],
        "BODY_XPATH": [_Matcher(body[0], _BX_TAGS, _body_0, first=True), body[1],
                       _Matcher(body[2], _BX_TAGS, _body_2, first=True),
                       _Matcher(body[3], _BX_TAGS, _body_3, first=True),
                       _Matcher(body[4], _BX_TAGS, _body_4, first=True, by_tag=True, bare=True)],
    }


def digests() -> dict[str, str]:
    return {name: _digest(getattr(_xp, name)) for name in _EXPECTED}


SUPPORTED = digests() == _EXPECTED
_REPLACEMENTS = _replacements() if SUPPORTED else {}
# module -> the names it imported from trafilatura.xpaths that have a stand-in
_TARGETS = [(m, [n for n in _REPLACEMENTS if n in vars(m)]) for m in (_core, _main, _external)]


def _c_class_lookup() -> etree.ElementNamespaceClassLookup:
    """The element classes of lxml.html's HtmlElementClassLookup (HtmlElement; FormElement, InputElement,
    ... by tag; HtmlComment, ...), looked up in C. lxml.html's lookup is a Python method called for
    every element proxy lxml creates (half a million on the 400 bench pages): same classes, no call."""
    lookup = etree.ElementNamespaceClassLookup(etree.ElementDefaultClassLookup(
        element=_lxml_html.HtmlElement, comment=_lxml_html.HtmlComment, pi=_lxml_html.HtmlProcessingInstruction,
        entity=_lxml_html.HtmlEntity))
    by_tag = lookup.get_namespace(None)
    for tag, cls in _lxml_html.HtmlElementClassLookup()._element_classes.items():
        by_tag[tag] = cls  # the HTML parser lower-cases tag names, as the Python lookup does
    return lookup


_C_LOOKUP = _c_class_lookup() if SUPPORTED else None
_lock = threading.RLock()
_depth = 0


@contextmanager
def accelerated():
    """Within this block, trafilatura evaluates the stand-ins instead of its regex XPath objects
    (a no-op where SUPPORTED is False). Re-entrant; trafilatura's own objects are restored on exit."""
    global _depth
    if not SUPPORTED:
        yield
        return
    with _lock:
        if _depth == 0:
            for mod, names in _TARGETS:
                for n in names:
                    setattr(mod, n, _REPLACEMENTS[n])
            _utils.HTML_PARSER.set_element_class_lookup(_C_LOOKUP)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for mod, names in _TARGETS:
                    for n in names:
                        setattr(mod, n, getattr(_xp, n))
                _utils.HTML_PARSER.set_element_class_lookup(_lxml_html.HtmlElementClassLookup())  # as HTMLParser() sets it
