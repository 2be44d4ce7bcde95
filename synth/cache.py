"""A persistent response cache for LLM backends (sqlite, safe across threads and processes).

Key: sha256 over the canonical JSON of (endpoint, model, request body without transport-only
fields). Value: the JSON response body. Nothing else is stored -- in particular no request
headers, so an API key can never end up in the cache file.

sqlite (stdlib) rather than a jsonl store: Ray workers on one host write concurrently, and sqlite's
WAL mode gives atomic, lock-protected inserts and indexed lookups without loading the whole file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

# Body fields that change how a response is delivered, not what it is.
TRANSPORT_FIELDS = ("stream", "stream_options", "user")


def cache_key(endpoint: str, body: dict) -> str:
    payload = {k: v for k, v in body.items() if k not in TRANSPORT_FIELDS}
    canon = json.dumps({"endpoint": endpoint, "body": payload}, sort_keys=True, ensure_ascii=False,
                       separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, response TEXT)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict | None:
        row = self._conn().execute("SELECT response FROM responses WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, response: dict) -> None:
        self._conn().execute("INSERT OR REPLACE INTO responses (key, model, response) VALUES (?,?,?)",
                             (key, model, json.dumps(response, sort_keys=True, ensure_ascii=False)))

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
