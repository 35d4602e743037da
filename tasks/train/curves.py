"""Loss curves from the Trainer's log history: a PNG and a markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def loss_series(history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, eval loss) pairs from a Trainer log history."""
    train = [(int(e["step"]), float(e["loss"])) for e in history if "loss" in e and "step" in e]
    evals = [(int(e["step"]), float(e["eval_loss"])) for e in history if "eval_loss" in e and "step" in e]
    return train, evals


def plot_losses(history: list[dict[str, Any]], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_series(history)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), marker="o", label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_table(history: list[dict[str, Any]]) -> str:
    train, evals = loss_series(history)
    eval_at = dict(evals)
    rows = ["| step | train loss | eval loss |", "|---:|---:|---:|"]
    rows += [f"| {step} | {loss:.4f} | {eval_at.get(step, float('nan')):.4f} |" for step, loss in train]
    return "\n".join(rows)
