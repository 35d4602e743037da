"""The results table of docs/results.md: base vs trained model, per recipe, from real runs' summaries.

    python -m flows.full --recipe NAME | tail -1 > bench/results/NAME.summary.json   # one per recipe
    python bench/results_table.py bench/results/*.summary.json

Every number comes from the validate stage of the run whose summary is read: the served GGUF and the
untrained base, both scored on the recipe's frozen held-out set. The primary metric of a recipe is the
first of its gate's ``beat_base`` metrics (ROUGE-L when it has none); ``win_rate`` has no base value of
its own: it is the trained model's share of the judge's pair decisions against the base (ties half), and
``judge_grade`` is each model's mean grade from the same judge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LOWER_IS_BETTER = {"rating_mae", "perplexity", "latency_p50_s", "latency_p95_s"}
SHOWN = ["rouge_l", "perplexity", "rating_mae", "rating_pearson", "json_valid", "format_followed",
         "profile_score_avg", "profile_label_pearson", "win_rate", "judge_grade", "pair_yield"]


def _rows(summary: dict, command: str) -> list[dict]:
    from tasks.core.recipe import load_recipe
    from tasks.validate.judge import judge_grades

    recipe = load_recipe(summary["recipe"])  # the quick profile's gate: the runs tabled are quick-profile runs
    rows = []
    for branch in (summary.get("variants") or {"": summary}).values():
        primary = (recipe.validate_.gate.beat_base or ["rouge_l"])[0]
        validate = branch["counts"].get("validate")
        if not validate:  # a failed branch: say where it stopped instead of scores
            failed = next((f"{name} failed: {stage.get('reason', '')}" for name, stage in branch["stages"].items()
                           if stage.get("status") == "failed"), "not validated")
            rows.append({"recipe": branch["recipe"], "primary": primary, "base": None, "trained": None, "others": {},
                         "examples": 0, "gate": failed, "run_id": branch["run_id"], "command": command})
            continue
        trained, base = validate["candidate"], validate["base"]
        if grades := judge_grades(validate.get("judge")):
            trained, base = {**trained, "judge_grade": grades[0]}, {**base, "judge_grade": grades[1]}
        metrics = branch["gate"]["metrics"]
        rows.append({
            "recipe": branch["recipe"], "primary": primary,
            "base": base.get(primary, 0.5 if primary == "win_rate" else None),
            "trained": metrics.get(primary, trained.get(primary)),
            "others": {name: (base.get(name), metrics.get(name, trained.get(name))) for name in SHOWN
                       if name != primary and name in trained},
            "examples": int(trained.get("examples") or 0), "gate": "passed" if branch["gate"]["passed"] else "blocked",
            "run_id": branch["run_id"], "command": command,
        })
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _better(row: dict) -> str:
    base, trained = row["base"], row["trained"]
    if base is None or trained is None:
        return "?"
    if row["primary"] in LOWER_IS_BETTER:
        return "yes" if trained < base else "no"
    return "yes" if trained > base else "no"


def table(paths: list[Path]) -> str:
    lines = ["| recipe | primary metric | base | trained | better | other metrics (base -> trained) | held-out n | gate | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    commands = []
    for path in paths:
        summary = json.loads(path.read_text().strip().splitlines()[-1])
        command = f"python -m flows.full --recipe {summary['recipe']}"
        commands.append(command)
        for row in _rows(summary, command):
            others = "; ".join(f"{k} {_fmt(b)} -> {_fmt(t)}" for k, (b, t) in row["others"].items())
            lines.append(f"| {row['recipe']} | {row['primary']} | {_fmt(row['base'])} | {_fmt(row['trained'])} | "
                         f"{_better(row)} | {others} | {_fmt(row['examples'])} | {row['gate']} | `{row['run_id']}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="files whose last line is a run's JSON summary")
    args = parser.parse_args(argv)
    print(table(args.summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
