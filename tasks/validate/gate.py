"""The deploy gate, pure: thresholds, beating the base, and no regression against production."""

from __future__ import annotations

import math

from pydantic import Field

from tasks.core.recipe import GateConfig
from tasks.core.refs import Frozen

# Metrics where smaller is better; every other metric is larger-is-better.
LOWER_IS_BETTER = {"latency_p50_s", "latency_p95_s", "perplexity", "rating_mae"}


class GateDecision(Frozen):
    passed: bool
    reasons: list[str] = Field(default_factory=list, description="Every check, passed or failed.")
    failures: list[str] = Field(default_factory=list)
    metrics: dict[str, float | None] = Field(default_factory=dict)


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _not_worse(metric: str, candidate: float, other: float, tolerance: float = 0.0) -> bool:
    if metric in LOWER_IS_BETTER:
        return candidate <= other + tolerance
    return candidate >= other - tolerance


def decide_gate(candidate: dict[str, float | None], gate: GateConfig, base: dict[str, float | None] | None = None,
                production: dict[str, float | None] | None = None) -> GateDecision:
    """Check every rule; the gate passes only when none fails. A gated metric that is missing fails."""
    reasons: list[str] = []
    failures: list[str] = []

    def check(ok: bool, text: str) -> None:
        reasons.append(("ok: " if ok else "FAIL: ") + text)
        if not ok:
            failures.append(text)

    for metric, threshold in sorted(gate.min.items()):
        value = candidate.get(metric)
        if _missing(value):
            check(False, f"{metric} is missing (needs > {threshold})")
        else:
            check(value > threshold, f"{metric} = {value:.4g} (needs > {threshold})")
    for metric, threshold in sorted(gate.max.items()):
        value = candidate.get(metric)
        if _missing(value):
            check(False, f"{metric} is missing (needs < {threshold})")
        else:
            check(value < threshold, f"{metric} = {value:.4g} (needs < {threshold})")
    for metric in gate.beat_base:
        value, ref = candidate.get(metric), (base or {}).get(metric)
        if _missing(value) or _missing(ref):
            check(False, f"{metric}: cannot compare with the base (candidate {value}, base {ref})")
        else:
            check(_not_worse(metric, value, ref), f"{metric} = {value:.4g} vs base {ref:.4g}")
    if production:
        for metric, tolerance in sorted(gate.no_regression.items()):
            value, ref = candidate.get(metric), production.get(metric)
            if _missing(value) or _missing(ref):
                check(False, f"{metric}: cannot compare with production (candidate {value}, production {ref})")
            else:
                check(_not_worse(metric, value, ref, tolerance),
                      f"{metric} = {value:.4g} vs production {ref:.4g} (tolerance {tolerance})")
    elif gate.no_regression:
        reasons.append("ok: no production model yet; regression checks skipped")
    return GateDecision(passed=not failures, reasons=reasons, failures=failures, metrics=dict(candidate))
