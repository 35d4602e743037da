"""How flows run stage tasks: cached when possible, never trusting a cached result blindly.

A cached task result is only reused when every artifact it references still exists in the store
with its recorded sha256; otherwise the task runs again (``refresh_cache``) so nothing deleted or
corrupted passes downstream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core.refs import StageOutput
from tasks.core.store import get_store

StageStatus = Literal["completed", "cached", "failed", "skipped"]


class StageResult(BaseModel):
    """A stage's outcome as the run report shows it."""

    status: StageStatus
    reason: str | None = None
    outputs: dict[str, StageOutput] = Field(default_factory=dict)
    teacher_calls: int = 0
    wall_s: float = 0.0

    def output(self, name: str) -> StageOutput:
        return self.outputs[name]


def run_task(task: Any, **params: Any) -> tuple[StageOutput, StageStatus]:
    """Run a stage task; return its output and whether it ran or came from the cache."""
    from prefect.logging import get_run_logger

    state = task(**params, return_state=True)
    output: StageOutput = state.result()
    if state.name != "Cached":
        return output, "completed"
    store = get_store()
    stale = [ref.uri for ref in output.refs() if not store.verify(ref)]
    if not stale:
        return output, "cached"
    get_run_logger().warning("cached result of %s names missing or altered artifacts %s; running it again",
                             task.name, stale)
    state = task.with_options(refresh_cache=True)(**params, return_state=True)
    return state.result(), "completed"


def combine(statuses: list[StageStatus]) -> StageStatus:
    """A stage is cached when all its tasks were; completed when any ran."""
    if statuses and all(s == "cached" for s in statuses):
        return "cached"
    return "completed"


class StageRunner:
    """Runs stage flows in order; after a failure the rest are recorded as skipped, not run."""

    def __init__(self) -> None:
        self.results: dict[str, StageResult] = {}
        self.failed: str | None = None

    def run(self, name: str, stage_flow: Any, *args: Any, **kwargs: Any) -> StageResult | None:
        import time

        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        if self.failed is not None:
            self.results[name] = StageResult(status="skipped", reason=f"stage {self.failed} failed")
            return None
        start = time.perf_counter()
        try:
            # Not persisted: a retried flow run must run its stages again (they hit the task caches),
            # not replay the previous attempt's stage results read back as plain dicts.
            runnable = stage_flow.with_options(persist_result=False) if hasattr(stage_flow, "with_options") \
                else stage_flow
            # A stage runs inside the DAG's flow run, whose heartbeat already tells the server that the
            # process lives; a heartbeat thread of its own would cost every stage about a second at its
            # end (Prefect joins the thread, which sleeps in one-second steps): 8 s of a 20 s warm run.
            with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                result = runnable(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a stage's failure is recorded, the run report still printed
            self.failed = name
            reason = f"{type(exc).__name__}: {exc}"
            self.results[name] = StageResult(status="failed", reason=reason[:2000],
                                             wall_s=round(time.perf_counter() - start, 2))
            return None
        result = result.model_copy(update={"wall_s": round(time.perf_counter() - start, 2)})
        self.results[name] = result
        return result

    def skip(self, name: str, reason: str) -> None:
        self.results[name] = StageResult(status="skipped", reason=reason)

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, result in self.results.items():
            entry: dict[str, Any] = {"status": result.status, "wall_s": result.wall_s}
            if result.reason:
                entry["reason"] = result.reason
            out[name] = entry
        return out

    def teacher_calls(self) -> int:
        return sum(r.teacher_calls for r in self.results.values() if r.status == "completed")


def retry_unless(*permanent: type[BaseException]) -> Any:
    """A Prefect ``retry_condition_fn``: retry transient failures, not ones a retry cannot fix.

    Always final: an exhausted quota or budget, a Retry-After longer than the stage may wait, or a bad
    recipe value (``ValueError``); they fail at once with their own message instead of burning
    retries. ``permanent`` adds a stage's own final errors (a wrong source entry, a lost race).
    """
    def condition(task: Any, task_run: Any, state: Any) -> bool:
        from tasks.teacher.base import BudgetExhausted, QuotaExhausted, RateLimitDeferred

        try:
            state.result(raise_on_failure=True)
        except (QuotaExhausted, BudgetExhausted, RateLimitDeferred, ValueError, *permanent):
            return False
        except Exception:  # noqa: BLE001 - anything else may be transient
            return True
        return True

    return condition


retry_unless_permanent = retry_unless()
