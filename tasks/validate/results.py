"""Base vs trained results of a run, read from its summary JSON (the last line ``flows.full`` prints).

``python -m tasks.validate.results summary.json [...]`` prints one Markdown table per model (one per
variant for a recipe with variants): every metric the validate stage measured on the held-out set, for
the untrained base and the trained model, and which one is better. docs/results.md is made with it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from tasks.validate.gate import LOWER_IS_BETTER
from tasks.validate.judge import BASE_AGAINST_ITSELF, judge_grades

# Run-level numbers that are not a comparison on held-out data.
_CONTEXT = {"examples", "pair_yield", "judge_pairs", "judge_wins", "judge_losses", "judge_ties",
            "judge_position_consistency"}


def model_results(summary: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """model label -> {"trained": metrics, "base": metrics} for each model the run validated."""
    if summary.get("variants"):
        models = {f"{summary['recipe']}-{name}": variant for name, variant in summary["variants"].items()}
    else:
        models = {summary["recipe"]: summary}
    out = {}
    for label, run in models.items():
        gate = run.get("gate")
        validate = (run.get("counts") or {}).get("validate") or {}
        if not gate or "base" not in validate:
            continue
        base = dict(validate["base"])
        base.update({key: value for key, value in BASE_AGAINST_ITSELF.items() if key in gate["metrics"]})
        if grades := judge_grades(validate.get("judge")):
            base["judge_grade"] = grades[1]
        out[label] = {"trained": dict(gate["metrics"]), "base": base}
    return out


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def better(metric: str, trained: float | None, base: float | None) -> str:
    """'trained', 'base', 'tie' or '' (not comparable)."""
    if metric in _CONTEXT or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (trained, base)):
        return ""
    if trained == base:
        return "tie"
    lower = metric in LOWER_IS_BETTER or metric.startswith("latency") or metric.endswith("_mae")
    return "trained" if (trained < base) == lower else "base"


def results_markdown(summary: dict[str, Any]) -> str:
    lines = []
    for label, columns in model_results(summary).items():
        trained, base = columns["trained"], columns["base"]
        lines += [f"| {label} | base | trained | better |", "|---|---:|---:|---|"]
        for metric in sorted(set(trained) | set(base)):
            lines.append(f"| {metric} | {_fmt(base.get(metric))} | {_fmt(trained.get(metric))} | "
                         f"{better(metric, trained.get(metric), base.get(metric))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.validate.results", description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="files holding a run's summary (its last line)")
    args = parser.parse_args(argv)
    for path in args.summaries:
        lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
        summary = json.loads(lines[-1])
        print(f"### {summary['recipe']} ({summary['run_id']}, gate {'passed' if (summary['gate'] or {}).get('passed') else 'failed'}, "
              f"{summary['wall_s']:.0f} s)\n")
        print(results_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
