"""Unit tests of the crawler's URL canonicalisation, scope, address policy, link/sitemap/feed parsing."""

import ipaddress

import pytest

from curation.addresses import AddressRefused, check_ips, refusal
from curation.crawl import CrawlConfig
from curation.crawl_http import CappedInflater, FetchError, gunzip_capped
from curation.links import html_links, parse_discovery, sniff_charset
from curation.urls import BadURL, Scope, canonicalize, remove_dot_segments
from minisigma.core.errors import UserError
from minisigma.core.recipes import parse_recipe


@pytest.mark.parametrize(
    "raw, canon",
    [
        ("HTTP://Example.COM", "http://example.com/"),
        ("http://example.com:80/a", "http://example.com/a"),
        ("https://example.com:443/a", "https://example.com/a"),
        ("https://example.com:8443/a", "https://example.com:8443/a"),
        ("http://example.com/a#section-2", "http://example.com/a"),
        ("http://example.com/p?b=2&a=1&a=0", "http://example.com/p?a=0&a=1&b=2"),
        ("http://example.com/p?&&b=2&", "http://example.com/p?b=2"),
        ("http://example.com/a/./b/../c", "http://example.com/a/c"),
        ("http://example.com/../../x", "http://example.com/x"),
        ("http://example.com/a/b/..", "http://example.com/a/"),
        ("http://example.com/%7Euser/%2fx%2F", "http://example.com/~user/%2Fx%2F"),
        ("http://example.com/a b", "http://example.com/a%20b"),
        ("http://user:pw@example.com/", "http://example.com/"),
        ("http://example.com./", "http://example.com/"),
        ("http://bücher.example/", "http://xn--bcher-kva.example/"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("  http://example.com/x  ", "http://example.com/x"),
    ],
)
def test_canonicalize(raw, canon):
    assert canonicalize(raw) == canon
    assert canonicalize(canon) == canon  # idempotent


@pytest.mark.parametrize("raw", ["ftp://example.com/", "mailto:a@b.c", "/relative", "http://", "http://h:99999/"])
def test_canonicalize_rejects(raw):
    with pytest.raises(BadURL):
        canonicalize(raw)


def test_spellings_of_one_page_dedup_to_one_url():
    spellings = [
        "http://Docs.Example.org:80/guide/./intro.html?lang=en&v=2#top",
        "http://docs.example.org/guide/sub/../intro.html?v=2&lang=en",
        "HTTP://DOCS.EXAMPLE.ORG/guide/intro.html?v=2&lang=en#bottom",
    ]
    assert len({canonicalize(s) for s in spellings}) == 1


def test_remove_dot_segments_rfc_examples():
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("/mid/content=5/../6") == "/mid/6"


def test_scope_hosts_prefixes_and_seed_default():
    s = Scope.build([], [], ["http://a.example:8000/x"])
    assert s.allows("http://a.example:8000/y") and not s.allows("http://a.example:8001/y")
    s = Scope.build(["a.example"], [], [])
    assert s.allows("http://a.example:8001/y") and not s.allows("http://b.example/")
    s = Scope.build([], ["http://b.example/docs"], [])
    assert s.allows("http://b.example/docs/x") and not s.allows("http://b.example/blog")


@pytest.mark.parametrize(
    "ip, why",
    [
        ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
        ("10.1.2.3", "private"), ("192.168.1.1", "private"), ("172.16.0.9", "private"), ("fd00::1", "private"),
        ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("::ffff:169.254.1.1", "link-local"),
        ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
        ("100.64.0.1", "reserved"), ("240.0.0.1", "reserved"),
    ],
)
def test_address_policy_refuses_non_global(ip, why):
    assert refusal(ipaddress.ip_address(ip), allow_loopback=False) == why


def test_allow_loopback_opens_loopback_only():
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert refusal(ipaddress.ip_address("::1"), allow_loopback=True) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) == "private"
    assert refusal(ipaddress.ip_address("169.254.169.254"), allow_loopback=True) == "link-local"
    assert refusal(ipaddress.ip_address("93.184.215.14"), allow_loopback=False) is None
    with pytest.raises(AddressRefused):  # one bad address among good ones is enough to refuse
        check_ips("mixed.example", ["93.184.215.14", "10.0.0.1"], allow_loopback=True)


