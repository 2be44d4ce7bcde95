"""One HTTP exchange under the crawler's limits (aiohttp, no automatic redirects or decompression).

`fetch_once` sends one GET and returns an `Exchange` or raises `FetchError(kind)`. It enforces:
a connect timeout and a per-read timeout (aiohttp's ClientTimeout), a total deadline for the
whole exchange headers-to-last-byte (so a server that drips one byte a second cannot hold the
crawl), the body cap while streaming on the raw bytes AND on the decompressed bytes (the raw stream
is read with aiohttp's auto-decompression off and inflated here in bounded steps, so a gzip bomb
costs at most `max_bytes` of memory), and a content-type check before the body is read.
"""

from __future__ import annotations

import email.utils
import time

import asyncio
import zlib
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

from curation.addresses import AddressRefused

_STEP = 64 * 1024


class FetchError(Exception):
    """A fetch that failed; `kind` is the counter it is reported under."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail


@dataclass
class Exchange:
    url: str
    status: int
    reason: str
    version: str  # "HTTP/1.1"
    headers: list[tuple[str, str]]  # response headers as received (minus Transfer-Encoding)
    request_line: str
    request_headers: list[tuple[str, str]]
    raw_body: bytes  # as on the wire (still content-encoded)
    body: bytes  # content-decoded
    mime: str
    charset: str | None
    ip: str | None = None
    elapsed: float = 0.0
    extra: dict = field(default_factory=dict)
    retried: list[int] = field(default_factory=list)  # statuses of the earlier attempts (429/5xx) at this URL

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class CappedInflater:
    """Content-Encoding decoder that refuses to produce more than `cap` bytes."""

    def __init__(self, encoding: str, cap: int):
        enc = encoding.strip().lower()
        self.cap = cap
        self.out = bytearray()
        self._mode = enc
        if enc in ("", "identity"):
            self._d = None
        elif enc in ("gzip", "x-gzip"):
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._d = "pending"  # zlib-wrapped or raw deflate: decided on the first bytes
        else:
            raise FetchError("bad_content_encoding", f"unsupported Content-Encoding {encoding!r}")

    def feed(self, data: bytes) -> None:
        if self._d is None:
            self._append(data)
            return
        if self._d == "pending":
            wrapped = len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        try:
            while data:
                chunk = self._d.decompress(data, _STEP)
                self._append(chunk)
                data = self._d.unconsumed_tail
        except zlib.error as e:
            raise FetchError("bad_content_encoding", str(e)) from None

    def finish(self) -> bytes:
        if self._d not in (None, "pending"):
            try:
                self._append(self._d.flush(_STEP))
            except zlib.error as e:
                raise FetchError("bad_content_encoding", str(e)) from None
        return bytes(self.out)

    def _append(self, chunk: bytes) -> None:
        self.out += chunk
        if len(self.out) > self.cap:
            if self._d is None:
                raise FetchError("too_large", f"body over {self.cap} bytes")
            raise FetchError("decompression_bomb", f"{self._mode} body inflates past {self.cap} bytes")


def gunzip_capped(data: bytes, cap: int) -> bytes:
    """Inflate a gzip file (e.g. sitemap.xml.gz) without letting it grow past `cap` bytes."""
    inflater = CappedInflater("gzip", cap)
    inflater.feed(data)
    return inflater.finish()


def _content_type(resp: aiohttp.ClientResponse) -> tuple[str, str | None]:
    if "Content-Type" not in resp.headers:
        return "", None
    return resp.content_type.lower(), resp.charset


async def fetch_once(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    total_timeout: float,
    type_ok,  # (status, mime) -> bool, checked before the body is read
) -> Exchange:
    loop = asyncio.get_running_loop()
    start = loop.time()
    target = URL(url, encoded=True)
    try:
        async with asyncio.timeout(total_timeout):
            async with session.get(target, allow_redirects=False) as resp:
                mime, charset = _content_type(resp)
                if not type_ok(resp.status, mime):
                    raise FetchError("bad_content_type", mime or "(none)")
                declared = resp.content_length
                if declared is not None and declared > max_bytes:
                    raise FetchError("too_large", f"Content-Length {declared} > {max_bytes}")
                peer = resp.connection.transport.get_extra_info("peername") if resp.connection else None
                inflater = CappedInflater(resp.headers.get("Content-Encoding", ""), max_bytes)
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(_STEP):
                    raw += chunk
                    if len(raw) > max_bytes:
                        raise FetchError("too_large", f"body over {max_bytes} bytes")
                    inflater.feed(chunk)
                body = inflater.finish()
                req = resp.request_info
                path = target.raw_path_qs
                return Exchange(
                    url=url,
                    status=resp.status,
                    reason=resp.reason or "",
                    version=f"HTTP/{resp.version.major}.{resp.version.minor}" if resp.version else "HTTP/1.1",
                    # the body is stored de-chunked, so the chunked framing header would lie
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers
                             if k.lower() != b"transfer-encoding"],
                    request_line=f"GET {path} HTTP/1.1",
                    request_headers=[("Host", target.raw_authority)]
                    + [(k, v) for k, v in req.headers.items() if k.lower() != "host"],
                    raw_body=bytes(raw),
                    body=body,
                    mime=mime,
                    charset=charset,
                    ip=peer[0] if peer else None,
                    elapsed=loop.time() - start,
                )
    except FetchError:
        raise
    except TimeoutError as e:  # aiohttp's connect/read timeouts subclass it; so does the deadline
        raise FetchError("timeout", type(e).__name__) from None
    except aiohttp.ClientConnectorError as e:
        if isinstance(e.__cause__, AddressRefused) or isinstance(getattr(e, "os_error", None), AddressRefused):
            raise FetchError("refused_address", str(e)) from None
        raise FetchError("connection", str(e)) from None
    except aiohttp.ClientResponseError as e:  # malformed status line / headers over the size limits
        raise FetchError("bad_response", e.message) from None
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, OSError) as e:
        raise FetchError("connection", str(e) or type(e).__name__) from None
    except aiohttp.InvalidURL as e:
        raise FetchError("bad_url", str(e)) from None
    except aiohttp.ClientError as e:
        raise FetchError("connection", str(e) or type(e).__name__) from None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date. None when absent or unparsable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))
