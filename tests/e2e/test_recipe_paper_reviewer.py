"""paper-reviewer end to end on CPU with the real small model: `python -m flows.full --recipe
paper-reviewer --profile smoke` (PeerRead + OpenReview sample, BM25 few-shot teacher review, SFT, GGUF,
rating metrics against the human ratings of held-out papers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.runner import STAGES, smoke, statuses

pytestmark = pytest.mark.e2e


def test_paper_reviewer_smoke(tmp_path):
    home = tmp_path / "home"
    code, summary, stderr = smoke(home, "paper-reviewer")
    assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
    expected = {s: "completed" for s in STAGES}
    expected["pairs"] = "skipped"  # SFT only
    assert statuses(summary) == expected
    assert summary["teacher_calls"] > 0
    assert summary["counts"]["synthesize"]["examples"]["examples"] >= 4  # one human review per paper (+ the teacher's)
    metrics = summary["gate"]["metrics"]
    for name in ("rating_mae", "rating_parsed", "json_valid", "rating_pearson", "latency_p95_s"):
        assert name in metrics
    # Scored, not judged: after one CPU step the student may write invalid JSON (cut off at max_tokens,
    # or a rating off the 0-10 scale), and how often depends on the machine's floating-point path.
    assert 0 <= metrics["json_valid"] <= 1 and 0 <= metrics["rating_parsed"] <= 1
    if metrics["rating_parsed"] > 0:
        assert 0 <= metrics["rating_mae"] <= 10
    base = summary["counts"]["validate"]["base"]
    assert {"rating_mae", "json_valid", "rating_parsed"} <= set(base)
    # the examples are JSON reviews in the served schema; a teacher one carries its retrieved few-shot
    train = Path(summary["artifacts"]["dataset"][len("file://"):])
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    for row in rows:
        review = json.loads(row["messages"][-1]["content"])
        assert set(review) == {"summary", "strengths", "weaknesses", "questions", "rating"}
    teacher_rows = [r for r in rows if r["source"].startswith("teacher")]
    assert all(r["metadata"]["retrieved"] for r in teacher_rows)
    assert json.loads((home / "store" / "latest" / "paper-reviewer.json").read_text())["run_id"] == summary["run_id"]
