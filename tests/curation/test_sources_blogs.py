"""Blogs adapter end to end: a loopback blog with robots.txt, an RSS feed, a sitemap and posts,
through `minisigma curate`'s shared crawl (WARC) and extract stages."""

from __future__ import annotations

import yaml

from curation.pipeline import curate
from curation.recipe import load
from minisigma.core import manifest
from minisigma.core.shards import iter_docs
from tests.sources_fixtures import BlogApp, LoopbackServer

CRAWL = {"allow_loopback": True, "per_host_rate": 50.0, "retries": 1, "backoff_base": 0.01, "backoff_max": 0.05,
         "user_agent": "minisigma-test/0.1 (+mailto:blog-tests@example.org)"}


def blog_manifest(tmp_path, base: str):
    p = tmp_path / "blogs.yaml"
    p.write_text(yaml.safe_dump({"description": "test", "sites": [
        {"name": "systems-blog", "home": f"{base}/", "feeds": [f"{base}/feed.xml"], "sitemaps": [f"{base}/sitemap.xml"],
         "category": "os_kernel", "license": "CC BY 4.0"}]}))
    return p


def curate_blogs(tmp_path, manifest_path, run):
    """`minisigma curate` of a recipe with the blogs source alone (no refine), in this process. The
    recipe's own crawl and extract sections would fetch one page and keep none: the blog's sites are
    crawled and extracted with the blogs section's settings."""
    p = tmp_path / "blogs-recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "blogs", "ray": {"executor": "local"}, "sources": [
        {"type": "blogs", "manifest": str(manifest_path), "crawl": CRAWL, "extract": {"min_chars": 200}}],
        "crawl": {"max_pages": 1}, "extract": {"min_chars": 100_000}}))
    curate(load(p), run, progress=False)
    return manifest.read_json(run / "crawl" / "manifest.json"), manifest.read_json(run / "extract" / "manifest.json")


def test_blog_crawled_from_feed_and_sitemap_into_documents(tmp_path):
    app = BlogApp(posts=4)
    run = tmp_path / "run"
    with LoopbackServer(app) as srv:
        app.base = srv.url
        crawl, m = curate_blogs(tmp_path, blog_manifest(tmp_path, srv.url), run)
        paths = [h.path for h in srv.log]
    assert not (run / "sources").exists()  # the blog's pages went through the shared crawl and extract
    docs = {d["url"]: d for d in iter_docs(run / "extract")}
    assert sorted(docs) == [f"{srv.url}/posts/{i}.html" for i in range(4)]
    d = docs[f"{srv.url}/posts/2.html"]
    assert d["source"] == "blogs" and "page cache keeps recently read" in d["text"]
    md = d["metadata"]
    assert md["category"] == "os_kernel" and md["site"] == "systems-blog" and md["license"] == "CC BY 4.0"
    assert md["title"].startswith("Post 2") and md["warc"] == "00000.warc.gz"
    assert "/private/draft.html" not in paths  # robots.txt honoured
    assert paths.count("/feed.xml") == 1 and paths.count("/sitemap.xml") == 1
    c = m["counts"]
    assert c["dropped"].get("too_short", 0) >= 2  # home and about pages are too short to keep
    assert crawl["counts"]["dropped"]["robots_denied"] == 1
    assert crawl["counts"]["quarantined"] == {"error:http_5xx_gave_up": 1}  # the broken post is counted
    assert c["dropped"]["http_500"] == 1  # its two attempts are one record
    assert crawl["errors"] == [{"shard": "00000.warc.gz", "url": f"{srv.url}/posts/broken.html",
                                "site": "systems-blog", "reason": "error:http_5xx_gave_up",
                                "detail": "2 attempt(s), statuses 500 500; no retries left"}]
    assert crawl["sites"][0]["name"] == "systems-blog" and crawl["sites"][0]["crawl"]["max_pages"] == 1000
    assert manifest.verify(run) == []
    assert all(h.headers["user-agent"] == CRAWL["user_agent"] for h in srv.log)
    # Extraction run again (its shard removed) reads the finished WARC instead of crawling again.
    (run / "extract" / ".parts" / "00000.json").unlink()
    with LoopbackServer(app) as srv2:
        crawl2, m2 = curate_blogs(tmp_path, blog_manifest(tmp_path, srv.url), run)
        assert srv2.log == []
    assert m2["counts"] == m["counts"] and m2["counts"]["out"] == 4
    assert crawl2["errors"] == crawl["errors"]  # the crawl's failures stay listed
    assert manifest.verify(run) == []


