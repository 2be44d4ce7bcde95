"""Writing crawl exchanges to a gzipped WARC file with warcio.

Each exchange becomes a `request` record and a `response` record that name each other with
WARC-Concurrent-To. The response record holds the response exactly as received (status line,
headers, content-encoded body) except that chunked transfer framing is removed (the body is
stored de-chunked and the Transfer-Encoding header dropped), so warcio and other readers can
parse it; readers decode Content-Encoding themselves (warcio's `content_stream()` does).

A fetch retried after a 429 or 5xx stays ONE record of its purpose (page, robots ...): the last
attempt, with `X-Crawl-Attempts: N` and `X-Crawl-Retried: <statuses of the earlier attempts>`.
The earlier attempts are kept for the record under the purpose "retry" (`X-Crawl-Attempt: n`),
which readers of content (the extract stage) skip like the rest of the crawl's plumbing.
"""

from __future__ import annotations

import io
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from curation.crawl_http import Exchange


class WarcLog:
    def __init__(self, path: Path, info: dict[str, str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "wb")
        self._w = WARCWriter(self._fh, gzip=True)
        self.records = 0
        rec = self._w.create_warcinfo_record(path.name, info)
        self._w.write_record(rec)
        self.records += 1

    def write(self, ex: Exchange, purpose: str, attempt: int | None = None) -> None:
        """Append the request/response pair of one exchange; `purpose` is page|robots|sitemap|feed|redirect|
        retry|...; `attempt` numbers a "retry" record (1 = the first attempt)."""
        resp_headers = StatusAndHeaders(f"{ex.status} {ex.reason}".strip(), ex.headers, protocol=ex.version)
        extra = {"X-Crawl-Purpose": purpose}
        if attempt is not None:
            extra["X-Crawl-Attempt"] = str(attempt)
        elif ex.retried:
            extra["X-Crawl-Attempts"] = str(len(ex.retried) + 1)
            extra["X-Crawl-Retried"] = " ".join(str(s) for s in ex.retried)
        if ex.ip:
            extra["WARC-IP-Address"] = ex.ip
        response = self._w.create_warc_record(
            ex.url, "response", payload=io.BytesIO(ex.raw_body), http_headers=resp_headers,
            warc_headers_dict=extra,
        )
        req_headers = StatusAndHeaders(ex.request_line, ex.request_headers, is_http_request=True)
        request = self._w.create_warc_record(
            ex.url, "request", payload=io.BytesIO(b""), http_headers=req_headers,
            warc_headers_dict={"WARC-Concurrent-To": response.rec_headers.get_header("WARC-Record-ID")},
        )
        response.rec_headers.add_header("WARC-Concurrent-To", request.rec_headers.get_header("WARC-Record-ID"))
        self._w.write_record(request)
        self._w.write_record(response)
        self.records += 2

    def close(self) -> None:
        self._fh.close()
