"""Start a process worker for distillery's deployments: ``python -m deployments.worker [prefect worker options]``.

It is ``prefect worker start --pool distillery-process --type process``, started with distillery's
Prefect settings in its environment, which every flow run it starts inherits: Prefect's home and its
results under ``$DISTILLERY_HOME/prefect`` (results persisted, as JSON). Run it from the repository
root, like ``prefect deploy``.

Why not a plain ``prefect worker start``: Prefect reads its settings once, when it is imported. The
CLI (``python -m flows.full``) imports ``flows`` first, which sets them; a worker's flow process
(``python -m prefect.engine``) imports Prefect first and the flow after, so the settings ``flows``
sets come too late there. Task results (the stage cache) would then go to Prefect's default folder,
and a scheduled run would not reuse the stages a CLI run or a backfill completed (and vice versa).
With an S3 store (``DISTILLERY_STORE_URI=s3://...``) it also saves the result-storage block that puts
task results in that bucket (see ``flows.full.result_storage``).
"""

from __future__ import annotations

import argparse
import os
import sys

POOL = "distillery-process"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default=POOL, help=f"the process work pool to poll ({POOL})")
    args, passthrough = parser.parse_known_args(argv)

    from tasks.core.settings import Settings, configure_prefect_environment

    # Absolute, so flow runs (which run from the folder the deployment was made in) share this state.
    os.environ["DISTILLERY_HOME"] = str(Settings().state)
    configure_prefect_environment()
    from flows.full import register_result_storage

    register_result_storage()  # with an S3 store, task results live in its bucket (the block must exist)
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", args.pool, "--type", "process",
               *passthrough]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
