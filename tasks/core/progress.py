"""Progress on long work: a tqdm bar on the console and a Prefect progress artifact in the UI."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("distillery.progress")


class Progress:
    """Call it with (done, total). Works inside and outside a Prefect run."""

    def __init__(self, description: str, total: int):
        from tqdm import tqdm

        self.description = description
        self.total = max(total, 1)
        self._bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False, disable=total == 0)
        self._artifact: Any = None
        self._done = 0
        try:
            from prefect.artifacts import create_progress_artifact
            from prefect.context import FlowRunContext, TaskRunContext

            if TaskRunContext.get() or FlowRunContext.get():
                self._artifact = create_progress_artifact(progress=0.0, description=description)
        except Exception:  # progress is best effort: never fail the work for it
            log.debug("no progress artifact", exc_info=True)
            self._artifact = None

    def __call__(self, done: int, total: int) -> None:
        import time

        self._bar.update(done - self._done)
        self._done = done
        now = time.monotonic()
        # One API call per item would cost more than small items take: update at most every 2 s.
        if done < total and now - getattr(self, "_last", 0.0) < 2.0:
            return
        self._last = now
        if self._artifact is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact, progress=100.0 * done / max(total, 1))
            except Exception:  # as above
                log.debug("progress artifact not updated", exc_info=True)

    def close(self) -> None:
        self._bar.close()
