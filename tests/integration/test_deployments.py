"""deployments/prefect.yaml: one weekly deployment per built-in recipe, created by ``prefect deploy`` on a
real local Prefect server with its schedule, parameters, work pool and a parameter form for the UI."""

from __future__ import annotations

import inspect
import time
from datetime import UTC

import pytest

from flows.full import distill
from tasks.core.recipe import RECIPES_DIR, list_recipes, load_recipe
from tests.fakes.prefect_server import REPO, deploy, load_prefect_yaml, prefect_server, sync_client, tail

ENTRYPOINT = "flows/full.py:distill"
POOL = "distillery-process"


def _deployments_by_recipe() -> dict[str, list[dict]]:
    by_recipe: dict[str, list[dict]] = {}
    for deployment in load_prefect_yaml()["deployments"]:
        by_recipe.setdefault(deployment["parameters"]["recipe"], []).append(deployment)
    return by_recipe


def _assert_weekly(cron: str) -> None:
    minute, hour, day_of_month, month, day_of_week = cron.split()
    assert minute.isdigit() and hour.isdigit(), cron
    assert (day_of_month, month) == ("*", "*"), cron
    assert day_of_week.isdigit() and 0 <= int(day_of_week) <= 6, f"{cron}: not one day a week"


def test_every_recipe_file_has_exactly_one_weekly_deployment():
    recipes = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))
    assert recipes == sorted(list_recipes())
    by_recipe = _deployments_by_recipe()
    missing = [name for name in recipes if name not in by_recipe]
    assert not missing, f"recipes without a deployment in deployments/prefect.yaml: {missing}"
    assert not set(by_recipe) - set(recipes), "a deployment names a recipe that does not exist"
    for name in recipes:
        (deployment,) = by_recipe[name]
        assert deployment["entrypoint"] == ENTRYPOINT
        assert deployment["work_pool"]["name"] == POOL
        assert [s.get("active", True) for s in deployment["schedules"]] == [True]
        _assert_weekly(deployment["schedules"][0]["cron"])
        assert deployment["schedules"][0]["timezone"] == "UTC"
        parameters = deployment["parameters"]
        assert set(parameters) <= set(inspect.signature(distill.fn).parameters), "not a parameter of distill"
        # The scheduled run's recipe, with its overrides and profile, is valid.
        load_recipe(name, parameters.get("overrides") or [], parameters.get("profile"))
    names = [d["name"] for d in load_prefect_yaml()["deployments"]]
    assert len(names) == len(set(names))


def test_distill_parameters_are_typed_for_the_ui_form():
    from prefect.utilities.callables import parameter_schema

    properties = parameter_schema(distill.fn).model_dump()["properties"]
    assert properties["recipe"]["type"] == "string"
    assert {"type": "array", "items": {"type": "string"}} in properties["overrides"]["anyOf"]
    if "profile" in properties:
        assert {"type": "string"} in properties["profile"]["anyOf"]


def _matches_cron(moment, cron: str) -> bool:
    """``moment`` (UTC) is on the weekday, hour and minute of a weekly ``M H * * D`` cron."""
    minute, hour, _, _, day_of_week = cron.split()
    moment = moment.astimezone(UTC)
    return (moment.isoweekday() % 7, moment.hour, moment.minute, moment.second) == (
        int(day_of_week) % 7, int(hour), int(minute), 0)


@pytest.mark.integration
def test_prefect_deploy_creates_every_scheduled_deployment(tmp_path):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import CronSchedule

    spec = load_prefect_yaml()
    # The scheduler makes the deployments' next runs within seconds instead of its minute.
    with prefect_server(tmp_path / "server", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2") as server:
        out = deploy(server)
        assert out.stdout.count("successfully created") == len(spec["deployments"]), out.stdout[-2000:]
        with sync_client(server) as client:
            pool = client.read_work_pool(POOL)
            assert pool.type == "process"
            for expected in spec["deployments"]:
                deployment = client.read_deployment_by_name(f"distillery/{expected['name']}")
                assert deployment.entrypoint == ENTRYPOINT
                assert deployment.work_pool_name == POOL
                assert deployment.parameters == expected["parameters"]
                assert deployment.enforce_parameter_schema is True
                assert deployment.global_concurrency_limit.limit == 1
                assert set(expected["tags"]) <= set(deployment.tags)
                assert deployment.pull_steps == [
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
                (schedule,) = deployment.schedules
                assert schedule.active
                assert isinstance(schedule.schedule, CronSchedule)
                expected_schedule = expected["schedules"][0]
                assert schedule.schedule.cron == expected_schedule["cron"]
                assert schedule.schedule.timezone == expected_schedule["timezone"] == "UTC"
                # The UI renders a form from this schema: a text field and a list of text fields.
                properties = deployment.parameter_openapi_schema["properties"]
                assert properties["recipe"]["type"] == "string"
                assert {"type": "array", "items": {"type": "string"}} in properties["overrides"]["anyOf"]

                # The schedule is live: the server schedules the next runs on Mondays at 03:00 UTC.
                flow_runs = []
                deadline = time.monotonic() + 60
                while not flow_runs and time.monotonic() < deadline:
                    time.sleep(1)
                    flow_runs = client.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
                assert flow_runs, f"the scheduler made no run for the weekly schedule:\n{tail(server.log)}"
                for run in flow_runs:
                    assert run.state.is_scheduled()
                    assert _matches_cron(run.expected_start_time, expected_schedule["cron"]), run.expected_start_time
                    assert run.parameters == expected["parameters"]
