"""Re-run a failed run: ``python -m flows.backfill <flow-run-id | run-id>``.

Runs the DAG again with the failed run's parameters (recipe, overrides, profile), read from the
Prefect API the failed run reported to (``PREFECT_API_URL``, or the embedded server's database in
``$DISTILLERY_HOME``). Stages that completed are served from the cache (their keys are content, not
run ids), so only the failed stage and those after it execute, and the teacher is not called for
stages that had completed. The argument is the Prefect flow run id or the run's ``run_id`` from its
summary (``<recipe>-<stamp>-<first 8 characters of the flow run id>``).

Retrying a run of a deployment from the Prefect UI (the run's menu, Retry) does the same in place:
the same flow run runs again on a worker, with the same cache. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from flows.full import distill, exit_code, exit_on_sigterm, register_result_storage

FLOW_NAME = "distillery"
_RUN_ID = re.compile(r"^(?P<recipe>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<prefix>[0-9a-f]{8})(?:-[\w-]+)?$", re.IGNORECASE)


class BackfillError(Exception):
    """The run to backfill cannot be found or is not a distillery run."""


async def _find_by_run_id(client: Any, run_id: str) -> UUID:
    """The flow run whose id starts with the run id's suffix and that started around its stamp."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    match = _RUN_ID.match(run_id)
    if not match:
        raise BackfillError(f"{run_id!r} is neither a flow run id nor a run id like stats-qa-20261122T030000Z-1a2b3c4d")
    stamp = datetime.strptime(match["stamp"].upper(), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    # The run id is stamped when the flow starts: its start time is at most a little earlier.
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
        flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(
            after_=stamp - timedelta(hours=1), before_=stamp + timedelta(minutes=1))))
    found = [run.id for run in runs if str(run.id).startswith(match["prefix"].lower())]
    if len(found) != 1:
        raise BackfillError(f"run id {run_id}: {len(found)} matching {FLOW_NAME} flow runs in the Prefect API")
    return found[0]


async def _failed_run(reference: str) -> tuple[UUID, str, dict[str, Any]]:
    """(flow run id, flow run name, parameters) of the run to backfill."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        try:
            flow_run_id = UUID(reference)
        except ValueError:
            flow_run_id = await _find_by_run_id(client, reference)
        run = await client.read_flow_run(flow_run_id)
        flow = await client.read_flow(run.flow_id)
    if flow.name != FLOW_NAME:
        raise BackfillError(f"flow run {flow_run_id} is a run of {flow.name!r}, not of the {FLOW_NAME!r} DAG")
    state = run.state.name if run.state else "unknown"
    print(f"backfilling flow run {run.name} ({flow_run_id}, state {state}) with {dict(run.parameters)}",
          file=sys.stderr)
    return flow_run_id, run.name, dict(run.parameters)


def _known_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    accepted = inspect.signature(distill.fn).parameters
    dropped = sorted(set(parameters) - set(accepted))
    if dropped:
        print(f"ignoring parameters the flow no longer takes: {dropped}", file=sys.stderr)
    return {key: value for key, value in parameters.items() if key in accepted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.backfill", description=__doc__.splitlines()[0],
                                     epilog="Exit codes as python -m flows.full: 0 gate passed, 2 gate blocked, "
                                            "1 a stage failed.")
    parser.add_argument("run", metavar="FLOW_RUN_ID|RUN_ID", help="the distillery flow run to resume")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    try:
        flow_run_id, name, parameters = asyncio.run(_failed_run(args.run))
    except BackfillError as exc:
        parser.error(str(exc))
    register_result_storage()
    state = distill.with_options(flow_run_name=f"backfill-of-{name}")(
        **_known_parameters(parameters), return_state=True)
    return exit_code(state, backfill_of=str(flow_run_id))


if __name__ == "__main__":
    sys.exit(main())
