"""A real HTTP server on 127.0.0.1 for the crawler tests, with a request log and hostile routes.

Each route is a function of the request handler; `Site` keeps a server-side log of every request
(monotonic time, path, headers) so tests can prove what was, and was not, requested and when.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class Site:
    def __init__(self):
        self.routes: dict[str, Callable] = {}
        self.log: list[tuple[float, str, dict]] = []
        self.stop = threading.Event()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):  # noqa: N802
                with site._lock:
                    site.log.append((time.monotonic(), self.path, dict(self.headers)))
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                self._in_flight = True
                try:
                    route = site.routes.get(self.path)
                    if route is None:
                        send(self, 404, b"<html><body>not found</body></html>")
                    else:
                        route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the crawler hung up on a hostile route: that is the point
                finally:
                    self._leave()

            def send_response(self, code, message=None):
                # A request stops being in flight when its response starts: from then on the client
                # may read it whole and send its next request before this thread returns, so counting
                # until the handler returns would see two "in flight" from a client that waits.
                self._leave()
                super().send_response(code, message)

            def _leave(self):
                if getattr(self, "_in_flight", False):
                    self._in_flight = False
                    with site._lock:
                        site.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def page(self, path: str, body: bytes | str, ctype: str = "text/html; charset=utf-8", status: int = 200,
             headers: dict | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = lambda h: send(h, status, data, ctype, headers)

    def html(self, path: str, links: list[str] = (), text: str = "") -> None:
        anchors = "".join(f'<a href="{u}">{u}</a> ' for u in links)
        self.page(path, f"<html><head><title>{path}</title></head><body><p>{text or path}</p>{anchors}</body></html>")

    def requested(self, path: str) -> int:
        return sum(1 for _, p, _ in self.log if p == path)

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.log]

    def times(self, predicate: Callable[[str], bool] = lambda p: True) -> list[float]:
        return [t for t, p, _ in self.log if predicate(p)]

    def __enter__(self) -> "Site":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str = "text/html; charset=utf-8",
         headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def min_gap(times: list[float]) -> float:
    times = sorted(times)
    return min(b - a for a, b in zip(times, times[1:]))


def read_warc(path) -> list[dict]:
    """The records of a WARC file as plain dicts (payload = the stored, still content-encoded body)."""
    from warcio.archiveiterator import ArchiveIterator

    out = []
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            h = rec.rec_headers
            out.append({
                "type": rec.rec_type,
                "uri": h.get_header("WARC-Target-URI"),
                "id": h.get_header("WARC-Record-ID"),
                "concurrent": h.get_header("WARC-Concurrent-To"),
                "purpose": h.get_header("X-Crawl-Purpose"),
                "status": int(rec.http_headers.get_statuscode()) if rec.rec_type == "response" else None,
                "payload": rec.raw_stream.read(),
            })
    return out


def crawl_site(site: Site, paths: list[str], tmp_path, **cfg):
    """Crawl `paths` of `site` with a fast, loopback-allowed config (overridable); return (stats, records)."""
    from curation.crawl import CrawlConfig, crawl

    settings = dict(allow_loopback=True, per_host_rate=200.0, connect_timeout=2.0, read_timeout=2.0,
                    total_timeout=5.0, backoff_base=0.05, backoff_max=0.2)
    settings.update(cfg)
    warc = tmp_path / "crawl.warc.gz"
    stats = crawl([site.url(p) if p.startswith("/") else p for p in paths], CrawlConfig(**settings), warc)
    assert stats.unaccounted() == 0, stats.to_dict()
    return stats, read_warc(warc)
