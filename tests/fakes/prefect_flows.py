"""The smallest flow a Prefect server can record, for tests of the server itself (its database)."""

from __future__ import annotations

from prefect import flow


@flow(name="distillery-ping")
def ping(value: int = 1) -> int:
    """The smallest flow run a server can record."""
    return value + 1