def test_a_damaged_warc_is_crawled_again(tmp_path):
    app = BlogApp(posts=2)
    run = tmp_path / "run"
    with LoopbackServer(app) as srv:
        app.base = srv.url
        _, first = curate_blogs(tmp_path, blog_manifest(tmp_path, srv.url), run)
        warc = run / "crawl" / "00000.warc.gz"
        warc.write_bytes(warc.read_bytes()[:-100])  # truncated after the crawl finished
        n = len(srv.log)
        crawl, m = curate_blogs(tmp_path, blog_manifest(tmp_path, srv.url), run)
        assert len(srv.log) > n  # crawled again, not extracted from the damaged WARC
    assert [r["shard"] for r in crawl["repairs"]] == ["00000.warc.gz"]
    assert m["counts"] == first["counts"] and manifest.verify(run) == []


def build_deb(tmp_path, name: str, files: dict[str, str]):
    """A real Debian package (dpkg-deb --build) holding `files`, put where localdocs' cache finds it."""
    import subprocess

    src = tmp_path / f"{name}-src"
    (src / "DEBIAN").mkdir(parents=True)
    (src / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: all\n"
                                            "Maintainer: Tests <tests@example.org>\nDescription: test articles\n")
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    debs = tmp_path / "cache" / "localdocs" / "debs"
    debs.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(src), str(debs / f"{name}_1.0_all.deb")],
                   check=True, capture_output=True)


def test_blog_site_shipped_in_a_package_is_served_and_crawled(tmp_path, monkeypatch):
    from tests.sources_fixtures import POST_TEXT

    article = ("<html><head><title>What's new {i}</title></head><body><article><h1>What's new {i}</h1>"
               + "".join(f"<p>{POST_TEXT} Part {j}.</p>" for j in range(4)) + "</article></body></html>")
    files = {f"usr/share/doc/news/html/whatsnew/{i}.html": article.format(i=i) for i in ("3.1", "3.2")}
    files["usr/share/doc/news/html/whatsnew/index.html"] = "<html><body><a href='3.1.html'>3.1</a></body></html>"
    files["usr/share/doc/news/html/other.html"] = article.format(i="not an article")
    build_deb(tmp_path, "newsdoc", files)
    monkeypatch.setenv("MINISIGMA_CACHE", str(tmp_path / "cache"))
    man = tmp_path / "local.yaml"
    man.write_text(yaml.safe_dump({"sites": [{"name": "news", "package": "newsdoc", "root": "usr/share/doc/news/html",
                                              "home": "whatsnew/index.html", "pages": ["whatsnew/3.*.html"],
                                              "category": "languages_compilers"}]}))
    _, m = curate_blogs(tmp_path, man, tmp_path / "run")
    docs = sorted(iter_docs(tmp_path / "run" / "extract"), key=lambda d: d["url"])
    assert [d["url"] for d in docs] == [f"localdocs://newsdoc/usr/share/doc/news/html/whatsnew/3.{i}.html"
                                        for i in (1, 2)]  # port-free locators; index and other.html out of scope
    assert all(d["source"] == "blogs" and d["metadata"]["package"] == "newsdoc" and d["metadata"]["version"] == "1.0"
               for d in docs)
    assert m["counts"]["out"] == 2 and manifest.verify(tmp_path / "run") == []
