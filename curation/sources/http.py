"""A polite HTTP client for the metadata APIs (arXiv OAI-PMH, DBLP search).

What the APIs' terms ask for, in one place:
  * a User-Agent that names the tool and a contact (`HttpConfig.contact`, from the recipe);
  * a minimum pause between requests to one host (arXiv asks for >= 3 s and one connection at a
    time), measured from the end of one request to the start of the next. It is kept in a lock file
    shared by every process of a run (`spacing_dir`), so parallel Ray tasks on one machine -- or on
    a cluster with a shared run directory -- neither overlap nor bunch their requests;
  * retries with exponential backoff on 429 and 5xx and on connection errors, honouring
    Retry-After (seconds or an HTTP date), giving up with `FetchFailed` after `retries`.

`requests` rather than the crawler's aiohttp client: API harvests are strictly sequential (each
page names the next), so a blocking client is the simpler tool.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from curation.crawl_http import retry_after_seconds  # noqa: F401  (re-exported for the adapters)
from pydantic import Field, field_validator

from minisigma import __version__
from minisigma.core.recipes import Section

RETRY_STATUS = {429, 500, 502, 503, 504}
PROJECT_URL = "https://github.com/minisigma/minisigma"


class HttpConfig(Section):
    """How an adapter talks to an API: identity, spacing, retries, timeouts."""

    contact: str = Field(..., description="an e-mail address or URL the API operator can reach you at")
    min_interval_s: float = Field(3.0, ge=0, description="seconds between two requests to one host")
    retries: int = Field(5, ge=0, description="extra attempts after a 429/5xx/connection error")
    backoff_s: float = Field(5.0, ge=0, description="attempt n waits backoff_s * 2**n (capped)")
    backoff_max_s: float = Field(300.0, ge=0)
    max_retry_after_s: float = Field(900.0, ge=0, description="a longer Retry-After gives up instead")
    timeout_s: float = Field(60.0, gt=0, description="connect and read timeout of one request")

    @field_validator("contact")
    @classmethod
    def _contact(cls, v: str) -> str:
        v = v.strip()
        if "@" not in v and "://" not in v:
            raise ValueError("must be an e-mail address or a URL")
        return v

    @property
    def user_agent(self) -> str:
        return f"minisigma/{__version__} (+{PROJECT_URL}; {self.contact})"


class FetchFailed(RuntimeError):
    """The request kept failing after all retries (the task fails; its checkpoint allows a resume)."""


@dataclass
class Fetched:
    url: str
    status: int
    body: bytes
    fetched_at: float
    content_type: str


class Spacing:
    """Keeps `interval` seconds between the end of one request to a host and the start of the next,
    across processes: the end time is stored in a small file under an exclusive flock that is held
    for the whole request, so requests to one host never overlap and waiting callers queue up."""

    def __init__(self, directory: Path, host: str, interval: float):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{hashlib.sha1(host.encode()).hexdigest()[:16]}.last"
        self.interval = interval

    @contextlib.contextmanager
    def turn(self, sleep=time.sleep):
        """Wait for this host's turn; the caller may set `hold[0]` to seconds to keep the host
        quiet for after the request (a Retry-After or a backoff)."""
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            hold = [0.0]
            try:
                f.seek(0)
                raw = f.read().strip()
                not_before = float(raw) if raw else 0.0
                delay = not_before - time.time()
                if delay > 0:
                    sleep(delay)
                yield hold
            finally:
                f.seek(0)
                f.truncate()
                f.write(repr(time.time() + max(self.interval, hold[0])))
                f.flush()
                fcntl.flock(f, fcntl.LOCK_UN)


class PoliteClient:
    def __init__(self, cfg: HttpConfig, spacing_dir: Path, sleep=time.sleep):
        self.cfg = cfg
        self.spacing_dir = Path(spacing_dir)
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": cfg.user_agent, "Accept-Encoding": "gzip"})
        self._spacings: dict[str, Spacing] = {}
        self._sleep = sleep
        self.requests = 0
        self.retries = 0

    def _spacing(self, url: str) -> Spacing:
        host = urlsplit(url).netloc
        if host not in self._spacings:
            self._spacings[host] = Spacing(self.spacing_dir, host, self.cfg.min_interval_s)
        return self._spacings[host]

    def get(self, url: str, params: dict | None = None, accept: str | None = None) -> Fetched:
        """GET with spacing and retries. Returns the final response (any non-retryable status);
        raises FetchFailed when retries are exhausted."""
        spacing = self._spacing(url)
        headers = {"Accept": accept} if accept else None
        last_problem = ""
        for attempt in range(self.cfg.retries + 1):
            with spacing.turn(self._sleep) as hold:
                self.requests += 1
                wait = None
                try:
                    r = self.session.get(url, params=params, headers=headers, timeout=self.cfg.timeout_s)
                    body = r.content
                except requests.RequestException as e:
                    last_problem = f"{type(e).__name__}"
                else:
                    if r.status_code not in RETRY_STATUS:
                        return Fetched(r.url, r.status_code, body, time.time(), r.headers.get("Content-Type", ""))
                    last_problem = f"HTTP {r.status_code}"
                    wait = retry_after_seconds(r.headers.get("Retry-After"))
                    if wait is not None and wait > self.cfg.max_retry_after_s:
                        raise FetchFailed(f"{url}: Retry-After {wait:.0f}s exceeds max_retry_after_s")
                if attempt == self.cfg.retries:
                    break
                self.retries += 1
                if wait is None:
                    wait = min(self.cfg.backoff_s * 2**attempt, self.cfg.backoff_max_s)
                hold[0] = wait
        raise FetchFailed(f"{url}: {last_problem} after {self.cfg.retries + 1} attempts")

    def close(self) -> None:
        self.session.close()


__all__ = ["HttpConfig", "PoliteClient", "FetchFailed", "Fetched", "retry_after_seconds", "Spacing"]

