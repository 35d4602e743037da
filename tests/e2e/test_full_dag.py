"""The whole DAG on CPU with the real small model: cold run, warm run, a changed field (on-policy pairs),
and a failure injected into one stage. Run as `python -m flows.full` subprocesses, as a user would."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from tasks.core.models import resolve_gguf
from tests.e2e.runner import STAGES, run_distill, statuses

pytestmark = pytest.mark.e2e


def run_dag(home: Path, *overrides: str, env_extra: dict | None = None) -> tuple[int, dict, str]:
    # Prefect's home and results follow DISTILLERY_HOME, as for a user, so the UI test's worker (which
    # runs with the same state folder) finds this test's stage results. The smoke profile: a tiny sample
    # through every stage.
    return run_distill(home, "--profile", "smoke", overrides=overrides, env_extra=env_extra)


def test_cold_warm_changed_and_failed_runs(tmp_path, smoke_dag_home):
    home = smoke_dag_home

    # 1. A stage fails (llama.cpp's converter is missing): earlier stages keep their artifacts.
    code, failed, _ = run_dag(home, env_extra={"DISTILLERY_CONVERTER_DIR": str(tmp_path / "no-converter")})
    assert code == 1
    assert statuses(failed) == {**{s: "completed" for s in STAGES[:5]}, "package": "failed",
                                "validate": "skipped", "deploy": "skipped"}
    assert "convert_hf_to_gguf" in failed["stages"]["package"]["reason"]
    assert failed["teacher_calls"] > 0

    # 2. The next run reuses every finished stage and completes the rest.
    code, cold, stderr = run_dag(home)
    assert code == 0, stderr[-3000:]
    assert statuses(cold) == {**{s: "cached" for s in STAGES[:5]}, "package": "completed",
                              "validate": "completed", "deploy": "completed"}
    assert cold["teacher_calls"] == 0
    assert cold["gate"]["passed"] is True
    for key in ("dataset", "pairs", "adapter", "gguf_q8_0", "report"):
        assert cold["artifacts"][key].startswith("file://")
    gguf = Path(cold["artifacts"]["gguf_q8_0"][len("file://"):])
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=256, verbose=False)
    assert llm.create_completion("Hello", max_tokens=2)["choices"]
    llm.close()
    # Quantized: Q8_0 is ~1.5x the shipped Q4_1 base; an unquantized f16 would be ~2.6x.
    assert gguf.stat().st_size < resolve_gguf("smollm2-135m").stat().st_size * 1.6
    latest = json.loads((home / "store" / "latest" / "stats-qa.json").read_text())
    assert latest["run_id"] == cold["run_id"]

    # 3. Unchanged: everything cached, no teacher call.
    code, warm, _ = run_dag(home)
    assert code == 0
    assert set(statuses(warm).values()) == {"cached"}
    assert warm["teacher_calls"] == 0

    # 4. One field changed, pairs.on_policy: pairs runs again, no stage before it does, and the first
    #    responses of the new pairs come from the model run 2 put in production.
    code, changed, stderr = run_dag(home, "pairs.on_policy=true")
    assert code == 0, stderr[-3000:]
    # What the new pairs are depends on what the barely trained model writes on this machine's llama.cpp
    # build (two smoke prompts can yield no pair at all), so the expectation follows from them: an
    # unchanged pairs file leaves every later stage cached; changed pairs make a new model, and when
    # there are none the model is the SFT adapter alone, which the cache already holds.
    pairs_changed = changed["artifacts"].get("pairs") != cold["artifacts"].get("pairs")
    no_pairs = changed["counts"]["pairs"]["pairs"]["pairs"] == 0
    train = "completed" if pairs_changed and not no_pairs else "cached"
    after = "completed" if pairs_changed else "cached"
    assert statuses(changed) == {**{s: "cached" for s in STAGES[:3]}, "pairs": "completed", "train": train,
                                 **{s: after for s in STAGES[5:]}}
    production = hashlib.sha256(gguf.read_bytes()).hexdigest()[:12]
    with sqlite3.connect(home / "cache" / "student.sqlite") as db:
        respondents = {row[0] for row in db.execute("SELECT DISTINCT model FROM completions")}
    assert respondents == {"smollm2-135m", f"production-{production}"}
