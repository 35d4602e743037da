"""Cold run against warm run of the default recipe, as a user runs it: ``python -m flows.full``.

    python bench/cold_warm.py [--out bench/results/cold_warm.json] [--warm-runs 3] [ARGS for flows.full]

A fresh state folder, one cold run (every stage computes), then ``--warm-runs`` runs with nothing
changed (every stage is served from the cache). The cold run also gets a fresh machine-wide model
cache, so it pays for converting the base GGUF (~50 s here) as a first run on a new machine does;
``--machine-model-cache`` uses this machine's instead (a new state folder on a machine that has
converted the base before). Reported: wall time of each run (process start to exit), warm/cold (aim <=
0.05, the median warm run), the stage breakdown, and orchestration overhead: the wall time outside
stage work, i.e. process start, imports, the temporary Prefect server, and the DAG flow around its
stages (aim <= 5% of the cold run). A stage's own wall time includes its Prefect subflow and task
bookkeeping, so the overhead reported is a lower bound of Prefect's share.

Prints a Markdown table and writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(home: Path, args: list[str], model_cache: Path | None) -> tuple[dict, str]:
    """(timings of one ``python -m flows.full`` run, its summary line)."""
    env = {**os.environ, "DISTILLERY_HOME": str(home)}
    if model_cache:
        env["DISTILLERY_MODEL_CACHE"] = str(model_cache)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.full", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 2) or not lines:
        raise SystemExit(f"flows.full exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads(lines[-1])
    stages = {name: {"status": s["status"], "wall_s": s["wall_s"]} for name, s in summary["stages"].items()}
    in_stages = sum(s["wall_s"] for s in stages.values())
    return {"wall_s": round(wall, 2), "flow_wall_s": summary["wall_s"], "stages_s": round(in_stages, 2),
            "overhead_s": round(wall - in_stages, 2), "stages": stages, "run_id": summary["run_id"],
            "teacher_calls": summary["teacher_calls"]}, lines[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cold_warm.json")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--save-summary", type=Path, default=None,
                        help="also write the cold run's summary here (input of bench/results_table.py)")
    parser.add_argument("--machine-model-cache", action="store_true",
                        help="use this machine's cache of converted base models (default: a fresh one)")
    args, flow_args = parser.parse_known_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="distillery-bench-") as tmp:
        home = Path(tmp) / "home"
        model_cache = None if args.machine_model_cache else Path(tmp) / "model-cache"
        cold, cold_summary = _run(home, flow_args, model_cache)
        if args.save_summary:
            args.save_summary.write_text(cold_summary + "\n")
        warm = [_run(home, flow_args, model_cache)[0] for _ in range(args.warm_runs)]
    median_warm = statistics.median(w["wall_s"] for w in warm)
    result = {
        "benchmark": "cold_warm", "command": " ".join(["python bench/cold_warm.py", *flow_args]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "model_cache": "machine" if args.machine_model_cache else "fresh",
        "cold": cold, "warm": warm, "warm_median_s": median_warm,
        "warm_over_cold": round(median_warm / cold["wall_s"], 4),
        "cold_overhead_share": round(cold["overhead_s"] / cold["wall_s"], 4),
        "aims": {"warm_over_cold": 0.05, "cold_overhead_share": 0.05},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| run | wall s | in stages s | overhead s | " + " | ".join(cold["stages"]) + " |")
    print("|---|---|---|---|" + "---|" * len(cold["stages"]))
    for name, run in [("cold", cold)] + [(f"warm {i + 1}", w) for i, w in enumerate(warm)]:
        cells = " | ".join(f"{s['wall_s']:.1f} {s['status']}" for s in run["stages"].values())
        print(f"| {name} | {run['wall_s']:.1f} | {run['stages_s']:.1f} | {run['overhead_s']:.1f} | {cells} |")
    print(f"\nwarm/cold = {result['warm_over_cold']:.3f} (aim <= 0.05); cold overhead = "
          f"{result['cold_overhead_share']:.3f} of the cold run (aim <= 0.05); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
