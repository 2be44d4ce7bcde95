"""Loopback servers that speak the real protocols of the sources, for tests/test_sources_*.py.

`LoopbackServer(app)` serves a WSGI-like callable `app(method, path, query, headers) -> (status,
headers, body)` on 127.0.0.1 and logs every request server-side (monotonic arrival time, path,
query, headers), so tests can check spacing and the User-Agent from the server's point of view.
"""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

HTTP_CONFIG = {"contact": "minisigma-tests@example.org", "min_interval_s": 0.05, "retries": 3,
               "backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10}


@dataclass
class Hit:
    t: float
    method: str
    path: str
    query: dict
    headers: dict


class LoopbackServer:
    def __init__(self, app):
        self.app = app
        self.log: list[Hit] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.log.append(Hit(time.monotonic(), "GET", parts.path, query, headers))
                status, hdrs, body = server.app("GET", parts.path, query, headers)
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "LoopbackServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --------------------------------------------------------------------------- OAI-PMH (arXiv)
OAI_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<OAI-PMH xmlns="http://www.openarchives.org/OAI/2.0/" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.openarchives.org/'
            'OAI/2.0/ http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n<responseDate>2025-01-15T10:00:00Z'
            '</responseDate>\n')


def arxiv_record(r: dict) -> str:
    """One <record> in arXiv's OAI metadata format; keys missing from `r` are left out."""
    if r.get("deleted"):
        return (f'<record><header status="deleted"><identifier>oai:arXiv.org:{r["id"]}</identifier>'
                f'<datestamp>{r["datestamp"]}</datestamp><setSpec>cs</setSpec></header></record>\n')
    parts = [f'<record><header><identifier>oai:arXiv.org:{r["id"]}</identifier><datestamp>{r["datestamp"]}'
             '</datestamp><setSpec>cs</setSpec></header><metadata>'
             '<arXiv xmlns="http://arxiv.org/OAI/arXiv/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xsi:schemaLocation="http://arxiv.org/OAI/arXiv/ http://arxiv.org/OAI/arXiv.xsd">'
             f'<id>{r["id"]}</id><created>{r["datestamp"]}</created>']
    if "authors" in r:
        parts.append("<authors>" + "".join(
            f"<author><keyname>{escape(k)}</keyname><forenames>{escape(f)}</forenames></author>"
            for f, k in r["authors"]) + "</authors>")
    if "title" in r:
        parts.append(f"<title>{escape(r['title'])}</title>")
    if "categories" in r:
        parts.append(f"<categories>{' '.join(r['categories'])}</categories>")
    parts.append("<license>http://creativecommons.org/licenses/by/4.0/</license>")
    if "abstract" in r:
        parts.append(f"<abstract>  {escape(r['abstract'])}\n</abstract>")
    parts.append("</arXiv></metadata></record>\n")
    return "".join(parts)