def test_html_links_base_and_nofollow():
    page = b'<html><head><base href="http://h/docs/"></head><body><a href="a.html">a</a>' \
           b'<a href="/b">b</a><a href="mailto:x@y">m</a><a href="#top">t</a></body></html>'
    assert html_links(page, "http://h/index.html") == ["http://h/docs/a.html", "http://h/b"]
    nofollow = b'<html><head><meta name="robots" content="noindex, nofollow"></head><a href="/x">x</a></html>'
    assert html_links(nofollow, "http://h/") == []


def test_sniff_charset():
    assert sniff_charset(b"<meta charset='ISO-8859-1'>", None) == "iso-8859-1"
    assert sniff_charset(b"<p>x</p>", None) == "utf-8"
    assert sniff_charset(b"<meta charset='ISO-8859-1'>", "utf-8") == "utf-8"


def test_parse_sitemap_index_rss_and_atom():
    sm = b"""<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <url><loc>http://h/a</loc></url><url><loc> http://h/b </loc></url></urlset>"""
    assert parse_discovery(sm, "http://h/sitemap.xml") == ("sitemap", ["http://h/a", "http://h/b"])
    idx = b"""<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <sitemap><loc>http://h/s1.xml</loc></sitemap></sitemapindex>"""
    assert parse_discovery(idx, "http://h/i.xml") == ("sitemapindex", ["http://h/s1.xml"])
    rss = b"""<rss version="2.0"><channel><title>t</title><link>http://h/</link>
      <item><link>http://h/p1</link></item><item><link>/p2</link></item></channel></rss>"""
    assert parse_discovery(rss, "http://h/feed") == ("feed", ["http://h/p1", "http://h/p2"])
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><entry><link rel="edit" href="/e"/>
      <link href="/post/1"/></entry><entry><link rel="alternate" href="http://h/post/2"/></entry></feed>"""
    assert parse_discovery(atom, "http://h/atom") == ("feed", ["http://h/post/1", "http://h/post/2"])
    assert parse_discovery(b"<html><body>x</body></html>", "http://h/") is None
    assert parse_discovery(b"not xml at all", "http://h/") is None


def test_sitemap_parser_does_not_expand_external_entities(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xxe = f"""<!DOCTYPE u [<!ENTITY e SYSTEM "file://{secret}">]>
      <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>http://h/&e;</loc></url></urlset>"""
    found = parse_discovery(xxe.encode(), "http://h/s.xml")
    assert found is None or all("TOP-SECRET" not in u for u in found[1])


def test_capped_inflater_stops_a_bomb_early():
    import gzip

    bomb = gzip.compress(b"\0" * (8 * 2**20))
    assert len(bomb) < 20_000
    inflater = CappedInflater("gzip", cap=2**20)
    with pytest.raises(FetchError) as e:
        inflater.feed(bomb)
    assert e.value.kind == "decompression_bomb"
    assert len(inflater.out) <= 2**20 + 64 * 1024  # stopped within one step of the cap
    assert gunzip_capped(gzip.compress(b"hello"), 100) == b"hello"


def test_capped_inflater_deflate_raw_and_wrapped():
    import zlib

    data = b"x" * 1000
    wrapped = zlib.compress(data)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    raw_bytes = raw.compress(data) + raw.flush()
    for enc in (wrapped, raw_bytes):
        inf = CappedInflater("deflate", cap=5000)
        inf.feed(enc)
        assert inf.finish() == data
    with pytest.raises(FetchError) as e:
        CappedInflater("br", cap=10)
    assert e.value.kind == "bad_content_encoding"


def test_config_rejects_unknown_keys_and_anonymous_user_agent():
    with pytest.raises(UserError, match="crawl.yaml: max_pagez: unknown key"):
        parse_recipe({"max_pagez": 3}, CrawlConfig, "crawl.yaml")
    with pytest.raises(UserError, match="user_agent"):
        parse_recipe({"user_agent": "python-requests/2.0"}, CrawlConfig, "crawl.yaml")
    cfg = parse_recipe({"user_agent": "docbot/1.0 (+mailto:ops@example.org)", "allow_loopback": True}, CrawlConfig)
    assert cfg.robots_token == "docbot" and cfg.allow_loopback and cfg.respect_robots
