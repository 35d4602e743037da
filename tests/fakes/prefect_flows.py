"""Cheap flows for tests of the Prefect machinery (deployments, workers, the UI, a server's database).

``distill_smoke`` has the parameters of ``flows.full.distill`` (same names, types and defaults, so the
UI renders the same form; tests/integration/test_ui_manual_run.py checks they stay the same) but only
loads the recipe with its overrides, through the real recipe loader, and records what it received and
which Prefect result settings its process runs with: a UI-started run of it completes in seconds,
where the real DAG takes minutes. It is a test double for the UI path only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.core.recipe import DEFAULT_RECIPE, load_recipe

RECORD_ENV = "DISTILLERY_SMOKE_RECORD"


@flow(name="distillery-smoke")
def distill_smoke(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None,
                  profile: str | None = None) -> dict[str, Any]:
    """Load ``recipe`` with ``overrides`` and record what came in (to ``$DISTILLERY_SMOKE_RECORD``)."""
    from prefect.settings import get_current_settings

    r = load_recipe(recipe, overrides or [], profile)
    results = get_current_settings().results
    record = {"recipe": r.name, "overrides": list(overrides or []), "profile": profile,
              "train.sft.max_steps": r.train.sft.max_steps,
              "prefect_results": {"local_storage_path": str(results.local_storage_path),
                                  "persist_by_default": results.persist_by_default}}
    if os.environ.get(RECORD_ENV):
        Path(os.environ[RECORD_ENV]).write_text(json.dumps(record))
    return record


@flow(name="distillery-ping")
def ping(value: int = 1) -> int:
    """The smallest flow run a server can record."""
    return value + 1
