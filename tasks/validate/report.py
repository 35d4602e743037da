"""The validation report: a markdown table and a PNG chart, candidate vs base vs production."""

from __future__ import annotations

import math
from pathlib import Path

from tasks.validate.gate import GateDecision


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4g}"


def report_markdown(recipe: str, run_label: str, columns: dict[str, dict[str, float]], decision: GateDecision,
                    chart_uri: str | None = None) -> str:
    metrics = sorted({m for values in columns.values() for m in values})
    names = list(columns)
    lines = [f"# Validation: {recipe} ({run_label})", "",
             f"**Gate: {'PASSED' if decision.passed else 'FAILED'}**", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {m} | " + " | ".join(_fmt(columns[n].get(m)) for n in names) + " |" for m in metrics]
    lines += ["", "## Gate checks", ""] + [f"- {r}" for r in decision.reasons]
    if chart_uri:
        lines += ["", f"Chart: `{chart_uri}`"]
    return "\n".join(lines) + "\n"


def plot_comparison(columns: dict[str, dict[str, float]], path: Path) -> Path:
    """One small bar group per metric, so metrics of different scales stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({m for values in columns.values() for m in values if m != "examples"})
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(2.6 * max(len(metrics), 1), 3), dpi=100)
    axes = [axes] if len(metrics) <= 1 else list(axes)
    colors = ["#2b6cb0", "#a0aec0", "#dd6b20"]
    for ax, metric in zip(axes, metrics):
        names = list(columns)
        values = [columns[n].get(metric) for n in names]
        values = [0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values]
        ax.bar(names, values, color=colors[: len(names)])
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelsize=8, rotation=30)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
