"""The polite API client: Retry-After (seconds and HTTP date), backoff, spacing across processes, UA."""

from __future__ import annotations

import email.utils
import multiprocessing
import time

import pytest

from curation.sources.http import FetchFailed, HttpConfig, PoliteClient, retry_after_seconds
from tests.sources_fixtures import LoopbackServer


class Flaky:
    """Answers `failures` times with `status` (+ Retry-After), then 200."""

    def __init__(self, failures: int, status: int = 503, retry_after=None):
        self.failures, self.status, self.retry_after = failures, status, retry_after

    def __call__(self, method, path, query, headers):
        if self.failures > 0:
            self.failures -= 1
            hdrs = {"Retry-After": self.retry_after() if callable(self.retry_after) else self.retry_after} \
                if self.retry_after is not None else {}
            return self.status, hdrs, b"busy"
        return 200, {"Content-Type": "text/plain"}, b"ok"


def cfg(**kw) -> HttpConfig:
    return HttpConfig.model_validate({"contact": "ops@example.org", "min_interval_s": 0.0, "retries": 3,
                                      "backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 10, **kw})


def test_retry_after_seconds_is_honoured_server_side(tmp_path):
    with LoopbackServer(Flaky(1, 503, "1")) as srv:
        got = PoliteClient(cfg(), tmp_path).get(f"{srv.url}/x")
    assert got.status == 200 and got.body == b"ok"
    assert srv.log[1].t - srv.log[0].t >= 0.95


def test_retry_after_http_date_and_429(tmp_path):
    when = lambda: email.utils.formatdate(time.time() + 2, usegmt=True)  # noqa: E731  (1-2 s given rounding)
    with LoopbackServer(Flaky(1, 429, when)) as srv:
        PoliteClient(cfg(), tmp_path).get(f"{srv.url}/x")
    assert srv.log[1].t - srv.log[0].t >= 0.9
    assert retry_after_seconds("garbage") is None and retry_after_seconds("7") == 7.0


def test_gives_up_after_retries_and_on_a_long_retry_after(tmp_path):
    with LoopbackServer(Flaky(10, 502)) as srv:
        with pytest.raises(FetchFailed, match="HTTP 502 after 4 attempts"):
            PoliteClient(cfg(), tmp_path).get(f"{srv.url}/x")
    assert len(srv.log) == 4
    with LoopbackServer(Flaky(1, 503, "3600")) as srv:
        with pytest.raises(FetchFailed, match="exceeds max_retry_after_s"):
            PoliteClient(cfg(max_retry_after_s=60), tmp_path).get(f"{srv.url}/x")


def _hammer(url: str, spacing_dir: str, n: int) -> None:
    c = PoliteClient(cfg(min_interval_s=0.2), spacing_dir)
    for _ in range(n):
        c.get(url)


def test_spacing_holds_across_processes(tmp_path):
    with LoopbackServer(Flaky(0)) as srv:
        procs = [multiprocessing.get_context("spawn").Process(target=_hammer, args=(f"{srv.url}/x", str(tmp_path), 3))
                 for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    assert len(srv.log) == 6
    times = sorted(h.t for h in srv.log)
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.19
    ua = srv.log[0].headers["user-agent"]
    assert ua.startswith("minisigma/") and "ops@example.org" in ua
