"""The DAG run's end state and the CLI's exit code, from its summary (flows/full.py)."""

from __future__ import annotations

import json

from flows.full import exit_code, final_state


def _summary(status: str = "completed", passed: bool | None = True) -> dict:
    stages = {"collect": {"status": "cached"}, "package": {"status": "failed" if status == "failed" else "completed"}}
    gate = None if passed is None else {"passed": passed, "metrics": {"rouge_l": 0.1},
                                        "reasons": ["ok: latency_p95_s = 1.0 (needs < 30)",
                                                    "FAIL: rouge_l = 0.10 (needs > 0.20)"]}
    return {"run_id": "r", "status": status, "stages": stages, "gate": gate}


def test_a_failed_stage_fails_the_run_and_exits_1(capsys):
    state = final_state(_summary("failed", passed=None))
    assert state.is_failed() and state.message == "stage failed: package"
    assert exit_code(state) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "failed"  # the summary is still printed


def test_a_blocked_gate_completes_with_its_failures_and_exits_2(capsys):
    state = final_state(_summary(passed=False))
    assert state.is_completed()
    assert state.message == "gate blocked: FAIL: rouge_l = 0.10 (needs > 0.20)"
    assert exit_code(state) == 2


def test_a_deployed_run_exits_0_with_extra_fields(capsys):
    state = final_state(_summary())
    assert state.is_completed() and not state.message
    assert exit_code(state, backfill_of="abc") == 0
    assert json.loads(capsys.readouterr().out)["backfill_of"] == "abc"


def test_a_crashed_flow_exits_1_without_a_summary(capsys):
    from prefect.states import Crashed

    assert exit_code(Crashed(message="process killed", data=RuntimeError("killed"))) == 1
    assert "crashed" in capsys.readouterr().err.lower()