@dataclass
class OaiApp:
    """ListRecords over `records` (each with a datestamp), `page_size` per page, tokens 'tok-<offset>'."""

    records: list[dict]
    page_size: int = 3
    bad_tokens_once: set = field(default_factory=set)  # tokens answered with badResumptionToken once
    truncate: dict = field(default_factory=dict)  # offset -> keep only this many bytes of that page
    down_after: int | None = None  # answer 503 (Retry-After: 0) once this many requests were served
    requests: int = 0

    def __call__(self, method, path, query, headers):
        self.requests += 1
        if self.down_after is not None and self.requests > self.down_after:
            return 503, {"Retry-After": "0", "Content-Type": "text/plain"}, b"down for maintenance"
        if query.get("verb") != "ListRecords":
            return 200, {"Content-Type": "text/xml"}, self._error("badVerb", "Illegal verb")
        token = query.get("resumptionToken")
        if token:
            if token in self.bad_tokens_once:
                self.bad_tokens_once.discard(token)
                return 200, {"Content-Type": "text/xml"}, self._error("badResumptionToken",
                                                                      "The resumptionToken is invalid or expired")
            try:
                offset, lo, hi = token.split("|")[0][4:], token.split("|")[1], token.split("|")[2]
                offset = int(offset)
            except (ValueError, IndexError):
                return 200, {"Content-Type": "text/xml"}, self._error("badResumptionToken", "malformed")
        else:
            if query.get("metadataPrefix") != "arXiv":
                return 200, {"Content-Type": "text/xml"}, self._error("cannotDisseminateFormat", "no such format")
            offset, lo, hi = 0, query.get("from", "0000"), query.get("until", "9999")
        window = [r for r in self.records if lo <= r["datestamp"] <= hi]
        if not window:
            return 200, {"Content-Type": "text/xml"}, self._error("noRecordsMatch", "No records")
        page = window[offset: offset + self.page_size]
        nxt = offset + self.page_size
        tok = (f'<resumptionToken cursor="{offset}" completeListSize="{len(window)}">tok-{nxt}|{lo}|{hi}'
               '</resumptionToken>') if nxt < len(window) else \
            f'<resumptionToken cursor="{offset}" completeListSize="{len(window)}"/>'
        body = (OAI_HEAD + '<request verb="ListRecords">http://export.arxiv.org/oai2</request>\n<ListRecords>\n'
                + "".join(arxiv_record(r) for r in page) + tok + "</ListRecords>\n</OAI-PMH>\n").encode()
        if offset in self.truncate:
            body = body[: self.truncate[offset]]
        return 200, {"Content-Type": "text/xml; charset=utf-8"}, body

    @staticmethod
    def _error(code: str, text: str) -> bytes:
        return (OAI_HEAD + f'<request>http://export.arxiv.org/oai2</request>\n<error code="{code}">{text}</error>\n'
                "</OAI-PMH>\n").encode()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# --------------------------------------------------------------------------- DBLP search API
def dblp_hit(key: str, title: str, year: int, venue: str, ee=None, authors=("Ada Lovelace",), access="open",
             typ="Conference and Workshop Papers") -> dict:
    info = {"authors": {"author": [{"@pid": f"00/{i}", "text": a} for i, a in enumerate(authors)]
                        if len(authors) > 1 else {"@pid": "00/0", "text": authors[0]}},
            "title": title, "venue": venue, "year": str(year), "type": typ, "access": access, "key": key,
            "url": f"https://dblp.org/rec/{key}"}
    if ee is not None:
        info["ee"] = ee
    return {"@score": "1", "@id": str(abs(hash(key)) % 10**7), "info": info, "url": f"URL#{key}"}


@dataclass
class DblpApp:
    """/search/publ/api?q=stream:streams/<key>: year:<y>:&format=json&h=&f= over `papers[(key, year)]`."""

    papers: dict  # (stream key, year) -> list of hits
    broken: dict = field(default_factory=dict)  # (stream key, year, f) -> body served instead
    down_after: int | None = None
    requests: int = 0

    def __call__(self, method, path, query, headers):
        self.requests += 1
        if self.down_after is not None and self.requests > self.down_after:
            return 429, {"Retry-After": "0"}, b"Too Many Requests"
        if path != "/search/publ/api" or query.get("format") != "json":
            return 400, {"Content-Type": "text/plain"}, b"bad request"
        q = query["q"]
        stream = q.split("stream:streams/")[1].split(":")[0]
        year = int(q.split("year:")[1].split(":")[0])
        h, f = min(int(query.get("h", 30)), 1000), int(query.get("f", 0))
        if (stream, year, f) in self.broken:
            return 200, {"Content-Type": "application/json"}, self.broken[(stream, year, f)]
        hits = self.papers.get((stream, year), [])
        page = hits[f: f + h]
        body = {"result": {"query": q, "status": {"@code": "200", "text": "OK"},
                           "time": {"@unit": "msecs", "text": "1.00"}, "completions": {"@total": "0", "@computed": "0",
                                                                                       "@sent": "0"},
                           "hits": {"@total": str(len(hits)), "@computed": str(len(hits)), "@sent": str(len(page)),
                                    "@first": str(f), **({"hit": page} if page else {})}}}
        import json as _json
        return 200, {"Content-Type": "application/json"}, _json.dumps(body).encode()


