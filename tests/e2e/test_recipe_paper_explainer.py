"""paper-explainer end to end on CPU with the real small model: `python -m flows.full --recipe
paper-explainer --profile smoke` (arXiv PDFs -> passages -> persona explanations -> one adapter, GGUF,
validation and deployment per persona). The smoke profile builds two of the three personas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.runner import STAGES, smoke, statuses

pytestmark = pytest.mark.e2e


def test_paper_explainer_smoke_builds_one_model_per_persona(tmp_path):
    home = tmp_path / "home"
    code, summary, stderr = smoke(home, "paper-explainer")
    assert code == 0, f"{summary['stages']}\n{stderr[-3000:]}"
    assert statuses(summary) == {**{s: "completed" for s in STAGES}, "pairs": "skipped"}
    assert set(summary["variants"]) == {"eli5", "executive"}
    ggufs = set()
    for persona, variant in summary["variants"].items():
        assert variant["recipe"] == f"paper-explainer-{persona}"
        assert variant["run_id"] == f"{summary['run_id']}-{persona}"
        assert variant["status"] == "completed" and variant["gate"]["passed"] is True
        assert {"rouge_l", "format_followed"} <= set(variant["gate"]["metrics"])
        ggufs.add(variant["artifacts"]["gguf_q4_k_m"])
        heldout = Path(variant["artifacts"]["heldout"][len("file://"):])
        rows = [json.loads(line) for line in heldout.read_text().splitlines()]
        assert rows and all(r["metadata"]["variant"] == persona for r in rows)
        latest = json.loads((home / "store" / "latest" / f"paper-explainer-{persona}.json").read_text())
        assert latest["run_id"] == variant["run_id"]
        assert f"{persona}.rouge_l" in summary["gate"]["metrics"]
    assert len(ggufs) == 2  # two different models
    # Q4_K_M on the 135M model falls back for 180 tensors: one warning says so, not two lines per tensor
    assert "falling back to" not in stderr
    assert "q4_k_m: 180 of 272 tensor(s) required fallback quantization" in stderr
    assert summary["gate"]["passed"] is True
