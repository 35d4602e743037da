"""A manual run from the Prefect UI, as an operator does it, in headless Chromium driven by Playwright.

Server (``prefect server start``), deployment (``prefect deploy`` with a prefect.yaml derived from
deployments/prefect.yaml) and worker (``prefect worker start --type process``) are all real. The
deployment runs ``tests/fakes/prefect_flows.py:distill_smoke``, a test double with exactly the
parameters of ``flows.full:distill`` (asserted below) that only loads the recipe with its overrides,
so the run completes in seconds; the real DAG's deployment is checked in test_deployments.py and its
re-runs in test_backfill.py.

The test opens the UI's front page (Prefect 3.8 serves its V2 UI there), goes to the deployment,
starts a custom run with one override typed into the form, follows the run to Completed, then
retries it from the run's menu and sees it complete again.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.fakes.prefect_server import (
    deploy,
    derived_prefect_yaml,
    load_prefect_yaml,
    prefect_server,
    process_worker,
    sync_client,
    tail,
)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEPLOYMENT = "ui-smoke"
OVERRIDE = "train.sft.max_steps=7"
RUN_NAME = "manual-run-from-the-ui"


def _require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright==1.65.2)")


def test_smoke_flow_has_the_parameters_of_distill():
    from prefect.utilities.callables import parameter_schema

    from flows.full import distill
    from tests.fakes.prefect_flows import distill_smoke

    def types(fn):  # names, types, defaults and order; docstrings may differ
        properties = parameter_schema(fn).model_dump()["properties"]
        return {name: {k: v for k, v in prop.items() if k != "description"} for name, prop in properties.items()}

    assert types(distill_smoke.fn) == types(distill.fn)


def _wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout}s; worker log:\n{tail(log)}")


def test_custom_run_started_from_the_ui_completes(tmp_path, distillery_home):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    record = tmp_path / "flow-record.json"
    pool = load_prefect_yaml()["deployments"][0]["work_pool"]["name"]
    prefect_file = derived_prefect_yaml(
        tmp_path / "prefect.yaml", base="stats-qa-weekly", name=DEPLOYMENT,
        entrypoint="tests/fakes/prefect_flows.py:distill_smoke", schedules=[],
        description="Test double of the weekly deployment, for the UI test.")
    worker_log = tmp_path / "worker.log"

    with prefect_server(tmp_path / "server") as server:
        deploy(server, prefect_file)
        with process_worker(server, pool, worker_log, DISTILLERY_SMOKE_RECORD=str(record)), \
                sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)

                # Front page -> Deployments -> the deployment -> Run -> Custom run.
                page.goto(server.ui_url + "/")
                page.get_by_role("link", name="Deployments").first.click()
                page.get_by_role("link", name=DEPLOYMENT, exact=True).click()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Custom run").click()

                # The form comes from the flow's typed signature: a text box for the recipe, a list
                # of text boxes for the overrides.
                expect(page.get_by_role("textbox", name=re.compile("^recipe"))).to_have_value("stats-qa")
                page.get_by_role("textbox", name="Run Name").fill(RUN_NAME)
                page.get_by_role("button", name="Add item").click()
                page.get_by_role("tabpanel", name="list").get_by_role("textbox").fill(OVERRIDE)
                page.get_by_role("button", name="Submit").click()

                # Back on the deployment, which lists the new run (the toast's link may be gone by now).
                page.wait_for_url(re.compile(r".*/deployments/deployment/[^/?]+\?tab=Runs"))
                page.get_by_role("link", name=RUN_NAME, exact=True).first.click()
                page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]{36}"))
                flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)
                expect(page.get_by_text(RUN_NAME, exact=True).first).to_be_visible()
                expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=240_000)
                page.screenshot(path=str(tmp_path / "ui-flow-run-completed.png"), full_page=True)

                with sync_client(server) as client:
                    run = client.read_flow_run(flow_run_id)
                    deployment = client.read_deployment_by_name(f"distillery-smoke/{DEPLOYMENT}")
                assert run.name == RUN_NAME and run.deployment_id == deployment.id
                assert run.state.is_completed()
                assert {k: v for k, v in run.parameters.items() if v is not None} == {
                    "recipe": "stats-qa", "overrides": [OVERRIDE]}
                # The flow, in the worker's process, applied the override through the real recipe loader.
                recorded = json.loads(record.read_text())
                assert {k: recorded[k] for k in ("recipe", "overrides", "train.sft.max_steps")} == {
                    "recipe": "stats-qa", "overrides": [OVERRIDE], "train.sft.max_steps": 7}
                # The documented worker gives its flow runs distillery's Prefect result settings.
                assert recorded["prefect_results"] == {
                    "local_storage_path": str(distillery_home.resolve() / "prefect" / "results"),
                    "persist_by_default": True}

                # Retry from the run's menu: the same flow run runs again, with the same parameters.
                record.unlink()
                page.get_by_role("main").get_by_role("button", name="Open menu").first.click()
                page.get_by_role("menuitem", name="Retry").click()
                page.get_by_role("alertdialog").get_by_role("button", name="Retry").click()

                def retried():
                    with sync_client(server) as client:
                        again = client.read_flow_run(flow_run_id)
                    return again if again.run_count >= 2 and again.state.is_completed() else None

                again = _wait_for(retried, 240, "the retried run did not complete", worker_log)
                assert again.parameters == run.parameters
                assert json.loads(record.read_text())["train.sft.max_steps"] == 7
                page.reload()
                expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
                page.screenshot(path=str(tmp_path / "ui-flow-run-retried.png"), full_page=True)
            finally:
                browser.close()
