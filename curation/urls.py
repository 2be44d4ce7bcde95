"""URL canonicalisation and crawl scope.

`canonicalize` maps every spelling of the same resource to one string, so the crawl frontier can
de-duplicate with a plain set: lowercase scheme and host (IDNA for non-ASCII hosts), default port
dropped, user-info and fragment removed, dot segments resolved (RFC 3986 5.2.4), percent-escapes
normalised (unreserved characters decoded, hex upper-cased, unsafe characters encoded), and query
parameters sorted. Hand-written rather than taken from courlan/w3lib because those either drop
query parameters by heuristics (courlan) or are not installed here; the rules are short and tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# characters left as they are when re-quoting a path or a query (reserved + '%' for escapes)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = "/?%:@!$&'()*+,;=-._~"


class BadURL(ValueError):
    """The string is not an absolute http(s) URL we can fetch."""


def _normalise_escapes(s: str, safe: str) -> str:
    def fix(m: re.Match) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    # quote() leaves existing '%XX' alone (since '%' is safe) and encodes spaces, non-ASCII, etc.
    return quote(_ESCAPE.sub(fix, s), safe=safe)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    segments = path.split("/")
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    result = "/".join(out)
    if path.startswith("/") and not result.startswith("/"):
        result = "/" + result
    return result or "/"


def canonicalize(url: str) -> str:
    """The canonical form of an absolute http(s) URL; raises BadURL for anything else."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:  # bad port, bad IPv6 literal
        raise BadURL(f"{url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BadURL(f"{url!r}: not an http(s) URL")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise BadURL(f"{url!r}: no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadURL(f"{url!r}: host is not a valid IDNA name") from None
    host = host.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = remove_dot_segments(_normalise_escapes(parts.path or "/", _PATH_SAFE))
    pieces = [p for p in parts.query.split("&") if p]
    query = "&".join(sorted(_normalise_escapes(p, _QUERY_SAFE) for p in pieces))
    return urlunsplit((scheme, netloc, path, query, ""))


def host_key(url: str) -> str:
    """scheme://host[:port] of a canonical URL: the unit of robots.txt, politeness and rate limits."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class Scope:
    """Which URLs the crawl may visit.

    A URL is in scope when its host is in `hosts` (an entry "host" matches any port, "host:port"
    only that port) -- or, when `prefixes` are given, when it starts with one of those canonical
    URL prefixes. With neither, the hosts of the seeds are the scope.
    """

    hosts: frozenset[str]
    prefixes: tuple[str, ...]

    @classmethod
    def build(cls, allowed_hosts: list[str], allowed_prefixes: list[str], seeds: list[str]) -> "Scope":
        prefixes = tuple(sorted(_canonical_prefix(p) for p in allowed_prefixes))
        hosts = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
        if not hosts and not prefixes:
            for s in seeds:
                try:
                    hosts.add(urlsplit(canonicalize(s)).netloc)
                except BadURL:
                    continue
        return cls(frozenset(hosts), prefixes)

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if self.hosts and (parts.netloc in self.hosts or (parts.hostname or "") in self.hosts):
            return True
        return any(url.startswith(p) for p in self.prefixes)


def _canonical_prefix(prefix: str) -> str:
    canon = canonicalize(prefix)
    # canonicalize adds "/" to a bare host; keep the user's trailing-slash intent otherwise
    if not prefix.rstrip().endswith("/") and canon.endswith("/") and urlsplit(prefix).path not in ("", "/"):
        canon = canon[:-1]
    return canon
