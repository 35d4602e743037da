"""The whole DAG: collect -> synthesize -> curate -> pairs -> train -> package -> validate -> deploy.

``python -m flows.full`` runs the default recipe on the embedded defaults; ``--recipe NAME`` picks
another, ``--set a.b=value`` overrides any field. The last line on stdout is the run's JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flows.collect import collect_flow
from flows.curate import curate_flow
from flows.deploy import deploy_flow
from flows.package import package_flow
from flows.pairs import pairs_flow
from flows.synthesize import synthesize_flow
from flows.train import train_flow
from flows.validate import validate_flow
from tasks.core.recipe import DEFAULT_RECIPE, Recipe, load_recipe
from tasks.core.refs import StageOutput
from tasks.core.run import make_run_id, recipe_lock, run_summary
from tasks.core.stage import StageRunner
from tasks.core.store import get_store
from tasks.deploy.publish import production_gguf
from tasks.synthesize.variants import variant_output, variant_recipes


def _s3_results() -> tuple[str, Any] | None:
    """(block name, prefect-aws S3Bucket) for task results beside an S3 store, or None for a local one."""
    from urllib.parse import urlparse

    from tasks.core.hashing import sha256_json
    from tasks.core.settings import get_settings

    settings = get_settings()
    if not settings.store_location.startswith("s3://"):
        return None
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    location = urlparse(settings.store_location)
    folder = "/".join(part for part in (location.path.strip("/"), "prefect-results") if part)
    client = AwsClientParameters(endpoint_url=settings.s3_endpoint_url,
                                 config={"s3": {"addressing_style": "path"}} if settings.s3_endpoint_url else None)
    name = "distillery-results-" + sha256_json([settings.store_location, settings.s3_endpoint_url])[:12]
    # No secret in the block: boto3 finds credentials in the environment / instance role, as the store does.
    return name, S3Bucket(bucket_name=location.netloc, bucket_folder=folder,
                          credentials=AwsCredentials(aws_client_parameters=client))


def result_storage() -> str | None:
    """Where Prefect keeps task results (the cache): beside the artifacts when the store is S3.

    With ``DISTILLERY_STORE_URI=s3://bucket/prefix`` the results go to ``prefix/prefect-results/``
    in the same bucket (a prefect-aws ``S3Bucket`` block; ``DISTILLERY_S3_ENDPOINT_URL`` for
    S3-compatible services), so a run or backfill on another machine that shares the bucket finds
    every finished stage cached. Otherwise None: Prefect's local storage under
    ``$DISTILLERY_HOME/prefect/results``. Prefect resolves the block by name when a run starts;
    :func:`register_result_storage` saves it first.
    """
    s3 = _s3_results()
    return f"s3-bucket/{s3[0]}" if s3 else None


def register_result_storage() -> None:
    """Save the S3 result storage block on the Prefect API (idempotent); nothing for a local store."""
    s3 = _s3_results()
    if s3:
        s3[1].save(s3[0], overwrite=True)


# Read when the module is imported: a worker's flow process has its environment by then.
@flow(name="distillery", log_prints=True, result_storage=result_storage())
def distill(recipe: str = DEFAULT_RECIPE, overrides: list[str] | None = None,
            profile: str | None = None) -> State:
    """Run every stage of a recipe; stages whose inputs did not change come from the cache.

    The flow run ends Failed when a stage failed and Completed otherwise (with a "gate blocked"
    message when the gate held the model back); either way its result is the run's summary.

    A recipe with ``variants`` builds one model per variant: after synthesize, curate through deploy
    run once per variant (each with its own recipe, run id and model name), and the summary shows
    each variant's stages, gate and artifacts.

    Args:
        recipe: a built-in recipe name (deployments/recipes) or a path to a recipe YAML.
        overrides: ``field=value`` assignments applied on top, e.g. ``train.sft.max_steps=30``.
        profile: a named override set of the recipe (``smoke``: a tiny sample; ``full``: GPU settings).
    """
    start = time.perf_counter()
    r = load_recipe(recipe, overrides or [], profile)
    with recipe_lock(r.name, log=print):
        return final_state(_run_stages(r, start))


def final_state(summary: dict[str, Any]) -> State:
    """The DAG run's end state, its summary as the result: Failed when a stage failed, Completed
    otherwise, with a "gate blocked" message when the gate held the model back."""
    if summary["status"] != "completed":
        failed = [name for name, stage in summary["stages"].items() if stage["status"] == "failed"]
        return Failed(message=f"stage failed: {', '.join(failed) or 'unknown'}", data=summary)
    gate = summary.get("gate") or {}
    if not gate.get("passed"):
        failures = [reason for reason in gate.get("reasons") or [] if not reason.startswith("ok")]
        return Completed(message="gate blocked: " + ("; ".join(failures) or "no gate decision"), data=summary)
    return Completed(data=summary)


def exit_code(state: State, **extra: Any) -> int:
    """Print a finished ``distill`` run's summary (plus ``extra``) as the last stdout line; the exit code:
    0 gate passed, 2 gate blocked, 1 a stage failed or the flow crashed."""
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):  # the flow itself crashed: there is no summary to print
        print(f"the run ended {state.type.value}: {summary}", file=sys.stderr)
        return 1
    summary.update(extra)
    print(json.dumps(summary, default=str), flush=True)
    if summary["status"] != "completed":
        return 1
    return 0 if (summary.get("gate") or {}).get("passed") else 2


def _run_stages(r: Recipe, start: float) -> dict[str, Any]:
    run_id = make_run_id(r.name, flow_run.get_id())
    stages = StageRunner()
    collected = stages.run("collect", collect_flow, r)
    synthesized = collected and stages.run("synthesize", synthesize_flow, r, collected.outputs)
    variants: dict[str, tuple[str, str, StageRunner]] = {}
    for variant, rv in (variant_recipes(r).items() if synthesized else ()):  # {"": r} without variants
        branch, branch_id = (StageRunner(), f"{run_id}-{variant}") if variant else (stages, run_id)
        build_model(branch, rv, branch_id, synthesized.output(variant_output(variant)), collected.outputs)
        if variant:
            variants[variant] = (branch_id, rv.name, branch)
    return run_summary(run_id, r.name, stages, time.perf_counter() - start,
                       flow_run_id=str(flow_run.get_id()) if flow_run.get_id() else None, variants=variants or None)


def build_model(stages: StageRunner, r: Recipe, run_id: str, examples: StageOutput,
                collected: dict[str, StageOutput]) -> None:
    """curate -> pairs -> train -> package -> validate -> deploy for one model, recorded in ``stages``."""
    # Today's production model, read once: the baselines, on-policy pairs and the gate see the same one.
    production = production_gguf(get_store(), r.name, r.package.serve)
    curated = stages.run("curate", curate_flow, r, examples, production)
    paired = curated and stages.run("pairs", pairs_flow, r, curated.output("dataset"), production)
    pairs = paired.outputs.get("pairs") if paired else None
    trained = paired and stages.run("train", train_flow, r, curated.output("base"), curated.output("dataset"), pairs)
    packaged = trained and stages.run("package", package_flow, r, curated.output("base"), trained.output("final"))
    validated = packaged and stages.run("validate", validate_flow, r, curated.output("dataset"),
                                        packaged.output("package"), production, pairs)
    if validated:
        package, gate = packaged.output("package"), validated.output("decision").counts["gate"]
        artifacts = {**{k: v for k, v in package.artifacts.items() if k != "manifest"},
                     "adapter": trained.output("final")["adapter"], "report": validated.output("decision")["report"],
                     "train": curated.output("dataset")["train"], "heldout": curated.output("dataset")["heldout"]}
        if pairs:
            artifacts["pairs"] = pairs["pairs"]
        lineage = {name: out["records"].model_dump(mode="json") for name, out in collected.items()}
        stages.run("deploy", deploy_flow, r, run_id, artifacts, lineage, gate["metrics"], gate,
                   package[f"gguf_{r.package.serve}"], package["modelfile"])


def _parser() -> argparse.ArgumentParser:
    from tasks.core.recipe import list_recipes, recipe_help

    recipes = "\n".join(f"  {name:<16} {desc}" for name, desc in list_recipes().items())
    return argparse.ArgumentParser(
        prog="python -m flows.full", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run distillery's whole DAG for one recipe. State lives in $DISTILLERY_HOME (.distillery/).",
        epilog=f"recipes:\n{recipes}\n\nrecipe fields (override with --set field=value):\n{recipe_help()}")


def exit_on_sigterm() -> None:
    """Turn SIGTERM (``kill``, a container stop) into a normal exit with code 143.

    Without it the process dies on the spot: the flow run stays Running in Prefect's database, the
    temporary Prefect server this process started is orphaned (it stops at interpreter exit), and a
    training subprocess runs on. As an exception the run is marked Crashed, child processes are
    stopped and the server shuts down; completed stages stay cached for a rerun or a backfill.
    """
    import signal

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    parser = _parser()
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, help=f"built-in recipe name or YAML path ({DEFAULT_RECIPE})")
    parser.add_argument("--profile", default=None, help="a named override set of the recipe (smoke, full)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a recipe field, e.g. --set train.sft.max_steps=4 (repeatable)")
    args = parser.parse_args(argv)
    from tasks.core.recipe import RecipeError

    try:
        load_recipe(args.recipe, args.overrides, args.profile)  # fail fast, before Prefect starts
    except RecipeError as exc:
        parser.error(str(exc))
    register_result_storage()
    return exit_code(distill(recipe=args.recipe, overrides=args.overrides, profile=args.profile, return_state=True))


if __name__ == "__main__":
    sys.exit(main())
