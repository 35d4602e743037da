"""A manual run of the real DAG from the Prefect UI, as an operator does it, in headless Chromium
driven by Playwright.

Server (``prefect server start``), deployment (``prefect deploy`` with a prefect.yaml derived from
deployments/prefect.yaml: the stats-qa weekly deployment, its entrypoint ``flows/full.py:distill``,
with the smoke profile as its parameter and no schedule) and worker (``python -m deployments.worker``)
are all real, and the worker's state folder is the one tests/e2e/test_full_dag.py ran the same recipe
in: the run started from the UI finds every stage the changed field does not touch cached, as a manual
run finds the weekly run's.

The test opens the UI's front page (Prefect 3.8 serves its V2 UI there), goes to the deployment,
starts a custom run with one override typed into the form, follows the run to Completed, then
retries it from the run's menu and sees it complete again, all from the cache.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
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

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEPLOYMENT = "stats-qa-ui"
MODEL_NAME = "ui-student"
OVERRIDE = f"deploy.model_name={MODEL_NAME}"  # touches the deploy stage only
RUN_NAME = "manual-run-from-the-ui"


def _require_browser() -> None:
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright==1.65.2)")


def _wait_for(predicate, timeout: float, what: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout}s; worker log:\n{tail(log)}")


def _summary(run, home: Path) -> dict:
    """The DAG's summary: the flow run's result, persisted as JSON in the worker's state folder."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    def read() -> dict:
        with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: home / "prefect" / "results"}):
            return run.state.result()

    # On a thread of its own: Playwright's sync API keeps an event loop running on this one, where
    # Prefect's result() would hand back a coroutine.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(read).result()


def test_a_custom_run_of_the_real_dag_started_from_the_ui_completes(tmp_path, smoke_dag_home):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    home = smoke_dag_home
    warm = (home / "store" / "latest" / "stats-qa.json").exists()  # test_full_dag ran before
    pool = load_prefect_yaml()["deployments"][0]["work_pool"]["name"]
    prefect_file = derived_prefect_yaml(
        tmp_path / "prefect.yaml", base="stats-qa-weekly", name=DEPLOYMENT, schedules=[],
        parameters={"recipe": "stats-qa", "overrides": [], "profile": "smoke"},
        description="The stats-qa weekly deployment on its smoke profile, without a schedule, for the UI test.")
    worker_log = tmp_path / "worker.log"

    with prefect_server(tmp_path / "server") as server:
        deploy(server, prefect_file)
        with process_worker(server, pool, worker_log, DISTILLERY_HOME=str(home)), sync_playwright() as playwright:
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

                # The form comes from distill's typed signature: a text box for the recipe, a list of
                # text boxes for the overrides.
                expect(page.get_by_role("textbox", name=re.compile("^recipe"))).to_have_value("stats-qa")
                page.get_by_role("textbox", name="Run Name").fill(RUN_NAME)
                page.get_by_role("button", name="Add item").click()
                page.get_by_role("tabpanel", name="list").get_by_role("textbox").fill(OVERRIDE)
                page.get_by_role("button", name="Submit").click()

                # Back on the deployment, which lists the new run (the toast's link may be gone by now).
                # On a loaded CI machine the UI once had not come back here within 60 s (session 16; alone, it passed).
                page.wait_for_url(re.compile(r".*/deployments/deployment/[^/?]+\?tab=Runs"), timeout=180_000)
                page.get_by_role("link", name=RUN_NAME, exact=True).first.click()
                page.wait_for_url(re.compile(r".*/runs/flow-run/[0-9a-f-]{36}"))
                flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)
                expect(page.get_by_text(RUN_NAME, exact=True).first).to_be_visible()
                # Cold (this test alone) the smoke DAG takes a few minutes on 2 cores; warm, seconds.
                expect(page.get_by_text("Completed", exact=True).first).to_be_visible(timeout=600_000)
                page.screenshot(path=str(tmp_path / "ui-flow-run-completed.png"), full_page=True)

                with sync_client(server) as client:
                    run = client.read_flow_run(flow_run_id)
                    deployment = client.read_deployment_by_name(f"distillery/{DEPLOYMENT}")
                assert run.name == RUN_NAME and run.deployment_id == deployment.id
                assert run.state.is_completed(), run.state
                assert run.parameters == {"recipe": "stats-qa", "overrides": [OVERRIDE], "profile": "smoke"}
                summary = _summary(run, home)
                assert summary["status"] == "completed" and summary["flow_run_id"] == flow_run_id
                stages = {name: stage["status"] for name, stage in summary["stages"].items()}
                if warm:  # the worker's runs share the CLI's caches: only deploy takes the new field...
                    untouched = ("collect", "synthesize", "pairs", "train", "package")
                    assert {s: stages[s] for s in untouched} == dict.fromkeys(untouched, "cached"), stages
                    assert stages["deploy"] == "completed" and summary["teacher_calls"] == 0
                    # ...and curate and validate score the production model, which is new if
                    # test_full_dag's last run deployed one (it depends on the pairs that run made).
                    assert stages["curate"] in ("cached", "completed") and stages["validate"] in ("cached", "completed")
                else:
                    assert set(stages.values()) == {"completed"}, stages
                # The override reached the recipe the run published (the gate passes on this profile).
                assert summary["gate"]["passed"] is True
                manifest = json.loads((home / "store" / "runs" / summary["run_id"] / "manifest.json").read_text())
                assert manifest["recipe"]["deploy"]["model_name"] == MODEL_NAME
                latest = json.loads((home / "store" / "latest" / "stats-qa.json").read_text())
                assert latest["run_id"] == summary["run_id"]

                # Retry from the run's menu: the same flow run runs again, with the same parameters.
                page.get_by_role("main").get_by_role("button", name="Open menu").first.click()
                page.get_by_role("menuitem", name="Retry").click()
                page.get_by_role("alertdialog").get_by_role("button", name="Retry").click()

                def retried():
                    with sync_client(server) as client:
                        again = client.read_flow_run(flow_run_id)
                    return again if again.run_count >= 2 and again.state.is_completed() else None

                again = _wait_for(retried, 300, "the retried run did not complete", worker_log)
                assert again.parameters == run.parameters
                retry = _summary(again, home)
                assert retry["status"] == "completed" and retry["teacher_calls"] == 0
                # Nothing that makes the model is computed again. The first attempt's deploy made this
                # model production, so the retry's validation compares against no other model, which
                # may give a new gate decision to publish; curate, validate and deploy follow from that.
                untouched = ("collect", "synthesize", "pairs", "train", "package")
                assert {s: retry["stages"][s]["status"] for s in untouched} == dict.fromkeys(untouched, "cached")
                page.reload()
                expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
                page.screenshot(path=str(tmp_path / "ui-flow-run-retried.png"), full_page=True)
            finally:
                browser.close()
