"""JSONL reading and writing. Bad lines are reported, never silently skipped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class BadLine(BaseModel):
    line: int
    reason: str


def write_jsonl(path: Path, rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write rows (records or dicts) one JSON object per line; return the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            data = row.model_dump(mode="json") if isinstance(row, BaseModel) else row
            handle.write(json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def iter_jsonl(path: Path, bad: list[BadLine] | None = None) -> Iterator[dict[str, Any]]:
    """Yield each JSON object in ``path``. Malformed lines go to ``bad`` (or raise if it is None)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
                if not isinstance(value, dict):
                    raise ValueError("line is not a JSON object")  # noqa: TRY004 - handled with the parse errors below
            except (UnicodeDecodeError, ValueError) as exc:
                if bad is None:
                    raise ValueError(f"{path}:{number}: {exc}") from exc
                bad.append(BadLine(line=number, reason=str(exc)[:200]))
                continue
            yield value


def read_jsonl(path: Path, bad: list[BadLine] | None = None) -> list[dict[str, Any]]:
    return list(iter_jsonl(path, bad))