# --------------------------------------------------------------------------- Stack Exchange dumps
def se_xml(table: str, rows: list[dict]) -> bytes:
    """A dump table in the official layout: <posts><row Attr="..." /></posts>, attributes escaped."""
    from xml.sax.saxutils import quoteattr

    lines = ['<?xml version="1.0" encoding="utf-8"?>', f"<{table}>"]
    for r in rows:
        lines.append("  <row " + " ".join(f"{k}={quoteattr(str(v))}" for k, v in r.items()) + " />")
    lines.append(f"</{table}>")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def write_7z(path, members: dict) -> None:
    import py7zr

    with py7zr.SevenZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(data, name)


# --------------------------------------------------------------------------- a technical blog
POST_TEXT = ("The page cache keeps recently read file blocks in memory so that a second read is served without "
             "touching the disk. When memory runs short, the kernel reclaims clean pages first and writes dirty "
             "pages back before it can reuse them. ")


@dataclass
class BlogApp:
    """A small blog: robots.txt, an RSS feed, a sitemap, posts, an about page, one broken post."""

    posts: int = 4
    base: str = ""  # set after the server starts (absolute links in the feed and sitemap)

    def page(self, title: str, body: str, links: str = "") -> bytes:
        return (f"<!DOCTYPE html><html><head><title>{title}</title><meta name='author' content='Blog Author'>"
                f"</head><body><nav><a href='/'>home</a> <a href='/about.html'>about</a></nav><article><h1>{title}"
                f"</h1>{body}</article>{links}<footer>(c) the author</footer></body></html>").encode()

    def __call__(self, method, path, query, headers):
        html = {"Content-Type": "text/html; charset=utf-8"}
        if path == "/robots.txt":
            return 200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n"
        if path == "/feed.xml":
            items = "".join(f"<item><title>Post {i}</title><link>{self.base}/posts/{i}.html</link>"
                            f"<pubDate>Mon, 0{i + 1} Jan 2024 00:00:00 GMT</pubDate></item>" for i in range(self.posts))
            return 200, {"Content-Type": "application/rss+xml"}, (
                '<?xml version="1.0"?><rss version="2.0"><channel><title>Systems blog</title>'
                f"<link>{self.base}/</link><description>kernels</description>{items}</channel></rss>").encode()
        if path == "/sitemap.xml":
            return 200, {"Content-Type": "application/xml"}, (
                '<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                f"<url><loc>{self.base}/about.html</loc></url><url><loc>{self.base}/posts/broken.html</loc></url>"
                "</urlset>").encode()
        if path == "/":
            links = "".join(f"<li><a href='/posts/{i}.html'>Post {i}</a></li>" for i in range(self.posts))
            return 200, html, self.page("Systems blog", "<p>Posts about systems.</p>",
                                        f"<ul>{links}<li><a href='/private/draft.html'>draft</a></li></ul>")
        if path.startswith("/posts/") and path.endswith(".html"):
            name = path[len("/posts/"):-5]
            if name == "broken":
                return 500, {"Content-Type": "text/plain"}, b"internal error"
            i = int(name)
            return 200, html, self.page(f"Post {i}: reclaim path {i}", "".join(
                f"<p>{POST_TEXT} Paragraph {j} of post {i}.</p>" for j in range(4)))
        if path == "/about.html":
            return 200, html, self.page("About", "<p>Short.</p>")
        return 404, {"Content-Type": "text/plain"}, b"not found"
