"""Progress while generating: a tqdm bar, and a Prefect progress artifact when inside a Prefect run.

The artifact is created and updated only inside a flow or task run (plain function calls and unit
tests never touch Prefect), from the thread that owns the run context, at most every few seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, Self

log = logging.getLogger("distillery.teacher")


def in_prefect_run() -> bool:
    """Whether the caller runs inside a Prefect flow or task run (without importing Prefect if unused)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return TaskRunContext.get() is not None or FlowRunContext.get() is not None


class GenerationProgress:
    """Counts finished items and shows them.

    Args:
        total: items to generate.
        desc: what is generated (the bar's label and the artifact's description).
        summary: called for a one-line account (requests, cache hits...) shown next to the bar.
        file: where the bar goes (stderr by default).
        artifact_every_s: the shortest interval between two updates of the Prefect artifact.
    """

    def __init__(self, total: int, desc: str, summary: Callable[[], str] | None = None, file: Any = None,
                 artifact_every_s: float = 2.0):
        from tqdm.auto import tqdm

        self.total = total
        self.done = 0
        self.desc = desc
        self._summary = summary
        self._every = artifact_every_s
        self._last_update = 0.0
        self._bar = tqdm(total=total, desc=desc, unit="item", file=file or sys.stderr, mininterval=0.5,
                         dynamic_ncols=True, leave=True)
        self.artifact_id = None
        if total and in_prefect_run():
            self.artifact_id = self._create_artifact()

    def _create_artifact(self) -> Any:
        try:
            from prefect.artifacts import create_progress_artifact

            return create_progress_artifact(progress=0.0, description=f"Teacher: {self.desc}")
        except Exception as exc:  # noqa: BLE001 - progress must never fail a generation
            log.warning("could not create the progress artifact: %s", type(exc).__name__)
            return None

    def _update_artifact(self, final: bool = False) -> None:
        if self.artifact_id is None:
            return
        now = time.monotonic()
        if not final and now - self._last_update < self._every:
            return
        self._last_update = now
        description = f"Teacher: {self.desc}: {self.done}/{self.total}"
        if final and self._summary is not None:
            description += f" ({self._summary()})"
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self.artifact_id, progress=100.0 * self.done / max(1, self.total),
                                     description=description)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not update the progress artifact: %s", type(exc).__name__)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._bar.update(n)
        if self._summary is not None:
            self._bar.set_postfix_str(self._summary(), refresh=False)
        self._update_artifact(final=self.done >= self.total)

    def close(self) -> None:
        if self.done < self.total:
            self._update_artifact(final=True)
        self._bar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
