import math

from tasks.core.recipe import GateConfig
from tasks.validate.gate import decide_gate

PROFILE_GATE = GateConfig(min={"avg_score": 0.75, "min_score": 0.5, "correlation": 0.85},
                          max={"latency_p95_s": 5.0}, beat_base=["avg_score"], no_regression={"avg_score": 0.02})


def test_passes_when_every_threshold_holds():
    candidate = {"avg_score": 0.8, "min_score": 0.6, "correlation": 0.9, "latency_p95_s": 1.0}
    decision = decide_gate(candidate, PROFILE_GATE, base={"avg_score": 0.5})
    assert decision.passed, decision.failures
    assert any("no production model" in r for r in decision.reasons)


def test_thresholds_are_strict():
    candidate = {"avg_score": 0.75, "min_score": 0.6, "correlation": 0.9, "latency_p95_s": 5.0}
    decision = decide_gate(candidate, PROFILE_GATE, base={"avg_score": 0.5})
    assert not decision.passed
    assert {f.split(" ")[0] for f in decision.failures} == {"avg_score", "latency_p95_s"}


def test_missing_metric_fails():
    decision = decide_gate({"avg_score": 0.9, "min_score": float("nan")}, PROFILE_GATE, base={"avg_score": 0.5})
    assert not decision.passed
    assert any("min_score is missing" in f for f in decision.failures)
    assert any("correlation is missing" in f for f in decision.failures)


def test_must_not_lose_to_base_ties_pass():
    gate = GateConfig(beat_base=["rouge_l", "perplexity"])
    assert decide_gate({"rouge_l": 0.3, "perplexity": 10}, gate, base={"rouge_l": 0.3, "perplexity": 10}).passed
    decision = decide_gate({"rouge_l": 0.29, "perplexity": 11}, gate, base={"rouge_l": 0.3, "perplexity": 10})
    assert len(decision.failures) == 2


def test_base_missing_fails_comparison():
    decision = decide_gate({"rouge_l": 0.3}, GateConfig(beat_base=["rouge_l"]), base=None)
    assert not decision.passed and "cannot compare with the base" in decision.failures[0]


def test_regression_against_production_within_tolerance():
    gate = GateConfig(no_regression={"rouge_l": 0.02, "latency_p95_s": 0.5})
    ok = decide_gate({"rouge_l": 0.29, "latency_p95_s": 1.4}, gate, production={"rouge_l": 0.3, "latency_p95_s": 1.0})
    assert ok.passed
    bad = decide_gate({"rouge_l": 0.27, "latency_p95_s": 1.6}, gate, production={"rouge_l": 0.3, "latency_p95_s": 1.0})
    assert len(bad.failures) == 2


def test_empty_gate_passes_and_keeps_metrics():
    decision = decide_gate({"rouge_l": math.nan}, GateConfig())
    assert decision.passed and decision.reasons == [] and "rouge_l" in decision.metrics
