"""A durable request cache: SQLite under the state folder, one row per completed request.

A row is committed as soon as its response arrives, so a run killed after k of n requests makes
exactly n-k requests when it runs again, and next week's run pays only for prompts it has not seen.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from tasks.teacher.base import Completion


class RequestCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions ("
            " key TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL,"
            " response TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._conn.execute("SELECT response FROM completions WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return Completion.model_validate_json(row[0]).model_copy(update={"cached": True})

    def put(self, key: str, provider: str, model: str, completion: Completion) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO completions (key, provider, model, response, created) VALUES (?, ?, ?, ?, ?)",
                (key, provider, model, completion.model_dump_json(), time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
