"""Run ids and the run summary: the JSON object a run prints as its last line."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tasks.core.stage import StageRunner

STAGES = ("collect", "synthesize", "curate", "pairs", "train", "package", "validate", "deploy")
# The stages a recipe with variants runs once per variant (after synthesize).
MODEL_STAGES = STAGES[2:]


def make_run_id(recipe: str, flow_run_id: str | None) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{recipe}-{stamp}-{(flow_run_id or 'local')[:8]}"


def run_summary(run_id: str, recipe: str, stages: StageRunner, wall_s: float, flow_run_id: str | None = None,
                variants: dict[str, tuple[str, str, StageRunner]] | None = None) -> dict[str, Any]:
    """run_id, recipe, stages, artifacts, gate, teacher_calls, wall_s, status.

    With ``variants`` (variant -> (its run id, its recipe name, the runner of its stages)) the summary
    also holds ``variants``: each variant's own summary (stages curate..deploy, artifacts, gate,
    deploy, counts). The top-level stages curate..deploy then combine the variants' (failed if any
    failed, cached if all were, wall_s summed), the gate passes only if every variant's passed, and
    the status is failed if any variant failed.
    """
    if not variants:
        return _summary(run_id, recipe, stages, wall_s, STAGES, flow_run_id)
    per = {name: _summary(branch_id, branch_recipe, runner, sum(r.wall_s for r in runner.results.values()),
                          MODEL_STAGES, flow_run_id, upstream_failed=stages.failed)
           for name, (branch_id, branch_recipe, runner) in variants.items()}
    summary = _summary(run_id, recipe, stages, wall_s, STAGES[:2], flow_run_id)
    for stage in MODEL_STAGES:
        summary["stages"][stage] = combine_variant_stage({name: s["stages"][stage] for name, s in per.items()})
    gates = {name: s["gate"] for name, s in per.items()}
    summary["gate"] = combine_variant_gates(gates)
    summary["teacher_calls"] += sum(s["teacher_calls"] for s in per.values())
    if any(s["status"] == "failed" for s in per.values()):
        summary["status"] = "failed"
    summary["variants"] = per
    return summary


def combine_variant_stage(entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One stage's status over the variants: failed > completed > cached > skipped; wall times summed."""
    statuses = [e["status"] for e in entries.values()]
    status = next((s for s in ("failed", "completed", "cached") if s in statuses), "skipped")
    if status == "cached" and any(s != "cached" for s in statuses):
        status = "completed"  # some variants skipped it, some served it from the cache
    out: dict[str, Any] = {"status": status, "wall_s": round(sum(e.get("wall_s", 0.0) for e in entries.values()), 2),
                           "variants": {name: e["status"] for name, e in entries.items()}}
    reasons = [f"{name}: {e['reason']}" for name, e in entries.items() if e.get("reason")]
    if reasons:
        out["reason"] = "; ".join(reasons)[:2000]
    return out


def combine_variant_gates(gates: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """Every variant must pass; metrics and reasons are prefixed with the variant name."""
    if not gates or all(g is None for g in gates.values()):
        return None
    metrics: dict[str, Any] = {}
    reasons: list[str] = []
    for name, gate in gates.items():
        if gate is None:
            reasons.append(f"{name}: FAIL: not validated")
            continue
        metrics.update({f"{name}.{metric}": value for metric, value in gate["metrics"].items()})
        reasons.extend(f"{name}: {reason}" for reason in gate["reasons"])
    passed = all(g is not None and g["passed"] for g in gates.values())
    return {"passed": passed, "metrics": metrics, "reasons": reasons}


def _summary(run_id: str, recipe: str, stages: StageRunner, wall_s: float, names: tuple[str, ...],
             flow_run_id: str | None = None, upstream_failed: str | None = None) -> dict[str, Any]:
    for name in names:
        if name not in stages.results:
            failed = stages.failed or upstream_failed
            stages.skip(name, f"stage {failed} failed" if failed else "not reached")
    results = stages.results
    artifacts: dict[str, Any] = {}

    def ref_uri(stage: str, output: str, name: str) -> None:
        result = results.get(stage)
        if result and output in result.outputs and name in result.outputs[output].artifacts:
            artifacts[f"{name}" if name not in artifacts else f"{stage}_{name}"] = result.outputs[output][name].uri

    ref_uri("curate", "dataset", "train")
    ref_uri("curate", "dataset", "heldout")
    ref_uri("pairs", "pairs", "pairs")
    ref_uri("train", "final", "adapter")
    ref_uri("validate", "decision", "report")
    package = results.get("package")
    if package and "package" in package.outputs:
        for name, ref in package.outputs["package"].artifacts.items():
            if name.startswith("gguf_") or name == "modelfile":
                artifacts[name] = ref.uri
    if "train" in artifacts:
        artifacts["dataset"] = artifacts.pop("train")
    gate = None
    validate = results.get("validate")
    if validate and "decision" in validate.outputs:
        decision = validate.outputs["decision"].counts["gate"]
        gate = {"passed": decision["passed"], "metrics": decision["metrics"], "reasons": decision["reasons"]}
    counts = {name: {output: o.counts for output, o in r.outputs.items() if o.counts}
              for name, r in results.items() if r.outputs}
    deploy = results.get("deploy")
    deployed = deploy.outputs["deploy"].counts if deploy and "deploy" in deploy.outputs else None
    failed = [n for n, r in results.items() if r.status == "failed"]
    ok = not failed
    return {
        "run_id": run_id,
        "flow_run_id": flow_run_id,
        "recipe": recipe,
        "status": "completed" if ok else "failed",
        "stages": stages.statuses(),
        "artifacts": artifacts,
        "gate": gate,
        "deploy": deployed,
        "teacher_calls": stages.teacher_calls(),
        "counts": counts,
        "wall_s": round(wall_s, 2),
    }


@contextmanager
def recipe_lock(recipe: str, timeout_s: float = 6 * 3600, log: Any = None):
    """One run of a recipe at a time per state folder: a second run waits for the first, then finds
    its stages cached, instead of both writing the same caches and pointers at once."""
    from filelock import FileLock, Timeout

    from tasks.core.settings import get_settings

    path = get_settings().state / "locks" / f"{recipe}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log:
            log(f"another run of {recipe} holds {path}; waiting for it to finish")
        lock.acquire(timeout=timeout_s)
    try:
        yield path
    finally:
        lock.release()
